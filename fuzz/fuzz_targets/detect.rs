//! Every detector and the whole scan, on any text (arbitrary bytes, read as
//! UTF-8 with invalid sequences replaced): no panic; every finding a
//! non-empty span of the text on char boundaries; `find` sorted, disjoint,
//! and a subset of `find_all`; the stream helpers (holdback, lookbehind)
//! answer char boundaries within their bounds; and masking every finding
//! leaves none of the masked values where it was (a masked value survives
//! nowhere, and masking makes no new one).
#![no_main]

use libfuzzer_sys::fuzz_target;
use warden_engine::inspect::mask::{apply, Action, Edit, HashKey, Vault};
use warden_engine_fuzz::{check_masked_values_gone, check_span, masking_policy};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let text: &str = &text;
    let policy = masking_policy();
    let set = policy.detectors();

    let found = set.find(text);
    let all = set.find_all(text);
    for f in found.iter().chain(&all) {
        check_span(text, f);
    }
    for pair in found.windows(2) {
        assert!(
            pair[0].end <= pair[1].start,
            "find: overlapping or unsorted: {pair:?}"
        );
    }
    for f in &found {
        assert!(all.contains(f), "find has {f:?}, find_all does not");
    }

    // The stream helpers, on the text and on a prefix the input chooses.
    let mut cut = data.first().map_or(0, |b| *b as usize * text.len() / 256);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    for t in [text, &text[..cut]] {
        if let Some(h) = set.holdback_start(t) {
            assert!(
                h < t.len() && t.is_char_boundary(h),
                "holdback {h} of {}",
                t.len()
            );
            assert!(
                t.len() - h <= set.max_holdback(),
                "held {} > max {}",
                t.len() - h,
                set.max_holdback()
            );
        }
        let lb = set.lookbehind_start(t);
        assert!(
            lb <= t.len() && t.is_char_boundary(lb),
            "lookbehind {lb} of {}",
            t.len()
        );
        for f in set.find_all_after(t, lb) {
            check_span(t, &f);
        }
        for f in &found {
            let _ = set.settled(t, f.end);
        }
    }

    // Mask every finding; the masked values are gone.
    let edits: Vec<Edit> = found
        .iter()
        .map(|f| Edit {
            start: f.start,
            end: f.end,
            action: Action::Mask,
            label: f.label.clone(),
        })
        .collect();
    let masked = apply(
        text,
        &edits,
        &mut Vault::default(),
        &HashKey::new(b"fuzz-key".to_vec()),
    );
    check_masked_values_gone(
        &[text.to_owned()],
        &[masked.clone()],
        found.iter().map(|f| &text[f.start..f.end]),
    );
    for f in set.find_all(&masked) {
        check_span(&masked, &f);
    }
});
