//! Request headers as the host gives them: names lowercased by Envoy, values
//! as raw bytes (a header value need not be UTF-8, and reading it as a string
//! must never trap the VM).

/// A header sent more than once where once is the rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repeated;

/// A borrowed list of `(name, value)` pairs.
#[derive(Debug, Clone, Copy)]
pub struct Headers<'a> {
    pairs: &'a [(String, Vec<u8>)],
}

impl<'a> Headers<'a> {
    pub fn new(pairs: &'a [(String, Vec<u8>)]) -> Self {
        Self { pairs }
    }

    /// The first value of `name` (ASCII case-insensitive).
    pub fn get(&self, name: &str) -> Option<&'a [u8]> {
        self.pairs
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// The first value of `name` if it is valid UTF-8.
    pub fn get_str(&self, name: &str) -> Option<&'a str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The value of a header that may be sent at most once: `Err` when it
    /// comes twice (something behind the gateway could read the other one).
    pub fn single(&self, name: &str) -> Result<Option<&'a [u8]>, Repeated> {
        let mut values = self
            .pairs
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice());
        match (values.next(), values.next()) {
            (value, None) => Ok(value),
            (Some(_), Some(_)) | (None, Some(_)) => Err(Repeated),
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'a str, &'a [u8])> {
        self.pairs.iter().map(|(n, v)| (n.as_str(), v.as_slice()))
    }
}
