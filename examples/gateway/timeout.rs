//! A body that fails when its frames stop coming: for request bodies
//! (`--body-timeout`) and upstream response bodies (`--idle-timeout`).

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{ready, Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{sleep, Sleep};
use tower_idempotency::BoxError;

/// The error a stalled body ends with.
#[derive(Debug)]
pub struct Stalled {
    what: &'static str,
    after: Duration,
}

impl fmt::Display for Stalled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} made no progress for {:.3} s",
            self.what,
            self.after.as_secs_f64()
        )
    }
}

impl std::error::Error for Stalled {}

impl Stalled {
    /// Whether `error` or one of its sources is a stall.
    pub fn in_chain(error: &(dyn std::error::Error + 'static)) -> bool {
        let mut current = Some(error);
        while let Some(error) = current {
            if error.is::<Stalled>() {
                return true;
            }
            current = error.source();
        }
        false
    }
}

pin_project! {
    /// Wraps a body; if `limit` passes between the moment it is asked for a
    /// frame and the moment it has one, it yields a [`Stalled`] error and
    /// ends. The clock runs only while someone waits for the body: a reader
    /// that stops reading is not the body's fault.
    pub struct IdleTimeout<B> {
        #[pin]
        inner: B,
        #[pin]
        timer: Option<Sleep>,
        limit: Duration,
        what: &'static str,
        done: bool,
    }
}

impl<B> IdleTimeout<B> {
    pub fn new(inner: B, limit: Duration, what: &'static str) -> Self {
        Self {
            inner,
            timer: None,
            limit,
            what,
            done: false,
        }
    }
}

impl<B> Body for IdleTimeout<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        match this.inner.poll_frame(cx) {
            Poll::Ready(frame) => {
                this.timer.set(None);
                return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
            }
            Poll::Pending => {}
        }
        if this.timer.is_none() {
            this.timer.set(Some(sleep(*this.limit)));
        }
        if let Some(timer) = this.timer.as_mut().as_pin_mut() {
            ready!(timer.poll(cx));
        }
        *this.done = true;
        Poll::Ready(Some(Err(Box::new(Stalled {
            what: this.what,
            after: *this.limit,
        }))))
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    async fn next_frame<B: Body>(
        mut body: Pin<&mut B>,
    ) -> Option<Result<Frame<B::Data>, B::Error>> {
        std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await
    }

    /// A body fed from a channel.
    struct Fed(mpsc::UnboundedReceiver<Bytes>);

    impl Body for Fed {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stall_ends_the_body_with_an_error_and_progress_resets_the_clock() {
        let (feed, frames) = mpsc::unbounded_channel();
        let body = IdleTimeout::new(Fed(frames), Duration::from_secs(5), "the test body");
        let mut body = std::pin::pin!(body);
        for _ in 0..3 {
            // Frames 4 s apart: never 5 s without one.
            let feed = feed.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(4)).await;
                let _ = feed.send(Bytes::from_static(b"x"));
            });
            let frame = next_frame(body.as_mut()).await.unwrap().unwrap();
            assert_eq!(frame.into_data().unwrap(), "x");
        }
        let started = tokio::time::Instant::now();
        let error = next_frame(body.as_mut()).await.unwrap().unwrap_err();
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert!(Stalled::in_chain(&*error), "{error}");
        assert!(
            next_frame(body.as_mut()).await.is_none(),
            "the body ends after the error"
        );
    }
}
