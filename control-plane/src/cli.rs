//! The `warden` command line: the clap definitions of the top-level
//! verbs, `warden serve` and `warden token`, and [`run`], which dispatches
//! every verb.
//!
//! ```text
//! warden serve [--listen 127.0.0.1:8080] [--data-dir .warden]
//!              [--database-url postgres://…] [--dev] [--public-url http://127.0.0.1:8080]
//! warden token --sub alice [--groups engineering,finance] [--group X]… [--email E]
//!              [--ttl 1h|30m|3600s|90] [--audience A] [--issuer URL]
//!              [--alg RS256|ES256|EdDSA] [--claim key=value]… [--server URL]
//! warden policy validate FILE | push FILE -m WHY [--no-activate] | list | show V
//!               | diff A B | activate V          [--server URL] [--token T] [--json]
//! warden approvals list [--status S] | show ID | approve ID [--reason R]
//!                  | deny ID --reason R           [--server URL] [--token T] [--json]
//! warden sessions list [--subject S] [--limit N] [--before-seq N] | show ID
//!                 | verify                       [--server URL] [--token T] [--json]
//! warden filter validate FILE|-
//! warden login [--issuer URL --client-id ID] [--device] [--no-browser] …
//! warden access-token | logout | whoami     (see crate::login)
//! ```
//!
//! The verbs that talk to a running control plane (`token`'s HTTP call,
//! `policy`, `approvals`, `sessions`: their arguments and what they do) live
//! in [`crate::client`]; this module depends on it, never the reverse.
//!
//! `warden token` prints only the token on stdout, so
//! `TOKEN=$(warden token --sub alice)` works; every message goes to stderr
//! and failures exit with status 1.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use serde_json::{Map, Value};

use crate::client::{request_token, ApprovalsArgs, PolicyArgs, SessionsArgs, DEFAULT_SERVER};
use crate::issuer::{SigningAlg, TokenRequest, MAX_TTL_SECONDS};
use crate::login::{LoginArgs, LoginSelector, WhoamiArgs};
use crate::state::{self, ServerConfig};
use crate::webhook::WebhookFormat;

/// Warden's control plane and its command-line client.
#[derive(Debug, Parser)]
#[command(name = "warden", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the control plane server.
    Serve(Box<ServeArgs>),
    /// Mint a development token from a control plane started with `--dev`,
    /// and print it on stdout.
    Token(TokenArgs),
    /// Policy versions: validate, push, list, show, diff, activate.
    Policy(PolicyArgs),
    /// Just-in-time approvals: list, show, approve, deny.
    Approvals(ApprovalsArgs),
    /// Recorded sessions (auditors): list, show, verify the hash chain.
    Sessions(SessionsArgs),
    /// Machine keys for scripts and services: issue, list, revoke, rotate.
    Keys(crate::client::KeysArgs),
    /// The filter's own plugin configuration, checked offline.
    Filter(FilterArgs),
    /// Sign in at your company's IdP (browser with PKCE, or `--device`) and
    /// keep the tokens for `warden access-token`.
    Login(LoginArgs),
    /// Print a valid access token (refreshed when needed) on stdout, for
    /// `OPENAI_API_KEY=$(warden access-token)`.
    AccessToken(LoginSelector),
    /// Revoke the refresh token at the IdP and delete the stored tokens.
    Logout(LoginSelector),
    /// Who the control plane sees in your token, and what the active policy
    /// lets you use.
    Whoami(WhoamiArgs),
}

/// `warden filter`.
#[derive(Debug, Args)]
pub struct FilterArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: FilterCommand,
}

/// `warden filter …`.
#[derive(Debug, Subcommand)]
pub enum FilterCommand {
    /// Check a plugin configuration as the filter receives it (JSON text, as
    /// Istio's `pluginConfig` and Envoy Gateway's wasm `config` reach it, or
    /// a serialized protobuf Struct; not YAML) with the filter's own
    /// compiler; exit 1 with the reason on stderr if refused.
    /// Environment variables it names need not be set here.
    Validate {
        /// The configuration file, or `-` for standard input.
        file: PathBuf,
    },
}

/// `warden serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "WARDEN_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,

    /// Directory for the SQLite database and the dev issuer's keys; created if missing.
    #[arg(long, env = "WARDEN_DATA_DIR", default_value = ".warden")]
    pub data_dir: PathBuf,

    /// Use this database instead of SQLite in the data directory
    /// (postgres://user:password@host/db).
    #[arg(long, env = "WARDEN_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Serve a development OIDC issuer under /dev that mints tokens for anyone
    /// who asks. NEVER use this in production.
    #[arg(long)]
    pub dev: bool,

    /// URL clients reach this server at [default: http://<listen address>].
    /// The dev issuer is <public-url>/dev.
    #[arg(long, env = "WARDEN_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// Secret the gateways send in `x-warden-gateway-key`. Without it the
    /// gateway endpoints answer 503.
    #[arg(long, env = "WARDEN_GATEWAY_SECRET", hide_env_values = true)]
    pub gateway_secret: Option<String>,

    /// Trusted OIDC issuer for people's tokens (keys from its discovery
    /// document); may be repeated. `--dev` adds the dev issuer.
    #[arg(long = "issuer", value_name = "URL")]
    pub issuers: Vec<String>,

    /// Accepted audience of people's tokens; may be repeated.
    #[arg(long = "audience", value_name = "AUD", default_values_t = [state::DEFAULT_AUDIENCE.to_owned()])]
    pub audiences: Vec<String>,

    /// Group whose members may publish and activate policies.
    #[arg(long, env = "WARDEN_ADMIN_GROUP", default_value = state::DEFAULT_ADMIN_GROUP)]
    pub admin_group: String,

    /// OAuth client id of the approvers' page (ID tokens carry it as `aud`).
    #[arg(long, default_value = state::DEFAULT_UI_CLIENT_ID)]
    pub ui_client_id: String,

    /// Issuer the approvers' page signs in with [default: the SAML issuer
    /// with --saml-idp-metadata, else the dev issuer with --dev].
    #[arg(long, value_name = "URL")]
    pub ui_issuer: Option<String>,

    /// POST new approvals to this URL.
    #[arg(
        long,
        env = "WARDEN_APPROVAL_WEBHOOK",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub approval_webhook: Option<String>,

    /// Body of the webhook: json, or slack (`{"text": …}`, without the prompt).
    #[arg(long, value_enum, default_value = "json")]
    pub approval_webhook_format: WebhookFormat,

    /// Group whose members may read recorded sessions (the admin group may too).
    #[arg(long, env = "WARDEN_AUDITOR_GROUP", default_value = state::DEFAULT_AUDITOR_GROUP)]
    pub auditor_group: String,

    /// Claim that names a person (dot-separated path), as the filter's
    /// `claims.subject`: give both the same mapping.
    #[arg(long, env = "WARDEN_CLAIM_SUBJECT", default_value = "sub")]
    pub claim_subject: String,

    /// Claim that holds a person's email, as the filter's `claims.email`.
    #[arg(long, env = "WARDEN_CLAIM_EMAIL", default_value = "email")]
    pub claim_email: String,

    /// Claim that holds a person's groups, as the filter's `claims.groups`.
    #[arg(long, env = "WARDEN_CLAIM_GROUPS", default_value = "groups")]
    pub claim_groups: String,

    /// The IdP `warden login` signs people in at when they name none
    /// (`GET /v1/login`); with --login-client-id.
    #[arg(
        long,
        env = "WARDEN_LOGIN_ISSUER",
        value_name = "URL",
        requires = "login_client_id"
    )]
    pub login_issuer: Option<String>,

    /// The public OAuth client `warden login` signs in as (`GET /v1/login`).
    #[arg(
        long,
        env = "WARDEN_LOGIN_CLIENT_ID",
        value_name = "ID",
        requires = "login_issuer"
    )]
    pub login_client_id: Option<String>,

    /// Scopes `warden login` asks for (`GET /v1/login`).
    #[arg(long, value_name = "SCOPES")]
    pub login_scope: Option<String>,

    /// Resource indicator `warden login` asks for; may be repeated.
    #[arg(long = "login-resource", value_name = "URI")]
    pub login_resources: Vec<String>,

    /// Sign people in with this SAML IdP: its metadata XML file (entity id,
    /// SSO URL, signing certificates). The control plane then serves its own
    /// OIDC issuer at `<public-url>/idp`, which the page, `warden login` and
    /// the gateways use. Register `<public-url>/saml/metadata` at the IdP.
    #[arg(long, env = "WARDEN_SAML_IDP_METADATA", value_name = "FILE")]
    pub saml_idp_metadata: Option<PathBuf>,

    /// The SAML attribute whose values are a person's groups.
    #[arg(long, env = "WARDEN_SAML_GROUPS_ATTRIBUTE", default_value = "groups")]
    pub saml_groups_attribute: String,

    /// The SAML attribute whose value is a person's email.
    #[arg(long, env = "WARDEN_SAML_EMAIL_ATTRIBUTE", default_value = "email")]
    pub saml_email_attribute: String,
}

/// `warden token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// Subject (`sub` claim).
    #[arg(long)]
    pub sub: String,

    /// Groups, comma-separated (`groups` claim); may be repeated.
    #[arg(long, value_delimiter = ',', value_name = "GROUP[,GROUP…]")]
    pub groups: Vec<String>,

    /// One more group; may be repeated.
    #[arg(long = "group", value_name = "GROUP")]
    pub group: Vec<String>,

    /// Email address (`email` claim).
    #[arg(long)]
    pub email: Option<String>,

    /// Lifetime: 90 (seconds), 90s, 30m, 1h or 7d; at most 30 days [default: 1h].
    #[arg(long, value_parser = parse_ttl, value_name = "DURATION")]
    pub ttl: Option<u64>,

    /// Audience (`aud` claim) [default: warden].
    #[arg(long)]
    pub audience: Option<String>,

    /// Issuer (`iss` claim) [default: the dev issuer's URL].
    #[arg(long)]
    pub issuer: Option<String>,

    /// Signing algorithm: RS256, ES256 or EdDSA [default: RS256].
    #[arg(long, value_parser = parse_alg)]
    pub alg: Option<SigningAlg>,

    /// Extra claim as key=value; the value is read as JSON when it parses
    /// (numbers, true, arrays, objects), else as a string. May be repeated.
    #[arg(long = "claim", value_parser = parse_claim, value_name = "KEY=VALUE")]
    pub claims: Vec<(String, Value)>,

    /// Control plane URL.
    #[arg(long, env = "WARDEN_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,
}

impl TokenArgs {
    /// The request body these arguments describe.
    pub fn to_request(&self) -> TokenRequest {
        let mut groups: Vec<String> = Vec::new();
        for group in self.groups.iter().chain(&self.group) {
            let group = group.trim();
            if !group.is_empty() && !groups.iter().any(|seen| seen == group) {
                groups.push(group.to_owned());
            }
        }
        let claims = if self.claims.is_empty() {
            None
        } else {
            Some(self.claims.iter().cloned().collect::<Map<String, Value>>())
        };
        TokenRequest {
            sub: self.sub.clone(),
            groups,
            email: self.email.clone(),
            ttl_seconds: self.ttl,
            audience: self.audience.clone(),
            issuer: self.issuer.clone(),
            alg: self.alg,
            claims,
        }
    }
}

/// Parses a lifetime: a whole number of seconds, optionally followed by
/// `s`, `m`, `h` or `d`.
pub fn parse_ttl(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let usage = || format!("invalid duration `{text}` (examples: 90, 90s, 30m, 1h, 7d)");
    let number: u64 = number.parse().map_err(|_| usage())?;
    let scale = match unit.trim() {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(usage()),
    };
    let seconds = number.checked_mul(scale).ok_or_else(usage)?;
    if seconds == 0 || seconds > MAX_TTL_SECONDS {
        return Err(format!(
            "duration `{text}` must be between 1 second and 30 days"
        ));
    }
    Ok(seconds)
}

fn parse_alg(text: &str) -> Result<SigningAlg, String> {
    text.parse()
}

/// Parses `key=value`; the value is JSON if it parses as JSON, else a string.
pub fn parse_claim(text: &str) -> Result<(String, Value), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("invalid claim `{text}`: expected key=value"))?;
    let key = key.trim();
    if key.is_empty() {
        return Err(format!("invalid claim `{text}`: the key is empty"));
    }
    let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
    Ok((key.to_owned(), value))
}

/// Runs the parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    let default_filter = match cli.command {
        Command::Serve(_) => "info",
        _ => "warn",
    };
    init_tracing(default_filter);

    let runtime = match cli.command {
        Command::Serve(_) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
        _ => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };

    let outcome = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(*args).await.map(|()| ExitCode::SUCCESS),
            Command::Token(args) => token(&args).await.map(|()| ExitCode::SUCCESS),
            Command::Policy(args) => crate::client::policy(args).await,
            Command::Approvals(args) => crate::client::approvals(args).await,
            Command::Sessions(args) => crate::client::sessions(args).await,
            Command::Keys(args) => crate::client::keys(args).await,
            Command::Filter(args) => filter(&args),
            Command::Login(args) => crate::login::login(args).await,
            Command::AccessToken(args) => crate::login::access_token(args).await,
            Command::Logout(args) => crate::login::logout(args).await,
            Command::Whoami(args) => crate::login::whoami(args).await,
        }
    });
    match outcome {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// `warden filter validate`: the same compile an Envoy runs when the
/// configuration arrives, so a file it accepts is one every filter loads.
fn filter(args: &FilterArgs) -> Result<ExitCode, String> {
    let FilterCommand::Validate { file } = &args.command;
    let bytes = if file.as_os_str() == "-" {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes)
            .map_err(|e| format!("cannot read standard input: {e}"))?;
        bytes
    } else {
        std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?
    };
    // Provider keys and the hash key come from the gateway's environment,
    // not this machine's: every name resolves to a stand-in here.
    let env = |_: &str| Some("validation-placeholder".to_string());
    match warden_engine::config::FilterConfig::from_wire_bytes(&bytes, &env) {
        Ok(_) => {
            eprintln!("{}: valid", file.display());
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => Err(format!("{}: {error}", file.display())),
    }
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    let saml = match &args.saml_idp_metadata {
        None => None,
        Some(path) => Some(crate::saml::SamlSettings {
            idp_metadata_xml: std::fs::read_to_string(path).map_err(|error| {
                format!(
                    "cannot read the SAML IdP metadata {}: {error}",
                    path.display()
                )
            })?,
            groups_attribute: args.saml_groups_attribute.clone(),
            email_attribute: args.saml_email_attribute.clone(),
        }),
    };
    let config = ServerConfig {
        data_dir: args.data_dir,
        database_url: args.database_url,
        dev: args.dev,
        public_url: args.public_url.unwrap_or_default(),
        gateway_secret: args.gateway_secret.filter(|s| !s.is_empty()),
        issuers: args.issuers,
        audiences: args.audiences,
        admin_group: args.admin_group,
        auditor_group: args.auditor_group.trim().to_owned(),
        claims: warden_engine::auth::ClaimPathsDoc {
            subject: args.claim_subject,
            email: args.claim_email,
            groups: args.claim_groups,
            // People sign in here; group rules are for the gateway's
            // machine callers.
            group_rules: Vec::new(),
        },
        ui_client_id: args.ui_client_id,
        ui_issuer: args.ui_issuer,
        approval_webhook: args.approval_webhook.filter(|s| !s.is_empty()),
        approval_webhook_format: args.approval_webhook_format,
        policy_checks: crate::policies::CheckLimits::default(),
        clock: crate::clock::Clock::system(),
        cli_login: match (args.login_issuer, args.login_client_id) {
            (Some(issuer), Some(client_id)) => Some(crate::state::LoginSettings {
                issuer,
                client_id,
                scope: args.login_scope,
                resources: args.login_resources,
            }),
            _ => None,
        },
        saml,
    };
    crate::server::serve(&args.listen, config)
        .await
        .map_err(|error| error.to_string())
}

async fn token(args: &TokenArgs) -> Result<(), String> {
    let token = request_token(&args.server, &args.to_request())
        .await
        .map_err(|error| error.to_string())?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{token}")
        .and_then(|()| stdout.flush())
        .map_err(|error| format!("cannot write the token to stdout: {error}"))
}

/// Logs to stderr; `RUST_LOG` overrides `default_filter`. Colours only on a
/// terminal: log files and collectors get plain text.
fn init_tracing(default_filter: &str) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn ttl_forms() {
        assert_eq!(parse_ttl("90").unwrap(), 90);
        assert_eq!(parse_ttl("3600s").unwrap(), 3600);
        assert_eq!(parse_ttl("30m").unwrap(), 1800);
        assert_eq!(parse_ttl("1h").unwrap(), 3600);
        assert_eq!(parse_ttl("30d").unwrap(), MAX_TTL_SECONDS);
        for bad in [
            "",
            "0",
            "31d",
            "1w",
            "h",
            "-5",
            "1.5h",
            "99999999999999999999d",
        ] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn claims_are_json_when_they_parse() {
        assert_eq!(
            parse_claim("tier=3").unwrap(),
            ("tier".into(), Value::from(3))
        );
        assert_eq!(
            parse_claim("admin=true").unwrap(),
            ("admin".into(), Value::from(true))
        );
        assert_eq!(
            parse_claim("roles=[\"a\",\"b\"]").unwrap(),
            ("roles".into(), serde_json::json!(["a", "b"]))
        );
        assert_eq!(
            parse_claim("team=platform").unwrap(),
            ("team".into(), Value::from("platform"))
        );
        assert_eq!(
            parse_claim("expr=a=b").unwrap(),
            ("expr".into(), Value::from("a=b"))
        );
        assert!(parse_claim("novalue").is_err());
        assert!(parse_claim("=x").is_err());
    }

    #[test]
    fn token_arguments_become_a_request() {
        let cli = Cli::try_parse_from([
            "warden",
            "token",
            "--sub",
            "alice",
            "--groups",
            "engineering,finance",
            "--group",
            "oncall",
            "--group",
            "finance",
            "--ttl",
            "30m",
            "--alg",
            "es256",
            "--claim",
            "tier=3",
            "--server",
            "http://127.0.0.1:9",
        ])
        .unwrap();
        let Command::Token(args) = cli.command else {
            unreachable!("parsed as token")
        };
        let request = args.to_request();
        assert_eq!(request.sub, "alice");
        assert_eq!(request.groups, ["engineering", "finance", "oncall"]);
        assert_eq!(request.ttl_seconds, Some(1800));
        assert_eq!(request.alg, Some(SigningAlg::ES256));
        assert_eq!(request.claims.unwrap()["tier"], 3);
        assert_eq!(args.server, "http://127.0.0.1:9");
    }

    #[test]
    fn serve_defaults() {
        let cli = Cli::try_parse_from(["warden", "serve"]).unwrap();
        let Command::Serve(args) = cli.command else {
            unreachable!("parsed as serve")
        };
        assert_eq!(args.listen, "127.0.0.1:8080");
        assert_eq!(args.data_dir, PathBuf::from(".warden"));
        assert!(!args.dev);
    }
}
