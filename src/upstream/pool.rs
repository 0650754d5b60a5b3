//! The broker's own HTTP/1.1 connections to one upstream, kept per worker thread.
//!
//! Each worker has its own `Upstream`s (`server::WORKER_UPSTREAMS`), so each pool is used by one
//! thread and its connections' tasks run on that thread's runtime. A request takes the idle
//! connection used last; its response body puts the connection back once it has ended. Compared
//! with hyper-util's pooled client this saves, per request, the pool lookup by origin, a task
//! spawned to return the connection, and the `Host` header formatted anew (BENCHMARKS.md).
//!
//! HTTP/1.1 only (ALPN offers nothing else): the npm CLI speaks it to registries, and HTTP/2 to
//! the upstream cost the broker more CPU per request when measured.

use crate::support::net::{Body, BoxError};
use bytes::Bytes;
use http::{Request, Response};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Idle connections kept per upstream and worker.
const MAX_IDLE: usize = 64;
/// An idle connection older than this is closed rather than reused.
const IDLE_FOR: Duration = Duration::from_secs(60);

pub(super) struct Pool {
    host: String,
    port: u16,
    /// `None` for a plain `http://` upstream (loopback only).
    tls: Option<(TlsConnector, ServerName<'static>)>,
    connect_timeout: Duration,
    idle: IdleList,
}

struct Idle {
    sender: SendRequest<Body>,
    since: Instant,
}

/// A pool's idle connections, shared with the bodies that will return theirs.
type IdleList = Arc<Mutex<Vec<Idle>>>;

impl Pool {
    pub(super) fn new(url: &http::Uri, tls: rustls::ClientConfig, connect_timeout: Duration) -> Result<Pool, String> {
        let authority = url.authority().ok_or("upstream URL without host")?;
        // An IPv6 literal is bracketed in a URL, and neither a socket address nor a server name.
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_owned();
        let secure = match url.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err("upstream URL scheme must be https (or http on loopback)".into()),
        };
        let port = authority.port_u16().unwrap_or(if secure { 443 } else { 80 });
        let tls = if secure {
            let mut tls = tls;
            tls.alpn_protocols = vec![b"http/1.1".to_vec()];
            let name = ServerName::try_from(host.clone()).map_err(|e| format!("upstream host `{host}`: {e}"))?;
            Some((TlsConnector::from(Arc::new(tls)), name))
        } else {
            None
        };
        Ok(Pool { host, port, tls, connect_timeout, idle: Arc::new(Mutex::new(Vec::new())) })
    }

    /// Sends `req` (origin-form URI, `Host` set) on an idle connection or a new one.
    ///
    /// A reused connection can turn out closed (the upstream ends idle connections when it likes).
    /// If hyper had not started to write the request, it hands it back and the request goes on
    /// the next connection. If the connection failed after the request went out but before any
    /// answer, the request is lost; `again`, given only for requests that may be repeated,
    /// builds it anew for one more try, on a new connection.
    pub(super) async fn send(
        &self,
        mut req: Request<Body>,
        again: Option<&(dyn Fn() -> Option<Request<Body>> + Sync)>,
    ) -> Result<Response<Pooled>, BoxError> {
        // After a lost request, its repeat goes on a new connection: the pool's others may be
        // as stale. A new connection is not `reused`, so nothing is repeated twice.
        let mut fresh = false;
        loop {
            let taken = if fresh { None } else { self.take().await };
            let (mut sender, reused) = match taken {
                Some(sender) => (sender, true),
                // Boxed: a TLS handshake's state is large, and most requests find a connection.
                None => (Box::pin(self.connect()).await?, false),
            };
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let back = Some((sender, self.idle.clone()));
                    return Ok(resp.map(|body| Pooled::new(body, back)));
                }
                Err(mut e) => {
                    if let Some(unsent) = e.take_message().filter(|_| reused) {
                        req = unsent;
                        continue;
                    }
                    // The connection failed between the request and any answer (closed, reset,
                    // cut without close_notify); not an answer that was bad.
                    let lost = reused && !e.error().is_parse() && !e.error().is_user();
                    match again.filter(|_| lost).and_then(|again| again()) {
                        Some(repeat) => (req, fresh) = (repeat, true),
                        None => return Err(e.into_error().into()),
                    }
                }
            }
        }
    }

    /// The idle connection used last that is still open and ready.
    async fn take(&self) -> Option<SendRequest<Body>> {
        loop {
            let Idle { mut sender, since } = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()?;
            // Dropping a sender ends its idle connection.
            if sender.is_closed() || since.elapsed() > IDLE_FOR {
                continue;
            }
            if sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    async fn connect(&self) -> Result<SendRequest<Body>, BoxError> {
        let within = |what: &'static str| move |_| -> BoxError { format!("{what} timed out").into() };
        let connect = TcpStream::connect((self.host.as_str(), self.port));
        let tcp = tokio::time::timeout(self.connect_timeout, connect).await.map_err(within("connecting"))??;
        tcp.set_nodelay(true)?;
        let stream = match &self.tls {
            None => Stream::Plain(tcp),
            Some((connector, name)) => {
                let handshake = connector.connect(name.clone(), tcp);
                let tls = tokio::time::timeout(self.connect_timeout, handshake).await.map_err(within("TLS"))??;
                Stream::Tls(Box::new(tls))
            }
        };
        let (sender, conn) = http1::Builder::new().handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "an upstream connection ended with an error");
            }
        });
        Ok(sender)
    }
}

/// A response body that returns its connection to the pool once it has ended. A body dropped
/// before its end closes the connection (hyper cannot reuse it mid-message).
pub(crate) struct Pooled {
    body: Incoming,
    back: Option<(SendRequest<Body>, IdleList)>,
}

impl Pooled {
    fn new(body: Incoming, back: Option<(SendRequest<Body>, IdleList)>) -> Pooled {
        let mut pooled = Pooled { body, back };
        // hyper never polls a body that says it is empty (a 204, a 304, a HEAD's answer).
        if http_body::Body::is_end_stream(&pooled.body) {
            pooled.put_back();
        }
        pooled
    }

    fn put_back(&mut self) {
        if let Some((sender, idle)) = self.back.take() {
            if !sender.is_closed() {
                let mut idle = idle.lock().unwrap_or_else(|p| p.into_inner());
                if idle.len() < MAX_IDLE {
                    idle.push(Idle { sender, since: Instant::now() });
                }
            }
        }
    }
}

impl http_body::Body for Pooled {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            // A failed body leaves the connection in no state to reuse.
            Poll::Ready(Some(Err(_))) => self.back = None,
            Poll::Ready(None) => self.put_back(),
            // hyper stops polling a body that says it has ended, so that is an end too.
            Poll::Ready(Some(Ok(_))) if self.body.is_end_stream() => self.put_back(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A connection to the upstream: TLS, or plain TCP on loopback.
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
