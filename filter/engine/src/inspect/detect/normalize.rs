//! The normalized view that detection runs on, and its map back to the
//! original text.
//!
//! Evasion by presentation is undone before matching: invisible characters
//! (Unicode `Cf` and `Default_Ignorable_Code_Point`: zero-width space and
//! joiners, soft hyphen, BOM, bidi controls, variation selectors, tags) are
//! dropped, and the rest is put in NFKC, so fullwidth `ａ＠ｂ．ｃｏ`, ligatures
//! and other compatibility forms read as their plain equivalents.
//!
//! NFKC is done here rather than with the crate's `nfkc()` iterator because
//! every normalized character must remember which original bytes it came
//! from: compatibility decomposition is per character, canonical reordering
//! moves marks only within a run of marks, and composition merges a starter
//! with later marks, so each output character carries the original range
//! it covers (merged ranges on composition). Spans found in the normalized
//! text map back to the smallest original range that covers them, which also
//! covers any invisible characters removed from inside a value.
//!
//! ASCII text (the common case), and other text that is already NFKC with
//! nothing invisible in it, is borrowed as is and the map is the identity,
//! with no allocation.

use std::borrow::Cow;

use unicode_normalization::char::{canonical_combining_class, compose, decompose_compatible};
use unicode_normalization::{is_nfkc_quick, IsNormalized};

/// One normalized character and the original bytes it stands for.
#[derive(Debug, Clone, Copy)]
struct Origin {
    /// Byte offset of the character in the normalized text.
    norm: usize,
    start: usize,
    end: usize,
}

#[derive(Debug)]
pub(super) struct View<'a> {
    text: Cow<'a, str>,
    /// One entry per normalized character; empty for the identity map.
    map: Vec<Origin>,
}

/// A character in the middle of normalization.
#[derive(Debug, Clone, Copy)]
struct Pending {
    c: char,
    ccc: u8,
    start: usize,
    end: usize,
}

impl<'a> View<'a> {
    pub(super) fn new(original: &'a str) -> Self {
        // Most text is ASCII, or already NFKC with nothing invisible (the
        // quick check answers from per-character tables, no allocation).
        if original.is_ascii()
            || (!original.chars().any(is_ignorable)
                && is_nfkc_quick(original.chars()) == IsNormalized::Yes)
        {
            return View {
                text: Cow::Borrowed(original),
                map: Vec::new(),
            };
        }
        // 1. Compatibility decomposition, dropping invisible characters.
        let mut chars: Vec<Pending> = Vec::with_capacity(original.len());
        for (start, c) in original.char_indices() {
            let end = start + c.len_utf8();
            if c.is_ascii() {
                chars.push(Pending {
                    c,
                    ccc: 0,
                    start,
                    end,
                });
                continue;
            }
            decompose_compatible(c, |d| {
                if !is_ignorable(d) {
                    let ccc = canonical_combining_class(d);
                    chars.push(Pending {
                        c: d,
                        ccc,
                        start,
                        end,
                    });
                }
            });
        }
        // 2. Canonical ordering: each run of non-starters sorted by class
        // (stable, and runs are short, so this does not allocate in practice).
        for run in chars.chunk_by_mut(|a, b| a.ccc != 0 && b.ccc != 0) {
            if run.len() > 1 {
                run.sort_by_key(|p| p.ccc);
            }
        }
        // 3. Canonical composition, in place (the write index trails the read
        // index). A mark is blocked from the last starter by anything between
        // them with class 0 or with a class not lower than its own.
        let mut written: usize = 0;
        let mut starter: Option<usize> = None;
        for read in 0..chars.len() {
            let Some(&p) = chars.get(read) else {
                break;
            };
            if let Some(s) = starter {
                // `written` is past the starter, so at least 1.
                let prev = written.checked_sub(1);
                let blocked = prev != Some(s)
                    && prev
                        .and_then(|w| chars.get(w))
                        .is_none_or(|last| last.ccc == 0 || last.ccc >= p.ccc);
                if !blocked {
                    if let Some(target) = chars.get_mut(s) {
                        if let Some(composed) = compose(target.c, p.c) {
                            target.c = composed;
                            target.start = target.start.min(p.start);
                            target.end = target.end.max(p.end);
                            continue;
                        }
                    }
                }
            }
            if p.ccc == 0 {
                starter = Some(written);
            }
            // `written <= read`: in bounds.
            if let Some(slot) = chars.get_mut(written) {
                *slot = p;
            }
            written += 1;
        }
        chars.truncate(written);

        let mut text = String::with_capacity(original.len());
        let mut map = Vec::with_capacity(chars.len());
        for p in &chars {
            map.push(Origin {
                norm: text.len(),
                start: p.start,
                end: p.end,
            });
            text.push(p.c);
        }
        View {
            text: Cow::Owned(text),
            map,
        }
    }

    pub(super) fn text(&self) -> &str {
        &self.text
    }

    /// The original range covering the normalized range `start..end`
    /// (both on character boundaries of the normalized text).
    pub(super) fn original(&self, start: usize, end: usize) -> (usize, usize) {
        if self.map.is_empty() {
            return (start, end);
        }
        let first = self.map.partition_point(|o| o.norm < start);
        let last = self.map.partition_point(|o| o.norm < end);
        let covered = self
            .map
            .get(first..last.max(first + 1).min(self.map.len()))
            .unwrap_or_default();
        let lo = covered.iter().map(|o| o.start).min().unwrap_or(start);
        let hi = covered.iter().map(|o| o.end).max().unwrap_or(end);
        (lo, hi)
    }

    /// The original offset from which everything is needed to produce the
    /// normalized text from `norm` on (reordering can move a mark's origin
    /// ahead of an earlier character's, hence the minimum).
    pub(super) fn original_from(&self, norm: usize) -> usize {
        if self.map.is_empty() {
            return norm;
        }
        let first = self.map.partition_point(|o| o.norm < norm);
        self.map
            .get(first..)
            .unwrap_or_default()
            .iter()
            .map(|o| o.start)
            .min()
            .unwrap_or(norm)
    }

    /// The normalized offset of the first character that stands for any
    /// original byte at or after `original` (a composed character that
    /// straddles it counts as after).
    pub(super) fn normalized_from(&self, original: usize) -> usize {
        if self.map.is_empty() {
            return original.min(self.text.len());
        }
        self.map
            .iter()
            .find(|o| o.end > original)
            .map_or(self.text.len(), |o| o.norm)
    }

    /// Where the normalized text could still change if more text were
    /// appended: the last starter and the marks after it, which a following
    /// combining mark (or Hangul jamo) could reorder or compose with. `None`
    /// when the text ends with a character nothing composes onto.
    ///
    /// Everything before the returned offset is final: normalization never
    /// reaches back past the last starter.
    pub(super) fn unstable_tail(&self) -> Option<usize> {
        let text: &str = &self.text;
        let mut segment = text.len();
        for (i, c) in text.char_indices().rev() {
            segment = i;
            if canonical_combining_class(c) == 0 {
                break;
            }
        }
        // From `char_indices`: a boundary (else all of it counts as unstable).
        let tail = text.get(segment..).unwrap_or(text);
        let mut chars = tail.chars();
        let settled = match (chars.next(), chars.next()) {
            // ASCII characters other than letters and `<=>` are the first
            // half of no canonical composition.
            (Some(c), None) => c.is_ascii() && !c.is_ascii_alphabetic() && !"<=>".contains(c),
            (None, _) => true,
            _ => false,
        };
        (!settled).then_some(segment)
    }
}

/// Characters removed before matching: general category `Cf` and the
/// `Default_Ignorable_Code_Point` property (Unicode 15.1/16.0). A test checks
/// this table against the regex crate's Unicode tables.
pub(super) fn is_ignorable(c: char) -> bool {
    !c.is_ascii()
        && matches!(
            u32::from(c),
            0x00AD
                | 0x034F
                | 0x0600..=0x0605
                | 0x061C
                | 0x06DD
                | 0x070F
                | 0x0890..=0x0891
                | 0x08E2
                | 0x115F..=0x1160
                | 0x17B4..=0x17B5
                | 0x180B..=0x180F
                | 0x200B..=0x200F
                | 0x202A..=0x202E
                | 0x2060..=0x206F
                | 0x3164
                | 0xFE00..=0xFE0F
                | 0xFEFF
                | 0xFFA0
                | 0xFFF0..=0xFFFB
                | 0x110BD
                | 0x110CD
                | 0x13430..=0x1343F
                | 0x1BCA0..=0x1BCA3
                | 0x1D173..=0x1D17A
                | 0xE0000..=0xE0FFF
        )
}
