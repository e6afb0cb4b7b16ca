//! The policy step: which requests are looked up, and which responses are
//! stored and shared.
//!
//! Requests (`request.rs`): eligible methods (GET and POST by default); a
//! request `Cache-Control: no-store` is neither looked up nor stored,
//! `no-cache` skips the look-up but stores the fresh answer; with the control
//! headers on, `x-idempotency-*` steer the layer per request. The verdict is
//! taken from the head alone, before the body is read.
//!
//! Responses (`response.rs`): a [`StorePredicate`] decides by status and
//! headers (by default, [`Successful`]: any 2xx). Whatever the predicate
//! says, a response with `Cache-Control: no-store` or `private`, or a
//! `Content-Length` above the response limit, is never stored, and
//! hop-by-hop headers (`hop_by_hop.rs`), `set-cookie` and `age` are stripped
//! from what is stored and shared.
//!
//! `cache_control.rs` reads the `Cache-Control` directives both sides obey.

mod cache_control;
mod hop_by_hop;
mod request;
mod response;

pub(crate) use cache_control::response_forbids_storing;
pub use hop_by_hop::strip_hop_by_hop;
pub(crate) use request::{classify, control, default_methods, Classified, Plan, Skip};
pub(crate) use response::{content_length, shareable_headers};
pub use response::{StorePredicate, Successful};
