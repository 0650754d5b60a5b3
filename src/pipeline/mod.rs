//! One registry request, top to bottom: classify -> authenticate -> (a read) authorize ->
//! forward -> relay, or (a write) the write pipeline (`write.rs`) -> audit. Audit runs on every
//! path, refusals included, and every refusal records what was classified by then.

mod exchange;
pub(crate) mod gate;
mod held;
pub(crate) mod people;
mod rate;
mod read;
pub(crate) mod refusal;
mod session;
mod staged;
mod verdict;
mod write;

pub(crate) use refusal::Refusal;

use crate::app::App;
use crate::audit::{self, Decision, Event, Record};
use crate::npm::{self, NpmRequest, Op, Route};
use crate::proxy::Tunnel;
use crate::state::{PhantomStore, Selector};
use crate::support::net::{self, Body};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use session::{authenticate, refuse_misplaced_phantoms};
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
    let mut rec = Record {
        request_id: app.new_request_id(),
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
    if let Ok(v) = HeaderValue::from_str(&rec.request_id) {
        response.headers_mut().insert("x-request-id", v);
    }
    // npm prints an `npm-notice` header as `npm notice ...`, for refusals too: the caller reads
    // why, and the request id an admin finds the grant-by-grant detail with
    // (`phantom policy explain --request ID`).
    if let (Some(message), false) = (refusal_message, response.headers().contains_key("npm-notice")) {
        if let Ok(v) = HeaderValue::from_str(&format!("phantom: {message} (request {})", rec.request_id)) {
            response.headers_mut().insert("npm-notice", v);
        }
    }
    if forwarded {
        response = watch_body(response, &app, rec);
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
        Route::PhantomIssuers if upstream.is_some() => Err(Refusal::NotThroughProxy),
        Route::PhantomIssuers => Ok(people::issuers(app, rec)),
        Route::PeopleHolds | Route::HoldDecision { .. } if upstream.is_some() => Err(Refusal::NotThroughProxy),
        Route::PeopleHolds => Box::pin(people::holds(app, req, rec)).await,
        Route::HoldDecision { id, approve } => Box::pin(people::decide(app, &id, approve, req, rec)).await,
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
    read::forward(app, npm, session, upstream, req, tunneled.is_some(), rec).await
}
