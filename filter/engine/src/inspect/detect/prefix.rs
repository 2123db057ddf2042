//! Prefix languages of patterns, for the streaming holdback.
//!
//! A stream may release text only when no match can still begin in it and
//! finish with text that has not arrived yet. For a pattern `X` the strings
//! that can begin a match are P(X), the prefixes of the strings X matches.
//! The regex crate has no partial-match API, so P(X) is written as a regex
//! of its own, derived from X's syntax:
//!
//! ```text
//! P(atom)      = atom?                      P(assertion) = ε
//! P(X Y)       = P(X) | X P(Y)              P(X | Y)     = P(X) | P(Y)
//! P(X{n,m})    = X{0,m-1} P(X)              P(X*)        = X* P(X)
//! ```
//!
//! Dropping assertions only makes P larger, which is the safe direction (a
//! larger P holds back more, never less). An assertion is kept where a
//! consumed character follows it, because both of its sides are then known.
//!
//! The parser understands the syntax the built-in detectors use and what
//! policies commonly write: literals, escapes, classes (copied verbatim),
//! groups, alternation, repetition and inline flags. Anything else (verbose
//! mode, or syntax it does not know) yields `None`, and the caller falls back
//! to holding a fixed window, which is sound for matches up to that window.

use regex::escape;

/// Deeper group nesting than this is not analysed (the caller falls back to
/// a fixed window); it also bounds this module's recursion.
const MAX_DEPTH: usize = 64;
/// Literal runs are cut into pieces this long, so that P(run), a nested
/// chain, stays well inside the regex crate's nesting limit.
const RUN_CHUNK: usize = 16;
/// Upper bound, in UTF-8 bytes, of what one character-matching item can
/// match (a class, `.`, or a case-insensitive literal).
const MAX_CHAR_BYTES: usize = 4;

/// A parsed pattern: enough structure to write P(X) and to bound |X|.
#[derive(Debug, Clone)]
pub(super) struct Shape(Node);

impl Shape {
    /// `None` when the pattern uses syntax this module does not analyse.
    pub(super) fn parse(pattern: &str) -> Option<Shape> {
        let mut parser = Parser {
            src: pattern,
            pos: 0,
            depth: 0,
        };
        let mut flags = Flags::default();
        let node = parser.alternation(&mut flags)?;
        // A stray `)` stops the top-level alternation early.
        (parser.pos == pattern.len()).then_some(Shape(node))
    }

    /// The longest match, in bytes of normalized text; `None` if unbounded.
    pub(super) fn max_len(&self) -> Option<usize> {
        max_len(&self.0)
    }

    /// A regex for P(X). It always matches the empty string.
    pub(super) fn prefix_regex(&self) -> String {
        let mut out = String::new();
        prefix(&self.0, &mut out);
        out
    }

    /// A regex for X's matches followed by at most `n` more characters
    /// (any, line breaks included): what a validator that reads `n + 1`
    /// characters after a match has not judged for good yet.
    pub(super) fn followed_regex(&self, n: usize) -> String {
        let mut out = String::from("(?:");
        full(&self.0, &mut out);
        out.push_str(&format!(")(?s:.){{0,{n}}}"));
        out
    }
}

/// Inline flags in force at a point of the pattern. `x` (verbose mode) is not
/// represented: the parser gives up on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Flags {
    case_insensitive: bool,
    multi_line: bool,
    dot_nl: bool,
    swap_greed: bool,
    crlf: bool,
    unicode: bool,
}

impl Default for Flags {
    fn default() -> Self {
        Flags {
            case_insensitive: false,
            multi_line: false,
            dot_nl: false,
            swap_greed: false,
            crlf: false,
            unicode: true,
        }
    }
}

impl Flags {
    /// `inner` under these flags, written so that it means the same wherever
    /// it is pasted (the derived regexes are compiled with default flags).
    fn wrap(self, inner: &str) -> String {
        let mut on = String::new();
        for (set, c) in [
            (self.case_insensitive, 'i'),
            (self.multi_line, 'm'),
            (self.dot_nl, 's'),
            (self.swap_greed, 'U'),
            (self.crlf, 'R'),
        ] {
            if set {
                on.push(c);
            }
        }
        let off = if self.unicode { "" } else { "-u" };
        if on.is_empty() && off.is_empty() {
            inner.to_owned()
        } else {
            format!("(?{on}{off}:{inner})")
        }
    }

    /// Applies a flag string such as `i-u`; `None` for `x` or unknown flags.
    fn apply(&mut self, spec: &str) -> Option<()> {
        let mut value = true;
        for c in spec.chars() {
            match c {
                '-' => value = false,
                'i' => self.case_insensitive = value,
                'm' => self.multi_line = value,
                's' => self.dot_nl = value,
                'U' => self.swap_greed = value,
                'R' => self.crlf = value,
                'u' => self.unicode = value,
                _ => return None,
            }
        }
        Some(())
    }
}

#[derive(Debug, Clone)]
enum Node {
    Empty,
    /// One literal character (merged into `Run`s once a concatenation is done).
    Lit(char, Flags),
    /// Consecutive literal characters under the same flags.
    Run(String, Flags),
    /// Any other item that matches one character (class, escape, `.`),
    /// already wrapped in its flags.
    Atom(String),
    /// A zero-width assertion, already wrapped in its flags.
    Assert(String),
    Concat(Vec<Node>),
    Alt(Vec<Node>),
    Repeat {
        node: Box<Node>,
        min: u32,
        max: Option<u32>,
    },
}

struct Parser<'p> {
    src: &'p str,
    pos: usize,
    depth: usize,
}

impl Parser<'_> {
    /// The pattern from the current position (`pos` only moves by whole
    /// characters; off a boundary, the rest reads as empty: unsupported).
    fn rest(&self) -> &str {
        self.src.get(self.pos..).unwrap_or_default()
    }

    /// The pattern from `start` to the current position.
    fn since(&self, start: usize) -> Option<&str> {
        self.src.get(start..self.pos)
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.pos += c.len_utf8();
            true
        } else {
            false
        }
    }

    fn eat_str(&mut self, s: &str) -> bool {
        if self.rest().starts_with(s) {
            self.pos += s.len();
            true
        } else {
            false
        }
    }

    /// `a|b|c` up to an unmatched `)` or the end. Flags set by `(?i)` last
    /// until the end of the enclosing group, across `|`, as in regex-syntax.
    fn alternation(&mut self, flags: &mut Flags) -> Option<Node> {
        let mut branches = Vec::new();
        let mut items = Vec::new();
        loop {
            match self.peek() {
                None | Some(')') => break,
                Some('|') => {
                    self.pos += 1;
                    branches.push(concat(std::mem::take(&mut items)));
                }
                Some(_) => {
                    if let Some(item) = self.piece(flags)? {
                        items.push(item);
                    }
                }
            }
        }
        branches.push(concat(items));
        Some(if branches.len() == 1 {
            branches.pop().unwrap_or(Node::Empty)
        } else {
            Node::Alt(branches)
        })
    }

    /// An atom and its repetition operators. `Some(None)` for a flag group.
    fn piece(&mut self, flags: &mut Flags) -> Option<Option<Node>> {
        let Some(mut node) = self.atom(flags)? else {
            return Some(None);
        };
        while let Some((min, max)) = self.repetition()? {
            node = Node::Repeat {
                node: Box::new(node),
                min,
                max,
            };
        }
        Some(Some(node))
    }

    /// `Some(None)`: no repetition operator here.
    fn repetition(&mut self) -> Option<Option<(u32, Option<u32>)>> {
        let range = match self.peek() {
            Some('*') => (0, None),
            Some('+') => (1, None),
            Some('?') => (0, Some(1)),
            Some('{') => {
                self.pos += 1;
                return self.counted().map(|range| {
                    self.eat('?');
                    Some(range)
                });
            }
            _ => return Some(None),
        };
        self.pos += 1;
        // A trailing `?` makes the operator lazy: same language.
        self.eat('?');
        Some(Some(range))
    }

    /// `{n}`, `{n,}`, `{n,m}` after the `{`; whitespace allowed around the
    /// numbers, as regex-syntax allows.
    fn counted(&mut self) -> Option<(u32, Option<u32>)> {
        let min = self.decimal();
        if self.eat('}') {
            return Some((min?, min));
        }
        if !self.eat(',') {
            return None;
        }
        let max = self.decimal();
        if !self.eat('}') {
            return None;
        }
        Some((min.unwrap_or(0), max))
    }

    fn decimal(&mut self) -> Option<u32> {
        while self.peek().is_some_and(char::is_whitespace) {
            self.bump();
        }
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
        let value = self.since(start).and_then(|d| d.parse().ok());
        while self.peek().is_some_and(char::is_whitespace) {
            self.bump();
        }
        value
    }

    /// `None`: unsupported. `Some(None)`: a flag group, which sets `flags`.
    fn atom(&mut self, flags: &mut Flags) -> Option<Option<Node>> {
        let start = self.pos;
        let c = self.bump()?;
        let node = match c {
            '(' => return self.group(flags),
            '[' => {
                self.class()?;
                Node::Atom(flags.wrap(self.since(start)?))
            }
            '\\' => self.escape(start, *flags)?,
            '.' => Node::Atom(flags.wrap(".")),
            '^' | '$' => Node::Assert(flags.wrap(self.since(start)?)),
            '*' | '+' | '?' | '{' | ')' | '|' => return None,
            c => Node::Lit(c, *flags),
        };
        Some(Some(node))
    }

    fn group(&mut self, flags: &mut Flags) -> Option<Option<Node>> {
        let mut inner = *flags;
        if self.eat('?') {
            if self.eat(':') {
                // non-capturing
            } else if self.eat_str("P<") || self.eat('<') {
                let close = self.rest().find('>')?;
                self.pos += close + 1;
            } else {
                let end = self.rest().find([':', ')'])?;
                inner.apply(self.rest().get(..end)?)?;
                self.pos += end;
                if self.eat(')') {
                    // `(?i)`: applies to the rest of the enclosing group.
                    *flags = inner;
                    return Some(None);
                }
                self.eat(':');
            }
        }
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return None;
        }
        let node = self.alternation(&mut inner)?;
        self.depth -= 1;
        if !self.eat(')') {
            return None;
        }
        Some(Some(node))
    }

    /// Skips a bracketed class (the `[` is consumed); nested classes and
    /// `[:alpha:]` count brackets, and a `]` first in a class is a literal.
    fn class(&mut self) -> Option<()> {
        let mut depth = 1;
        let mut at_start = true;
        loop {
            if at_start {
                self.eat('^');
                self.eat(']');
                at_start = false;
            }
            match self.bump()? {
                '\\' => {
                    self.bump()?;
                }
                '[' => {
                    depth += 1;
                    at_start = true;
                }
                ']' => {
                    depth -= 1;
                    if depth == 0 {
                        return Some(());
                    }
                }
                _ => {}
            }
        }
    }

    fn escape(&mut self, start: usize, flags: Flags) -> Option<Node> {
        let c = self.bump()?;
        let verbatim = |p: &Self| p.since(start).map(|s| flags.wrap(s));
        Some(match c {
            'd' | 'D' | 'w' | 'W' | 's' | 'S' | 'n' | 't' | 'r' | 'f' | 'v' | 'a' => {
                Node::Atom(verbatim(self)?)
            }
            'p' | 'P' => {
                if self.eat('{') {
                    let close = self.rest().find('}')?;
                    self.pos += close + 1;
                } else {
                    self.bump()?;
                }
                Node::Atom(verbatim(self)?)
            }
            'x' | 'u' | 'U' => {
                if self.eat('{') {
                    let close = self.rest().find('}')?;
                    self.pos += close + 1;
                } else {
                    let digits = match c {
                        'x' => 2,
                        'u' => 4,
                        _ => 8,
                    };
                    for _ in 0..digits {
                        if !self.bump()?.is_ascii_hexdigit() {
                            return None;
                        }
                    }
                }
                Node::Atom(verbatim(self)?)
            }
            'b' => {
                // `\b{start}` and friends; `\b{5}` is a repetition instead.
                if self
                    .rest()
                    .strip_prefix('{')
                    .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_alphabetic() || c == '-'))
                {
                    let close = self.rest().find('}')?;
                    self.pos += close + 1;
                }
                Node::Assert(verbatim(self)?)
            }
            'B' | 'A' | 'z' | '<' | '>' => Node::Assert(verbatim(self)?),
            c if c.is_ascii_alphanumeric() => return None,
            c => Node::Lit(c, flags),
        })
    }
}

/// A concatenation, with literal characters merged into chunked runs.
fn concat(items: Vec<Node>) -> Node {
    let mut out: Vec<Node> = Vec::with_capacity(items.len());
    for item in items {
        match (item, out.last_mut()) {
            (Node::Lit(c, f), Some(Node::Run(run, rf)))
                if *rf == f && run.chars().count() < RUN_CHUNK =>
            {
                run.push(c);
            }
            (Node::Lit(c, f), _) => out.push(Node::Run(c.to_string(), f)),
            (item, _) => out.push(item),
        }
    }
    match out.len() {
        0 => Node::Empty,
        1 => out.pop().unwrap_or(Node::Empty),
        _ => Node::Concat(out),
    }
}

fn max_len(node: &Node) -> Option<usize> {
    Some(match node {
        Node::Empty | Node::Assert(_) => 0,
        Node::Lit(c, f) => lit_len(*c, *f),
        Node::Run(s, f) => s.chars().map(|c| lit_len(c, *f)).sum(),
        Node::Atom(_) => MAX_CHAR_BYTES,
        Node::Concat(items) => {
            let mut total = 0usize;
            for item in items {
                total = total.saturating_add(max_len(item)?);
            }
            total
        }
        Node::Alt(items) => {
            let mut most = 0;
            for item in items {
                most = most.max(max_len(item)?);
            }
            most
        }
        Node::Repeat { node, max, .. } => {
            let times = usize::try_from((*max)?).unwrap_or(usize::MAX);
            max_len(node)?.saturating_mul(times)
        }
    })
}

/// Case-insensitive literals may match other characters (`k` matches the
/// Kelvin sign, 3 bytes).
fn lit_len(c: char, f: Flags) -> usize {
    if f.case_insensitive {
        MAX_CHAR_BYTES
    } else {
        c.len_utf8()
    }
}

/// The pattern itself, re-serialized: groups become non-capturing (so names
/// cannot clash when patterns are combined) and flags travel with each item.
fn full(node: &Node, out: &mut String) {
    match node {
        Node::Empty => {}
        Node::Lit(c, f) => out.push_str(&f.wrap(&escape(c.encode_utf8(&mut [0; 4])))),
        Node::Run(s, f) => out.push_str(&f.wrap(&escape(s))),
        Node::Atom(a) | Node::Assert(a) => out.push_str(a),
        Node::Concat(items) => items.iter().for_each(|i| full(i, out)),
        Node::Alt(items) => {
            out.push_str("(?:");
            for (k, item) in items.iter().enumerate() {
                if k > 0 {
                    out.push('|');
                }
                full(item, out);
            }
            out.push(')');
        }
        Node::Repeat { node, min, max } => {
            out.push_str("(?:");
            full(node, out);
            out.push(')');
            match max {
                Some(max) => out.push_str(&format!("{{{min},{max}}}")),
                None => out.push_str(&format!("{{{min},}}")),
            }
        }
    }
}

/// P(node): a regex for the prefixes of what `node` matches (ε included).
fn prefix(node: &Node, out: &mut String) {
    match node {
        Node::Empty | Node::Assert(_) => {}
        Node::Lit(..) | Node::Atom(_) => {
            out.push_str("(?:");
            full(node, out);
            out.push_str(")?");
        }
        Node::Run(s, f) => {
            // (?:a(?:b(?:c)?)?)? : every prefix of "abc".
            let mut chain = String::new();
            for c in s.chars() {
                chain.push_str("(?:");
                chain.push_str(&escape(c.encode_utf8(&mut [0; 4])));
            }
            for _ in s.chars() {
                chain.push_str(")?");
            }
            out.push_str(&f.wrap(&chain));
        }
        Node::Concat(items) => {
            // P(x1 x2 .. xn) = P(x1) | x1 (P(x2) | x2 (... P(xn))), written
            // iteratively so long concatenations do not recurse here.
            let Some((last, init)) = items.split_last() else {
                return;
            };
            for item in init {
                out.push_str("(?:");
                prefix(item, out);
                out.push('|');
                full(item, out);
            }
            prefix(last, out);
            for _ in init {
                out.push(')');
            }
        }
        Node::Alt(items) => {
            out.push_str("(?:");
            for (k, item) in items.iter().enumerate() {
                if k > 0 {
                    out.push('|');
                }
                prefix(item, out);
            }
            out.push(')');
        }
        Node::Repeat { node, max, .. } => match max {
            Some(0) => {}
            Some(1) => prefix(node, out),
            Some(m) => {
                out.push_str("(?:(?:");
                full(node, out);
                out.push_str(&format!("){{0,{}}}", m - 1));
                prefix(node, out);
                out.push(')');
            }
            None => {
                out.push_str("(?:(?:");
                full(node, out);
                out.push_str(")*");
                prefix(node, out);
                out.push(')');
            }
        },
    }
}
