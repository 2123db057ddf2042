//! The masking engine as a stream transformer: any text (arbitrary bytes
//! read as UTF-8 with invalid sequences replaced), cut into deltas where
//! the input chooses (see `cuts`; cuts move down to char boundaries).
//! Never a panic, and nothing leaks: no value that masking the same text
//! whole replaces survives in what the stream sends (outside placeholders;
//! see `check_masked_values_gone`), however the text is cut.
//!
//! The stream is meant to send exactly what the whole text masks, and does
//! for the engine's property test (`inspect/tests_stream.rs`); the fuzzer
//! finds texts where it masks more than the whole text would (a key name
//! inside the value of an earlier `api-key: ...`, seen again in the left
//! context a later scan starts from). With `WARDEN_FUZZ_STRICT_STREAM=1`
//! this target asserts the exact equality (same output, same rule counts).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use warden_engine::inspect::apply::MaskingStream;
use warden_engine::inspect::mask::{Action, HashKey, Vault};
use warden_engine::inspect::sse::{Channel, ChannelKind, StreamText};
use warden_engine::policy::Direction;
use warden_engine_fuzz::{active, check_masked_values_gone, cuts, masking_policy, str_pieces};

fn stream() -> MaskingStream {
    let policy = masking_policy();
    let rules = active(&policy, Direction::Response);
    MaskingStream::new(
        policy,
        rules,
        Vault::default(),
        HashKey::new(b"fuzz-hash-key-0123456789".to_vec()),
    )
}

fn strict() -> bool {
    static STRICT: OnceLock<bool> = OnceLock::new();
    *STRICT.get_or_init(|| std::env::var_os("WARDEN_FUZZ_STRICT_STREAM").is_some_and(|v| v == "1"))
}

fuzz_target!(|data: &[u8]| {
    let (offsets, rest) = cuts(data, 12);
    let text = String::from_utf8_lossy(rest);
    let text: &str = &text;
    let mut whole = stream();
    // The policy masks only (no block): neither way stops.
    let want = whole.whole(text).expect("a masking policy never blocks");
    let channel = Channel {
        index: 0,
        kind: ChannelKind::Text,
    };
    let mut s = stream();
    let mut got = String::new();
    let pieces = str_pieces(text, &offsets);
    for piece in &pieces {
        got.push_str(&s.push(&channel, piece).expect("never blocks"));
    }
    got.push_str(&s.finish(&channel).expect("never blocks"));

    // Nothing the whole text's masking replaced goes out (tokenized values
    // are put back in a response, by design).
    let policy = masking_policy();
    let rules = active(&policy, Direction::Response);
    let (edits, _) = policy.scan(&rules, text);
    check_masked_values_gone(
        &[text.to_owned()],
        &[got.clone()],
        edits
            .iter()
            .filter(|e| e.action != Action::Tokenize)
            .map(|e| &text[e.start..e.end]),
    );

    if strict() {
        assert_eq!(
            got,
            want,
            "streamed in {} pieces at {offsets:?}",
            pieces.len()
        );
        assert_eq!(
            s.outcome.summary(),
            whole.outcome.summary(),
            "counted differently streamed"
        );
    }
});
