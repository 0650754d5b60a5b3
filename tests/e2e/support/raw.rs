//! Raw TLS sockets, for requests no well-behaved client would send.

use rustls::pki_types::ServerName;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A TLS connection to 127.0.0.1:`port`, trusting `ca`, offering `alpn`.
pub(crate) fn connect(port: u16, ca: &Path, alpn: &[&[u8]]) -> Tls {
    let mut cfg = phantom_broker::support::net::client_config(Some(ca)).unwrap();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    // A peer that stops reading fails the write instead of hanging the test.
    tcp.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

#[derive(Debug)]
pub(crate) struct RawResp {
    pub status: Option<u16>,
    pub text: String,
    /// The server closed the connection (or reset it) within the wait.
    pub closed: bool,
}

/// Reads what the server sends within `wait`, until it closes the connection.
pub(crate) fn read_all(tls: &mut Tls, wait: Duration) -> RawResp {
    let start = Instant::now();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let mut closed = false;
    while start.elapsed() < wait {
        match tls.read(&mut chunk) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.strip_prefix("HTTP/1.1 ").and_then(|r| r.get(..3)).and_then(|c| c.parse().ok());
    RawResp { status, text, closed }
}

/// Sends `request` as is on a fresh HTTP/1.1 connection and reads the answer.
pub(crate) fn send(port: u16, ca: &Path, request: &[u8]) -> RawResp {
    let mut tls = connect(port, ca, &[b"http/1.1"]);
    if tls.write_all(request).and_then(|()| tls.flush()).is_err() {
        return RawResp { status: None, text: String::new(), closed: true };
    }
    read_all(&mut tls, Duration::from_secs(5))
}

/// Reads exactly one HTTP/1.1 response (Content-Length or chunked framing) within `wait`,
/// leaving anything after it unread. `None` if the connection closed or nothing complete came.
pub(crate) fn read_response(tls: &mut Tls, wait: Duration) -> Option<(u16, String)> {
    let start = Instant::now();
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    let complete = |buf: &[u8]| -> bool {
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { return false };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let body = &buf[end + 4..];
        if head.contains("transfer-encoding: chunked") {
            return body.ends_with(b"\r\n0\r\n\r\n") || body == b"0\r\n\r\n";
        }
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        body.len() >= length
    };
    // One byte at a time: a test reads a few small responses, and must not consume the next.
    while start.elapsed() < wait {
        match tls.read(&mut byte) {
            Ok(0) => return None,
            Ok(_) => {
                buf.push(byte[0]);
                if complete(&buf) {
                    let text = String::from_utf8_lossy(&buf).into_owned();
                    let status = text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()?;
                    return Some((status, text));
                }
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return None,
        }
    }
    None
}
