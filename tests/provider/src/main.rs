//! `warden-stand-in-provider`: runs the stand-in OpenAI/Anthropic provider
//! used by Warden's end-to-end tests and demo.
//!
//! This file only holds the command line, logging and signal handling; the
//! endpoints live in the library (`lib.rs` describes the layout).
//!
//! ```text
//! warden-stand-in-provider --listen 127.0.0.1:8081 [--chunk-size 4] [--chunk-delay-ms 1]
//! ```
//!
//! It prints `stand-in provider listening on http://ADDR` on standard output
//! once it accepts connections, logs one line per request (method, path,
//! status) on standard error, and stops cleanly on SIGINT or SIGTERM.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;
use warden_stand_in_provider::{parse_chunk_size, serve, AppState, StreamSettings};

/// A stand-in model provider speaking the OpenAI and Anthropic wire formats,
/// for tests and the demo. Not for production.
#[derive(Debug, Parser)]
#[command(name = "warden-stand-in-provider", version, about)]
struct Cli {
    /// Address to listen on (`host:port`; port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8081")]
    listen: String,

    /// Bytes per body frame of a streamed response (header
    /// `x-stand-in-chunk-size` overrides it per request).
    #[arg(long, default_value_t = 4, value_parser = parse_chunk_size)]
    chunk_size: usize,

    /// Milliseconds between the frames of a streamed response (header
    /// `x-stand-in-chunk-delay-ms` overrides it per request).
    #[arg(long, default_value_t = 1)]
    chunk_delay_ms: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();

    let listener = match TcpListener::bind(&cli.listen).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!(
                "warden-stand-in-provider: cannot listen on {}: {err}",
                cli.listen
            );
            return ExitCode::FAILURE;
        }
    };
    let address = match listener.local_addr() {
        Ok(address) => address,
        Err(err) => {
            eprintln!("warden-stand-in-provider: cannot read the listening address: {err}");
            return ExitCode::FAILURE;
        }
    };
    let state = AppState::new(StreamSettings {
        chunk_size: cli.chunk_size,
        chunk_delay: Duration::from_millis(cli.chunk_delay_ms),
    });
    println!("stand-in provider listening on http://{address}");

    match serve(listener, state, shutdown_signal()).await {
        Ok(()) => {
            tracing::info!("stand-in provider stopped");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("warden-stand-in-provider: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Completes on the first SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %err, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();

    tokio::select! {
        () = interrupt => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}
