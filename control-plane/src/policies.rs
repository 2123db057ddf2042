//! Policy documents as the control plane sees them: validation with the
//! filter's own compiler, problems pointed at lines of the YAML text, and the
//! document as JSON for the gateways.
//!
//! One function, [`validate`], serves both `POST /v1/policies[/validate]`
//! and the offline `warden policy validate FILE`, so the API and the CLI
//! always report the same problems.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Largest policy document accepted, in bytes.
pub const MAX_DOCUMENT_BYTES: usize = 512 * 1024;

/// One problem in a policy document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// 1-based line in the document, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// Where in the document, e.g. `rules[2].regex`, when known.
    pub path: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl Problem {
    fn message(message: impl Into<String>) -> Self {
        Problem {
            line: None,
            column: None,
            path: None,
            message: message.into(),
        }
    }
}

/// Checks `text` with the filter's compiler. Every problem found is returned,
/// each with a line when one can be found (syntax errors carry their own;
/// semantic ones are located by their path in the YAML tree).
pub fn validate(text: &str) -> Result<(), Vec<Problem>> {
    if text.len() > MAX_DOCUMENT_BYTES {
        return Err(vec![Problem::message(format!(
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
        .map(|problem| {
            let mut located = Problem {
                line: problem.line,
                column: problem.column,
                path: problem.path,
                message: problem.message,
            };
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
        out.push(Problem::message("the policy is invalid"));
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
    fn hashes_are_hex() {
        assert_eq!(
            sha256_hex(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
