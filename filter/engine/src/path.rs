//! The request path the filter routes and inspects by must be canonical.
//!
//! Envoy routes by prefix and the filter picks the provider and the API
//! shape from the same path; an upstream may decode what neither decoded
//! (`chat%2Fcompletions` reaches `chat/completions` on servers that decode
//! `%2F`), so a path with two readings is refused rather than guessed at.
//! The shipped Envoy configuration normalizes paths before the filter sees
//! them (`normalize_path`, `merge_slashes`, escaped slashes refused); this is
//! the same rule in the filter, for meshes that do not.

/// Why a path is not canonical, or `Ok` if it is.
///
/// Canonical: starts with `/`; no empty segment (`//`), no `.` or `..`
/// segment, no backslash; no percent-escape of an unreserved character (RFC
/// 3986: it has a plain spelling), of `/` or `\` (another reading of the
/// path's structure), or that is malformed. The query, after `?`, is not a
/// path and is not checked here.
pub fn check_canonical(raw: &[u8]) -> Result<(), &'static str> {
    let path = raw.split(|&b| b == b'?').next().unwrap_or_default();
    if path.first() != Some(&b'/') {
        return Err("the path must start with /");
    }
    if path.contains(&b'\\') {
        return Err("the path must not contain a backslash");
    }
    // Segments after the leading `/`; the last may be empty (a trailing `/`).
    let segments: Vec<&[u8]> = path.split(|&b| b == b'/').skip(1).collect();
    for (i, segment) in segments.iter().enumerate() {
        if segment.is_empty() && i + 1 < segments.len() {
            return Err("the path must not contain //");
        }
        if *segment == b"." || *segment == b".." {
            return Err("the path must not contain . or .. segments");
        }
    }
    let mut bytes = path.iter();
    while let Some(&b) = bytes.next() {
        if b != b'%' {
            continue;
        }
        let (Some(hi), Some(lo)) = (bytes.next(), bytes.next()) else {
            return Err("the path has a malformed percent-escape");
        };
        let (Some(hi), Some(lo)) = (hex_value(*hi), hex_value(*lo)) else {
            return Err("the path has a malformed percent-escape");
        };
        let decoded = hi * 16 + lo;
        if decoded == b'/' || decoded == b'\\' {
            return Err("the path must not contain an escaped / or \\");
        }
        if decoded.is_ascii_alphanumeric() || matches!(decoded, b'-' | b'.' | b'_' | b'~') {
            return Err("the path must not percent-escape a character it can spell plainly");
        }
    }
    Ok(())
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::check_canonical;
    use crate::testing::test;

    #[test]
    fn canonical_paths_pass() {
        for path in [
            "/openai/v1/chat/completions",
            "/openai/v1/models/gpt-4o",
            "/anthropic/v1/messages?beta=true",
            "/openai/v1/files/file-abc%20x",
            "/",
            "/openai/v1/models/",
            "/openai/v1/chat/completions?q=%2F..//",
        ] {
            assert_eq!(check_canonical(path.as_bytes()), Ok(()), "{path}");
        }
    }

    #[test]
    fn paths_with_another_reading_are_refused() {
        for path in [
            "/openai/v1/chat%2Fcompletions",
            "/openai/v1/chat%2fcompletions",
            "/openai/v1%2Fchat/completions",
            "/openai/v1/chat%5Ccompletions",
            "/openai/v1/chat\\completions",
            "/openai/v1//chat/completions",
            "//openai/v1/chat/completions",
            "/openai/v1/models/../chat/completions",
            "/openai/./v1/chat/completions",
            "/openai/v1/chat/completions/..",
            "/openai/v1/%63hat/completions",
            "/openai/v1/chat%2ecompletions",
            "/openai/v1/chat/completions%",
            "/openai/v1/chat/completions%2",
            "/openai/v1/chat/completions%zz",
            "openai/v1/chat/completions",
            "",
        ] {
            assert!(check_canonical(path.as_bytes()).is_err(), "{path}");
        }
    }

    #[test]
    fn any_bytes_give_an_answer() {
        for path in [&b"/\xff\xfe%"[..], b"%", b"/%%%", b"/a/%C3%A9"] {
            let _ = check_canonical(path);
        }
        assert_eq!(check_canonical(b"/a/%C3%A9"), Ok(()));
    }
}
