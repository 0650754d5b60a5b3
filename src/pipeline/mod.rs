//! One registry request, top to bottom: classify -> authenticate -> (a read) authorize ->
//! forward -> relay, or (a write) the write pipeline (`write.rs`) -> audit. Audit runs on every
//! path, refusals included, and every refusal records what was classified by then.

mod exchange;
pub mod gate;
mod refusal;
mod staged;
mod write;

pub(crate) use refusal::Refusal;

use crate::app::App;
use crate::audit::{self, Decision, Event, Record};
use crate::credentials::UpstreamAuth;
use crate::npm::{self, NpmRequest, Op, Route};
use crate::phantom::{PhantomRecord, PhantomToken, TokenDigest};
use crate::policy::{Authorized, Requested};
use crate::proxy::Tunnel;
use crate::state::{Lookup, PhantomStore, Selector};
use crate::support::net::{self, Bearer, Body, BoxError};
use crate::upstream::{self, Content};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use std::sync::Arc;
use std::time::Instant;

/// Which face of the broker a request came in on.
#[derive(Debug, Clone)]
pub(crate) enum Face {
    /// The registry face: the client's registry URL is the broker's `public_url`.
    Registry,
    /// Inside a forward-proxy tunnel to an upstream's own host (`HTTPS_PROXY`).
    Proxy(Arc<Tunnel>),
}

pub(crate) async fn handle(app: Arc<App>, req: Request<Incoming>, face: Face) -> Response<Body> {
    // Anything but a read runs to its end in a task of its own: a caller that goes away mid-way
    // (an HTTP/2 reset, a closed connection) cannot stop a write or an exchange between two of
    // its steps, so each is settled and audited whatever the caller does.
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return match tokio::spawn(serve(app, req, face)).await {
            Ok(response) => response,
            Err(e) => {
                tracing::error!(error = %e, "a request's task failed");
                Refusal::Internal("the request's task failed".into()).response()
            }
        };
    }
    serve(app, req, face).await
}

async fn serve(app: Arc<App>, req: Request<Incoming>, face: Face) -> Response<Body> {
    let started = Instant::now();
    let request_id = app.new_request_id();
    let mut rec = Record {
        request_id: request_id.clone(),
        method: Some(audit::method(req.method())),
        via: matches!(face, Face::Proxy(_)).then_some(audit::Via::Proxy),
        ..Record::default()
    };
    // The connection boxes this future (`server/conn.rs`), so the pipeline lives on the heap
    // only while a request is in flight.
    let (mut refused, mut refusal_message) = (None, None);
    let (mut response, forwarded) = match process(&app, req, &face, &mut rec).await {
        Ok(resp) => (resp, true),
        Err(refusal) => {
            rec.decision = refusal.decision();
            rec.reason = Some(refusal.detail());
            refused = Some(refusal.kind());
            refusal_message = Some(refusal.client_message());
            (refusal.response(), false)
        }
    };
    rec.status = response.status().as_u16();
    rec.latency_ms = (started.elapsed().as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0;
    let rec = Arc::new(rec);
    if rec.event == Event::Exchange && rec.decision == Decision::Allow {
        // A phantom whose minting is not on record is not handed out.
        if app.audit.write_confirmed(rec.clone()).await.is_err() {
            if let Some(id) = &rec.token_id {
                let _ = app.store.revoke(&Selector::Id(id.to_string())).await;
            }
            response = Refusal::AuditUnavailable.response();
        }
    } else {
        app.audit.write_queued(rec.clone());
    }
    app.metrics.record(&rec, refused);
    if forwarded {
        response = watch_body(response, &app, rec);
    }
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", v);
    }
    // npm prints an `npm-notice` header as `npm notice ...`, for refusals too: the caller reads
    // why, and the request id an admin finds the grant-by-grant detail with
    // (`phantom policy explain --request ID`).
    if let (Some(message), false) = (refusal_message, response.headers().contains_key("npm-notice")) {
        if let Ok(v) = HeaderValue::from_str(&format!("phantom: {message} (request {request_id})")) {
            response.headers_mut().insert("npm-notice", v);
        }
    }
    response
}

/// Relayed bodies can still fail after the status line went out (an upstream reset mid-body,
/// a client too slow to read): such a failure gets its own audit line, with the same request id.
fn watch_body(resp: Response<Body>, app: &Arc<App>, rec: Arc<Record>) -> Response<Body> {
    let (parts, body) = resp.into_parts();
    let app = app.clone();
    let body = body.map_err(move |e| {
        let line = Record {
            request_id: rec.request_id.clone(),
            method: rec.method.clone(),
            path: rec.path.clone(),
            action: rec.action,
            package: rec.package.clone(),
            token_id: rec.token_id.clone(),
            decision: Decision::Error,
            status: rec.status,
            reason: Some(format!("the response body failed: {}", net::error_chain(&*e))),
            ..Record::default()
        };
        app.audit.write_queued(Arc::new(line));
        e
    });
    Response::from_parts(parts, body.boxed_unsync())
}

async fn process(app: &App, req: Request<Incoming>, face: &Face, rec: &mut Record) -> Result<Response<Body>, Refusal> {
    refuse_misplaced_phantoms(&req)?;
    let (route, upstream) = match face {
        Face::Registry => (npm::classify(req.method(), req.uri().path(), req.uri().query())?, None),
        Face::Proxy(tunnel) => {
            let (upstream, path) = tunneled(tunnel, &req)?;
            (npm::classify(req.method(), path, req.uri().query())?, Some(upstream.clone()))
        }
    };
    // Exchanges are boxed: they are rare next to registry requests, and their state (an ID
    // token's verification) would otherwise enlarge every request's future.
    match route {
        Route::NpmOidcExchange { .. } | Route::PhantomExchange if upstream.is_some() => Err(Refusal::NotThroughProxy),
        Route::NpmOidcExchange { package } => Box::pin(exchange::npm_native(app, package, req, rec)).await,
        Route::PhantomExchange => Box::pin(exchange::generic(app, req, rec)).await,
        Route::Forbidden { what, path, package } => {
            // Recorded by its fixed prefix: what follows (ids, names, a token in `npm logout`'s
            // path) is the caller's text and never reaches the log.
            rec.path = Some(match &package {
                Some(p) => path.replace("{name}", &p.escaped()),
                None => path.to_owned(),
            });
            rec.package = package.map(|p| p.to_string());
            Err(match path {
                "/-/v1/login" | "/-/v1/done" | "/-/user" => Refusal::Login,
                _ => Refusal::Forbidden(what),
            })
        }
        Route::Registry(npm) => forward(app, npm, req, upstream, rec).await,
    }
}

/// A request inside a tunnel must name the tunnel's host in every `Host` (and HTTP/2
/// `:authority`) it carries, and its path must lie under one of that host's upstreams. Returns
/// that upstream's name and the path below its prefix.
fn tunneled<'r>(tunnel: &'r Tunnel, req: &'r Request<Incoming>) -> Result<(&'r Arc<str>, &'r str), Refusal> {
    let hosts = req.headers().get_all(header::HOST);
    let mut named = 0;
    for value in hosts {
        if !value.to_str().is_ok_and(|v| tunnel.is_host(v)) {
            return Err(Refusal::Misdirected);
        }
        named += 1;
    }
    if let Some(authority) = req.uri().authority() {
        if !tunnel.is_host(authority.as_str()) {
            return Err(Refusal::Misdirected);
        }
        named += 1;
    }
    if named == 0 {
        return Err(Refusal::Misdirected);
    }
    tunnel.upstream_for(req.uri().path()).ok_or(Refusal::NoUpstream)
}

/// A caller that presented a live phantom.
pub(crate) struct Session {
    pub(crate) digest: TokenDigest,
    pub(crate) record: Arc<PhantomRecord>,
}

/// Forwards a registry request to `tunneled` (the upstream a proxy tunnel goes to) or, on the
/// registry face, to the upstream that owns its package.
async fn forward(
    app: &App,
    npm: NpmRequest,
    req: Request<Incoming>,
    tunneled: Option<Arc<str>>,
    rec: &mut Record,
) -> Result<Response<Body>, Refusal> {
    let path = npm.upstream_path();
    rec.path = Some(path.split('?').next().unwrap_or_default().to_owned());
    rec.package = npm.package.as_ref().map(ToString::to_string);
    rec.action = Some(audit::Action::Npm(npm.route_action()));
    let session = authenticate(app, req.headers(), rec).await?;
    let upstreams = app.upstreams();
    let upstream = match &tunneled {
        None => upstreams.route(npm.package.as_ref()),
        Some(name) => upstreams.named(name),
    };
    let upstream = upstream.ok_or(Refusal::NoUpstream)?;
    rec.upstream = Some(upstream.name.clone());
    if !npm.is_read() {
        // Writes' own steps are boxed, so that a read's future, allocated for every request,
        // holds none of their state.
        return Box::pin(write::forward(app, npm, session, upstream, req, rec)).await;
    }
    if let Op::StageView { .. } | Op::StageTarball { .. } = npm.op() {
        return Box::pin(staged::read(app, npm, session, upstream, tunneled.is_some(), req.headers(), rec)).await;
    }

    let permit = authorize_read(app, session.as_ref(), npm);
    let (npm, mut auth) = match &permit {
        Permit::Anonymous(npm) => (npm, UpstreamAuth::ANONYMOUS),
        Permit::Granted(authorized) => {
            rec.grant = Some(authorized.grant().name.clone());
            let auth = app.credentials.for_authorized(authorized, &upstream.name).map_err(Refusal::Internal)?;
            (authorized.get(), auth)
        }
    };
    rec.decision = if auth.credential().is_some() { Decision::Allow } else { Decision::Anonymous };
    if !app.config.audit.serve_reads_on_failure {
        if !app.audit.is_healthy() {
            return Err(Refusal::AuditUnavailable);
        }
        if !app.store.is_healthy() {
            return Err(Refusal::Store(crate::state::StoreError::Unavailable("the state store is unreachable".into())));
        }
    }
    let (mut parts, incoming) = req.into_parts();
    // On the registry face, packuments' tarball URLs are rewritten to come back through the
    // broker; the rewrite reads the body, so it is asked for unencoded. Not when npm reads a
    // packument to send it back changed (`?write=true`: deprecate, unpublish): what it sends
    // back must be the upstream's own document.
    let rebase = tunneled.is_none()
        && !npm.reads_for_write()
        && npm.method == Method::GET
        && matches!(npm.op(), Op::Packument | Op::VersionManifest { .. });
    if rebase {
        parts.headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("identity"));
    }
    let bodiless = http_body::Body::is_end_stream(&incoming);
    let body = if bodiless {
        // A read without a body (nearly all) needs no timer and no box.
        net::empty()
    } else {
        // `npm audit` posts a (gzipped) dependency list, relayed as sent, never with a credential.
        let idle = net::IdleTimeout::new(incoming, app.config.server.client_timeout);
        Limited::new(idle, app.config.server.max_body_bytes as usize).map_err(BoxError::from).boxed_unsync()
    };
    let mut resp = upstream.send(npm.method.clone(), &path, &parts.headers, Content::AsSent, body, &auth).await?;
    // In a rotation's overlap window, a bodiless read the upstream refuses with the credential's
    // new value goes once more with the previous one (a new token may take a while to be
    // accepted everywhere upstream). Writes never are: their bodies are not sent twice.
    if bodiless && matches!(resp.status().as_u16(), 401 | 403) {
        if let Some(previous) = auth.with_previous() {
            drop(resp);
            resp = upstream
                .send(npm.method.clone(), &path, &parts.headers, Content::AsSent, net::empty(), &previous)
                .await?;
            rec.reason = Some("the upstream refused the credential's new value: sent again with the previous one, in its overlap window".into());
            auth = previous;
        }
    }
    rec.upstream_status = Some(resp.status().as_u16());
    let resp = upstream::relay(resp, &auth, app.config.server.upstream_timeout)?;
    if rebase {
        return Ok(upstream.rebase_tarballs(resp, &app.public_base).await?);
    }
    Ok(resp)
}

/// Looks up the phantom in `Authorization`, if any. Anything else there is refused: other
/// credentials are never forwarded.
async fn authenticate(app: &App, headers: &http::HeaderMap, rec: &mut Record) -> Result<Option<Session>, Refusal> {
    let token = match net::bearer(headers) {
        Bearer::Absent => return Ok(None),
        Bearer::Token(token) => token,
        Bearer::Repeated => return Err(Refusal::BadRequest("more than one Authorization header")),
        Bearer::NotBearer => return Err(Refusal::NotAPhantom),
    };
    let digest = match PhantomToken::parse(token) {
        Ok(t) => t.digest(),
        Err(crate::phantom::FormatError::NotPhantom) => return Err(Refusal::NotAPhantom),
        Err(e) => return Err(Refusal::BadPhantom(e)),
    };
    let state = match app.store.lookup(&digest, crate::support::clock::unix_now()).await? {
        Lookup::Live(record) => {
            // The keyed id was computed when the phantom was minted.
            rec.token_id = Some(record.id.clone());
            rec.identity = Some(record.summary.clone());
            return Ok(Some(Session { digest, record }));
        }
        Lookup::Expired => "expired",
        Lookup::Revoked => "revoked",
        Lookup::Unknown => "unknown",
    };
    rec.token_id = Some(app.audit.token_id(&digest).into());
    Err(Refusal::PhantomNotLive(state))
}

enum Permit {
    /// Forwarded without any credential.
    Anonymous(NpmRequest),
    Granted(Authorized<NpmRequest>),
}

/// Whether a read goes upstream with the grant's credential or without one. A phantom reads
/// with its credential what its grant covers (npm reads a package just before writing it);
/// every other read goes anonymously.
fn authorize_read(app: &App, session: Option<&Session>, npm: NpmRequest) -> Permit {
    let Some(session) = session.filter(|_| !npm.always_anonymous()) else {
        return Permit::Anonymous(npm);
    };
    let r = &session.record;
    let req = Requested {
        package: npm.package.as_ref(),
        action: npm::ActionKind::Read,
        tags: &[],
        version: None,
        creates: false,
    };
    match app.policy().authorize(&r.identity, &r.grant, &r.scope, req, npm.clone()) {
        Ok(authorized) => Permit::Granted(authorized),
        Err(_) => Permit::Anonymous(npm),
    }
}

/// Phantoms are accepted only in `Authorization`. One in the query string, `Proxy-Authorization`
/// or a cookie is refused, so it is never forwarded or logged from there.
fn refuse_misplaced_phantoms(req: &Request<Incoming>) -> Result<(), Refusal> {
    let has = |v: &[u8]| memchr::memmem::find(v, crate::phantom::token::PREFIX.as_bytes()).is_some();
    let in_query = req.uri().query().is_some_and(|q| has(q.as_bytes()));
    let in_headers = [header::PROXY_AUTHORIZATION, header::COOKIE]
        .iter()
        .any(|h| req.headers().get_all(h).iter().any(|v| has(v.as_bytes())));
    if in_query || in_headers {
        return Err(Refusal::BadRequest("phantom tokens are accepted only in the Authorization header"));
    }
    Ok(())
}
