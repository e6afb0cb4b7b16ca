//! The response future of [`Idempotency`](crate::Idempotency).

use std::{
    future::Future,
    pin::Pin,
    task::{ready, Context, Poll},
};

use http::Response;
use pin_project_lite::pin_project;

use crate::{body::ResponseBody, cache_status::CacheStatus};

type Boxed<B, E> = Pin<Box<dyn Future<Output = Result<Response<ResponseBody<B>>, E>> + Send>>;

pin_project! {
    /// Response future of [`Idempotency`](crate::Idempotency).
    ///
    /// A request the policy skips from its head alone (an ineligible method,
    /// `no-store`) goes straight to the inner future, unboxed; every other one
    /// runs through the engine.
    ///
    /// # Examples
    ///
    /// It is what calling the service returns; name it to store the service
    /// in a struct or to box it:
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use std::future::Ready;
    /// use bytes::Bytes;
    /// use http::{Request, Response};
    /// use http_body_util::Full;
    /// use tower::{Layer, Service, ServiceExt};
    /// use tower_idempotency::{IdempotencyLayer, RequestBody, ResponseBody, ResponseFuture};
    ///
    /// type Handler = tower::util::ServiceFn<
    ///     fn(Request<RequestBody<Full<Bytes>>>) -> Ready<Result<Response<Full<Bytes>>, Infallible>>,
    /// >;
    ///
    /// fn echo(request: Request<RequestBody<Full<Bytes>>>) -> Ready<Result<Response<Full<Bytes>>, Infallible>> {
    ///     let _ = request;
    ///     std::future::ready(Ok(Response::new(Full::new(Bytes::from("pong")))))
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let handler: Handler = tower::service_fn(echo as fn(_) -> _);
    /// let mut service = IdempotencyLayer::new().layer(handler);
    /// let request = Request::get("/ping").body(Full::new(Bytes::new()))?;
    /// let future: ResponseFuture<Ready<Result<Response<Full<Bytes>>, Infallible>>, Full<Bytes>, Infallible> =
    ///     service.ready().await?.call(request);
    /// let response: Response<ResponseBody<Full<Bytes>>> = future.await?;
    /// assert!(response.status().is_success());
    /// # Ok(())
    /// # }
    /// ```
    pub struct ResponseFuture<F, B, E> {
        #[pin]
        state: State<F, B, E>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B, E> {
        Skipped {
            #[pin]
            future: F,
            status: Option<CacheStatus>,
        },
        Engine {
            future: Boxed<B, E>,
        },
        Ready {
            response: Option<Response<ResponseBody<B>>>,
        },
    }
}

impl<F, B, E> ResponseFuture<F, B, E> {
    pub(crate) fn skipped(future: F, status: Option<CacheStatus>) -> Self {
        Self {
            state: State::Skipped { future, status },
        }
    }

    pub(crate) fn engine(future: Boxed<B, E>) -> Self {
        Self {
            state: State::Engine { future },
        }
    }

    pub(crate) fn ready(response: Response<ResponseBody<B>>) -> Self {
        Self {
            state: State::Ready {
                response: Some(response),
            },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Skipped { future, status } => {
                let mut response = ready!(future.poll(cx))?.map(ResponseBody::inner);
                if let Some(status) = status.take() {
                    status.append_to(response.headers_mut());
                }
                Poll::Ready(Ok(response))
            }
            StateProj::Engine { future } => future.as_mut().poll(cx),
            StateProj::Ready { response } => {
                Poll::Ready(Ok(response.take().expect("polled after completion")))
            }
        }
    }
}

impl<F, B, E> std::fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
