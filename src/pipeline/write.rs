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
use super::rate::{give_back, within_rate};
use super::refusal::Refusal;
use super::session::Session;
use super::staged::{self, Upstreamed};
use super::verdict::{decide, Ctx, Verdict};
use crate::app::App;
use crate::audit::{Decision, Record, UpstreamRequest};
use crate::credentials::UpstreamAuth;
use crate::npm::{body, ActionKind, NpmRequest, Op};
use crate::phantom::{Fingerprinter, TokenDigest};
use crate::policy::Authorized;
use crate::state::{OpenWrite, PhantomStore};
use crate::support::net::Body;
use crate::upstream::{self, Content, Pooled, Upstream, UpstreamError};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response};
use hyper::body::Incoming;

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
    let (provisional, auth) = authorize_provisional(app, &session, upstream, npm, rec).await?;
    let out = Outgoing::new(app, upstream, &provisional, parts.headers, content)?;
    let intake = intake(app, provisional.get(), &out.route, &out.headers)?;
    let fingerprinter = Fingerprinter::of(auth.method().as_str(), auth.path());
    let (mut body, start) = WriteBody::open(&app.write_memory, intake, fingerprinter)?;
    let ctx = Ctx { app, session: &session, upstream, auth: &auth, holds: out.holds() };
    let decided = decide(&ctx, provisional, &mut body, incoming, rec);
    let (sent, decided) = match start {
        // A streamed write's request starts now; the gate holds back its end until the verdict.
        UpstreamStart::Now(stream) => {
            let (sent, decided) = tokio::join!(out.send_as_sent(&ctx, stream), decided);
            (Some(sent), decided)
        }
        // A publish to stage starts when its body shows it is one.
        UpstreamStart::OnPublish(later) => {
            let send = async { Some(out.send_staged(&ctx, later.await.ok()?).await) };
            tokio::join!(send, decided)
        }
        UpstreamStart::AfterVerdict => (None, decided.await),
    };
    let (verdict, released) = match decided {
        Ok(decided) => decided,
        Err(stop) => return stopped(app, out.may_publish(), stop, sent, &body, &auth, rec).await,
    };
    let sent = match (sent, released) {
        (None, Released::Whole(whole)) if out.holds() => {
            let kept = super::held::keep(&ctx, &verdict, whole, rec).await;
            // A write that could not be held did not happen: sent again, it is a retry.
            if let Some(fingerprint) = verdict.spent {
                app.store.settle(&session.digest, fingerprint, kept.is_ok()).await?;
            }
            if kept.is_err() {
                give_back(app, verdict.rate_slot.as_ref()).await;
            }
            return kept;
        }
        (Some(sent), Released::Streamed) => sent,
        (None, Released::Whole(whole)) if out.stages(verdict.action) => out.send_staged(&ctx, whole).await,
        (None, Released::Whole(whole)) => out.send_as_sent(&ctx, whole).await,
        _ => return Err(Refusal::Internal("a write released otherwise than it was opened".into())),
    };
    settle_use(&ctx, &verdict, &body, &sent, rec).await?;
    answer(&ctx, &out, &verdict, sent?, rec).await
}

/// The authorization of the actions the route may be, before the body is read, and the
/// credential it goes with. A caller past its grant's rate is refused here, before anything is
/// read.
async fn authorize_provisional(
    app: &App,
    session: &Session,
    upstream: &Upstream,
    npm: NpmRequest,
    rec: &mut Record,
) -> Result<(Authorized<NpmRequest>, UpstreamAuth), Refusal> {
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
        within_rate(app, session, p, rate, false, &rec.request_id).await?;
    }
    Ok((provisional, auth))
}

/// Where a write goes upstream, decided once when it opens.
enum WriteRoute {
    /// As the caller sent it.
    Direct,
    /// `npm stage publish` (`POST /-/stage/package/<name>`): staged, as the caller asked.
    Stage,
    /// A `PUT /<name>` under a grant that stages its publishes: a publish goes to the stage
    /// route, as `npm stage publish` would send it; anything else (a deprecate) as sent.
    StageOnPublish(Box<Staging>),
    /// Under a grant with `hold`: checked whole, then kept until its approvers approve it
    /// (`held.rs`), which forwards it as one of the routes above.
    Hold,
}

/// The stage route's request for a `PUT /<name>` (authorized as the publish it is), and its
/// headers.
struct Staging {
    auth: UpstreamAuth,
    headers: HeaderMap,
}

/// A write's request to the upstream: its route, and the caller's headers (the upstream client
/// passes on only its allow-list) and content headers.
struct Outgoing {
    route: WriteRoute,
    headers: HeaderMap,
    content: Content,
    may_publish: bool,
}

impl Outgoing {
    fn new(
        app: &App,
        upstream: &Upstream,
        provisional: &Authorized<NpmRequest>,
        headers: HeaderMap,
        content: Content,
    ) -> Result<Outgoing, Refusal> {
        let npm = provisional.get();
        let holds = provisional.grant().hold.is_some() && npm.candidate_actions().iter().any(ActionKind::is_write);
        let route = match (npm.op(), provisional.as_staged()) {
            _ if holds => WriteRoute::Hold,
            (Op::StagePublish, _) => WriteRoute::Stage,
            (Op::PutPackument, Some(staged)) => {
                let auth = app.credentials.for_authorized(&staged, &upstream.name).map_err(Refusal::Internal)?;
                // The `npm-command` npm's own `npm stage publish` sends.
                let mut h = headers.clone();
                h.insert("npm-command", HeaderValue::from_static("stage"));
                WriteRoute::StageOnPublish(Box::new(Staging { auth, headers: h }))
            }
            _ => WriteRoute::Direct,
        };
        let may_publish = matches!(npm.op(), Op::PutPackument | Op::StagePublish);
        Ok(Outgoing { route, headers, content, may_publish })
    }

    /// Whether what the registry answers may need explaining (`E_STAGE_REQUIRED`, a staged
    /// version): a write that may be a publish.
    fn may_publish(&self) -> bool {
        self.may_publish
    }

    /// Whether a write that settled as `action` goes upstream staged.
    fn stages(&self, action: ActionKind) -> bool {
        match self.route {
            WriteRoute::Stage => true,
            WriteRoute::StageOnPublish(_) => action == ActionKind::Publish,
            WriteRoute::Direct | WriteRoute::Hold => false,
        }
    }

    /// Whether the write is held for approval rather than sent.
    fn holds(&self) -> bool {
        matches!(self.route, WriteRoute::Hold)
    }

    /// The write as the caller sent it (the request its phantom's grant authorized).
    async fn send_as_sent(&self, ctx: &Ctx<'_>, body: Body) -> Result<Response<Pooled>, UpstreamError> {
        ctx.upstream.send(&self.headers, self.content, body, ctx.auth).await
    }

    /// A publish to the stage route: translated (`StageOnPublish`), or as the caller sent it.
    async fn send_staged(&self, ctx: &Ctx<'_>, body: Body) -> Result<Response<Pooled>, UpstreamError> {
        match &self.route {
            WriteRoute::StageOnPublish(staging) => {
                ctx.upstream.send(&staging.headers, self.content, body, &staging.auth).await
            }
            _ => self.send_as_sent(ctx, body).await,
        }
    }
}

/// A write's use, settled once the upstream answered (a failed one may be sent again as the
/// same write); its rate slot given back if it did not go through. On record as released whole.
async fn settle_use(
    ctx: &Ctx<'_>,
    verdict: &Verdict,
    body: &WriteBody,
    sent: &Result<Response<Pooled>, UpstreamError>,
    rec: &mut Record,
) -> Result<(), Refusal> {
    let Some(fingerprint) = verdict.spent else { return Ok(()) };
    if body.streamed() || sent.is_ok() {
        rec.upstream_request = Some(UpstreamRequest::Complete);
        rec.upstream_bytes = Some(body.sent());
    }
    let ok = sent.as_ref().is_ok_and(|r| r.status().is_success());
    ctx.app.store.settle(&ctx.session.digest, fingerprint, ok).await?;
    if !ok {
        give_back(ctx.app, verdict.rate_slot.as_ref()).await;
    }
    Ok(())
}

/// The upstream's answer, relayed scrubbed: a publish's, read for what it says (staged, or a
/// refusal that needs explaining).
async fn answer(
    ctx: &Ctx<'_>,
    out: &Outgoing,
    verdict: &Verdict,
    resp: Response<Pooled>,
    rec: &mut Record,
) -> Result<Response<Body>, Refusal> {
    let (app, upstream) = (ctx.app, ctx.upstream);
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
    let resp = upstream::relay(resp, ctx.auth, app.config.server.upstream_timeout)?;
    if !verdict.action.publishes() {
        return Ok(resp);
    }
    if status.is_success() {
        let at = Upstreamed { app, upstream, auth: ctx.auth };
        return staged::publish_reply(&at, verdict.request.grant(), resp, out.stages(verdict.action), rec).await;
    }
    if status.is_client_error() {
        return staged::publish_refused(resp, rec).await;
    }
    Ok(resp)
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
fn intake(app: &App, npm: &NpmRequest, route: &WriteRoute, headers: &HeaderMap) -> Result<Intake, Refusal> {
    let max = app.config.server.max_body_bytes;
    let max_skeleton = MAX_SKELETON.min(max) as usize;
    let intake = match npm.op() {
        // A held write is kept whole: within its route's own limit and what may be held at all.
        Op::PutPackument | Op::StagePublish | Op::PutRevision { .. } if matches!(route, WriteRoute::Hold) => {
            Intake::Whole { limit: max.min(app.config.server.max_held_bytes) }
        }
        // A `PUT /<name>` may be a publish (to stage) or a deprecate (to send as it is): the body
        // tells which before its request starts.
        Op::PutPackument if matches!(route, WriteRoute::StageOnPublish(_)) => {
            Intake::OnPublish { limit: max, max_skeleton }
        }
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
