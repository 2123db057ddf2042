//! Policy documents as the control plane sees them: validation with the
//! filter's own compiler, problems pointed at lines of the YAML text, and the
//! document as JSON for the gateways.
//!
//! One function, [`validate`], serves both `POST /v1/policies[/validate]`
//! and the offline `warden policy validate FILE`, so the API and the CLI
//! always report the same problems.
//!
//! On the server, [`Checker`] runs it: compiling a policy's patterns can
//! take seconds of CPU, which on the async threads stalled every other
//! request (policy polls, approvals). It runs on tokio's blocking threads,
//! a few at a time (one more is refused at once, not queued), each person
//! a few times a minute ([`RateLimiter`]), on documents of at most
//! [`MAX_DOCUMENT_BYTES`], and the request waits at most
//! [`CheckLimits::deadline`] for it. The engine bounds each pattern's
//! compiled size.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

/// Largest policy document accepted, in bytes.
pub const MAX_DOCUMENT_BYTES: usize = 256 * 1024;

/// One problem in a policy document: the engine's own type (its compiler
/// reports it; [`validate`] adds the line when the compiler gave a path).
pub use warden_engine::policy::Problem;

/// A problem with only a message.
fn problem(message: impl Into<String>) -> Problem {
    Problem {
        path: None,
        line: None,
        column: None,
        message: message.into(),
    }
}

/// Checks `text` with the filter's compiler. Every problem found is returned,
/// each with a line when one can be found (syntax errors carry their own;
/// semantic ones are located by their path in the YAML tree).
pub fn validate(text: &str) -> Result<(), Vec<Problem>> {
    if text.len() > MAX_DOCUMENT_BYTES {
        return Err(vec![problem(format!(
            "the document is larger than {MAX_DOCUMENT_BYTES} bytes"
        ))]);
    }
    let problems = match warden_engine::policy::check_document(text.as_bytes()) {
        Ok(_) => return Ok(()),
        Err(problems) => problems,
    };
    let tree = marked_yaml::parse_yaml(0, text).ok();
    let mut out: Vec<Problem> = problems
        .into_iter()
        .map(|mut located| {
            if located.line.is_none() {
                if let (Some(tree), Some(path)) = (&tree, &located.path) {
                    if let Some((line, column)) = locate(tree, path) {
                        located.line = Some(line);
                        located.column = Some(column);
                    }
                }
            }
            located
        })
        .collect();
    if out.is_empty() {
        // The compiler refused without saying why: never report "valid".
        out.push(problem("the policy is invalid"));
    }
    Err(out)
}

/// The line and column (1-based) of the node at `path` (`rules[2].regex`,
/// `groups.finance.models`). When the full path does not exist in the text
/// (a missing field, a default), the deepest node that does is used.
pub fn locate(tree: &marked_yaml::Node, path: &str) -> Option<(usize, usize)> {
    let mut node = tree;
    let mut best = position(node);
    for segment in parse_path(path) {
        let next = match segment {
            Segment::Key(key) => node.as_mapping().and_then(|map| {
                map.iter()
                    .find(|(k, _)| k.as_str() == key)
                    .map(|(k, v)| (k.span().start().copied(), v))
            }),
            Segment::Index(index) => node
                .as_sequence()
                .and_then(|seq| seq.get(index))
                .map(|v| (None, v)),
        };
        let Some((key_start, value)) = next else {
            break;
        };
        node = value;
        // A key's own line is a better pointer than a value that may start
        // on the next line (a block mapping) or be empty (a null).
        best = key_start
            .map(|m| (m.line(), m.column()))
            .or_else(|| position(node))
            .or(best);
    }
    best
}

fn position(node: &marked_yaml::Node) -> Option<(usize, usize)> {
    node.span().start().map(|m| (m.line(), m.column()))
}

enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

/// `rules[2].regex` -> Key(rules), Index(2), Key(regex). Group names may hold
/// dots only if the engine quoted them, which it does not; a segment that does
/// not parse simply stops the walk.
fn parse_path(path: &str) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (name, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !name.is_empty() {
            out.push(Segment::Key(name));
        }
        while let Some(stripped) = rest.strip_prefix('[') {
            let Some(end) = stripped.find(']') else {
                return out;
            };
            match stripped[..end].parse() {
                Ok(index) => out.push(Segment::Index(index)),
                Err(_) => return out,
            }
            rest = &stripped[end + 1..];
        }
    }
    out
}

/// How the server bounds policy checks (validate and publish).
#[derive(Clone)]
pub struct CheckLimits {
    /// Checks running at once; one more waits for a slot up to `queue`.
    pub concurrent: usize,
    /// Longest a check waits for a slot before it is refused (503): a few
    /// admins publishing at once are served in turn, a flood is not queued
    /// without end.
    pub queue: Duration,
    /// Checks one caller may start back to back...
    pub burst: u32,
    /// ...and one more per `refill` after that (429 before).
    pub refill: Duration,
    /// Longest a request waits for its check (503 after; the check keeps
    /// its slot until it ends, so the bound on concurrent checks holds).
    pub deadline: Duration,
    /// Runs on the blocking thread before each check. Tests use it to keep
    /// checks in flight; `None` in production.
    #[doc(hidden)]
    pub before_check: Option<Arc<dyn Fn() + Send + Sync>>,
}

impl Default for CheckLimits {
    fn default() -> Self {
        CheckLimits {
            concurrent: 2,
            queue: Duration::from_secs(10),
            burst: 10,
            refill: Duration::from_secs(6),
            deadline: Duration::from_secs(30),
            before_check: None,
        }
    }
}

impl std::fmt::Debug for CheckLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckLimits")
            .field("concurrent", &self.concurrent)
            .field("queue", &self.queue)
            .field("burst", &self.burst)
            .field("refill", &self.refill)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

/// Why [`Checker::check`] gave no verdict, or the verdict.
#[derive(Debug)]
pub enum CheckError {
    /// Larger than [`MAX_DOCUMENT_BYTES`].
    TooLarge,
    /// The caller's checks are used up; one more is possible after this long.
    RateLimited(Duration),
    /// Every slot is taken.
    Busy,
    /// The check did not end within the deadline.
    TimedOut,
    /// The check's thread failed.
    Failed(String),
    /// The document has problems.
    Invalid(Vec<Problem>),
}

/// The server's policy checker: [`validate`] within [`CheckLimits`].
#[derive(Debug)]
pub struct Checker {
    limits: CheckLimits,
    slots: Arc<Semaphore>,
    rate: Mutex<RateLimiter>,
}

impl Checker {
    /// A checker with `limits`.
    pub fn new(limits: CheckLimits) -> Self {
        Checker {
            slots: Arc::new(Semaphore::new(limits.concurrent.max(1))),
            rate: Mutex::new(RateLimiter::new(limits.burst, limits.refill)),
            limits,
        }
    }

    /// Checks `document` for `caller` (a stable key for the person) at `now`.
    pub async fn check(
        &self,
        caller: &str,
        document: &str,
        now: Instant,
    ) -> Result<(), CheckError> {
        if document.len() > MAX_DOCUMENT_BYTES {
            return Err(CheckError::TooLarge);
        }
        self.rate
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .admit(caller, now)
            .map_err(CheckError::RateLimited)?;
        let slot = match tokio::time::timeout(self.limits.queue, self.slots.clone().acquire_owned())
            .await
        {
            Ok(Ok(slot)) => slot,
            _ => return Err(CheckError::Busy),
        };
        let text = document.to_owned();
        let before = self.limits.before_check.clone();
        let check = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            if let Some(before) = before {
                before();
            }
            validate(&text)
        });
        match tokio::time::timeout(self.limits.deadline, check).await {
            Err(_elapsed) => Err(CheckError::TimedOut),
            Ok(Err(error)) => Err(CheckError::Failed(error.to_string())),
            Ok(Ok(verdict)) => verdict.map_err(CheckError::Invalid),
        }
    }
}

/// Token buckets keyed by caller, as a GCRA: each key keeps the time at
/// which its bucket is full again. Hand-written: with the clock a parameter
/// (tests drive it) this is a few lines, where `governor` brings its own
/// clock abstraction and a concurrent map for the same.
#[derive(Debug)]
pub struct RateLimiter {
    burst: u32,
    refill: Duration,
    full_at: HashMap<String, Instant>,
}

/// Keys kept before those whose bucket is full again are dropped.
const RATE_KEYS: usize = 10_000;

impl RateLimiter {
    /// `burst` at once, then one per `refill`.
    pub fn new(burst: u32, refill: Duration) -> Self {
        RateLimiter {
            burst: burst.max(1),
            refill,
            full_at: HashMap::new(),
        }
    }

    /// Takes one from `key`'s bucket at `now`, or says how long until one is there.
    pub fn admit(&mut self, key: &str, now: Instant) -> Result<(), Duration> {
        if self.full_at.len() >= RATE_KEYS {
            // A full bucket is the same as none.
            self.full_at.retain(|_, full_at| *full_at > now);
        }
        let full_at = self.full_at.get(key).copied().unwrap_or(now).max(now);
        // Empty once `full_at` is `burst` refills away.
        let window = self.refill.saturating_mul(self.burst);
        let after = full_at + self.refill;
        let over = after.saturating_duration_since(now).saturating_sub(window);
        if !over.is_zero() {
            return Err(over);
        }
        self.full_at.insert(key.to_owned(), after);
        Ok(())
    }
}

/// The document as JSON, for `GET /v1/policy/active`. The text was validated
/// before it was stored, so a failure here means a corrupted row.
pub fn to_json(text: &str) -> Result<Value, String> {
    serde_yaml_ng::from_str::<Value>(text).map_err(|error| error.to_string())
}

/// Lowercase hex SHA-256 of `text`.
pub fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const DOC: &str = "version: 1\ngroups:\n  finance:\n    models: [\"gpt-4o-mini\"]\nrules:\n  - {name: a, detect: email, action: mask}\n  - name: b\n    regex: '('\n    action: block\n";

    #[test]
    fn paths_point_at_lines() {
        let tree = marked_yaml::parse_yaml(0, DOC).unwrap();
        assert_eq!(locate(&tree, "rules[1].regex").unwrap().0, 8);
        assert_eq!(locate(&tree, "rules[0]").unwrap().0, 6);
        assert_eq!(locate(&tree, "groups.finance.models").unwrap().0, 4);
        assert_eq!(locate(&tree, "groups.finance").unwrap().0, 3);
        // A field that is not written points at its parent.
        assert_eq!(locate(&tree, "rules[1].level").unwrap().0, 7);
        assert_eq!(locate(&tree, "version").unwrap(), (1, 1));
    }

    #[test]
    fn callers_get_a_burst_then_one_per_refill() {
        let t0 = Instant::now();
        let second = Duration::from_secs(1);
        let mut limiter = RateLimiter::new(3, 10 * second);
        for _ in 0..3 {
            limiter.admit("alice", t0).unwrap();
        }
        assert_eq!(limiter.admit("alice", t0), Err(10 * second));
        assert_eq!(limiter.admit("alice", t0 + 4 * second), Err(6 * second));
        // Others have buckets of their own.
        limiter.admit("bob", t0).unwrap();
        // One more per refill, not a new burst.
        limiter.admit("alice", t0 + 10 * second).unwrap();
        assert_eq!(limiter.admit("alice", t0 + 10 * second), Err(10 * second));
        // Idle long enough, the bucket is full again, and no fuller.
        let later = t0 + 1000 * second;
        for _ in 0..3 {
            limiter.admit("alice", later).unwrap();
        }
        assert!(limiter.admit("alice", later).is_err());
    }

    #[test]
    fn the_limiter_forgets_full_buckets() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(1, Duration::from_secs(1));
        for i in 0..RATE_KEYS {
            limiter.admit(&format!("k{i}"), t0).unwrap();
        }
        assert_eq!(limiter.full_at.len(), RATE_KEYS);
        limiter.admit("new", t0 + Duration::from_secs(2)).unwrap();
        assert_eq!(limiter.full_at.len(), 1);
    }

    #[tokio::test]
    async fn checks_are_bounded() {
        let checker = Checker::new(CheckLimits {
            burst: 2,
            refill: Duration::from_secs(3600),
            ..CheckLimits::default()
        });
        let now = Instant::now();
        let big = format!("# {}\n{DOC}", "x".repeat(MAX_DOCUMENT_BYTES));
        assert!(matches!(
            checker.check("alice", &big, now).await,
            Err(CheckError::TooLarge)
        ));
        assert!(matches!(
            checker.check("alice", DOC, now).await,
            Err(CheckError::Invalid(_))
        ));
        let valid = DOC.replace("regex: '('", "regex: 'x'");
        checker.check("alice", &valid, now).await.unwrap();
        assert!(matches!(
            checker.check("alice", &valid, now).await,
            Err(CheckError::RateLimited(_))
        ));
        checker.check("bob", &valid, now).await.unwrap();
    }

    #[tokio::test]
    async fn a_check_past_its_deadline_keeps_its_slot() {
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let wait = Mutex::new(wait);
        let checker = Checker::new(CheckLimits {
            concurrent: 1,
            queue: Duration::ZERO,
            deadline: Duration::ZERO,
            before_check: Some(Arc::new(move || {
                let _ = wait.lock().unwrap().recv();
            })),
            ..CheckLimits::default()
        });
        let now = Instant::now();
        assert!(matches!(
            checker.check("alice", DOC, now).await,
            Err(CheckError::TimedOut)
        ));
        // Its thread still compiles: the slot stays taken.
        assert!(matches!(
            checker.check("bob", DOC, now).await,
            Err(CheckError::Busy)
        ));
        release.send(()).unwrap();
    }

    #[test]
    fn hashes_are_hex() {
        assert_eq!(
            sha256_hex(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
