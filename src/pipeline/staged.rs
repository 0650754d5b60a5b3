//! Reads of one staged version by its id (`npm stage view`, `npm stage download`). The path
//! does not name the package, so the broker looks the item up first, with the credential of
//! the caller's grant (on the registry face, at that credential's upstream), and relays nothing
//! unless that grant lets the caller read the package the item belongs to.

use super::{Refusal, Session};
use crate::app::App;
use crate::audit::{Decision, Record};
use crate::credentials::UpstreamAuth;
use crate::net::{self, Body};
use crate::npm::{ActionKind, NpmRequest, Op, PackageName};
use crate::policy::Requested;
use crate::upstream::{self, Content, Upstream, UpstreamError};
use http::{header, HeaderMap, Response, StatusCode};

/// A staged item is a small JSON document.
const MAX_ITEM: usize = 256 * 1024;

pub(super) async fn read(
    app: &App,
    npm: NpmRequest,
    session: Option<Session>,
    upstream: &Upstream,
    tunneled: bool,
    headers: &HeaderMap,
    rec: &mut Record,
) -> Result<Response<Body>, Refusal> {
    let (id, tarball) = match npm.op() {
        Op::StageView { id } => (id.clone(), false),
        Op::StageTarball { id } => (id.clone(), true),
        _ => return Err(Refusal::Internal("not a staged item".into())),
    };
    if !app.audit.is_healthy() && !app.config.audit.serve_reads_on_failure {
        return Err(Refusal::AuditUnavailable);
    }
    let Some(session) = session else {
        // Without a phantom, as any read: anonymously (the registry decides).
        rec.decision = Decision::Anonymous;
        let resp = upstream
            .send(
                npm.method.clone(),
                &npm.upstream_path(),
                headers,
                Content::None,
                net::empty(),
                &UpstreamAuth::ANONYMOUS,
            )
            .await?;
        rec.upstream_status = Some(resp.status().as_u16());
        return Ok(upstream::relay(resp, &UpstreamAuth::ANONYMOUS, app.config.server.upstream_timeout)?);
    };
    let r = &session.record;
    let policy = app.policy();
    let lookup = policy.authorize_lookup(&r.identity, &r.grant, ()).map_err(Refusal::Denied)?;
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
    let (status, item) = upstream.fetch_json(&format!("/-/stage/{id}"), &auth, MAX_ITEM).await?;
    rec.upstream_status = Some(status);
    if status == 404 {
        return Err(Refusal::NoStagedVersion);
    }
    if status != 200 {
        return Err(Refusal::Upstream(UpstreamError::Failed(format!("the staged item answered {status}"))));
    }
    let doc = crate::json::parse_object(&item)
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
        let body = crate::upstream::scrubbed(item, &auth);
        let resp = Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/json")
            .body(net::full(body))
            .map_err(|e| Refusal::Internal(e.to_string()))?;
        return Ok(resp);
    }
    let npm = authorized.get();
    let resp =
        upstream.send(npm.method.clone(), &npm.upstream_path(), headers, Content::None, net::empty(), &auth).await?;
    rec.upstream_status = Some(resp.status().as_u16());
    Ok(upstream::relay(resp, &auth, app.config.server.upstream_timeout)?)
}
