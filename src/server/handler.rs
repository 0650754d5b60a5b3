//! One request, top to bottom: classify -> authenticate -> read and check the body -> evaluate
//! policy -> spend a use -> swap the credential -> forward -> relay (scrubbed) -> audit.
//! Audit runs on every path, refusals included.

use super::{exchange, App, Refusal};
use crate::audit::{self, identity_summary, Record};
use crate::credentials::Credential;
use crate::net::{self, Body, BoxError};
use crate::npm::{self, body, ActionKind, NpmRequest, Op, PutPackument, PutRevision, Route};
use crate::phantom::{Lookup, PhantomRecord, PhantomStore, PhantomToken, TokenDigest, UseOutcome};
use crate::policy::{Authorized, Requested};
use crate::upstream;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use std::sync::Arc;
use std::time::Instant;

/// Bodies of writes that are not publishes (dist-tag, owner, access) are small.
const SMALL_BODY: u64 = 1024 * 1024;

pub async fn handle(app: Arc<App>, req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let request_id = new_request_id(&app);
    let mut rec = Record {
        event: "request",
        request_id: request_id.clone(),
        method: Some(req.method().to_string()),
        decision: "deny",
        ..Record::default()
    };
    let mut response = match process(&app, req, &mut rec).await {
        Ok(resp) => resp,
        Err(refusal) => {
            rec.decision = match refusal {
                Refusal::Upstream(_) | Refusal::Store(_) | Refusal::Internal(_) => "error",
                _ => "deny",
            };
            rec.reason = Some(refusal.detail());
            refusal.response()
        }
    };
    rec.status = response.status().as_u16();
    rec.latency_ms = (started.elapsed().as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0;
    if let Err(e) = app.audit.write(&rec) {
        tracing::error!(error = %e, "could not write the audit log");
    }
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}

async fn process(app: &App, req: Request<Incoming>, rec: &mut Record) -> Result<Response<Body>, Refusal> {
    refuse_misplaced_phantoms(&req)?;
    match npm::classify(req.method(), req.uri().path(), req.uri().query())? {
        Route::NpmOidcExchange { package } => exchange::npm_native(app, package, req, rec).await,
        Route::PhantomExchange => exchange::generic(app, req, rec).await,
        Route::Forbidden { what } => Err(Refusal::Forbidden(what)),
        Route::Registry(npm) => forward(app, npm, req, rec).await,
    }
}

/// A caller that presented a live phantom.
struct Session {
    digest: TokenDigest,
    record: Arc<PhantomRecord>,
}

/// The action a request performs once its body has been read.
struct Action {
    kind: ActionKind,
    version: Option<String>,
    tags: Vec<String>,
    /// A deprecate's document, checked against upstream once the credential may be used.
    deprecate: Option<serde_json::Map<String, serde_json::Value>>,
}

enum Payload {
    Buffered(Bytes),
    Streamed(Incoming),
}

async fn forward(
    app: &App,
    npm: NpmRequest,
    req: Request<Incoming>,
    rec: &mut Record,
) -> Result<Response<Body>, Refusal> {
    let path = npm.upstream_path();
    rec.path = Some(path.split('?').next().unwrap_or_default().to_owned());
    rec.package = npm.package.as_ref().map(ToString::to_string);
    let session = authenticate(app, req.headers(), rec).await?;
    let (parts, incoming) = req.into_parts();
    let (action, payload) = inspect(app, &npm, &parts.headers, incoming).await?;
    rec.action = Some(action.kind.as_str());
    rec.version = action.version.clone();
    rec.dist_tags = action.tags.clone();
    if action.kind.is_write() && npm.package.as_ref().is_some_and(|p| app.is_frozen(p)) {
        return Err(Refusal::Frozen);
    }
    let upstream = app.upstreams.route(npm.package.as_ref()).ok_or(Refusal::NoUpstream)?;
    rec.upstream = Some(upstream.name.clone());

    let permit = authorize(app, session.as_ref(), npm, &action)?;
    let (npm, credential) = match &permit {
        Permit::Anonymous(npm) => (npm, None),
        Permit::Granted(authorized) => {
            let credential =
                app.credentials.for_authorized(authorized).filter(|c| c.upstream == upstream.name).ok_or_else(
                    || {
                        Refusal::Internal(format!(
                            "grant `{}`'s credential does not serve upstream `{}`",
                            authorized.grant().name,
                            upstream.name
                        ))
                    },
                )?;
            rec.grant = Some(authorized.grant().name.clone());
            (authorized.get(), Some(credential.as_ref()))
        }
    };
    if let (Some(session), Some(_)) = (&session, credential) {
        if action.kind.is_write() {
            spend_use(app, session, npm, &payload).await?;
        }
    }
    if let (Some(doc), Some(credential)) = (&action.deprecate, credential) {
        check_deprecate(app, upstream, npm, doc, credential).await?;
    }

    rec.decision = if credential.is_some() { "allow" } else { "anonymous" };
    let body = match payload {
        Payload::Buffered(bytes) => net::full(bytes),
        Payload::Streamed(incoming) => {
            Limited::new(incoming, app.config.server.max_body_bytes as usize).map_err(BoxError::from).boxed_unsync()
        }
    };
    let resp = upstream.send(npm.method.clone(), &path, &parts.headers, body, credential).await?;
    rec.upstream_status = Some(resp.status().as_u16());
    Ok(upstream::relay(resp, credential)?)
}

/// Looks up the phantom in `Authorization`, if any. Anything else there is refused: other
/// credentials are never forwarded.
async fn authenticate(app: &App, headers: &HeaderMap, rec: &mut Record) -> Result<Option<Session>, Refusal> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Refusal::BadRequest("more than one Authorization header"));
    }
    let value = value.to_str().map_err(|_| Refusal::NotAPhantom)?;
    let (scheme, token) = value.split_once(' ').ok_or(Refusal::NotAPhantom)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Refusal::NotAPhantom);
    }
    let digest = match PhantomToken::parse(token.trim()) {
        Ok(t) => t.digest(),
        Err(crate::phantom::FormatError::NotPhantom) => return Err(Refusal::NotAPhantom),
        Err(e) => return Err(Refusal::BadPhantom(e)),
    };
    rec.token_id = Some(app.audit.token_id(&digest));
    match app.store.lookup(&digest, audit::unix_now()).await? {
        Lookup::Live(record) => {
            rec.identity = Some(identity_summary(&record.identity.issuer, &record.identity.claims));
            Ok(Some(Session { digest, record }))
        }
        Lookup::Expired => Err(Refusal::PhantomNotLive("expired")),
        Lookup::Revoked => Err(Refusal::PhantomNotLive("revoked")),
        Lookup::Unknown => Err(Refusal::PhantomNotLive("unknown")),
    }
}

/// Reads and checks the body where the route needs it, and settles the action.
async fn inspect(
    app: &App,
    npm: &NpmRequest,
    headers: &HeaderMap,
    incoming: Incoming,
) -> Result<(Action, Payload), Refusal> {
    let plain = |kind| Action { kind, version: None, tags: Vec::new(), deprecate: None };
    if npm.is_read() {
        return Ok((plain(ActionKind::Read), Payload::Streamed(incoming)));
    }
    let package = npm.package.as_ref();
    let limit = match npm.op() {
        Op::PutPackument | Op::StagePublish => app.config.server.max_body_bytes,
        _ => SMALL_BODY,
    };
    if npm.needs_body_check() {
        require_plain_json(headers)?;
    }
    let bytes = read_body(headers, incoming, limit).await?;
    let action = match (npm.op(), package) {
        (Op::Whoami, _) => plain(ActionKind::Whoami),
        (Op::PutPackument, Some(p)) => match body::check_put_packument(p, &bytes)? {
            PutPackument::Publish(m) => {
                Action { kind: ActionKind::Publish, version: Some(m.version), tags: m.dist_tags, deprecate: None }
            }
            PutPackument::Deprecate(doc) => Action { deprecate: Some(doc), ..plain(ActionKind::Deprecate) },
        },
        (Op::StagePublish, Some(p)) => {
            let m = body::check_stage_publish(p, &bytes)?;
            Action { kind: ActionKind::StagePublish, version: Some(m.version), tags: m.dist_tags, deprecate: None }
        }
        (Op::PutRevision { .. }, Some(p)) => match body::check_put_revision(p, &bytes)? {
            PutRevision::Owner => plain(ActionKind::Owner),
            PutRevision::UnpublishVersion => plain(ActionKind::Unpublish),
        },
        (Op::DistTagSet { tag }, _) => Action {
            version: Some(body::check_dist_tag_value(&bytes)?),
            tags: vec![tag.clone()],
            ..plain(ActionKind::DistTag)
        },
        (Op::DistTagRemove { tag }, _) => Action { tags: vec![tag.clone()], ..plain(ActionKind::DistTag) },
        (Op::UnpublishPackage { .. } | Op::UnpublishTarball { .. }, _) => plain(ActionKind::Unpublish),
        (Op::AccessSet, _) => plain(ActionKind::Access),
        _ => return Err(Refusal::Internal("a write route without a package".into())),
    };
    Ok((action, Payload::Buffered(bytes)))
}

enum Permit {
    /// Forwarded without any credential.
    Anonymous(NpmRequest),
    Granted(Authorized<NpmRequest>),
}

/// Decides whether the request goes upstream with the grant's credential, without one, or not
/// at all. Reads of packages outside a phantom's scope go anonymously; writes never do.
fn authorize(app: &App, session: Option<&Session>, npm: NpmRequest, action: &Action) -> Result<Permit, Refusal> {
    let Some(session) = session else {
        return if npm.is_read() { Ok(Permit::Anonymous(npm)) } else { Err(Refusal::NeedsPhantom) };
    };
    if npm.always_anonymous() {
        return Ok(Permit::Anonymous(npm));
    }
    let r = &session.record;
    let req = Requested { package: npm.package.as_ref(), action: action.kind, tags: &action.tags };
    match app.policy().authorize(&r.identity, &r.grant, &r.scope, req, npm.clone()) {
        Ok(authorized) => Ok(Permit::Granted(authorized)),
        Err(_) if action.kind == ActionKind::Read => Ok(Permit::Anonymous(npm)),
        Err(denial) => Err(Refusal::Denied(denial)),
    }
}

/// Spends one write use. An identical retry (same method, path and body) is not a new use.
async fn spend_use(app: &App, session: &Session, npm: &NpmRequest, payload: &Payload) -> Result<(), Refusal> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(npm.method.as_str().as_bytes());
    ctx.update(&[0]);
    ctx.update(npm.upstream_path().as_bytes());
    ctx.update(&[0]);
    if let Payload::Buffered(bytes) = payload {
        ctx.update(bytes);
    }
    let mut fingerprint = [0u8; 32];
    fingerprint.copy_from_slice(ctx.finish().as_ref());
    match app.store.consume_use(&session.digest, fingerprint, audit::unix_now()).await? {
        UseOutcome::Counted { .. } | UseOutcome::Retry => Ok(()),
        UseOutcome::Exhausted => Err(Refusal::UsesExhausted),
        UseOutcome::NotLive => Err(Refusal::PhantomNotLive("expired or revoked")),
    }
}

/// A deprecate sends the whole packument back: it must match upstream but for `deprecated`.
async fn check_deprecate(
    app: &App,
    upstream: &upstream::Upstream,
    npm: &NpmRequest,
    doc: &serde_json::Map<String, serde_json::Value>,
    credential: &Credential,
) -> Result<(), Refusal> {
    let package = npm.package.as_ref().ok_or(Refusal::Internal("deprecate without a package".into()))?;
    let path = format!("/{}?write=true", package.escaped());
    let (status, bytes) = upstream.fetch_json(&path, credential, app.config.server.max_body_bytes as usize).await?;
    if status != 200 {
        return Err(Refusal::Upstream(upstream::UpstreamError::Failed(format!("the packument answered {status}"))));
    }
    let current = crate::json::parse_object(&bytes)
        .map_err(|_| Refusal::Upstream(upstream::UpstreamError::Failed("the packument is not JSON".into())))?;
    body::check_deprecate(doc, &current)?;
    Ok(())
}

fn require_plain_json(headers: &HeaderMap) -> Result<(), Refusal> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
    let encoded =
        headers.get(header::CONTENT_ENCODING).is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    if !json || encoded {
        return Err(Refusal::UnsupportedMedia);
    }
    Ok(())
}

/// Reads a whole body, refusing it as soon as it passes `limit`.
async fn read_body(headers: &HeaderMap, incoming: Incoming, limit: u64) -> Result<Bytes, Refusal> {
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(Refusal::TooLarge);
    }
    match Limited::new(incoming, limit as usize).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(Refusal::TooLarge),
        Err(e) => Err(Refusal::ClientBody(net::error_chain(&*e))),
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

fn new_request_id(app: &App) -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    let _ = app.rng.fill(&mut b);
    audit::hex(&b)
}
