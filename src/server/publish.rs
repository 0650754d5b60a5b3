//! Publishes stream: the body goes upstream while it is being read and checked, with bounded
//! memory, and the upstream never receives a complete body that failed a check.
//!
//! Before the first byte goes out, the phantom, the package and the possible actions are
//! authorized provisionally. The body is scanned as it passes (`npm::scan`): tarball data is
//! counted and validated, everything else kept as a small skeleton. The last chunk is held
//! back. At the end of the body the skeleton goes through the same strict checks as any body,
//! the exact action and its dist-tags are authorized, a deprecate is compared with upstream, a
//! use is spent and the write is put on record; only then is the last chunk released. Any
//! failure aborts the upstream request instead.

use super::handler::{compare_with_upstream, require_plain_json, spend_use, Fingerprinter, Session, UpstreamCheck};
use super::{App, Refusal};
use crate::audit::Record;
use crate::credentials::Credential;
use crate::net::{self, Body, BoxError};
use crate::npm::scan::{PublishScanner, ScanError};
use crate::npm::{body, ActionKind, BodyError, NpmRequest, Op, PackageName, PutPackument};
use crate::phantom::{Fingerprint, PhantomStore};
use crate::policy::Requested;
use crate::upstream::{self, Upstream};
use bytes::Bytes;
use http::{header, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;

/// The skeleton (a publish body without its tarball data) is at most this large: a packument
/// sent back by a deprecate must fit too.
const MAX_SKELETON: u64 = 32 * 1024 * 1024;

/// What the stream settled once it was read.
struct Settled {
    fingerprint: Fingerprint,
}

/// Why feeding stopped early.
enum Stop {
    /// The upstream request ended before the body did: its answer (or error) says why.
    UpstreamGone,
    Refused(Refusal),
}

impl From<Refusal> for Stop {
    fn from(r: Refusal) -> Stop {
        Stop::Refused(r)
    }
}

pub(super) async fn forward(
    app: &App,
    npm: NpmRequest,
    parts: http::request::Parts,
    incoming: Incoming,
    session: &Session,
    upstream: &Upstream,
    rec: &mut Record,
) -> Result<Response<Body>, Refusal> {
    require_plain_json(&parts.headers)?;
    let limit = app.config.server.max_body_bytes;
    let declared =
        parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(Refusal::TooLarge);
    }
    let package = npm.package.clone().ok_or(Refusal::Internal("a publish without a package".into()))?;
    let r = &session.record;
    let provisional = app
        .policy()
        .authorize_provisional(&r.identity, &r.grant, &r.scope, &package, npm.candidate_actions(), ())
        .map_err(Refusal::Denied)?;
    let credential = app.credentials.for_authorized(&provisional).filter(|c| *c.upstream == *upstream.name);
    let credential = credential.ok_or_else(|| {
        Refusal::Internal(format!("grant `{}`'s credential does not serve upstream `{}`", r.grant, upstream.name))
    })?;
    rec.grant = Some(provisional.grant().name.clone());
    rec.decision = "allow";

    let (tx, body) = net::ChannelBody::new(declared);
    let path = npm.upstream_path();
    let send = upstream.send(npm.method.clone(), &path, &parts.headers, body.boxed_unsync(), Some(credential));
    let feed = feed(app, &npm, &package, incoming, tx, session, credential, upstream, rec);
    let (sent, fed) = tokio::join!(send, feed);
    let settled = match fed {
        Ok(settled) => Some(settled),
        Err(Stop::Refused(refusal)) => return Err(refusal),
        Err(Stop::UpstreamGone) => None,
    };
    if let Some(s) = &settled {
        let ok = sent.as_ref().is_ok_and(|r| r.status().is_success());
        app.store.settle(&session.digest, s.fingerprint, ok).await?;
    }
    let resp = sent?;
    rec.upstream_status = Some(resp.status().as_u16());
    if resp.status().is_server_error() {
        return Err(Refusal::UpstreamFailed(resp.status().as_u16()));
    }
    Ok(upstream::relay(resp, Some(credential), app.config.server.upstream_timeout)?)
}

/// Reads the client's body into the upstream request, holding back the last chunk until every
/// check has passed. On any failure it aborts the upstream request.
#[allow(clippy::too_many_arguments)]
async fn feed(
    app: &App,
    npm: &NpmRequest,
    package: &PackageName,
    incoming: Incoming,
    tx: tokio::sync::mpsc::Sender<Result<Bytes, BoxError>>,
    session: &Session,
    credential: &Credential,
    upstream: &Upstream,
    rec: &mut Record,
) -> Result<Settled, Stop> {
    let mut held: Option<Bytes> = None;
    let outcome = async {
        let limit = app.config.server.max_body_bytes;
        let mut scanner = PublishScanner::new(MAX_SKELETON.min(limit) as usize);
        let mut fingerprint = Fingerprinter::new(npm);
        let mut body = net::IdleTimeout::new(incoming, app.config.server.client_timeout);
        let mut total = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                if e.is::<net::BodyTimeout>() {
                    Refusal::ClientTimeout
                } else {
                    Refusal::ClientBody(net::error_chain(&*e))
                }
            })?;
            let Ok(data) = frame.into_data() else { continue };
            total += data.len() as u64;
            if total > limit {
                return Err(Stop::Refused(Refusal::TooLarge));
            }
            scanner.feed(&data).map_err(scan_refusal)?;
            fingerprint.update(&data);
            if let Some(previous) = held.replace(data) {
                tx.send(Ok(previous)).await.map_err(|_| Stop::UpstreamGone)?;
            }
        }
        let skeleton = scanner.finish().map_err(scan_refusal)?.skeleton;
        settle_action(app, npm, package, &skeleton, session, credential, upstream, rec).await?;
        let fingerprint = fingerprint.finish();
        spend_use(app, session, fingerprint).await?;
        let intent = Record { decision: "forwarding", status: 0, ..rec.clone() };
        app.audit.write_confirmed(std::sync::Arc::new(intent)).await.map_err(|_| Refusal::AuditUnavailable)?;
        Ok(Settled { fingerprint })
    }
    .await;
    match outcome {
        Ok(settled) => {
            if let Some(last) = held {
                tx.send(Ok(last)).await.map_err(|_| Stop::UpstreamGone)?;
            }
            Ok(settled)
        }
        Err(stop) => {
            // The upstream sees the body end in an error: it never has a complete request.
            let _ = tx.send(Err("the broker refused the request".into())).await;
            Err(stop)
        }
    }
}

/// The checks a buffered body would get, on the skeleton, then the exact authorization.
#[allow(clippy::too_many_arguments)]
async fn settle_action(
    app: &App,
    npm: &NpmRequest,
    package: &PackageName,
    skeleton: &[u8],
    session: &Session,
    credential: &Credential,
    upstream: &Upstream,
    rec: &mut Record,
) -> Result<(), Refusal> {
    let (kind, version, tags, deprecate) = match npm.op() {
        Op::StagePublish => {
            let m = body::check_stage_publish(package, skeleton)?;
            (ActionKind::StagePublish, Some(m.version), m.dist_tags, None)
        }
        _ => match body::check_put_packument(package, skeleton)? {
            PutPackument::Publish(m) => (ActionKind::Publish, Some(m.version), m.dist_tags, None),
            PutPackument::Deprecate(doc) => (ActionKind::Deprecate, None, Vec::new(), Some(doc)),
        },
    };
    rec.action = Some(kind.as_str());
    rec.version = version;
    rec.dist_tags = tags.clone();
    let r = &session.record;
    let requested = Requested { package: Some(package), action: kind, tags: &tags };
    app.policy().authorize(&r.identity, &r.grant, &r.scope, requested, ()).map_err(Refusal::Denied)?;
    if let Some(doc) = deprecate {
        compare_with_upstream(app, upstream, npm, &UpstreamCheck::Deprecate(doc), &Bytes::new(), credential).await?;
    }
    Ok(())
}

fn scan_refusal(e: ScanError) -> Stop {
    Stop::Refused(match e {
        ScanError::SkeletonTooLarge => Refusal::TooLarge,
        ScanError::BadTarballData | ScanError::Malformed => Refusal::Body(BodyError::InvalidJson),
    })
}
