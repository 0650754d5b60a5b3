//! The floor of the broker's stack, for the load benchmark: a reverse proxy that does nothing
//! but what nginx does in `benches/load/run.sh` (swap in a static `Authorization`, forward,
//! relay), built from the same parts as the broker: hyper 1, rustls on ring with the broker's
//! own TLS configs (`phantom_broker::support::net`), thread per core with `SO_REUSEPORT`
//! (`phantom_broker::server::bind`). No phantom, no policy, no audit, no scrubbing.
//!
//! The gap between it and nginx is the stack's; the gap between it and the broker is the
//! broker's own work. It is a measuring instrument, never a product: it checks nothing.
//!
//! ```text
//! bare_proxy PORT CERT KEY UPSTREAM_PORT CA AUTHORIZATION MODE
//! ```
//! MODE `legacy`: hyper-util's pooled client, as the broker uses. MODE `conn`: a per-worker
//! pool of hyper's own HTTP/1.1 connections (`hyper::client::conn`), no pool keys, no task per
//! request.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use phantom_broker::support::net::{self, Body, BoxError};
use std::cell::RefCell;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio_rustls::{TlsAcceptor, TlsConnector};

struct Setup {
    acceptor: TlsAcceptor,
    connector: TlsConnector,
    upstream: SocketAddr,
    authority: http::uri::Authority,
    authorization: HeaderValue,
    legacy: bool,
    tls: rustls::ClientConfig,
}

thread_local! {
    static CLIENT: RefCell<Option<net::HttpsClient>> = const { RefCell::new(None) };
    static POOL: RefCell<Vec<SendRequest<Body>>> = const { RefCell::new(Vec::new()) };
}

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [port, cert, key, upstream_port, ca, authorization, mode] = &args[..] else {
        return Err("usage: bare_proxy PORT CERT KEY UPSTREAM_PORT CA AUTHORIZATION legacy|conn".into());
    };
    let server = net::server_config(cert.as_ref(), key.as_ref())?;
    let mut server = Arc::unwrap_or_clone(server);
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tls = net::client_config(Some(ca.as_ref()))?;
    let up: u16 = upstream_port.parse().map_err(|_| "UPSTREAM_PORT")?;
    let setup = Arc::new(Setup {
        acceptor: TlsAcceptor::from(Arc::new(server)),
        connector: TlsConnector::from(Arc::new(tls.clone())),
        upstream: SocketAddr::from(([127, 0, 0, 1], up)),
        authority: format!("localhost:{up}").parse().map_err(|_| "authority")?,
        authorization: HeaderValue::from_str(authorization).map_err(|_| "AUTHORIZATION")?,
        legacy: mode == "legacy",
        tls,
    });
    let addr = SocketAddr::from(([127, 0, 0, 1], port.parse::<u16>().map_err(|_| "PORT")?));
    let workers: Vec<_> = (0..std::thread::available_parallelism().map_or(1, |n| n.get()))
        .map(|_| {
            let setup = setup.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
                rt.block_on(worker(setup, addr));
            })
        })
        .collect();
    workers.into_iter().for_each(|w| drop(w.join()));
    Ok(())
}

async fn worker(setup: Arc<Setup>, addr: SocketAddr) {
    let listener = phantom_broker::server::bind(addr).expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
    CLIENT.with(|c| *c.borrow_mut() = Some(net::https_client(setup.tls.clone(), std::time::Duration::from_secs(5))));
    loop {
        let Ok((tcp, _)) = listener.accept().await else { continue };
        let _ = tcp.set_nodelay(true);
        let setup = setup.clone();
        tokio::spawn(async move {
            let Ok(tls) = setup.acceptor.accept(tcp).await else { return };
            let service = hyper::service::service_fn(move |req| {
                let setup = setup.clone();
                async move { Ok::<_, std::convert::Infallible>(forward(&setup, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), service).await;
        });
    }
}

async fn forward(setup: &Setup, req: Request<Incoming>) -> Response<Body> {
    match send(setup, req).await {
        Ok(resp) => resp,
        Err(e) => {
            let mut resp = Response::new(net::full(format!("bad gateway: {e}\n")));
            *resp.status_mut() = http::StatusCode::BAD_GATEWAY;
            resp
        }
    }
}

async fn send(setup: &Setup, req: Request<Incoming>) -> Result<Response<Body>, BoxError> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut builder = Request::builder().method(parts.method);
    if setup.legacy {
        builder = builder
            .uri(Uri::builder().scheme("https").authority(setup.authority.clone()).path_and_query(path).build()?);
    } else {
        builder = builder.uri(path).header(header::HOST, setup.authority.as_str());
    }
    let mut up = builder.body(body.map_err(BoxError::from).boxed_unsync())?;
    for name in [header::ACCEPT, header::USER_AGENT] {
        if let Some(v) = parts.headers.get(&name) {
            up.headers_mut().insert(name, v.clone());
        }
    }
    up.headers_mut().insert(header::AUTHORIZATION, setup.authorization.clone());
    if setup.legacy {
        let client = CLIENT.with(|c| c.borrow().clone()).ok_or("no client")?;
        let resp = client.request(up).await?;
        return Ok(resp.map(|b| b.map_err(BoxError::from).boxed_unsync()));
    }
    let mut sender = checkout(setup).await?;
    let resp = sender.send_request(up).await?;
    // The connection goes back to the worker's pool once the response body is over.
    Ok(resp.map(|b| Returning { body: b, sender: Some(sender) }.boxed_unsync()))
}

/// A ready connection from the worker's pool, or a new one.
async fn checkout(setup: &Setup) -> Result<SendRequest<Body>, BoxError> {
    while let Some(mut sender) = POOL.with(|p| p.borrow_mut().pop()) {
        if sender.ready().await.is_ok() {
            return Ok(sender);
        }
    }
    let tcp = tokio::net::TcpStream::connect(setup.upstream).await?;
    tcp.set_nodelay(true)?;
    let tls = setup.connector.connect("localhost".try_into()?, tcp).await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

struct Returning {
    body: Incoming,
    sender: Option<SendRequest<Body>>,
}

impl http_body::Body for Returning {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        // hyper stops polling a body that says it has ended, so the end is either.
        if matches!(polled, Poll::Ready(None)) || self.body.is_end_stream() {
            if let Some(sender) = self.sender.take() {
                POOL.with(|p| p.borrow_mut().push(sender));
            }
        }
        polled.map(|f| f.map(|r| r.map_err(BoxError::from)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
