//! [`sampling`]: does a request ask for deterministic output?
//!
//! A cached answer can stand in for a fresh one without surprise only when
//! the client asked for repeatable output. This reads that wish from the JSON
//! request body; it cannot promise the provider honours it (OpenAI calls
//! `seed` best effort, and temperature 0 is not fully deterministic on either
//! OpenAI or Anthropic).

use serde_json::Value;

use crate::ai::json::pick_scalar_fields;

/// Whether a JSON request body asks for deterministic sampling.
///
/// This is the client's wish, not a promise: OpenAI calls `seed` best effort,
/// and temperature 0 is not fully deterministic on OpenAI or Anthropic. It
/// tells whether serving a cached answer can surprise the client.
///
/// ```
/// use tower_idempotency::ai::{sampling, Sampling};
///
/// assert!(sampling(br#"{"temperature":0}"#).is_deterministic());
/// assert!(!sampling(br#"{"temperature":1}"#).is_deterministic());
/// assert_eq!(sampling(br#"{"temperature":"hot"}"#), Sampling::Unknown);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Sampling {
    /// `temperature` is 0, or a `seed` is given.
    Deterministic,
    /// `temperature` is above 0 or not given (provider defaults are 1.0).
    Nondeterministic,
    /// The body is not a JSON object, or `temperature` is not a non-negative
    /// number (the provider would reject the request).
    Unknown,
}

impl Sampling {
    /// Whether this is [`Sampling::Deterministic`].
    pub fn is_deterministic(self) -> bool {
        self == Sampling::Deterministic
    }
}

/// Reads the sampling wish of a JSON request body, by these rules in order:
///
/// 1. body not a JSON object (not JSON, an array, trailing garbage …) →
///    [`Sampling::Unknown`];
/// 2. a top-level `seed` field with any value but `null` →
///    [`Sampling::Deterministic`];
/// 3. `temperature` absent or `null` → [`Sampling::Nondeterministic`] (OpenAI
///    and Anthropic both default to 1.0);
/// 4. `temperature` a number equal to 0 (`0`, `0.0`, `-0.0`) →
///    [`Sampling::Deterministic`];
/// 5. `temperature` a number above 0 → [`Sampling::Nondeterministic`];
/// 6. anything else (a negative number, a string, …) → [`Sampling::Unknown`].
///
/// `top_p`, `top_k` and other fields do not change the answer: `top_p` alone
/// still samples, and how small a nucleus counts as "deterministic" is not a
/// question this function can answer. Never panics.
///
/// # Example
///
/// ```
/// use tower_idempotency::ai::{sampling, Sampling};
///
/// assert_eq!(sampling(br#"{"model":"m","temperature":0}"#), Sampling::Deterministic);
/// assert_eq!(sampling(br#"{"model":"m","temperature":0.7,"seed":42}"#), Sampling::Deterministic);
/// assert_eq!(sampling(br#"{"model":"m","top_p":0.1}"#), Sampling::Nondeterministic);
/// assert_eq!(sampling(b"not json"), Sampling::Unknown);
/// ```
pub fn sampling(body: &[u8]) -> Sampling {
    let Some([temperature, seed]) = pick_scalar_fields(body, ["temperature", "seed"]) else {
        return Sampling::Unknown;
    };
    if seed.is_some_and(|seed| !seed.is_null()) {
        return Sampling::Deterministic;
    }
    match temperature {
        None | Some(Value::Null) => Sampling::Nondeterministic,
        Some(Value::Number(number)) => match number.as_f64() {
            Some(0.0) => Sampling::Deterministic, // also matches -0.0
            Some(t) if t > 0.0 => Sampling::Nondeterministic,
            _ => Sampling::Unknown,
        },
        Some(_) => Sampling::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules() {
        let cases: &[(&[u8], Sampling)] = &[
            (br#"{"temperature":0}"#, Sampling::Deterministic),
            (br#"{"temperature":0.0}"#, Sampling::Deterministic),
            (br#"{"temperature":-0.0}"#, Sampling::Deterministic),
            (br#"{"temperature":0e10}"#, Sampling::Deterministic),
            (br#"{"temperature":1}"#, Sampling::Nondeterministic),
            (br#"{"temperature":1e-9}"#, Sampling::Nondeterministic),
            (
                br#"{"temperature":99999999999999999999999}"#,
                Sampling::Nondeterministic,
            ),
            (br#"{"model":"m"}"#, Sampling::Nondeterministic),
            (br#"{}"#, Sampling::Nondeterministic),
            (br#"{"temperature":null}"#, Sampling::Nondeterministic),
            (br#"{"top_p":0}"#, Sampling::Nondeterministic),
            (
                br#"{"top_p":0,"temperature":0.2}"#,
                Sampling::Nondeterministic,
            ),
            (br#"{"seed":7}"#, Sampling::Deterministic),
            (
                br#"{"seed":"x","temperature":1.5}"#,
                Sampling::Deterministic,
            ),
            (br#"{"seed":{}}"#, Sampling::Deterministic),
            (br#"{"seed":null}"#, Sampling::Nondeterministic),
            (br#"{"seed":null,"temperature":0}"#, Sampling::Deterministic),
            (br#"{"temperature":-1}"#, Sampling::Unknown),
            (br#"{"temperature":"0"}"#, Sampling::Unknown),
            (br#"{"temperature":false}"#, Sampling::Unknown),
            (br#"{"seed":1,"temperature":-1}"#, Sampling::Deterministic),
            (br#"{"temperature":1e400}"#, Sampling::Unknown),
            (br#"[{"temperature":0}]"#, Sampling::Unknown),
            (br#""temperature""#, Sampling::Unknown),
            (b"", Sampling::Unknown),
            (b"{", Sampling::Unknown),
            (b"{} x", Sampling::Unknown),
            (b"\xff", Sampling::Unknown),
        ];
        for (body, expected) in cases {
            assert_eq!(
                sampling(body),
                *expected,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn nested_fields_do_not_count() {
        assert_eq!(
            sampling(br#"{"options":{"temperature":0,"seed":1}}"#),
            Sampling::Nondeterministic
        );
    }

    #[test]
    fn is_deterministic() {
        assert!(Sampling::Deterministic.is_deterministic());
        assert!(!Sampling::Unknown.is_deterministic());
    }
}
