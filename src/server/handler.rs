//! One request, top to bottom: classify -> authenticate -> read and check the body -> evaluate
//! policy -> spend a use -> swap the credential -> forward -> relay (scrubbed) -> audit.
//! Audit runs on every path, refusals included.

use super::{exchange, App, Refusal};
use crate::audit::{self, Record};
use crate::credentials::Credential;
use crate::net::{self, Body, BoxError};
use crate::npm::{self, body, ActionKind, NpmRequest, Op, PutRevision, Route};
use crate::phantom::{
    Fingerprint, Lookup, PhantomRecord, PhantomStore, PhantomToken, Selector, TokenDigest, UseOutcome,
};
use crate::policy::{Authorized, Denial, Requested};
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
        method: Some(audit::method(req.method())),
        decision: "deny",
        ..Record::default()
    };
    // The connection boxes this future (`conn.rs`), so the pipeline lives on the heap only
    // while a request is in flight.
    let (mut response, forwarded) = match process(&app, req, &mut rec).await {
        Ok(resp) => (resp, true),
        Err(refusal) => {
            rec.decision = match refusal {
                Refusal::Upstream(_)
                | Refusal::UpstreamFailed(_)
                | Refusal::Store(_)
                | Refusal::Internal(_)
                | Refusal::AuditUnavailable => "error",
                _ => "deny",
            };
            rec.reason = Some(refusal.detail());
            (refusal.response(), false)
        }
    };
    rec.status = response.status().as_u16();
    rec.latency_ms = (started.elapsed().as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0;
    let rec = Arc::new(rec);
    if rec.event == "exchange" && rec.decision == "allow" {
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
    if forwarded {
        response = watch_body(response, &app, rec);
    }
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}

/// Relayed bodies can still fail after the status line went out (an upstream reset mid-body,
/// a client too slow to send): such a failure gets its own audit line, with the same request id.
fn watch_body(resp: Response<Body>, app: &Arc<App>, rec: Arc<Record>) -> Response<Body> {
    let (parts, body) = resp.into_parts();
    let app = app.clone();
    let body = body.map_err(move |e| {
        let line = Record {
            event: "request",
            request_id: rec.request_id.clone(),
            method: rec.method.clone(),
            path: rec.path.clone(),
            package: rec.package.clone(),
            token_id: rec.token_id.clone(),
            decision: "error",
            status: rec.status,
            reason: Some(format!("the response body failed: {}", net::error_chain(&*e))),
            ..Record::default()
        };
        app.audit.write_queued(Arc::new(line));
        e
    });
    Response::from_parts(parts, body.boxed_unsync())
}

async fn process(app: &App, req: Request<Incoming>, rec: &mut Record) -> Result<Response<Body>, Refusal> {
    refuse_misplaced_phantoms(&req)?;
    // Exchanges are boxed: they are rare next to registry requests, and their state (an ID
    // token's verification) would otherwise enlarge every request's future.
    match npm::classify(req.method(), req.uri().path(), req.uri().query())? {
        Route::NpmOidcExchange { package } => Box::pin(exchange::npm_native(app, package, req, rec)).await,
        Route::PhantomExchange => Box::pin(exchange::generic(app, req, rec)).await,
        Route::Forbidden { what } => Err(Refusal::Forbidden(what)),
        Route::Registry(npm) => forward(app, npm, req, rec).await,
    }
}

/// A caller that presented a live phantom.
pub(super) struct Session {
    pub(super) digest: TokenDigest,
    pub(super) record: Arc<PhantomRecord>,
}

/// The action a request performs once its body has been read.
struct Action {
    kind: ActionKind,
    version: Option<String>,
    tags: Vec<String>,
    /// A comparison with the upstream packument, made once the credential may be used.
    against_upstream: Option<UpstreamCheck>,
}

impl Action {
    fn plain(kind: ActionKind) -> Action {
        Action { kind, version: None, tags: Vec::new(), against_upstream: None }
    }
}

pub(super) enum UpstreamCheck {
    /// A deprecate sends the whole packument back: only `deprecated` fields may differ.
    Deprecate(serde_json::Map<String, serde_json::Value>),
    /// A version removal: only versions (and the tags naming them) may go.
    UnpublishVersion,
}

enum Payload {
    /// A write body, held with its share of the buffering budget.
    Buffered(Bytes, tokio::sync::OwnedSemaphorePermit),
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
    precheck(app, session.as_ref(), &npm)?;
    let upstreams = app.upstreams();
    let upstream = upstreams.route(npm.package.as_ref()).ok_or(Refusal::NoUpstream)?;
    rec.upstream = Some(upstream.name.clone());
    let (parts, incoming) = req.into_parts();
    if let (Op::PutPackument | Op::StagePublish, Some(session)) = (npm.op(), &session) {
        return Box::pin(super::publish::forward(app, npm, parts, incoming, session, upstream, rec)).await;
    }
    // Writes' own steps (reading and checking the body, comparing with the upstream) are boxed,
    // so that a read's future, allocated for every request, holds none of their state.
    let (action, payload) = if npm.is_read() {
        (Action::plain(ActionKind::Read), Payload::Streamed(incoming))
    } else {
        Box::pin(inspect(app, &npm, &parts.headers, incoming)).await?
    };
    rec.action = Some(action.kind.as_str());
    rec.version = action.version.clone();
    rec.dist_tags = action.tags.clone();

    let permit = authorize(app, session.as_ref(), npm, &action)?;
    let (npm, credential) = match &permit {
        Permit::Anonymous(npm) => (npm, None),
        Permit::Granted(authorized) => {
            let credential = app.credentials.for_authorized(authorized).filter(|c| *c.upstream == *upstream.name);
            let credential = credential.ok_or_else(|| {
                let grant = &authorized.grant().name;
                Refusal::Internal(format!("grant `{grant}`'s credential does not serve upstream `{}`", upstream.name))
            })?;
            rec.grant = Some(authorized.grant().name.clone());
            (authorized.get(), Some(credential.as_ref()))
        }
    };
    if let (Some(check), Some(credential), Payload::Buffered(bytes, _)) =
        (&action.against_upstream, credential, &payload)
    {
        Box::pin(compare_with_upstream(app, upstream, npm, check, bytes, credential)).await?;
    }
    let spent = match (&session, credential, &payload) {
        (Some(session), Some(_), Payload::Buffered(bytes, _)) if action.kind.is_write() => {
            let mut fingerprinter = Fingerprinter::new(npm);
            fingerprinter.update(bytes);
            let fingerprint = fingerprinter.finish();
            spend_use(app, session, fingerprint).await?;
            Some((session, fingerprint))
        }
        _ => None,
    };

    rec.decision = if credential.is_some() { "allow" } else { "anonymous" };
    if action.kind.is_write() {
        // Write-ahead: a write is forwarded only once it is on record.
        let intent = Record { decision: "forwarding", status: 0, ..rec.clone() };
        app.audit.write_confirmed(Arc::new(intent)).await.map_err(|_| Refusal::AuditUnavailable)?;
    } else if !app.audit.is_healthy() && !app.config.audit.serve_reads_on_failure {
        return Err(Refusal::AuditUnavailable);
    }
    let (body, budget) = match payload {
        Payload::Buffered(bytes, budget) => (net::full(bytes), Some(budget)),
        // A read without a body (nearly all) needs no timer and no box.
        Payload::Streamed(incoming) if http_body::Body::is_end_stream(&incoming) => (net::empty(), None),
        Payload::Streamed(incoming) => {
            let idle = net::IdleTimeout::new(incoming, app.config.server.client_timeout);
            let limited = Limited::new(idle, app.config.server.max_body_bytes as usize);
            (limited.map_err(BoxError::from).boxed_unsync(), None)
        }
    };
    let sent = upstream.send(npm.method.clone(), &path, &parts.headers, body, credential).await;
    drop(budget);
    if let Some((session, fingerprint)) = spent {
        let ok = sent.as_ref().is_ok_and(|r| r.status().is_success());
        app.store.settle(&session.digest, fingerprint, ok).await?;
    }
    let resp = sent?;
    rec.upstream_status = Some(resp.status().as_u16());
    if action.kind.is_write() && resp.status().is_server_error() {
        return Err(Refusal::UpstreamFailed(resp.status().as_u16()));
    }
    Ok(upstream::relay(resp, credential, app.config.server.upstream_timeout)?)
}

/// Refuses, before any body is read, writes without a phantom, writes outside the phantom's
/// packages and actions, and writes to frozen packages.
fn precheck(app: &App, session: Option<&Session>, npm: &NpmRequest) -> Result<(), Refusal> {
    if npm.is_read() {
        return Ok(());
    }
    let session = session.ok_or(Refusal::NeedsPhantom)?;
    let scope = &session.record.scope;
    if let Some(p) = &npm.package {
        if !scope.packages.contains(p) {
            return Err(Refusal::Denied(Denial::PackageOutOfScope));
        }
        if app.is_frozen(p) {
            return Err(Refusal::Frozen);
        }
    }
    let candidates = npm.candidate_actions();
    if scope.actions.intersect(candidates).is_empty() {
        let first = candidates.iter().next().map_or("write", ActionKind::as_str);
        return Err(Refusal::Denied(Denial::ActionOutOfScope(first)));
    }
    Ok(())
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
    let state = match app.store.lookup(&digest, audit::unix_now()).await? {
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

/// Reads and checks a write's body, and settles its action. (Reads have no body to check.)
async fn inspect(
    app: &App,
    npm: &NpmRequest,
    headers: &HeaderMap,
    incoming: Incoming,
) -> Result<(Action, Payload), Refusal> {
    let plain = Action::plain;
    let package = npm.package.as_ref();
    // Publishes stream (`publish.rs`); what is buffered here is a version removal (a packument)
    // or a small body.
    let limit = match npm.op() {
        Op::PutRevision { .. } => app.config.server.max_body_bytes,
        _ => SMALL_BODY,
    };
    if npm.needs_body_check() {
        require_plain_json(headers)?;
    }
    let budget = reserve_buffer(app, headers, limit).await?;
    let bytes = read_body(incoming, limit, app.config.server.client_timeout).await?;
    let action = match (npm.op(), package) {
        (Op::Whoami, _) => plain(ActionKind::Whoami),
        (Op::PutRevision { .. }, Some(p)) => match body::check_put_revision(p, &bytes)? {
            PutRevision::Owner => plain(ActionKind::Owner),
            PutRevision::UnpublishVersion => {
                Action { against_upstream: Some(UpstreamCheck::UnpublishVersion), ..plain(ActionKind::Unpublish) }
            }
        },
        (Op::DistTagSet { tag }, _) => Action {
            version: Some(body::check_dist_tag_value(&bytes)?),
            tags: vec![tag.clone()],
            ..plain(ActionKind::DistTag)
        },
        (Op::DistTagRemove { tag }, _) => Action { tags: vec![tag.clone()], ..plain(ActionKind::DistTag) },
        (Op::UnpublishPackage { .. } | Op::UnpublishTarball { .. }, _) => plain(ActionKind::Unpublish),
        (Op::AccessSet, _) => {
            body::check_access(&bytes)?;
            plain(ActionKind::Access)
        }
        _ => return Err(Refusal::Internal("a write route without a package".into())),
    };
    Ok((action, Payload::Buffered(bytes, budget)))
}

/// Takes this body's share of the budget for buffered bodies, waiting at most the client
/// timeout: many large uploads at once are turned away rather than exhausting memory.
async fn reserve_buffer(
    app: &App,
    headers: &HeaderMap,
    limit: u64,
) -> Result<tokio::sync::OwnedSemaphorePermit, Refusal> {
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(Refusal::TooLarge);
    }
    let kib = declared.unwrap_or(limit).div_ceil(1024).max(1);
    let kib = u32::try_from(kib).unwrap_or(u32::MAX).min(app.buffer_budget_kib);
    let acquire = app.buffer_budget.clone().acquire_many_owned(kib);
    match tokio::time::timeout(app.config.server.client_timeout, acquire).await {
        Ok(Ok(permit)) => Ok(permit),
        _ => Err(Refusal::Busy),
    }
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

/// The fingerprint of a write (method, path and body), the identity of a retry.
///
/// BLAKE3, not ring's SHA-256: the fingerprint covers every byte of a publish, and on a 200 MB
/// tarball SHA-256 was a third of the broker's CPU time (BENCHMARKS.md). It is the broker's
/// own value, never compared with anything outside it. The body is hashed on its own, staged
/// into aligned 64 KiB blocks, the size at which BLAKE3 hashes 16 chunks per instruction
/// (network reads come in odd sizes); the fingerprint is the hash of the method, the path and
/// that hash.
pub(super) struct Fingerprinter {
    prefix: Vec<u8>,
    body: blake3::Hasher,
    staged: Vec<u8>,
}

const FINGERPRINT_BLOCK: usize = 64 * 1024;

impl Fingerprinter {
    pub(super) fn new(npm: &NpmRequest) -> Fingerprinter {
        Fingerprinter::of(npm.method.as_str(), &npm.upstream_path())
    }

    fn of(method: &str, path: &str) -> Fingerprinter {
        // Method and path end in a zero byte, which neither can hold.
        let prefix = [method.as_bytes(), &[0], path.as_bytes(), &[0]].concat();
        Fingerprinter { prefix, body: blake3::Hasher::new(), staged: Vec::new() }
    }

    pub(super) fn update(&mut self, mut data: &[u8]) {
        if !self.staged.is_empty() {
            let take = data.len().min(FINGERPRINT_BLOCK - self.staged.len());
            self.staged.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.staged.len() < FINGERPRINT_BLOCK {
                return;
            }
            self.body.update(&self.staged);
            self.staged.clear();
        }
        let whole = data.len() - data.len() % FINGERPRINT_BLOCK;
        self.body.update(&data[..whole]);
        self.staged.extend_from_slice(&data[whole..]);
    }

    pub(super) fn finish(mut self) -> Fingerprint {
        self.body.update(&self.staged);
        let mut all = blake3::Hasher::new();
        all.update(&self.prefix);
        all.update(self.body.finalize().as_bytes());
        *all.finalize().as_bytes()
    }
}

/// Spends one write use. Resending the last write after it failed upstream (npm retries PUTs
/// on 5xx) is not a new use.
pub(super) async fn spend_use(app: &App, session: &Session, fingerprint: Fingerprint) -> Result<(), Refusal> {
    match app.store.consume_use(&session.digest, fingerprint, audit::unix_now()).await? {
        UseOutcome::Counted { .. } | UseOutcome::Retry => Ok(()),
        UseOutcome::Exhausted => Err(Refusal::UsesExhausted),
        UseOutcome::NotLive => Err(Refusal::PhantomNotLive("expired or revoked")),
    }
}

/// Compares a deprecate or a version removal with the upstream packument (fetched with the
/// credential, `?write=true`), so that neither can change more than it says.
pub(super) async fn compare_with_upstream(
    app: &App,
    upstream: &upstream::Upstream,
    npm: &NpmRequest,
    check: &UpstreamCheck,
    bytes: &Bytes,
    credential: &Credential,
) -> Result<(), Refusal> {
    let package = npm.package.as_ref().ok_or(Refusal::Internal("a package write without a package".into()))?;
    let path = format!("/{}?write=true", package.escaped());
    let (status, current) = upstream.fetch_json(&path, credential, app.config.server.max_body_bytes as usize).await?;
    if status != 200 {
        return Err(Refusal::Upstream(upstream::UpstreamError::Failed(format!("the packument answered {status}"))));
    }
    let current = crate::json::parse_object(&current)
        .map_err(|_| Refusal::Upstream(upstream::UpstreamError::Failed("the packument is not JSON".into())))?;
    match check {
        UpstreamCheck::Deprecate(doc) => body::check_deprecate(doc, &current)?,
        UpstreamCheck::UnpublishVersion => body::check_unpublish_version(bytes, &current)?,
    }
    Ok(())
}

pub(super) fn require_plain_json(headers: &HeaderMap) -> Result<(), Refusal> {
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
async fn read_body(incoming: Incoming, limit: u64, idle: std::time::Duration) -> Result<Bytes, Refusal> {
    match Limited::new(net::IdleTimeout::new(incoming, idle), limit as usize).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(Refusal::TooLarge),
        Err(e) if e.is::<net::BodyTimeout>() => Err(Refusal::ClientTimeout),
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

/// Request ids: a random per-process prefix and a counter (no system call per request).
fn new_request_id(app: &App) -> String {
    let n = app.requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    request_id(&app.request_prefix, n)
}

/// `prefix` and `n` in hexadecimal, at least 10 digits (as `{n:010x}`, without the formatter).
fn request_id(prefix: &str, n: u64) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let width = (16 - n.leading_zeros() as usize / 4).max(10);
    let mut id = String::with_capacity(prefix.len() + 16);
    id.push_str(prefix);
    for i in (0..width).rev() {
        id.push(DIGITS[(n >> (4 * i)) as usize & 15] as char);
    }
    id
}

#[cfg(test)]
mod request_id_tests {
    #[test]
    fn request_ids_are_the_prefix_and_ten_or_more_hex_digits() {
        for n in [0, 1, 0xabc, 0xff_ffff_ffff, 0x100_0000_0000, 0x1234_5678_9abc_def0, u64::MAX] {
            assert_eq!(super::request_id("p-", n), format!("p-{n:010x}"));
        }
    }
}

#[cfg(test)]
mod fingerprint_tests {
    use super::Fingerprinter;

    fn fingerprint(method: &str, path: &str, body: &[u8], chunk: usize) -> [u8; 32] {
        let mut f = Fingerprinter::of(method, path);
        body.chunks(chunk).for_each(|c| f.update(c));
        f.finish()
    }

    #[test]
    fn a_fingerprint_depends_on_the_bytes_not_on_how_they_arrived() {
        let body: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let whole = fingerprint("PUT", "/a", &body, body.len());
        assert_eq!(
            whole,
            *blake3::hash(&[b"PUT\0/a\0".as_slice(), blake3::hash(&body).as_bytes()].concat()).as_bytes()
        );
        for chunk in [1, 7, 1000, 16_384, 65_535, 65_536, 65_537, 200_000] {
            assert_eq!(fingerprint("PUT", "/a", &body, chunk), whole, "chunks of {chunk}");
        }
        let mut other = body.clone();
        other[250_000] ^= 1;
        assert_ne!(fingerprint("PUT", "/a", &other, 16_384), whole);
        assert_ne!(fingerprint("PUT", "/b", &body, 16_384), whole);
        assert_ne!(fingerprint("DELETE", "/a", &body, 16_384), whole);
        assert_ne!(fingerprint("PUT", "/a", &body[1..], 16_384), whole);
    }
}
