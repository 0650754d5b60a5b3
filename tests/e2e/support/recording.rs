//! A recording upstream registry on loopback (hyper over TLS): for every request it records the
//! head, exactly the body bytes it received as they arrive, and how the body ended. A write whose
//! body ends cleanly (the last chunk of a chunked body, or as many bytes as its Content-Length)
//! is answered 201: that is a write the upstream would act on. A body cut off by the broker is
//! recorded as `Broken`, and nothing is answered.
//!
//! `GET /<name>` answers the packument the test stored with `set_packument`, so that deprecates
//! and version removals can be compared with it.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How a request's body ended, as the upstream saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum End {
    /// Still arriving.
    Open,
    /// Complete under its framing: the upstream has the whole request.
    Complete,
    /// The connection failed or closed mid-body: the upstream never had the whole request.
    Broken(String),
}

#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub method: String,
    /// Path and query.
    pub target: String,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
    pub end: End,
}

impl Seen {
    pub(crate) fn header(&self, name: &str) -> Option<String> {
        let mut all = self.headers.get_all(name).iter();
        let first = all.next().map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        assert!(all.next().is_none(), "the upstream got `{name}` twice");
        first
    }
}

pub(crate) struct Recording {
    pub port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    packuments: Arc<Mutex<HashMap<String, Bytes>>>,
    answers: Answers,
    rt: Option<tokio::runtime::Runtime>,
}

/// Answers queued for writes whose target starts with a prefix, each used once.
type Answers = Arc<Mutex<Vec<(String, Queued)>>>;
type Queued = std::collections::VecDeque<(u16, Bytes)>;

impl Drop for Recording {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn reply(status: u16, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder().status(status).header("content-type", "application/json").body(Full::new(body.into())).unwrap()
}

impl Recording {
    pub(crate) fn start(cert: &Path, key: &Path) -> Recording {
        let (rt, acceptor) = super::tls_server(cert, key);
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let packuments: Arc<Mutex<HashMap<String, Bytes>>> = Arc::default();
        let answers: Answers = Arc::default();
        let (seen2, packuments2, answers2) = (seen.clone(), packuments.clone(), answers.clone());
        rt.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let (acceptor, seen, packuments, answers) =
                    (acceptor.clone(), seen2.clone(), packuments2.clone(), answers2.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (seen, packuments, answers) = (seen.clone(), packuments.clone(), answers.clone());
                        async move { Ok::<_, std::convert::Infallible>(record(req, &seen, &packuments, &answers).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), svc).await;
                });
            }
        });
        Recording { port, seen, packuments, answers, rt: Some(rt) }
    }

    pub(crate) fn url(&self) -> String {
        format!("https://127.0.0.1:{}/", self.port)
    }

    /// What `GET /<escaped>` (with or without `?write=true`) answers from now on.
    pub(crate) fn set_packument(&self, escaped: &str, doc: &serde_json::Value) {
        self.packuments.lock().unwrap().insert(format!("/{escaped}"), Bytes::from(doc.to_string()));
    }

    /// The next complete write whose target starts with `prefix` is answered `status` and
    /// `body` (once; later ones get 201, or the next answer queued).
    pub(crate) fn answer(&self, prefix: &str, status: u16, body: &str) {
        let mut answers = self.answers.lock().unwrap();
        let entry = match answers.iter_mut().find(|(p, _)| p == prefix) {
            Some(e) => e,
            None => {
                answers.push((prefix.to_owned(), Default::default()));
                answers.last_mut().unwrap()
            }
        };
        entry.1.push_back((status, Bytes::from(body.to_owned())));
    }

    /// Every request so far, in arrival order.
    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Requests other than GETs: what could change the registry.
    pub(crate) fn writes(&self) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| s.method != "GET" && s.method != "HEAD").collect()
    }

    pub(crate) fn clear(&self) {
        self.seen.lock().unwrap().clear();
    }

    /// Waits (at most 5 s) until no recorded body is still open and no new request has come
    /// for 200 ms: a cut connection takes a moment to be noticed, and a request the broker
    /// aborted may still be on its way.
    pub(crate) fn settle(&self) {
        let mut last = usize::MAX;
        let mut quiet = 0;
        for _ in 0..100 {
            let (count, open) = {
                let seen = self.seen.lock().unwrap();
                (seen.len(), seen.iter().any(|s| s.end == End::Open))
            };
            quiet = if !open && count == last { quiet + 1 } else { 0 };
            if quiet >= 4 {
                return;
            }
            last = count;
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the recording upstream did not settle: {:?}", self.seen());
    }
}

async fn record(
    req: Request<Incoming>,
    seen: &Mutex<Vec<Seen>>,
    packuments: &Mutex<HashMap<String, Bytes>>,
    answers: &Mutex<Vec<(String, Queued)>>,
) -> Response<Full<Bytes>> {
    let (parts, mut body) = req.into_parts();
    let target = parts.uri.path_and_query().map(|p| p.to_string()).unwrap_or_default();
    let index = {
        let mut all = seen.lock().unwrap();
        all.push(Seen {
            method: parts.method.to_string(),
            target: target.clone(),
            headers: parts.headers.clone(),
            body: Vec::new(),
            end: End::Open,
        });
        all.len() - 1
    };
    let end = loop {
        match body.frame().await {
            None => break End::Complete,
            Some(Err(e)) => break End::Broken(e.to_string()),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    seen.lock().unwrap()[index].body.extend_from_slice(&data);
                }
            }
        }
    };
    let complete = end == End::Complete;
    seen.lock().unwrap()[index].end = end;
    if !complete {
        return reply(400, "{}");
    }
    if parts.method == http::Method::GET {
        let path = parts.uri.path();
        return match packuments.lock().unwrap().get(path) {
            Some(doc) => reply(200, doc.clone()),
            None => reply(404, r#"{"error":"not found"}"#),
        };
    }
    let queued = answers
        .lock()
        .unwrap()
        .iter_mut()
        .find(|(p, q)| target.starts_with(p.as_str()) && !q.is_empty())
        .and_then(|(_, q)| q.pop_front());
    match queued {
        Some((status, body)) => reply(status, body),
        None => reply(201, r#"{"ok":true}"#),
    }
}
