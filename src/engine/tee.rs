//! The leader's call: stream the upstream response to every reader while
//! recording it, then store it in L1 and L2 and wake the waiters.

use std::{future::Future, panic, pin::pin, sync::Arc};

use bytes::{Buf, Bytes};
use http::{response, HeaderMap, Response};
use http_body::Body;
use http_body_util::BodyExt;
use tokio::{sync::oneshot, task::JoinHandle};

use super::{Answer, Engine, Lead};
use crate::{
    cache_status::CacheStatus,
    error::BoxError,
    flight::{Head, Reader},
    policy,
    record::{now_millis, Meta, Record},
    stats::Counters,
    store::FleetCounter,
    telemetry,
};

/// What the recording task tells the leader's caller once the head is in.
struct Started {
    head: Arc<Head>,
    reader: Reader,
}

impl Engine {
    /// Leads with a call that runs in a task of its own from the start: it
    /// completes, and is stored, even if the leader's caller goes away.
    pub(crate) async fn lead_detached<F, RB, E>(
        self: Arc<Self>,
        lead: Lead,
        call: F,
    ) -> Answer<RB, E>
    where
        F: Future<Output = Result<Response<RB>, E>> + Send + 'static,
        RB: Body + Send + 'static,
        RB::Error: Into<BoxError>,
        E: Send + 'static,
    {
        let refresh = lead.job.refresh;
        let (started_tx, started_rx) = oneshot::channel();
        let task = tokio::spawn(Arc::clone(&self).record(lead, call, started_tx));
        self.started(started_rx, task, refresh).await
    }

    /// Leads with a call that borrows from its caller (a client middleware
    /// chain): its head is awaited here, then the body is recorded in a task
    /// of its own. If the caller goes away before the head, the call is
    /// cancelled and a follower takes over.
    #[cfg(feature = "reqwest")]
    pub(crate) async fn lead_attached<F, RB, E>(
        self: Arc<Self>,
        lead: Lead,
        call: F,
    ) -> Answer<RB, E>
    where
        F: Future<Output = Result<Response<RB>, E>> + Send,
        RB: Body + Send + 'static,
        RB::Error: Into<BoxError>,
        E: Send + 'static,
    {
        let refresh = lead.job.refresh;
        let result = call.await;
        let (started_tx, started_rx) = oneshot::channel();
        let task =
            tokio::spawn(Arc::clone(&self).record(lead, std::future::ready(result), started_tx));
        self.started(started_rx, task, refresh).await
    }

    async fn started<RB, E>(
        &self,
        started: oneshot::Receiver<Result<Started, E>>,
        task: JoinHandle<()>,
        refresh: bool,
    ) -> Answer<RB, E> {
        match started.await {
            Ok(Ok(Started { head, reader })) => {
                let status = match (refresh, head.storable) {
                    (false, stored) => CacheStatus::Miss { stored },
                    (true, stored) => CacheStatus::Refresh { stored },
                };
                Ok(self.live(&head, &head.headers, reader, status))
            }
            Ok(Err(error)) => Err(error),
            // The task ended without a word: it panicked. Panic here too, as
            // the inner service would have without the layer.
            Err(_) => match task.await {
                Err(error) if error.is_panic() => panic::resume_unwind(error.into_panic()),
                _ => Ok(self.internal_error()),
            },
        }
    }

    /// The recording task: awaits the upstream call, publishes its head and
    /// chunks into the flight, and stores the record when complete.
    async fn record<F, RB, E>(
        self: Arc<Self>,
        lead: Lead,
        call: F,
        started: oneshot::Sender<Result<Started, E>>,
    ) where
        F: Future<Output = Result<Response<RB>, E>>,
        RB: Body,
        RB::Error: Into<BoxError>,
    {
        let Lead {
            mut leader,
            job,
            claim,
            model,
            started: called_at,
        } = lead;
        let response = call.await;
        telemetry::upstream(called_at.elapsed());
        let response = match response {
            Ok(response) => response,
            Err(error) => {
                Counters::inc(&self.counters.upstream_errors);
                drop(leader); // abandons the flight: a follower takes over
                let _ = started.send(Err(error));
                // Let waiters on other instances take over now.
                self.l2
                    .complete(&job.ns, &job.key, claim.lease.as_ref(), None)
                    .await;
                return;
            }
        };
        let (parts, body) = response.into_parts();
        let head = Arc::new(self.head(parts));
        let reader = leader.start(Arc::clone(&head));
        // If the caller is gone, its reader is dropped here; the call goes on.
        let _ = started.send(Ok(Started {
            head: Arc::clone(&head),
            reader,
        }));

        let mut usage = UsageReader::new(&head.headers);
        let limit = self.config.max_response_body as u64;
        let mut body = pin!(body);
        let mut trailers = None;
        let failure: Option<BoxError> = loop {
            if !leader.room(self.config.max_response_body).await {
                // Too large to store, and nobody is left to serve.
                break Some("every reader of an oversized response went away".into());
            }
            let frame = match body.as_mut().frame().await {
                None => break None,
                Some(Err(error)) => break Some(error.into()),
                Some(Ok(frame)) => frame,
            };
            match frame.into_data() {
                Ok(mut data) => {
                    let chunk = data.copy_to_bytes(data.remaining());
                    usage.feed(&chunk);
                    leader.push(chunk, limit);
                }
                Err(frame) => trailers = frame.into_trailers().ok(),
            }
        };
        if let Some(error) = failure {
            leader.fail(error);
            return self
                .l2
                .complete(&job.ns, &job.key, claim.lease.as_ref(), None)
                .await;
        }

        let completed = leader.complete(trailers.clone());
        let now = now_millis();
        let meta = usage.finish(model, completed.body.as_ref(), job.fingerprint);
        let record = Record {
            status: head.status,
            version: head.version,
            headers: head.shared_headers.clone(),
            body: completed.body.clone().unwrap_or_default(),
            trailers,
            created_at: now,
            expires_at: now.saturating_add(u64::try_from(job.ttl.as_millis()).unwrap_or(u64::MAX)),
            meta: meta.encode(),
            info: meta,
        };
        // Followers streamed the response live: count what they saved.
        self.count_savings(&record.info, completed.received, completed.followers);
        let stored = match (head.storable, completed.body) {
            (true, Some(_)) if !job.ttl.is_zero() => {
                let record = Arc::new(record);
                self.l1.insert(job.key, Arc::clone(&record)).await;
                self.tally(&self.counters.stored, FleetCounter::Stored);
                Some(record)
            }
            _ => None,
        };
        // Dropping the leader takes the flight out of the map, after the
        // record is in L1: a newcomer finds one or the other.
        drop(leader);
        self.l2
            .complete(&job.ns, &job.key, claim.lease.as_ref(), stored.as_deref())
            .await;
    }

    /// What every reader shares of the upstream head, and whether the
    /// response may be stored.
    fn head(&self, parts: response::Parts) -> Head {
        let content_length = policy::content_length(&parts.headers);
        let storable = !policy::response_forbids_storing(&parts.headers)
            && content_length.is_none_or(|len| len <= self.config.max_response_body as u64)
            && self.config.store_if.should_store(&parts);
        Head {
            status: parts.status,
            version: parts.version,
            shared_headers: policy::shareable_headers(&parts.headers),
            headers: parts.headers,
            content_length,
            storable,
        }
    }
}

/// Reads token usage as the body streams (server-sent events), or from the
/// recorded body at the end (JSON).
struct UsageReader {
    #[cfg(feature = "ai")]
    content_type: Option<String>,
    #[cfg(feature = "ai")]
    scanner: Option<crate::ai::UsageScanner>,
}

impl UsageReader {
    #[cfg(feature = "ai")]
    fn new(headers: &HeaderMap) -> Self {
        let content_type = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let streamed = content_type.as_deref().is_some_and(|ct| {
            ct.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("text/event-stream")
        });
        Self {
            scanner: streamed.then(crate::ai::UsageScanner::new),
            content_type,
        }
    }

    #[cfg(not(feature = "ai"))]
    fn new(_headers: &HeaderMap) -> Self {
        Self {}
    }

    fn feed(&mut self, _chunk: &[u8]) {
        #[cfg(feature = "ai")]
        if let Some(scanner) = &mut self.scanner {
            scanner.feed(_chunk);
        }
    }

    /// The entry's metadata. `model` is what the request asked for; the
    /// response's own model name fills in when the request named none.
    #[cfg(feature = "ai")]
    fn finish(
        self,
        model: Option<String>,
        body: Option<&Bytes>,
        fingerprint: Option<crate::Key>,
    ) -> Meta {
        let (usage, response_model) = match (self.scanner, body) {
            (Some(scanner), _) => scanner.finish_with_model(),
            (None, Some(body)) => (
                crate::ai::parse_usage(self.content_type.as_deref(), body),
                model
                    .is_none()
                    .then(|| crate::ai::response_model(self.content_type.as_deref(), body))
                    .flatten(),
            ),
            (None, None) => (None, None),
        };
        Meta {
            fingerprint,
            model: model.or(response_model),
            usage,
        }
    }

    #[cfg(not(feature = "ai"))]
    fn finish(
        self,
        model: Option<String>,
        _body: Option<&Bytes>,
        fingerprint: Option<crate::Key>,
    ) -> Meta {
        Meta { fingerprint, model }
    }
}
