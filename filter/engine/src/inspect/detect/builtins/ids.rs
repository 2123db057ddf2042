//! Validators of identifiers with a structure of their own: MAC addresses,
//! US ITINs, UK NHS numbers (mod 11), crypto wallet addresses (base58check,
//! bech32/bech32m, EIP-55), GitHub tokens (CRC32), keys that vendors publish
//! as samples, and document numbers told apart by the words before them
//! (passports, driving licences). Also every list of context
//! words (SSN's, ITIN's, NHS's, wallets'): what words count is an explicit
//! list per kind, matched on the candidate's own line, before it (see
//! [`context_words`]).

use sha3::{Digest, Keccak256};

use super::{before, next_is};

/// Words that make a number without dashes an SSN when they come before it
/// (lowercase; a word starts after a non-alphanumeric character).
pub(super) const SSN_CONTEXT: [&str; 6] = [
    "ssn",
    "social security",
    "soc sec",
    "soc. sec",
    "ss#",
    "ss #",
];

/// Words that make a 9-digit number starting with 9 an ITIN where it is not
/// written with dashes.
const ITIN_CONTEXT: [&str; 4] = ["itin", "taxpayer", "tax id", "tin"];
/// Words that make digit groups starting with a country code written
/// without `+` a phone number.
const PHONE_CONTEXT: [&str; 9] = [
    "phone",
    "tel",
    "telephone",
    "call",
    "mobile",
    "cell",
    "fax",
    "whatsapp",
    "mob",
];

/// Words that may stand between a phone word and its number: `call me at`,
/// `Phone No.:`, `mobile number is`.
const PHONE_FILLERS: [&str; 17] = [
    "me", "us", "at", "on", "number", "no", "nr", "num", "is", "my", "our", "your", "his", "her",
    "their", "him", "them",
];
/// At most this many [`PHONE_FILLERS`] between the word and the number.
const MAX_PHONE_FILLERS: usize = 3;

/// Whether the words right before a number without `+` say it is a phone
/// number: one of [`PHONE_CONTEXT`], then at most [`MAX_PHONE_FILLERS`]
/// fillers, then only punctuation (`Tel: `, `call me at `). A phone word
/// further back on the line says nothing of this number (`the API call
/// took 120 340 560 ms`, `Call counts: 120 340 560`).
pub(super) fn phone_context(lead: &str) -> bool {
    let line = lead.rsplit('\n').next().unwrap_or_default();
    let is_in = |list: &[&str], word: &str| list.iter().any(|w| w.eq_ignore_ascii_case(word));
    let mut words = line
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .rev();
    for _ in 0..=MAX_PHONE_FILLERS {
        match words.next() {
            Some(word) if is_in(&PHONE_CONTEXT, word) => return true,
            Some(word) if is_in(&PHONE_FILLERS, word) => continue,
            _ => return false,
        }
    }
    false
}

/// Words that make a bare 10-digit number an NHS number.
const NHS_CONTEXT: [&str; 2] = ["nhs", "health service"];
/// Words that make an unchecksummed (all one case) `0x` address a wallet.
const WALLET_CONTEXT: [&str; 7] = [
    "wallet", "eth", "ether", "address", "send", "usdt", "crypto",
];

/// Whether `lead` holds one of `words` on its last line, as a whole word
/// (case-insensitive; `tel` is not in `hotel` or `telemetry`). `lead` is
/// what [`before`] returns: the validators' look-back, so a stream judges
/// as a whole text does.
fn context_before(lead: &str, words: &[&str]) -> bool {
    context_words(lead, words, true)
}

/// [`context_before`], where `whole` says whether a word must also end
/// where the text's word does (else a word start is enough: `ssn` in
/// `SSNs`).
pub(super) fn context_words(lead: &str, words: &[&str], whole: bool) -> bool {
    // Bytes, compared without regard to ASCII case: no allocation, and a
    // word's ends are ASCII, so the characters beside it are whole.
    let line = lead.rsplit('\n').next().unwrap_or_default().as_bytes();
    let word_char = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_alphanumeric() || *b >= 0x80);
    words.iter().any(|word| {
        let w = word.as_bytes();
        (0..line.len().saturating_sub(w.len()) + 1).any(|i| {
            line.get(i..i + w.len())
                .is_some_and(|at| at.eq_ignore_ascii_case(w))
                && !word_char(i.checked_sub(1).and_then(|p| line.get(p)))
                && (!whole
                    || !w.last().is_some_and(u8::is_ascii_alphanumeric)
                    || !word_char(line.get(i + w.len())))
        })
    })
}

/// Six hex pairs joined by `:` or `-` (one kind throughout), or three groups
/// of four joined by `.`; not glued to more of the same, not all zeros or
/// all ones (which name no device).
pub(super) fn mac(hay: &str, start: usize, end: usize) -> bool {
    let Some(s) = hay.get(start..end) else {
        return false;
    };
    let seps: Vec<char> = s.chars().filter(|c| !c.is_ascii_hexdigit()).collect();
    let one_kind = seps.windows(2).all(|w| w.first() == w.get(1));
    // Glued: to a word, or through the same separator to more hex.
    let glued = |near: Option<char>, beyond: Option<char>| {
        near.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
            || (near.is_some() && near == seps.first().copied())
                && beyond.is_some_and(|c| c.is_ascii_hexdigit())
    };
    let mut back = hay.get(..start).unwrap_or_default().chars().rev();
    let mut ahead = hay.get(end..).unwrap_or_default().chars();
    let hex: String = s.chars().filter(char::is_ascii_hexdigit).collect();
    one_kind
        && !glued(back.next(), back.next())
        && !glued(ahead.next(), ahead.next())
        && !hex.bytes().all(|b| b == b'0')
        && !hex.bytes().all(|b| b.eq_ignore_ascii_case(&b'f'))
}

/// Nine digits, the first 9 and the fourth and fifth in the ranges the IRS
/// assigns (50-65, 70-88, 90-92, 94-99); dashed, or otherwise after
/// [`ITIN_CONTEXT`].
pub(super) fn itin(hay: &str, start: usize, end: usize) -> bool {
    let Some(s) = hay.get(start..end) else {
        return false;
    };
    let digits: Vec<u32> = s.chars().filter_map(|c| c.to_digit(10)).collect();
    let group = match (digits.get(3), digits.get(4)) {
        (Some(a), Some(b)) => a * 10 + b,
        _ => return false,
    };
    let dashed = s.contains('-');
    digits.len() == 9
        && digits.first() == Some(&9)
        && matches!(group, 50..=65 | 70..=88 | 90..=92 | 94..=99)
        && !glued_digits(hay, start, end)
        && (dashed || context_before(before(hay, start), &ITIN_CONTEXT))
}

/// Ten digits whose last is the mod-11 check of the first nine (weights 10
/// down to 2); grouped 3-3-4 with one kind of separator, or bare after
/// [`NHS_CONTEXT`].
pub(super) fn nhs(hay: &str, start: usize, end: usize) -> bool {
    let Some(s) = hay.get(start..end) else {
        return false;
    };
    let digits: Vec<u32> = s.chars().filter_map(|c| c.to_digit(10)).collect();
    let seps: Vec<char> = s.chars().filter(|c| !c.is_ascii_digit()).collect();
    let grouped = seps.len() == 2 && seps.first() == seps.get(1);
    if digits.len() != 10 || !(grouped || seps.is_empty()) || glued_digits(hay, start, end) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .take(9)
        .zip((2..=10).rev())
        .map(|(d, w)| d * w)
        .sum();
    let check = match 11 - sum % 11 {
        11 => 0,
        10 => return false,
        c => c,
    };
    digits.get(9) == Some(&check)
        && !digits.iter().all(|d| Some(d) == digits.first())
        && (grouped || context_before(before(hay, start), &NHS_CONTEXT))
}

/// A number glued to more digits through a separator (`123-456-7890-1`) or
/// to letters and digits directly.
fn glued_digits(hay: &str, start: usize, end: usize) -> bool {
    let word = |c: char| c.is_alphanumeric() || c == '_';
    let mut back = hay.get(..start).unwrap_or_default().chars().rev();
    let mut ahead = hay.get(end..).unwrap_or_default().chars();
    let sep_digit = |first: Option<char>, second: Option<char>| {
        matches!(first, Some('-' | '.' | '/')) && second.is_some_and(|c| c.is_ascii_digit())
    };
    let (b1, b2) = (back.next(), back.next());
    let (a1, a2) = (ahead.next(), ahead.next());
    b1.is_some_and(word) || a1.is_some_and(word) || sep_digit(b1, b2) || sep_digit(a1, a2)
}

/// A Bitcoin address whose checksum holds: legacy base58check (version 0
/// or 5, 20-byte hash), or SegWit bech32/bech32m (`bc1`); or an Ethereum
/// address, `0x` and 40 hex digits, whose mixed case is its EIP-55 checksum
/// (one case throughout carries no checksum: a wallet only after
/// [`WALLET_CONTEXT`], since hashes are written so too).
pub(super) fn wallet(hay: &str, start: usize, end: usize) -> bool {
    let Some(s) = hay.get(start..end) else {
        return false;
    };
    if next_is(hay, end, |c| c.is_ascii_alphanumeric() || c == '_') {
        return false;
    }
    if let Some(hex) = s.strip_prefix("0x") {
        return eip55(hex).unwrap_or_else(|| context_before(before(hay, start), &WALLET_CONTEXT));
    }
    if s.len() > 3 && s.get(..3).is_some_and(|p| p.eq_ignore_ascii_case("bc1")) {
        return bech32::segwit::decode(s).is_ok();
    }
    bs58::decode(s)
        .with_check(None)
        .into_vec()
        .is_ok_and(|payload| payload.len() == 21 && matches!(payload.first(), Some(0 | 5)))
}

/// `Some(valid)` if `hex` (40 digits) is in mixed case, the EIP-55
/// checksum: a letter is upper case where the Keccak-256 of the lower-case
/// address has a nibble of 8 or more. `None` if it is in one case.
fn eip55(hex: &str) -> Option<bool> {
    let lower = hex.to_ascii_lowercase();
    if hex == lower || hex == hex.to_ascii_uppercase() {
        return None;
    }
    let hash = Keccak256::digest(lower.as_bytes());
    Some(hex.bytes().enumerate().all(|(i, c)| {
        let byte = hash.get(i / 2).copied().unwrap_or(0);
        let nibble = if i % 2 == 0 { byte >> 4 } else { byte & 0x0f };
        !c.is_ascii_alphabetic() || c.is_ascii_uppercase() == (nibble >= 8)
    }))
}

/// A document number after the words that name it (the pattern's group 1):
/// six to nine (passport) or five to twenty (licence) letters and digits,
/// at least two of them digits, not a word such as `number` itself.
pub(super) fn document_number(hay: &str, value: (usize, usize)) -> Option<(usize, usize)> {
    let s = hay.get(value.0..value.1)?;
    let digits = s.bytes().filter(u8::is_ascii_digit).count();
    (digits >= 2 && !next_is(hay, value.1, |c| c.is_ascii_alphanumeric())).then_some(value)
}

/// GitHub's tokens of the documented shape (`ghp_`, `gho_`, `ghu_`, `ghs_`,
/// `ghr_` and 36 base62 characters) end with the CRC32 of the 30 before
/// them, written in base62 (`0-9A-Za-z`, six digits, leading zeros): a
/// near-miss (a typo, a made-up value such as the one in GitHub's own
/// documentation) is no token. Other lengths, and fine-grained
/// `github_pat_` tokens, have no published checksum: kept.
pub(super) fn github_checksum(s: &str) -> bool {
    let prefixed = s.len() == 40 && s.as_bytes().get(3) == Some(&b'_');
    let (Some(random), Some(check)) = (s.get(4..34), s.get(34..)) else {
        return true;
    };
    !prefixed || base62_6(crc32fast::hash(random.as_bytes())) == check.as_bytes()
}

/// `n` in six base62 digits (`62^6` > `u32::MAX`), as GitHub writes them.
pub(in crate::inspect::detect) fn base62_6(mut n: u32) -> [u8; 6] {
    const DIGITS: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = [b'0'; 6];
    for digit in out.iter_mut().rev() {
        // `n % 62` indexes 62 digits.
        *digit = DIGITS.get((n % 62) as usize).copied().unwrap_or(b'0');
        n /= 62;
    }
    out
}

/// Keys that vendors print in their documentation and SDK samples for
/// everyone to copy: public by design, so not secrets (AWS's are told by
/// their `EXAMPLE`, see `placeholder`).
const PUBLISHED_SAMPLES: [&str; 3] = [
    // Stripe's API reference and quick starts.
    "sk_test_4eC39HqLyjWDarjtT1zdp7dc",
    "sk_test_BQokikJOvBiI2HlWgH4olfQ2",
    "sk_test_26PHem9AhJZvU623DfE1x4sd",
];

/// Whether `s` is one of the [`PUBLISHED_SAMPLES`].
pub(super) fn published_sample(s: &str) -> bool {
    PUBLISHED_SAMPLES.contains(&s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nhs_check_digits_follow_the_standard() {
        // NHS Digital's published example number.
        assert!(nhs("943 476 5919", 0, 12));
        assert!(!nhs("943 476 5918", 0, 12));
        assert!(!nhs("943-476 5919", 0, 12));
        assert!(!nhs("9434765919", 0, 10));
        assert!(nhs("NHS no 9434765919", 7, 17));
    }

    #[test]
    fn eip55_checks_mixed_case_only() {
        // EIP-55's own test vectors.
        assert_eq!(
            eip55("5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"),
            Some(true)
        );
        assert_eq!(
            eip55("fB6916095ca1df60bB79Ce92cE3Ea74c37c5d359"),
            Some(true)
        );
        assert_eq!(
            eip55("5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD"),
            Some(false)
        );
        assert_eq!(eip55("5aaeb6053f3e94c9b9a09f33669435e7ef1beaed"), None);
    }

    #[test]
    fn a_phone_word_counts_only_right_before_the_number() {
        for lead in [
            "call ",
            "Tel: ",
            "TEL. ",
            "call us on ",
            "Phone No.: ",
            "mobile number is ",
            "x (fax) ",
        ] {
            assert!(phone_context(lead), "{lead:?}");
        }
        for lead in [
            "",
            "hotel ",
            "telemetry ",
            "phone\n",
            "Call counts: ",
            "the API call to ",
            "call me at my number ",
            "call 12 34 56, ",
        ] {
            assert!(!phone_context(lead), "{lead:?}");
        }
    }

    #[test]
    fn context_words_count_as_word_starts_on_the_same_line() {
        assert!(context_before("my NHS number is ", &NHS_CONTEXT));
        assert!(!context_before("sunhs ", &NHS_CONTEXT));
        assert!(!context_before("nhs\n", &NHS_CONTEXT));
        const PHONE_CONTEXT: [&str; 3] = ["phone", "telephone", "tel"];
        assert!(context_before("Tel. ", &PHONE_CONTEXT));
        assert!(!context_before("hotel ", &PHONE_CONTEXT));
        assert!(!context_before("telemetry id ", &PHONE_CONTEXT));
    }
}
