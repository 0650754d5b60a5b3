//! The forward proxy's listener side: read one `CONNECT` head from a plain TCP connection,
//! open the tunnel only to a configured upstream's `host:port`, then terminate TLS in it with
//! that host's leaf certificate, after checking that the client's SNI names the same host.
//! Every refusal is answered (where HTTP still can be) and audited.

use super::shared::Shared;
use crate::audit::{Decision, Record};
use crate::proxy::{ConnectError, Tunnel};
use bytes::BytesMut;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// A `CONNECT` head larger than this is refused (a client's is a few hundred bytes).
const MAX_HEAD: usize = 8 * 1024;

/// The tunnel `tcp` asks for, with TLS established inside it; `None` when it was refused
/// (answered and audited here) or the client went away.
pub(super) async fn open(shared: &Shared, mut tcp: TcpStream) -> Option<(Arc<Tunnel>, Box<TlsStream<TcpStream>>)> {
    let app = &shared.app;
    let tunnels = shared.tunnels.as_ref()?;
    let timeout = app.config.server.client_timeout;
    let head = match tokio::time::timeout(timeout, read_head(&mut tcp)).await {
        Ok(Ok(head)) => head,
        Ok(Err(Head::TooLarge)) => {
            refuse(shared, &mut tcp, 431, None, "the CONNECT head is too large").await;
            return None;
        }
        Ok(Err(Head::Malformed)) => {
            refuse(shared, &mut tcp, 400, None, "the CONNECT head is not HTTP/1.1").await;
            return None;
        }
        Ok(Err(Head::EarlyData)) => {
            refuse(shared, &mut tcp, 400, None, "data sent before the tunnel was established").await;
            return None;
        }
        Ok(Err(Head::Closed)) | Err(_) => return None,
    };
    let tunnel = match tunnels.connect(&head.method, &head.target) {
        Ok(t) => t,
        Err(e) => {
            // Recorded only when it has the shape of a host and port: the target is the
            // caller's text.
            let target = matches!(e, ConnectError::NotAnUpstream).then_some(head.target.as_str());
            refuse(shared, &mut tcp, e.status(), target, &e.to_string()).await;
            return None;
        }
    };
    let established = b"HTTP/1.1 200 Connection established\r\n\r\n";
    if tcp.write_all(established).await.is_err() {
        return None;
    }
    let _ = tcp.set_nodelay(true);
    let acceptor = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp);
    let start = match tokio::time::timeout(timeout, acceptor).await {
        Ok(Ok(start)) => start,
        _ => return None,
    };
    let sni = start.client_hello().server_name().map(str::to_owned);
    if !tunnel.is_sni(sni.as_deref()) {
        // The TLS client is dropped without a certificate: the host it wants is not the one
        // the tunnel goes to.
        audit_refusal(shared, 421, Some(&tunnel.authority), "the TLS server name does not name the CONNECT host");
        return None;
    }
    let tls = match tunnels.tls(&tunnel) {
        Ok(tls) => tls,
        Err(e) => {
            tracing::error!(error = %e, "the proxy cannot serve its leaf certificate");
            return None;
        }
    };
    match tokio::time::timeout(timeout, start.into_stream(tls)).await {
        Ok(Ok(stream)) => Some((tunnel, Box::new(stream))),
        _ => None,
    }
}

struct ConnectHead {
    method: String,
    target: String,
}

enum Head {
    Closed,
    TooLarge,
    Malformed,
    /// Bytes after the head: a client must wait for the tunnel before it speaks TLS.
    EarlyData,
}

async fn read_head(tcp: &mut TcpStream) -> Result<ConnectHead, Head> {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        if buf.len() >= MAX_HEAD {
            return Err(Head::TooLarge);
        }
        let n = tcp.read_buf(&mut buf).await.map_err(|_| Head::Closed)?;
        if n == 0 {
            return Err(Head::Closed);
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Partial) => continue,
            Ok(httparse::Status::Complete(len)) => {
                if len != buf.len() {
                    return Err(Head::EarlyData);
                }
                if req.version != Some(1) {
                    return Err(Head::Malformed);
                }
                let (Some(method), Some(target)) = (req.method, req.path) else { return Err(Head::Malformed) };
                return Ok(ConnectHead { method: method.to_owned(), target: target.to_owned() });
            }
            Err(httparse::Error::TooManyHeaders) => return Err(Head::TooLarge),
            Err(_) => return Err(Head::Malformed),
        }
    }
}

/// Answers a refused `CONNECT` and closes.
async fn refuse(shared: &Shared, tcp: &mut TcpStream, status: u16, target: Option<&str>, reason: &str) {
    audit_refusal(shared, status, target, reason);
    let phrase = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        431 => "Request Header Fields Too Large",
        _ => "Refused",
    };
    let body = serde_json::json!({ "error": reason, "message": reason }).to_string();
    let answer = format!(
        "HTTP/1.1 {status} {phrase}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
        let _ = tcp.write_all(answer.as_bytes()).await;
        let _ = tcp.shutdown().await;
    })
    .await;
}

fn audit_refusal(shared: &Shared, status: u16, target: Option<&str>, reason: &str) {
    let app = &shared.app;
    let rec = Record {
        request_id: app.new_request_id(),
        method: Some("CONNECT".into()),
        path: target.map(str::to_owned),
        via: Some(crate::audit::Via::Proxy),
        decision: Decision::Deny,
        reason: Some(reason.to_owned()),
        status,
        ..Record::default()
    };
    tracing::debug!(status, reason, "refused a proxy connection");
    app.audit.write_queued(Arc::new(rec));
}
