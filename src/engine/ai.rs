//! What the `ai` feature adds to the engine, behind one seam: the sampling
//! policy, the model a request names, the token usage a response reports and
//! what the calls it saves would have cost.
//!
//! Without the feature the same names exist and do nothing, so the rest of
//! the engine carries no `cfg` of its own.

#[cfg(not(feature = "ai"))]
pub(super) use disabled::*;
#[cfg(feature = "ai")]
pub(super) use enabled::*;

#[cfg(feature = "ai")]
mod enabled {
    use std::time::Duration;

    use bytes::Bytes;
    use http::{header, HeaderMap, HeaderValue};

    use crate::{
        ai::{self, PriceTable, Sampling, UsageScanner},
        builder::SamplingPolicy,
        key::Key,
        record::Meta,
    };

    /// The `ai` part of the configuration.
    #[derive(Clone, Default)]
    pub(crate) struct Settings {
        pub(crate) prices: Option<PriceTable>,
        pub(crate) sampling: Option<SamplingPolicy>,
    }

    /// The TTL of a request's answer under the sampling policy, and how many
    /// answers to keep for it (`None`: one); `None` when the policy skips
    /// the request.
    pub(in crate::engine) fn sampled(
        settings: &Settings,
        body: &[u8],
        ttl: Duration,
    ) -> Option<(Duration, Option<u32>)> {
        let Some(policy) = settings.sampling else {
            return Some((ttl, None));
        };
        if ai::sampling(body) != Sampling::Nondeterministic {
            return Some((ttl, None));
        }
        match policy {
            SamplingPolicy::Skip => None,
            SamplingPolicy::RetryWindow(window) => Some((ttl.min(window), None)),
            SamplingPolicy::Bucket(n) => Some((ttl, Some(n))),
        }
    }

    /// The model a request body asks for.
    pub(in crate::engine) fn request_model(body: &[u8]) -> Option<String> {
        ai::request_model(body)
    }

    /// Tokens and micro-dollars one call described by `info` cost.
    pub(in crate::engine) fn cost(settings: &Settings, info: &Meta) -> (u64, u64) {
        let tokens = info.usage.map_or(0, |u| u.total());
        let micro_dollars = settings.prices.as_ref().map_or(0, |prices| {
            prices
                .cost(info.model.as_deref(), info.usage.as_ref())
                .micro_dollars()
        });
        (tokens, micro_dollars)
    }

    /// Reads token usage as the body streams (server-sent events), or from
    /// the recorded body at the end (JSON).
    pub(in crate::engine) struct UsageReader {
        content_type: Option<HeaderValue>,
        scanner: Option<UsageScanner>,
    }

    impl UsageReader {
        pub(in crate::engine) fn new(headers: &HeaderMap) -> Self {
            let content_type = headers.get(header::CONTENT_TYPE).cloned();
            let streamed = content_type
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .is_some_and(|ct| {
                    ct.split(';')
                        .next()
                        .unwrap_or("")
                        .trim()
                        .eq_ignore_ascii_case("text/event-stream")
                });
            Self {
                scanner: streamed.then(UsageScanner::new),
                content_type,
            }
        }

        pub(in crate::engine) fn feed(&mut self, chunk: &[u8]) {
            if let Some(scanner) = &mut self.scanner {
                scanner.feed(chunk);
            }
        }

        /// Whether [`finish`](Self::finish) reads the usage from the whole
        /// body rather than from the chunks fed as it streamed.
        pub(in crate::engine) fn needs_body(&self) -> bool {
            self.scanner.is_none()
        }

        /// The entry's metadata. `model` is what the request asked for; the
        /// response's own model name fills in when the request named none.
        pub(in crate::engine) fn finish(
            self,
            model: Option<String>,
            body: Option<&Bytes>,
            fingerprint: Option<Key>,
        ) -> Meta {
            let (usage, response_model) = match (self.scanner, body) {
                (Some(scanner), _) => scanner.finish_with_model(),
                (None, Some(body)) => {
                    let content_type = self.content_type.as_ref().and_then(|v| v.to_str().ok());
                    // One pass for both; the response's model is kept only
                    // when the request named none.
                    let (usage, response_model) = ai::usage_and_model(content_type, body);
                    (usage, response_model.filter(|_| model.is_none()))
                }
                (None, None) => (None, None),
            };
            Meta {
                fingerprint,
                model: model.or(response_model),
                usage,
                ..Meta::default()
            }
        }
    }
}

#[cfg(not(feature = "ai"))]
mod disabled {
    use std::time::Duration;

    use bytes::Bytes;
    use http::HeaderMap;

    use crate::{key::Key, record::Meta};

    /// The `ai` part of the configuration: nothing without the feature.
    #[derive(Clone, Default)]
    pub(crate) struct Settings;

    pub(in crate::engine) fn sampled(
        _: &Settings,
        _: &[u8],
        ttl: Duration,
    ) -> Option<(Duration, Option<u32>)> {
        Some((ttl, None))
    }

    pub(in crate::engine) fn request_model(_: &[u8]) -> Option<String> {
        None
    }

    pub(in crate::engine) fn cost(_: &Settings, _: &Meta) -> (u64, u64) {
        (0, 0)
    }

    pub(in crate::engine) struct UsageReader;

    impl UsageReader {
        pub(in crate::engine) fn new(_: &HeaderMap) -> Self {
            Self
        }

        pub(in crate::engine) fn feed(&mut self, _: &[u8]) {}

        pub(in crate::engine) fn needs_body(&self) -> bool {
            false
        }

        pub(in crate::engine) fn finish(
            self,
            model: Option<String>,
            _: Option<&Bytes>,
            fingerprint: Option<Key>,
        ) -> Meta {
            Meta {
                fingerprint,
                model,
                ..Meta::default()
            }
        }
    }
}
