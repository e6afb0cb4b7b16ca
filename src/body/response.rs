//! The response body the caller receives.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::{error::BoxError, flight::Reader};

pin_project! {
    /// The response body of a [`Idempotency`](crate::Idempotency) service.
    ///
    /// The inner service's own body (on a bypass), a stored body (on a hit),
    /// or a live view of an upstream response being recorded (the leader and
    /// its coalesced followers).
    ///
    /// Its data is [`Bytes`] and its error a [`BoxError`]: an upstream body
    /// that fails mid-stream fails for every reader of it.
    ///
    /// # Examples
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http::{Request, Response};
    /// use http_body_util::{BodyExt, Full};
    /// use tower::{Service, ServiceBuilder, ServiceExt};
    /// use tower_idempotency::{IdempotencyLayer, RequestBody, ResponseBody};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let mut service = ServiceBuilder::new()
    ///     .layer(IdempotencyLayer::new())
    ///     .service_fn(|_: Request<RequestBody<Full<Bytes>>>| async {
    ///         Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from("a large answer"))))
    ///     });
    /// for _ in 0..2 {
    ///     let request = Request::get("/report").body(Full::new(Bytes::new()))?;
    ///     let response: Response<ResponseBody<Full<Bytes>>> =
    ///         service.ready().await?.call(request).await?;
    ///     // Live on the first call, replayed on the second: the same bytes.
    ///     assert_eq!(response.into_body().collect().await?.to_bytes(), "a large answer");
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Inner { #[pin] body: B },
        Replay { data: Option<Bytes>, trailers: Option<HeaderMap> },
        Live { reader: Reader },
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn inner(body: B) -> Self {
        Self {
            kind: Kind::Inner { body },
        }
    }

    pub(crate) fn replay(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        let data = (!data.is_empty()).then_some(data);
        Self {
            kind: Kind::Replay { data, trailers },
        }
    }

    pub(crate) fn empty() -> Self {
        Self::replay(Bytes::new(), None)
    }

    pub(crate) fn live(reader: Reader) -> Self {
        Self {
            kind: Kind::Live { reader },
        }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            KindProj::Inner { body } => body.poll_frame(cx).map(|frame| {
                frame.map(|frame| {
                    frame
                        .map(|frame| frame.map_data(|mut d| d.copy_to_bytes(d.remaining())))
                        .map_err(Into::into)
                })
            }),
            KindProj::Replay { data, trailers } => {
                if let Some(data) = data.take() {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))))
            }
            KindProj::Live { reader } => reader.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Replay { data, trailers } => data.is_none() && trailers.is_none(),
            Kind::Live { .. } => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Replay { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Live { reader } => reader.size_hint(),
        }
    }
}

impl<B> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            Kind::Inner { .. } => "inner",
            Kind::Replay { .. } => "replay",
            Kind::Live { .. } => "live",
        };
        f.debug_struct("ResponseBody").field("kind", &kind).finish()
    }
}
