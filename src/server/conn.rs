//! One client connection: TLS, then HTTP/1.1 or HTTP/2 by ALPN.
//!
//! An HTTP/1.1 keep-alive connection that idles gives its HTTP state back, as nginx's
//! keep-alive handler does: hyper holds an 8 KiB read and an 8 KiB write buffer for as long as
//! its connection lives, so after [`PARK_AFTER`] to twice that without a request the broker ends
//! the hyper connection (it is idle, so nothing is cut short), keeps the TLS stream, and waits
//! for the client's next bytes with no buffer of its own. Those bytes start a new hyper
//! connection on the same stream.

use super::admin;
use super::shared::Shared;
use crate::pipeline;
use crate::support::net::Body;
use bytes::{Buf, Bytes};
use http::{Request, Response};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{mpsc, watch};
use tokio_rustls::server::TlsStream;

/// How long an HTTP/1.1 connection idles before its HTTP state is released (it happens between
/// one and two of these after the last response).
pub(super) const PARK_AFTER: Duration = Duration::from_secs(1);

/// How long a closing connection may take to send its TLS close_notify.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

type Tls = TlsStream<tokio::net::TcpStream>;

/// A connection's part in a graceful stop: it watches `stop`, and the listener waits until
/// every connection has dropped its `alive` handle.
#[derive(Clone)]
pub(super) struct Drain {
    stop: watch::Receiver<bool>,
    _alive: mpsc::Sender<()>,
}

impl Drain {
    pub(super) fn new(stop: watch::Receiver<bool>, alive: mpsc::Sender<()>) -> Drain {
        Drain { stop, _alive: alive }
    }

    /// Resolves once a stop has been asked for (or the stop signal is gone).
    async fn stopped(&mut self) {
        let _ = self.stop.wait_for(|stop| *stop).await;
    }
}

/// What the connection task knows about its requests, without reaching into hyper.
#[derive(Default)]
struct Activity {
    /// Requests whose head has been read.
    started: AtomicU64,
    /// Requests whose response body has not been dropped yet.
    active: AtomicU32,
    /// The last request had no body. Only then is the framing known to be at a message
    /// boundary once its response is done (a body the handler left unread may still be
    /// arriving).
    bodyless: AtomicBool,
}

impl Activity {
    fn begin(self: &Arc<Self>, bodyless: bool) -> InFlight {
        self.started.fetch_add(1, Ordering::Relaxed);
        self.active.fetch_add(1, Ordering::Relaxed);
        self.bodyless.store(bodyless, Ordering::Relaxed);
        InFlight(self.clone())
    }
}

/// Held by a request until its response body is dropped (sent in full, or abandoned).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that tells the connection when it is done.
pub(super) struct Tracked {
    inner: Body,
    _in_flight: InFlight,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = crate::support::net::BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

type ServiceFuture = Pin<Box<dyn Future<Output = Result<Response<Tracked>, Infallible>> + Send>>;

/// Which listener a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Listener {
    Registry,
    Admin,
    /// The forward proxy: a `CONNECT` head first, then TLS inside the tunnel.
    Proxy,
}

/// TLS, then HTTP/1.1 or HTTP/2 by ALPN, on a task of the current runtime.
pub(super) fn spawn(
    shared: &Arc<Shared>,
    tcp: tokio::net::TcpStream,
    permit: tokio::sync::OwnedSemaphorePermit,
    drain: Drain,
    listener: Listener,
) {
    let _ = tcp.set_nodelay(true);
    let shared = shared.clone();
    tokio::spawn(async move {
        let _permit = permit;
        let timeout = shared.app.config.server.client_timeout;
        let (tls, face) = if listener == Listener::Proxy {
            match Box::pin(super::tunnel::open(&shared, tcp)).await {
                Some((tunnel, tls)) => (tls, pipeline::Face::Proxy(tunnel)),
                None => return,
            }
        } else {
            // The handshake's state and the stream are boxed, so the task itself stays small.
            match Box::pin(tokio::time::timeout(timeout, shared.acceptor.accept(tcp))).await {
                Ok(Ok(stream)) => (Box::new(stream), pipeline::Face::Registry),
                _ => return,
            }
        };
        let is_admin = listener == Listener::Admin;
        let activity = Arc::new(Activity::default());
        let service = {
            let (app, activity) = (shared.app.clone(), activity.clone());
            // The request's future is boxed: hyper needs it `Unpin` to hand the stream back when
            // parking, and a connection then holds no slot its size between requests. Admin and
            // broker requests have boxes of their own size, and the broker's rare, large steps
            // (exchanges, publishes, write checks, upstream handshakes) box their own state, so
            // that each request allocates and moves about 6 KB rather than 12 KB (BENCHMARKS.md).
            service_fn(move |req: Request<Incoming>| -> ServiceFuture {
                let app = app.clone();
                let in_flight = activity.begin(http_body::Body::is_end_stream(req.body()));
                if is_admin {
                    return Box::pin(async move {
                        Ok(admin::handle(app, req).await.map(|inner| Tracked { inner, _in_flight: in_flight }))
                    });
                }
                let face = face.clone();
                Box::pin(async move {
                    Ok(pipeline::handle(app, req, face).await.map(|inner| Tracked { inner, _in_flight: in_flight }))
                })
            })
        };
        // The protocol is the one ALPN chose (HTTP/2 over TLS needs ALPN: RFC 9113, 3.2), so
        // the connection never sniffs for a preface. HTTP/2's larger state is boxed: an idle
        // HTTP/1.1 connection does not carry a slot its size.
        if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
            Box::pin(serve_h2(&shared, tls, service, drain)).await;
        } else {
            serve_h1(&shared, tls, service, &activity, drain).await;
        }
    });
}

async fn serve_h2<S: ConnService>(shared: &Shared, tls: Box<Tls>, service: S, mut drain: Drain) {
    let conn = shared.http2.serve_connection(TokioIo::new(tls), service);
    tokio::pin!(conn);
    let ended = tokio::select! {
        ended = conn.as_mut() => ended,
        () = drain.stopped() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = ended {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Serves HTTP/1.1 on `tls`, parking the stream whenever it idles.
async fn serve_h1<S: ConnService>(shared: &Shared, tls: Box<Tls>, service: S, activity: &Activity, mut drain: Drain) {
    let idle_timeout = shared.app.config.server.client_timeout;
    let mut stream = Rewind { pending: Bytes::new(), inner: tls };
    loop {
        // Boxed: hyper's connection and its buffers exist only while it runs, and a parked
        // connection's task holds the stream and nothing else.
        let Some(mut parked) = Box::pin(run_h1(shared, stream, service.clone(), activity, &mut drain)).await else {
            return;
        };
        if parked.pending.is_empty() {
            tracing::debug!("parked an idle connection");
            let next = tokio::select! {
                next = tokio::time::timeout(idle_timeout, read_some(&mut parked.inner)) => next,
                () = drain.stopped() => return close(parked.inner).await,
            };
            match next {
                Ok(Ok(bytes)) if !bytes.is_empty() => parked.pending = bytes,
                // Closed by the client, failed, or idle for too long.
                _ => return close(parked.inner).await,
            }
        }
        stream = parked;
    }
}

/// The service a connection runs. Its future is `Unpin` (boxed), so that hyper can hand an
/// HTTP/1.1 stream back when it parks.
trait ConnService:
    hyper::service::Service<Request<Incoming>, Response = Response<Tracked>, Error = Infallible, Future = ServiceFuture>
    + Clone
    + Unpin
    + Send
    + 'static
{
}

impl<S> ConnService for S where
    S: hyper::service::Service<
            Request<Incoming>,
            Response = Response<Tracked>,
            Error = Infallible,
            Future = ServiceFuture,
        > + Clone
        + Unpin
        + Send
        + 'static
{
}

/// Runs one hyper connection on `stream` until it ends (`None`: the stream is closed) or
/// idles (`Some`: the stream, with any bytes hyper read and did not use).
async fn run_h1<S: ConnService>(
    shared: &Shared,
    stream: Rewind,
    service: S,
    activity: &Activity,
    drain: &mut Drain,
) -> Option<Rewind> {
    // A stream that came back with part of a request head is not parked again until a request
    // starts: hyper's head timeout then runs its course (a slow head gains at most one park
    // interval).
    let may_park = stream.pending.is_empty();
    let mut conn = shared.http1.serve_connection(TokioIo::new(stream), service);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + PARK_AFTER, PARK_AFTER);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let created = activity.started.load(Ordering::Relaxed);
    let mut seen = created;
    let (mut parking, mut stopping) = (false, false);
    let ended = loop {
        tokio::select! {
            biased;
            ended = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)) => break ended,
            () = drain.stopped(), if !stopping => {
                stopping = true;
                Pin::new(&mut conn).graceful_shutdown();
            }
            _ = tick.tick(), if !parking && !stopping => {
                let started = activity.started.load(Ordering::Relaxed);
                // Nothing started since the last tick and nothing in flight, at a message
                // boundary: after a bodiless request, or before any request on a stream that
                // came back without a partial head.
                let boundary = if started == created { may_park } else { activity.bodyless.load(Ordering::Relaxed) };
                if started == seen && activity.active.load(Ordering::Relaxed) == 0 && boundary {
                    // The connection is idle, so hyper ends it at once, writing nothing.
                    parking = true;
                    Pin::new(&mut conn).graceful_shutdown();
                }
                seen = started;
            }
        }
    };
    let hyper::server::conn::http1::Parts { io, read_buf, .. } = conn.into_parts();
    let mut stream = io.into_inner();
    if let Err(e) = ended {
        tracing::debug!(error = %e, "connection ended with an error");
        close(stream.inner).await;
        return None;
    }
    if !parking || stopping {
        close(stream.inner).await;
        return None;
    }
    // Bytes hyper read but did not use come first on the next connection.
    if !read_buf.is_empty() {
        stream.pending =
            if stream.pending.is_empty() { read_buf } else { [&read_buf[..], &stream.pending[..]].concat().into() };
    }
    Some(stream)
}

/// Waits for the next bytes from the client and returns them. The buffer exists only while a
/// read is attempted, so a parked connection holds none.
async fn read_some(tls: &mut Tls) -> io::Result<Bytes> {
    std::future::poll_fn(|cx| {
        let mut buf = [0u8; 4096];
        let mut read = ReadBuf::new(&mut buf);
        ready!(Pin::new(&mut *tls).poll_read(cx, &mut read))?;
        Poll::Ready(Ok(Bytes::copy_from_slice(read.filled())))
    })
    .await
}

/// Sends close_notify and closes, within a bounded time.
async fn close(mut tls: Box<Tls>) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, tls.shutdown()).await;
}

/// A stream that replays `pending` before reading from `inner`.
struct Rewind {
    pending: Bytes,
    inner: Box<Tls>,
}

impl AsyncRead for Rewind {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.pending.is_empty() {
            let n = self.pending.len().min(buf.remaining());
            buf.put_slice(&self.pending[..n]);
            self.pending.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
