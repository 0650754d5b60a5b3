//! A write, top to bottom. One path for every write (publish, staged publish, deprecate,
//! dist-tag, version removal, unpublish, owner, access, and `whoami`, which needs a phantom but
//! changes nothing):
//!
//! open (scope, freeze, a use left, the phantom's open writes: before any byte of the body is
//! read) -> the broker's own content headers (415 otherwise) -> provisional authorization of the
//! actions the route may be -> the body through the gate (`gate.rs`), a publish streaming
//! upstream as it arrives -> the body's checks settle the exact action -> exact authorization ->
//! comparison with the upstream's packument (deprecates, version removals) -> a use spent -> the
//! write on record (write-ahead) -> release, or abort -> relay, scrubbed.

use super::gate::{Intake, Released, Stop, UpstreamStart, WriteBody};
use super::refusal::Refusal;
use super::session::Session;
use super::staged::{self, Upstreamed};
use crate::app::App;
use crate::audit::{Decision, Record, UpstreamRequest};
use crate::credentials::UpstreamAuth;
use crate::npm::{body, ActionKind, NpmRequest, Op, PackageName, PutPackument, PutRevision};
use crate::phantom::{Fingerprint, Fingerprinter, TokenDigest};
use crate::policy::{Authorized, PublishMode, Rate, Requested};
use crate::state::{OpenWrite, PhantomStore, RateOutcome, UseOutcome};
use crate::support::json;
use crate::support::net::Body;
use crate::upstream::{self, Content, Pooled, Upstream, UpstreamError};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response};
use hyper::body::Incoming;
use std::sync::Arc;

/// Bodies of small writes (dist-tag, access) are at most this large.
const SMALL_BODY: u64 = 1024 * 1024;
/// A publish's skeleton (its body without tarball data) is at most this large.
const MAX_SKELETON: u64 = 32 * 1024 * 1024;

pub(super) async fn forward(
    app: &App,
    npm: NpmRequest,
    session: Option<Session>,
    upstream: &Upstream,
    req: Request<Incoming>,
    rec: &mut Record,
) -> Result<Response<Body>, Refusal> {
    let session = session.ok_or(Refusal::NeedsPhantom)?;
    // Counted among the phantom's open writes until this one ends.
    let _open = open(app, &session, &npm).await?;
    let (parts, incoming) = req.into_parts();
    let content = content(&parts.headers, &npm)?;
    let r = &session.record;
    let (package, candidates) = (npm.package.clone(), npm.candidate_actions());
    let provisional = app
        .policy()
        .authorize_provisional(&r.identity, &r.grant, &r.scope, package.as_ref(), candidates, npm)
        .map_err(Refusal::Denied)?;
    let auth = app.credentials.for_authorized(&provisional, &upstream.name).map_err(Refusal::Internal)?;
    let grant = provisional.grant();
    rec.grant = Some(grant.name.clone());
    if let (Some(rate), Some(p)) = (grant.rate, &package) {
        // A caller past its rate is refused before anything is read.
        within_rate(app, &session, p, rate, false).await?;
    }
    // A grant that stages its publishes sends an `npm publish` as `npm stage publish`, with the
    // `npm-command` npm's own `npm stage publish` sends.
    let staging = (grant.publish == PublishMode::Stage).then(|| provisional.get().as_staged()).flatten();
    let stage_headers = staging.as_ref().map(|_| {
        let mut h = parts.headers.clone();
        h.insert("npm-command", HeaderValue::from_static("stage"));
        h
    });
    let (method, path) = (provisional.get().method.clone(), provisional.get().upstream_path());
    // A publish the registry refuses may need explaining (`E_STAGE_REQUIRED`, a staged version).
    let may_publish = matches!(provisional.get().op(), Op::PutPackument | Op::StagePublish);
    let intake = intake(app, provisional.get(), staging.is_some(), &parts.headers)?;
    let (mut body, start) = WriteBody::open(&app.write_memory, intake, Fingerprinter::of(method.as_str(), &path))?;

    let ctx = Ctx { app, session: &session, upstream, auth: &auth };
    let decided = decide(&ctx, provisional, &mut body, incoming, rec);
    let (sent, decided) = match start {
        // A streamed write's request starts now; the gate holds back its end until the verdict.
        UpstreamStart::Now(stream) => {
            let send = upstream.send(method, &path, &parts.headers, content, stream, &auth);
            let (sent, decided) = tokio::join!(send, decided);
            (Some(sent), decided)
        }
        // A publish to stage starts when its body shows it is one.
        UpstreamStart::OnPublish(later) => {
            let (Some(staged), Some(headers)) = (&staging, &stage_headers) else {
                return Err(Refusal::Internal("a deferred write that is not staged".into()));
            };
            let send = async {
                let stream = later.await.ok()?;
                Some(
                    upstream
                        .send(staged.method.clone(), &staged.upstream_path(), headers, content, stream, &auth)
                        .await,
                )
            };
            tokio::join!(send, decided)
        }
        UpstreamStart::AfterVerdict => (None, decided.await),
    };
    let (verdict, released) = match decided {
        Ok(decided) => decided,
        Err(stop) => return stopped(app, may_publish, stop, sent, &body, &auth, rec).await,
    };
    // Whether it goes upstream as a staged publish. A publish under a stage grant goes to the
    // stage route whatever its body looked like to the scanner: the action its checks settled
    // decides.
    let staged_whole = staging.as_ref().filter(|_| verdict.action == ActionKind::Publish);
    let staged = match verdict.request.get().op() {
        Op::StagePublish => true,
        Op::PutPackument => (body.streamed() && staging.is_some()) || staged_whole.is_some(),
        _ => false,
    };
    let sent = match (sent, released) {
        (Some(sent), Released::Streamed) => sent,
        (None, Released::Whole(whole)) => {
            let (npm, headers) = match (staged_whole, &stage_headers) {
                (Some(npm), Some(headers)) => (npm, headers),
                _ => (verdict.request.get(), &parts.headers),
            };
            upstream.send(npm.method.clone(), &npm.upstream_path(), headers, content, whole, &auth).await
        }
        _ => return Err(Refusal::Internal("a write released otherwise than it was opened".into())),
    };
    if let Some(fingerprint) = verdict.spent {
        // A write: on record as released whole (a whole body once the upstream took it).
        if body.streamed() || sent.is_ok() {
            rec.upstream_request = Some(UpstreamRequest::Complete);
            rec.upstream_bytes = Some(body.sent());
        }
        let ok = sent.as_ref().is_ok_and(|r| r.status().is_success());
        app.store.settle(&session.digest, fingerprint, ok).await?;
        if !ok {
            give_back(app, verdict.rate_slot.as_ref()).await;
        }
    }
    let resp = sent?;
    let status = resp.status();
    rec.upstream_status = Some(status.as_u16());
    if let (Op::UnpublishPackage { .. }, Some(p), true) =
        (verdict.request.get().op(), &verdict.request.get().package, status.is_success())
    {
        app.known_packages.forget(&upstream.name, p);
    }
    if status.is_server_error() {
        return Err(Refusal::UpstreamFailed(status.as_u16()));
    }
    let resp = upstream::relay(resp, &auth, app.config.server.upstream_timeout)?;
    if !verdict.action.publishes() {
        return Ok(resp);
    }
    if status.is_success() {
        let at = Upstreamed { app, upstream, auth: &auth };
        return staged::publish_reply(&at, verdict.request.grant(), resp, staged, rec).await;
    }
    if status.is_client_error() {
        return staged::publish_refused(resp, rec).await;
    }
    Ok(resp)
}

/// Whether one more write to `package` under the caller's grant fits the grant's `rate`; with
/// `take`, it is counted. The window is the grant's and the package's, shared by every identity
/// the grant admits: a GitHub `sub` changes with the ref and the environment, so a count per
/// identity would give a job that can run under several a fresh window for each. Past the rate:
/// 429, and with `server.freeze_on_burst` the package is frozen.
async fn within_rate(
    app: &App,
    session: &Session,
    package: &PackageName,
    rate: Rate,
    take: bool,
) -> Result<Option<RateSlot>, Refusal> {
    let key = format!("{}\0{package}", session.record.grant);
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis();
    let at_ms = u64::try_from(now_ms).unwrap_or(u64::MAX);
    match app.store.rate(&key, rate, at_ms, take).await? {
        RateOutcome::Allowed => Ok(take.then_some(RateSlot { key, at_ms })),
        RateOutcome::Limited { retry_after } => {
            // The write is refused either way; the refusal says whether the freeze took.
            let frozen = app.config.server.freeze_on_burst && app.freeze(package).await.is_ok();
            Err(Refusal::RateLimited { retry_after, frozen })
        }
    }
}

/// A write counted against its grant's `rate`.
struct RateSlot {
    key: String,
    at_ms: u64,
}

/// Gives back the rate slot of a write that did not go through (its resend is not another).
async fn give_back(app: &App, slot: Option<&RateSlot>) {
    if let Some(slot) = slot {
        let _ = app.store.rate_give_back(&slot.key, slot.at_ms).await;
    }
}

/// A write that did not get through: refused by the broker, or ended by the upstream before
/// the broker released it. The record says how much of it had gone upstream.
async fn stopped(
    app: &App,
    may_publish: bool,
    stop: Stop,
    sent: Option<Result<Response<Pooled>, UpstreamError>>,
    body: &WriteBody,
    auth: &UpstreamAuth,
    rec: &mut Record,
) -> Result<Response<Body>, Refusal> {
    if body.streamed() {
        rec.upstream_request = Some(UpstreamRequest::Aborted);
        rec.upstream_bytes = Some(body.sent());
    }
    if let Some(Ok(resp)) = &sent {
        rec.upstream_status = Some(resp.status().as_u16());
    }
    match (stop, sent) {
        (Stop::Refused(refusal), _) => Err(refusal),
        // The upstream ended an unreleased write itself. Its refusal of the request is relayed;
        // its failure is a 502, as after a release; anything else (a success for a request it
        // never had whole) is not believed.
        (Stop::UpstreamGone, Some(Ok(resp))) if resp.status().is_client_error() => {
            rec.decision = Decision::Error;
            rec.reason = Some("the upstream refused the write before the broker released it".into());
            let resp = upstream::relay(resp, auth, app.config.server.upstream_timeout)?;
            if may_publish {
                return staged::publish_refused(resp, rec).await;
            }
            Ok(resp)
        }
        (Stop::UpstreamGone, Some(Ok(resp))) if resp.status().is_server_error() => {
            Err(Refusal::UpstreamFailed(resp.status().as_u16()))
        }
        (Stop::UpstreamGone, Some(Ok(resp))) => Err(Refusal::UpstreamAnsweredEarly(resp.status().as_u16())),
        (Stop::UpstreamGone, Some(Err(e))) => Err(Refusal::Upstream(e)),
        // A whole body has no upstream request before its verdict.
        (Stop::UpstreamGone, None) => Err(Refusal::Internal("a whole body's upstream went away".into())),
    }
}

/// A write counted open at the store, until it ends, however it ends.
struct OpenWriteGuard<'a> {
    store: &'a crate::state::Store,
    digest: TokenDigest,
}

impl Drop for OpenWriteGuard<'_> {
    fn drop(&mut self) {
        self.store.close_write(&self.digest);
    }
}

/// Refuses, before any of the body is read, writes outside the phantom's packages and actions,
/// writes to frozen packages, and writes beyond what the phantom could still spend (no use
/// left, or as many writes open as it has uses).
async fn open<'a>(app: &'a App, session: &Session, npm: &NpmRequest) -> Result<Option<OpenWriteGuard<'a>>, Refusal> {
    let scope = &session.record.scope;
    if let Some(p) = &npm.package {
        if !scope.packages.contains(p) {
            return Err(Refusal::Denied(crate::policy::Denial::PackageOutOfScope));
        }
        if app.is_frozen(p) {
            return Err(Refusal::Frozen);
        }
    }
    let candidates = npm.candidate_actions();
    if scope.actions.intersect(candidates).is_empty() {
        return Err(Refusal::Denied(crate::policy::Denial::ActionOutOfScope(npm.route_action().as_str())));
    }
    if !candidates.iter().any(ActionKind::is_write) {
        return Ok(None);
    }
    match app.store.open_write(&session.digest, crate::support::clock::unix_now()).await? {
        OpenWrite::Opened => Ok(Some(OpenWriteGuard { store: &app.store, digest: session.digest })),
        OpenWrite::NoUsesLeft => Err(Refusal::UsesExhausted),
        OpenWrite::TooMany => Err(Refusal::WritesInFlight),
        OpenWrite::NotLive => Err(Refusal::PhantomNotLive("expired or revoked")),
    }
}

/// The headers that tell the upstream how to read the body are the broker's: a body is sent as
/// `Content-Type: application/json` exactly, so the caller's may say nothing else (a charset
/// other than UTF-8 would make the upstream decode other text than the broker checked), and
/// no content-encoding (the broker checks bodies as they are, and does not decode them).
fn content(headers: &HeaderMap, npm: &NpmRequest) -> Result<Content, Refusal> {
    if !npm.takes_body() {
        return Ok(Content::None);
    }
    let mut types = headers.get_all(header::CONTENT_TYPE).iter();
    let (Some(value), None) = (types.next(), types.next()) else {
        return Err(Refusal::UnsupportedMedia("a write needs exactly one Content-Type"));
    };
    let value = value.to_str().map_err(|_| Refusal::UnsupportedMedia("the Content-Type is not text"))?;
    let mut parts = value.split(';');
    if !parts.next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json")) {
        return Err(Refusal::UnsupportedMedia("the media type is not application/json"));
    }
    for param in parts {
        let (name, value) = param.split_once('=').unwrap_or((param, ""));
        let value = value.trim();
        let value = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value);
        if !(name.trim().eq_ignore_ascii_case("charset") && value.eq_ignore_ascii_case("utf-8")) {
            return Err(Refusal::UnsupportedMedia("a Content-Type parameter other than charset=utf-8"));
        }
    }
    let encoded =
        headers.get_all(header::CONTENT_ENCODING).iter().any(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    if encoded {
        return Err(Refusal::UnsupportedMedia("a content-encoding"));
    }
    Ok(Content::Json)
}

/// How the route's body goes through the gate. A declared length past the limit is refused
/// before anything is read.
fn intake(app: &App, npm: &NpmRequest, staging: bool, headers: &HeaderMap) -> Result<Intake, Refusal> {
    let max = app.config.server.max_body_bytes;
    let max_skeleton = MAX_SKELETON.min(max) as usize;
    let intake = match npm.op() {
        // A `PUT /<name>` may be a publish (to stage) or a deprecate (to send as it is): the body
        // tells which before its request starts.
        Op::PutPackument if staging => Intake::OnPublish { limit: max, max_skeleton },
        Op::PutPackument | Op::StagePublish => Intake::Streamed { limit: max, max_skeleton },
        // A version removal sends the whole packument back.
        Op::PutRevision { .. } => Intake::Whole { limit: max },
        _ if npm.takes_body() => Intake::Whole { limit: SMALL_BODY },
        _ => Intake::Whole { limit: 0 },
    };
    let limit = match intake {
        Intake::Whole { limit } | Intake::Streamed { limit, .. } | Intake::OnPublish { limit, .. } => limit,
    };
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(if limit == 0 { Refusal::Body(body::BodyError::UnexpectedBody) } else { Refusal::TooLarge });
    }
    Ok(intake)
}

/// What a checked body turned out to do.
struct Action {
    kind: ActionKind,
    version: Option<String>,
    tags: Vec<String>,
    /// A comparison with the upstream packument, made once the credential may be used.
    against_upstream: Option<UpstreamCheck>,
}

enum UpstreamCheck {
    /// A deprecate sends the whole packument back: only `deprecated` fields may differ.
    Deprecate(serde_json::Map<String, serde_json::Value>),
    /// A version removal: only versions (and the tags naming them) may go.
    UnpublishVersion,
}

/// A write the verdict allowed.
struct Verdict {
    /// The request, exactly authorized.
    request: Authorized<NpmRequest>,
    /// What its body made it.
    action: ActionKind,
    /// The use spent, to settle once the upstream answered.
    spent: Option<Fingerprint>,
    /// Its place in the grant's rate, given back if it does not go through.
    rate_slot: Option<RateSlot>,
}

/// What every step of a write's verdict works with.
struct Ctx<'a> {
    app: &'a App,
    session: &'a Session,
    upstream: &'a Upstream,
    auth: &'a UpstreamAuth,
}

/// Reads the body through the gate and decides. An allowed write is released (a streamed one's
/// held bytes and end go upstream; a whole one is handed back to be sent); a refused one is
/// cut off.
async fn decide(
    ctx: &Ctx<'_>,
    provisional: Authorized<NpmRequest>,
    body: &mut WriteBody,
    incoming: Incoming,
    rec: &mut Record,
) -> Result<(Verdict, Released), Stop> {
    let app = ctx.app;
    let judged = match judge(ctx, provisional, body, incoming, rec).await {
        Ok(verdict) => match body.release().await {
            Ok(released) => Ok((verdict, released)),
            Err(stop) => {
                give_back(app, verdict.rate_slot.as_ref()).await;
                Err(stop)
            }
        },
        Err(stop) => Err(stop),
    };
    if judged.is_err() {
        body.abort();
    }
    judged
}

/// The verdict: the body's checks, the exact authorization, the comparison with upstream, a use
/// spent and the write on record (write-ahead).
async fn judge(
    ctx: &Ctx<'_>,
    provisional: Authorized<NpmRequest>,
    body: &mut WriteBody,
    incoming: Incoming,
    rec: &mut Record,
) -> Result<Verdict, Stop> {
    let Ctx { app, session, upstream, auth } = *ctx;
    let checked = body.read(incoming, app.config.server.client_timeout).await?;
    let g = provisional.grant();
    let (credential, publish, may_create) = (g.credential.clone(), g.publish, g.create);
    let npm = provisional.into_inner();
    // The checks parse what they read: that memory is the write's too.
    body.hold(json::parsed_size(&checked.bytes))?;
    let action = settle(&npm, &checked.bytes)?;
    if body.started_on_publish() && action.kind != ActionKind::Publish {
        // Its request went to the stage route: only a publish belongs there.
        return Err(Refusal::Internal(format!("a body staged as a publish settled as {}", action.kind.as_str())).into());
    }
    rec.action = Some(crate::audit::Action::npm(action.kind));
    rec.version = action.version.clone();
    rec.dist_tags = action.tags.clone();
    let r = &session.record;
    let package = npm.package.clone();
    // Whether the publish would create the package matters only to a grant that may not.
    let creates = match &package {
        Some(p) if action.kind.publishes() && !may_create => creates_package(app, upstream, p, auth).await?,
        _ => false,
    };
    rec.new_package = creates;
    let requested = Requested {
        package: package.as_ref(),
        action: action.kind,
        tags: &action.tags,
        version: action.version.as_deref(),
        creates,
    };
    let authorized =
        app.policy().authorize(&r.identity, &r.grant, &r.scope, requested, npm).map_err(Refusal::Denied)?;
    let g = authorized.grant();
    if g.credential != credential || g.publish != publish || g.create != may_create {
        // The policy was reloaded mid-write: the request already carries the old credential,
        // or went to the route the old grant chose.
        return Err(Refusal::Denied(crate::policy::Denial::GrantGone(r.grant.clone())).into());
    }
    if let Some(check) = &action.against_upstream {
        Box::pin(compare_with_upstream(app, upstream, authorized.get(), check, &checked.bytes, auth, body)).await?;
    }
    let (mut spent, mut rate_slot) = (None, None);
    if action.kind.is_write() {
        // A freeze made while the body was arriving holds too.
        if package.as_ref().is_some_and(|p| app.is_frozen(p)) {
            return Err(Refusal::Frozen.into());
        }
        if let (Some(rate), Some(p)) = (authorized.grant().rate, &package) {
            rate_slot = within_rate(app, session, p, rate, true).await?;
        }
        let recorded = async {
            spend_use(app, session, checked.fingerprint).await?;
            // Write-ahead: a write is released only once it is on record.
            let intent = Record { decision: Decision::Forwarding, status: 0, ..rec.clone() };
            app.audit.write_confirmed(Arc::new(intent)).await.map_err(|_| Refusal::AuditUnavailable)
        };
        if let Err(refusal) = recorded.await {
            give_back(app, rate_slot.as_ref()).await;
            return Err(refusal.into());
        }
        spent = Some(checked.fingerprint);
    }
    rec.decision = Decision::Allow;
    Ok(Verdict { request: authorized, action: action.kind, spent, rate_slot })
}

/// Whether a publish of `package` creates it: the upstream does not have it yet (read with the
/// grant's credential, as npm itself reads before it publishes). A package seen a moment ago is
/// not asked again; when the upstream cannot say, the write fails closed.
async fn creates_package(
    app: &App,
    upstream: &Upstream,
    package: &PackageName,
    auth: &UpstreamAuth,
) -> Result<bool, Refusal> {
    if app.known_packages.has(&upstream.name, package) {
        return Ok(false);
    }
    let has = upstream.has_package(package, auth).await?;
    if has {
        app.known_packages.learn(&upstream.name, package);
    }
    Ok(!has)
}

/// What a write does, from its route and its checked body (or a publish's skeleton).
fn settle(npm: &NpmRequest, checked: &[u8]) -> Result<Action, Refusal> {
    let plain = |kind| Action { kind, version: None, tags: Vec::new(), against_upstream: None };
    let package = npm.package.as_ref().ok_or(Refusal::Internal("a write route without a package".into()));
    Ok(match npm.op() {
        Op::Whoami => plain(ActionKind::Whoami),
        Op::PutPackument => match body::check_put_packument(package?, checked)? {
            PutPackument::Publish(m) => {
                Action { version: Some(m.version), tags: m.dist_tags, ..plain(ActionKind::Publish) }
            }
            PutPackument::Deprecate(doc) => {
                Action { against_upstream: Some(UpstreamCheck::Deprecate(doc)), ..plain(ActionKind::Deprecate) }
            }
        },
        Op::StagePublish => {
            let m = body::check_stage_publish(package?, checked)?;
            Action { version: Some(m.version), tags: m.dist_tags, ..plain(ActionKind::StagePublish) }
        }
        Op::PutRevision { .. } => match body::check_put_revision(package?, checked)? {
            PutRevision::Owner => plain(ActionKind::Owner),
            PutRevision::UnpublishVersion => {
                Action { against_upstream: Some(UpstreamCheck::UnpublishVersion), ..plain(ActionKind::Unpublish) }
            }
        },
        Op::DistTagSet { tag } => Action {
            version: Some(body::check_dist_tag_value(checked)?),
            tags: vec![tag.clone()],
            ..plain(ActionKind::DistTag)
        },
        Op::DistTagRemove { tag } => Action { tags: vec![tag.clone()], ..plain(ActionKind::DistTag) },
        Op::UnpublishPackage { .. } | Op::UnpublishTarball { .. } => plain(ActionKind::Unpublish),
        Op::AccessSet => {
            body::check_access(checked)?;
            plain(ActionKind::Access)
        }
        _ => return Err(Refusal::Internal("a read on the write path".into())),
    })
}

/// Spends one write use. Resending the last write after it failed upstream (npm retries PUTs
/// on 5xx) is not a new use.
async fn spend_use(app: &App, session: &Session, fingerprint: Fingerprint) -> Result<(), Refusal> {
    match app.store.consume_use(&session.digest, fingerprint, crate::support::clock::unix_now()).await? {
        UseOutcome::Counted { .. } | UseOutcome::Retry => Ok(()),
        UseOutcome::Exhausted => Err(Refusal::UsesExhausted),
        UseOutcome::NotLive => Err(Refusal::PhantomNotLive("expired or revoked")),
    }
}

/// Compares a deprecate or a version removal with the upstream packument (fetched with the
/// credential, `?write=true`), so that neither can change more than it says.
async fn compare_with_upstream(
    app: &App,
    upstream: &Upstream,
    npm: &NpmRequest,
    check: &UpstreamCheck,
    checked: &Bytes,
    auth: &UpstreamAuth,
    body: &mut WriteBody,
) -> Result<(), Refusal> {
    let package = npm.package.as_ref().ok_or(Refusal::Internal("a package write without a package".into()))?;
    let path = format!("/{}?write=true", package.escaped());
    let (status, current) = upstream.fetch_json(&path, auth, app.config.server.max_body_bytes as usize).await?;
    if status != 200 {
        return Err(Refusal::Upstream(UpstreamError::Failed(format!("the packument answered {status}"))));
    }
    body.hold(current.len() + json::parsed_size(&current))?;
    let current = json::parse_object(&current)
        .map_err(|_| Refusal::Upstream(UpstreamError::Failed("the packument is not JSON".into())))?;
    match check {
        UpstreamCheck::Deprecate(doc) => body::check_deprecate(doc, &current)?,
        UpstreamCheck::UnpublishVersion => body::check_unpublish_version(checked, &current)?,
    }
    Ok(())
}
