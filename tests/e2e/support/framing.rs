//! One request body, framed the ways a hostile caller could frame it: HTTP/1.1 with a
//! Content-Length or chunked (chunks of any size, extensions, trailers), and HTTP/2 DATA frames
//! of any size, the end of the stream on the last data, on an empty frame, or on trailers.

use bytes::Bytes;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

/// How the end of an HTTP/2 request body is signalled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum H2End {
    /// END_STREAM on the frame carrying the last bytes.
    OnLastData,
    /// Every byte in frames without END_STREAM, then one empty DATA frame with END_STREAM.
    EmptyFrame,
    /// Every byte in data frames, then trailers (HEADERS with END_STREAM).
    Trailers,
}

/// A way to frame a body.
#[derive(Debug, Clone)]
pub(crate) enum Framing {
    /// HTTP/1.1 with `content-length`, written to the socket in pieces of these sizes (cycled).
    Length(Vec<usize>),
    /// HTTP/1.1 `transfer-encoding: chunked`, chunks of these sizes (cycled; a 0 in the list
    /// is skipped, as it would end the body), with a chunk extension and, optionally, trailers.
    Chunked { sizes: Vec<usize>, trailers: bool },
    /// HTTP/2, DATA frames of these sizes (cycled; 0 sends an empty frame).
    H2 { sizes: Vec<usize>, end: H2End },
}

impl Framing {
    /// Every framing the write-integrity tests try: sizes 0, 1, odd and large.
    pub(crate) fn all() -> Vec<Framing> {
        vec![
            Framing::Length(vec![usize::MAX]),
            Framing::Length(vec![1, 7, 4093]),
            Framing::Chunked { sizes: vec![1], trailers: false },
            Framing::Chunked { sizes: vec![7, 1, 4093, 65_536], trailers: true },
            Framing::H2 { sizes: vec![16_384], end: H2End::OnLastData },
            Framing::H2 { sizes: vec![16_384], end: H2End::EmptyFrame },
            Framing::H2 { sizes: vec![1, 0, 7, 0, 4093], end: H2End::EmptyFrame },
            Framing::H2 { sizes: vec![13, 16_384, 0], end: H2End::Trailers },
        ]
    }
}

fn pieces(body: &[u8], sizes: &[usize]) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut rest = body;
    for &size in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let n = size.min(rest.len());
        out.push(Bytes::copy_from_slice(&rest[..n]));
        rest = &rest[n..];
    }
    out
}

/// What the broker answered.
#[derive(Debug)]
pub(crate) struct Answer {
    pub status: u16,
    pub body: String,
}

/// Sends `method path` to the broker on 127.0.0.1:`port` with `headers` and `body` framed as
/// `framing`, and returns the answer (status 0 if the broker closed without one).
pub(crate) fn send(
    port: u16,
    ca: &Path,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    framing: &Framing,
) -> Answer {
    match framing {
        Framing::Length(sizes) => {
            let mut tls = super::raw::connect(port, ca, &[b"http/1.1"]);
            let mut head = format!("{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: {}\r\n", body.len());
            for (k, v) in headers {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            head.push_str("\r\n");
            let mut pieces = pieces(body, sizes).into_iter();
            let mut ok = tls.write_all(head.as_bytes()).is_ok();
            if let Some(early) = early_answer(&mut tls) {
                return early;
            }
            while let Some(piece) = pieces.next().filter(|_| ok) {
                ok = tls.write_all(&piece).and_then(|()| tls.flush()).is_ok();
            }
            raw_answer(&mut tls)
        }
        Framing::Chunked { sizes, trailers } => {
            let mut tls = super::raw::connect(port, ca, &[b"http/1.1"]);
            let mut head = format!("{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ntransfer-encoding: chunked\r\n");
            for (k, v) in headers {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            head.push_str("\r\n");
            if tls.write_all(head.as_bytes()).is_err() {
                return raw_answer(&mut tls);
            }
            if let Some(early) = early_answer(&mut tls) {
                return early;
            }
            // The framing is in the bytes: they are written in a few large writes.
            let mut stream = Vec::new();
            let sizes: Vec<usize> = sizes.iter().copied().filter(|&s| s > 0).collect();
            for (i, piece) in pieces(body, &sizes).into_iter().enumerate() {
                // A chunk extension on the first chunks (hyper caps their total size per body).
                let ext = if i < 8 { ";ext=1" } else { "" };
                stream.extend_from_slice(format!("{:x}{ext}\r\n", piece.len()).as_bytes());
                stream.extend_from_slice(&piece);
                stream.extend_from_slice(b"\r\n");
            }
            let end: &[u8] =
                if *trailers { b"0\r\nx-trailer: 1\r\ncontent-type: text/plain\r\n\r\n" } else { b"0\r\n\r\n" };
            stream.extend_from_slice(end);
            for part in stream.chunks(64 * 1024) {
                if tls.write_all(part).and_then(|()| tls.flush()).is_err() {
                    break;
                }
            }
            raw_answer(&mut tls)
        }
        Framing::H2 { sizes, end } => h2(port, ca, method, path, headers, body, sizes, *end),
    }
}

/// A broker that refuses a write from its head answers before the body: that answer is read
/// now, as a client that waits briefly for one would, rather than after the body, when the
/// broker may have closed the connection on the unread bytes (and a reset lost the answer).
fn early_answer(tls: &mut super::raw::Tls) -> Option<Answer> {
    let (status, text) = super::raw::read_response(tls, Duration::from_millis(60))?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Some(Answer { status, body })
}

fn raw_answer(tls: &mut super::raw::Tls) -> Answer {
    match super::raw::read_response(tls, Duration::from_secs(20)) {
        Some((status, text)) => {
            let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
            Answer { status, body }
        }
        None => Answer { status: 0, body: String::new() },
    }
}

#[allow(clippy::too_many_arguments)]
fn h2(
    port: u16,
    ca: &Path,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    sizes: &[usize],
    end: H2End,
) -> Answer {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let (client, driver) = h2_connect(port, ca).await;
        let mut client = client.ready().await.unwrap();
        let mut req = http::Request::builder().method(method).uri(format!("https://127.0.0.1{path}"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let (response, mut stream) = client.send_request(req.body(()).unwrap(), false).unwrap();
        // Frames of exactly the planned sizes: an empty frame where the plan says 0.
        let mut rest = body;
        let mut plan = sizes.iter().cycle();
        let mut frames = Vec::new();
        while !rest.is_empty() {
            let n = (*plan.next().unwrap()).min(rest.len());
            frames.push(Bytes::copy_from_slice(&rest[..n]));
            rest = &rest[n..];
        }
        let count = frames.len();
        for (i, frame) in frames.into_iter().enumerate() {
            let last = i + 1 == count && end == H2End::OnLastData;
            // Wait for window before each frame, so that h2 does not re-cut the frames.
            if !frame.is_empty() {
                stream.reserve_capacity(frame.len());
                while stream.capacity() < frame.len() {
                    match std::future::poll_fn(|cx| stream.poll_capacity(cx)).await {
                        Some(Ok(_)) => {}
                        _ => return collect(response, driver).await,
                    }
                }
            }
            if stream.send_data(frame, last).is_err() {
                return collect(response, driver).await;
            }
        }
        match end {
            H2End::OnLastData if count > 0 => {}
            H2End::OnLastData | H2End::EmptyFrame => {
                let _ = stream.send_data(Bytes::new(), true);
            }
            H2End::Trailers => {
                let mut trailers = http::HeaderMap::new();
                trailers.insert("x-trailer", http::HeaderValue::from_static("1"));
                let _ = stream.send_trailers(trailers);
            }
        }
        collect(response, driver).await
    })
}

async fn collect(
    response: h2::client::ResponseFuture,
    driver: tokio::task::JoinHandle<Result<(), h2::Error>>,
) -> Answer {
    let answer = tokio::time::timeout(Duration::from_secs(20), async {
        let resp = response.await.ok()?;
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        let mut text = Vec::new();
        while let Some(Ok(chunk)) = body.data().await {
            let _ = body.flow_control().release_capacity(chunk.len());
            text.extend_from_slice(&chunk);
        }
        Some(Answer { status, body: String::from_utf8_lossy(&text).into_owned() })
    })
    .await;
    driver.abort();
    answer.ok().flatten().unwrap_or(Answer { status: 0, body: String::new() })
}

/// Sends `head_body` of a streamed write over HTTP/2 as frames of at most 16 KiB, then resets the
/// stream (a caller that goes away mid-body). Returns once the reset is sent.
pub(crate) fn h2_reset_midway(port: u16, ca: &Path, path: &str, headers: &[(&str, &str)], head_body: &[u8]) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let (client, driver) = h2_connect(port, ca).await;
        let mut client = client.ready().await.unwrap();
        let mut req = http::Request::builder().method("PUT").uri(format!("https://127.0.0.1{path}"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let (_response, mut stream) = client.send_request(req.body(()).unwrap(), false).unwrap();
        for frame in head_body.chunks(16_384) {
            stream.reserve_capacity(frame.len());
            while stream.capacity() < frame.len() {
                if !matches!(std::future::poll_fn(|cx| stream.poll_capacity(cx)).await, Some(Ok(_))) {
                    break;
                }
            }
            stream.send_data(Bytes::copy_from_slice(frame), false).unwrap();
        }
        // Let the frames go out and the broker forward them, then go away.
        tokio::time::sleep(Duration::from_millis(300)).await;
        stream.send_reset(h2::Reason::CANCEL);
        tokio::time::sleep(Duration::from_millis(100)).await;
        driver.abort();
    });
}

/// An HTTP/2 connection over TLS to the broker on 127.0.0.1:`port`, and the task driving it.
pub(crate) async fn h2_connect(
    port: u16,
    ca: &Path,
) -> (h2::client::SendRequest<Bytes>, tokio::task::JoinHandle<Result<(), h2::Error>>) {
    let mut cfg = phantom_broker::support::net::client_config(Some(ca)).unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let (client, conn) = h2::client::handshake(tls).await.unwrap();
    (client, tokio::spawn(conn))
}
