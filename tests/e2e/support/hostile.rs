//! A hostile upstream registry on loopback: it redirects elsewhere, echoes the credential,
//! stalls, resets mid-body, fails writes and compresses answers. It records every
//! `Authorization` it receives, and so does the "elsewhere" it redirects to.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

pub(crate) struct Hostile {
    pub port: u16,
    pub elsewhere_port: u16,
    /// Authorization headers the hostile upstream received.
    pub seen: Arc<Mutex<Vec<String>>>,
    /// Requests that reached the host it redirects to.
    pub elsewhere: Arc<Mutex<Vec<String>>>,
    rt: Option<tokio::runtime::Runtime>,
}

impl Drop for Hostile {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

type Resp = Response<Full<Bytes>>;

fn text(status: u16, body: impl Into<Bytes>) -> Resp {
    Response::builder().status(status).header("content-type", "application/json").body(Full::new(body.into())).unwrap()
}

impl Hostile {
    /// Serves TLS with `cert`/`key` (which may come from a CA the broker does not trust).
    pub(crate) fn start(cert: &Path, key: &Path) -> Hostile {
        let (rt, acceptor) = super::tls_server(cert, key);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let elsewhere = Arc::new(Mutex::new(Vec::new()));
        let (listener, other) = rt.block_on(async {
            (
                tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
                tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
            )
        });
        let port = listener.local_addr().unwrap().port();
        let elsewhere_port = other.local_addr().unwrap().port();

        // The place redirects point to: it only records that someone came.
        let (acc2, log) = (acceptor.clone(), elsewhere.clone());
        rt.spawn(async move {
            loop {
                let Ok((tcp, _)) = other.accept().await else { return };
                let (acc2, log) = (acc2.clone(), log.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acc2.accept(tcp).await else { return };
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let log = log.clone();
                        async move {
                            let auth = req
                                .headers()
                                .get("authorization")
                                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
                            log.lock().unwrap().push(format!("{} {:?}", req.uri(), auth));
                            Ok::<_, std::convert::Infallible>(text(200, "{}"))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });

        let seen2 = seen.clone();
        rt.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let (acceptor, seen) = (acceptor.clone(), seen2.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                    // Peek at the request line to pick the misbehaviour that needs the raw socket.
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    use tokio::io::AsyncReadExt;
                    while !head.ends_with(b"\r\n\r\n") && head.len() < 64 * 1024 {
                        if tls.read(&mut byte).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let head_text = String::from_utf8_lossy(&head).into_owned();
                    if let Some(auth) = head_text.lines().find_map(|l| {
                        l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("authorization")).map(|(_, v)| v.trim().to_owned())
                    }) {
                        seen.lock().unwrap().push(auth);
                    }
                    let line = head_text.lines().next().unwrap_or_default().to_owned();
                    let auth = seen.lock().unwrap().last().cloned().unwrap_or_default();
                    let response: Vec<u8> = if line.contains("/@hostile%2fstall") {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        return;
                    } else if line.contains("/@hostile%2freset") || line.contains("/@hostile/reset/-/") {
                        let _ = tls.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"partial\":").await;
                        let _ = tls.flush().await;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        return; // dropped mid-body
                    } else if line.contains("/@hostile%2fredirect") {
                        format!("HTTP/1.1 302 Found\r\nlocation: https://127.0.0.1:{elsewhere_port}/steal\r\ncontent-length: 0\r\n\r\n").into_bytes()
                    } else if line.contains("/@hostile%2fecho") {
                        let body = format!("{{\"you_sent\":\"{auth}\",\"again\":\"{auth}\"}}");
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-echo: {auth}\r\nset-cookie: s={auth}\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        )
                        .into_bytes()
                    } else if line.contains("/@hostile%2fgzip") {
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: gzip\r\ncontent-length: 4\r\n\r\n\x1f\x8b\x08\x00".to_vec()
                    } else if line.starts_with("PUT ") && line.contains("/@hostile%2fearly") {
                        // Refuses a write from its head, without reading the body.
                        b"HTTP/1.1 413 Payload Too Large\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: 19\r\n\r\n{\"error\":\"too big\"}".to_vec()
                    } else if line.starts_with("PUT ") && line.contains("/@hostile%2ffail") {
                        b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: 2\r\n\r\n{}".to_vec()
                    } else {
                        b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}".to_vec()
                    };
                    let _ = tls.write_all(&response).await;
                    let _ = tls.flush().await;
                    if line.contains("/@hostile%2fearly") {
                        // Lingers, reading what the client still sends, as a registry would, so
                        // that the answer is not lost to a reset.
                        let mut sink = vec![0u8; 64 * 1024];
                        let linger = async { while tls.read(&mut sink).await.is_ok_and(|n| n > 0) {} };
                        let _ = tokio::time::timeout(Duration::from_secs(2), linger).await;
                    }
                    let _ = tls.shutdown().await;
                });
            }
        });
        Hostile { port, elsewhere_port, seen, elsewhere, rt: Some(rt) }
    }
}
