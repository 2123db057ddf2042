//! User-controlled text, bounded before it is stored or logged.
//!
//! A model name, a subject, a route or a reason reaches the control plane
//! from a request, at whatever length the sender chose. Every such field is
//! cut with [`bound`] (at a character boundary, with a marker that gives the
//! original length) before it is stored where it only describes something,
//! and with [`logged`] before it is written to the log, which also escapes
//! control characters: the text log writes `%` fields as they are, so a
//! line break in a value would start a forged line. Fields that bind or
//! authorize something (an approval's binding, its approver groups) are
//! refused when too long instead of cut: two values that differ only past
//! the cut must not become equal.
//!
//! PostgreSQL's `text` cannot hold U+0000, which SQLite's can and JSON
//! allows (`"\u0000"`): storing it failed with a 503, and looking it up
//! too (found by schemathesis). Descriptive text has it replaced by U+FFFD
//! as it is bounded, on both stores alike; text that binds or names
//! something is refused, or found nowhere, when it is not [`storable`].

use std::borrow::Cow;

/// Longest stored descriptive field, in bytes.
pub const MAX_STORED_BYTES: usize = 1024;
/// Longest logged field, in bytes, after escaping.
pub const MAX_LOGGED_BYTES: usize = 512;

/// `text` with U+0000 replaced by U+FFFD, then cut to at most `max` bytes,
/// ending with a marker that gives its original length (the marker alone
/// if `max` is shorter than it); `text` itself when it fits and has no
/// U+0000.
pub fn bound(text: &str, max: usize) -> Cow<'_, str> {
    if !storable(text) {
        return Cow::Owned(bound(&text.replace('\0', "\u{FFFD}"), max).into_owned());
    }
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let marker = marker(text.len());
    let kept = text
        .get(..boundary(text, max.saturating_sub(marker.len())))
        .unwrap_or_default();
    Cow::Owned(format!("{kept}{marker}"))
}

/// [`bound`] to [`MAX_STORED_BYTES`], for an owned value (returned as is
/// when it fits).
pub fn stored(text: String) -> String {
    match bound(&text, MAX_STORED_BYTES) {
        Cow::Borrowed(_) => text,
        Cow::Owned(cut) => cut,
    }
}

/// Whether both stores can hold `text` as it is: it has no U+0000.
pub fn storable(text: &str) -> bool {
    !text.contains('\0')
}

/// `text` for a log field: control characters (and the Unicode line and
/// paragraph separators) escaped, then bounded to [`MAX_LOGGED_BYTES`].
pub fn logged(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_LOGGED_BYTES));
    for c in text.chars() {
        // Escaping stops once the bound is passed: a huge value costs no more.
        if out.len() > MAX_LOGGED_BYTES {
            break;
        }
        if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if out.len() > MAX_LOGGED_BYTES {
        let marker = marker(text.len());
        out.truncate(boundary(
            &out,
            MAX_LOGGED_BYTES.saturating_sub(marker.len()),
        ));
        out.push_str(&marker);
    }
    out
}

fn marker(len: usize) -> String {
    format!("…[cut, {len} bytes]")
}

/// The largest character boundary of `text` at or below `max`.
fn boundary(text: &str, max: usize) -> usize {
    let mut at = max.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_kept_as_is() {
        assert!(matches!(bound("gpt-4o", 16), Cow::Borrowed("gpt-4o")));
        assert_eq!(stored("gpt-4o".into()), "gpt-4o");
        assert_eq!(logged("alice"), "alice");
        let exact = "x".repeat(MAX_STORED_BYTES);
        assert_eq!(stored(exact.clone()), exact);
    }

    #[test]
    fn long_text_is_cut_at_a_character_boundary_with_a_marker() {
        let model = "m".repeat(200 * 1024);
        let cut = stored(model);
        assert!(cut.len() <= MAX_STORED_BYTES, "{}", cut.len());
        assert!(cut.starts_with("mmm"));
        assert!(cut.ends_with("…[cut, 204800 bytes]"), "{cut}");
        // Multi-byte characters straddling the cut are dropped whole.
        for text in ["é".repeat(600), "한".repeat(600), "𝐀".repeat(600)] {
            let cut = bound(&text, 100);
            assert!(cut.len() <= 100, "{}", cut.len());
            let kept = cut.split('…').next().unwrap_or_default();
            assert!(kept.chars().all(|c| text.starts_with(c)), "{cut}");
        }
        // A bound smaller than the marker keeps the marker alone.
        assert_eq!(bound("abcdef", 2), "…[cut, 6 bytes]");
    }

    #[test]
    fn logged_fields_cannot_forge_lines() {
        assert_eq!(
            logged("alice\nINFO forged line\r\n\u{1b}[31m\u{2028}"),
            "alice\\nINFO forged line\\r\\n\\u{1b}[31m\\u{2028}"
        );
        // Tabs, NUL and C1 controls too; other text is untouched.
        assert_eq!(logged("a\tb\0c\u{85}d é"), "a\\tb\\u{0}c\\u{85}d é");
    }

    #[test]
    fn logged_fields_are_bounded_after_escaping() {
        let huge = "\n".repeat(100_000);
        let line = logged(&huge);
        assert!(line.len() <= MAX_LOGGED_BYTES, "{}", line.len());
        assert!(!line.contains('\n'));
        assert!(line.ends_with("…[cut, 100000 bytes]"), "{line}");
        let line = logged(&"x".repeat(200 * 1024));
        assert!(line.len() <= MAX_LOGGED_BYTES);
        assert!(line.ends_with("…[cut, 204800 bytes]"));
    }
}
