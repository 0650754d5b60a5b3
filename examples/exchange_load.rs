//! Load for the benchmark (`benches/load/run.sh`): npm's exchange, each spending its own
//! pre-minted ID token. Two modes:
//!
//! - `full` (the default): each exchange over a new TCP connection with a full TLS handshake (the
//!   client keeps no TLS sessions, so nothing is resumed; wrk resumes its sessions across
//!   reconnects);
//! - `keep-alive`: each of CONCURRENCY connections sends its exchanges one after another, one in
//!   flight at a time, as wrk does, but with every request written out before the clock starts:
//!   per exchange, the client only writes bytes and reads a response. wrk calls a Lua function
//!   per request instead, which costs it about half the broker's own CPU per exchange, on the same
//!   cores.
//!
//! Prints one JSON line; latencies in microseconds (failed exchanges left out); `client_cpu_s`
//! is this process's own CPU over its whole life, reading the tokens included, as the benchmark
//! counts wrk's.
//!
//! The client checks the server's certificate by comparing it with the one expected (pinned),
//! and verifies no signatures, as wrk does not: on a machine where the load client shares the
//! cores with the broker, every signature it checks (two ECDSA P-256 verifications per
//! handshake, about 110 us each with ring) is CPU taken from the broker.
//!
//! Usage: exchange_load PORT SERVER_CERT_FILE TOKENS_FILE SECONDS CONCURRENCY [full|keep-alive]

#![forbid(unsafe_code)]

#[path = "support/load.rs"]
mod load;
use load::{gather, own_cpu_seconds, percentile};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;
type Error = Box<dyn std::error::Error + Send + Sync>;

struct Shared {
    port: u16,
    tls: tokio_rustls::TlsConnector,
    /// One whole request per token, built before the clock starts.
    requests: Vec<Vec<u8>>,
    next: AtomicUsize,
    ok: AtomicU64,
    refused: AtomicU64,
    errors: AtomicU64,
    resumed: AtomicU64,
    deadline: Instant,
}

impl Shared {
    fn count(&self, status: Result<u16, Error>) {
        let counter = match status {
            Ok(201) => &self.ok,
            Ok(_) => &self.refused,
            Err(_) => &self.errors,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The next unspent request, while the run lasts.
    fn take(&self) -> Option<&[u8]> {
        if Instant::now() >= self.deadline {
            return None;
        }
        self.requests.get(self.next.fetch_add(1, Ordering::Relaxed)).map(Vec::as_slice)
    }
}

/// Accepts exactly the expected certificate and checks no signature (a load tool's trade, not a
/// client's: it proves nothing about who holds the key).
#[derive(Debug)]
struct Pinned {
    cert: CertificateDer<'static>,
    /// Asked for on every handshake: listed once.
    schemes: Vec<SignatureScheme>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.cert.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("not the pinned certificate".into()))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify_tls13_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes.clone()
    }
}

async fn connect(s: &Shared) -> Result<Tls, Error> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", s.port)).await?;
    tcp.set_nodelay(true)?;
    let tls = s.tls.connect(ServerName::try_from("127.0.0.1")?, tcp).await?;
    if tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
        s.resumed.fetch_add(1, Ordering::Relaxed);
    }
    Ok(tls)
}

/// One exchange on a new connection, which the broker closes after answering.
async fn exchange_closing(s: &Shared, request: &[u8]) -> Result<u16, Error> {
    let mut tls = connect(s).await?;
    tls.write_all(request).await?;
    let mut answer = Vec::with_capacity(2048);
    // A missing close_notify still ends the read.
    let _ = tls.read_to_end(&mut answer).await;
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    response.parse(&answer)?;
    response.code.ok_or_else(|| "no HTTP status in the answer".into())
}

/// What became of an exchange on a kept connection.
enum Kept {
    /// The response's status, and whether the connection can carry the next request.
    Answered(u16, bool),
    /// The server had closed the connection before any of the response came (as servers may do
    /// with an idle kept connection): the request can go again on a new one.
    ClosedBefore,
}

/// One exchange on a kept connection: the whole response is read (its length from
/// `content-length`; the broker does not chunk these), so the next request can follow.
async fn exchange_kept(tls: &mut Tls, buf: &mut Vec<u8>, request: &[u8]) -> Result<Kept, Error> {
    if tls.write_all(request).await.is_err() {
        return Ok(Kept::ClosedBefore);
    }
    buf.clear();
    loop {
        if buf.len() == buf.capacity() {
            buf.reserve(4096);
        }
        let read = match tls.read_buf(buf).await {
            Ok(n) => n,
            Err(_) if buf.is_empty() => 0,
            Err(e) => return Err(e.into()),
        };
        if read == 0 {
            if buf.is_empty() {
                return Ok(Kept::ClosedBefore);
            }
            return Err("the connection closed mid-response".into());
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        let httparse::Status::Complete(head) = response.parse(buf)? else { continue };
        let length = response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok())
            .ok_or("a response without content-length")?;
        if buf.len() > head + length {
            return Err("more than one response".into());
        }
        if buf.len() == head + length {
            let close = response
                .headers
                .iter()
                .any(|h| h.name.eq_ignore_ascii_case("connection") && h.value.eq_ignore_ascii_case(b"close"));
            return Ok(Kept::Answered(response.code.ok_or("no HTTP status")?, !close));
        }
    }
}

async fn worker(s: Arc<Shared>, keep_alive: bool) -> Vec<u32> {
    let mut latencies = Vec::with_capacity(65536);
    let mut kept: Option<Tls> = None;
    let mut buf = Vec::with_capacity(4096);
    while let Some(request) = s.take() {
        let started = Instant::now();
        let status = if keep_alive {
            kept_exchange(&s, &mut kept, &mut buf, request).await
        } else {
            exchange_closing(&s, request).await
        };
        if status.is_ok() {
            latencies.push(u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX));
        }
        s.count(status);
    }
    latencies
}

/// An exchange on the worker's kept connection (made first if there is none). A request that
/// found its kept connection closed goes once more on a new one; a connection is kept only after
/// a whole response that did not ask to close it.
async fn kept_exchange(s: &Shared, kept: &mut Option<Tls>, buf: &mut Vec<u8>, request: &[u8]) -> Result<u16, Error> {
    for fresh in [false, true] {
        let mut tls = match kept.take() {
            Some(tls) if !fresh => tls,
            _ => connect(s).await?,
        };
        match exchange_kept(&mut tls, buf, request).await? {
            Kept::Answered(status, reusable) => {
                if reusable {
                    *kept = Some(tls);
                }
                return Ok(status);
            }
            Kept::ClosedBefore => continue,
        }
    }
    Err("closed before answering, on a new connection too".into())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (port, cert, tokens, seconds, concurrency, mode) = match args.as_slice() {
        [p, c, t, s, n] => (p, c, t, s, n, "full"),
        [p, c, t, s, n, m] if m == "full" || m == "keep-alive" => (p, c, t, s, n, m.as_str()),
        _ => {
            eprintln!("usage: exchange_load PORT SERVER_CERT_FILE TOKENS_FILE SECONDS CONCURRENCY [full|keep-alive]");
            std::process::exit(2);
        }
    };
    let keep_alive = mode == "keep-alive";
    let cert =
        phantom_broker::support::net::load_certs(std::path::Path::new(cert)).expect("server certificate")[0].clone();
    let provider = phantom_broker::support::net::provider();
    let pinned = Pinned { cert, schemes: provider.signature_verification_algorithms.supported_schemes() };
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(pinned))
        .with_no_client_auth();
    cfg.resumption = rustls::client::Resumption::disabled();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let requests: Vec<Vec<u8>> = std::fs::read_to_string(tokens)
        .expect("tokens file")
        .lines()
        .filter(|l| !l.is_empty())
        .map(|token| {
            format!(
                "POST /-/npm/v1/oidc/token/exchange/package/pb-bench HTTP/1.1\r\nhost: 127.0.0.1\r\n\
                 authorization: Bearer {token}\r\nconnection: {connection}\r\ncontent-length: 0\r\n\r\n"
            )
            .into_bytes()
        })
        .collect();
    let secs: f64 = seconds.parse().expect("seconds");
    let n: usize = concurrency.parse().expect("concurrency");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let shared = Arc::new(Shared {
        port: port.parse().expect("port"),
        tls: tokio_rustls::TlsConnector::from(Arc::new(cfg)),
        requests,
        next: AtomicUsize::new(0),
        ok: AtomicU64::new(0),
        refused: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        resumed: AtomicU64::new(0),
        deadline: Instant::now() + Duration::from_secs_f64(secs),
    });
    let started = Instant::now();
    let lat = gather(&rt, n, || worker(shared.clone(), keep_alive));
    let elapsed = started.elapsed().as_secs_f64();
    let pct = |p: f64| percentile(&lat, p);
    let ok = shared.ok.load(Ordering::Relaxed);
    println!(
        "{{\"exchanges\":{ok},\"refused\":{},\"resumed\":{},\"tokens\":{},\"seconds\":{elapsed:.3},\"per_second\":{:.1},\"p50\":{},\"p99\":{},\"errors\":{},\"client_cpu_s\":{:.2}}}",
        shared.refused.load(Ordering::Relaxed),
        shared.resumed.load(Ordering::Relaxed),
        shared.requests.len(),
        ok as f64 / elapsed,
        pct(0.5),
        pct(0.99),
        shared.errors.load(Ordering::Relaxed),
        own_cpu_seconds(),
    );
}
