//! The registries behind the broker: routing by scope, building the one upstream request that
//! carries a real credential, and keeping that credential out of every response.

use crate::config::UpstreamConfig;
use crate::credentials::UpstreamAuth;
use crate::npm::PackageName;
use crate::support::net::{self, Body};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, Uri};
use http_body_util::BodyExt;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

mod filter;
mod pool;
mod rebase;
pub(crate) use filter::scrubbed;
use filter::{Filtered, Scrub};
pub(crate) use pool::Pooled;
pub use rebase::rebase_chunks;

pub(crate) struct Upstream {
    pub name: std::sync::Arc<str>,
    /// The `Host` of every request.
    host: HeaderValue,
    /// The URL's path prefix, without a trailing `/` (often empty).
    prefix: String,
    /// `scheme://host[:port]<prefix>/`, as the upstream writes it at the start of its tarball
    /// URLs (host in lower case, no default port).
    tarball_base: Bytes,
    pool: pool::Pool,
    timeout: Duration,
    /// `phantom_upstream_duration_seconds{upstream=name}`.
    duration: crate::metrics::Histogram,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    #[error("the upstream did not answer in time")]
    Timeout,
    #[error("the upstream request failed: {0}")]
    Failed(String),
    #[error("the upstream answered with a content-encoding the broker cannot inspect")]
    Encoded,
}

impl UpstreamError {
    pub(crate) fn status(&self) -> u16 {
        match self {
            UpstreamError::Timeout => 504,
            _ => 502,
        }
    }
}

/// Request headers passed to the upstream (besides `npm-*` and `pacote-*`). Everything else,
/// including `Cookie`, `Proxy-Authorization`, hop-by-hop and forwarding headers, is dropped.
/// The headers that say how to read a body are the caller's `Content`'s business, and the
/// framing (`Content-Length`, `Transfer-Encoding`) is always hyper's, from the body it is given.
const PASSED_REQUEST_HEADERS: &[HeaderName] = &[
    header::ACCEPT,
    header::ACCEPT_LANGUAGE,
    header::CACHE_CONTROL,
    header::IF_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_NONE_MATCH,
    header::PRAGMA,
    header::USER_AGENT,
];

/// Response headers never passed back. (Names, not strings: a string is parsed anew at each use.)
static DROPPED_RESPONSE_HEADERS: [HeaderName; 10] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::SET_COOKIE,
    header::ALT_SVC,
];

/// How the upstream is told to read a request's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Content {
    /// No body: no content headers.
    None,
    /// A body the broker checked as JSON: `Content-Type: application/json` exactly, and nothing
    /// of the caller's (charset, encoding) that could make the upstream read other text.
    Json,
    /// A read's body, relayed unchecked with the caller's `Content-Type` and `Content-Encoding`
    /// (npm gzips its audit posts), and never with a credential.
    AsSent,
}

static JSON: HeaderValue = HeaderValue::from_static("application/json");

impl Upstream {
    pub(crate) fn new(
        cfg: &UpstreamConfig,
        timeout: Duration,
        metrics: &crate::metrics::Metrics,
    ) -> Result<Upstream, String> {
        let tls = net::client_config(cfg.ca_file.as_deref()).map_err(|e| format!("upstream `{}`: {e}", cfg.name))?;
        if cfg.url.scheme_str() == Some("http") {
            tracing::warn!(upstream = %cfg.name, "plain http:// upstream (loopback only): the credential crosses it unencrypted");
        }
        Ok(Upstream {
            name: cfg.name.as_str().into(),
            host: HeaderValue::from_str(cfg.url.authority().ok_or("upstream URL without host")?.as_str())
                .map_err(|e| format!("upstream `{}`: {e}", cfg.name))?,
            prefix: cfg.url.path().trim_end_matches('/').to_owned(),
            tarball_base: base_url(&cfg.url).into(),
            pool: pool::Pool::new(&cfg.url, tls, Duration::from_secs(10))
                .map_err(|e| format!("upstream `{}`: {e}", cfg.name))?,
            timeout,
            duration: metrics.upstream(&cfg.name),
        })
    }

    /// Sends one request: the method and path `auth` was made for (from the classified
    /// request policy authorized), and its credential, if any, in `Authorization` for this
    /// request only.
    pub(crate) async fn send(
        &self,
        incoming: &HeaderMap,
        content: Content,
        body: Body,
        auth: &UpstreamAuth,
    ) -> Result<Response<Pooled>, UpstreamError> {
        let method = auth.method();
        // A bodiless GET or HEAD may go again on a new connection if a kept one closed before
        // answering it (RFC 9110, 9.2.2): the upstream closing an idle connection just as the
        // request went out is not the caller's failure.
        let replayable = http_body::Body::is_end_stream(&body) && (method == Method::GET || method == Method::HEAD);
        let req = self.request(incoming, content, body, auth)?;
        let again = || self.request(incoming, content, net::empty(), auth).ok();
        let again: Option<&(dyn Fn() -> Option<Request<Body>> + Sync)> = if replayable { Some(&again) } else { None };
        let started = std::time::Instant::now();
        let answer = tokio::time::timeout(self.timeout, self.pool.send(req, again)).await;
        self.duration.observe(started.elapsed());
        match answer {
            Err(_) => Err(UpstreamError::Timeout),
            Ok(Err(e)) => Err(UpstreamError::Failed(net::error_chain(&*e))),
            Ok(Ok(resp)) => Ok(resp),
        }
    }

    /// The request as the upstream gets it: origin-form, its own `Host`, the passed headers,
    /// the content headers and the credential.
    fn request(
        &self,
        incoming: &HeaderMap,
        content: Content,
        body: Body,
        auth: &UpstreamAuth,
    ) -> Result<Request<Body>, UpstreamError> {
        let path = auth.path();
        let uri = if self.prefix.is_empty() {
            Uri::try_from(path)
        } else {
            Uri::try_from(format!("{}{}", self.prefix, path))
        };
        let uri = uri.map_err(|e| UpstreamError::Failed(e.to_string()))?;
        let mut req = Request::builder()
            .method(auth.method().clone())
            .uri(uri)
            .body(body)
            .map_err(|e| UpstreamError::Failed(e.to_string()))?;
        let headers = req.headers_mut();
        headers.insert(header::HOST, self.host.clone());
        for (name, value) in incoming {
            let s = name.as_str();
            if PASSED_REQUEST_HEADERS.contains(name) || s.starts_with("npm-") || s.starts_with("pacote-") {
                headers.append(name.clone(), value.clone());
            }
        }
        match content {
            Content::None => {}
            Content::Json => {
                headers.insert(header::CONTENT_TYPE, JSON.clone());
            }
            Content::AsSent => {
                for name in [header::CONTENT_TYPE, header::CONTENT_ENCODING] {
                    for value in incoming.get_all(&name) {
                        headers.append(name.clone(), value.clone());
                    }
                }
            }
        }
        match auth.credential() {
            Some(c) => {
                headers.insert(header::AUTHORIZATION, c.authorization().clone());
                // Responses must be readable to be scrubbed of the credential.
                headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("identity"));
            }
            None => {
                if let Some(ae) = incoming.get(header::ACCEPT_ENCODING) {
                    headers.insert(header::ACCEPT_ENCODING, ae.clone());
                }
            }
        }
        Ok(req)
    }

    /// A relayed packument or manifest whose tarball URLs that name this upstream name `to`
    /// instead (`rebase.rs`). Anything but a readable 200 is returned as it is. A body of a
    /// known length up to [`WHOLE_REBASE`] (most packuments) is read whole and sent with its new
    /// length; a longer one, or one of unknown length, streams (chunked on HTTP/1.1).
    pub(crate) async fn rebase_tarballs(
        &self,
        resp: Response<Body>,
        to: &Bytes,
    ) -> Result<Response<Body>, UpstreamError> {
        let encoded = resp
            .headers()
            .get(header::CONTENT_ENCODING)
            .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
        if resp.status() != http::StatusCode::OK || encoded {
            return Ok(resp);
        }
        let (mut parts, body) = resp.into_parts();
        let length = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
        if length.is_some_and(|n| n <= WHOLE_REBASE) {
            // The upstream's framing holds it to the length it announced.
            let whole = net::read_body(body, WHOLE_REBASE)
                .await
                .map_err(|e| UpstreamError::Failed(format!("reading the packument: {e}")))?;
            let out = rebase::rebase_whole(whole, &self.tarball_base, to);
            if length != Some(out.len()) {
                parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(out.len()));
            }
            return Ok(Response::from_parts(parts, net::full(out)));
        }
        parts.headers.remove(header::CONTENT_LENGTH);
        let body = Filtered::new(body, rebase::Rebase::new(self.tarball_base.clone(), to.clone()));
        Ok(Response::from_parts(parts, body.boxed_unsync()))
    }

    /// Reads a JSON document (`auth` is a read the broker makes), for checks that compare
    /// against upstream state.
    pub(crate) async fn fetch_json(&self, auth: &UpstreamAuth, max: usize) -> Result<(u16, Bytes), UpstreamError> {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        let resp = self.send(&headers, Content::None, net::empty(), auth).await?;
        let status = resp.status().as_u16();
        let body = net::read_body(resp.into_body(), max).await.map_err(|e| UpstreamError::Failed(e.to_string()))?;
        Ok((status, body))
    }
}

impl Upstream {
    /// Whether the upstream has `package`, read as `auth` (its packument, with the credential:
    /// npm's own check before a publish): 200 yes, 404 no, anything else is an error (the
    /// caller fails closed).
    pub(crate) async fn has_package(&self, package: &PackageName, auth: &UpstreamAuth) -> Result<bool, UpstreamError> {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/vnd.npm.install-v1+json"));
        // Only the status is read; the body is dropped with the response.
        let resp = self.send(&headers, Content::None, net::empty(), auth).await?;
        match resp.status().as_u16() {
            200 => Ok(true),
            404 => Ok(false),
            other => {
                Err(UpstreamError::Failed(format!("asked whether it has {package}, the upstream answered {other}")))
            }
        }
    }
}

/// Packages the upstreams were seen to have, for a short while. A first publish creates a
/// package, which needs the grant's `create`; the broker learns whether the upstream has one
/// with a read. Only "it has it" is kept: a package rarely goes away (and a whole-package
/// unpublish through the broker forgets it), while "it has not" is asked again each time, so
/// that a package created a moment ago is seen at once.
#[derive(Default)]
pub(crate) struct KnownPackages {
    seen: std::sync::Mutex<HashMap<(Arc<str>, String), std::time::Instant>>,
}

/// How long "the upstream has it" is believed.
const KNOWN_FOR: Duration = Duration::from_secs(30);
/// Entries kept at most (a burst of new names cannot grow the map without bound).
const MAX_KNOWN: usize = 4096;

impl KnownPackages {
    pub(crate) fn has(&self, upstream: &Arc<str>, package: &PackageName) -> bool {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.get(&(upstream.clone(), package.to_string())).is_some_and(|at| at.elapsed() < KNOWN_FOR)
    }

    pub(crate) fn learn(&self, upstream: &Arc<str>, package: &PackageName) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= MAX_KNOWN {
            seen.retain(|_, at| at.elapsed() < KNOWN_FOR);
            if seen.len() >= MAX_KNOWN {
                seen.clear();
            }
        }
        seen.insert((upstream.clone(), package.to_string()), std::time::Instant::now());
    }

    pub(crate) fn forget(&self, upstream: &Arc<str>, package: &PackageName) {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).remove(&(upstream.clone(), package.to_string()));
    }
}

/// Packuments up to this long are rewritten whole (with their new length), longer ones as they
/// stream.
const WHOLE_REBASE: usize = 256 * 1024;

/// `scheme://host[:port]<path>/` of a URL, host in lower case, without the scheme's default
/// port: how a registry writes its own base URL.
pub(crate) fn base_url(url: &Uri) -> String {
    let scheme = url.scheme_str().unwrap_or("https");
    let host = url.host().unwrap_or_default().to_ascii_lowercase();
    let port = match (scheme, url.port_u16()) {
        ("https", Some(443)) | ("http", Some(80)) | (_, None) => String::new(),
        (_, Some(p)) => format!(":{p}"),
    };
    format!("{scheme}://{host}{port}{}/", url.path().trim_end_matches('/'))
}

/// Makes a client-facing response from the upstream's. When the request carried a real
/// credential, the credential is cut out of every header and every body byte.
pub(crate) fn relay(
    resp: Response<Pooled>,
    auth: &UpstreamAuth,
    idle: Duration,
) -> Result<Response<Body>, UpstreamError> {
    let (mut parts, body) = resp.into_parts();
    // An upstream that stops sending mid-body must not hold the client forever.
    let body = net::IdleTimeout::new(body, idle);
    // Headers `Connection` names are hop-by-hop too; only those present are named (no copy of
    // a name is made for `keep-alive`, the usual token, which is dropped below anyway).
    let connection_listed: Vec<HeaderName> = parts
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty() && parts.headers.contains_key(*t))
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in &DROPPED_RESPONSE_HEADERS {
        parts.headers.remove(name);
    }
    for name in connection_listed {
        parts.headers.remove(name);
    }
    let Some(credential) = auth.credential() else {
        return Ok(Response::from_parts(parts, body.boxed_unsync()));
    };
    let encoded =
        parts.headers.get(header::CONTENT_ENCODING).is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    if encoded {
        return Err(UpstreamError::Encoded);
    }
    let pattern = credential.scrub_pattern();
    // Only a value at least as long as the credential can hold it (most are shorter).
    let n = pattern.bytes().len();
    let leaking: Vec<HeaderName> = parts
        .headers
        .iter()
        .filter(|(_, v)| v.len() >= n && pattern.find(v.as_bytes()).is_some())
        .map(|(name, _)| name.clone())
        .collect();
    for name in leaking {
        tracing::warn!(header = %name, "dropped a response header that carried the real credential");
        parts.headers.remove(name);
    }
    let body = Filtered::new(body, Scrub::new(pattern.clone()));
    Ok(Response::from_parts(parts, body.boxed_unsync()))
}

/// A relayed (so already scrubbed) response, read whole, at most `max` bytes: for the answers the
/// broker reads before the caller does (a staged version's id, a registry's refusal).
pub(crate) async fn read_relayed(
    resp: Response<Body>,
    max: usize,
) -> Result<(http::response::Parts, Bytes), UpstreamError> {
    let (mut parts, body) = resp.into_parts();
    let bytes =
        net::read_body(body, max).await.map_err(|e| UpstreamError::Failed(format!("reading the answer: {e}")))?;
    // The caller gets these bytes whole: their length is counted again when they are sent.
    parts.headers.remove(header::CONTENT_LENGTH);
    Ok((parts, bytes))
}

/// The configured upstreams, routed by package scope.
pub(crate) struct Upstreams {
    list: Vec<Arc<Upstream>>,
    by_scope: HashMap<String, usize>,
    default: Option<usize>,
}

impl Upstreams {
    pub(crate) fn new(
        configs: &[UpstreamConfig],
        timeout: Duration,
        metrics: &crate::metrics::Metrics,
    ) -> Result<Upstreams, String> {
        let mut u = Upstreams { list: Vec::new(), by_scope: HashMap::new(), default: None };
        for (i, cfg) in configs.iter().enumerate() {
            u.list.push(Arc::new(Upstream::new(cfg, timeout, metrics)?));
            for scope in &cfg.scopes {
                match scope.strip_prefix('@') {
                    Some(s) => {
                        u.by_scope.insert(s.to_owned(), i);
                    }
                    None => u.default = Some(i),
                }
            }
        }
        Ok(u)
    }

    /// The upstream called `name`.
    pub(crate) fn named(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.list.iter().find(|u| &*u.name == name)
    }

    /// The upstream that owns `package` (or, for package-less routes, the default one).
    pub(crate) fn route(&self, package: Option<&PackageName>) -> Option<&Arc<Upstream>> {
        let scoped = package.and_then(|p| p.scope()).and_then(|s| self.by_scope.get(s));
        scoped.or(self.default.as_ref()).map(|&i| &self.list[i])
    }
}
