//! Built-in detectors: a candidate pattern each, and a validator that turns a
//! candidate into a finding or rejects it.
//!
//! Patterns only find candidates; everything the regex crate cannot express
//! (no look-around) or that needs arithmetic is checked in code: Luhn for
//! cards, mod-97 and per-country lengths for IBANs, SSN ranges, octet and
//! address parsing for IPs, JWT headers, Shannon entropy for secret values,
//! and the characters around a candidate. Patterns use ASCII classes and
//! ASCII word boundaries `(?-u:\b)` on purpose: the lazy DFA cannot run a
//! Unicode `\b` on non-ASCII text and would fall back to a slower engine.
//!
//! Each pattern also describes where a match can begin for the streaming
//! holdback (see `prefix`), so a pattern must cover every character of what
//! its validator accepts; validators only narrow.
//!
//! Validators read the text around a candidate, which may be any Unicode:
//! they never slice a `str` at an offset that is not a char boundary by
//! construction, and take `get` (or characters) otherwise.

pub(super) mod ids;

use std::net::{Ipv4Addr, Ipv6Addr};

use super::{Builtin, Groups, LOOKBEHIND};
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::{alphabet, Engine};

/// Holdback bound for PEM blocks, whose body pattern is unbounded: a block
/// longer than this may be released before its end arrives.
const PEM_WINDOW: usize = 16 * 1024;
/// Holdback bound for Amazon Bedrock API keys (about 140 characters; the
/// bound leaves room for longer ones).
const BEDROCK_WINDOW: usize = 4 * 1024;
/// Holdback bound for JWTs (unbounded parts; real tokens are far shorter).
const JWT_WINDOW: usize = 8 * 1024;
/// Holdback bound for assignments (values are unbounded: a bounded
/// repetition of a Unicode class would compile to a large automaton).
const SECRET_WINDOW: usize = 1024;
/// Minimum Shannon entropy (bits per character) of an assigned secret value.
const SECRET_MIN_ENTROPY: f64 = 3.0;
/// Minimum length, in characters, of an assigned secret value.
const SECRET_MIN_CHARS: usize = 8;
/// Minimum entropy of an AWS secret key near its context (40 random
/// base64 characters score about 4.7).
const AWS_SECRET_MIN_ENTROPY: f64 = 3.5;
/// Minimum entropy of the random part of an OpenAI or Anthropic key.
const API_KEY_MIN_ENTROPY: f64 = 3.5;

/// JWT segments are unpadded base64url; be lenient about padding and unused
/// trailing bits, the header's JSON decides.
const B64URL: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

pub(super) struct Def {
    pub pattern: &'static str,
    /// The validator reads capture groups.
    pub captures: bool,
    /// Holdback window for patterns with unbounded parts.
    pub window: Option<usize>,
}

const fn def(pattern: &'static str) -> Def {
    Def {
        pattern,
        captures: false,
        window: None,
    }
}

/// The key names of a secret assignment, with an optional suffix after a
/// separator (`token_secret`, not `tokenizer`): one list for both of its
/// forms.
macro_rules! secret_key {
    () => {
        concat!(
            r"(?:password|passwd|passphrase|pwd|secret|token|api[_-]?key|access[_-]?key",
            r"|auth[_-]?key|private[_-]?key|account[_-]?key|client[_-]?secret|credentials?)",
            r"(?:[_.-][a-z0-9_.-]{0,32})?",
        )
    };
}

pub(super) fn definition(b: Builtin) -> Def {
    match b {
        Builtin::Email => def(concat!(
            r"(?-u:\b)[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@",
            r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.){1,8}[A-Za-z]{2,24}(?-u:\b)",
        )),
        // The validator tells the branches apart by shape (captures would
        // cost a second search of every candidate).
        Builtin::Phone => Def {
            captures: false,
            window: None,
            pattern: concat!(
                // international: +CC then groups, optional parentheses
                r"\+[1-9][0-9]{0,3}(?:[ .-]?\(?[0-9]{1,4}\)?){1,6}",
                // North American: (415) 555-2671, 415-555-2671, 1-415-555-2671
                r"|(?:1[ .-]?)?(?:\([2-9][0-9]{2}\)[ .-]?|[2-9][0-9]{2}[ .-])[2-9][0-9]{2}[ .-][0-9]{4}",
                // national with a trunk 0: 020 7946 0958, (0161) 496 0000
                r"|\(?0[1-9][0-9]{0,3}\)?[ -]?[0-9]{3,4}[ -]?[0-9]{3,4}",
                // national in pairs: 01 23 45 67 89
                r"|0[1-9](?:[ .-][0-9]{2}){4}",
                // international after `00` instead of `+`
                r"|00[1-9][0-9]{0,3}(?:[ .-]?\(?[0-9]{1,4}\)?){1,6}",
                // national mobile shapes: China 3-4-4, India 5-5
                r"|1[3-9][0-9][ -][0-9]{4}[ -][0-9]{4}|[6-9][0-9]{4}[ -][0-9]{5}",
                // a country code without `+` (`44 20 7946 0958`): only after
                // words that say it is a phone number
                r"|(?-u:\b)[1-9][0-9]{0,2}[ .-][0-9]{1,4}(?:[ .-][0-9]{2,8}){1,4}",
            ),
        },
        Builtin::PaymentCard => def(r"(?-u:\b)[0-9](?:[ -]?[0-9]){12,18}(?-u:\b)"),
        // Printed in groups with spaces or dashes, or not at all.
        Builtin::Iban => def(r"(?-u:\b)[A-Za-z]{2}[0-9]{2}(?:[ -]?[A-Za-z0-9]){11,30}"),
        // Dashed; or with dots, spaces or nothing between the groups, which
        // the validator takes only after words that say it is an SSN.
        Builtin::UsSsn => def(concat!(
            r"(?-u:\b)(?:[0-9]{3}-[0-9]{2}-[0-9]{4}|[0-9]{3}\.[0-9]{2}\.[0-9]{4}",
            r"|[0-9]{3} [0-9]{2} [0-9]{4}|[0-9]{9})(?-u:\b)",
        )),
        Builtin::Ipv4 => def(r"(?-u:\b)(?:[0-9]{1,3}\.){3}[0-9]{1,3}(?-u:\b)"),
        Builtin::Ipv6 => {
            def(r"(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9]{1,3}(?:\.[0-9]{1,3}){3}|[0-9A-Fa-f]{0,4})")
        }
        Builtin::MacAddress => def(concat!(
            r"(?-u:\b)(?:[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5}|[0-9A-Fa-f]{2}(?:-[0-9A-Fa-f]{2}){5}",
            r"|[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4})(?-u:\b)",
        )),
        Builtin::UsItin => {
            def(r"(?-u:\b)9[0-9]{2}(?:-[0-9]{2}-|\.[0-9]{2}\.| [0-9]{2} |[0-9]{2})[0-9]{4}(?-u:\b)")
        }
        Builtin::UkNhs => def(r"(?-u:\b)[0-9]{3}[ -]?[0-9]{3}[ -]?[0-9]{4}(?-u:\b)"),
        // Bitcoin legacy (base58, `1`/`3`), SegWit (`bc1`, bech32), Ethereum
        // (`0x` and 40 hex digits).
        Builtin::CryptoWallet => def(concat!(
            r"(?-u:\b)(?:[13][1-9A-HJ-NP-Za-km-z]{25,34}|(?:bc1|BC1)[02-9ac-hj-np-zAC-HJ-NP-Z]{11,71}",
            r"|0x[0-9a-fA-F]{40})(?-u:\b)",
        )),
        // The words, then the number (group 1).
        Builtin::Passport => Def {
            pattern: concat!(
                r"(?i:passport)(?i:[ \t]{0,4}(?:no\.?|number|num|#|id))?(?i:[ \t]{0,4}(?:is|:|#|=))?[ \t]{0,4}",
                r"([A-Z0-9]{6,9})(?-u:\b)",
            ),
            captures: true,
            window: None,
        },
        Builtin::DriverLicense => Def {
            pattern: concat!(
                r"(?i:driver'?s?[ \t]{1,4}licen[cs]e|driving[ \t]{1,4}licen[cs]e|(?-u:\b)DL)",
                r"(?i:[ \t]{0,4}(?:no\.?|number|num|#|id))?(?i:[ \t]{0,4}(?:is|:|#|=))?[ \t]{0,4}",
                r"([A-Z0-9][A-Z0-9-]{4,19})(?-u:\b)",
            ),
            captures: true,
            window: None,
        },
        // `scheme://user:password@host`: the password (group 1). The
        // classes are RFC 3986's userinfo (anything else is percent-encoded),
        // ASCII, which also keeps the prefilter set small.
        Builtin::UrlCredentials => Def {
            pattern: concat!(
                r"(?-u:\b)[A-Za-z][A-Za-z0-9+.-]{1,20}://[A-Za-z0-9._~%!$&()*+,;=-]{1,64}:",
                r"([A-Za-z0-9._~%!$&()*+,;=:-]{1,128})@[A-Za-z0-9\[]",
            ),
            captures: true,
            window: None,
        },
        // Azure AD (Entra ID) client secrets: three characters, a digit, `Q~`.
        Builtin::AzureClientSecret => {
            def(r"(?-u:\b)[A-Za-z0-9_~.]{3}[0-9]Q~[A-Za-z0-9_~.-]{31,34}")
        }
        // Amazon Bedrock long-term API keys: `ABSK` and the base64 of
        // `BedrockAPIKey-`. Unbounded (a counted repetition of hundreds
        // makes every automaton it joins large), held back within a window.
        Builtin::AwsBedrockKey => Def {
            pattern: r"(?-u:\b)ABSKQmVkcm9ja0FQSUtleS[A-Za-z0-9+/]{40}[A-Za-z0-9+/]*={0,2}",
            captures: false,
            window: Some(BEDROCK_WINDOW),
        },
        Builtin::AwsAccessKeyId => def(r"(?-u:\b)(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}(?-u:\b)"),
        Builtin::AwsSecretKey => def(concat!(
            r"(?i:aws[_ .-]?secret(?:[_ .-]?access)?(?:[_ .-]?key)?|secret[_ .-]?access[_ .-]?key)",
            r#"(?:["']?[ \t]{0,4}(?::=|=>|[:=>])[ \t]{0,4}["']?|[ \t]{1,4}(?:(?i:is)[ \t]{1,4})?)"#,
            r"[A-Za-z0-9/+]{40}",
        )),
        Builtin::GithubToken => def(
            r"(?-u:\b)(?:gh[pousr]_[A-Za-z0-9]{36,251}|github_pat_[A-Za-z0-9_]{22,244})(?-u:\b)",
        ),
        // GitLab's documented token prefixes (security/tokens, "Token
        // prefixes"): personal, project and group access (`glpat-`), OAuth
        // application secret, deploy, runner authentication (`glrt-`, and
        // `glrtr-` for runners registered with a registration token), CI/CD
        // job, pipeline trigger, feed, incoming mail, agent for Kubernetes,
        // SCIM, feature flags client; a routable token ends in `.` and nine
        // base-36 characters; `GR1348941` starts a runner registration token.
        Builtin::GitlabToken => def(concat!(
            r"(?-u:\b)(?:gl(?:pat|oas|dt|rtr?|cbt|ptt|ft|imt|agent|soat|ffct)-",
            r"[A-Za-z0-9_-]{20,300}(?:\.[0-9a-z]{9})?",
            r"|GR1348941[A-Za-z0-9_-]{20,64})",
        )),
        // Bot, user, workspace and legacy tokens (`xox[abprs]-`), app-level
        // tokens (`xapp-`), configuration access and refresh tokens
        // (`xoxe.xoxp-`, `xoxe-`), and incoming webhook URLs, whose path is
        // the credential.
        Builtin::SlackToken => def(concat!(
            r"(?-u:\b)(?:xox[abprs]-[A-Za-z0-9-]{10,250}",
            r"|xoxe(?:\.xox[bp])?-[0-9]-[A-Za-z0-9-]{20,250}",
            r"|xapp-[0-9]-[A-Za-z0-9-]{20,250})",
            r"|(?:https?://)?hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9_/-]{20,200}",
        )),
        // Secret and restricted keys (`sk_`, `rk_`) and webhook signing
        // secrets (`whsec_`); publishable keys (`pk_`) are public by design.
        Builtin::StripeKey => def(concat!(
            r"(?-u:\b)(?:[sr]k_(?:live|test)_[A-Za-z0-9]{10,247}",
            r"|whsec_[A-Za-z0-9]{24,247})(?-u:\b)",
        )),
        Builtin::GoogleApiKey => def(r"(?-u:\b)AIza[0-9A-Za-z_-]{35}"),
        Builtin::OpenaiKey => def(r"(?-u:\b)sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,250}"),
        Builtin::AnthropicKey => def(r"(?-u:\b)sk-ant-[A-Za-z0-9_-]{20,250}"),
        Builtin::PrivateKey => Def {
            // The body stops before `-----` (a dash must be followed by an
            // alphanumeric, as in `Proc-Type`), so the END line is matched by
            // the optional tail; without one the block still counts.
            pattern: concat!(
                r"-----BEGIN[ A-Z0-9]{0,40}PRIVATE KEY(?: BLOCK)?-----",
                r"(?:[A-Za-z0-9+/=\s:,.\\]|-[A-Za-z0-9])*",
                r"(?:-----END[ A-Z0-9]{0,40}PRIVATE KEY(?: BLOCK)?-----)?",
            ),
            captures: false,
            window: Some(PEM_WINDOW),
        },
        Builtin::Jwt => Def {
            // base64url as RFC 7519 says, or standard base64 with padding
            // as some libraries and logs write it. The header is a JSON
            // object: `{` then `"` or JSON whitespace, which base64 writes
            // as one of these three-character starts (`eyJ` for `{"a`).
            // Listed one by one: the regex crate then finds them with its
            // vectorized literal search (as classes, `ey[A-D]`, it may fall
            // back to its automaton, ten times slower on prose).
            pattern: concat!(
                r"(?-u:\b)(?:eyA|eyB|eyC|eyD|eyI|eyJ|eyK|eyL|ew0|ew1|ew2|ew3|ewk|ewl|ewm|ewn|ewo|ewp|ewq|ewr)",
                r"[A-Za-z0-9_+/-]{7,}={0,2}\.[A-Za-z0-9_+/-]{2,}={0,2}",
                r"\.[A-Za-z0-9_+/-]*={0,2}",
            ),
            captures: false,
            window: Some(JWT_WINDOW),
        },
        Builtin::SecretAssignment => Def {
            // The key may carry a prefix (`db_password`) or a suffix after a
            // separator (`token_secret`), not a bare suffix (`tokenizer`).
            // Written as YAML, JSON, `.env`, a connection string's
            // `Password=...;`, an XML element (`<password>...`), or a
            // command-line flag (`--password ...`: a space alone separates
            // only after a dash, so prose's `password reset` is none, and a
            // match needs one of `:=>-`, which keeps prose from running it).
            pattern: concat!(
                r"(?i)(?:[a-z0-9_.-]{0,32}?",
                secret_key!(),
                // Quotes may be escaped (JSON pasted into a JSON string).
                r#"\\?["']?[ \t]{0,4}(?::=|=>|[:=>])[ \t]{0,4}\\?"#,
                r"|-[a-z0-9_.-]{0,32}?",
                secret_key!(),
                r"[ \t]{1,4})",
                // A quoted value missing its closing quote still counts.
                r#"(?:"([^"\r\n]+)"?|'([^'\r\n]+)'?|([^\s"'`,;&<]+))"#,
            ),
            captures: true,
            window: Some(SECRET_WINDOW),
        },
    }
}

/// The finding's span within the candidate `start..end`, or `None`.
pub(super) fn validate(
    b: Builtin,
    hay: &str,
    start: usize,
    end: usize,
    locs: &Groups,
) -> Option<(usize, usize)> {
    let Some(s) = hay.get(start..end) else {
        // Matches are on char boundaries (the engine runs in UTF-8 mode);
        // otherwise the candidate is kept rather than lost.
        return Some((start, end));
    };
    // Documentation's sample keys and templates are no secrets.
    if is_keyed(b) && placeholder(s) {
        return None;
    }
    let ok = match b {
        Builtin::Email => email(s),
        Builtin::Phone => return phone(hay, start, end),
        Builtin::PaymentCard => return card(hay, start, end),
        Builtin::Iban => return iban(hay, start, end),
        Builtin::UsSsn => ssn(hay, start, end),
        Builtin::Ipv4 => ipv4(hay, start, end),
        Builtin::Ipv6 => return ipv6(hay, start, end),
        Builtin::MacAddress => ids::mac(hay, start, end),
        Builtin::UsItin => ids::itin(hay, start, end),
        Builtin::UkNhs => ids::nhs(hay, start, end),
        Builtin::CryptoWallet => ids::wallet(hay, start, end),
        Builtin::Passport | Builtin::DriverLicense => {
            return ids::document_number(hay, locs.get(1)?);
        }
        Builtin::UrlCredentials => return url_password(hay, locs),
        Builtin::AzureClientSecret | Builtin::AwsBedrockKey => {
            !next_is(hay, end, |c| is_token_char(c) || c == '~' || c == '.')
        }
        Builtin::GithubToken => ids::github_checksum(s),
        Builtin::AwsAccessKeyId | Builtin::StripeKey => true,
        Builtin::AwsSecretKey => {
            // The pattern ends with 40 ASCII characters.
            let value = end.saturating_sub(40);
            return (!next_is(hay, end, |c| c.is_ascii_alphanumeric() || "/+=".contains(c))
                && hay
                    .get(value..end)
                    .is_none_or(|v| entropy(v) >= AWS_SECRET_MIN_ENTROPY))
            .then_some((value, end));
        }
        Builtin::GitlabToken | Builtin::GoogleApiKey => !next_is(hay, end, is_token_char),
        Builtin::SlackToken => {
            !next_is(hay, end, |c| c.is_ascii_alphanumeric() || c == '-')
                && s.bytes().any(|b| b.is_ascii_digit())
        }
        Builtin::OpenaiKey => {
            let body = ["sk-proj-", "sk-svcacct-", "sk-admin-", "sk-"]
                .iter()
                .find_map(|p| s.strip_prefix(p))
                .unwrap_or(s);
            !s.starts_with("sk-ant-") && !next_is(hay, end, is_token_char) && random_looking(body)
        }
        Builtin::AnthropicKey => {
            !next_is(hay, end, is_token_char)
                && random_looking(s.strip_prefix("sk-ant-").unwrap_or(s))
        }
        Builtin::PrivateKey => {
            // Without an END line the block runs to the end of its body;
            // trailing whitespace is not part of it.
            return Some((start, start + s.trim_end().len()));
        }
        Builtin::Jwt => jwt(s),
        Builtin::SecretAssignment => return secret_value(hay, locs),
    };
    ok.then_some((start, end))
}

/// Provider keys and tokens: random by design, so a documentation
/// placeholder in one is told apart by [`placeholder`]. (Personal data is
/// not: `bob@example.com` is an address; PEM bodies and JWTs hold long runs
/// of `A` legitimately.)
fn is_keyed(b: Builtin) -> bool {
    matches!(
        b,
        Builtin::AzureClientSecret
            | Builtin::AwsBedrockKey
            | Builtin::AwsAccessKeyId
            | Builtin::AwsSecretKey
            | Builtin::GithubToken
            | Builtin::GitlabToken
            | Builtin::SlackToken
            | Builtin::StripeKey
            | Builtin::GoogleApiKey
            | Builtin::OpenaiKey
            | Builtin::AnthropicKey
    )
}

/// Shortest run that makes a key a placeholder: `x`, `X` and `0` mixed
/// (`xxxx`, `XXXX`, `0000`), or one character repeated. A random key over 62
/// characters holds such a run with a probability below 10^-11 per
/// position.
const PLACEHOLDER_RUN: usize = 8;

/// A documentation placeholder rather than a key: it says `EXAMPLE` (AWS's
/// documented `AKIAIOSFODNN7EXAMPLE` and `…EXAMPLEKEY`), or holds a run of
/// [`PLACEHOLDER_RUN`] characters of `x`, `X` and `0`, or of one character
/// (`ghp_xxxxxxxx…`, `T00000000/B00000000/XXXXXXXX…`, `sk_live_aaaaaaaa…`).
/// Or a key a vendor publishes for everyone to copy (see
/// [`ids::published_sample`]).
fn placeholder(s: &str) -> bool {
    let b = s.as_bytes();
    if ids::published_sample(s) || b.windows(7).any(|w| w.eq_ignore_ascii_case(b"example")) {
        return true;
    }
    let (mut filler, mut same) = (0, 0);
    let mut prev = None;
    for &c in b {
        filler = if matches!(c, b'x' | b'X' | b'0') {
            filler + 1
        } else {
            0
        };
        same = if prev == Some(c) { same + 1 } else { 1 };
        prev = Some(c);
        if filler >= PLACEHOLDER_RUN || same >= PLACEHOLDER_RUN {
            return true;
        }
    }
    false
}

/// Where to search again after `validate` rejected the candidate at
/// `start..end`. The next character in general, so that a valid match
/// starting inside a rejected candidate is still found (bounded candidates
/// keep this linear). Some skip ahead instead: a JWT past its first
/// segment, an assignment to its value (which may hold another), and the
/// prefixed API tokens past the candidate: their candidates are maximal runs
/// of token characters (the validator rejects a run that goes on), so a
/// later candidate inside would be a tail of the same rejected run, and
/// re-scanning from each `sk-` of `sk-sk-sk-…` would cost the length of a
/// token per character.
pub(super) fn resume(b: Builtin, hay: &str, start: usize, end: usize, locs: &Groups) -> usize {
    let next = super::next_boundary(hay, start);
    match b {
        Builtin::Jwt => hay
            .get(start..end)
            .and_then(|m| m.find('.'))
            .map_or(end, |dot| start + dot + 1),
        Builtin::GitlabToken
        | Builtin::SlackToken
        | Builtin::GoogleApiKey
        | Builtin::OpenaiKey
        | Builtin::AnthropicKey => end.max(next),
        Builtin::SecretAssignment => (1..=3)
            .find_map(|g| locs.get(g))
            .map_or(next, |(value, _)| value.max(next)),
        _ => next,
    }
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// The text before `at`, at most [`LOOKBEHIND`] bytes of it: no validator
/// reads further back, so a stream that keeps that much of what it released
/// judges a value as the whole text would.
fn before(hay: &str, at: usize) -> &str {
    let mut from = at.saturating_sub(LOOKBEHIND);
    while from < at && !hay.is_char_boundary(from) {
        from += 1;
    }
    hay.get(from..at).unwrap_or_default()
}

/// The character before `at` (`None` at the start, or off a boundary).
fn prev_char(hay: &str, at: usize) -> Option<char> {
    hay.get(..at)?.chars().next_back()
}

/// Whether the character at `at` satisfies `f` (false at the end, or off a
/// boundary).
fn next_is(hay: &str, at: usize, f: impl Fn(char) -> bool) -> bool {
    hay.get(at..)
        .and_then(|rest| rest.chars().next())
        .is_some_and(f)
}

/// Shannon entropy of `s` in bits per character.
pub(super) fn entropy(s: &str) -> f64 {
    let mut ascii = [0u32; 128];
    let mut other: Vec<char> = Vec::new();
    let mut total = 0u32;
    for c in s.chars() {
        total += 1;
        match usize::try_from(u32::from(c))
            .ok()
            .and_then(|i| ascii.get_mut(i))
        {
            Some(n) => *n += 1,
            None => other.push(c),
        }
    }
    if total == 0 {
        return 0.0;
    }
    let total = f64::from(total);
    let term = |n: u32| {
        let p = f64::from(n) / total;
        -p * p.log2()
    };
    // Non-ASCII characters (rare in secrets) are counted by sorting.
    other.sort_unstable();
    let others = other
        .chunk_by(|a, b| a == b)
        .map(|run| term(run.len() as u32));
    ascii
        .iter()
        .filter(|&&n| n > 0)
        .map(|&n| term(n))
        .chain(others)
        .sum()
}

/// The random part of a provider API key: mixed case and digits, high
/// entropy (so `sk-learn-is-a-library-name` is not a key).
fn random_looking(body: &str) -> bool {
    body.bytes().any(|b| b.is_ascii_digit())
        && body.bytes().any(|b| b.is_ascii_uppercase())
        && body.bytes().any(|b| b.is_ascii_lowercase())
        && entropy(body) >= API_KEY_MIN_ENTROPY
}

fn email(s: &str) -> bool {
    let Some((local, _domain)) = s.split_once('@') else {
        return false;
    };
    s.len() <= 254 && !local.ends_with('.') && !local.contains("..")
}

/// An international number (`+` and 8 to 15 digits) or a national one (10
/// or 11 digits, with a separator when it starts with a trunk `0`), with
/// balanced parentheses, not glued to a longer number or identifier.
///
/// The international pattern is greedy: it may take a closing parenthesis
/// that is punctuation (`(+1 415 555 2671)`) or digit groups of a following
/// number. Then the longest shorter candidate ending after a digit group is
/// tried, so the number is still found whole, from its `+` (not when the
/// candidate is glued to what follows: a piece of a number is not a
/// number).
fn phone(hay: &str, start: usize, end: usize) -> Option<(usize, usize)> {
    // The candidate is ASCII (`validate` checked its span).
    let s = hay.as_bytes().get(start..end)?;
    // `00` for `+`: two more digits, the same shapes.
    let (international, extra) = match s {
        [b'+', ..] => (true, 0),
        [b'0', b'0', ..] => (true, 2),
        _ => (false, 0),
    };
    if !international && !matches!(s.first(), Some(b'0' | b'(')) && !north_american(s) {
        if glued_number(hay, start, true) {
            return None;
        }
        if national_mobile(s) && !glued_number(hay, end, false) {
            return Some((start, end));
        }
        if !ids::phone_context(before(hay, start)) {
            return None;
        }
        // Digit groups after it that are no part of it (`call 44 20 7946
        // 0958 12 34`): the longest head that is a number, as with `+`.
        return longest_head(hay, start, s, without_plus).map(|i| (start, start + i));
    }
    if international {
        if glued_number(hay, start, true) || glued_number(hay, end, false) {
            return None;
        }
        return longest_head(hay, start, s, |head| {
            phone_shape(head, (8 + extra, 15 + extra), false)
        })
        .map(|i| (start, start + i));
    }
    // With a trunk `0`, nine digits are enough (Israel's `03-1234567`).
    let trunk = s.strip_prefix(b"(").unwrap_or(s).starts_with(b"0");
    if !phone_shape(s, (if trunk { 9 } else { 10 }, 11), trunk)
        || glued_number(hay, start, true)
        || glued_number(hay, end, false)
    {
        return None;
    }
    // `x+1 415 555 2671`: the international candidate was glued, but the
    // national number is one; its country code goes with it.
    Some((country_code_before(hay, start).unwrap_or(start), end))
}

/// The length of the longest head of the candidate `s` (at `start`) that
/// ends after a digit group, has the shape `is_number` and is not glued to
/// what follows it (a piece of a number is not a number).
fn longest_head(
    hay: &str,
    start: usize,
    s: &[u8],
    is_number: impl Fn(&[u8]) -> bool,
) -> Option<usize> {
    (2..=s.len())
        .rev()
        .filter(|&i| {
            s.get(i - 1)
                .is_some_and(|b| b.is_ascii_digit() || *b == b')')
        })
        .find(|&i| s.get(..i).is_some_and(&is_number) && !glued_number(hay, start + i, false))
}

/// The sizes of the digit groups of a candidate (at most [`GROUPS`]; more
/// count as none), and whether one kind of separator joins them. Phone
/// validators run on many candidates: no allocation.
const GROUPS: usize = 6;

fn digit_groups(s: &[u8]) -> Option<([usize; GROUPS], usize, bool)> {
    let mut sizes = [0usize; GROUPS];
    let mut n = 0;
    let mut sep: Option<u8> = None;
    let mut one_kind = true;
    let mut in_group = false;
    for &b in s {
        if b.is_ascii_digit() {
            if !in_group {
                n += 1;
                in_group = true;
            }
            *sizes.get_mut(n - 1)? += 1;
        } else {
            in_group = false;
            one_kind &= sep.is_none_or(|k| k == b);
            sep = Some(b);
        }
    }
    Some((sizes, n, one_kind))
}

/// The North American branch's shape: `415-555-2671`, `1 415 555 2671`
/// (area code and exchange not starting with 0 or 1).
fn north_american(s: &[u8]) -> bool {
    let Some((sizes, n, _)) = digit_groups(s) else {
        return false;
    };
    let digits = s.iter().filter(|b| b.is_ascii_digit());
    let first_of = |group: usize| {
        let skip: usize = sizes.iter().take(group).sum();
        digits.clone().nth(skip).copied().unwrap_or(0)
    };
    let area = match (n, sizes) {
        (3, [3, 3, 4, ..]) => 0,
        (4, [1, 3, 3, 4, ..]) if first_of(0) == b'1' => 1,
        _ => return false,
    };
    (b'2'..=b'9').contains(&first_of(area)) && (b'2'..=b'9').contains(&first_of(area + 1))
}

/// Mobile numbers as their countries write them, told by their groups:
/// China's `1[3-9]x xxxx xxxx` and India's `[6-9]xxxx xxxxx`, with one kind
/// of separator.
fn national_mobile(s: &[u8]) -> bool {
    let Some((sizes, n, one_kind)) = digit_groups(s) else {
        return false;
    };
    let first = s.first().copied().unwrap_or(0);
    let second = s.get(1).copied().unwrap_or(0);
    one_kind
        && match (n, sizes) {
            (3, [3, 4, 4, ..]) => first == b'1' && (b'3'..=b'9').contains(&second),
            (2, [5, 5, ..]) => (b'6'..=b'9').contains(&first),
            _ => false,
        }
}

/// A country code written without `+` and the national number: 1 to 3
/// digits, then at least two groups of one kind of separator, 9 to 15
/// digits in all (E.164's most); not an IPv4 address (`call 10.0.12.101`).
fn without_plus(s: &[u8]) -> bool {
    let Some((sizes, n, one_kind)) = digit_groups(s) else {
        return false;
    };
    let digits: usize = sizes.iter().sum();
    let ipv4 = || std::str::from_utf8(s).is_ok_and(|s| s.parse::<Ipv4Addr>().is_ok());
    one_kind
        && n >= 3
        && sizes.first().is_some_and(|&cc| cc <= 3)
        && (9..=15).contains(&digits)
        && !ipv4()
}

/// Digit count within `digits`, at most one pair of parentheses in order,
/// and a separator if `separated`.
fn phone_shape(s: &[u8], digits: (usize, usize), separated: bool) -> bool {
    let count = |c: u8| s.iter().filter(|&&b| b == c).count();
    let n = s.iter().filter(|b| b.is_ascii_digit()).count();
    let (open, close) = (count(b'('), count(b')'));
    let first = |c: u8| s.iter().position(|&b| b == c);
    (digits.0..=digits.1).contains(&n)
        && open == close
        && open <= 1
        && first(b'(') <= first(b')')
        && (!separated || s.iter().any(|b| b" -.(".contains(b)))
}

/// Whether the number is a piece of a longer number, identifier or
/// dotted/dashed sequence: looking back from `at` if `before`, else ahead.
fn glued_number(hay: &str, at: usize, before: bool) -> bool {
    let (c, beyond) = if before {
        let c = prev_char(hay, at);
        (c, c.and_then(|c| prev_char(hay, at - c.len_utf8())))
    } else {
        let mut after = hay.get(at..).unwrap_or_default().chars();
        (after.next(), after.next())
    };
    match c {
        Some(c) if c.is_alphanumeric() || c == '_' || c == '+' => true,
        Some('.' | '-' | '/') => beyond.is_some_and(|b| b.is_ascii_digit()),
        _ => false,
    }
}

/// The `+` of a country code (1 to 3 digits) and one separator right before
/// `at`, if any.
fn country_code_before(hay: &str, at: usize) -> Option<usize> {
    let b = hay.as_bytes();
    let sep = at.checked_sub(1)?;
    if !b" .-".contains(b.get(sep)?) {
        return None;
    }
    let digits = b
        .get(..sep)?
        .iter()
        .rev()
        .take_while(|b| b.is_ascii_digit())
        .count();
    let plus = sep.checked_sub(digits + 1)?;
    ((1..=3).contains(&digits) && b.get(plus) == Some(&b'+') && b.get(plus + 1) != Some(&b'0'))
        .then_some(plus)
}

fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                d
            }
        })
        .sum();
    let last_digit = sum % 10;
    last_digit == 0
}

/// 13 to 19 digits passing Luhn, not all the same digit, not a piece of a
/// longer structured value (see [`inside_longer_value`]). If the whole run
/// fails, a shorter run ending at a group separator may be the card (a card
/// followed by another number).
fn card(hay: &str, start: usize, end: usize) -> Option<(usize, usize)> {
    if glued_before(hay, start) || iban_groups_before(hay, start) {
        return None;
    }
    let mut digits = [0u8; 19];
    let mut ends = [0usize; 19];
    let mut n = 0;
    for (i, &b) in hay.as_bytes().get(start..end)?.iter().enumerate() {
        if !b.is_ascii_digit() {
            continue;
        }
        if let (Some(d), Some(e)) = (digits.get_mut(n), ends.get_mut(n)) {
            *d = b - b'0';
            *e = start + i + 1;
            n += 1;
        }
    }
    (13..=n).rev().find_map(|k| {
        // After a digit: a boundary.
        let cut = *ends.get(k - 1)?;
        let at_group_end = k == n
            || hay
                .get(cut..)
                .is_some_and(|rest| rest.starts_with([' ', '-']));
        let digits = digits.get(..k)?;
        let varied = digits.iter().any(|&d| Some(&d) != digits.first());
        (at_group_end && luhn(digits) && varied && !glued_after(hay, cut)).then_some((start, cut))
    })
}

/// Whether the value ending at `at` goes on into a longer one: an ASCII
/// letter or digit right after it (as for `\b`: a value next to another
/// script, `4111…한`, is still found), a dash and one
/// (`4111111111111111-01` is one number), or a space and a short group
/// mixing letters and digits (`… 3M02` in an IBAN). A space and digits only
/// is another number (`4111 1111 1111 1111 22`).
fn glued_after(hay: &str, at: usize) -> bool {
    let mut rest = hay.get(at..).unwrap_or_default().chars();
    match rest.next() {
        Some(c) if c.is_ascii_alphanumeric() || c == '_' => true,
        Some('-') => rest.next().is_some_and(|c| c.is_ascii_alphanumeric()),
        Some(' ') => mixed_group(rest.take_while(char::is_ascii_alphanumeric).take(5)),
        _ => false,
    }
}

/// The same before `at`: a letter or digit, a dash after one, or a short
/// group mixing letters and digits and a space (`DE89 3704 …`).
fn glued_before(hay: &str, at: usize) -> bool {
    let mut lead = before(hay, at).chars().rev();
    match lead.next() {
        Some(c) if c.is_ascii_alphanumeric() || c == '_' => true,
        Some('-') => lead.next().is_some_and(|c| c.is_ascii_alphanumeric()),
        Some(' ') => mixed_group(lead.take_while(char::is_ascii_alphanumeric).take(5)),
        _ => false,
    }
}

/// Whether the characters are a short group (at most four, as an IBAN's)
/// holding both a letter and a digit.
fn mixed_group(chars: impl Iterator<Item = char>) -> bool {
    let (mut letter, mut digit, mut n) = (false, false, 0);
    for c in chars {
        letter |= c.is_ascii_alphabetic();
        digit |= c.is_ascii_digit();
        n += 1;
    }
    letter && digit && n <= 4
}

/// Whether the text before `at` ends with the start of a printed IBAN:
/// groups of four letters or digits, each followed by one space or dash,
/// the first a known country and two check digits (`GB82 WEST 1234 …`: the
/// digits after it are an account number, not a card).
fn iban_groups_before(hay: &str, at: usize) -> bool {
    let mut lead = before(hay, at).as_bytes();
    while let [rest @ .., a, b, c, d, sep] = lead {
        let group = [*a, *b, *c, *d];
        if !matches!(sep, b' ' | b'-') || !group.iter().all(u8::is_ascii_alphanumeric) {
            return false;
        }
        let country = [a.to_ascii_uppercase(), b.to_ascii_uppercase()];
        if country.iter().all(u8::is_ascii_uppercase)
            && c.is_ascii_digit()
            && d.is_ascii_digit()
            && iban_length(&country).is_some()
            && rest.last().is_none_or(|p| !p.is_ascii_alphanumeric())
        {
            return true;
        }
        lead = rest;
    }
    false
}

/// IBAN lengths by country (SWIFT IBAN registry).
fn iban_length(country: &[u8]) -> Option<usize> {
    Some(match country {
        b"NO" => 15,
        b"BE" => 16,
        b"DK" | b"FI" | b"FK" | b"FO" | b"GL" | b"NL" | b"SD" => 18,
        b"MK" | b"SI" => 19,
        b"AT" | b"BA" | b"EE" | b"KZ" | b"LT" | b"LU" | b"MN" | b"XK" => 20,
        b"CH" | b"HR" | b"LI" | b"LV" => 21,
        b"BG" | b"BH" | b"CR" | b"DE" | b"GB" | b"GE" | b"IE" | b"ME" | b"RS" | b"VA" => 22,
        b"AE" | b"GI" | b"IL" | b"IQ" | b"OM" | b"SO" | b"TL" => 23,
        b"AD" | b"CZ" | b"ES" | b"MD" | b"PK" | b"RO" | b"SA" | b"SE" | b"SK" | b"TN" | b"VG" => 24,
        b"LY" | b"PT" | b"ST" => 25,
        b"IS" | b"TR" => 26,
        b"BI" | b"DJ" | b"FR" | b"GR" | b"IT" | b"MC" | b"MR" | b"SM" => 27,
        b"AL" | b"AZ" | b"BY" | b"CY" | b"DO" | b"GT" | b"HN" | b"HU" | b"LB" | b"NI" | b"PL"
        | b"SV" => 28,
        b"BR" | b"EG" | b"PS" | b"QA" | b"UA" => 29,
        b"JO" | b"KW" | b"MU" | b"YE" => 30,
        b"MT" | b"SC" => 31,
        b"LC" => 32,
        b"RU" => 33,
        _ => return None,
    })
}

/// Known country, exactly that country's length (spaces or dashes allowed
/// between characters), not glued to more alphanumerics (directly or by a
/// dash), and mod-97 == 1.
fn iban(hay: &str, start: usize, end: usize) -> Option<(usize, usize)> {
    let s = hay.as_bytes().get(start..end)?;
    let mut chars = [0u8; 34];
    let mut n = 0;
    let mut cut = start;
    let want = iban_length(&s.get(..2)?.to_ascii_uppercase())?;
    for (i, &b) in s.iter().enumerate() {
        if b == b' ' || b == b'-' {
            continue;
        }
        // At most 33 are kept: `want` stops the loop first.
        let Some(slot) = chars.get_mut(n) else {
            break;
        };
        *slot = b.to_ascii_uppercase();
        n += 1;
        if n == want {
            cut = start + i + 1;
            break;
        }
    }
    let mut after = hay.get(cut..).unwrap_or_default().chars();
    let glued = match after.next() {
        Some('-') => after.next().is_some_and(char::is_alphanumeric),
        next => next.is_some_and(char::is_alphanumeric),
    };
    if n < want || glued {
        return None;
    }
    let value = |b: u8| match b {
        b'0'..=b'9' => Some(u32::from(b - b'0')),
        b'A'..=b'Z' => Some(u32::from(b - b'A') + 10),
        _ => None,
    };
    let [_, _, check_hi, check_lo, ..] = chars;
    let check = value(check_hi)? * 10 + value(check_lo)?;
    if !(2..=98).contains(&check) {
        return None;
    }
    // Rearranged (BBAN then country and check digits), letters as 10..35,
    // reduced digit by digit.
    let mut rem = 0u32;
    for &b in chars.get(4..n)?.iter().chain(chars.get(..4)?) {
        let v = value(b)?;
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    (rem == 1).then_some((start, cut))
}

/// Area not 000, 666 or 9xx; group not 00; serial not 0000; not part of a
/// longer number with the same separator. Dashed (`123-45-6789`), it is an
/// SSN by its shape. With dots, spaces or no separator it could be anything
/// (a bare 9-digit number most of all), so it is one only after a context
/// word ([`ids::SSN_CONTEXT`]) earlier on the same line, within the validators'
/// look-back: `SSN: 123 45 6789`, `social security no. 123456789`. Only
/// words before count: a stream has released the number before any word
/// after it arrives.
fn ssn(hay: &str, start: usize, end: usize) -> bool {
    let Some(s) = hay.get(start..end) else {
        return false;
    };
    let digits: Vec<u32> = s.chars().filter_map(|c| c.to_digit(10)).collect();
    let num =
        |r: std::ops::Range<usize>| digits.get(r).map(|ds| ds.iter().fold(0, |n, d| n * 10 + d));
    let (Some(area), Some(group), Some(serial)) = (num(0..3), num(3..5), num(5..9)) else {
        return false;
    };
    let sep = s.chars().find(|c| !c.is_ascii_digit());
    let glued = |c: char| match sep {
        // A separator and a digit beyond it: a longer number.
        Some(sep) => c == sep,
        None => false,
    };
    let longer = match sep {
        Some(sep) => {
            let mut back = before(hay, start).chars().rev();
            let mut ahead = hay.get(end..).unwrap_or_default().chars();
            (back.next().is_some_and(glued) && back.next().is_some_and(|c| c.is_ascii_digit()))
                || (ahead.next() == Some(sep) && ahead.next().is_some_and(|c| c.is_ascii_digit()))
                || (sep == '-'
                    && (prev_char(hay, start) == Some('-') || next_is(hay, end, |c| c == '-')))
        }
        None => false,
    };
    area != 0
        && area != 666
        && area < 900
        && group != 0
        && serial != 0
        && !longer
        && (sep == Some('-') || ids::context_words(before(hay, start), &ids::SSN_CONTEXT, false))
}

/// Four octets of at most 255 (no leading zeros, as `Ipv4Addr` parses
/// them), not part of a longer dotted sequence, not after `v`/`version`.
fn ipv4(hay: &str, start: usize, end: usize) -> bool {
    let lead = before(hay, start);
    let (Some(s), Some(rest)) = (hay.get(start..end), hay.get(end..)) else {
        return false;
    };
    if s.parse::<Ipv4Addr>().is_err() {
        return false;
    }
    // A longer run of dotted numbers (an OID, a version) holds no address;
    // the labels of a host name around one (`db.10.0.0.7.nip.io`) do not
    // make it less of one.
    let prev = lead.chars().next_back();
    let number_before = lead
        .strip_suffix('.')
        .and_then(|l| l.chars().next_back())
        .is_some_and(|c| c.is_ascii_digit());
    let mut after = rest.chars();
    let dotted_after =
        after.next() == Some('.') && after.next().is_some_and(|c| c.is_ascii_digit());
    if prev == Some('-') || number_before || dotted_after {
        return false;
    }
    // The word before (split on characters, so a multi-byte one before the
    // address is a separator, not a cut inside it).
    let lead = lead.trim_end_matches([' ', '\t', ':']);
    let word = lead
        .rsplit(|c: char| !(c.is_ascii_alphanumeric() || c == '.'))
        .next()
        .unwrap_or_default()
        .trim_end_matches('.');
    !["v", "ver", "version"]
        .iter()
        .any(|v| word.eq_ignore_ascii_case(v))
}

/// Parsed by `Ipv6Addr`, at least four hex digits (so `a::b` in code is
/// not an address), not glued to identifier or address characters.
fn ipv6(hay: &str, start: usize, end: usize) -> Option<(usize, usize)> {
    let s = hay.get(start..end)?;
    let glued_before =
        prev_char(hay, start).is_some_and(|c| c.is_alphanumeric() || matches!(c, '_' | ':' | '.'));
    if glued_before {
        return None;
    }
    // A trailing `:` may be punctuation ("at fe80::1: done").
    let trimmed = match s.strip_suffix(':') {
        Some(t) if !t.ends_with(':') => t,
        _ => s,
    };
    [s, trimmed].into_iter().find_map(|cand| {
        let end = start + cand.len();
        let ok = cand.parse::<Ipv6Addr>().is_ok()
            && cand.bytes().filter(u8::is_ascii_hexdigit).count() >= 4
            && !next_is(hay, end, |c| c.is_alphanumeric() || c == '_' || c == ':');
        ok.then_some((start, end))
    })
}

/// The header decodes to a JSON object with a string `alg`; the payload is
/// base64url of a plausible length.
fn jwt(s: &str) -> bool {
    let mut parts = s.split('.');
    let (Some(header), Some(payload)) = (parts.next(), parts.next()) else {
        return false;
    };
    if header.len() > 4096 || payload.len() % 4 == 1 {
        return false;
    }
    // Standard base64's `+` and `/` are base64url's `-` and `_`.
    let header = header.replace('+', "-").replace('/', "_");
    let Ok(bytes) = B64URL.decode(&header) else {
        return false;
    };
    serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .as_ref()
        .and_then(|v| v.get("alg"))
        .is_some_and(serde_json::Value::is_string)
}

/// The assigned value: long and random enough, not a placeholder, a variable
/// reference or code.
fn secret_value(hay: &str, locs: &Groups) -> Option<(usize, usize)> {
    let (group, (start, end)) = (1..=3).find_map(|g| locs.get(g).map(|span| (g, span)))?;
    let Some(value) = hay.get(start..end) else {
        // Groups are on char boundaries; kept as a finding if not.
        return Some((start, end));
    };
    let placeholder = value.starts_with("${")
        || value.starts_with("$(")
        || value.starts_with("{{")
        || value.starts_with("%(")
        || (value.starts_with('<') && value.ends_with('>'))
        || (value.starts_with('[') && value.ends_with(']'));
    // Unquoted code: `password = settings.DB_PASSWORD`, `token = get_token()`.
    let ident = value
        .bytes()
        .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'.')
        .count();
    let code = group == 3
        && ((ident == value.len()
            && value.bytes().all(|b| !b.is_ascii_digit())
            && value.contains(['_', '.']))
            || (ident > 0 && value.get(ident..).is_some_and(|r| r.starts_with('('))));
    let long = value.chars().count() >= SECRET_MIN_CHARS;
    (long && !placeholder && !code && entropy(value) >= SECRET_MIN_ENTROPY).then_some((start, end))
}

/// Templates' stand-ins for a password in a URL: no secret.
const URL_PASSWORD_PLACEHOLDERS: [&str; 9] = [
    "password", "pass", "passwd", "pwd", "secret", "changeme", "user", "username", "pw",
];

/// The password of `scheme://user:password@host` (group 1), unless it is a
/// template's stand-in (`${DB_PASSWORD}`, `<password>`, `****`, `password`)
/// or a port (`http://host:8080@...` is how some write a proxy, not a
/// password).
fn url_password(hay: &str, locs: &Groups) -> Option<(usize, usize)> {
    let (start, end) = locs.get(1)?;
    let Some(value) = hay.get(start..end) else {
        return Some((start, end));
    };
    let templated = value.starts_with(['$', '{', '<', '%', '[']);
    let filler = value
        .chars()
        .all(|c| c == '*' || c == 'x' || c == 'X' || c == '.');
    let port = value.len() <= 5 && value.bytes().all(|b| b.is_ascii_digit());
    let named = URL_PASSWORD_PLACEHOLDERS
        .iter()
        .any(|p| value.eq_ignore_ascii_case(p));
    (!templated && !filler && !port && !named).then_some((start, end))
}
