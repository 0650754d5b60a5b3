//! A write's verdict: its body read through the gate and checked, the action it settles as, the
//! exact authorization, the comparison with the upstream's packument, a use spent, the write on
//! record ahead of its release; then the release, or the abort.

use super::gate::{Released, Stop, WriteBody};
use super::rate::{give_back, within_rate, RateSlot};
use super::refusal::Refusal;
use super::session::Session;
use crate::app::App;
use crate::audit::{Decision, Record};
use crate::credentials::UpstreamAuth;
use crate::npm::{body, ActionKind, NpmRequest, Op, PackageName, PutPackument, PutRevision};
use crate::phantom::Fingerprint;
use crate::policy::{Authorized, Requested};
use crate::state::{PhantomStore, UseOutcome};
use crate::support::json;
use crate::upstream::{Upstream, UpstreamError};
use bytes::Bytes;
use hyper::body::Incoming;
use std::sync::Arc;

/// What a checked body turned out to do.
pub(super) struct Action {
    pub(super) kind: ActionKind,
    pub(super) version: Option<String>,
    pub(super) tags: Vec<String>,
    /// A comparison with the upstream packument, made once the credential may be used.
    pub(super) against_upstream: Option<UpstreamCheck>,
}

pub(super) enum UpstreamCheck {
    /// A deprecate sends the whole packument back: only `deprecated` fields may differ.
    Deprecate(serde_json::Map<String, serde_json::Value>),
    /// A version removal: only versions (and the tags naming them) may go.
    UnpublishVersion,
}

/// A write the verdict allowed.
pub(super) struct Verdict {
    /// The request, exactly authorized.
    pub(super) request: Authorized<NpmRequest>,
    /// What its body made it.
    pub(super) action: ActionKind,
    /// The use spent, to settle once the upstream answered.
    pub(super) spent: Option<Fingerprint>,
    /// Its place in the grant's rate, given back if it does not go through.
    pub(super) rate_slot: Option<RateSlot>,
}

/// What every step of a write's verdict works with.
pub(super) struct Ctx<'a> {
    pub(super) app: &'a App,
    pub(super) session: &'a Session,
    pub(super) upstream: &'a Upstream,
    pub(super) auth: &'a UpstreamAuth,
    /// The write is held for approval, not released upstream now (`held.rs`): its release is
    /// written ahead then.
    pub(super) holds: bool,
}

/// Reads the body through the gate and decides. An allowed write is released (a streamed one's
/// held bytes and end go upstream; a whole one is handed back to be sent); a refused one is
/// cut off.
pub(super) async fn decide(
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
    let Ctx { app, session, upstream, auth, holds } = *ctx;
    let checked = body.read(incoming, app.config.server.client_timeout).await?;
    let g = provisional.grant();
    let (credential, publish, may_create, hold) = (g.credential.clone(), g.publish, g.create, g.hold.clone());
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
    if g.credential != credential || g.publish != publish || g.create != may_create || g.hold != hold {
        // The policy was reloaded mid-write: the request already carries the old credential,
        // or went to the route (held or not) the old grant chose.
        return Err(Refusal::Denied(crate::policy::Denial::GrantGone(r.grant.clone())).into());
    }
    if let Some(check) = &action.against_upstream {
        Box::pin(compare_with_upstream(app, upstream, authorized.get(), check, &checked.bytes, auth, Some(body)))
            .await?;
    }
    let (mut spent, mut rate_slot) = (None, None);
    if action.kind.is_write() {
        // A freeze made while the body was arriving holds too.
        if package.as_ref().is_some_and(|p| app.is_frozen(p)) {
            return Err(Refusal::Frozen.into());
        }
        rotation_allows_writes(app, &credential)?;
        if let (Some(rate), Some(p)) = (authorized.grant().rate, &package) {
            rate_slot = within_rate(app, session, p, rate, true, &rec.request_id).await?;
        }
        let recorded = async {
            spend_use(app, session, checked.fingerprint).await?;
            if holds {
                return Ok(());
            }
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

/// A write through a credential overdue for rotation, under `[rotation] overdue =
/// "refuse-writes"`, is refused.
pub(super) fn rotation_allows_writes(app: &App, credential: &str) -> Result<(), Refusal> {
    let Some(slot) = app.credentials.slot(credential) else { return Ok(()) };
    match slot.deadline(&app.config.rotation, crate::support::clock::unix_now()) {
        Some(d) if d.stops_writes() => {
            Err(Refusal::RotationOverdue { credential: credential.to_owned(), due: crate::support::clock::date(d.due) })
        }
        _ => Ok(()),
    }
}

/// Whether a publish of `package` creates it: the upstream does not have it yet (read with the
/// grant's credential, as npm itself reads before it publishes). A package seen a moment ago is
/// not asked again; when the upstream cannot say, the write fails closed.
pub(super) async fn creates_package(
    app: &App,
    upstream: &Upstream,
    package: &PackageName,
    auth: &UpstreamAuth,
) -> Result<bool, Refusal> {
    if app.known_packages.has(&upstream.name, package) {
        return Ok(false);
    }
    let has = upstream.has_package(package, &auth.then_get(&NpmRequest::packument(package, false))).await?;
    if has {
        app.known_packages.learn(&upstream.name, package);
    }
    Ok(!has)
}

/// What a write does, from its route and its checked body (or a publish's skeleton).
pub(super) fn settle(npm: &NpmRequest, checked: &[u8]) -> Result<Action, Refusal> {
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
/// credential, `?write=true`), so that neither can change more than it says. The packument's
/// memory counts against the write's `body` when there is one (a held write's release has none).
pub(super) async fn compare_with_upstream(
    app: &App,
    upstream: &Upstream,
    npm: &NpmRequest,
    check: &UpstreamCheck,
    checked: &Bytes,
    auth: &UpstreamAuth,
    body: Option<&mut WriteBody>,
) -> Result<(), Refusal> {
    let package = npm.package.as_ref().ok_or(Refusal::Internal("a package write without a package".into()))?;
    let read = auth.then_get(&NpmRequest::packument(package, true));
    let (status, current) = upstream.fetch_json(&read, app.config.server.max_body_bytes as usize).await?;
    if status != 200 {
        return Err(Refusal::Upstream(UpstreamError::Failed(format!("the packument answered {status}"))));
    }
    if let Some(body) = body {
        body.hold(current.len() + json::parsed_size(&current))?;
    }
    let current = json::parse_object(&current)
        .map_err(|_| Refusal::Upstream(UpstreamError::Failed("the packument is not JSON".into())))?;
    match check {
        UpstreamCheck::Deprecate(doc) => body::check_deprecate(doc, &current)?,
        UpstreamCheck::UnpublishVersion => body::check_unpublish_version(checked, &current)?,
    }
    Ok(())
}
