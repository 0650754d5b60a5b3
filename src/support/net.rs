//! TLS and HTTP plumbing shared by the listener, the upstream client and the OIDC fetcher:
//! rustls on the ring provider, system roots plus configured CAs, pooled hyper clients.

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of every request and response the broker builds.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;
pub type HttpsClient = Client<HttpsConnector<HttpConnector>, Body>;

/// ring, with the AES-128-GCM suites first. They are as strong as the key exchange and the
/// signatures beside them (128-bit), and cheaper on both legs: 10 AES rounds rather than 14
/// for every byte, and a TLS 1.3 key schedule on SHA-256, which the CPU's SHA extensions run,
/// rather than SHA-384 (about a tenth of a full handshake's CPU). BoringSSL and Go order them
/// the same way. Every suite of ring's default list stays offered.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.sort_by_key(|suite| match suite.suite() {
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => 0,
        rustls::CipherSuite::TLS13_AES_256_GCM_SHA384 => 1,
        rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => 2,
        rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        | rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 3,
        _ => 4,
    });
    Arc::new(provider)
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// The one JSON response the broker writes itself (an exchange, a refusal, the admin API, a
/// staged item): `Content-Type: application/json`, never cached.
pub fn json_reply(status: http::StatusCode, json: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(full(json));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    headers.insert(http::header::CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
    resp
}

/// Why a body could not be read whole.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("the body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the body came too slowly")]
    Timeout,
    #[error("{0}")]
    Failed(String),
}

/// The one body reader for bodies the broker keeps whole (an exchange, an admin request, an
/// answer it reads before relaying it): at most `max` bytes. A write's body goes through the
/// write gate instead; a slow sender is cut off by wrapping `body` in `IdleTimeout`.
pub async fn read_body<B>(body: B, max: usize) -> Result<Bytes, ReadError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let mut body = std::pin::pin!(body);
    // One data frame (most bodies) is kept as it came; more are gathered.
    let mut first: Option<Bytes> = None;
    let mut more = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            let e: BoxError = e.into();
            if e.is::<BodyTimeout>() {
                ReadError::Timeout
            } else {
                ReadError::Failed(error_chain(&*e))
            }
        })?;
        let Ok(data) = frame.into_data() else { continue };
        let held = first.as_ref().map_or(0, Bytes::len) + more.len();
        if held + data.len() > max {
            return Err(ReadError::TooLarge(max));
        }
        match first.take() {
            None if more.is_empty() => first = Some(data),
            None => more.extend_from_slice(&data),
            Some(kept) => {
                more.extend_from_slice(&kept);
                more.extend_from_slice(&data);
            }
        }
    }
    Ok(first.unwrap_or_else(|| more.freeze()))
}

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificates in the file", path.display()));
    }
    Ok(certs)
}

/// The listener's TLS: TLS 1.2 and 1.3, HTTP/2 and HTTP/1.1 by ALPN.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
    let certs = load_certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    server_config_from(certs, key).map_err(|e| format!("{}: {e}", cert.display()))
}

/// The listener's TLS for a chain and key already in memory (the proxy's minted leaves).
pub(crate) fn server_config_from(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, String> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| e.to_string())?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // The broker's order of cipher suites decides, not the client's (see `provider`).
    cfg.ignore_client_order = true;
    Ok(Arc::new(cfg))
}

fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::warn!(error = %e, "could not load some system root certificates");
        }
        found.certs
    })
}

/// Client TLS that trusts the system roots plus `extra_ca`, if given.
pub fn client_config(extra_ca: Option<&Path>) -> Result<ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(system_roots().iter().cloned());
    if let Some(path) = extra_ca {
        for cert in load_certs(path)? {
            roots.add(cert).map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A pooled client over `tls`. It never follows redirects (hyper does not).
pub fn https_client(tls: ClientConfig, connect_timeout: Duration) -> HttpsClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(64)
        .build(connector)
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("timed out")]
    Timeout,
    #[error("request failed: {0}")]
    Failed(String),
    #[error("answered with status {0}")]
    Status(u16),
    #[error("the response is larger than {0} bytes")]
    TooLarge(usize),
}

/// Sends `req` and collects at most `max` bytes of the answer, all within `timeout`.
pub async fn fetch(
    client: &HttpsClient,
    req: Request<Body>,
    timeout: Duration,
    max: usize,
) -> Result<(http::response::Parts, Bytes), FetchError> {
    let work = async {
        let resp: Response<_> = client.request(req).await.map_err(|e| FetchError::Failed(error_chain(&e)))?;
        let (parts, body) = resp.into_parts();
        let bytes = read_body(body, max).await.map_err(|e| match e {
            ReadError::TooLarge(max) => FetchError::TooLarge(max),
            other => FetchError::Failed(other.to_string()),
        })?;
        Ok((parts, bytes))
    };
    tokio::time::timeout(timeout, work).await.map_err(|_| FetchError::Timeout)?
}

/// GETs a JSON document that must answer 200.
pub async fn get_json(client: &HttpsClient, uri: &Uri, timeout: Duration, max: usize) -> Result<Bytes, FetchError> {
    let req = Request::get(uri.clone())
        .header(http::header::ACCEPT, "application/json")
        .body(empty())
        .map_err(|e| FetchError::Failed(e.to_string()))?;
    let (parts, body) = fetch(client, req, timeout, max).await?;
    if parts.status != http::StatusCode::OK {
        return Err(FetchError::Status(parts.status.as_u16()));
    }
    Ok(body)
}

/// A request body fed from a channel, for bodies forwarded while they are still being read
/// and checked. It never announces a length, so an HTTP/1.1 peer gets it chunked, and it ends
/// only when its sender says so (`BodySender::finish`): a sender dropped for any other reason
/// (a refusal, a failed read, a caller that went away) fails the body, and the peer never sees
/// the request complete.
pub(crate) struct ChannelBody {
    rx: tokio::sync::mpsc::Receiver<Chunk>,
    ended: bool,
}

enum Chunk {
    Data(Bytes),
    End,
}

/// Feeds a `ChannelBody`.
pub(crate) struct BodySender {
    tx: tokio::sync::mpsc::Sender<Chunk>,
}

/// The body's reader (the upstream connection) is gone.
#[derive(Debug)]
pub(crate) struct ReaderGone;

impl ChannelBody {
    /// A body, and the sender that feeds it.
    pub(crate) fn new() -> (BodySender, ChannelBody) {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        (BodySender { tx }, ChannelBody { rx, ended: false })
    }
}

impl BodySender {
    /// Sends the next bytes, waiting while the channel is full.
    pub(crate) async fn send(&self, data: Bytes) -> Result<(), ReaderGone> {
        self.tx.send(Chunk::Data(data)).await.map_err(|_| ReaderGone)
    }

    /// Ends the body: the request is complete.
    pub(crate) async fn finish(self) -> Result<(), ReaderGone> {
        self.tx.send(Chunk::End).await.map_err(|_| ReaderGone)
    }
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        if self.ended {
            return std::task::Poll::Ready(None);
        }
        self.rx.poll_recv(cx).map(|chunk| match chunk {
            Some(Chunk::Data(data)) => Some(Ok(http_body::Frame::data(data))),
            Some(Chunk::End) => {
                self.ended = true;
                None
            }
            None => Some(Err("the body was cut off before its end".into())),
        })
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }
}

/// A body that fails when its sender goes quiet for longer than `timeout` between frames:
/// slow-loris uploads cannot hold a request (and its buffers) open forever.
///
/// The timer is armed only while the body waits for its sender: a frame that is ready when
/// polled (a small response arrives whole) costs no clock read and no timer. The quiet time is
/// counted from the first poll that finds nothing to read.
pub(crate) struct IdleTimeout<B> {
    inner: B,
    timeout: Duration,
    /// Made at the first wait and reused (re-armed) for each later one.
    deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    armed: bool,
}

impl<B> IdleTimeout<B> {
    pub(crate) fn new(inner: B, timeout: Duration) -> IdleTimeout<B> {
        IdleTimeout { inner, timeout, deadline: None, armed: false }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the client sent nothing for too long")]
pub(crate) struct BodyTimeout;

impl<B> http_body::Body for IdleTimeout<B>
where
    B: http_body::Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<B::Data>, BoxError>>> {
        use std::task::Poll;
        if let Poll::Ready(frame) = std::pin::Pin::new(&mut self.inner).poll_frame(cx) {
            self.armed = false;
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let this = &mut *self;
        if !this.armed {
            let at = tokio::time::Instant::now() + this.timeout;
            match &mut this.deadline {
                Some(deadline) => deadline.as_mut().reset(at),
                None => this.deadline = Some(Box::pin(tokio::time::sleep_until(at))),
            }
            this.armed = true;
        }
        match this.deadline.as_mut().map(|d| std::future::Future::poll(d.as_mut(), cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Some(Err(BodyTimeout.into()))),
            _ => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// What a request's `Authorization` header holds, read the one way every face of the broker
/// reads it (registry, exchanges, admin): the scheme is case-insensitive (RFC 9110, 11.1), one
/// or more spaces separate it from the token, and more than one header is an error.
#[derive(Debug, PartialEq, Eq)]
pub enum Bearer<'a> {
    /// No `Authorization` header.
    Absent,
    /// `Bearer <token>`.
    Token(&'a str),
    /// More than one `Authorization` header.
    Repeated,
    /// Another scheme, or no token: never forwarded.
    NotBearer,
}

pub fn bearer(headers: &http::HeaderMap) -> Bearer<'_> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let Some(value) = values.next() else { return Bearer::Absent };
    if values.next().is_some() {
        return Bearer::Repeated;
    }
    let Ok(value) = value.to_str() else { return Bearer::NotBearer };
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() => {
            Bearer::Token(token.trim())
        }
        _ => Bearer::NotBearer,
    }
}

/// An error and its causes on one line (hyper's errors hide the interesting part in `source`).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Whether `host` is a loopback name or address (`localhost`, `127.0.0.0/8`, `::1`).
pub fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_one_way() {
        let read = |values: &[&str]| {
            let mut h = http::HeaderMap::new();
            for v in values {
                h.append(http::header::AUTHORIZATION, http::HeaderValue::from_str(v).unwrap());
            }
            match bearer(&h) {
                Bearer::Token(t) => Ok(t.to_owned()),
                other => Err(format!("{other:?}")),
            }
        };
        for v in ["Bearer abc", "bearer abc", "BEARER abc", "Bearer   abc", "Bearer abc  "] {
            assert_eq!(read(&[v]), Ok("abc".to_owned()), "{v}");
        }
        for v in ["Basic abc", "Bearer", "Bearer ", "Bearerabc", "Token abc", "abc"] {
            assert_eq!(read(&[v]), Err("NotBearer".to_owned()), "{v}");
        }
        assert_eq!(read(&[]), Err("Absent".to_owned()));
        assert_eq!(read(&["Bearer a", "Bearer a"]), Err("Repeated".to_owned()));
    }

    #[tokio::test]
    async fn the_body_reader_keeps_frames_in_order_within_its_bound() {
        let frames = |parts: &[&'static [u8]]| {
            let (tx, body) = ChannelBody::new();
            let parts = parts.to_vec();
            tokio::spawn(async move {
                for p in parts {
                    tx.send(Bytes::from_static(p)).await.unwrap();
                }
                tx.finish().await.unwrap();
            });
            body
        };
        assert_eq!(&read_body(frames(&[b"whole"]), 5).await.unwrap()[..], b"whole");
        assert_eq!(&read_body(frames(&[b"a", b"", b"bc", b"d"]), 4).await.unwrap()[..], b"abcd");
        assert_eq!(&read_body(frames(&[]), 4).await.unwrap()[..], b"");
        assert!(matches!(read_body(frames(&[b"ab", b"cde"]), 4).await, Err(ReadError::TooLarge(4))));
        // A quiet sender is a timeout, told apart from a broken one.
        let (tx, body) = ChannelBody::new();
        tx.send(Bytes::from_static(b"a")).await.unwrap();
        let read = read_body(IdleTimeout::new(body, Duration::from_millis(50)), 10).await;
        assert!(matches!(read, Err(ReadError::Timeout)), "{read:?}");
        drop(tx);
    }

    #[tokio::test]
    async fn an_idle_timeout_counts_the_quiet_between_frames_not_the_whole_body() {
        // Ten frames 60 ms apart under a 500 ms timeout: the body takes longer than the
        // timeout, but no wait does, so it arrives whole.
        let (tx, body) = ChannelBody::new();
        tokio::spawn(async move {
            for i in 0..10u8 {
                tokio::time::sleep(Duration::from_millis(60)).await;
                tx.send(Bytes::from(vec![i])).await.unwrap();
            }
            tx.finish().await.unwrap();
        });
        let got = IdleTimeout::new(body, Duration::from_millis(500)).collect().await.unwrap().to_bytes();
        assert_eq!(&got[..], &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);

        // A sender that goes quiet after one frame fails the body once the timeout has passed.
        let (tx, body) = ChannelBody::new();
        tx.send(Bytes::from_static(b"a")).await.unwrap();
        let started = tokio::time::Instant::now();
        let err = IdleTimeout::new(body, Duration::from_millis(200)).collect().await.unwrap_err();
        assert!(err.is::<BodyTimeout>(), "{err}");
        assert!(started.elapsed() >= Duration::from_millis(200));
        drop(tx);
    }

    #[tokio::test]
    async fn a_channel_body_ends_only_when_its_sender_finishes_it() {
        let (tx, body) = ChannelBody::new();
        tx.send(Bytes::from_static(b"ab")).await.unwrap();
        tx.finish().await.unwrap();
        assert_eq!(&body.collect().await.unwrap().to_bytes()[..], b"ab");
        // A sender dropped without finishing fails the body, after what it sent.
        let (tx, mut body) = ChannelBody::new();
        tx.send(Bytes::from_static(b"ab")).await.unwrap();
        drop(tx);
        assert_eq!(&body.frame().await.unwrap().unwrap().into_data().unwrap()[..], b"ab");
        assert!(body.frame().await.unwrap().is_err(), "a dropped sender ended the body cleanly");
    }
}
