//! What every match of a pattern must contain, derived from the pattern's
//! own syntax tree, so that a detector runs only where it could match.
//!
//! For a pattern X and a byte set S, `minc(X, S)` is the least number of
//! bytes from S in any string X matches:
//!
//! ```text
//! minc(literal)   = its bytes in S          minc(assertion, ε) = 0
//! minc(class)     = 1 if every character's first byte is in S, else 0
//! minc(X Y)       = minc(X) + minc(Y)       minc(X | Y) = min(minc(X), minc(Y))
//! minc(X{n,m})    = n · minc(X)
//! ```
//!
//! A text with fewer than `minc(X, S)` bytes from S (counted in the
//! normalized text the detectors run on) holds no match: the detector is
//! skipped. And since a match of at most `max_len` bytes holding a byte
//! from S lies within `max_len` bytes of it, a long text is searched only in
//! windows around those bytes, with the rest of the text still visible to
//! the pattern's assertions (the search span narrows, the haystack does
//! not), so the matches found, and their order, are the same as a search of
//! the whole text.
//!
//! The candidate sets S are taken from the pattern itself (its literal
//! bytes, its small classes, the union of what each branch of an
//! alternation needs), so that a detector's definition is the only place its
//! prefilter comes from. Which of them is selective is a guess about text
//! (a static byte frequency), refined per text by actual counts.

use regex_syntax::hir::{Class, Hir, HirKind};

/// Classes with more distinct first bytes than this are not candidates:
/// counting them costs more than they save, and they are common in text.
const MAX_SET_BYTES: usize = 16;
/// Needs kept per pattern, the most selective first.
const MAX_NEEDS: usize = 6;
/// Candidate sets considered per pattern (bounds the derivation's work).
const MAX_CANDIDATES: usize = 256;

/// A set of byte values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct ByteSet([u64; 4]);

impl ByteSet {
    const EMPTY: ByteSet = ByteSet([0; 4]);

    fn insert(&mut self, b: u8) {
        if let Some(word) = self.0.get_mut(usize::from(b >> 6)) {
            *word |= 1 << (b & 63);
        }
    }

    fn insert_range(&mut self, lo: u8, hi: u8) {
        for b in lo..=hi {
            self.insert(b);
        }
    }

    pub(super) fn contains(&self, b: u8) -> bool {
        self.0
            .get(usize::from(b >> 6))
            .is_some_and(|word| word & (1 << (b & 63)) != 0)
    }

    fn union(self, other: ByteSet) -> ByteSet {
        let mut out = self;
        for (o, x) in out.0.iter_mut().zip(other.0) {
            *o |= x;
        }
        out
    }

    pub(super) fn is_subset(&self, other: &ByteSet) -> bool {
        self.0.iter().zip(other.0).all(|(a, b)| a & !b == 0)
    }

    fn len(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }

    pub(super) fn bytes(&self) -> impl Iterator<Item = u8> + '_ {
        (0..=255u8).filter(|&b| self.contains(b))
    }

    /// Expected share of text bytes in the set (a static guess, per 10 000):
    /// lower is more selective.
    fn score(&self) -> u32 {
        self.bytes().map(frequency).sum()
    }
}

/// A rough frequency of each byte in prompts and answers (prose, some code
/// and JSON), per 10 000. Only the ranking matters.
fn frequency(b: u8) -> u32 {
    match b {
        b' ' => 1500,
        b'e' | b't' | b'a' | b'o' | b'i' | b'n' => 650,
        b's' | b'h' | b'r' | b'd' | b'l' | b'u' | b'c' | b'm' => 300,
        b'f' | b'w' | b'g' | b'y' | b'p' | b'b' | b'v' | b'k' => 120,
        b'a'..=b'z' => 20,
        b'A'..=b'Z' => 40,
        b'0'..=b'9' => 40,
        b'.' | b',' | b'\n' => 80,
        b'"' | b'-' | b'(' | b')' | b'\'' | b'/' | b':' | b'_' | b'\t' => 20,
        b'=' | b';' | b'!' | b'?' | b'*' | b'#' | b'[' | b']' | b'{' | b'}' => 10,
        0x80..=0xFF => 10,
        _ => 3,
    }
}

/// At least `min` bytes of the text are in `set`.
#[derive(Debug, Clone)]
pub(super) struct Need {
    pub(super) set: ByteSet,
    /// The set's members, for counting them in a byte histogram.
    pub(super) members: Box<[u8]>,
    pub(super) min: usize,
}

/// What a pattern's matches need, and how long they can be.
#[derive(Debug, Clone, Default)]
pub(super) struct Needs {
    /// All hold for every match; the most selective first.
    pub(super) needs: Vec<Need>,
    /// Longest match in bytes; `None` if unbounded.
    pub(super) max_len: Option<usize>,
    /// Shortest match in bytes.
    pub(super) min_len: usize,
}

impl Needs {
    /// What matches of `hir` need. Sound for any pattern: where nothing can
    /// be derived the list of needs is empty and the detector always runs.
    pub(super) fn of(hir: &Hir) -> Needs {
        let props = hir.properties();
        let mut candidates = Vec::new();
        collect(hir, &mut candidates);
        candidates.sort();
        candidates.dedup();
        let mut needs: Vec<(u32, Need)> = candidates
            .into_iter()
            .filter_map(|set| {
                let min = minc(hir, &set);
                (min > 0).then(|| {
                    let need = Need {
                        set,
                        members: set.bytes().collect(),
                        min,
                    };
                    (set.score(), need)
                })
            })
            .collect();
        needs.sort_by_key(|(score, need)| (*score, std::cmp::Reverse(need.min)));
        // A set no larger than another, needed as often, makes it redundant.
        let mut kept: Vec<Need> = Vec::new();
        for (_, need) in needs {
            let implied = kept
                .iter()
                .any(|k| k.set.is_subset(&need.set) && k.min >= need.min);
            if !implied && kept.len() < MAX_NEEDS {
                kept.push(need);
            }
        }
        Needs {
            needs: kept,
            max_len: props.maximum_len(),
            min_len: props.minimum_len().unwrap_or(0),
        }
    }

    /// Sound for a text with this byte histogram: `false` means no match
    /// can be in it. Otherwise the need with the fewest bytes in the text
    /// (its anchors), and how many, if there is one.
    pub(super) fn check(&self, len: usize, hist: &[u32; 256]) -> Option<Option<(&Need, usize)>> {
        if len < self.min_len {
            return None;
        }
        let mut best: Option<(&Need, usize)> = None;
        for need in &self.needs {
            // A `u8` indexes 256 counts; the fallback (never taken) keeps
            // the detector.
            let count: usize = need
                .members
                .iter()
                .map(|&b| hist.get(usize::from(b)).map_or(usize::MAX, |&n| n as usize))
                .fold(0, usize::saturating_add);
            if count < need.min {
                return None;
            }
            if best.is_none_or(|(_, c)| count < c) {
                best = Some((need, count));
            }
        }
        Some(best)
    }
}

/// The first bytes the characters of a class can start with; `None` if
/// there are more than [`MAX_SET_BYTES`].
fn class_bytes(class: &Class) -> ByteSet {
    let mut set = ByteSet::EMPTY;
    match class {
        Class::Bytes(bytes) => {
            for r in bytes.iter() {
                set.insert_range(r.start(), r.end());
            }
        }
        Class::Unicode(chars) => {
            for r in chars.iter() {
                // UTF-8 first bytes grow with the code point.
                let first = |c: char| {
                    let mut buf = [0u8; 4];
                    c.encode_utf8(&mut buf)
                        .as_bytes()
                        .first()
                        .copied()
                        .unwrap_or(0)
                };
                set.insert_range(first(r.start()), first(r.end()));
            }
        }
    }
    set
}

/// Candidate sets: literal bytes, small classes, and per alternation the
/// union of each branch's most selective candidate.
fn collect(hir: &Hir, out: &mut Vec<ByteSet>) {
    if out.len() >= MAX_CANDIDATES {
        return;
    }
    match hir.kind() {
        HirKind::Empty | HirKind::Look(_) => {}
        HirKind::Literal(lit) => {
            for &b in lit.0.iter() {
                let mut set = ByteSet::EMPTY;
                set.insert(b);
                out.push(set);
            }
        }
        HirKind::Class(class) => {
            let set = class_bytes(class);
            if set.len() <= MAX_SET_BYTES {
                out.push(set);
            }
        }
        HirKind::Repetition(rep) => collect(&rep.sub, out),
        HirKind::Capture(cap) => collect(&cap.sub, out),
        HirKind::Concat(items) => items.iter().for_each(|h| collect(h, out)),
        HirKind::Alternation(branches) => {
            let mut union = Some(ByteSet::EMPTY);
            for branch in branches {
                let mut own = Vec::new();
                collect(branch, &mut own);
                let best = own
                    .iter()
                    .filter(|s| minc(branch, s) > 0)
                    .min_by_key(|s| s.score())
                    .copied();
                union = union.zip(best).map(|(u, b)| u.union(b));
                out.extend(own);
            }
            out.extend(union.filter(|u| u.len() <= MAX_SET_BYTES));
        }
    }
}

/// The least number of bytes from `set` in any match of `hir`.
fn minc(hir: &Hir, set: &ByteSet) -> usize {
    match hir.kind() {
        HirKind::Empty | HirKind::Look(_) => 0,
        HirKind::Literal(lit) => lit.0.iter().filter(|&&b| set.contains(b)).count(),
        HirKind::Class(class) => usize::from(class_bytes(class).is_subset(set)),
        HirKind::Repetition(rep) => {
            usize::try_from(rep.min).map_or(0, |n| n.saturating_mul(minc(&rep.sub, set)))
        }
        HirKind::Capture(cap) => minc(&cap.sub, set),
        HirKind::Concat(items) => items
            .iter()
            .map(|h| minc(h, set))
            .fold(0, usize::saturating_add),
        HirKind::Alternation(branches) => branches.iter().map(|h| minc(h, set)).min().unwrap_or(0),
    }
}
