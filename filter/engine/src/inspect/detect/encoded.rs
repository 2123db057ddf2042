//! Values hidden in base64, hex or percent-encoding.
//!
//! Candidate runs are decoded, and the decoded text is scanned with the same
//! detectors (by the caller, which recurses up to [`MAX_DEPTH`] layers):
//!
//! - base64 (standard or URL-safe, padded or not): a maximal run of at least
//!   [`MIN_RUN`] characters of either alphabet, with its `=` padding;
//! - hex: such a run made of an even number of hex digits (`0x` allowed);
//! - percent-encoding: a maximal run of URL characters with a `%XX` escape.
//!
//! A run is decoded only if the result is text (valid UTF-8, no control
//! characters but tab and line breaks), so random base64, hashes and hex ids
//! are never scanned; a long run is first judged by its first bytes. A hit in
//! decoded base64 or hex is reported over the whole run (its bytes do not
//! line up with characters); a hit in percent-decoded text over exactly the
//! characters that encode it (a URL keeps the rest of its query).
//!
//! Cost: one pass over the bytes finds the runs (prose has almost none);
//! decoded bytes scanned per call are bounded by [`BUDGET`] in total (the
//! rest of a longer blob is not looked into).
//!
//! Holdback (see [`hold`]): a trailing base64 run may still grow, and its
//! finding would cover it whole, so it is held from its start. Percent
//! decoding is local (each sequence of escapes on its own), so the decoded
//! text of a run up to its last complete escape sequence is a prefix of what
//! it will be: the holdback is computed on that decoded text and mapped
//! back, and a trailing escape sequence (`%`, `%4`, `%41%C3`) is held whole.

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::{alphabet, Engine};

use super::Raw;

/// Layers decoded within each other (base64 in percent-encoding, say).
pub(super) const MAX_DEPTH: usize = 2;
/// Shortest base64 or hex run decoded, in characters.
const MIN_RUN: usize = 12;
/// Decoded bytes scanned per `find`, over all runs and layers.
pub(super) const BUDGET: usize = 64 * 1024;
/// Characters of a run decoded first, to judge whether it is text.
const PROBE: usize = 64;

const CONFIG: GeneralPurposeConfig =
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
const STANDARD: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, CONFIG);
const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, CONFIG);

/// Decoded bytes still allowed in this call.
#[derive(Debug)]
pub(super) struct Budget(usize);

impl Budget {
    pub(super) fn new() -> Self {
        Budget(BUDGET)
    }
}

/// Scans text (in its own offsets) with the detectors, one layer deeper.
pub(super) type Inner<'a> = dyn FnMut(&str, &mut Budget, &mut Vec<Raw>) + 'a;
/// The holdback offset of text (its length: nothing held), one layer deeper.
pub(super) type InnerHold<'a> = dyn FnMut(&str) -> usize + 'a;

/// Characters of either base64 alphabet. (Indexing in a constant is
/// checked when the crate is built.)
#[allow(clippy::indexing_slicing)]
const B64: [bool; 256] = {
    let mut table = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        table[c] = b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'_' | b'-');
        c += 1;
    }
    table
};

fn is_b64(b: u8) -> bool {
    // A `u8` indexes 256 entries: the check compiles away.
    B64.get(usize::from(b)).copied().unwrap_or(false)
}

/// The 6-bit value of a character of either alphabet (`+` and `-` are 62,
/// `/` and `_` 63), 255 for others.
#[allow(clippy::indexing_slicing)]
const SEXTET: [u8; 256] = {
    let symbols = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/-_";
    let mut table = [255u8; 256];
    let mut v = 0;
    while v < symbols.len() {
        table[symbols[v] as usize] = if v < 64 { v as u8 } else { v as u8 - 2 };
        v += 1;
    }
    table
};

/// Characters of a percent-encoded run: URL characters, less the ones that
/// usually delimit a URL in text (quotes, brackets, `,` and `;`).
fn is_url(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'/'
                | b':'
                | b'='
                | b'?'
                | b'@'
                | b'^'
                | b'_'
                | b'|'
                | b'~'
        )
}

fn is_escape(b: &[u8], at: usize) -> bool {
    escaped_byte(b, at).is_some()
}

/// The byte that the escape `%XX` at `at` stands for.
fn escaped_byte(b: &[u8], at: usize) -> Option<u8> {
    match b.get(at..at.checked_add(3)?)? {
        [b'%', hi, lo] if hi.is_ascii_hexdigit() && lo.is_ascii_hexdigit() => {
            Some((hex_digit(*hi) << 4) | hex_digit(*lo))
        }
        _ => None,
    }
}

fn hex_digit(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => 0,
    }
}

/// Appends the findings inside encoded runs of `hay` that end after `from`
/// (earlier runs were judged by an earlier scan of a stream), in `hay`'s
/// offsets.
pub(super) fn scan(
    hay: &str,
    from: usize,
    budget: &mut Budget,
    out: &mut Vec<Raw>,
    inner: &mut Inner<'_>,
) {
    let b = hay.as_bytes();
    let mut found = Vec::new();
    // base64 and hex runs. `i` is where a run could begin (nothing of the
    // alphabet just before it); a long enough run covers `i + MIN_RUN - 1`,
    // so when that is not of the alphabet, or something before it is not,
    // prose is skipped a word or more at a time without reading all of it.
    // A run is ASCII, so its ends are char boundaries.
    let mut i = 0;
    while let Some(&at_last) = b.get(i + MIN_RUN - 1) {
        let last = i + MIN_RUN - 1;
        if !is_b64(at_last) {
            i = last + 1;
            continue;
        }
        if let Some(gap) = b
            .get(i..last)
            .and_then(|lead| lead.iter().rposition(|&c| !is_b64(c)))
        {
            i += gap + 1;
            continue;
        }
        let start = i;
        i = last + 1;
        while b.get(i).is_some_and(|&c| is_b64(c)) {
            i += 1;
        }
        let body = i;
        while i - body < 2 && b.get(i) == Some(&b'=') {
            i += 1;
        }
        if budget.0 > 0 && i > from && !word_like(b.get(start..body).unwrap_or_default()) {
            if let Some(text) = hay.get(start..body).and_then(|run| decode_run(run, budget)) {
                found.clear();
                inner(&text, budget, &mut found);
                out.extend(found.iter().map(|r| Raw {
                    start,
                    end: i,
                    det: r.det,
                }));
            }
        }
        // Past the run and one character that is not of the alphabet.
        i = i.max(body + 1);
    }
    // percent-encoded runs
    // URL characters are ASCII: a run's ends, and `next`, are boundaries.
    let mut next = 0;
    while let Some(p) = hay
        .get(next..)
        .and_then(|rest| rest.find('%'))
        .map(|p| next + p)
    {
        if !is_escape(b, p) {
            next = p + 1;
            continue;
        }
        let Some((before, after)) = b.split_at_checked(p) else {
            break;
        };
        let start = before
            .iter()
            .rposition(|&c| !is_url(c))
            .map_or(0, |s| s + 1);
        let end = after
            .iter()
            .position(|&c| !is_url(c))
            .map_or(b.len(), |e| p + e);
        next = end;
        if end <= from {
            continue;
        }
        if budget.0 == 0 {
            break;
        }
        // Cut to the budget (an escape cut in two stays literal).
        let mut cut = end.min(start + budget.0);
        while !hay.is_char_boundary(cut) {
            cut -= 1;
        }
        let Some(run) = hay.get(start..cut) else {
            continue;
        };
        let decoded = Percent::decode(run);
        if decoded.text.len() == cut - start {
            continue;
        }
        budget.0 = budget.0.saturating_sub(decoded.text.len());
        found.clear();
        inner(&decoded.text, budget, &mut found);
        out.extend(found.iter().map(|r| Raw {
            start: start + decoded.original(r.start),
            end: start + decoded.original(r.end),
            det: r.det,
        }));
    }
}

/// Runs shorter than this that read as a word are not decoded.
const WORD_RUN: usize = 16;

/// A short run that is a word of prose (`responsibilities`, `Configuration`):
/// letters only, in lower case after the first. Base64 of text that short
/// mixes cases or holds digits (`MTIzLTQ1LTY3ODk` is `123-45-6789`), so
/// prose need not be decoded to find out.
fn word_like(run: &[u8]) -> bool {
    run.len() < WORD_RUN
        && run.first().is_some_and(u8::is_ascii_alphabetic)
        && run.iter().skip(1).all(u8::is_ascii_lowercase)
}

/// The text a base64 or hex run (without padding) decodes to, if it is
/// text; charges the budget. A run longer than the budget allows is decoded
/// only that far; a long run is first judged by its first characters.
fn decode_run(run: &str, budget: &mut Budget) -> Option<String> {
    let hex = run.strip_prefix("0x").unwrap_or(run);
    let (bytes, cut) = if hex.len() >= MIN_RUN
        && hex.len().is_multiple_of(2)
        && hex.bytes().all(|c| c.is_ascii_hexdigit())
    {
        // All ASCII: any cut is a boundary.
        let digits = hex.len().min(budget.0.saturating_mul(2));
        if digits > PROBE && !textual_prefix(&decode_hex(hex.get(..PROBE).unwrap_or(hex))) {
            return None;
        }
        (
            decode_hex(hex.get(..digits).unwrap_or(hex)),
            digits < hex.len(),
        )
    } else {
        let standard = run.contains(['+', '/']);
        if (standard && run.contains(['-', '_'])) || run.len() % 4 == 1 {
            return None;
        }
        let engine = if standard { &STANDARD } else { &URL_SAFE };
        // Cut short by whole quanta: 4 characters, 3 bytes.
        let chars = run.len().min(budget.0 / 3 * 4);
        let head = run.get(..chars).unwrap_or(run);
        if !b64_text_prefix(head.get(..PROBE).unwrap_or(head)) {
            return None;
        }
        (engine.decode(head).ok()?, chars < run.len())
    };
    let valid = match std::str::from_utf8(&bytes) {
        Ok(_) => bytes.len(),
        Err(e) if cut && e.error_len().is_none() => e.valid_up_to(),
        Err(_) => return None,
    };
    let mut bytes = bytes;
    bytes.truncate(valid);
    if bytes.is_empty() || !textual_prefix(&bytes) {
        return None;
    }
    let text = String::from_utf8(bytes).ok()?;
    budget.0 = budget.0.saturating_sub(text.len());
    Some(text)
}

fn decode_hex(hex: &str) -> Vec<u8> {
    hex.as_bytes()
        .chunks_exact(2)
        .map(|p| p.iter().fold(0, |byte, &c| (byte << 4) | hex_digit(c)))
        .collect()
}

/// A percent-decoded run and where each piece came from.
struct Percent {
    text: String,
    /// `(decoded offset, run offset, escaped)` where each piece starts.
    pieces: Vec<(usize, usize, bool)>,
}

impl Percent {
    /// Each maximal sequence of escapes is decoded on its own if it is
    /// UTF-8 (left as it is otherwise): what a prefix of a run decodes to,
    /// up to its last complete sequence, never changes as the run grows.
    fn decode(run: &str) -> Percent {
        // URL characters are ASCII: every offset is a boundary.
        let b = run.as_bytes();
        let mut text = String::with_capacity(run.len());
        let mut pieces = Vec::new();
        let mut literal = 0;
        let mut i = 0;
        let mut bytes = Vec::new();
        while i < b.len() {
            if !is_escape(b, i) {
                i += 1;
                continue;
            }
            let seq = i;
            bytes.clear();
            while let Some(byte) = escaped_byte(b, i) {
                bytes.push(byte);
                i += 3;
            }
            let Ok(decoded) = std::str::from_utf8(&bytes) else {
                continue;
            };
            if literal < seq {
                pieces.push((text.len(), literal, false));
                text.push_str(run.get(literal..seq).unwrap_or_default());
            }
            pieces.push((text.len(), seq, true));
            text.push_str(decoded);
            literal = i;
        }
        if literal < b.len() {
            pieces.push((text.len(), literal, false));
            text.push_str(run.get(literal..).unwrap_or_default());
        }
        Percent { text, pieces }
    }

    /// The run offset of decoded offset `at` (a character boundary).
    fn original(&self, at: usize) -> usize {
        let k = self.pieces.partition_point(|p| p.0 <= at);
        match k.checked_sub(1).and_then(|k| self.pieces.get(k)) {
            Some(&(text, run, escaped)) => run + (at - text) * if escaped { 3 } else { 1 },
            None => at,
        }
    }
}

/// Whether a base64 or hex run beginning with `run` could still decode to
/// text: what its first characters decode to so far is text, up to a last
/// character still incomplete. Decoded bytes only grow at the end as a run
/// grows, and a run that is not text is not scanned.
fn may_decode(run: &str) -> bool {
    let run = run.get(..PROBE).unwrap_or(run);
    let hex = run.strip_prefix("0x").unwrap_or(run);
    if hex.bytes().all(|c| c.is_ascii_hexdigit())
        && textual_prefix(&decode_hex(
            hex.get(..hex.len() / 2 * 2).unwrap_or_default(),
        ))
    {
        return true;
    }
    !(run.contains(['+', '/']) && run.contains(['-', '_'])) && b64_text_prefix(run)
}

/// Whether the bytes that the base64 characters `run` decode to are text
/// so far (trailing bits of an incomplete quantum left out).
fn b64_text_prefix(run: &str) -> bool {
    let (mut acc, mut bits) = (0u32, 0u32);
    let mut bytes = [0u8; PROBE];
    let mut n = 0;
    for c in run.bytes().take(PROBE) {
        let v = SEXTET.get(usize::from(c)).copied().unwrap_or(255);
        if v == 255 {
            return false;
        }
        acc = ((acc << 6) | u32::from(v)) & 0xFFFF;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            // Fewer bytes than characters: always in bounds.
            let Some(slot) = bytes.get_mut(n) else {
                break;
            };
            *slot = (acc >> bits) as u8;
            n += 1;
            // Most words fail on their first bytes.
            if n == 3 && !textual_prefix(bytes.get(..n).unwrap_or_default()) {
                return false;
            }
        }
    }
    textual_prefix(bytes.get(..n).unwrap_or_default())
}

/// Text so far: UTF-8 up to an incomplete last character, no control
/// characters other than tab, CR and LF.
fn textual_prefix(bytes: &[u8]) -> bool {
    let valid = match std::str::from_utf8(bytes) {
        Ok(_) => bytes.len(),
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        Err(_) => return false,
    };
    bytes
        .get(..valid)
        .and_then(|b| std::str::from_utf8(b).ok())
        .is_some_and(|t| {
            !t.chars()
                .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
        })
}

/// Where `hay` must be held from for its encoded runs (`hay.len()`: not at
/// all). `inner` gives the holdback of decoded text.
pub(super) fn hold(hay: &str, inner: &mut InnerHold<'_>) -> usize {
    // Runs are ASCII: their ends are char boundaries. Where a slice could
    // not be taken (not expected), more is held.
    let b = hay.as_bytes();
    let n = b.len();
    // A trailing base64 or hex run (or its padding) may still grow, unless
    // it can no longer decode to text. One at the start may have begun
    // before the text given.
    let body = b.iter().rposition(|&c| c != b'=').map_or(0, |e| e + 1);
    let b64 = b
        .get(..body)
        .and_then(|head| head.iter().rposition(|&c| !is_b64(c)))
        .map_or(0, |s| s + 1);
    let b64 = if n - body <= 2 && (b64 == 0 || hay.get(b64..body).is_none_or(may_decode)) {
        b64
    } else {
        n
    };
    let url = b
        .get(..b64)
        .and_then(|head| head.iter().rposition(|&c| !is_url(c)))
        .map_or(0, |s| s + 1);
    let run = b.get(url..).unwrap_or(b);
    if !run.contains(&b'%') {
        return b64;
    }
    // The trailing escape sequence, complete or not, is held whole.
    let mut partial = n;
    for tail in [1, 2] {
        if n >= url + tail
            && b.get(n - tail) == Some(&b'%')
            && b.get(n - tail + 1..)
                .is_some_and(|t| t.iter().all(u8::is_ascii_hexdigit))
        {
            partial = n - tail;
        }
    }
    while partial >= url + 3 && is_escape(b, partial - 3) {
        partial -= 3;
    }
    let Some(settled) = hay.get(url..partial) else {
        return url.min(b64);
    };
    let mut held = partial.min(b64);
    if settled.contains('%') {
        let decoded = Percent::decode(settled);
        let h = inner(&decoded.text);
        if h < decoded.text.len() {
            held = held.min(url + decoded.original(h));
        }
    }
    held
}
