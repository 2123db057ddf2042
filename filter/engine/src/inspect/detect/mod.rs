//! Detectors: what counts as sensitive in a text, and exactly where it is.
//!
//! A policy's matchers (built-in detectors, custom regexes, keyword lists)
//! are compiled once into a [`DetectorSet`], shared by every request. It
//! answers two questions:
//!
//! - [`DetectorSet::find`]: the findings in a text, as byte spans of the
//!   *original* text, sorted, overlaps resolved.
//! - [`DetectorSet::holdback_start`]: for a stream, how much of the text not
//!   yet sent must wait because a match could still begin there.
//!
//! ## Layout
//! - this file: the public API, the scan loop, overlap resolution, holdback.
//! - `builtins`: each built-in's candidate pattern and validator (Luhn,
//!   mod-97, SSN ranges, address parsing, JWT header, entropy, context).
//! - `normalize`: the view detection runs on (invisible characters removed,
//!   NFKC) and its map back to original offsets.
//! - `encoded`: values hidden in base64, hex or percent-encoding: candidate
//!   runs are decoded and scanned again, up to two layers deep.
//! - `prefix`: derives, from a pattern, a regex for the prefixes of its
//!   matches; the holdback searches their union, anchored at the end.
//! - `needs`: derives, from a pattern's syntax tree, what every match must
//!   contain (bytes and how many) and how long a match can be; the scan
//!   skips detectors and narrows searches with it.
//!
//! ## Choices
//! - Patterns find candidates, code validates them: the regex crate has no
//!   look-around, and checks such as Luhn are arithmetic anyway.
//! - Cost on the request path: ASCII text (most of it), and text already in
//!   NFKC with nothing invisible, is matched in place with no copy. One pass
//!   counts the text's bytes: a detector whose needs the counts do not meet
//!   is skipped (most, on short strings), and in a long text a detector is
//!   searched only in the windows around the bytes of its rarest need. Where
//!   several detectors must still search the whole text, one `RegexSet`
//!   pass first tells which have a candidate at all. Nothing is compiled per
//!   request.
//!   A rejected candidate resumes one character later (or past itself, for
//!   unbounded ones), so the work stays linear in the text.
//! - Custom regexes and keyword lists are compiled with size limits, so a
//!   policy cannot make the filter allocate without bound.
//! - Holdback is sound by construction (see `prefix`): the held suffix is the
//!   earliest one that is a prefix of some match of some matcher. It is
//!   bounded by [`DetectorSet::max_holdback`]; a single value longer than that
//!   (a PEM block over 16 KiB, or one padded with hundreds of invisible
//!   characters) may be released before it completes.

mod builtins;
mod encoded;
pub mod gitleaks;
mod needs;
mod normalize;
mod prefix;
#[cfg(test)]
pub(crate) mod tests;
#[cfg(test)]
mod tests_needs;
#[cfg(test)]
mod tests_unicode;

use std::collections::{BTreeMap, BTreeSet};

use regex::{Regex, RegexBuilder, RegexSet, RegexSetBuilder};
use regex_automata::util::captures::Captures;
use regex_automata::{meta, Input, MatchKind};
use thiserror::Error;

use needs::Needs;
use normalize::View;
use prefix::Shape;

/// Longest custom pattern accepted, in bytes.
const PATTERN_MAX_BYTES: usize = 4096;
/// Compiled-size limit of one custom regex.
const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// Lazy-DFA cache limit of one custom regex.
const DFA_SIZE_LIMIT: usize = 1 << 20;
/// Longest keyword or phrase, in bytes.
const KEYWORD_MAX_BYTES: usize = 256;
/// Most keywords in one list.
const KEYWORDS_MAX: usize = 10_000;
/// Compiled-size limit of one keyword list.
const KEYWORDS_SIZE_LIMIT: usize = 8 << 20;
/// Compiled-size limit of the prefilter set and of each holdback regex.
const SET_SIZE_LIMIT: usize = 32 << 20;
/// Lazy-DFA cache of the prefilter set (per VM; see its use).
const SET_DFA_SIZE_LIMIT: usize = 16 << 20;
/// Detectors to search whole from which the set pass pays off.
const SET_MIN: usize = 3;
/// Compiled-size and lazy-DFA limits of a built-in's regex: the regex
/// crate's defaults, which `Regex::new` applies.
const BUILTIN_SIZE_LIMIT: usize = 10 << 20;
const BUILTIN_DFA_SIZE_LIMIT: usize = 2 << 20;
/// Texts shorter than this are searched whole: windows would not pay off.
const WINDOWED_MIN: usize = 256;
/// Holdback window for custom patterns that can match without bound.
const UNBOUNDED_WINDOW: usize = 1024;
/// Holdback window for custom patterns whose prefixes could not be derived:
/// that much is always held.
const OPAQUE_WINDOW: usize = 1024;
/// Original bytes per normalized byte, at most (`𝐀`, 4 bytes, reads `A`).
const EXPANSION: usize = 4;
/// Allowance for invisible characters inside a held value.
const INVISIBLE_SLACK: usize = 256;
/// Bytes before the holdback bound still normalized, as context.
const CONTEXT: usize = 64;
/// Normalized bytes before a candidate that a built-in's validator may read
/// (a word boundary, a glued character, the word `version` before an
/// address, the words that make a number an SSN): no validator looks
/// further back, so a stream that keeps this much of the text it already
/// released decides exactly as a scan of the whole text does.
pub(super) const LOOKBEHIND: usize = 48;
/// Characters after a candidate that a built-in's validator may read (a
/// glued character, a dash or dot and a digit, a space and an IBAN's group):
/// a value with fewer after it in a stream may still be judged otherwise.
const LOOKAHEAD: usize = 6;
/// Most original bytes kept for [`LOOKBEHIND`] (wide forms, invisible
/// characters).
const LOOKBEHIND_MAX_BYTES: usize = LOOKBEHIND * EXPANSION + INVISIBLE_SLACK;

/// Built-in detectors. [`Builtin::name`] is the policy name,
/// [`Builtin::label`] the placeholder text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Builtin {
    Email,
    Phone,
    PaymentCard,
    Iban,
    UsSsn,
    Ipv4,
    Ipv6,
    MacAddress,
    UsItin,
    UkNhs,
    CryptoWallet,
    Passport,
    DriverLicense,
    UrlCredentials,
    AzureClientSecret,
    AwsBedrockKey,
    AwsAccessKeyId,
    AwsSecretKey,
    GithubToken,
    GitlabToken,
    SlackToken,
    StripeKey,
    GoogleApiKey,
    OpenaiKey,
    AnthropicKey,
    PrivateKey,
    Jwt,
    SecretAssignment,
}

impl Builtin {
    pub const ALL: [Builtin; 28] = [
        Builtin::Email,
        Builtin::Phone,
        Builtin::PaymentCard,
        Builtin::Iban,
        Builtin::UsSsn,
        Builtin::Ipv4,
        Builtin::Ipv6,
        Builtin::MacAddress,
        Builtin::UsItin,
        Builtin::UkNhs,
        Builtin::CryptoWallet,
        Builtin::Passport,
        Builtin::DriverLicense,
        Builtin::UrlCredentials,
        Builtin::AzureClientSecret,
        Builtin::AwsBedrockKey,
        Builtin::AwsAccessKeyId,
        Builtin::AwsSecretKey,
        Builtin::GithubToken,
        Builtin::GitlabToken,
        Builtin::SlackToken,
        Builtin::StripeKey,
        Builtin::GoogleApiKey,
        Builtin::OpenaiKey,
        Builtin::AnthropicKey,
        Builtin::PrivateKey,
        Builtin::Jwt,
        Builtin::SecretAssignment,
    ];

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.name() == name)
    }

    /// The snake_case name used in policies and audit records.
    pub fn name(self) -> &'static str {
        match self {
            Builtin::Email => "email",
            Builtin::Phone => "phone",
            Builtin::PaymentCard => "payment_card",
            Builtin::Iban => "iban",
            Builtin::UsSsn => "us_ssn",
            Builtin::Ipv4 => "ipv4",
            Builtin::Ipv6 => "ipv6",
            Builtin::MacAddress => "mac_address",
            Builtin::UsItin => "us_itin",
            Builtin::UkNhs => "uk_nhs",
            Builtin::CryptoWallet => "crypto_wallet",
            Builtin::Passport => "passport",
            Builtin::DriverLicense => "driver_license",
            Builtin::UrlCredentials => "url_credentials",
            Builtin::AzureClientSecret => "azure_client_secret",
            Builtin::AwsBedrockKey => "aws_bedrock_key",
            Builtin::AwsAccessKeyId => "aws_access_key_id",
            Builtin::AwsSecretKey => "aws_secret_key",
            Builtin::GithubToken => "github_token",
            Builtin::GitlabToken => "gitlab_token",
            Builtin::SlackToken => "slack_token",
            Builtin::StripeKey => "stripe_key",
            Builtin::GoogleApiKey => "google_api_key",
            Builtin::OpenaiKey => "openai_key",
            Builtin::AnthropicKey => "anthropic_key",
            Builtin::PrivateKey => "private_key",
            Builtin::Jwt => "jwt",
            Builtin::SecretAssignment => "secret_assignment",
        }
    }

    /// The placeholder text (`[EMAIL]`, `<EMAIL_1>`).
    pub fn label(self) -> &'static str {
        match self {
            Builtin::Email => "EMAIL",
            Builtin::Phone => "PHONE",
            Builtin::PaymentCard => "PAYMENT_CARD",
            Builtin::Iban => "IBAN",
            Builtin::UsSsn => "US_SSN",
            Builtin::Ipv4 => "IPV4",
            Builtin::Ipv6 => "IPV6",
            Builtin::MacAddress => "MAC_ADDRESS",
            Builtin::UsItin => "US_ITIN",
            Builtin::UkNhs => "UK_NHS",
            Builtin::CryptoWallet => "CRYPTO_WALLET",
            Builtin::Passport => "PASSPORT",
            Builtin::DriverLicense => "DRIVER_LICENSE",
            Builtin::UrlCredentials => "PASSWORD",
            Builtin::AzureClientSecret => "AZURE_CLIENT_SECRET",
            Builtin::AwsBedrockKey => "AWS_BEDROCK_KEY",
            Builtin::AwsAccessKeyId => "AWS_ACCESS_KEY_ID",
            Builtin::AwsSecretKey => "AWS_SECRET_KEY",
            Builtin::GithubToken => "GITHUB_TOKEN",
            Builtin::GitlabToken => "GITLAB_TOKEN",
            Builtin::SlackToken => "SLACK_TOKEN",
            Builtin::StripeKey => "STRIPE_KEY",
            Builtin::GoogleApiKey => "GOOGLE_API_KEY",
            Builtin::OpenaiKey => "OPENAI_KEY",
            Builtin::AnthropicKey => "ANTHROPIC_KEY",
            Builtin::PrivateKey => "PRIVATE_KEY",
            Builtin::Jwt => "JWT",
            Builtin::SecretAssignment => "SECRET",
        }
    }
}

/// One matcher of a policy rule.
#[derive(Debug, Clone, PartialEq)]
pub enum MatcherSpec {
    Builtin(Builtin),
    /// A custom regex; if `group` names a capture group, only that group is
    /// the sensitive span.
    Regex {
        pattern: String,
        group: Option<String>,
        label: String,
    },
    /// Case-insensitive whole-word keywords or phrases (words in a phrase
    /// are separated by any whitespace).
    Keywords {
        words: Vec<String>,
        label: String,
    },
    /// A rule of a gitleaks rule file (see `gitleaks`).
    Gitleaks {
        rule: Box<gitleaks::GitleaksRule>,
        label: String,
    },
}

/// A sensitive value: `start..end` are byte offsets into the text given to
/// [`DetectorSet::find`], on character boundaries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The id given with the matcher's spec (the policy rule index).
    pub id: usize,
    pub start: usize,
    pub end: usize,
    /// Placeholder text.
    pub label: String,
    /// Which detector, for audit: a built-in's name, `regex` or `keywords`.
    pub detector: &'static str,
}

/// A matcher spec that cannot be compiled. `id` is the spec's id. Messages
/// never quote keywords (a keyword list may itself be confidential).
#[derive(Debug, Error)]
pub enum DetectError {
    #[error("rule {id}: invalid regex: {error}")]
    InvalidRegex { id: usize, error: regex::Error },
    #[error("rule {id}: regex is {len} bytes long, more than the {max} allowed")]
    PatternTooLong { id: usize, len: usize, max: usize },
    #[error("rule {id}: the regex has no capture group named `{group}`")]
    UnknownGroup { id: usize, group: String },
    #[error("rule {id}: the keyword list is empty")]
    NoKeywords { id: usize },
    #[error("rule {id}: keyword {index} is empty")]
    EmptyKeyword { id: usize, index: usize },
    #[error("rule {id}: keyword {index} is longer than {max} bytes")]
    KeywordTooLong { id: usize, index: usize, max: usize },
    #[error("rule {id}: {count} keywords, more than the {max} allowed")]
    TooManyKeywords { id: usize, count: usize, max: usize },
    #[error("rule {id}: the keyword list is too large to compile: {error}")]
    KeywordsTooLarge { id: usize, error: regex::Error },
    #[error("built-in detector `{name}` does not compile: {error}")]
    Builtin {
        name: &'static str,
        error: regex::Error,
    },
    /// The regex compiled for validation but not for searching (the same
    /// syntax and limits; not expected).
    #[error("rule {id}: the regex does not compile: {error}")]
    Engine { id: usize, error: String },
}

/// A policy's matchers, compiled once and shared by all requests.
#[derive(Debug)]
pub struct DetectorSet {
    detectors: Vec<Detector>,
    /// Which detectors have any candidate, in one pass: for texts where
    /// several detectors must be searched whole. `None` if the set would be
    /// too large: each then searches.
    prefilter: Option<RegexSet>,
    hold: Holdback,
}

#[derive(Debug)]
struct Detector {
    id: usize,
    label: String,
    kind: Kind,
    /// The pattern's search engine. The regex crate's `Regex` wraps the same
    /// engine; this one is used directly because a search can then be
    /// narrowed to a window while its assertions still see the whole text.
    re: meta::Regex,
    /// What every match needs (see `needs`), from the same pattern.
    needs: Needs,
    /// A gitleaks rule's keywords, entropy and allowlists.
    gitleaks: Option<Box<gitleaks::Checks>>,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Builtin(Builtin),
    Regex {
        group: Option<usize>,
    },
    /// One capture group per boundary variant; the one that took part is
    /// the keyword.
    Keywords,
    /// A gitleaks rule: the detector's `gitleaks` checks say the rest.
    Gitleaks,
}

/// Byte ranges of a text, sorted and disjoint, that a search is narrowed to.
type Windows = Vec<(usize, usize)>;

/// Whether detectors are prefiltered and windowed (see `needs`); `Off` runs
/// every detector over the whole text, the reference tests compare with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Filter {
    On,
    #[cfg_attr(not(test), allow(dead_code))]
    Off,
}

/// A finding before mapping and resolution: `det` indexes `detectors` (the
/// spec order, which also breaks ties).
#[derive(Debug, Clone, Copy)]
struct Raw {
    start: usize,
    end: usize,
    det: usize,
}

#[derive(Debug)]
struct Holdback {
    /// `(window, (?:P1|P2|…)\z)`: the prefix languages of the matchers,
    /// grouped by how far back (normalized bytes) they can reach.
    groups: Vec<(usize, Regex)>,
    /// Normalized bytes always held for matchers that could not be analysed.
    opaque: usize,
    /// A combining mark arriving next could compose with the last character
    /// into one that some matcher accepts where it did not accept the base
    /// (see `View::unstable_tail`). Composition only ever yields non-ASCII
    /// letters and symbols from ASCII letters and `<=>`, so this takes a
    /// pattern that names non-ASCII characters, a negated class or a Unicode
    /// property; the built-ins' classes (ASCII, or negations of characters
    /// that never compose) do not qualify.
    composition_sensitive: bool,
    max: usize,
}

impl DetectorSet {
    /// `specs[i].0` is an opaque id (the policy rule index) echoed back in
    /// findings. Ties between identical spans go to the earlier spec.
    pub fn compile(specs: &[(usize, MatcherSpec)]) -> Result<Self, DetectError> {
        // What a policy brings is checked within its own limits first, so a
        // pattern they refuse costs nothing more; of the regex crate's
        // `Regex` only what the detectors need is kept (a group's index, the
        // number of groups).
        let mut patterns = Vec::with_capacity(specs.len());
        // A custom regex's sensitive group (its index); a gitleaks rule's
        // number of groups.
        let mut groups = Vec::with_capacity(specs.len());
        for (id, spec) in specs {
            let id = *id;
            let (pattern, group) = match spec {
                MatcherSpec::Builtin(b) => (builtins::definition(*b).pattern.to_owned(), None),
                MatcherSpec::Regex { pattern, group, .. } => {
                    let checked = checked_pattern(id, pattern)?;
                    let index = match group {
                        None => None,
                        Some(name) => Some(group_index(&checked, name).ok_or_else(|| {
                            DetectError::UnknownGroup {
                                id,
                                group: name.clone(),
                            }
                        })?),
                    };
                    (pattern.clone(), index)
                }
                MatcherSpec::Gitleaks { rule, .. } => {
                    let checked = checked_pattern(id, &rule.regex)?;
                    (rule.regex.clone(), Some(checked.captures_len()))
                }
                MatcherSpec::Keywords { words, .. } => {
                    let pattern = keyword_pattern(id, words)?;
                    RegexBuilder::new(&pattern)
                        .size_limit(KEYWORDS_SIZE_LIMIT)
                        .dfa_size_limit(DFA_SIZE_LIMIT)
                        .build()
                        .map_err(|error| DetectError::KeywordsTooLarge { id, error })?;
                    (pattern, None)
                }
            };
            patterns.push(pattern);
            groups.push(group);
        }
        // Then the unions, from the patterns alone: the holdback's and the
        // prefilter's are the largest regexes a policy compiles, and a VM's
        // memory never shrinks, so they are built while little else is live
        // (the default policy compiles with a fifth less peak memory so).
        let hold = holdback(specs, &patterns);
        let prefilter = RegexSetBuilder::new(&patterns)
            .size_limit(SET_SIZE_LIMIT)
            // The union of all detectors has many states; with the default
            // lazy-DFA cache, text dense in ids (hex, base64) clears the cache
            // so often that the regex crate falls back to its slow engine, for
            // that and later scans. A larger cache keeps it on the DFA.
            .dfa_size_limit(SET_DFA_SIZE_LIMIT)
            .build()
            .ok();
        let mut detectors = Vec::with_capacity(specs.len());
        let mut compiled: BTreeMap<Builtin, (meta::Regex, Needs)> = BTreeMap::new();
        for ((id, spec), (pattern, group)) in specs.iter().zip(patterns.iter().zip(groups)) {
            let id = *id;
            let detector = match spec {
                MatcherSpec::Builtin(b) => {
                    let def = builtins::definition(*b);
                    let (re, needs) = match compiled.get(b) {
                        Some(c) => c.clone(),
                        None => {
                            let c =
                                engine(id, def.pattern, BUILTIN_SIZE_LIMIT, BUILTIN_DFA_SIZE_LIMIT)
                                    .map_err(|e| match Regex::new(def.pattern) {
                                        // The regex crate's error says more.
                                        Err(error) => DetectError::Builtin {
                                            name: b.name(),
                                            error,
                                        },
                                        Ok(_) => e,
                                    })?;
                            compiled.insert(*b, c.clone());
                            c
                        }
                    };
                    Detector {
                        id,
                        label: b.label().to_owned(),
                        kind: Kind::Builtin(*b),
                        re,
                        needs,
                        gitleaks: None,
                    }
                }
                MatcherSpec::Regex { label, .. } => {
                    let (re, needs) = engine(id, pattern, REGEX_SIZE_LIMIT, DFA_SIZE_LIMIT)?;
                    Detector {
                        id,
                        label: label.clone(),
                        kind: Kind::Regex { group },
                        re,
                        needs,
                        gitleaks: None,
                    }
                }
                MatcherSpec::Keywords { label, .. } => {
                    let (re, needs) = engine(id, pattern, KEYWORDS_SIZE_LIMIT, DFA_SIZE_LIMIT)?;
                    Detector {
                        id,
                        label: label.clone(),
                        kind: Kind::Keywords,
                        re,
                        needs,
                        gitleaks: None,
                    }
                }
                MatcherSpec::Gitleaks { rule, label } => {
                    let (re, needs) = engine(id, pattern, REGEX_SIZE_LIMIT, DFA_SIZE_LIMIT)?;
                    let checks = gitleaks::Checks::compile(
                        id,
                        rule,
                        // A gitleaks rule's: its number of groups.
                        group.unwrap_or(0),
                        REGEX_SIZE_LIMIT,
                        DFA_SIZE_LIMIT,
                    )?;
                    Detector {
                        id,
                        label: label.clone(),
                        kind: Kind::Gitleaks,
                        re,
                        needs,
                        gitleaks: Some(Box::new(checks)),
                    }
                }
            };
            detectors.push(detector);
        }
        Ok(DetectorSet {
            detectors,
            prefilter,
            hold,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.detectors.is_empty()
    }

    /// All findings in `text`, sorted by start; of overlapping findings the
    /// earliest-starting, then the longest, then the earlier spec's is kept.
    pub fn find(&self, text: &str) -> Vec<Finding> {
        let mut kept: Vec<Raw> = Vec::new();
        for r in self.raw(text) {
            if kept.last().is_none_or(|k| r.start >= k.end) {
                kept.push(r);
            }
        }
        self.findings(kept)
    }

    /// Every finding, overlaps included (same order as [`find`](Self::find)):
    /// for decisions that must see each rule that fired, such as blocking,
    /// even where another rule's finding covers the same text.
    pub fn find_all(&self, text: &str) -> Vec<Finding> {
        self.findings(self.raw(text))
    }

    /// For streaming: [`find_all`](Self::find_all) of the values whose
    /// matches begin at or after `from` (a char boundary); the text before
    /// it is context, read by validators and assertions (a glued character,
    /// words that say what a number is) but not searched. A stream that
    /// released that text already judged what begins in it, and its
    /// holdback kept back any match that could still grow (see
    /// `holdback_start`), so searching it again would find nothing new at
    /// the cost of a scan. The exception: detectors whose finding is only
    /// part of their match (a key name and its value) search the context
    /// too, since a stream may have released the name and held the value.
    pub fn find_all_after(&self, text: &str, from: usize) -> Vec<Finding> {
        self.findings(self.raw_with(text, from, Filter::On))
    }

    /// For streaming: given the text of a stream not yet emitted, the byte
    /// offset from which it must be held back because a match could start
    /// there and complete with later text (`None`: all of it may go).
    ///
    /// Sound: any match of the full stream that starts before the returned
    /// offset ends within `text`. Minimal up to the patterns: the offset is
    /// the earliest position whose suffix is a prefix of some match (for
    /// `contact bob@exa` that is `bob@exa`; a trailing word is usually held,
    /// since it could begin an email or `password=...`). Bounded: never more
    /// than [`max_holdback`](Self::max_holdback) bytes are held.
    ///
    /// A finding of `find(text)` can start before the offset and end after
    /// it (a complete value followed by text that might extend another
    /// one): the caller masks such a finding whole before emitting.
    pub fn holdback_start(&self, text: &str) -> Option<usize> {
        if text.is_empty() || self.detectors.is_empty() {
            return None;
        }
        // Only the last `max` bytes can be held: normalize just those, and a
        // little before them as context for assertions and composition.
        let cut = floor_boundary(text, text.len().saturating_sub(self.hold.max + CONTEXT));
        let (head, text) = text
            .split_at_checked(cut)
            .map_or((0, text), |(head, tail)| (head.len(), tail));
        let hold = self.hold_from(text, 0);
        if hold >= text.len() {
            return None;
        }
        let bound = ceil_boundary(text, text.len().saturating_sub(self.hold.max));
        let start = hold.max(bound);
        (start < text.len()).then_some(head + start)
    }

    /// The unbounded holdback of `text`, decoded `depth` layers deep: the
    /// offset from which a match could still begin (`text.len()`: none).
    fn hold_from(&self, text: &str, depth: usize) -> usize {
        let view = View::new(text);
        let norm = view.text();
        let mut hold = norm.len();
        let earliest = |hay: &str, hold: &mut usize| {
            for (window, re) in &self.hold.groups {
                let from = floor_boundary(hay, hay.len().saturating_sub(*window));
                if let Some(m) = re.find_at(hay, from) {
                    *hold = (*hold).min(m.start());
                }
            }
        };
        earliest(norm, &mut hold);
        if self.hold.opaque > 0 {
            hold = hold.min(floor_boundary(
                norm,
                norm.len().saturating_sub(self.hold.opaque),
            ));
        }
        if self.hold.composition_sensitive {
            // The last character may still change (a combining mark may
            // follow): hold it, and anything that is a match prefix up to it.
            if let Some(unstable) = view.unstable_tail() {
                hold = hold.min(unstable);
                earliest(norm.get(..unstable).unwrap_or(norm), &mut hold);
            }
        }
        if depth < encoded::MAX_DEPTH {
            hold = hold.min(encoded::hold(norm, &mut |decoded| {
                self.hold_from(decoded, depth + 1)
            }));
        }
        if hold >= norm.len() {
            return text.len();
        }
        view.original_from(hold)
    }

    /// For streaming: where the left context begins that the detectors
    /// need, at the end of `released` (the original text of a stream already
    /// let go), to judge a value that follows it as they would in the whole
    /// text: whether it is glued to what precedes it (`abc2001:db8::1` is no
    /// address), or follows words that say what it is. The caller scans that
    /// context joined to the text still held and keeps only the findings that
    /// end after it. At least [`LOOKBEHIND`] visible characters, bounded.
    pub fn lookbehind_start(&self, released: &str) -> usize {
        if self.detectors.is_empty() {
            return released.len();
        }
        // ASCII is never invisible: the usual tail needs no walk.
        let ascii_from = released.len().saturating_sub(LOOKBEHIND);
        if released
            .as_bytes()
            .get(ascii_from..)
            .is_some_and(|tail| tail.is_ascii())
        {
            return ascii_from;
        }
        let mut visible = 0;
        for (i, c) in released.char_indices().rev() {
            if released.len() - i > LOOKBEHIND_MAX_BYTES {
                return i + c.len_utf8();
            }
            if !normalize::is_ignorable(c) {
                visible += 1;
                if visible >= LOOKBEHIND {
                    return i;
                }
            }
        }
        0
    }

    /// For streaming: whether a value found in `text` ending at `end` is
    /// judged for good, or text still to come could change the verdict of
    /// its validator (which reads a few characters after a value: `+1 415
    /// 555 2671/3` is no phone number). Invisible characters do not count.
    pub fn settled(&self, text: &str, end: usize) -> bool {
        text.get(end..).is_some_and(|rest| {
            rest.chars()
                .filter(|&c| !normalize::is_ignorable(c))
                .nth(LOOKAHEAD - 1)
                .is_some()
        })
    }

    /// The most bytes [`holdback_start`](Self::holdback_start) ever holds.
    pub fn max_holdback(&self) -> usize {
        self.hold.max
    }

    /// Candidates validated, mapped to original offsets, sorted, each
    /// `(start, end, detector)` once.
    fn raw(&self, text: &str) -> Vec<Raw> {
        self.raw_with(text, 0, Filter::On)
    }

    /// Candidates that begin at or after `from` (original offset).
    fn raw_with(&self, text: &str, from: usize, filter: Filter) -> Vec<Raw> {
        let mut raw = Vec::new();
        if text.len() <= from || self.detectors.is_empty() {
            return raw;
        }
        let budget = &mut encoded::Budget::new();
        self.collect_with(text, from, 0, budget, &mut raw, filter);
        raw.sort_by(|a, b| (a.start, b.end, a.det).cmp(&(b.start, a.end, b.det)));
        // A value can be seen both as is and decoded (`a%40b.com` is an
        // email either way).
        raw.dedup_by(|a, b| (a.start, a.end, a.det) == (b.start, b.end, b.det));
        raw
    }

    /// Appends the findings in `text`, in its offsets; encoded runs are
    /// decoded and scanned while `depth` allows.
    #[cfg(test)]
    fn collect(&self, text: &str, depth: usize, budget: &mut encoded::Budget, out: &mut Vec<Raw>) {
        self.collect_with(text, 0, depth, budget, out, Filter::On);
    }

    /// Appends the findings in `text` that begin at or after `from` (an
    /// original offset; what is before it is context), in `text`'s offsets.
    fn collect_with(
        &self,
        text: &str,
        from: usize,
        depth: usize,
        budget: &mut encoded::Budget,
        out: &mut Vec<Raw>,
        filter: Filter,
    ) {
        let first = out.len();
        let view = View::new(text);
        let hay = view.text();
        // Where matches may begin, in the normalized text: everything from
        // there on is searched, and only that part is counted for needs.
        let from = floor_boundary(hay, view.normalized_from(from));
        let searched = hay.get(from..).unwrap_or_default();
        // One pass counts the bytes; each detector then runs only if the
        // text holds what its matches need, and on a long text only around
        // the bytes of its rarest need (see `needs`).
        let hist = histogram(searched.as_bytes());
        // The whole text's counts, for detectors that also search the
        // context (counted only if one is asked for).
        let mut hist_whole: Option<[u32; 256]> = None;
        // Each detector the text may hold, with the need it can be windowed
        // around if any. Those that search the context search all of it:
        // context and held text are short in a stream.
        let mut plan: Vec<Planned<'_>> = Vec::new();
        for (det, d) in self.detectors.iter().enumerate() {
            // A gitleaks rule applies only to a text with one of its
            // keywords: what it says, and a prefilter too.
            if d.gitleaks.as_ref().is_some_and(|g| !g.applies(hay)) {
                continue;
            }
            let reaches = from > 0 && d.kind.reaches_back();
            let anchor = match (filter, reaches) {
                (Filter::Off, _) => None,
                (Filter::On, false) => match d.needs.check(searched.len(), &hist) {
                    Some(anchor) => anchor,
                    None => continue,
                },
                (Filter::On, true) => {
                    let counts = hist_whole.get_or_insert_with(|| histogram(hay.as_bytes()));
                    if d.needs.check(hay.len(), counts).is_none() {
                        continue;
                    }
                    None
                }
            };
            // Windows pay off where they are likely to leave most of the
            // text out: at most one group of `min` anchors per `max` bytes.
            let need = match (anchor, d.needs.max_len) {
                (Some((need, count)), Some(max))
                    if searched.len() >= WINDOWED_MIN
                        && count.saturating_mul(max) <= searched.len().saturating_mul(need.min) =>
                {
                    Some((need, count))
                }
                _ => None,
            };
            plan.push(Planned {
                det,
                d,
                reaches,
                need,
                windows: None,
            });
        }
        // Several detectors to search whole: one pass of the set over the
        // text says which have a candidate at all (cheaper than a search
        // each). Its answer holds for the windowed ones too. (The set
        // searches from `from`: it cannot speak for detectors that search
        // the context.)
        let set = self.prefilter.as_ref().filter(|_| filter == Filter::On);
        let whole = plan.iter().filter(|p| p.need.is_none()).count();
        let mut candidates = set
            .filter(|_| whole >= SET_MIN)
            .map(|s| Candidates::of(s, hay, from));
        if let Some(c) = &candidates {
            plan.retain(|p| p.reaches || c.matched(p.det));
        }
        // Where the anchors of each need are, each set found once.
        let mut anchors: Vec<(&needs::Need, usize)> = Vec::new();
        let mut anchor_of: Vec<Option<usize>> = Vec::with_capacity(plan.len());
        for p in &plan {
            anchor_of.push(p.need.map(|need| {
                anchors
                    .iter()
                    .position(|(a, _)| a.set == need.0.set)
                    .unwrap_or_else(|| {
                        anchors.push(need);
                        anchors.len() - 1
                    })
            }));
        }
        let at = anchor_positions(&anchors, hay.as_bytes(), from);
        // Windows per detector: `None` to search the whole text.
        for (p, k) in plan.iter_mut().zip(anchor_of) {
            let (Some((need, _)), Some(k), Some(max)) = (p.need, k, p.d.needs.max_len) else {
                continue;
            };
            let mut w = Vec::new();
            let positions = at.get(k).map_or(&[][..], Vec::as_slice);
            windows_around(hay, positions, need.min, max, &mut w);
            for window in &mut w {
                window.0 = window.0.max(from);
            }
            w.retain(|(start, end)| start < end);
            // Windows covering most of the text: one search is cheaper.
            let covered: usize = w.iter().map(|(s, e)| e.saturating_sub(*s)).sum();
            p.windows =
                (covered.saturating_mul(10) <= searched.len().saturating_mul(9)).then_some(w);
        }
        if candidates.is_none() && plan.iter().filter(|p| p.windows.is_none()).count() >= SET_MIN {
            candidates = set.map(|s| Candidates::of(s, hay, from));
        }
        let (full, whole) = ([(from, hay.len())], [(0, hay.len())]);
        for p in &plan {
            if !p.reaches && candidates.as_ref().is_some_and(|c| !c.matched(p.det)) {
                continue;
            }
            let span: &[(usize, usize)] = if p.reaches { &whole } else { &full };
            // A detector that searches the left context tries every start
            // (see `Detector::scan`): the context may begin inside a match
            // the whole text's scan made, and a search from there can pair
            // a name in it with text up to a later name, consuming that one
            // and hiding the value after it (found by fuzzing).
            let every_start = p.reaches;
            p.d.scan(
                p.det,
                hay,
                p.windows.as_deref().unwrap_or(span),
                every_start,
                out,
            );
        }
        if depth < encoded::MAX_DEPTH {
            encoded::scan(hay, from, budget, out, &mut |decoded, budget, inner| {
                self.collect_with(decoded, 0, depth + 1, budget, inner, filter);
            });
        }
        for r in out.iter_mut().skip(first) {
            (r.start, r.end) = view.original(r.start, r.end);
        }
    }

    fn findings(&self, raw: Vec<Raw>) -> Vec<Finding> {
        raw.into_iter()
            .filter_map(|r| {
                let d = self.detectors.get(r.det)?;
                Some(Finding {
                    id: d.id,
                    start: r.start,
                    end: r.end,
                    label: d.label.clone(),
                    detector: d.kind.name(),
                })
            })
            .collect()
    }
}

/// Which detectors have a match in a text, by the set of all of them.
enum Candidates {
    None,
    Some(regex::SetMatches),
}

impl Candidates {
    /// The set's answer for `hay` from `from`. Most texts hold no candidate
    /// at all: a search that stops at the first match (the DFA's fast loop)
    /// says so at a fraction of the cost of the overlapping search that
    /// names every detector matched.
    fn of(set: &RegexSet, hay: &str, from: usize) -> Candidates {
        if set.is_match_at(hay, from) {
            Candidates::Some(set.matches_at(hay, from))
        } else {
            Candidates::None
        }
    }

    fn matched(&self, det: usize) -> bool {
        match self {
            Candidates::None => false,
            Candidates::Some(m) => m.matched(det),
        }
    }
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Builtin(b) => b.name(),
            Kind::Regex { .. } => "regex",
            Kind::Keywords => "keywords",
            Kind::Gitleaks => "gitleaks",
        }
    }

    /// Whether a finding can begin after its match does (the match takes
    /// in a key name, or a character before a keyword): a stream then
    /// searches the left context too, where such a match may begin (see
    /// [`DetectorSet::find_all_after`]).
    fn reaches_back(self) -> bool {
        match self {
            Kind::Builtin(b) => matches!(
                b,
                Builtin::AwsSecretKey
                    | Builtin::SecretAssignment
                    | Builtin::Passport
                    | Builtin::DriverLicense
                    | Builtin::UrlCredentials
            ),
            Kind::Regex { group } => group.is_some(),
            Kind::Keywords | Kind::Gitleaks => true,
        }
    }

    fn needs_captures(self) -> bool {
        match self {
            Kind::Builtin(b) => builtins::definition(b).captures,
            Kind::Regex { group } => group.is_some(),
            Kind::Keywords | Kind::Gitleaks => true,
        }
    }
}

/// The capture groups of the last match, for validators that read them.
pub(super) struct Groups(Option<Captures>);

impl Groups {
    /// Group `i`'s span, if it took part.
    pub(super) fn get(&self, i: usize) -> Option<(usize, usize)> {
        let span = self.0.as_ref()?.get_group(i)?;
        Some((span.start, span.end))
    }

    /// Number of groups, the whole match included.
    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, Captures::group_len)
    }
}

impl Detector {
    /// Appends this detector's findings in `hay` (normalized offsets).
    /// `windows` (sorted, disjoint) hold every match: the search skips the
    /// text between them, and runs as it would on the whole text otherwise.
    /// With `every_start`, a candidate (a match or not) consumes nothing:
    /// the search resumes one character after where it began, so every
    /// match that begins anywhere is found, whatever came before it (a
    /// stream's scan of a context that may begin inside a match; overlapping
    /// findings are merged by the caller).
    fn scan(
        &self,
        det: usize,
        hay: &str,
        windows: &[(usize, usize)],
        every_start: bool,
        out: &mut Vec<Raw>,
    ) {
        let mut locs = Groups(
            self.kind
                .needs_captures()
                .then(|| self.re.create_captures()),
        );
        let mut at = 0;
        let mut w = 0;
        while at <= hay.len() {
            while windows.get(w).is_some_and(|&(_, end)| end < at) {
                w += 1;
            }
            let Some(&(start, end)) = windows.get(w) else {
                break;
            };
            let input = Input::new(hay).span(at.max(start)..end);
            let found = match locs.0.as_mut() {
                Some(caps) => {
                    self.re.search_captures(&input, caps);
                    caps.get_match()
                }
                None => self.re.search(&input),
            };
            let Some(m) = found else {
                // Nothing more in this window: the next one.
                w += 1;
                continue;
            };
            let (ms, me) = (m.start(), m.end());
            let span = match self.kind {
                Kind::Builtin(b) => builtins::validate(b, hay, ms, me, &locs),
                Kind::Regex { group: None } => Some((ms, me)),
                Kind::Regex { group: Some(g) } => locs.get(g),
                Kind::Keywords => (1..locs.len()).find_map(|g| locs.get(g)),
                Kind::Gitleaks => self
                    .gitleaks
                    .as_ref()
                    .and_then(|g| g.validate(hay, ms, me, &locs)),
            };
            let found = match span {
                Some((start, end)) if start < end => {
                    out.push(Raw { start, end, det });
                    Some(end)
                }
                _ => None,
            };
            at = match found {
                _ if every_start => next_boundary(hay, ms),
                // Keywords consume a boundary character after the word,
                // which may begin the next one: resume at the word's end.
                Some(end) => end.max(next_boundary(hay, ms)),
                None => match self.kind {
                    Kind::Builtin(b) => builtins::resume(b, hay, ms, me, &locs),
                    Kind::Regex { .. } | Kind::Gitleaks if me > ms => me,
                    _ => next_boundary(hay, ms),
                },
            };
        }
    }
}

/// A pattern a policy brings (a custom regex, a gitleaks rule's), checked
/// within the limits: the regex crate's `Regex` (its errors and groups).
fn checked_pattern(id: usize, pattern: &str) -> Result<Regex, DetectError> {
    if pattern.len() > PATTERN_MAX_BYTES {
        return Err(DetectError::PatternTooLong {
            id,
            len: pattern.len(),
            max: PATTERN_MAX_BYTES,
        });
    }
    RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(DFA_SIZE_LIMIT)
        .build()
        .map_err(|error| DetectError::InvalidRegex { id, error })
}

/// The holdback of `specs`' matchers (see [`HoldBuilder`]), from their
/// `patterns` alone.
fn holdback(specs: &[(usize, MatcherSpec)], patterns: &[String]) -> Holdback {
    let mut hold = HoldBuilder::default();
    let mut seen = BTreeSet::new();
    for ((_, spec), pattern) in specs.iter().zip(patterns) {
        match spec {
            MatcherSpec::Builtin(b) => {
                // Built-in shapes are covered by tests; no need to compile
                // their prefix regexes one by one.
                if seen.insert(*b) {
                    let window = builtins::definition(*b).window;
                    hold.add_builtin(pattern, window.unwrap_or(UNBOUNDED_WINDOW));
                }
            }
            MatcherSpec::Regex { .. } | MatcherSpec::Gitleaks { .. } => hold.add_custom(pattern),
            MatcherSpec::Keywords { words, .. } => {
                if !hold.add(pattern, UNBOUNDED_WINDOW, true) {
                    hold.opaque = hold.opaque.max(OPAQUE_WINDOW);
                }
                hold.composition_sensitive |= words.iter().any(|w| !w.is_ascii());
            }
        }
    }
    hold.build()
}

/// The search engine of a pattern, configured as the regex crate's `Regex`
/// with these limits, and what its matches need.
fn engine(
    id: usize,
    pattern: &str,
    size_limit: usize,
    dfa_limit: usize,
) -> Result<(meta::Regex, Needs), DetectError> {
    let error = |e: &dyn std::fmt::Display| DetectError::Engine {
        id,
        error: e.to_string(),
    };
    let re = meta::Builder::new()
        .configure(
            meta::Config::new()
                .nfa_size_limit(Some(size_limit))
                .hybrid_cache_capacity(dfa_limit)
                .match_kind(MatchKind::LeftmostFirst)
                .utf8_empty(true),
        )
        .syntax(regex_automata::util::syntax::Config::new().utf8(true))
        .build(pattern)
        .map_err(|e| error(&e))?;
    let hir = regex_syntax::Parser::new()
        .parse(pattern)
        .map_err(|e| error(&e))?;
    Ok((re, Needs::of(&hir)))
}

/// How often each byte value occurs in `bytes`. Long texts are counted in
/// four tables, one per byte of each group of four: the same byte repeated
/// (spaces, letters) would otherwise make each count wait for the previous
/// one.
fn histogram(bytes: &[u8]) -> [u32; 256] {
    let mut hist = [0u32; 256];
    if bytes.len() < 1024 {
        for &b in bytes {
            count(&mut hist, b);
        }
        return hist;
    }
    let mut parts = [[0u32; 256]; 4];
    let mut quads = bytes.chunks_exact(4);
    for q in &mut quads {
        for (part, &b) in parts.iter_mut().zip(q) {
            count(part, b);
        }
    }
    for &b in quads.remainder() {
        count(&mut hist, b);
    }
    for part in &parts {
        for (h, p) in hist.iter_mut().zip(part) {
            *h += p;
        }
    }
    hist
}

/// One more `b` in `hist` (a `u8` always indexes it: the check compiles away).
#[inline]
fn count(hist: &mut [u32; 256], b: u8) {
    if let Some(n) = hist.get_mut(usize::from(b)) {
        *n += 1;
    }
}

/// A detector to run on a text (see `DetectorSet::collect_with`).
struct Planned<'d> {
    det: usize,
    d: &'d Detector,
    /// It searches the left context too (see [`Kind::reaches_back`]).
    reaches: bool,
    /// The need whose bytes its windows are around, if windowed, and how
    /// many of them the searched text holds.
    need: Option<(&'d needs::Need, usize)>,
    /// The windows every match lies in; `None`: the whole text.
    windows: Option<Windows>,
}

/// Where the bytes of each need's set are in `bytes` from `from` (each
/// need with how many there are), ascending. A set inside one already found (the
/// digits `1-9` of phones in all digits) is picked out of its positions;
/// the others are searched ([`search_positions`]).
fn anchor_positions(
    anchors: &[(&needs::Need, usize)],
    bytes: &[u8],
    from: usize,
) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..anchors.len()).collect();
    order.sort_by_key(|&k| std::cmp::Reverse(anchors.get(k).map_or(0, |(a, _)| a.members.len())));
    // For each need, the larger one (earlier in `order`) it is inside, if any.
    let superset: Vec<Option<usize>> = (0..anchors.len())
        .map(|k| {
            let (need, _) = anchors.get(k)?;
            order
                .iter()
                .take_while(|&&j| j != k)
                .find(|&&j| {
                    anchors
                        .get(j)
                        .is_some_and(|(a, _)| need.set.is_subset(&a.set))
                })
                .copied()
        })
        .collect();
    let searched: Vec<usize> = (0..anchors.len())
        .filter(|&k| superset.get(k).is_some_and(Option::is_none))
        .collect();
    let mut at: Vec<Vec<usize>> = vec![Vec::new(); anchors.len()];
    let tail = bytes.get(from..).unwrap_or_default();
    for (k, found) in searched
        .iter()
        .zip(search_positions(anchors, &searched, tail, from))
    {
        if let Some(slot) = at.get_mut(*k) {
            *slot = found;
        }
    }
    // Supersets come first in `order`: their positions are there already.
    for &k in &order {
        let (Some(&Some(j)), Some(&(need, _))) = (superset.get(k), anchors.get(k)) else {
            continue;
        };
        let found = at.get(j).map_or_else(Vec::new, |within| {
            within
                .iter()
                .copied()
                .filter(|&p| bytes.get(p).is_some_and(|&b| need.set.contains(b)))
                .collect()
        });
        if let Some(slot) = at.get_mut(k) {
            *slot = found;
        }
    }
    at
}

/// The offsets (plus `base`) of the bytes of each of the `searched` needs'
/// sets in `bytes`, ascending, one list per need.
///
/// Natively (and in wasm with SIMD) memchr's searches, three bytes at a
/// time, one pass per group: each pass costs little beside a byte loop.
/// Wasm without SIMD (what Envoy is given) has only memchr's
/// word-at-a-time fallback: there several passes cost more than one loop
/// over the bytes that looks each up in a table of every set (measured in
/// V8 against the passes: an 8 KB request 72 -> 52 µs, 64 KB 537 -> 341 µs,
/// a stream of 500 events 4.3 -> 3.7 ms; short texts no different).
fn search_positions(
    anchors: &[(&needs::Need, usize)],
    searched: &[usize],
    bytes: &[u8],
    base: usize,
) -> Vec<Vec<usize>> {
    if cfg!(all(target_arch = "wasm32", not(target_feature = "simd128"))) {
        table_positions(anchors, searched, bytes, base)
    } else {
        memchr_positions(anchors, searched, bytes, base)
    }
}

/// [`search_positions`] with memchr.
fn memchr_positions(
    anchors: &[(&needs::Need, usize)],
    searched: &[usize],
    bytes: &[u8],
    base: usize,
) -> Vec<Vec<usize>> {
    searched
        .iter()
        .map(|&k| {
            let Some(&(need, count)) = anchors.get(k) else {
                return Vec::new();
            };
            let mut out = Vec::with_capacity(count);
            for group in need.members.chunks(3) {
                match *group {
                    [a] => out.extend(memchr::memchr_iter(a, bytes)),
                    [a, b] => out.extend(memchr::memchr2_iter(a, b, bytes)),
                    [a, b, c] => out.extend(memchr::memchr3_iter(a, b, c, bytes)),
                    _ => {}
                }
            }
            if need.members.len() > 3 {
                out.sort_unstable();
            }
            for p in &mut out {
                *p += base;
            }
            out
        })
        .collect()
}

/// [`search_positions`] in one pass per 64 needs (always one, with the
/// built-ins), each byte looked up in a table of the sets it is in.
fn table_positions(
    anchors: &[(&needs::Need, usize)],
    searched: &[usize],
    bytes: &[u8],
    base: usize,
) -> Vec<Vec<usize>> {
    let mut out = Vec::with_capacity(searched.len());
    for chunk in searched.chunks(64) {
        let mut lists: Vec<Vec<usize>> = chunk
            .iter()
            .map(|&k| Vec::with_capacity(anchors.get(k).map_or(0, |&(_, count)| count)))
            .collect();
        let mut table = [0u64; 256];
        for (bit, &k) in chunk.iter().enumerate() {
            for &b in anchors
                .get(k)
                .map_or(&[][..], |(need, _)| &need.members[..])
            {
                if let Some(bits) = table.get_mut(usize::from(b)) {
                    *bits |= 1 << bit;
                }
            }
        }
        for (p, &b) in bytes.iter().enumerate() {
            // A `u8` indexes 256 entries.
            let mut bits = table.get(usize::from(b)).copied().unwrap_or(0);
            while bits != 0 {
                if let Some(list) = lists.get_mut(bits.trailing_zeros() as usize) {
                    list.push(base + p);
                }
                bits &= bits - 1;
            }
        }
        out.append(&mut lists);
    }
    out
}

/// The windows of `hay` that can hold a match of at most `max` bytes with
/// at least `min` of the `anchors` (ascending) in it: every such match lies
/// inside one. Merged, sorted, on character boundaries.
fn windows_around(
    hay: &str,
    anchors: &[usize],
    min: usize,
    max: usize,
    out: &mut Vec<(usize, usize)>,
) {
    // A match holds at least `min` anchors within its `max` bytes; with its
    // first ones at `a[i]..=a[i + min - 1]`, it starts after
    // `a[i + min - 1] - max` and ends by `a[i] + max`. Anchors too far apart
    // to share a match make no window.
    let min = min.max(1);
    for run in anchors.windows(min) {
        let (Some(&first), Some(&last)) = (run.first(), run.last()) else {
            continue;
        };
        if last - first >= max {
            continue;
        }
        let start = floor_boundary(hay, (last + 1).saturating_sub(max));
        let end = ceil_boundary(hay, first.saturating_add(max).min(hay.len()));
        match out.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => out.push((start, end)),
        }
    }
}

#[derive(Default)]
struct HoldBuilder {
    bounded: Vec<String>,
    bounded_window: usize,
    unbounded: BTreeMap<usize, Vec<String>>,
    opaque: usize,
    composition_sensitive: bool,
}

impl HoldBuilder {
    /// Adds `pattern`'s prefix language; `window` bounds it if the pattern
    /// is unbounded. `false` if it could not be derived (or, when `check`,
    /// does not compile on its own): the caller then holds a fixed window.
    fn add(&mut self, pattern: &str, window: usize, check: bool) -> bool {
        let Some(shape) = Shape::parse(pattern) else {
            return false;
        };
        let p = shape.prefix_regex();
        if check && hold_regex(std::slice::from_ref(&p)).is_none() {
            return false;
        }
        match shape.max_len() {
            Some(len) => {
                self.bounded_window = self.bounded_window.max(len);
                self.bounded.push(p);
            }
            None => self.unbounded.entry(window).or_default().push(p),
        }
        true
    }

    /// A custom pattern's prefix language (a policy's regex or a gitleaks
    /// rule's), or a fixed window where it cannot be derived.
    fn add_custom(&mut self, pattern: &str) {
        if pattern.len() > PATTERN_MAX_BYTES {
            return;
        }
        if !self.add(pattern, UNBOUNDED_WINDOW, true) {
            self.opaque = self.opaque.max(OPAQUE_WINDOW);
        }
        // Conservatively: classes that could hold a composed character
        // without its base.
        self.composition_sensitive |= !pattern.is_ascii()
            || pattern.contains("[^")
            || pattern.contains(r"\p")
            || pattern.contains(r"\P");
    }

    /// A built-in's prefix language, and its matches followed by fewer
    /// than [`LOOKAHEAD`] characters: its validator reads what follows a
    /// value, so a candidate it refused near the end of the text may be a
    /// value once more arrives (`5555555454444 9Qes` could be part of an
    /// IBAN until the next character says it is not; found by fuzzing).
    fn add_builtin(&mut self, pattern: &str, window: usize) {
        let Some(shape) = Shape::parse(pattern) else {
            return;
        };
        let p = format!(
            "{}|{}",
            shape.prefix_regex(),
            shape.followed_regex(LOOKAHEAD - 1)
        );
        let after = (LOOKAHEAD - 1) * EXPANSION;
        match shape.max_len() {
            Some(len) => {
                self.bounded_window = self.bounded_window.max(len + after);
                self.bounded.push(p);
            }
            None => self.unbounded.entry(window + after).or_default().push(p),
        }
    }

    fn build(self) -> Holdback {
        let mut opaque = self.opaque;
        let mut groups = Vec::new();
        let all = std::iter::once((self.bounded_window, self.bounded)).chain(self.unbounded);
        for (window, prefixes) in all {
            if prefixes.is_empty() {
                continue;
            }
            match hold_regex(&prefixes) {
                Some(re) => groups.push((window, re)),
                // Too large together: holding the whole window is sound.
                None => opaque = opaque.max(window),
            }
        }
        let reach = groups
            .iter()
            .map(|g| g.0)
            .chain([opaque])
            .max()
            .unwrap_or(0);
        let max = if reach == 0 {
            0
        } else {
            reach
                .saturating_mul(EXPANSION)
                .saturating_add(INVISIBLE_SLACK)
        };
        Holdback {
            groups,
            opaque,
            composition_sensitive: self.composition_sensitive,
            max,
        }
    }
}

/// `(?:P1|P2|…)\z`: its leftmost match starts at the earliest suffix that is
/// a prefix of a match of any of them.
fn hold_regex(prefixes: &[String]) -> Option<Regex> {
    RegexBuilder::new(&format!("(?:{})\\z", prefixes.join("|")))
        .size_limit(SET_SIZE_LIMIT)
        // The union of every matcher's prefixes has many states; with the
        // default lazy-DFA cache, a stream's many short searches keep
        // clearing and rebuilding it.
        .dfa_size_limit(SET_DFA_SIZE_LIMIT)
        .build()
        .ok()
}

fn group_index(re: &Regex, name: &str) -> Option<usize> {
    re.capture_names()
        .position(|n| n == Some(name))
        .or_else(|| {
            // A number names a group by position.
            name.parse::<usize>()
                .ok()
                .filter(|&i| i > 0 && i < re.captures_len())
        })
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// One regex for a keyword list. Keywords are normalized like the text;
/// a keyword that begins (ends) with a word character needs a non-word
/// character or the text's edge before (after) it. The boundary is consumed
/// as a class rather than asserted with a Unicode `\b`, which the lazy DFA
/// cannot run on non-ASCII text. Longer keywords come first, so the longest
/// of those starting at the same place is reported.
fn keyword_pattern(id: usize, words: &[String]) -> Result<String, DetectError> {
    if words.is_empty() {
        return Err(DetectError::NoKeywords { id });
    }
    if words.len() > KEYWORDS_MAX {
        return Err(DetectError::TooManyKeywords {
            id,
            count: words.len(),
            max: KEYWORDS_MAX,
        });
    }
    // By (begins with a word character, ends with one).
    let mut buckets: [Vec<(usize, String)>; 4] = Default::default();
    for (index, word) in words.iter().enumerate() {
        let view = View::new(word);
        let parts: Vec<&str> = view.text().split_whitespace().collect();
        let (Some(first), Some(last)) = (parts.first(), parts.last()) else {
            return Err(DetectError::EmptyKeyword { id, index });
        };
        if word.len() > KEYWORD_MAX_BYTES {
            return Err(DetectError::KeywordTooLong {
                id,
                index,
                max: KEYWORD_MAX_BYTES,
            });
        }
        let left = first.chars().next().is_some_and(is_word_char);
        let right = last.chars().next_back().is_some_and(is_word_char);
        let phrase = parts
            .iter()
            .map(|p| regex::escape(p))
            .collect::<Vec<_>>()
            .join(r"\s{1,16}");
        if let Some(bucket) = buckets.get_mut(usize::from(left) * 2 + usize::from(right)) {
            bucket.push((view.text().len(), phrase));
        }
    }
    let mut alternatives = Vec::new();
    for (k, bucket) in buckets.iter_mut().enumerate() {
        if bucket.is_empty() {
            continue;
        }
        bucket.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        bucket.dedup_by(|a, b| a.1 == b.1);
        let phrases: Vec<&str> = bucket.iter().map(|(_, p)| p.as_str()).collect();
        alternatives.push(format!(
            "{}({}){}",
            if k >= 2 { r"(?:^|[^\w])" } else { "" },
            phrases.join("|"),
            if k % 2 == 1 { r"(?:[^\w]|$)" } else { "" },
        ));
    }
    Ok(format!("(?i){}", alternatives.join("|")))
}

/// The char boundary after the one at `at` (one past the end at the end).
fn next_boundary(hay: &str, at: usize) -> usize {
    hay.get(at..)
        .and_then(|rest| rest.chars().next())
        .map_or(at + 1, |c| at + c.len_utf8())
}

fn floor_boundary(s: &str, mut at: usize) -> usize {
    while at > 0 && !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn ceil_boundary(s: &str, mut at: usize) -> usize {
    while at < s.len() && !s.is_char_boundary(at) {
        at += 1;
    }
    at
}
