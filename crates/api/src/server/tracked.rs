//! The app as hyper calls it on one connection: every request counted in flight from the
//! moment its head is read until its response body has ended or been dropped, and, during a
//! drain, every HTTP/1 response marked `Connection: close`.
//!
//! The count is held by a [`RequestGuard`]: created when hyper calls the service, moved into
//! the response body, dropped when the body yields its last frame, fails, or is dropped (the
//! client went away), or with the handler's future if the request is abandoned before it has
//! a response. So a stream counts until its final chunk, and no path can leak a count.
//!
//! With `server.stream_coalesce` on, an HTTP/1 response body also tells its connection's
//! coalescer when it streams past its first frame and when it ends ([`StreamMark`]), for the
//! connection's writes to hold chunks only in between (`coalesce`).

use super::coalesce::Coalescer;
use super::connection::ConnState;
use axum::Router;
use axum::body::Body;
use axum::http::header::CONNECTION;
use axum::http::{HeaderValue, Request, Response, Version};
use axum::routing::future::RouteFuture;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::Service as _;

/// The app, for one connection.
#[derive(Debug, Clone)]
pub(super) struct ConnService {
    app: Router,
    conn: Arc<ConnState>,
}

impl ConnService {
    pub(super) fn new(app: Router, conn: Arc<ConnState>) -> Self {
        Self { app, conn }
    }
}

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<TrackedBody>;
    type Error = Infallible;
    type Future = TrackedFuture;

    fn call(&self, req: Request<Incoming>) -> TrackedFuture {
        let version = req.version();
        let guard = RequestGuard::enter(&self.conn, version);
        // A Router clone is one reference count; its `poll_ready` is always ready.
        let mut app = self.app.clone();
        TrackedFuture {
            inner: app.call(req),
            guard: Some(guard),
            http1: version < Version::HTTP_2,
        }
    }
}

/// The handler's future, holding the request's place in the count until it has a response.
pub(super) struct TrackedFuture {
    inner: RouteFuture<Infallible>,
    guard: Option<RequestGuard>,
    http1: bool,
}

impl Future for TrackedFuture {
    type Output = Result<Response<TrackedBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let response = match Pin::new(&mut this.inner).poll(cx) {
            Poll::Ready(Ok(response)) => response,
            Poll::Ready(Err(never)) => match never {},
            Poll::Pending => return Poll::Pending,
        };
        let guard = this.guard.take();
        let (mut parts, body) = response.into_parts();
        // Decided when the head is written, not when the request came: a response that
        // starts after the drain began tells the client to go elsewhere next time.
        if this.http1 && guard.as_ref().is_some_and(|g| g.conn.is_draining()) {
            parts
                .headers
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        let stream = match &guard {
            Some(g) if this.http1 => g.conn.coalescer().map(|coalesce| StreamMark {
                coalesce: coalesce.clone(),
                frames: 0,
            }),
            _ => None,
        };
        Poll::Ready(Ok(Response::from_parts(
            parts,
            TrackedBody {
                inner: body,
                guard,
                stream,
            },
        )))
    }
}

/// A response body that ends its request's place in the count when it ends.
#[derive(Debug)]
pub(super) struct TrackedBody {
    inner: Body,
    guard: Option<RequestGuard>,
    stream: Option<StreamMark>,
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        let ended = match &polled {
            Poll::Ready(None | Some(Err(_))) => true,
            Poll::Ready(Some(Ok(_))) => this.inner.is_end_stream(),
            Poll::Pending => false,
        };
        if ended {
            this.guard = None;
            this.stream = None;
        } else if let (Some(mark), Poll::Ready(Some(Ok(_)))) = (&mut this.stream, &polled) {
            mark.frame();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// An HTTP/1 response body's word to its connection that it is streaming: from its second
/// frame until it ends or is dropped. The first frame goes out with the head, unheld.
#[derive(Debug)]
struct StreamMark {
    coalesce: Arc<Coalescer>,
    frames: u8,
}

impl StreamMark {
    /// The body yielded a frame and has more to come.
    fn frame(&mut self) {
        if self.frames == 1 {
            self.coalesce.set_streaming(true);
        }
        self.frames = self.frames.saturating_add(1);
    }
}

impl Drop for StreamMark {
    fn drop(&mut self) {
        if self.frames > 1 {
            self.coalesce.set_streaming(false);
        }
    }
}

/// One request's place in the server's and its connection's in-flight counts. It holds only
/// the connection's state (which lives on the request's own thread): the server's counts are
/// reached through it, so a request touches no reference count shared between threads.
#[derive(Debug)]
struct RequestGuard {
    conn: Arc<ConnState>,
}

impl RequestGuard {
    fn enter(conn: &Arc<ConnState>, version: Version) -> Self {
        conn.request_started(version);
        Self { conn: conn.clone() }
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.conn.request_ended();
    }
}
