//! A read, top to bottom: with the credential of the caller's grant when its phantom covers
//! the package (npm reads a package just before it writes it), anonymously otherwise; in a
//! rotation's overlap window once more with the previous value if the upstream refuses the new
//! one; relayed scrubbed, a packument's tarball URLs rebased onto the broker.

use super::refusal::Refusal;
use super::session::Session;
use crate::app::App;
use crate::audit::{Decision, Record};
use crate::credentials::UpstreamAuth;
use crate::npm::{self, NpmRequest, Op};
use crate::policy::{Authorized, Requested};
use crate::support::net::{self, Body, BoxError};
use crate::upstream::{self, Content, Upstream};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

pub(super) async fn forward(
    app: &App,
    npm: NpmRequest,
    session: Option<Session>,
    upstream: &Upstream,
    req: Request<Incoming>,
    tunneled: bool,
    rec: &mut Record,
) -> Result<Response<Body>, Refusal> {
    let permit = authorize_read(app, session.as_ref(), npm);
    let (npm, mut auth) = match &permit {
        Permit::Anonymous(npm) => (npm, UpstreamAuth::anonymous(npm)),
        Permit::Granted(authorized) => {
            rec.grant = Some(authorized.grant().name.clone());
            let auth = app.credentials.for_authorized(authorized, &upstream.name).map_err(Refusal::Internal)?;
            (authorized.get(), auth)
        }
    };
    rec.decision = if auth.credential().is_some() { Decision::Allow } else { Decision::Anonymous };
    if !app.config.audit.serve_reads_on_failure {
        if !app.audit.is_healthy() {
            return Err(Refusal::AuditUnavailable);
        }
        if !app.store.is_healthy() {
            return Err(Refusal::Store(crate::state::StoreError::Unavailable("the state store is unreachable".into())));
        }
    }
    let (mut parts, incoming) = req.into_parts();
    // On the registry face, packuments' tarball URLs are rewritten to come back through the
    // broker; the rewrite reads the body, so it is asked for unencoded. Not when npm reads a
    // packument to send it back changed (`?write=true`: deprecate, unpublish): what it sends
    // back must be the upstream's own document.
    let rebase = !tunneled
        && !npm.reads_for_write()
        && npm.method == Method::GET
        && matches!(npm.op(), Op::Packument | Op::VersionManifest { .. });
    if rebase {
        parts.headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("identity"));
    }
    let bodiless = http_body::Body::is_end_stream(&incoming);
    let body = if bodiless {
        // A read without a body (nearly all) needs no timer and no box.
        net::empty()
    } else {
        // `npm audit` posts a (gzipped) dependency list, relayed as sent, never with a credential.
        let idle = net::IdleTimeout::new(incoming, app.config.server.client_timeout);
        Limited::new(idle, app.config.server.max_body_bytes as usize).map_err(BoxError::from).boxed_unsync()
    };
    let mut resp = upstream.send(&parts.headers, Content::AsSent, body, &auth).await?;
    // In a rotation's overlap window, a bodiless read the upstream refuses with the credential's
    // new value goes once more with the previous one (a new token may take a while to be
    // accepted everywhere upstream). Writes never are: their bodies are not sent twice.
    if bodiless && matches!(resp.status().as_u16(), 401 | 403) {
        if let Some(previous) = auth.with_previous() {
            drop(resp);
            resp = upstream.send(&parts.headers, Content::AsSent, net::empty(), &previous).await?;
            rec.reason = Some("the upstream refused the credential's new value: sent again with the previous one, in its overlap window".into());
            auth = previous;
        }
    }
    rec.upstream_status = Some(resp.status().as_u16());
    let resp = upstream::relay(resp, &auth, app.config.server.upstream_timeout)?;
    if rebase {
        return Ok(upstream.rebase_tarballs(resp, &app.public_base).await?);
    }
    Ok(resp)
}

enum Permit {
    /// Forwarded without any credential.
    Anonymous(NpmRequest),
    Granted(Authorized<NpmRequest>),
}

/// Whether a read goes upstream with the grant's credential or without one. A phantom reads
/// with its credential what its grant covers (npm reads a package just before writing it);
/// every other read goes anonymously.
fn authorize_read(app: &App, session: Option<&Session>, npm: NpmRequest) -> Permit {
    let Some(session) = session.filter(|_| !npm.always_anonymous()) else {
        return Permit::Anonymous(npm);
    };
    let r = &session.record;
    match app.policy().authorize_or_return(&r.identity, &r.grant, &r.scope, npm, read_of) {
        Ok(authorized) => Permit::Granted(authorized),
        Err((_, npm)) => Permit::Anonymous(npm),
    }
}

/// A read, as policy weighs it: of its package (any action on a package lets its phantom read it).
fn read_of(npm: &NpmRequest) -> Requested<'_> {
    Requested { package: npm.package.as_ref(), action: npm::ActionKind::Read, tags: &[], version: None, creates: false }
}
