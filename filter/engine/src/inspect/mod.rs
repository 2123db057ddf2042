//! Inspection: finding sensitive data in prompts and responses, and the
//! streaming (SSE) machinery that rewrites responses event by event.
//!
//! - [`apply`]: the policy applied to a JSON body or a response stream.
//! - [`body`]: where the text is in each provider API's JSON (requests and
//!   responses), and a strict JSON reader that refuses duplicate keys.
//! - [`detect`]: built-in detectors with validators, custom regexes and
//!   keyword lists, compiled once per policy into one [`detect::DetectorSet`];
//!   detection sees through JSON-decoded text, NFKC forms, zero-width
//!   characters and base64/hex/percent encodings, and reports spans in the
//!   original text.
//! - [`mask`]: the actions a rule takes on a found value, and the per-request
//!   vault that makes `tokenize` reversible.
//! - [`tools`]: where each API puts the tools a request offers and the
//!   tool calls an answer makes; [`calls`] applies the policy to them.
//! - [`sse`]: a `feed(chunk)`/`finish()` SSE parser and re-serializer, and a
//!   stream rewriter that routes each provider's text deltas through a
//!   [`sse::StreamText`] transformer without re-sending or leaking text.

pub mod apply;
pub mod body;
pub mod calls;
pub mod detect;
pub mod mask;
pub mod sse;
pub mod tools;

#[cfg(test)]
mod tests_stream;
