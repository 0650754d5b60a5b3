//! A held write, top to bottom. Under a grant with `hold = "NAME"`, a write passes every check a
//! forwarded one does (the gate, the body's checks, the exact authorization, the comparison with
//! the upstream, a use spent), and then, instead of going upstream:
//!
//! keep (its exact checked bytes in the state store, bounded by `max_held_bytes`; the client
//! told it is held, the grant's notify targets too) -> approvals (`people.rs`: distinct people of
//! the `[approvers.NAME]`, never the requester) -> release, once, when they are enough: the
//! request classified again from what was kept, its body checked again, authorized again under
//! the policy, the freezes and the upstream's packument as they are then, on record, forwarded
//! with the real credential -> the upstream's answer on record.

use super::refusal::{HoldRefusal, Refusal};
use super::verdict::{compare_with_upstream, creates_package, settle, Ctx, Verdict};
use crate::app::App;
use crate::audit::{Decision, HoldStep, Record};
use crate::notify::{Held, Staged};
use crate::npm::{classify, ActionKind, PackageName, Route};
use crate::policy::{Identity, Requested, Scope};
use crate::state::holds::{party_key, HeldWrite, HoldStatus};
use crate::state::PhantomStore;
use crate::support::clock::unix_now;
use crate::support::json;
use crate::support::net::{self, Body};
use crate::upstream::Content;
use http::header::{HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::value::RawValue;
use std::sync::Arc;

/// A registry's answer to a forwarded hold is read this far (for a stage id), then dropped.
const MAX_ANSWER: usize = 256 * 1024;

/// Keeps a write its verdict allowed, and tells the client it is held.
pub(super) async fn keep(
    ctx: &Ctx<'_>,
    verdict: &Verdict,
    whole: Body,
    rec: &mut Record,
) -> Result<Response<Body>, Refusal> {
    let app = ctx.app;
    let grant = verdict.request.grant();
    let name =
        grant.hold.clone().ok_or_else(|| Refusal::Internal("a held write under a grant without `hold`".into()))?;
    let approvers = app.policy().approvers(&name).cloned().ok_or(Refusal::Hold(HoldRefusal::ApproversGone))?;
    let bytes = whole.collect().await.map_err(|e| Refusal::Internal(format!("a checked body: {e}")))?.to_bytes();
    // A write that takes no body goes upstream without one, whatever came with it.
    let bytes = if verdict.request.get().takes_body() { bytes } else { bytes::Bytes::new() };
    let r = &ctx.session.record;
    let npm = verdict.request.get();
    let now = unix_now();
    // The requester never counts as an approver: it must be told apart from them.
    let sub = r.identity.claim("sub").filter(|s| !s.is_empty());
    let sub = sub.ok_or(Refusal::Identity(crate::identity::IdentityError::MissingClaim("sub")))?;
    let write = HeldWrite {
        id: new_id(app),
        created: now,
        expires: now + approvers.hold_ttl.as_secs(),
        approvers: name.clone(),
        required: approvers.required,
        issuer: r.identity.issuer.to_string(),
        claims: r.identity.claims.clone(),
        requester: party_key(&r.identity.issuer, sub),
        requester_summary: boxed(&r.summary),
        grant: r.grant.clone(),
        scope_packages: r.scope.packages.iter().map(ToString::to_string).collect(),
        scope_actions: r.scope.actions.names().into_iter().map(str::to_owned).collect(),
        token_id: r.id.to_string(),
        phantom: ctx.session.digest.0,
        request_id: rec.request_id.clone(),
        upstream: ctx.upstream.name.to_string(),
        method: npm.method.to_string(),
        path: npm.upstream_path(),
        action: verdict.action.as_str().to_owned(),
        package: npm.package.as_ref().map(ToString::to_string).unwrap_or_default(),
        version: rec.version.clone(),
        tags: rec.dist_tags.clone(),
        creates: rec.new_package,
        bytes: bytes.len() as u64,
    };
    if !app.store.hold_put(&write, bytes, app.config.server.max_held_bytes).await? {
        return Err(Refusal::Hold(HoldRefusal::Full));
    }
    rec.decision = Decision::Held;
    rec.hold = Some(Box::new(write.line(HoldStep::Held, 0)));
    let note = Staged {
        package: write.package.clone(),
        version: write.version.clone().unwrap_or_default(),
        stage_id: None,
        status: None,
        silent: false,
        identity: rec.identity.clone(),
        grant: grant.name.clone(),
        request_id: rec.request_id.clone(),
        held: Some(Held {
            id: write.id.clone(),
            action: verdict.action.as_str(),
            approvers: name,
            required: write.required,
        }),
    };
    if !grant.notify.is_empty() {
        app.notifier.staged(&grant.notify, &note, &app.audit);
    }
    let message = format!(
        "{} of {} is held for approval (hold {}): {}",
        verdict.action.as_str(),
        write.package,
        write.id,
        note.approve_hint()
    );
    let body = serde_json::json!({ "ok": true, "held": write.id, "message": message }).to_string();
    let mut resp = net::json_reply(StatusCode::ACCEPTED, body);
    if let Ok(v) = HeaderValue::from_str(&format!("phantom: {message}")) {
        resp.headers_mut().insert("npm-notice", v);
    }
    Ok(resp)
}

/// Forwards an approved hold, once: everything checked again as things are now. Returns the
/// upstream's status; a refusal leaves the hold to be approved again (or rejected).
pub(super) async fn release(app: &App, held: &HoldStatus, rec: &mut Record) -> Result<u16, Refusal> {
    let w = &held.write;
    let body = app.store.hold_body(&w.id).await?.ok_or(Refusal::Internal("a held write without its bytes".into()))?;
    let method = Method::from_bytes(w.method.as_bytes()).map_err(|_| Refusal::Internal("a held method".into()))?;
    let (path, query) = w.path.split_once('?').map_or((w.path.as_str(), None), |(p, q)| (p, Some(q)));
    let Route::Registry(npm) = classify(&method, path, query)? else {
        return Err(Refusal::Internal("a held write that is not a registry write".into()));
    };
    let action = settle(&npm, &body)?;
    if action.kind.as_str() != w.action {
        return Err(Refusal::Internal("a held write's body settled as another action".into()));
    }
    let identity = Identity { issuer: w.issuer.as_str().into(), claims: w.claims.clone() };
    let scope = held_scope(w)?;
    let package = npm.package.clone();
    let requested = Requested {
        package: package.as_ref(),
        action: action.kind,
        tags: &action.tags,
        version: action.version.as_deref(),
        creates: w.creates,
    };
    let policy = app.policy();
    let authorized = policy.authorize(&identity, &w.grant, &scope, requested, npm.clone()).map_err(Refusal::Denied)?;
    // The grant must still hold its writes for these approvers, and they must be enough now.
    let g = authorized.grant();
    let approvers = policy.approvers(&w.approvers).filter(|_| g.hold.as_deref() == Some(w.approvers.as_str()));
    let required = approvers.ok_or(Refusal::Hold(HoldRefusal::ApproversGone))?.required.max(w.required);
    if (held.approvals.len() as u32) < required {
        return Err(Refusal::Hold(HoldRefusal::NeedsMore(required)));
    }
    let may_create = g.create;
    drop(policy);
    if package.as_ref().is_some_and(|p| app.is_frozen(p)) {
        return Err(Refusal::Frozen);
    }
    super::verdict::rotation_allows_writes(app, &g.credential)?;
    // A phantom revoked since it asked (an incident) releases nothing.
    let digest = crate::phantom::TokenDigest(w.phantom);
    if matches!(app.store.lookup(&digest, unix_now()).await?, crate::state::Lookup::Revoked) {
        return Err(Refusal::PhantomNotLive("revoked"));
    }
    let upstreams = app.upstreams();
    let upstream = upstreams.named(&w.upstream).ok_or(Refusal::NoUpstream)?;
    let mut headers = HeaderMap::new();
    let (auth, staged) = match authorized.as_staged() {
        Some(staged) if action.kind == ActionKind::Publish => {
            headers.insert("npm-command", HeaderValue::from_static("stage"));
            (app.credentials.for_authorized(&staged, &upstream.name), true)
        }
        _ => (app.credentials.for_authorized(&authorized, &upstream.name), action.kind == ActionKind::StagePublish),
    };
    let auth = auth.map_err(Refusal::Internal)?;
    // Whether it creates the package is asked again: the upstream may have lost it since.
    if let (Some(p), true, false) = (&package, action.kind.publishes(), may_create) {
        if creates_package(app, upstream, p, &auth).await? {
            return Err(Refusal::Denied(crate::policy::Denial::CreateNotAllowed(w.grant.clone())));
        }
    }
    if let Some(check) = &action.against_upstream {
        compare_with_upstream(app, upstream, authorized.get(), check, &body, &auth, None).await?;
    }
    // Write-ahead, as every release: on record before the upstream can act on it.
    let intent = Record { decision: Decision::Forwarding, status: 0, ..rec.clone() };
    app.audit.write_confirmed(Arc::new(intent)).await.map_err(|_| Refusal::AuditUnavailable)?;
    let content = if npm.takes_body() { Content::Json } else { Content::None };
    rec.upstream_bytes = Some(body.len() as u64);
    let resp = upstream.send(&headers, content, net::full(body), &auth).await?;
    let status = resp.status().as_u16();
    rec.upstream_status = Some(status);
    if action.kind.publishes() && resp.status().is_success() {
        let answer = net::read_body(resp.into_body(), MAX_ANSWER).await.unwrap_or_default();
        let id = json::parse_object(&answer).ok().and_then(|d| d.get("stageId")?.as_str().map(str::to_owned));
        rec.staged = staged || id.is_some();
        rec.stage_id = id.filter(|id| id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    }
    Ok(status)
}

/// The phantom's scope as the hold kept it.
fn held_scope(w: &HeldWrite) -> Result<Scope, Refusal> {
    let bad = || Refusal::Internal("a held write's scope does not parse".into());
    let packages =
        w.scope_packages.iter().map(|p| PackageName::parse(p).map_err(|_| bad())).collect::<Result<_, _>>()?;
    let actions = w.scope_actions.iter().map(|a| ActionKind::parse(a).ok_or_else(bad)).collect::<Result<_, _>>()?;
    Ok(Scope { packages, actions })
}

fn boxed(raw: &RawValue) -> Box<RawValue> {
    RawValue::from_string(raw.get().to_owned()).unwrap_or_else(|_| RawValue::from_string("{}".into()).expect("{}"))
}

/// 96 random bits, as hex (`npm::is_hold_id`): what `phantom approve` names, and a forward's
/// lease token.
pub(super) fn new_id(app: &App) -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 12];
    // The system's randomness does not fail on Linux; were it to, a zero id collides and the
    // store refuses nothing: so fail loudly instead.
    app.rng.fill(&mut b).expect("the system random source works");
    crate::support::hex(&b)
}
