//! Stored records come from Redis and are trusted for nothing: decoding any
//! bytes must not panic, and whatever decodes must re-encode to a fixed point.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_idempotency::__fuzz;

fuzz_target!(|data: &[u8]| {
    let decoded = __fuzz::decode_record(data);
    let reencoded = __fuzz::reencode_record(data);
    assert_eq!(decoded, reencoded.is_some());
    if let Some(once) = reencoded {
        let twice = __fuzz::reencode_record(&once).expect("a re-encoded record must decode");
        assert_eq!(once, twice, "re-encoding is not a fixed point");
    }
});
