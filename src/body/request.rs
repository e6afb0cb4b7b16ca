//! Buffering the request body without losing a byte.

use std::{
    collections::VecDeque,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use pin_project_lite::pin_project;

use crate::error::BoxError;

pin_project! {
    /// The request body the inner service receives.
    ///
    /// Either the buffered bytes of a request the layer fingerprinted, or the
    /// original body with whatever the layer already read chained back in
    /// front of it.
    ///
    /// # Examples
    ///
    /// The inner service reads it like any body:
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http::{Request, Response};
    /// use http_body_util::{BodyExt, Full};
    /// use tower::{Service, ServiceBuilder, ServiceExt};
    /// use tower_idempotency::{BoxError, IdempotencyLayer, RequestBody};
    ///
    /// async fn shout(request: Request<RequestBody<Full<Bytes>>>) -> Result<Response<Full<Bytes>>, BoxError> {
    ///     let text = request.into_body().collect().await?.to_bytes();
    ///     Ok(Response::new(Full::new(Bytes::from(text.to_ascii_uppercase()))))
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), BoxError> {
    /// let mut service = ServiceBuilder::new()
    ///     .layer(IdempotencyLayer::new())
    ///     .service_fn(shout);
    /// let request = Request::post("/shout").body(Full::new(Bytes::from("hello")))?;
    /// let response = service.ready().await?.call(request).await?;
    /// assert_eq!(response.into_body().collect().await?.to_bytes(), "HELLO");
    /// # Ok(())
    /// # }
    /// ```
    pub struct RequestBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Buffered { data: Option<Bytes> },
        Chained {
            prefix: VecDeque<Bytes>,
            trailers: Option<HeaderMap>,
            #[pin]
            rest: Option<B>,
        },
    }
}

impl<B> RequestBody<B> {
    /// A body of already-read bytes.
    pub(crate) fn buffered(data: Bytes) -> Self {
        let data = (!data.is_empty()).then_some(data);
        Self {
            kind: Kind::Buffered { data },
        }
    }

    /// The original body, untouched.
    pub(crate) fn passthrough(body: B) -> Self {
        Self::chained(VecDeque::new(), None, Some(body))
    }

    fn chained(prefix: VecDeque<Bytes>, trailers: Option<HeaderMap>, rest: Option<B>) -> Self {
        Self {
            kind: Kind::Chained {
                prefix,
                trailers,
                rest,
            },
        }
    }
}

impl<B> Body for RequestBody<B>
where
    B: Body,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.project().kind.project() {
            KindProj::Buffered { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            KindProj::Chained {
                prefix,
                trailers,
                rest,
            } => {
                if let Some(chunk) = prefix.pop_front() {
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                if let Some(trailers) = trailers.take() {
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                match rest.as_pin_mut() {
                    Some(rest) => rest
                        .poll_frame(cx)
                        .map_ok(|frame| frame.map_data(|mut d| d.copy_to_bytes(d.remaining()))),
                    None => Poll::Ready(None),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Buffered { data } => data.is_none(),
            Kind::Chained {
                prefix,
                trailers,
                rest,
            } => {
                prefix.is_empty()
                    && trailers.is_none()
                    && rest.as_ref().is_none_or(B::is_end_stream)
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Buffered { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Chained { prefix, rest, .. } => {
                let read: u64 = prefix.iter().map(|c| c.len() as u64).sum();
                let rest = rest
                    .as_ref()
                    .map_or_else(|| SizeHint::with_exact(0), B::size_hint);
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower().saturating_add(read));
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper.saturating_add(read));
                }
                hint
            }
        }
    }
}

/// What reading a request body up to the limit gave.
pub(crate) enum Buffered<B> {
    /// The whole body, within the limit.
    Complete(Bytes),
    /// Over the limit (or with trailers): everything read so far, chained in
    /// front of the rest, to pass through untouched.
    Passthrough(RequestBody<B>),
    /// The client's body failed.
    Failed(BoxError),
}

/// Reads `body` into memory if it fits in `limit` bytes.
pub(crate) async fn buffer<B>(body: B, limit: usize) -> Buffered<B>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    let hint = body.size_hint();
    if hint.lower() > limit as u64 {
        return Buffered::Passthrough(RequestBody::passthrough(body));
    }
    let mut body = body;
    let mut chunks = VecDeque::new();
    let mut len = 0usize;
    loop {
        let frame = match body.frame().await {
            None => return Buffered::Complete(concat(chunks, len)),
            Some(Err(err)) => return Buffered::Failed(err.into()),
            Some(Ok(frame)) => frame,
        };
        match frame.into_data() {
            Ok(mut data) => {
                let chunk = data.copy_to_bytes(data.remaining());
                len += chunk.len();
                chunks.push_back(chunk);
                if len > limit {
                    return Buffered::Passthrough(RequestBody::chained(chunks, None, Some(body)));
                }
            }
            Err(frame) => {
                // Trailers end the body. Requests with trailers are rare and
                // the key does not cover them, so they pass through uncached.
                let trailers = frame.into_trailers().ok();
                return Buffered::Passthrough(RequestBody::chained(chunks, trailers, Some(body)));
            }
        }
    }
}

fn concat(mut chunks: VecDeque<Bytes>, len: usize) -> Bytes {
    match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop_front().unwrap_or_default(),
        _ => {
            let mut out = BytesMut::with_capacity(len);
            chunks.iter().for_each(|c| out.extend_from_slice(c));
            out.freeze()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;
    use std::io;

    /// A body that yields the given frames, then ends.
    struct Frames(VecDeque<Result<Frame<Bytes>, io::Error>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
            Poll::Ready(self.0.pop_front())
        }
    }

    fn data(chunks: &[&'static [u8]]) -> Frames {
        Frames(
            chunks
                .iter()
                .map(|c| Ok(Frame::data(Bytes::from_static(c))))
                .collect(),
        )
    }

    async fn passthrough_bytes(buffered: Buffered<Frames>) -> Vec<u8> {
        match buffered {
            Buffered::Passthrough(body) => body.collect().await.unwrap().to_bytes().to_vec(),
            _ => panic!("expected a passthrough"),
        }
    }

    #[tokio::test]
    async fn small_body_is_buffered_whole() {
        match buffer(data(&[b"hel", b"lo"]), 16).await {
            Buffered::Complete(bytes) => assert_eq!(&bytes[..], b"hello"),
            _ => panic!("expected the whole body"),
        }
    }

    #[tokio::test]
    async fn declared_large_body_is_not_read() {
        match buffer(Full::new(Bytes::from_static(b"0123456789")), 4).await {
            Buffered::Passthrough(body) => {
                assert_eq!(body.size_hint().exact(), Some(10));
                let out = body.collect().await.unwrap().to_bytes();
                assert_eq!(&out[..], b"0123456789");
            }
            _ => panic!("expected a passthrough"),
        }
    }

    #[tokio::test]
    async fn streamed_body_over_the_limit_loses_nothing() {
        let out = passthrough_bytes(buffer(data(&[b"0123", b"4567", b"89"]), 5).await).await;
        assert_eq!(out, b"0123456789");
    }

    #[tokio::test]
    async fn trailers_pass_through() {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-checksum", "1".parse().unwrap());
        let frames = Frames(VecDeque::from([
            Ok(Frame::data(Bytes::from_static(b"ab"))),
            Ok(Frame::trailers(trailers.clone())),
        ]));
        match buffer(frames, 16).await {
            Buffered::Passthrough(body) => {
                let collected = body.collect().await.unwrap();
                assert_eq!(collected.trailers(), Some(&trailers));
                assert_eq!(&collected.to_bytes()[..], b"ab");
            }
            _ => panic!("expected a passthrough"),
        }
    }

    #[tokio::test]
    async fn client_error_is_reported() {
        let frames = Frames(VecDeque::from([
            Ok(Frame::data(Bytes::from_static(b"ab"))),
            Err(io::Error::new(io::ErrorKind::ConnectionReset, "reset")),
        ]));
        assert!(matches!(buffer(frames, 16).await, Buffered::Failed(_)));
    }
}
