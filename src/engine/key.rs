//! The key step: a request's key (content, or in `Idempotency-Key` mode the
//! header's), its payload's fingerprint, and the storage terms that go with
//! them ([`Job`]); and which request headers the key covers, for the `Vary`
//! of what it finds.

use std::{sync::Arc, time::Duration};

use http::{request, HeaderMap, HeaderName};

use super::Engine;
use crate::{
    builder::KeyHeader,
    error::{Error, ErrorKind},
    idempotency_key::{self, KeyError},
    key::Key,
    policy::control,
    record::Record,
    tenants::TenantId,
};

/// One request's identity and storage terms.
#[derive(Debug, Clone)]
pub(crate) struct Job {
    pub(super) key: Key,
    /// The namespace's tag in the shared store.
    pub(super) ns: Arc<str>,
    pub(super) ttl: Duration,
    /// In `Idempotency-Key` mode: the payload's content key.
    pub(super) fingerprint: Option<Key>,
    pub(super) refresh: bool,
    /// Whose request this is, when tenants are counted.
    pub(super) tenant: Option<TenantId>,
    /// Sent to a sample bucket picked at random, all of them being filled:
    /// its answer counts as a bucket hit.
    pub(super) bucketed: bool,
}

impl Engine {
    /// The key the engine stores this request under (in `Idempotency-Key`
    /// mode, the one named by the header; with the control headers on, in
    /// the namespace the request chose).
    pub(crate) fn key(&self, head: &request::Parts, body: &[u8]) -> Option<Key> {
        let mut namespace = self.config.key.namespace.as_str();
        if self.config.control_headers {
            if let Some(chosen) = head.headers.get(&control::NAMESPACE) {
                // An unreadable one is answered 400: nothing is stored.
                namespace = chosen.to_str().ok()?.trim();
            }
        }
        let identity = self.identify(namespace, head, body);
        identity.ok().flatten().map(|(key, _)| key)
    }

    /// The request's key and, in `Idempotency-Key` mode, its payload's
    /// fingerprint. `None`: a custom key function declined it.
    pub(super) fn identify(
        &self,
        namespace: &str,
        parts: &request::Parts,
        body: &[u8],
    ) -> Result<Option<(Key, Option<Key>)>, Error> {
        let Some(content) = self
            .config
            .key
            .key_aliased(namespace, parts, body, &self.aliases)
        else {
            return Ok(None);
        };
        let Some(mode) = self.config.key_header else {
            return Ok(Some((content, None)));
        };
        match idempotency_key::parse_idempotency_key(&parts.headers, self.config.max_key_len) {
            Ok(value) => Ok(Some((
                self.config.key.header_key(namespace, parts, &value),
                Some(content),
            ))),
            Err(KeyError::Missing) if mode == KeyHeader::Optional => Ok(Some((content, None))),
            Err(KeyError::Missing) => Err(Error::new(ErrorKind::MissingKey, KeyError::Missing)),
            Err(error) => Err(Error::new(ErrorKind::InvalidKey, error)),
        }
    }

    /// The request headers the key covers: a stored response that varies on
    /// these needs nothing more.
    pub(super) fn keyed(&self) -> &[HeaderName] {
        match self.config.key.custom {
            // A custom key's material is unknown: nothing counts as covered.
            Some(_) => &[],
            None => &self.config.key.vary,
        }
    }

    /// Whether a stored response may answer a request with these headers:
    /// its `Vary` is honoured, except in `Idempotency-Key` mode, where the
    /// key contract wins.
    pub(super) fn fits(&self, job: &Job, record: &Record, request: &HeaderMap) -> bool {
        job.fingerprint.is_some() || record.fits(request, self.keyed())
    }

    /// The headers whose values go into a key.
    #[cfg(feature = "reqwest")]
    pub(crate) fn vary_headers(&self) -> &[HeaderName] {
        &self.config.key.vary
    }
}
