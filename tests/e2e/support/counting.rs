//! A well-behaved keep-alive upstream on loopback that counts the connections it accepts and
//! can close every open one at once (as a registry's load balancer does to idle connections).

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub(crate) struct Counting {
    pub port: u16,
    accepted: Arc<AtomicUsize>,
    close: Arc<tokio::sync::Notify>,
    rt: Option<tokio::runtime::Runtime>,
}

impl Drop for Counting {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Counting {
    /// Serves TLS with `cert`/`key`: `…empty` answers 204 with no body, anything else 200 with a
    /// small JSON body.
    pub(crate) fn start(cert: &Path, key: &Path) -> Counting {
        let (rt, acceptor) = super::tls_server(cert, key);
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let close = Arc::new(tokio::sync::Notify::new());
        let (count, closing) = (accepted.clone(), close.clone());
        rt.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                count.fetch_add(1, Ordering::SeqCst);
                let (acceptor, closing) = (acceptor.clone(), closing.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let svc = service_fn(|req: Request<Incoming>| async move {
                        let resp = if req.uri().path().ends_with("empty") {
                            Response::builder().status(204).body(Full::new(Bytes::new()))
                        } else {
                            Response::builder()
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from_static(b"{\"name\":\"kept\"}")))
                        };
                        Ok::<_, std::convert::Infallible>(resp.unwrap())
                    });
                    let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), svc);
                    // Closing drops the connection: the socket closes under the broker's feet.
                    tokio::select! {
                        _ = conn => {}
                        () = closing.notified() => {}
                    }
                });
            }
        });
        Counting { port, accepted, close, rt: Some(rt) }
    }

    /// Connections accepted so far.
    pub(crate) fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Closes every open connection.
    pub(crate) fn close_all(&self) {
        self.close.notify_waiters();
    }
}
