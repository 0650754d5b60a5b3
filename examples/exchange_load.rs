//! Load for the benchmark (`benches/load/run.sh`): npm's exchange, each over a new TCP connection
//! with a full TLS handshake (the client keeps no TLS sessions, so nothing is resumed; wrk resumes
//! its sessions across reconnects). Each exchange spends its own pre-minted ID token. Prints one
//! JSON line; latencies in microseconds.
//!
//! The client checks the server's certificate by comparing it with the one expected (pinned),
//! and verifies no signatures, as wrk does not: on a machine where the load client shares the
//! cores with the broker, every signature it checks (two ECDSA P-256 verifications per
//! handshake, about 110 us each with ring) is CPU taken from the broker.
//!
//! Usage: exchange_load PORT SERVER_CERT_FILE TOKENS_FILE SECONDS CONCURRENCY

#![forbid(unsafe_code)]

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Shared {
    port: u16,
    tls: tokio_rustls::TlsConnector,
    tokens: Vec<String>,
    next: AtomicUsize,
    ok: AtomicU64,
    refused: AtomicU64,
    errors: AtomicU64,
    resumed: AtomicU64,
    latencies: Mutex<Vec<u32>>,
    deadline: Instant,
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

async fn exchange(s: &Shared, token: &str) -> Result<u16, Box<dyn std::error::Error>> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", s.port)).await?;
    tcp.set_nodelay(true)?;
    let mut tls = s.tls.connect(ServerName::try_from("127.0.0.1")?, tcp).await?;
    if tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
        s.resumed.fetch_add(1, Ordering::Relaxed);
    }
    let req = format!(
        "POST /-/npm/v1/oidc/token/exchange/package/pb-bench HTTP/1.1\r\nhost: 127.0.0.1\r\n\
         authorization: Bearer {token}\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
    );
    tls.write_all(req.as_bytes()).await?;
    let mut answer = Vec::with_capacity(2048);
    // The broker closes after answering; a missing close_notify still ends the read.
    let _ = tls.read_to_end(&mut answer).await;
    let status = answer.get(9..12).and_then(|c| std::str::from_utf8(c).ok()).and_then(|c| c.parse().ok());
    status.ok_or_else(|| "no HTTP status in the answer".into())
}

async fn worker(s: Arc<Shared>) {
    while Instant::now() < s.deadline {
        let i = s.next.fetch_add(1, Ordering::Relaxed);
        let Some(token) = s.tokens.get(i) else { return };
        let started = Instant::now();
        match exchange(&s, token).await {
            Ok(201) => s.ok.fetch_add(1, Ordering::Relaxed),
            Ok(_) => s.refused.fetch_add(1, Ordering::Relaxed),
            Err(_) => s.errors.fetch_add(1, Ordering::Relaxed),
        };
        let micros = u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX);
        s.latencies.lock().unwrap_or_else(|p| p.into_inner()).push(micros);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [port, cert, tokens, seconds, concurrency] = args.as_slice() else {
        eprintln!("usage: exchange_load PORT SERVER_CERT_FILE TOKENS_FILE SECONDS CONCURRENCY");
        std::process::exit(2);
    };
    let cert = phantom_broker::net::load_certs(std::path::Path::new(cert)).expect("server certificate")[0].clone();
    let provider = phantom_broker::net::provider();
    let pinned = Pinned { cert, schemes: provider.signature_verification_algorithms.supported_schemes() };
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(pinned))
        .with_no_client_auth();
    cfg.resumption = rustls::client::Resumption::disabled();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tokens: Vec<String> = std::fs::read_to_string(tokens)
        .expect("tokens file")
        .lines()
        .map(str::to_owned)
        .filter(|l| !l.is_empty())
        .collect();
    let secs: f64 = seconds.parse().expect("seconds");
    let shared = Arc::new(Shared {
        port: port.parse().expect("port"),
        tls: tokio_rustls::TlsConnector::from(Arc::new(cfg)),
        tokens,
        next: AtomicUsize::new(0),
        ok: AtomicU64::new(0),
        refused: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        resumed: AtomicU64::new(0),
        latencies: Mutex::new(Vec::new()),
        deadline: Instant::now() + Duration::from_secs_f64(secs),
    });
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let started = Instant::now();
    rt.block_on(async {
        let n: usize = concurrency.parse().expect("concurrency");
        let tasks: Vec<_> = (0..n).map(|_| tokio::spawn(worker(shared.clone()))).collect();
        for t in tasks {
            let _ = t.await;
        }
    });
    let elapsed = started.elapsed().as_secs_f64();
    let mut lat = shared.latencies.lock().unwrap_or_else(|p| p.into_inner()).clone();
    lat.sort_unstable();
    let pct =
        |p: f64| lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1))).copied().unwrap_or(0);
    let ok = shared.ok.load(Ordering::Relaxed);
    println!(
        "{{\"exchanges\":{ok},\"refused\":{},\"resumed\":{},\"tokens\":{},\"seconds\":{elapsed:.3},\"per_second\":{:.1},\"p50\":{},\"p99\":{},\"errors\":{},\"client_cpu_s\":{:.2}}}",
        shared.refused.load(Ordering::Relaxed),
        shared.resumed.load(Ordering::Relaxed),
        shared.tokens.len(),
        ok as f64 / elapsed,
        pct(0.5),
        pct(0.99),
        shared.errors.load(Ordering::Relaxed),
        own_cpu_seconds(),
    );
}

/// This process's CPU time (user and system) so far, from /proc.
fn own_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = [11, 12].iter().filter_map(|&i| fields.get(i)?.parse::<f64>().ok()).sum();
    ticks / 100.0
}
