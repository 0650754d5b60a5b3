//! Load for the forward-proxy benchmark (`benches/load/proxy.sh`): keep-alive GETs of one URL
//! over TLS, either straight to the URL's port on 127.0.0.1 (the registry face) or through an
//! HTTP `CONNECT` proxy on 127.0.0.1 (the forward proxy), with the same client either way, so
//! the two faces are compared on equal terms. Each of CONNECTIONS connections sends one request
//! at a time for SECONDS; bodies are read whole (hyper's HTTP/1.1 client: chunked or not).
//!
//! Prints one JSON line; latencies in microseconds; `client_cpu_s` is this process's own CPU.
//!
//! Usage: get_load URL CA_FILE SECONDS CONNECTIONS [PROXY_PORT|-] [AUTHORIZATION]

#![forbid(unsafe_code)]

#[path = "support/load.rs"]
mod load;
use load::{gather, own_cpu_seconds, percentile};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Error = Box<dyn std::error::Error + Send + Sync>;

struct Shared {
    url: http::Uri,
    authority: String,
    proxy: Option<u16>,
    authorization: Option<String>,
    tls: tokio_rustls::TlsConnector,
    deadline: Instant,
    ok: AtomicU64,
    errors: AtomicU64,
}

async fn open(s: &Shared) -> Result<SendRequest<Empty<Bytes>>, Error> {
    let host = s.url.host().ok_or("no host")?;
    let port = s.url.port_u16().unwrap_or(443);
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", s.proxy.unwrap_or(port))).await?;
    tcp.set_nodelay(true)?;
    if s.proxy.is_some() {
        tcp.write_all(format!("CONNECT {0} HTTP/1.1\r\nHost: {0}\r\n\r\n", s.authority).as_bytes()).await?;
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            if tcp.read(&mut byte).await? == 0 {
                return Err("the proxy closed".into());
            }
            head.push(byte[0]);
        }
        if !head.starts_with(b"HTTP/1.1 200") {
            return Err(format!("the proxy refused: {}", String::from_utf8_lossy(&head)).into());
        }
    }
    let tls = s.tls.connect(ServerName::try_from(host.to_owned())?, tcp).await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn worker(s: Arc<Shared>) -> Vec<u32> {
    let mut latencies = Vec::with_capacity(65536);
    let mut sender = None;
    while Instant::now() < s.deadline {
        let started = Instant::now();
        let result: Result<u16, Error> = async {
            if sender.is_none() {
                sender = Some(open(&s).await?);
            }
            let send = sender.as_mut().expect("opened");
            send.ready().await?;
            let mut req = http::Request::get(s.url.path()).header(http::header::HOST, &s.authority);
            if let Some(a) = &s.authorization {
                req = req.header(http::header::AUTHORIZATION, a);
            }
            let resp = send.send_request(req.body(Empty::new())?).await?;
            let status = resp.status().as_u16();
            resp.into_body().collect().await?;
            Ok(status)
        }
        .await;
        match result {
            Ok(200) => {
                s.ok.fetch_add(1, Ordering::Relaxed);
                latencies.push(u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX));
            }
            _ => {
                s.errors.fetch_add(1, Ordering::Relaxed);
                sender = None;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    latencies
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (url, ca, seconds, connections) = match args.as_slice() {
        [u, c, s, n, ..] => (u, c, s, n),
        _ => {
            eprintln!("usage: get_load URL CA_FILE SECONDS CONNECTIONS [PROXY_PORT|-] [AUTHORIZATION]");
            std::process::exit(2);
        }
    };
    let url: http::Uri = url.parse().expect("URL");
    let proxy = args.get(4).filter(|p| *p != "-").map(|p| p.parse().expect("proxy port"));
    let mut cfg = phantom_broker::support::net::client_config(Some(std::path::Path::new(ca))).expect("CA");
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let shared = Arc::new(Shared {
        authority: url.authority().expect("host").as_str().to_owned(),
        url,
        proxy,
        authorization: args.get(5).cloned(),
        tls: tokio_rustls::TlsConnector::from(Arc::new(cfg)),
        deadline: Instant::now() + Duration::from_secs_f64(seconds.parse().expect("seconds")),
        ok: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    });
    let started = Instant::now();
    let n: usize = connections.parse().expect("connections");
    let lat = gather(&rt, n, || worker(shared.clone()));
    let elapsed = started.elapsed().as_secs_f64();
    let pct = |p: f64| percentile(&lat, p);
    let ok = shared.ok.load(Ordering::Relaxed);
    println!(
        "{{\"requests\":{ok},\"seconds\":{elapsed:.3},\"per_second\":{:.1},\"p50\":{},\"p99\":{},\"errors\":{},\"client_cpu_s\":{:.2}}}",
        ok as f64 / elapsed,
        pct(0.5),
        pct(0.99),
        shared.errors.load(Ordering::Relaxed),
        own_cpu_seconds(),
    );
}
