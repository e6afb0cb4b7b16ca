//! The `Idempotency-Key` header comes from clients: no value may panic the
//! parser, and an accepted key is 1..=255 characters of visible ASCII or
//! space.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_idempotency::__fuzz;

fuzz_target!(|data: &[u8]| {
    if let Some(key) = __fuzz::parse_idempotency_key(data) {
        assert!((1..=255).contains(&key.len()), "key length {}", key.len());
        assert!(
            key.bytes().all(|b| (0x20..=0x7e).contains(&b)),
            "key has a byte outside visible ascii and space: {key:?}"
        );
    }
});
