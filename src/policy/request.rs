//! The verdict on a request, from its head alone: skip the layer, answer it
//! with an error, or hand it to the engine with what the head asks of it.

use std::time::Duration;

use http::{HeaderMap, HeaderName, Method};

use super::cache_control::{request_directive, Directive};
use crate::{
    builder::KeyHeader,
    engine::Config,
    error::{Error, ErrorKind},
    idempotency_key,
};

/// The per-request control headers, consumed by the layer when
/// [`control_headers`](crate::Builder::control_headers) is on.
pub(crate) mod control {
    use http::HeaderName;

    /// `true`: pass the request through untouched.
    pub(crate) const BYPASS: HeaderName = HeaderName::from_static("x-idempotency-bypass");
    /// `true`: skip the look-up, call upstream, store the fresh answer.
    pub(crate) const REFRESH: HeaderName = HeaderName::from_static("x-idempotency-refresh");
    /// Whole seconds to keep this request's answer.
    pub(crate) const TTL: HeaderName = HeaderName::from_static("x-idempotency-ttl");
    /// The namespace for this request.
    pub(crate) const NAMESPACE: HeaderName = HeaderName::from_static("x-idempotency-namespace");
    /// `true`: the response names what went into the key, in a header of the
    /// same name.
    pub(crate) const EXPLAIN: HeaderName = HeaderName::from_static("x-idempotency-explain");
    /// Keep up to this many answers for this request (sample buckets).
    pub(crate) const BUCKET: HeaderName = HeaderName::from_static("x-idempotency-bucket");
}

/// Why a request skips the engine, decided from its head alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Skip {
    Method,
    /// `Cache-Control: no-store`, or the bypass control header.
    NoStore,
}

/// What the request head asks of the layer.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// Skip the look-up, store the fresh answer (`no-cache`, or the refresh
    /// control header).
    pub(crate) refresh: bool,
    /// The namespace the control header chose.
    pub(crate) namespace: Option<String>,
    /// The TTL the control header chose.
    pub(crate) ttl: Option<Duration>,
    /// Name what went into the key in the response (the explain control
    /// header).
    pub(crate) explain: bool,
    /// Keep up to this many answers (the bucket control header).
    pub(crate) buckets: Option<u32>,
}

/// The head's verdict.
pub(crate) enum Classified {
    Engine(Plan),
    Skip(Skip),
    Reject(Error),
}

/// The methods looked up by default.
pub(crate) fn default_methods() -> Vec<Method> {
    vec![Method::GET, Method::POST]
}

/// Decides from the request head alone whether the engine is needed, and
/// consumes the control headers (when they are on).
pub(crate) fn classify(config: &Config, method: &Method, headers: &mut HeaderMap) -> Classified {
    let mut plan = Plan::default();
    let mut bypass = false;
    if config.control_headers {
        match take_controls(headers, &mut plan, config.max_ttl) {
            Ok(asked) => bypass = asked,
            Err(error) => return Classified::Reject(error),
        }
    }
    if !config.methods.contains(method) {
        return Classified::Skip(Skip::Method);
    }
    // In `Idempotency-Key` mode the key contract wins over the request's
    // cache directives: a client cannot switch off the 400 for a missing
    // key, the 422 for a reused one, or coalescing, with `Cache-Control`.
    let keyed = match config.key_header {
        Some(KeyHeader::Required) => true,
        Some(KeyHeader::Optional) => headers.contains_key(idempotency_key::IDEMPOTENCY_KEY),
        None => false,
    };
    match request_directive(headers) {
        _ if keyed => {}
        Directive::NoStore => bypass = true,
        Directive::Refresh => plan.refresh = true,
        Directive::Normal => {}
    }
    if bypass {
        return Classified::Skip(Skip::NoStore);
    }
    Classified::Engine(plan)
}

/// Removes the control headers (they never reach upstream) and reads them
/// into `plan`. Returns whether the request asked to bypass the layer.
///
/// A TTL is a whole number of seconds from zero (answer, but keep nothing) to
/// `max_ttl`; anything else is refused.
fn take_controls(
    headers: &mut HeaderMap,
    plan: &mut Plan,
    max_ttl: Duration,
) -> Result<bool, Error> {
    let take = |headers: &mut HeaderMap, name: &HeaderName| -> Result<Option<String>, Error> {
        match headers.remove(name) {
            None => Ok(None),
            Some(value) => value
                .to_str()
                .map(|v| Some(v.trim().to_owned()))
                .map_err(|_| invalid_control(name)),
        }
    };
    let flag = |headers: &mut HeaderMap, name: &HeaderName| -> Result<bool, Error> {
        match take(headers, name)?.as_deref() {
            None => Ok(false),
            Some(value) if value.eq_ignore_ascii_case("true") || value == "1" => Ok(true),
            Some(value) if value.eq_ignore_ascii_case("false") || value == "0" => Ok(false),
            Some(_) => Err(invalid_control(name)),
        }
    };
    let bypass = flag(headers, &control::BYPASS)?;
    plan.refresh |= flag(headers, &control::REFRESH)?;
    plan.explain = flag(headers, &control::EXPLAIN)?;
    if let Some(ttl) = take(headers, &control::TTL)? {
        let seconds: u64 = whole_number(&ttl).ok_or_else(|| invalid_control(&control::TTL))?;
        let ttl = Duration::from_secs(seconds);
        if ttl > max_ttl {
            return Err(Error::new(
                ErrorKind::InvalidControl,
                format!(
                    "{} must be at most {} seconds",
                    control::TTL,
                    max_ttl.as_secs()
                ),
            ));
        }
        plan.ttl = Some(ttl);
    }
    if let Some(buckets) = take(headers, &control::BUCKET)? {
        let max = crate::engine::MAX_BUCKETS;
        let n: u32 = match whole_number(&buckets) {
            Some(n) if (1..=max).contains(&n) => n,
            _ => {
                return Err(Error::new(
                    ErrorKind::InvalidControl,
                    format!("{} must be a whole number from 1 to {max}", control::BUCKET),
                ))
            }
        };
        plan.buckets = Some(n);
    }
    if let Some(namespace) = take(headers, &control::NAMESPACE)? {
        plan.namespace = Some(namespace);
    }
    Ok(bypass)
}

/// A whole number written in digits only: `from_str` would also take a
/// leading `+`.
fn whole_number<T: std::str::FromStr>(text: &str) -> Option<T> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn invalid_control(name: &HeaderName) -> Error {
    let detail = match *name {
        ref n if n == control::TTL => format!("{n} must be a whole number of seconds"),
        ref n if n == control::NAMESPACE => format!("{n} must be visible ASCII"),
        ref n => format!("{n} must be true or false"),
    };
    Error::new(ErrorKind::InvalidControl, detail)
}
