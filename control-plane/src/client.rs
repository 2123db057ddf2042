//! The verbs that talk to a running control plane: `warden policy …`,
//! `warden approvals …` and `warden sessions …` (their clap arguments, the
//! HTTP calls, answers printed as tables or, with `--json`, as the server's
//! JSON), and the HTTP call of `warden token` ([`request_token`]).
//! `warden policy validate` runs offline with the same checker the server
//! uses ([`crate::policies::validate`]). [`crate::cli`] dispatches to these
//! functions; nothing here imports it.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::approvals::{ApprovalList, ApprovalStatus, ApprovalView};
use crate::error::ErrorBody;
use crate::issuer::{TokenRequest, TokenResponse};
use crate::policies::{self, Problem};

/// Default address of the control plane for client verbs.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

/// Where the client verbs find the control plane, and how they print.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Control plane URL.
    #[arg(long, global = true, env = "WARDEN_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,

    /// Your identity token (from your IdP; `warden token` in development).
    #[arg(long, global = true, env = "WARDEN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Print the server's JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

/// `warden policy`.
#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: PolicyCommand,
    /// Server, token, output.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `warden policy …`.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Check a policy file offline with the filter's own compiler; one line
    /// per problem (`FILE:LINE:COL: message`), exit 1 if any.
    Validate {
        /// The YAML file.
        file: PathBuf,
    },
    /// Publish a policy file as a new version (and make it active).
    Push {
        /// The YAML file.
        file: PathBuf,
        /// Why this version is published.
        #[arg(short, long)]
        message: String,
        /// Publish without making it active.
        #[arg(long)]
        no_activate: bool,
    },
    /// List every version, newest first.
    List,
    /// Print one version's document (metadata as YAML comments).
    Show {
        /// Version number.
        version: i64,
    },
    /// Unified diff between two versions.
    Diff {
        /// The old version.
        a: i64,
        /// The new version.
        b: i64,
    },
    /// Make a version the active one (rollback: activate an older version).
    Activate {
        /// Version number.
        version: i64,
    },
}

/// `warden approvals`.
#[derive(Debug, Args)]
pub struct ApprovalsArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: ApprovalsCommand,
    /// Server, token, output.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `warden approvals …`.
#[derive(Debug, Subcommand)]
pub enum ApprovalsCommand {
    /// Approvals you may decide, and your own requests, newest first.
    List {
        /// pending, approved, denied, expired, consumed or all.
        #[arg(long, default_value = ApprovalStatus::Pending.as_str())]
        status: String,
    },
    /// One approval.
    Show {
        /// The approval id (apr_…).
        id: String,
    },
    /// Approve a pending request.
    Approve {
        /// The approval id (apr_…).
        id: String,
        /// Why (recorded, shown to the requester).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Deny a pending request.
    Deny {
        /// The approval id (apr_…).
        id: String,
        /// Why (required; recorded and shown to the requester).
        #[arg(long)]
        reason: String,
    },
}

/// `warden keys`.
#[derive(Debug, Args)]
pub struct KeysArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: KeysCommand,
    /// Server, token, output.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `warden keys …`.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Issue a key and print it (once: it is not shown again).
    Issue {
        /// What it is for, e.g. nightly-report.
        #[arg(long)]
        name: String,
        /// A policy group its requests have (repeat for more).
        #[arg(long = "group", required = true)]
        groups: Vec<String>,
        /// Limit it to models matching this pattern (repeat for more).
        #[arg(long = "model")]
        models: Vec<String>,
        /// Who its requests are recorded under (admins only; default: you).
        #[arg(long)]
        owner: Option<String>,
        /// Days until it expires.
        #[arg(long, default_value_t = 30)]
        days: u32,
    },
    /// Keys (admins: all; others: their own), newest first.
    List,
    /// Refuse a key in every gateway from now on (or, `--owner`, every key
    /// of someone who left; admins).
    Revoke {
        /// The key's id (the hex after `wdk_`).
        #[arg(required_unless_present = "owner", conflicts_with = "owner")]
        id: Option<String>,
        /// Revoke every live key of this owner instead.
        #[arg(long)]
        owner: Option<String>,
    },
    /// Issue a new key in place of this one and print it.
    Rotate {
        /// The key's id.
        id: String,
        /// Seconds the old key keeps working, for deployments to switch.
        #[arg(long, default_value_t = 0)]
        overlap_seconds: u64,
    },
}

/// `warden sessions`.
#[derive(Debug, Args)]
pub struct SessionsArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: SessionsCommand,
    /// Server, token, output.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `warden sessions …`.
#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    /// Recorded sessions, newest first.
    List {
        /// Only this subject's.
        #[arg(long)]
        subject: Option<String>,
        /// How many (1 to 500).
        #[arg(long, default_value_t = crate::sessions::DEFAULT_LIST_LIMIT)]
        limit: i64,
        /// Only those older than this sequence number (the next page).
        #[arg(long)]
        before_seq: Option<i64>,
    },
    /// One recorded session in full, with its place in the chain.
    Show {
        /// The record id the gateway gave it.
        id: String,
    },
    /// Recompute the hash chain from the start; one line per problem and
    /// exit status 1 when it is broken.
    Verify,
}

/// Why a client verb failed. The messages are written for a person at a terminal.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answered at the server URL.
    #[error("cannot reach the control plane at {server}; is `make run` running?")]
    Unreachable {
        /// The URL tried.
        server: String,
    },
    /// The server answered 404 on a dev route.
    #[error(
        "the control plane at {server} is not in dev mode (start it with `warden serve --dev`)"
    )]
    NotDevMode {
        /// The URL tried.
        server: String,
    },
    /// The server refused the request.
    #[error("the control plane refused the request ({status}): {message}")]
    Rejected {
        /// HTTP status.
        status: u16,
        /// The server's message.
        message: String,
    },
    /// `--server` is not an http URL.
    #[error("invalid server URL `{0}`: expected http://host:port")]
    InvalidServerUrl(String),
    /// Anything else: an unexpected answer, a broken connection.
    #[error("unexpected answer from the control plane at {server}: {detail}")]
    Protocol {
        /// The URL tried.
        server: String,
        /// What went wrong.
        detail: String,
    },
}

/// Asks the control plane at `server` to mint a token (`POST /dev/token`).
pub async fn request_token(server: &str, request: &TokenRequest) -> Result<String, ClientError> {
    let base = server.trim().trim_end_matches('/');
    if !base.to_ascii_lowercase().starts_with("http://") || base.len() <= "http://".len() {
        return Err(ClientError::InvalidServerUrl(server.to_owned()));
    }
    let protocol = |detail: String| ClientError::Protocol {
        server: base.to_owned(),
        detail,
    };
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|error| protocol(error.to_string()))?;
    let url = format!("{base}/dev/token");
    let response = client
        .post(&url)
        .json(request)
        .send()
        .await
        .map_err(|error| {
            if error.is_connect() || error.is_timeout() {
                ClientError::Unreachable {
                    server: base.to_owned(),
                }
            } else if error.is_builder() {
                ClientError::InvalidServerUrl(server.to_owned())
            } else {
                protocol(error.to_string())
            }
        })?;

    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|error| protocol(error.to_string()))?;
    if status == reqwest::StatusCode::NOT_FOUND {
        return Err(ClientError::NotDevMode {
            server: base.to_owned(),
        });
    }
    if !status.is_success() {
        let message = serde_json::from_slice::<ErrorBody>(&body)
            .map(|error| error.error.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).trim().to_owned());
        return Err(ClientError::Rejected {
            status: status.as_u16(),
            message,
        });
    }
    let answer: TokenResponse = serde_json::from_slice(&body)
        .map_err(|error| protocol(format!("invalid token response: {error}")))?;
    Ok(answer.token)
}

/// A connection to the control plane for one command.
struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    fn new(args: &ClientArgs) -> Result<Self, String> {
        let base = args.server.trim().trim_end_matches('/').to_owned();
        let lower = base.to_ascii_lowercase();
        if !(lower.starts_with("http://") || lower.starts_with("https://")) {
            return Err(format!(
                "invalid server URL `{}`: expected http://host:port",
                args.server
            ));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Client {
            base,
            token: args.token.clone().filter(|t| !t.trim().is_empty()),
            http,
        })
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value, String> {
        let Some(token) = &self.token else {
            return Err(
                "no token: pass --token or set WARDEN_TOKEN (in development: \
                 export WARDEN_TOKEN=$(warden token --sub you --group warden-admins))"
                    .into(),
            );
        };
        self.call_as(method, path, body, Some(token)).await
    }

    /// Like `call`, with `token` (or none, for the routes anyone may read).
    async fn call_as(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        token: Option<&str>,
    ) -> Result<Value, String> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token.trim());
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|error| {
            if error.is_connect() || error.is_timeout() {
                format!(
                    "cannot reach the control plane at {}; is it running?",
                    self.base
                )
            } else {
                format!("request failed: {}", error.without_url())
            }
        })?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| format!("reading the answer: {}", e.without_url()))?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| {
                format!("the control plane answered something that is not JSON: {e}")
            });
        }
        Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(error) => {
                let mut message = format!(
                    "the control plane refused ({} {}): {}",
                    status.as_u16(),
                    error.error.code,
                    error.error.message
                );
                for problem in error.problems.unwrap_or_default() {
                    let _ = write!(message, "\n  {}", problem_line("document", &problem));
                }
                message
            }
            Err(_) => format!(
                "the control plane refused ({}): {}",
                status.as_u16(),
                String::from_utf8_lossy(&bytes).trim()
            ),
        })
    }
}

/// `GET path` on the control plane at `server`, as the person whose token
/// this is (or anonymously), read as `T`: for `warden login` (`/v1/login`)
/// and `warden whoami` (`/v1/whoami`).
pub async fn get_json<T: DeserializeOwned>(
    server: &str,
    path: &str,
    token: Option<&str>,
) -> Result<T, String> {
    let client = Client::new(&ClientArgs {
        server: server.to_owned(),
        token: None,
        json: true,
    })?;
    let answer = client.call_as(Method::GET, path, None, token).await?;
    typed(&answer)
}

fn out(text: &str) -> Result<(), String> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|e| format!("cannot write to stdout: {e}"))
}

fn print_json(value: &Value) -> Result<(), String> {
    let text = serde_json::to_string_pretty(value).map_err(|e| e.to_string())?;
    out(&format!("{text}\n"))
}

/// `FILE:LINE:COL: message` (parts unknown are left out).
pub fn problem_line(file: &str, problem: &Problem) -> String {
    let mut line = file.to_owned();
    if let Some(l) = problem.line {
        let _ = write!(line, ":{l}");
        if let Some(c) = problem.column {
            let _ = write!(line, ":{c}");
        }
    }
    match &problem.path {
        Some(path) => format!("{line}: {path}: {}", problem.message),
        None => format!("{line}: {}", problem.message),
    }
}

fn read_file(file: &Path) -> Result<String, String> {
    std::fs::read_to_string(file).map_err(|e| format!("cannot read {}: {e}", file.display()))
}

/// `warden policy …`.
pub async fn policy(args: PolicyArgs) -> Result<ExitCode, String> {
    if let PolicyCommand::Validate { file } = &args.command {
        let text = read_file(file)?;
        let name = file.display().to_string();
        return match policies::validate(&text) {
            Ok(()) => {
                if args.client.json {
                    print_json(&json!({"valid": true}))?;
                } else {
                    out(&format!("{name}: valid\n"))?;
                }
                Ok(ExitCode::SUCCESS)
            }
            Err(problems) => {
                if args.client.json {
                    print_json(&json!({"valid": false, "problems": problems}))?;
                } else {
                    let mut text = String::new();
                    for problem in &problems {
                        text.push_str(&problem_line(&name, problem));
                        text.push('\n');
                    }
                    out(&text)?;
                }
                Ok(ExitCode::FAILURE)
            }
        };
    }
    let client = Client::new(&args.client)?;
    let json_out = args.client.json;
    match args.command {
        PolicyCommand::Validate { .. } => Ok(ExitCode::SUCCESS),
        PolicyCommand::Push {
            file,
            message,
            no_activate,
        } => {
            let document = read_file(&file)?;
            let meta = client
                .call(
                    Method::POST,
                    "/v1/policies",
                    Some(
                        json!({"document": document, "message": message, "activate": !no_activate}),
                    ),
                )
                .await?;
            if json_out {
                print_json(&meta)?;
            } else {
                out(&format!(
                    "published version {}{} (sha256 {})\n",
                    meta["version"],
                    if meta["active"] == true {
                        ", now active"
                    } else {
                        ", not active"
                    },
                    str_of(&meta["sha256"]),
                ))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::List => {
            let answer = client.call(Method::GET, "/v1/policies", None).await?;
            if json_out {
                print_json(&answer)?;
            } else {
                let rows: Vec<Vec<String>> = answer["policies"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                    .iter()
                    .map(|p| {
                        vec![
                            p["version"].to_string(),
                            if p["active"] == true { "*" } else { "" }.to_owned(),
                            str_of(&p["created_at"]),
                            str_of(&p["author"]),
                            str_of(&p["sha256"]).chars().take(12).collect(),
                            str_of(&p["message"]),
                        ]
                    })
                    .collect();
                out(&table(
                    &[
                        "VERSION", "ACTIVE", "CREATED", "AUTHOR", "SHA256", "MESSAGE",
                    ],
                    &rows,
                ))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Show { version } => {
            let p = client
                .call(Method::GET, &format!("/v1/policies/{version}"), None)
                .await?;
            if json_out {
                print_json(&p)?;
            } else {
                // Metadata as YAML comments: the output is still the policy.
                let mut text = format!(
                    "# version {}{} by {} at {}\n# sha256 {}\n# {}\n",
                    p["version"],
                    if p["active"] == true { " (active)" } else { "" },
                    str_of(&p["author"]),
                    str_of(&p["created_at"]),
                    str_of(&p["sha256"]),
                    str_of(&p["message"]).replace('\n', "\n# "),
                );
                text.push_str(&str_of(&p["document"]));
                if !text.ends_with('\n') {
                    text.push('\n');
                }
                out(&text)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Diff { a, b } => {
            let old = client
                .call(Method::GET, &format!("/v1/policies/{a}"), None)
                .await?;
            let new = client
                .call(Method::GET, &format!("/v1/policies/{b}"), None)
                .await?;
            let (old_text, new_text) = (str_of(&old["document"]), str_of(&new["document"]));
            let diff = similar::TextDiff::from_lines(&old_text, &new_text)
                .unified_diff()
                .context_radius(3)
                .header(&format!("version {a}"), &format!("version {b}"))
                .to_string();
            if json_out {
                print_json(&json!({"a": a, "b": b, "diff": diff}))?;
            } else {
                out(&diff)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Activate { version } => {
            let meta = client
                .call(
                    Method::POST,
                    &format!("/v1/policies/{version}/activate"),
                    None,
                )
                .await?;
            if json_out {
                print_json(&meta)?;
            } else {
                out(&format!("version {} is now active\n", meta["version"]))?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `warden approvals …`.
pub async fn approvals(args: ApprovalsArgs) -> Result<ExitCode, String> {
    let client = Client::new(&args.client)?;
    let json_out = args.client.json;
    let answer = match &args.command {
        ApprovalsCommand::List { status } => {
            let answer = client
                .call(Method::GET, &format!("/v1/approvals?status={status}"), None)
                .await?;
            if !json_out {
                let list: ApprovalList = typed(&answer)?;
                let rows: Vec<Vec<String>> = list
                    .approvals
                    .iter()
                    .map(|a| {
                        vec![
                            a.answer.id.clone(),
                            a.answer.status.as_str().to_owned(),
                            a.mode.clone(),
                            requester(a),
                            a.rule.clone(),
                            a.model.as_deref().unwrap_or("-").to_owned(),
                            a.created_at.clone(),
                        ]
                    })
                    .collect();
                out(&table(
                    &[
                        "ID",
                        "STATUS",
                        "MODE",
                        "REQUESTER",
                        "RULE",
                        "MODEL",
                        "CREATED",
                    ],
                    &rows,
                ))?;
                return Ok(ExitCode::SUCCESS);
            }
            answer
        }
        ApprovalsCommand::Show { id } => {
            client
                .call(
                    Method::GET,
                    &format!("/v1/approvals/{}", path_id(id, APPROVAL_ID)?),
                    None,
                )
                .await?
        }
        ApprovalsCommand::Approve { id, reason } => {
            client
                .call(
                    Method::POST,
                    &format!("/v1/approvals/{}/approve", path_id(id, APPROVAL_ID)?),
                    Some(json!({ "reason": reason })),
                )
                .await?
        }
        ApprovalsCommand::Deny { id, reason } => {
            client
                .call(
                    Method::POST,
                    &format!("/v1/approvals/{}/deny", path_id(id, APPROVAL_ID)?),
                    Some(json!({ "reason": reason })),
                )
                .await?
        }
    };
    if json_out {
        print_json(&answer)?;
    } else {
        out(&describe(&typed(&answer)?))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `warden keys …`.
pub async fn keys(args: KeysArgs) -> Result<ExitCode, String> {
    let client = Client::new(&args.client)?;
    let json_out = args.client.json;
    let key_path = |id: &str, action: &str| -> Result<String, String> {
        Ok(format!(
            "/v1/keys/{}/{action}",
            path_id(id, "a key id (the hex after `wdk_`)")?
        ))
    };
    let answer = match &args.command {
        KeysCommand::Issue {
            name,
            groups,
            models,
            owner,
            days,
        } => {
            let body = json!({
                "name": name, "groups": groups, "models": models,
                "owner": owner, "expires_in_days": days,
            });
            client.call(Method::POST, "/v1/keys", Some(body)).await?
        }
        KeysCommand::List => {
            let answer = client.call(Method::GET, "/v1/keys", None).await?;
            if json_out {
                print_json(&answer)?;
                return Ok(ExitCode::SUCCESS);
            }
            let list: crate::machine_keys::KeyList = typed(&answer)?;
            let rows: Vec<Vec<String>> = list
                .keys
                .iter()
                .map(|k| {
                    vec![
                        k.id.clone(),
                        k.name.clone(),
                        k.owner.clone(),
                        k.groups.join(","),
                        k.models.join(","),
                        k.status.clone(),
                        time_of(k.expires_ms),
                    ]
                })
                .collect();
            out(&table(
                &[
                    "ID", "NAME", "OWNER", "GROUPS", "MODELS", "STATUS", "EXPIRES",
                ],
                &rows,
            ))?;
            return Ok(ExitCode::SUCCESS);
        }
        KeysCommand::Revoke { id, owner } => match (id, owner) {
            (_, Some(owner)) => {
                let answer = client
                    .call(
                        Method::POST,
                        "/v1/keys/revoke",
                        Some(json!({ "owner": owner })),
                    )
                    .await?;
                if json_out {
                    print_json(&answer)?;
                } else {
                    out(&format!(
                        "{} live keys of {} revoked\n",
                        answer["revoked"],
                        str_of(&answer["owner"])
                    ))?;
                }
                return Ok(ExitCode::SUCCESS);
            }
            (Some(id), None) => {
                client
                    .call(Method::POST, &key_path(id, "revoke")?, Some(json!({})))
                    .await?
            }
            (None, None) => return Err("name a key id, or --owner".into()),
        },
        KeysCommand::Rotate {
            id,
            overlap_seconds,
        } => {
            let body = json!({ "overlap_seconds": overlap_seconds });
            client
                .call(Method::POST, &key_path(id, "rotate")?, Some(body))
                .await?
        }
    };
    if json_out {
        print_json(&answer)?;
    } else if let Some(key) = answer["key"].as_str() {
        // The key alone on stdout (`KEY=$(warden keys issue …)`); the rest
        // on stderr, where it does not end up in the variable.
        eprintln!(
            "key {} for {} ({}), expires {}: store it now, it is not shown again",
            str_of(&answer["id"]),
            str_of(&answer["owner"]),
            str_of(&answer["name"]),
            time_of(answer["expires_ms"].as_i64().unwrap_or_default())
        );
        out(&format!("{key}\n"))?;
    } else {
        out(&format!(
            "key {} is {}\n",
            str_of(&answer["id"]),
            str_of(&answer["status"])
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Unix milliseconds as an RFC 3339 UTC time.
fn time_of(ms: i64) -> String {
    u64::try_from(ms)
        .map(|ms| {
            let time = std::time::UNIX_EPOCH + Duration::from_millis(ms);
            humantime::format_rfc3339_seconds(time).to_string()
        })
        .unwrap_or_default()
}

/// `warden sessions …`.
pub async fn sessions(args: SessionsArgs) -> Result<ExitCode, String> {
    let client = Client::new(&args.client)?;
    let json_out = args.client.json;
    // Built with a URL so subjects and ids (chosen elsewhere) are escaped.
    let mut url = reqwest::Url::parse("http://warden/v1/sessions").map_err(|e| e.to_string())?;
    match &args.command {
        SessionsCommand::List {
            subject,
            limit,
            before_seq,
        } => {
            {
                let mut query = url.query_pairs_mut();
                query.append_pair("limit", &limit.to_string());
                if let Some(subject) = subject {
                    query.append_pair("subject", subject);
                }
                if let Some(before) = before_seq {
                    query.append_pair("before_seq", &before.to_string());
                }
            }
            let path = format!("{}?{}", url.path(), url.query().unwrap_or_default());
            let answer = client.call(Method::GET, &path, None).await?;
            if json_out {
                print_json(&answer)?;
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = answer["sessions"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|s| {
                    vec![
                        str_of(&s["seq"]),
                        str_of(&s["id"]),
                        str_of(&s["time"]),
                        str_of(&s["subject"]),
                        str_of(&s["decision"]),
                        str_of(&s["model"]),
                        str_of(&s["status"]),
                        str_of(&s["rules"]),
                    ]
                })
                .collect();
            out(&table(
                &[
                    "SEQ", "ID", "TIME", "SUBJECT", "DECISION", "MODEL", "STATUS", "RULES",
                ],
                &rows,
            ))?;
            Ok(ExitCode::SUCCESS)
        }
        SessionsCommand::Show { id } => {
            url.path_segments_mut()
                .map_err(|()| "cannot build the session URL".to_owned())?
                .push(id);
            let answer = client.call(Method::GET, url.path(), None).await?;
            if json_out {
                print_json(&answer)?;
            } else {
                let mut text = String::new();
                for key in [
                    "seq",
                    "id",
                    "received_at",
                    "subject",
                    "decision",
                    "prev_hash",
                    "hash",
                ] {
                    let _ = writeln!(text, "{:<13}{}", format!("{key}:"), str_of(&answer[key]));
                }
                let record =
                    serde_json::to_string_pretty(&answer["record"]).map_err(|e| e.to_string())?;
                let _ = writeln!(text, "record:\n{record}");
                out(&text)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        SessionsCommand::Verify => {
            let answer = client
                .call(Method::GET, "/v1/sessions/verify", None)
                .await?;
            let ok = answer["ok"] == true;
            if json_out {
                print_json(&answer)?;
            } else if ok {
                out(&format!(
                    "ok: {} records, chain intact\n",
                    answer["checked"]
                ))?;
            } else {
                let mut text = String::new();
                for problem in answer["problems"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                {
                    let _ = writeln!(
                        text,
                        "seq {}: {}: {}",
                        problem["seq"],
                        str_of(&problem["kind"]),
                        str_of(&problem["message"])
                    );
                }
                out(&text)?;
            }
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

/// Ids go into a URL path: only the characters ours are made of. `what`
/// names the kind of id for the error (`an approval id (apr_…)`).
fn path_id<'i>(id: &'i str, what: &str) -> Result<&'i str, String> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(format!("`{id}` is not {what}"));
    }
    Ok(id)
}

const APPROVAL_ID: &str = "an approval id (apr_…)";

fn str_of(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// An answer read into its type; a person is told when it does not fit.
fn typed<T: DeserializeOwned>(answer: &Value) -> Result<T, String> {
    T::deserialize(answer)
        .map_err(|e| format!("the control plane answered something unexpected: {e}"))
}

fn requester(a: &ApprovalView) -> String {
    a.email.clone().unwrap_or_else(|| a.subject.clone())
}

/// One approval as `key: value` lines.
fn describe(a: &ApprovalView) -> String {
    let mut text = String::new();
    let mut line = |key: &str, value: String| {
        if !value.is_empty() {
            let _ = writeln!(text, "{key:<15}{value}");
        }
    };
    let text_of = |value: &Option<String>| value.clone().unwrap_or_default();
    line("id:", a.answer.id.clone());
    line("status:", a.answer.status.as_str().to_owned());
    line("mode:", a.mode.clone());
    line("requester:", requester(a));
    line("groups:", a.groups.join(", "));
    line("provider:", a.provider.clone());
    line("model:", text_of(&a.model));
    line("route:", a.route.clone());
    line("rule:", a.rule.clone());
    line("policy:", a.policy_version.to_string());
    line("approvers:", a.approvers.join(", "));
    line("created:", a.created_at.clone());
    line("expires:", a.expires_at.clone());
    let decider = a
        .decided_by_email
        .clone()
        .unwrap_or_else(|| text_of(&a.answer.decided_by));
    line("decided by:", decider);
    line("decided:", text_of(&a.decided_at));
    line("reason:", text_of(&a.answer.reason));
    line("used:", text_of(&a.consumed_at));
    line("page:", text_of(&a.answer.url));
    if !a.masked_prompt.is_empty() {
        let _ = writeln!(
            text,
            "prompt (masked):\n  {}",
            a.masked_prompt.replace('\n', "\n  ")
        );
    }
    text
}

/// A plain left-aligned table; control characters are shown escaped so a
/// value cannot move the cursor or forge rows.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let clean = |s: &str| -> String { s.chars().flat_map(char::escape_default).collect() };
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            r.iter()
                .map(|c| {
                    if c.chars().any(char::is_control) {
                        clean(c)
                    } else {
                        c.clone()
                    }
                })
                .collect()
        })
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut text = String::new();
    let mut push = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        for (i, cell) in cells.iter().enumerate() {
            if i == last {
                text.push_str(cell);
            } else {
                let _ = write!(text, "{cell:<width$}  ", width = widths[i]);
            }
        }
        text.push('\n');
    };
    push(headers.to_vec());
    for row in &rows {
        push(row.iter().map(String::as_str).collect());
    }
    if rows.is_empty() {
        text.push_str("(none)\n");
    }
    text
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn problems_print_as_file_line_column() {
        let problem = Problem {
            line: Some(3),
            column: Some(5),
            path: Some("rules[0].regex".into()),
            message: "bad".into(),
        };
        assert_eq!(
            problem_line("p.yaml", &problem),
            "p.yaml:3:5: rules[0].regex: bad"
        );
    }

    #[test]
    fn tables_escape_control_characters() {
        let text = table(&["A", "B"], &[vec!["x\u{1b}[2J".into(), "y".into()]]);
        assert!(!text.contains('\u{1b}'));
        assert!(text.contains("\\u{1b}"));
    }

    #[tokio::test]
    async fn unreachable_server_is_reported_clearly() {
        // Bind then drop a listener to get a port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let server = format!("http://127.0.0.1:{port}");
        let request = TokenRequest {
            sub: "alice".into(),
            ..TokenRequest::default()
        };
        let error = request_token(&server, &request).await.unwrap_err();
        assert!(matches!(error, ClientError::Unreachable { .. }), "{error}");
        assert!(error.to_string().contains("is `make run` running?"));

        let error = request_token("ftp://x", &request).await.unwrap_err();
        assert!(matches!(error, ClientError::InvalidServerUrl(_)), "{error}");
    }
}
