//! The tee: the leader's upstream response streams to every reader while
//! it is recorded, then is stored in L1 and L2 and the waiters are woken.

use std::{
    future::{poll_fn, Future},
    pin::pin,
    sync::Arc,
    task::Poll,
    time::Duration,
};

use bytes::{Buf, Bytes};
use http::{response, HeaderMap};
use http_body::Body;
use http_body_util::BodyExt;
use tokio::{
    sync::oneshot,
    time::{error::Elapsed, timeout},
};

use super::{
    ai::UsageReader,
    key::Job,
    upstream::{Bounded, Lead, NoHead, Started},
    Engine,
};
use crate::{
    error::BoxError,
    flight::Head,
    policy,
    record::{now_millis, Meta, Record, Vary},
    store::{Lease, StreamWriter},
};

impl Engine {
    /// The recording task: awaits the upstream call, publishes its head and
    /// chunks into the flight, and stores the record when complete.
    pub(super) async fn record<F, RB, E>(
        self: Arc<Self>,
        lead: Lead,
        call: F,
        started: oneshot::Sender<Result<Started, NoHead<E>>>,
    ) where
        F: Future<Output = Bounded<RB, E>>,
        RB: Body,
        RB::Error: Into<BoxError>,
    {
        let Lead {
            mut leader,
            job,
            request_headers,
            claim,
            model,
            started: called_at,
        } = lead;
        let response = call.await;
        self.upstream_latency(called_at.elapsed());
        let response = match response {
            Ok(Ok(response)) => response,
            failed => {
                self.count_upstream_error();
                // Each follower goes through itself now, as it would have
                // without the layer: failover is never serialised.
                leader.give_up();
                let _ = started.send(Err(match failed {
                    Ok(Err(error)) => NoHead::Upstream(error),
                    _ => NoHead::TimedOut,
                }));
                // Let waiters on other instances take over now.
                self.l2
                    .complete(&job.ns, &job.key, claim.lease.as_ref(), None)
                    .await;
                return;
            }
        };
        let (parts, body) = response.into_parts();
        let mut head = self.head(parts, body.size_hint().exact(), &job, &request_headers);
        // `stored` is promised only for a length known now, within the limit
        // and the recording budget, which is reserved for it.
        head.promised = head.storable && head.content_length.is_some_and(|len| leader.reserve(len));
        let head = Arc::new(head);
        let reader = leader.start(Arc::clone(&head));
        // If the caller is gone, its reader is dropped here; the call goes on.
        let _ = started.send(Ok(Started {
            head: Arc::clone(&head),
            reader,
        }));
        // An answer that will not be stored gives up its claim now: waiters
        // on other instances go through themselves at once instead of
        // waiting for a body that will never be theirs.
        // Without a lease (no shared store, or none taken) there is nobody
        // to tell, and no task to spawn.
        let claim = if head.storable {
            Some(claim)
        } else {
            if claim.lease.is_some() {
                let engine = Arc::clone(&self);
                let (ns, key) = (job.ns.clone(), job.key);
                tokio::spawn(async move {
                    engine
                        .l2
                        .complete(&ns, &key, claim.lease.as_ref(), None)
                        .await;
                });
            }
            None
        };
        let lease = claim.as_ref().and_then(|claim| claim.lease.as_ref());
        // Waiters on other instances follow it live.
        let stream = lease.and_then(|lease| self.stream_writer(&job, &head, lease));

        let mut usage = UsageReader::new(&head.headers);
        let limit = self.config.max_response_body as u64;
        let mut body = pin!(body);
        let mut trailers = None;
        let failure: Option<BoxError> = loop {
            // Readers that make no room for as long as the upstream may stay
            // idle are dropped: one stalled client never stalls the others.
            let room = within(
                self.config.idle_timeout,
                leader.room(self.config.max_response_body),
            );
            match room.await {
                Ok(true) => {}
                Ok(false) => {
                    // Too large to store, and nobody is left to serve.
                    break Some("every reader of an oversized response went away".into());
                }
                Err(_) => {
                    leader.drop_slowest();
                    continue;
                }
            }
            let frame = match within(self.config.idle_timeout, body.as_mut().frame()).await {
                Err(_) => break Some("the upstream body was idle past the idle timeout".into()),
                Ok(None) => break None,
                Ok(Some(Err(error))) => break Some(error.into()),
                Ok(Some(Ok(frame))) => frame,
            };
            match frame.into_data() {
                Ok(mut data) => {
                    let chunk = data.copy_to_bytes(data.remaining());
                    usage.feed(&chunk);
                    if let Some(stream) = &stream {
                        stream.chunk(&chunk);
                    }
                    leader.push(chunk, limit);
                }
                Err(frame) => trailers = frame.into_trailers().ok(),
            }
        };
        if let Some(error) = failure {
            if let Some(stream) = stream {
                stream.fail();
            }
            leader.fail(error);
            if claim.is_some() {
                self.l2.complete(&job.ns, &job.key, lease, None).await;
            }
            return;
        }

        // Store before the readers see the end: whoever has had the last
        // byte and asks again finds the entry.
        let (recorded, received) = leader.recorded();
        let mut meta = usage.finish(model, recorded.as_ref(), job.fingerprint);
        meta.vary = head.vary_digest;
        let record = Arc::new(fresh_record(
            &head,
            head.shared_headers.clone(),
            recorded.clone().unwrap_or_default(),
            trailers.as_ref(),
            meta,
            job.ttl,
        ));
        let stored = match recorded {
            Some(_) if head.storable => {
                self.l1.insert(job.key, Arc::clone(&record)).await;
                self.count_stored();
                Some(record.clone())
            }
            _ => None,
        };
        // Followers streamed the response live: count what they saved.
        let followers = leader.settle(Arc::new(record.info.clone()), received);
        self.count_savings(&record.info, received, followers);
        // The flight leaves the map, then the readers see the end, after the
        // record is in L1: a newcomer finds one or the other, and a request
        // sent after the end never joins a flight whose answer was not
        // stored.
        let stream = stream.map(|stream| (stream, trailers.clone()));
        leader.complete(trailers);
        drop(leader);
        if claim.is_some() {
            self.l2
                .complete(&job.ns, &job.key, lease, stored.as_deref())
                .await;
        }
        // The end reaches remote followers once the entry is stored: a
        // request that arrives after it finds the entry.
        if let Some((stream, trailers)) = stream {
            stream.finish(trailers.as_ref()).await;
        }
    }

    /// Starts streaming a storable answer to the key's waiters elsewhere:
    /// its head as they will get it (shareable headers, the `Vary` digest,
    /// the `Idempotency-Key` fingerprint), capped by the response limit.
    fn stream_writer(&self, job: &Job, head: &Head, lease: &Lease) -> Option<StreamWriter> {
        let meta = Meta {
            fingerprint: job.fingerprint,
            vary: head.vary_digest,
            ..Meta::default()
        };
        let record = fresh_record(
            head,
            head.shared_headers.clone(),
            Bytes::new(),
            None,
            meta,
            job.ttl,
        );
        let limit = self.config.max_response_body as u64;
        self.l2
            .stream_writer(&job.ns, &job.key, &record, limit, lease)
    }

    /// What every reader shares of the upstream head, whether the response
    /// may be stored, and with whom it may be shared. `exact` is the body's
    /// own exact length, if it knows it.
    fn head(
        &self,
        parts: response::Parts,
        exact: Option<u64>,
        job: &Job,
        request: &HeaderMap,
    ) -> Head {
        let content_length = policy::content_length(&parts.headers).or(exact);
        let Terms {
            vary,
            shareable,
            storable,
        } = self.terms(&parts, content_length, job);
        Head {
            status: parts.status,
            version: parts.version,
            shared_headers: policy::shareable_headers(&parts.headers),
            headers: parts.headers,
            content_length,
            storable,
            promised: false,
            shareable,
            vary_digest: vary.digest(request),
            vary,
        }
    }

    /// Whether an upstream answer may be shared and stored, and what it
    /// varies on, from its head.
    pub(super) fn terms(
        &self,
        parts: &response::Parts,
        content_length: Option<u64>,
        job: &Job,
    ) -> Terms {
        // In `Idempotency-Key` mode the key contract wins: the answer is the
        // one a retry with the same key (and the same credentials, which
        // scope the key) must get, whatever its cache directives say, so it
        // is shared and kept. A retry never executes the request twice.
        let keyed_by_header = job.fingerprint.is_some();
        let vary = if keyed_by_header {
            Vary::Keyed
        } else {
            Vary::of(&parts.headers, self.keyed())
        };
        let forbidden = !keyed_by_header
            && (policy::response_forbids_storing(&parts.headers) || vary == Vary::Any);
        let storable = !forbidden
            && !job.ttl.is_zero()
            && content_length.is_none_or(|len| len <= self.config.max_response_body as u64)
            && self.config.store_if.should_store(parts);
        Terms {
            vary,
            shareable: !forbidden,
            storable,
        }
    }
}

/// Whether an answer may be shared and stored: see [`Engine::terms`].
pub(super) struct Terms {
    pub(super) vary: Vary,
    pub(super) shareable: bool,
    pub(super) storable: bool,
}

/// The record of an answer produced now with `head`'s status and version,
/// kept for `ttl`.
pub(super) fn fresh_record(
    head: &Head,
    headers: HeaderMap,
    body: Bytes,
    trailers: Option<&HeaderMap>,
    meta: Meta,
    ttl: Duration,
) -> Record {
    let now = now_millis();
    Record {
        status: head.status,
        version: head.version,
        headers,
        body,
        // Copies, like the headers: a value may be a slice of the
        // connection's read buffer.
        trailers: trailers.map(policy::shareable_headers),
        created_at: now,
        expires_at: now.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)),
        meta: meta.encode(),
        info: meta,
    }
}

/// `future`, bounded by `idle` as `tokio::time::timeout` would, with the
/// timer armed only if the future has to wait: the frames of an answer
/// already in memory are ready at once, and a timer per frame (a clock read,
/// a runtime handle) was a measurable part of a miss.
async fn within<F: Future>(idle: Duration, future: F) -> Result<F::Output, Elapsed> {
    let mut future = pin!(future);
    if let Poll::Ready(output) = poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx))).await {
        return Ok(output);
    }
    timeout(idle, future).await
}
