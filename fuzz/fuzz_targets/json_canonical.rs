//! Request bodies are canonicalised before hashing: no input may panic (or
//! overflow the stack), an accepted input comes out as valid JSON, and
//! canonical output is its own canonical form.
//!
//! "Valid JSON" is checked two ways: the output always parses as JSON text
//! (`RawValue`), and it parses as a `serde_json::Value` whenever the input
//! does. The canonicaliser accepts JSON that `Value` refuses (numbers out of
//! `f64` range such as `1e400`, nesting deeper than 128) and copies it
//! verbatim, which is right for a key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_idempotency::__fuzz;

/// Ignore rules chosen by the first input byte, so that the field-dropping
/// paths are fuzzed too.
const IGNORES: [&[&str]; 4] = [&[], &["a"], &["a.b", "c"], &["messages.name", "user", ""]];

fuzz_target!(|data: &[u8]| {
    let (ignore, input) = match data.split_first() {
        Some((&selector, rest)) => (IGNORES[usize::from(selector) % IGNORES.len()], rest),
        None => (IGNORES[0], data),
    };
    let Some(once) = __fuzz::canonical_json(input, ignore) else {
        return;
    };
    if let Err(error) = serde_json::from_slice::<&serde_json::value::RawValue>(&once) {
        panic!(
            "canonical output is not JSON ({error}): {:?}",
            String::from_utf8_lossy(&once)
        );
    }
    if serde_json::from_slice::<serde_json::Value>(input).is_ok() {
        if let Err(error) = serde_json::from_slice::<serde_json::Value>(&once) {
            panic!(
                "canonical output of a value is not a value ({error}): {:?}",
                String::from_utf8_lossy(&once)
            );
        }
    }
    let twice = __fuzz::canonical_json(&once, ignore).expect("canonical output must parse");
    assert_eq!(once, twice, "canonicalisation is not idempotent");
});
