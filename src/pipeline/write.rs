//! A write, top to bottom. One path for every write (publish, staged publish, deprecate,
//! dist-tag, version removal, unpublish, owner, access, and `whoami`, which needs a phantom but
//! changes nothing):
//!
//! open (scope, freeze, a use left: before any byte of the body is read) -> the broker's own
//! content headers (415 otherwise) -> provisional authorization of the actions the route may be
//! -> the body through the gate (`gate.rs`), a publish streaming upstream as it arrives -> the
//! body's checks settle the exact action -> exact authorization -> comparison with the
//! upstream's packument (deprecates, version removals) -> a use spent -> the write on record
//! (write-ahead) -> release, or abort -> relay, scrubbed.

use super::gate::{Intake, Released, Stop, WriteBody};
use super::{Refusal, Session};
use crate::app::App;
use crate::audit::{self, Decision, Record, UpstreamRequest};
use crate::credentials::UpstreamAuth;
use crate::net::Body;
use crate::npm::{body, ActionKind, NpmRequest, Op, PutPackument, PutRevision};
use crate::phantom::{Fingerprint, Fingerprinter, PhantomStore, UseOutcome};
use crate::policy::{Authorized, Requested};
use crate::upstream::{self, Content, Upstream};
use bytes::Bytes;
use http::header::{self, HeaderMap};
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
    open(app, &session, &npm).await?;
    let (parts, incoming) = req.into_parts();
    let content = content(&parts.headers, &npm)?;
    let r = &session.record;
    let (package, candidates) = (npm.package.clone(), npm.candidate_actions());
    let provisional = app
        .policy()
        .authorize_provisional(&r.identity, &r.grant, &r.scope, package.as_ref(), candidates, npm)
        .map_err(Refusal::Denied)?;
    let auth = app.credentials.for_authorized(&provisional, &upstream.name).map_err(Refusal::Internal)?;
    rec.grant = Some(provisional.grant().name.clone());
    let (method, path) = (provisional.get().method.clone(), provisional.get().upstream_path());
    let (mut body, streamed) = WriteBody::open(&app.write_memory, intake(app, provisional.get(), &parts.headers)?, {
        Fingerprinter::of(method.as_str(), &path)
    })?;

    // A streamed write's request starts now; the gate holds back its end until the verdict.
    let early = streamed.map(|b| upstream.send(method.clone(), &path, &parts.headers, content, b, &auth));
    let judge = async {
        let verdict = judge(app, &session, provisional, &mut body, incoming, upstream, &auth, rec).await;
        let released = match verdict {
            Ok(verdict) => body.release().await.map(|r| (verdict, r)),
            Err(stop) => Err(stop),
        };
        if released.is_err() {
            body.abort();
        }
        released
    };
    let (sent, judged) = match early {
        Some(send) => {
            let (sent, judged) = tokio::join!(send, judge);
            (Some(sent), judged)
        }
        None => (None, judge.await),
    };
    rec.upstream_bytes = body.streamed().then_some(body.sent());
    let (verdict, released) = match judged {
        Ok(done) => done,
        Err(stop) => {
            if body.streamed() {
                rec.upstream_request = Some(UpstreamRequest::Aborted);
            }
            return Err(match (stop, sent) {
                (Stop::Refused(refusal), _) => refusal,
                // The upstream answered (or failed) before the broker released the write: a
                // refusal of its own is relayed; a success for an incomplete write is not.
                (Stop::UpstreamGone, Some(Ok(resp))) if !resp.status().is_success() => {
                    rec.upstream_status = Some(resp.status().as_u16());
                    return Ok(upstream::relay(resp, &auth, app.config.server.upstream_timeout)?);
                }
                (Stop::UpstreamGone, Some(Ok(resp))) => Refusal::UpstreamAnsweredEarly(resp.status().as_u16()),
                (Stop::UpstreamGone, Some(Err(e))) => Refusal::Upstream(e),
                (Stop::UpstreamGone, None) => Refusal::Internal("a whole body's upstream went away".into()),
            });
        }
    };
    let sent = match (released, sent) {
        (Released::Streamed, Some(sent)) => sent,
        (Released::Whole(whole), _) => {
            let npm = verdict.request.get();
            upstream.send(npm.method.clone(), &npm.upstream_path(), &parts.headers, content, whole, &auth).await
        }
        (Released::Streamed, None) => return Err(Refusal::Internal("a streamed write without its request".into())),
    };
    rec.upstream_request = Some(UpstreamRequest::Complete);
    rec.upstream_bytes = Some(body.sent());
    drop(body);
    if let Some(fingerprint) = verdict.spent {
        let ok = sent.as_ref().is_ok_and(|r| r.status().is_success());
        app.store.settle(&session.digest, fingerprint, ok).await?;
    }
    let resp = sent?;
    rec.upstream_status = Some(resp.status().as_u16());
    if resp.status().is_server_error() {
        return Err(Refusal::UpstreamFailed(resp.status().as_u16()));
    }
    Ok(upstream::relay(resp, &auth, app.config.server.upstream_timeout)?)
}

/// Refuses, before any of the body is read, writes outside the phantom's packages and actions,
/// writes to frozen packages, and writes from a phantom with no use left.
async fn open(app: &App, session: &Session, npm: &NpmRequest) -> Result<(), Refusal> {
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
        return Err(Refusal::Denied(crate::policy::Denial::ActionOutOfScope(npm.action_label())));
    }
    let writes = candidates.iter().any(ActionKind::is_write);
    if writes && !app.store.may_write(&session.digest, audit::unix_now()).await? {
        return Err(Refusal::UsesExhausted);
    }
    Ok(())
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
fn intake(app: &App, npm: &NpmRequest, headers: &HeaderMap) -> Result<Intake, Refusal> {
    let max = app.config.server.max_body_bytes;
    let intake = match npm.op() {
        Op::PutPackument | Op::StagePublish => {
            Intake::Streamed { limit: max, max_skeleton: MAX_SKELETON.min(max) as usize }
        }
        // A version removal sends the whole packument back.
        Op::PutRevision { .. } => Intake::Whole { limit: max },
        _ if npm.takes_body() => Intake::Whole { limit: SMALL_BODY },
        _ => Intake::Whole { limit: 0 },
    };
    let limit = match intake {
        Intake::Whole { limit } | Intake::Streamed { limit, .. } => limit,
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
    /// The use spent, to settle once the upstream answered.
    spent: Option<Fingerprint>,
}

/// Reads the body through the gate and decides. `Ok` means the write may be released.
#[allow(clippy::too_many_arguments)]
async fn judge(
    app: &App,
    session: &Session,
    provisional: Authorized<NpmRequest>,
    body: &mut WriteBody,
    incoming: Incoming,
    upstream: &Upstream,
    auth: &UpstreamAuth<'_>,
    rec: &mut Record,
) -> Result<Verdict, Stop> {
    let checked = body.read(incoming, app.config.server.client_timeout).await?;
    let credential = provisional.grant().credential.clone();
    let npm = provisional.into_inner();
    let action = settle(&npm, &checked.bytes)?;
    rec.action = Some(action.kind.as_str());
    rec.version = action.version.clone();
    rec.dist_tags = action.tags.clone();
    let r = &session.record;
    let package = npm.package.clone();
    let requested = Requested { package: package.as_ref(), action: action.kind, tags: &action.tags };
    let authorized =
        app.policy().authorize(&r.identity, &r.grant, &r.scope, requested, npm).map_err(Refusal::Denied)?;
    if authorized.grant().credential != credential {
        // The policy was reloaded mid-write: the request already carries the old credential.
        return Err(Refusal::Denied(crate::policy::Denial::GrantGone(r.grant.clone())).into());
    }
    if let Some(check) = &action.against_upstream {
        Box::pin(compare_with_upstream(app, upstream, authorized.get(), check, &checked.bytes, auth)).await?;
    }
    let spent = if action.kind.is_write() {
        spend_use(app, session, checked.fingerprint).await?;
        // Write-ahead: a write is released only once it is on record.
        let intent = Record { decision: Decision::Forwarding, status: 0, ..rec.clone() };
        app.audit.write_confirmed(Arc::new(intent)).await.map_err(|_| Refusal::AuditUnavailable)?;
        Some(checked.fingerprint)
    } else {
        None
    };
    rec.decision = Decision::Allow;
    Ok(Verdict { request: authorized, spent })
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
    match app.store.consume_use(&session.digest, fingerprint, audit::unix_now()).await? {
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
    auth: &UpstreamAuth<'_>,
) -> Result<(), Refusal> {
    let package = npm.package.as_ref().ok_or(Refusal::Internal("a package write without a package".into()))?;
    let path = format!("/{}?write=true", package.escaped());
    let (status, current) = upstream.fetch_json(&path, auth, app.config.server.max_body_bytes as usize).await?;
    if status != 200 {
        return Err(Refusal::Upstream(upstream::UpstreamError::Failed(format!("the packument answered {status}"))));
    }
    let current = crate::json::parse_object(&current)
        .map_err(|_| Refusal::Upstream(upstream::UpstreamError::Failed("the packument is not JSON".into())))?;
    match check {
        UpstreamCheck::Deprecate(doc) => body::check_deprecate(doc, &current)?,
        UpstreamCheck::UnpublishVersion => body::check_unpublish_version(checked, &current)?,
    }
    Ok(())
}
