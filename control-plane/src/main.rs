//! `warden`: Warden's control plane and command-line client. See the
//! library's documentation for the layout.

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    warden_control_plane::cli::run(warden_control_plane::cli::Cli::parse())
}
