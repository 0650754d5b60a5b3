//! Staged publishing, where it differs from any write:
//!
//! - The registry's answer to a publish: a version is staged when it went to the stage route or
//!   when the registry staged a direct publish itself (silent staging); a refusal because the
//!   credential may only stage, or because the version is staged already, says what to do.
//! - Reads of one staged version by its id (`npm stage view`, `npm stage download`). The path
//!   does not name the package, so the broker looks the item up first, with the credential of
//!   the caller's grant (on the registry face, at that credential's upstream), and relays
//!   nothing unless that grant lets the caller read the package the item belongs to.

use super::refusal::Refusal;
use super::session::Session;
use crate::app::App;
use crate::audit::{Decision, Record};
use crate::credentials::UpstreamAuth;
use crate::notify::Staged;
use crate::npm::{ActionKind, NpmRequest, Op, PackageName};
use crate::policy::{Grant, Requested};
use crate::support::json;
use crate::support::net::{self, Body};
use crate::upstream::{self, Content, Upstream, UpstreamError};
use http::header::HeaderValue;
use http::{header, HeaderMap, Response, StatusCode};

/// A staged item is a small JSON document.
const MAX_ITEM: usize = 256 * 1024;

/// Where a write went: the upstream, with the grant's credential.
pub(super) struct Upstreamed<'a> {
    pub(super) app: &'a App,
    pub(super) upstream: &'a Upstream,
    pub(super) auth: &'a UpstreamAuth,
}

pub(super) async fn read(
    app: &App,
    npm: NpmRequest,
    session: Option<Session>,
    upstream: &Upstream,
    tunneled: bool,
    headers: &HeaderMap,
    rec: &mut Record,
) -> Result<Response<Body>, Refusal> {
    let tarball = matches!(npm.op(), Op::StageTarball { .. });
    let item = npm.stage_item().ok_or(Refusal::Internal("not a staged item".into()))?;
    if !app.audit.is_healthy() && !app.config.audit.serve_reads_on_failure {
        return Err(Refusal::AuditUnavailable);
    }
    let Some(session) = session else {
        // Without a phantom, as any read: anonymously (the registry decides).
        rec.decision = Decision::Anonymous;
        let auth = UpstreamAuth::anonymous(&npm);
        let resp = upstream.send(headers, Content::None, net::empty(), &auth).await?;
        rec.upstream_status = Some(resp.status().as_u16());
        return Ok(upstream::relay(resp, &auth, app.config.server.upstream_timeout)?);
    };
    let r = &session.record;
    let policy = app.policy();
    // The item is read first (its view names the package), with the grant's credential.
    let lookup = policy.authorize_lookup(&r.identity, &r.grant, item).map_err(Refusal::Denied)?;
    // The id names no package, so no upstream: on the registry face it is asked of the upstream
    // the grant's credential is for (a tunnel has its own).
    let upstreams = app.upstreams();
    let upstream = match app.credentials.slot(&lookup.grant().credential).filter(|_| !tunneled) {
        Some(slot) => upstreams.named(&slot.config.upstream).map_or(upstream, |u| &**u),
        None => upstream,
    };
    rec.upstream = Some(upstream.name.clone());
    // A credential for another upstream than the tunnel's cannot have the item.
    let auth = app.credentials.for_authorized(&lookup, &upstream.name).map_err(|_| Refusal::NoStagedVersion)?;
    let (status, item) = upstream.fetch_json(&auth, MAX_ITEM).await?;
    rec.upstream_status = Some(status);
    if status == 404 {
        return Err(Refusal::NoStagedVersion);
    }
    if status != 200 {
        return Err(Refusal::Upstream(UpstreamError::Failed(format!("the staged item answered {status}"))));
    }
    let doc = crate::support::json::parse_object(&item)
        .map_err(|_| Refusal::Upstream(UpstreamError::Failed("the staged item is not JSON".into())))?;
    let package = doc
        .get("packageName")
        .and_then(|v| v.as_str())
        .and_then(|name| PackageName::parse(name).ok())
        .ok_or_else(|| Refusal::Upstream(UpstreamError::Failed("the staged item names no valid package".into())))?;
    rec.package = Some(package.to_string());
    // The item must belong to this upstream's packages, and to the caller's.
    if upstreams.route(Some(&package)).is_none_or(|u| u.name != upstream.name) {
        return Err(Refusal::NoStagedVersion);
    }
    let requested =
        Requested { package: Some(&package), action: ActionKind::Read, tags: &[], version: None, creates: false };
    // Outside the caller's packages it is "no such staged version", as for an unknown id: the
    // answer does not tell that the id exists.
    let authorized = policy.authorize(&r.identity, &r.grant, &r.scope, requested, npm).map_err(|denial| {
        rec.reason = Some(format!("the staged version's package: {denial}"));
        Refusal::NoStagedVersion
    })?;
    rec.grant = Some(authorized.grant().name.clone());
    rec.decision = Decision::Allow;
    if !tarball {
        return Ok(net::json_reply(StatusCode::OK, crate::upstream::scrubbed(item, &auth)));
    }
    let auth = app.credentials.for_authorized(&authorized, &upstream.name).map_err(Refusal::Internal)?;
    let resp = upstream.send(headers, Content::None, net::empty(), &auth).await?;
    rec.upstream_status = Some(resp.status().as_u16());
    Ok(upstream::relay(resp, &auth, app.config.server.upstream_timeout)?)
}

/// Largest answer the broker reads before relaying it (a staged version's id, a refusal).
const MAX_READ_ANSWER: usize = 1024 * 1024;
/// How long the broker waits to read a new staged version's status before answering without it.
const STAGE_STATUS_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// The registry took a publish. It is staged, not live, when it went to the stage route, or
/// when the registry's answer carries a `stageId`: since npm 11.16 the public registry stages a
/// plain `npm publish` made with a bypass-2FA token and answers 2xx with the stage's id (as
/// projects' release notes report it; npm's changelog and `npm stage` docs name the id
/// `stageId`). A staged version is on record as staged, the grant's notify targets hear of it,
/// and the caller gets the registry's answer with an `npm-notice` (npm prints it) naming the
/// stage id, its status and how a maintainer approves it.
pub(super) async fn publish_reply(
    at: &Upstreamed<'_>,
    grant: &Grant,
    resp: Response<Body>,
    sent_staged: bool,
    rec: &mut Record,
) -> Result<Response<Body>, Refusal> {
    let status = resp.status();
    let (mut parts, bytes) = match upstream::read_relayed(resp, MAX_READ_ANSWER).await {
        Ok(read) => read,
        Err(e) => {
            rec.reason = Some(format!("the registry's answer to the publish was unreadable: {e}"));
            let (mut parts, _) = Response::new(()).into_parts();
            parts.status = status;
            parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            (parts, bytes::Bytes::from_static(b"{}"))
        }
    };
    let doc = json::parse_object(&bytes).ok();
    let field = |key: &str| doc.as_ref().and_then(|d| d.get(key)).and_then(|v| v.as_str()).map(str::to_owned);
    // The id and the status are the registry's text: recorded and shown only if they look like one.
    let id = field("stageId").filter(|id| is_token(id, 64));
    if !sent_staged && doc.as_ref().is_none_or(|d| !d.contains_key("stageId")) {
        return Ok(Response::from_parts(parts, crate::support::net::full(bytes)));
    }
    rec.staged = true;
    if !sent_staged {
        rec.reason = Some(
            "the registry staged a direct publish (silent staging): the version is not live until a maintainer \
             approves it"
                .into(),
        );
    }
    let stage_status = match (field("status"), &id) {
        (Some(s), _) => Some(s),
        (None, Some(id)) => stage_status(at, id).await,
        (None, None) => None,
    }
    .filter(|s| is_token(s, 32));
    rec.stage_id = id.clone();
    rec.stage_status = stage_status.clone();
    let (package, version) = (rec.package.clone().unwrap_or_default(), rec.version.clone().unwrap_or_default());
    let staged = Staged {
        package,
        version,
        stage_id: id,
        status: stage_status,
        silent: !sent_staged,
        identity: rec.identity.clone(),
        grant: grant.name.clone(),
        request_id: rec.request_id.clone(),
        held: None,
    };
    if staged.stage_id.is_none() {
        rec.reason = Some("the registry staged the version without a usable stage id".into());
    }
    if let Ok(v) = HeaderValue::from_str(&staged.notice()) {
        parts.headers.append("npm-notice", v);
    }
    if !grant.notify.is_empty() {
        at.app.notifier.staged(&grant.notify, &staged, &at.app.audit);
    }
    Ok(Response::from_parts(parts, crate::support::net::full(bytes)))
}

/// Text the registry sent that the broker repeats: short, letters, digits, `-` and `_` only.
fn is_token(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A new staged version's status (`validating` while the registry's checks run, then `staged`),
/// read with the grant's credential (`GET /-/stage/<id>`); `None` when it cannot be read soon.
async fn stage_status(at: &Upstreamed<'_>, id: &str) -> Option<String> {
    let read = at.auth.then_get(&NpmRequest::stage_view(id)?);
    let read = at.upstream.fetch_json(&read, MAX_ITEM);
    let (status, item) = tokio::time::timeout(STAGE_STATUS_WAIT, read).await.ok()?.ok()?;
    if status != 200 {
        return None;
    }
    json::parse_object(&item).ok()?.get("status")?.as_str().map(str::to_owned)
}

/// A publish the registry refused. Two refusals get one that says what to do: a credential
/// that may only stage (`E_STAGE_REQUIRED`, as the public registry answers stage-only tokens
/// since September 2026; or "OIDC permission denied", its answer to a direct publish over a
/// trusted-publishing connection that may only stage), and a version that is already staged
/// (409 "Cannot publish over previously staged version"). Any other is relayed as it came.
pub(super) async fn publish_refused(resp: Response<Body>, rec: &mut Record) -> Result<Response<Body>, Refusal> {
    let status = resp.status().as_u16();
    let (parts, bytes) = upstream::read_relayed(resp, MAX_READ_ANSWER).await?;
    // The registry's words, where a registry puts them: `code`, `error` or `message`.
    let says = |what: &str| {
        json::parse_object(&bytes).is_ok_and(|doc| {
            ["code", "error", "message"]
                .iter()
                .any(|k| doc.get(*k).and_then(|v| v.as_str()).is_some_and(|v| v.to_ascii_lowercase().contains(what)))
        })
    };
    if says("e_stage_required") || (status == 403 && says("oidc permission denied")) {
        return Err(Refusal::StageRequired);
    }
    if status == 409 && says("previously staged") {
        rec.reason = Some("the registry has this version staged already".into());
        return Err(Refusal::AlreadyStaged);
    }
    Ok(Response::from_parts(parts, crate::support::net::full(bytes)))
}
