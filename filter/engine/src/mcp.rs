//! MCP (the Model Context Protocol, Streamable HTTP transport) through the
//! gateway: the same filter, token and policy as for model traffic.
//!
//! An MCP server is a provider with `api: mcp` routed at a path prefix
//! (`/mcp/files/`); every request to it is one endpoint, `mcp`, which a
//! group reaches only where the policy lists it. Its tools are known to
//! the policy as `mcp.<server>.<tool>` (the Responses API's remote MCP
//! tools are `mcp.<label>`, so `mcp.*` covers both).
//!
//! ## What is governed
//! - A POST carries one JSON-RPC message ([`read_message`]). Batches are
//!   refused: the protocol's 2025-06-18 revision dropped them, and one HTTP
//!   answer cannot carry a refusal of one message and the server's answer
//!   to another.
//! - `tools/call`: the tool and its arguments are judged like a model's
//!   tool call ([`judge_tool_call`]: access, then the tool rules): refused
//!   with a JSON-RPC error, or held for an approval like any request, before
//!   the server sees it.
//! - Answers, `application/json` or `text/event-stream` (one message per
//!   event, [`MessageStream`]): every message's text goes through the
//!   response rules ([`Answer::inspect`]), and every tool list in one
//!   (whatever its id, method or stream: a server may replay one on a GET)
//!   keeps only the tools the caller may use.
//! - Discovery: the protected-resource metadata of RFC 9728, which the MCP
//!   authorization spec has clients fetch to find the IdP
//!   ([`metadata_reply`]), and the `resource_metadata` a 401 points to.
//!
//! Sessions (`Mcp-Session-Id`) are bound to the caller: the id a server
//! gives is handed to the client with a tag (a MAC, under the gateway's
//! hash key, of the caller's issuer and subject and the id), and a request
//! whose id does not carry the caller's tag is refused ([`SessionIds`]). A
//! server never sees who calls (the token stops at the gateway), so
//! without this anyone who learnt another user's session id could read its
//! stream, replay it, or end it. Without a hash key, ids pass as they are.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Map, Value};

use crate::auth::Identity;
use crate::config::FilterConfig;
use crate::headers::{Headers, Repeated};
use crate::inspect::apply::{inspect_value, Outcome};
use crate::inspect::body::{parse_strict, to_json};
use crate::inspect::calls::{decide_call, CallDecision, ToolDecision, ToolEntry};
use crate::inspect::mask::{HashKey, Vault};
use crate::inspect::sse::{SseEvent, SseParser};
use crate::policy::{ActiveRules, Direction, Policy, ToolAccess};
use crate::protocol::Reason;
use crate::provider::{Api, ErrorKind, GatewayError, LocalReply, Rejection};

/// The method whose answer lists tools.
pub const TOOLS_LIST: &str = "tools/list";
/// The method that runs a tool.
pub const TOOLS_CALL: &str = "tools/call";

/// Where RFC 9728 puts a protected resource's metadata: this, then the
/// resource's path.
pub const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";

/// The policy's name for tool `tool` of the MCP server `server`.
pub fn tool_name(server: &str, tool: &str) -> String {
    format!("mcp.{server}.{tool}")
}

/// The JSON-RPC message a client sent, as the policy reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The message's id (`null` for a notification).
    pub id: Value,
    /// The method; `None` for the client's answer to a server's request.
    pub method: Option<String>,
    /// The tool a `tools/call` names, and its arguments.
    pub call: Option<(String, Value)>,
}

fn invalid(message: impl Into<String>) -> Rejection {
    Rejection::new(
        Api::Mcp,
        ErrorKind::InvalidRequest,
        Reason::McpMessage,
        message,
    )
}

/// One JSON-RPC 2.0 message from a POST body (parsed strictly already).
pub fn read_message(doc: &Value) -> Result<Message, Rejection> {
    let object =
        match doc {
            Value::Object(o) => o,
            Value::Array(_) => return Err(invalid(
                "JSON-RPC batches are not accepted by the gateway: send one message per request",
            )),
            _ => return Err(invalid("the body is not a JSON-RPC message")),
        };
    if object.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(invalid("the body is not a JSON-RPC 2.0 message"));
    }
    let id = object.get("id").cloned().unwrap_or(Value::Null);
    if !matches!(id, Value::Null | Value::String(_) | Value::Number(_)) {
        return Err(invalid("a JSON-RPC id is a string or a number"));
    }
    let method = match object.get("method") {
        None if object.contains_key("result") || object.contains_key("error") => None,
        Some(Value::String(m)) => Some(m.clone()),
        _ => return Err(invalid("a JSON-RPC request names its method as a string")),
    };
    let call = match method.as_deref() {
        Some(TOOLS_CALL) => Some(read_call(object)?),
        _ => None,
    };
    Ok(Message { id, method, call })
}

/// What an approval of an MCP request is bound to: its method and params,
/// without the JSON-RPC id and `params._meta.progressToken` (a client's
/// bookkeeping, new on every request; the rest of `_meta` reaches the
/// server's tools, so it is bound too). So the same tool call sent again
/// (ticket mode) matches its approval, and one with other arguments does
/// not.
pub fn approval_binding(doc: &Value) -> Value {
    let mut params = doc.get("params").cloned().unwrap_or(Value::Null);
    if let Some(Value::Object(meta)) = params.get_mut("_meta") {
        meta.remove("progressToken");
    }
    json!({"method": doc.get("method"), "params": params})
}

/// The session ids of one caller: the server's ids, tagged for the client.
pub struct SessionIds<'a> {
    pub key: &'a HashKey,
    pub identity: &'a Identity,
}

/// The header that carries a session's id both ways.
pub const SESSION_HEADER: &str = "mcp-session-id";
const SESSION_DOMAIN: &str = "warden mcp session";

impl SessionIds<'_> {
    fn parts<'p>(&'p self, id: &'p str) -> [&'p str; 3] {
        [&self.identity.issuer, &self.identity.subject, id]
    }

    /// The id the client gets for the server's `id` (unchanged without a
    /// key).
    pub fn for_client(&self, id: &str) -> String {
        match self.key.tag(SESSION_DOMAIN, &self.parts(id)) {
            Some(tag) => format!("{id}.{}", URL_SAFE_NO_PAD.encode(tag)),
            None => id.to_owned(),
        }
    }

    /// The server's id of the session a request names (`None`: it names
    /// none); refused unless the id carries this caller's tag, and when the
    /// header comes twice.
    pub fn of_request(&self, headers: Headers<'_>) -> Result<Option<String>, Rejection> {
        match headers.single(SESSION_HEADER) {
            Ok(None) => Ok(None),
            Ok(Some(sent)) => std::str::from_utf8(sent)
                .map_err(|_| no_such_session())
                .and_then(|sent| self.for_server(sent))
                .map(Some),
            Err(Repeated) => Err(no_such_session()),
        }
    }

    /// The server's id for the one a client sent; refused unless it carries
    /// this caller's tag.
    pub fn for_server(&self, sent: &str) -> Result<String, Rejection> {
        if !self.key.is_set() {
            return Ok(sent.to_owned());
        }
        let ours = sent.rsplit_once('.').and_then(|(id, tag)| {
            let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
            self.key
                .verify_tag(SESSION_DOMAIN, &self.parts(id), &tag)
                .then(|| id.to_owned())
        });
        ours.ok_or_else(no_such_session)
    }
}

/// The answer to a session id that is not the caller's: 404, as for a
/// session the server ended, so the client starts a new one and learns
/// nothing of whose the id is.
pub fn no_such_session() -> Rejection {
    Rejection::new(
        Api::Mcp,
        ErrorKind::NotFound,
        Reason::McpSession,
        "no such MCP session for you: start a new one",
    )
}

/// The headers that repeat a message's method and name for routers
/// (`Mcp-Method`, `Mcp-Name`, protocol 2026-07-28) must say what the body
/// says: the gateway judges the body, and something behind it that reads
/// the headers must not be told another story.
pub fn check_routing_headers(headers: Headers<'_>, message: &Message) -> Result<(), Rejection> {
    let differs = |header: &str, body: Option<&str>| match headers.single(header) {
        Ok(None) => false,
        Ok(Some(value)) => Some(value) != body.map(str::as_bytes),
        Err(Repeated) => true,
    };
    if differs("mcp-method", message.method.as_deref()) {
        return Err(invalid(
            "the Mcp-Method header does not match the message's method",
        ));
    }
    if let Some((tool, _)) = &message.call {
        if differs("mcp-name", Some(tool)) {
            return Err(invalid(
                "the Mcp-Name header does not match the tool the message calls",
            ));
        }
    }
    Ok(())
}

fn read_call(object: &Map<String, Value>) -> Result<(String, Value), Rejection> {
    let params = object.get("params").and_then(Value::as_object);
    let Some(name) = params.and_then(|p| p.get("name")).and_then(Value::as_str) else {
        return Err(invalid(
            "tools/call names its tool in params.name, a string",
        ));
    };
    let arguments = match params.and_then(|p| p.get("arguments")) {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(a @ Value::Object(_)) => a.clone(),
        Some(_) => return Err(invalid("tools/call takes its arguments as an object")),
    };
    Ok((name.to_owned(), arguments))
}

/// The policy on a `tools/call` of `server`'s `tool` (see
/// [`decide_call`]): `Refused` is answered with [`refusal`], `Held` waits
/// for an approval like any request whose rule asks for one.
pub fn judge_tool_call(
    policy: &Policy,
    identity: &Identity,
    server: &str,
    tool: &str,
    arguments: &Value,
) -> CallDecision {
    decide_call(policy, identity, None, &tool_name(server, tool), arguments)
}

/// The answer to a refused `tools/call`. The sentence never echoes the
/// arguments.
pub fn refusal(entry: &ToolEntry) -> Rejection {
    let message = match &entry.rule {
        Some(rule) => format!(
            "the call to tool '{}' was refused by the gateway's policy (rule '{rule}')",
            entry.tool
        ),
        None => format!(
            "the gateway's policy does not let your groups use tool '{}'",
            entry.tool
        ),
    };
    Rejection::new(
        Api::Mcp,
        ErrorKind::PermissionDenied,
        Reason::ToolDenied,
        message,
    )
}

/// What the policy makes of an MCP server's answers to one request.
pub struct Answer {
    pub policy: std::rc::Rc<Policy>,
    pub identity: Identity,
    pub server: String,
    pub active: ActiveRules,
    pub key: HashKey,
    /// Values the request's rules tokenized, put back in the answer.
    pub vault: Vault,
    /// The request's id, which the gateway's own errors answer.
    pub request_id: Value,
    /// What the rules found, and what was done to tools.
    pub outcome: Outcome,
    pub entries: Vec<ToolEntry>,
    /// The rule that stopped a message, if one did.
    pub blocked: Option<String>,
}

impl Answer {
    /// The policy on one message of the answer; whether it changed. A
    /// message a rule stops becomes a JSON-RPC error for the same id.
    pub fn inspect(&mut self, message: &mut Value) -> bool {
        // Any message's list: ids are the client's to spell (`1`, `1.0`)
        // and the request's rules may have rewritten one.
        let listed = self.keep_allowed_tools(message);
        let (outcome, changed) = inspect_value(
            &self.policy,
            &self.active,
            Direction::Response,
            message,
            &mut self.vault,
            &self.key,
        );
        let stop = outcome.stop();
        self.outcome.merge(outcome);
        if let Some((rule, _)) = stop {
            let id = message.get("id").cloned().unwrap_or(Value::Null);
            *message = error_message(
                &id,
                &GatewayError::new(
                    ErrorKind::PermissionDenied,
                    Reason::Blocked,
                    format!(
                        "the server's answer was blocked by the gateway's policy (rule '{rule}')"
                    ),
                ),
            );
            self.blocked = Some(rule);
            return true;
        }
        listed || changed
    }

    /// Removes from a `tools/list` result the tools the caller may not use;
    /// whether any was removed.
    fn keep_allowed_tools(&mut self, message: &mut Value) -> bool {
        let Some(Value::Array(tools)) = message.pointer_mut("/result/tools") else {
            return false;
        };
        let before = tools.len();
        let (policy, identity, server) = (&self.policy, &self.identity, &self.server);
        let entries = &mut self.entries;
        tools.retain(|tool| {
            // A tool without a name cannot be judged: not offered.
            let Some(name) = tool.get("name").and_then(Value::as_str) else {
                return false;
            };
            let name = tool_name(server, name);
            let (keep, decision) = match policy.tool_access(identity, &name) {
                ToolAccess::Allowed => return true,
                ToolAccess::DeniedObserved => (true, ToolDecision::WouldRemove),
                ToolAccess::Denied => (false, ToolDecision::Removed),
            };
            entries.push(ToolEntry {
                tool: name,
                decision,
                rule: None,
            });
            keep
        });
        tools.len() != before
    }

    /// A whole `application/json` answer: the body to send instead, if the
    /// policy changed it; `Err` when it is not one JSON message.
    pub fn inspect_body(&mut self, body: &[u8]) -> Result<Option<Vec<u8>>, serde_json::Error> {
        let mut message = parse_strict(body)?;
        Ok(self.inspect(&mut message).then(|| to_json(&message)))
    }
}

/// A JSON-RPC error message answering `id`.
pub fn error_message(id: &Value, error: &GatewayError) -> Value {
    error.rpc_error(id)
}

/// An MCP answer streamed as server-sent events, one JSON-RPC message per
/// event, each inspected whole ([`Answer::inspect`]) as it completes. A
/// message is small and complete in its event, so nothing is held across
/// events. An event that is not one JSON message, or a stream that breaks
/// the event-stream format, ends the stream with a JSON-RPC error for the
/// request: nothing uninspected passes.
pub struct MessageStream {
    parser: SseParser,
    pub answer: Answer,
    /// Set once the stream was ended by the gateway.
    ended: Option<Reason>,
}

impl MessageStream {
    pub fn new(answer: Answer) -> Self {
        Self {
            parser: SseParser::new(),
            answer,
            ended: None,
        }
    }

    /// Why the gateway ended the stream, if it did.
    pub fn ended(&self) -> Option<Reason> {
        self.ended
    }

    /// The bytes to send for this chunk.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<u8> {
        if self.ended.is_some() {
            return Vec::new();
        }
        let events = self.parser.feed(chunk);
        self.send(events)
    }

    /// The bytes to send at the stream's end (an event the stream's end cut
    /// off is read as the parser completes it, and inspected like any).
    pub fn finish(&mut self) -> Vec<u8> {
        if self.ended.is_some() {
            return Vec::new();
        }
        let events = self.parser.finish();
        self.send(events)
    }

    fn send(&mut self, events: Result<Vec<SseEvent>, crate::inspect::sse::SseError>) -> Vec<u8> {
        let mut out = Vec::new();
        let events = match events {
            Ok(events) => events,
            Err(_) => {
                self.end(&mut out, Reason::StreamFraming);
                return out;
            }
        };
        for mut event in events {
            let Some(data) = event.data.as_deref().filter(|d| !d.is_empty()) else {
                // Comments, ids and retries: no message to read.
                out.extend(event.to_bytes());
                continue;
            };
            let Ok(mut message) = parse_strict(data.as_bytes()) else {
                self.end(&mut out, Reason::ResponseUninspectable);
                return out;
            };
            if self.answer.inspect(&mut message) {
                event.data = Some(String::from_utf8_lossy(&to_json(&message)).into_owned());
            }
            out.extend(event.to_bytes());
        }
        out
    }

    fn end(&mut self, out: &mut Vec<u8>, reason: Reason) {
        let error = GatewayError::new(
            ErrorKind::PermissionDenied,
            reason,
            "the server's answer cannot be inspected, so the gateway ended it",
        );
        let message = error_message(&self.answer.request_id, &error);
        out.extend(SseEvent::named("message", message.to_string()).to_bytes());
        self.ended = Some(reason);
    }
}

/// The `scheme://authority` a client reached the gateway at, when the
/// headers say so in a form safe to write into a header and a URL.
fn origin(headers: Headers<'_>) -> Option<String> {
    let scheme = match headers.get(":scheme") {
        Some(s) if s.eq_ignore_ascii_case(b"https") => "https",
        _ => "http",
    };
    let authority = headers.get_str(":authority")?;
    let safe = !authority.is_empty()
        && authority
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
    safe.then(|| format!("{scheme}://{authority}"))
}

/// The URL of the metadata of the resource at `path` (query removed), for a
/// 401's `WWW-Authenticate: Bearer resource_metadata="..."`. The path is
/// percent-encoded past the characters a URL path needs as they are, so
/// nothing in it can close the quoted string or add a parameter.
pub fn metadata_url(headers: Headers<'_>) -> Option<String> {
    let path = headers.get_str(":path")?.split('?').next()?;
    let mut encoded = String::with_capacity(path.len());
    for byte in path.bytes() {
        if byte.is_ascii_alphanumeric() || b"/-._~".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    Some(format!("{}{METADATA_PATH}{encoded}", origin(headers)?))
}

/// The gateway's answer to a GET of an MCP route's protected-resource
/// metadata (RFC 9728: the path after [`METADATA_PATH`] is the resource's),
/// or `None` when the request is not one.
pub fn metadata_reply(config: &FilterConfig, headers: Headers<'_>) -> Option<LocalReply> {
    let path = headers.get_str(":path")?.split('?').next()?;
    let resource_path = path.strip_prefix(METADATA_PATH)?;
    if !headers
        .get(":method")
        .is_some_and(|m| m.eq_ignore_ascii_case(b"GET"))
    {
        return None;
    }
    // The resource is an MCP route: its prefix, or a path under it.
    let server = config.providers.iter().find(|p| {
        p.api == Api::Mcp
            && (resource_path.starts_with(&p.path_prefix)
                || Some(resource_path) == p.path_prefix.strip_suffix('/'))
    })?;
    let origin = origin(headers)?;
    let issuers: Vec<&str> = config
        .auth
        .issuers
        .iter()
        .map(|i| i.issuer.as_str())
        .collect();
    let body = json!({
        "resource": format!("{origin}{resource_path}"),
        "authorization_servers": issuers,
        "bearer_methods_supported": ["header"],
        "resource_name": format!("{} (through the Warden gateway)", server.name),
    });
    Some(LocalReply {
        status: 200,
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("cache-control".into(), "max-age=300".into()),
            // The resource names the host the client asked for.
            ("vary".into(), "host".into()),
        ],
        body: body.to_string().into_bytes(),
    })
}

#[cfg(test)]
mod tests;
