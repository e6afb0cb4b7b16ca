//! What reading an AI request's few fields costs in memory: the fields the
//! layer reads from every request body (`model`, and `temperature` and
//! `seed` with a sampling policy) must not be built whole when a client
//! makes them huge containers.
//!
//! Its own test binary: it counts every allocation of the process.
#![cfg(feature = "ai")]

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicUsize, Ordering},
};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::SeqCst) + layout.size();
        PEAK.fetch_max(live, Ordering::SeqCst);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Bytes allocated at the peak of `f`, above what was live before it.
fn peak_of(f: impl FnOnce()) -> usize {
    let before = LIVE.load(Ordering::SeqCst);
    PEAK.store(before, Ordering::SeqCst);
    f();
    PEAK.load(Ordering::SeqCst) - before
}

/// `{"<field>":[0,0,…]}` of about `len` bytes.
fn zeros_in(field: &str, len: usize) -> Vec<u8> {
    let mut out = format!("{{\"{field}\":[").into_bytes();
    while out.len() + 4 < len {
        out.extend_from_slice(b"0,");
    }
    out.extend_from_slice(b"0]}");
    out
}

#[test]
fn reading_the_model_and_sampling_fields_costs_a_fraction_of_the_body() {
    const MIB: usize = 1024 * 1024;
    for field in ["model", "temperature", "seed"] {
        let body = zeros_in(field, MIB);
        let model = peak_of(|| {
            std::hint::black_box(tower_idempotency::ai::request_model(&body));
        });
        let sampling = peak_of(|| {
            std::hint::black_box(tower_idempotency::ai::sampling(&body));
        });
        assert!(
            model < MIB / 4 && sampling < MIB / 4,
            "{field}: request_model took {model} bytes, sampling {sampling}, for a body of {}",
            body.len()
        );
    }
}
