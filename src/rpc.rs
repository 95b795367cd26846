//! A call as the tower layers in front of the services see it: who is calling, and what each
//! layer shares (a [`Filter`] looks at a call and answers it or passes it on).

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Request;

/// The identity of the calling service, set on the request by the authentication layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller(pub String);

/// The caller recorded in audit events when no authentication layer names one.
pub const ANONYMOUS_CALLER: &str = "anonymous";

pub fn caller_of<T>(request: &tonic::Request<T>) -> String {
    request
        .extensions()
        .get::<Caller>()
        .map(|caller| caller.0.clone())
        .unwrap_or_else(|| ANONYMOUS_CALLER.to_owned())
}

/// The service that was made ready, for this call; a fresh clone stays for the next one (the
/// tower idiom for a `Clone` service whose `call` moves into a future).
pub fn take_ready<S: Clone>(inner: &mut S) -> S {
    let clone = inner.clone();
    std::mem::replace(inner, clone)
}

/// A call's future, as the layers return it.
pub type BoxedCall<R, E> = Pin<Box<dyn Future<Output = Result<R, E>> + Send>>;

/// The most of a refused request's body read before answering, and for how long.
const DRAIN_BYTES: usize = 64 * 1024;
const DRAIN_TIME: Duration = Duration::from_millis(100);

/// What a call holds while it is served (its admission slot, its place among its caller's open
/// streams): put on the request by the first layer that takes something, kept by the response
/// body until the response has ended (a stream's last message sent, or the stream reset), and
/// released before a refused call's request is drained.
#[derive(Clone, Default)]
pub struct Held(Arc<Mutex<Vec<Box<dyn Any + Send>>>>);

impl std::fmt::Debug for Held {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Held")
    }
}

impl Held {
    /// Keeps `guard` until the call's response ends.
    pub fn hold(&self, guard: impl Send + 'static) {
        self.guards().push(Box::new(guard));
    }

    /// Drops everything held (at once, whoever else keeps this handle).
    pub fn release(&self) {
        let released = std::mem::take(&mut *self.guards());
        drop(released);
    }

    fn guards(&self) -> std::sync::MutexGuard<'_, Vec<Box<dyn Any + Send>>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A response body that keeps what its call holds until it ends.
pub trait HoldingBody: Default + Send + 'static {
    /// This body, releasing `held` when it has ended or is dropped.
    fn holding(self, held: Held) -> Self;

    /// This body, telling `watcher` how it ended: with its trailers, without, or dropped before
    /// its end.
    fn watched(self, watcher: impl EndWatcher) -> Self;
}

impl HoldingBody for tonic::body::Body {
    fn holding(self, held: Held) -> Self {
        tonic::body::Body::new(HeldUntilEnd {
            body: self,
            held: Some(held),
        })
    }

    fn watched(self, watcher: impl EndWatcher) -> Self {
        tonic::body::Body::new(WatchedUntilEnd {
            body: self,
            watcher: Some(watcher),
        })
    }
}

/// How a response body ended.
#[derive(Clone, Copy, Debug)]
pub enum Ended<'a> {
    /// With its trailers (a gRPC response's status, when its headers did not carry it).
    Trailers(&'a http::HeaderMap),
    /// After its last frame, without trailers.
    WithoutTrailers,
    /// With an error of the body: the response was cut short.
    Failed,
    /// Dropped before its end: the client went away (reset the stream, or its connection
    /// closed), or the server stopped.
    Dropped,
}

/// Told once how a response ended ([`HoldingBody::watched`]).
pub trait EndWatcher: Send + Unpin + 'static {
    fn ended(self, how: Ended<'_>);
}

/// A body telling its watcher how it ended.
struct WatchedUntilEnd<B, W: EndWatcher> {
    body: B,
    watcher: Option<W>,
}

impl<B, W: EndWatcher> WatchedUntilEnd<B, W> {
    fn end(&mut self, how: Ended<'_>) {
        if let Some(watcher) = self.watcher.take() {
            watcher.ended(how);
        }
    }
}

impl<B, W: EndWatcher> Drop for WatchedUntilEnd<B, W> {
    fn drop(&mut self) {
        self.end(Ended::Dropped);
    }
}

impl<B: http_body::Body + Unpin, W: EndWatcher> http_body::Body for WatchedUntilEnd<B, W> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(context);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    self.end(Ended::Trailers(trailers));
                }
            }
            Poll::Ready(Some(Err(_))) => self.end(Ended::Failed),
            Poll::Ready(None) => self.end(Ended::WithoutTrailers),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A body releasing what its call holds after its last frame.
struct HeldUntilEnd<B> {
    body: B,
    held: Option<Held>,
}

impl<B> HeldUntilEnd<B> {
    fn release(&mut self) {
        if let Some(held) = self.held.take() {
            held.release();
        }
    }
}

impl<B> Drop for HeldUntilEnd<B> {
    fn drop(&mut self) {
        self.release();
    }
}

impl<B: http_body::Body + Unpin> http_body::Body for HeldUntilEnd<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(context);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            self.release();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Answers a refused call with `status` once the caller has finished sending its request (up
/// to a bound). Answering while the request is still being sent resets the HTTP/2 stream, and
/// the caller would see a transport error instead of the status. What the call held (its
/// admission slot) is released first: draining takes up to [`DRAIN_TIME`] of the caller's
/// choosing, and a refused call must not keep a slot another call could use.
pub async fn answer_after_request<RequestBody, ResponseBody>(
    request: http::Request<RequestBody>,
    status: tonic::Status,
) -> http::Response<ResponseBody>
where
    RequestBody: http_body::Body + Send + Unpin,
    ResponseBody: Default,
{
    use http_body_util::BodyExt;
    if let Some(held) = request.extensions().get::<Held>() {
        held.release();
    }
    let mut body = request.into_body();
    let drained = async {
        let mut read = 0;
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(data) = frame.data_ref() {
                read += bytes::Buf::remaining(data);
            }
            if read > DRAIN_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, drained).await;
    status.into_http()
}

/// A request body, as the layers take it.
pub trait Body: http_body::Body + Send + Unpin + 'static {}

impl<B: http_body::Body + Send + Unpin + 'static> Body for B {}

/// The services behind a layer: the gRPC services, or the layers in front of them.
pub trait Inner<B>:
    tower::Service<
        http::Request<B>,
        Response = http::Response<Self::Answer>,
        Future: Send + 'static,
        Error: Send + 'static,
    > + Clone
    + Send
    + 'static
{
    /// The response body.
    type Answer: HoldingBody;
}

impl<S, B, R> Inner<B> for S
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: HoldingBody,
{
    type Answer = R;
}

/// The future of a call to `S`, as the layers return it.
pub type Call<S, B> = BoxedCall<
    <S as tower::Service<http::Request<B>>>::Response,
    <S as tower::Service<http::Request<B>>>::Error,
>;

/// What a layer does with each call: answer it, or hand it to `inner` (made ready for it:
/// [`take_ready`]).
pub trait Filter {
    fn call<S: Inner<B>, B: Body>(&self, inner: &mut S, request: Request<B>) -> Call<S, B>;
}

/// The service a layer puts in front of `inner`: its [`Filter`] sees each call.
#[derive(Clone, Debug)]
pub struct Filtered<S, F> {
    pub inner: S,
    pub filter: F,
}

impl<S: Inner<B>, F: Filter, B: Body> tower::Service<Request<B>> for Filtered<S, F> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = Call<S, B>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        self.filter.call(&mut self.inner, request)
    }
}
