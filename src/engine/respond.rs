//! Building the caller's response: a replay of a stored record, a live view
//! of a flight's response, the layer's own rejection, and the
//! `cache-status` member each carries.

use http::{header, HeaderMap, HeaderValue, Response, StatusCode};

use super::{key::Job, observe::Outcome, Engine};
use crate::{
    body::ResponseBody,
    cache_status::CacheStatus,
    error::{Error, ErrorKind},
    flight::{Head, Reader},
    idempotency_key,
    policy::Skip,
    record::{now_millis, Record},
};

impl Engine {
    /// Answers from a stored record: a hit, or a follower whose leader found
    /// one. In `Idempotency-Key` mode, a record stored for another payload
    /// is refused.
    pub(super) fn hit<B>(
        &self,
        job: &Job,
        record: &Record,
        outcome: Outcome,
    ) -> Response<ResponseBody<B>> {
        self.hit_at(job, record, outcome, now_millis())
    }

    /// [`hit`](Self::hit) at `now` (milliseconds since the epoch), for a
    /// caller that has just read the clock.
    pub(super) fn hit_at<B>(
        &self,
        job: &Job,
        record: &Record,
        outcome: Outcome,
        now: u64,
    ) -> Response<ResponseBody<B>> {
        if let (Some(mine), Some(theirs)) = (job.fingerprint, record.info.fingerprint) {
            if mine != theirs {
                return self.reject(key_reused());
            }
        }
        self.observe(outcome);
        if outcome == Outcome::HitL1 && !record.info.provisional {
            // The entry's own hit count, kept in the shared store (which a
            // provisional copy is not).
            self.l2.count_l1_hit(&job.ns, &job.key);
        }
        let cost = self.count_savings(&record.info, record.body.len() as u64, 1);
        self.count_tenant_saved(job, Some(cost));
        self.count_bucket_hit(job);
        self.replay_at(record, now)
    }

    /// A stored response, with `age` and a `hit` cache status, at `now`
    /// (milliseconds since the epoch).
    fn replay_at<B>(&self, record: &Record, now: u64) -> Response<ResponseBody<B>> {
        let mut response = Response::new(ResponseBody::replay(
            record.body.clone(),
            record.trailers.clone(),
        ));
        *response.status_mut() = record.status;
        *response.version_mut() = record.version;
        // Room for `age` and `cache-status` from the start: a clone of the
        // stored map has none, and the two inserts grew it (a reallocation
        // and a rehash of every header) on every replay. Appending in the
        // stored map's order gives the same map as a clone.
        // One more for the `content-length` a server or router adds to a
        // body of known size (axum does): the fourth header grew a map
        // sized for three.
        // `try_`: a record of very many values (from Redis, or an upstream)
        // is past what a capacity may ask for, though not what the map holds.
        let mut headers =
            HeaderMap::try_with_capacity(record.headers.len() + 3).unwrap_or_default();
        for (name, value) in &record.headers {
            headers.append(name.clone(), value.clone());
        }
        headers.insert(header::AGE, HeaderValue::from(record.age_at(now)));
        self.mark(
            &mut headers,
            CacheStatus::Hit {
                ttl: record.ttl_at(now).as_secs(),
            },
        );
        *response.headers_mut() = headers;
        response
    }

    /// A live view of a flight's response.
    pub(super) fn live<B>(
        &self,
        head: &Head,
        headers: &HeaderMap,
        reader: Reader,
        status: CacheStatus,
    ) -> Response<ResponseBody<B>> {
        let mut response = Response::new(ResponseBody::live(reader));
        *response.status_mut() = head.status;
        *response.version_mut() = head.version;
        *response.headers_mut() = headers.clone();
        self.mark(response.headers_mut(), status);
        response
    }

    /// Adds the layer's `cache-status` member, if the header is on.
    pub(super) fn mark(&self, headers: &mut HeaderMap, status: CacheStatus) {
        if self.config.cache_status {
            status.append_to(headers);
        }
    }

    /// The `cache-status` member for a skipped request, if the header is on.
    pub(crate) fn skip_status(&self, skip: Skip) -> Option<CacheStatus> {
        let status = match skip {
            Skip::Method => CacheStatus::Method,
            Skip::NoStore => CacheStatus::Bypass,
        };
        self.config.cache_status.then_some(status)
    }

    /// The layer's own failure as an RFC 9457 problem response, with the
    /// [`Error`] in its extensions.
    pub(crate) fn reject<B>(&self, error: Error) -> Response<ResponseBody<B>> {
        let status = match error.kind() {
            ErrorKind::RequestBody
            | ErrorKind::MissingKey
            | ErrorKind::InvalidKey
            | ErrorKind::InvalidControl => StatusCode::BAD_REQUEST,
            ErrorKind::InFlight => StatusCode::CONFLICT,
            ErrorKind::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::KeyReused => StatusCode::UNPROCESSABLE_ENTITY,
        };
        self.observe(Outcome::Rejected(error.kind()));
        let title = status.canonical_reason().unwrap_or("Error");
        let body = idempotency_key::problem_json(status.as_u16(), title, &error.detail());
        let mut response = Response::new(ResponseBody::replay(body, None));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(idempotency_key::PROBLEM_JSON_CONTENT_TYPE),
        );
        response.extensions_mut().insert(error);
        response
    }

    /// What a leader's caller gets when its recording task ended without a
    /// word and without a panic.
    pub(super) fn internal_error<B>(&self) -> Response<ResponseBody<B>> {
        let mut response = Response::new(ResponseBody::empty());
        *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        response
    }
}

pub(super) fn key_reused() -> Error {
    Error::new(
        ErrorKind::KeyReused,
        "this idempotency-key was already used with another payload",
    )
}

pub(super) fn in_flight() -> Error {
    Error::new(
        ErrorKind::InFlight,
        "a request with this key is still being processed",
    )
}
