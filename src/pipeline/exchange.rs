//! Exchanges: an OIDC ID token in, a phantom out.
//!
//! npm's own (`POST /-/npm/v1/oidc/token/exchange/package/<name>`, scoped to that package and
//! `publish`) and the broker's generic one (`POST /-/phantom/v1/exchange`, any packages and
//! actions, intersected with what policy grants). Each ID token is exchanged at most once.

use super::refusal::Refusal;
use crate::app::App;
use crate::audit::{identity_summary, Action, Decision, Event, Record};
use crate::identity::{Audience, Verified};
use crate::npm::{ActionKind, ActionSet, PackageName};
use crate::phantom::{PhantomRecord, PhantomToken};
use crate::policy::{Grant, Identity, Scope};
use crate::state::PhantomStore;
use crate::support::clock::rfc3339;
use crate::support::json::parse_object;
use crate::support::net::{self, Body};
use crate::support::secret::IdToken;
use http::{Request, Response, StatusCode};

use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use std::time::Duration;

const MAX_EXCHANGE_BODY: usize = 64 * 1024;
const MAX_PACKAGES: usize = 100;

pub(super) async fn npm_native(
    app: &App,
    package: PackageName,
    req: Request<Incoming>,
    rec: &mut Record,
) -> Result<Response<Body>, Refusal> {
    rec.event = Event::Exchange;
    rec.path = Some(format!("/-/npm/v1/oidc/token/exchange/package/{}", package.escaped()));
    rec.action = Some(Action::npm(ActionKind::Publish));
    rec.package = Some(package.to_string());
    if package.is_legacy() {
        return Err(Refusal::Route(crate::npm::RouteError::LegacyNameWrite));
    }
    if app.is_frozen(&package) {
        return Err(Refusal::Frozen);
    }
    let id_token = bearer_id_token(&req)?;
    let verified = verify_once(app, &id_token, Audience::Exactly(app.npm_audience()), rec).await?;
    // `npm publish` and `npm stage publish` both use this exchange.
    let policy = app.policy();
    let grant = policy
        .grant_for(&verified.identity, &package, ActionKind::Publish)
        .or_else(|_| policy.grant_for(&verified.identity, &package, ActionKind::StagePublish))
        .map_err(Refusal::NoGrant)?;
    let publishing: crate::npm::ActionSet = [ActionKind::Publish, ActionKind::StagePublish].into_iter().collect();
    let scope = Scope { packages: vec![package], actions: grant.actions.intersect(publishing) };
    let ttl = grant.ttl;
    let minted = mint(app, verified.identity, &grant, scope, ttl, rec).await?;
    #[derive(Serialize)]
    struct Exchanged<'a> {
        created: String,
        expires: String,
        token: &'a str,
        token_type: &'static str,
    }
    let body = Exchanged {
        created: rfc3339(minted.created, 0),
        expires: rfc3339(minted.expires, 0),
        token: minted.token.expose(),
        token_type: "oidc",
    };
    Ok(json_response(StatusCode::CREATED, &body))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExchangeRequest {
    packages: Vec<String>,
    actions: Vec<String>,
    ttl_seconds: Option<u64>,
}

pub(super) async fn generic(app: &App, req: Request<Incoming>, rec: &mut Record) -> Result<Response<Body>, Refusal> {
    rec.event = Event::Exchange;
    rec.path = Some("/-/phantom/v1/exchange".into());
    let id_token = bearer_id_token(&req)?;
    let asked = read_request(req, app.config.server.client_timeout).await?;
    let verified = verify_once(app, &id_token, Audience::IssuerDefault, rec).await?;
    let (grant, scope) = app
        .policy()
        .best_grant(&verified.identity, &asked.packages, asked.actions)
        .ok_or(Refusal::NoGrant(crate::policy::Denial::NoGrant))?;
    let ttl = match asked.ttl {
        Some(t) => t.min(grant.ttl),
        None => grant.ttl,
    };
    let packages: Vec<String> = scope.packages.iter().map(ToString::to_string).collect();
    let actions = scope.actions.names();
    rec.package = Some(packages.join(","));
    let minted = mint(app, verified.identity, &grant, scope, ttl, rec).await?;
    #[derive(Serialize)]
    struct Exchanged<'a> {
        actions: Vec<&'static str>,
        expires: String,
        packages: Vec<String>,
        token: &'a str,
    }
    let body = Exchanged { actions, expires: rfc3339(minted.expires, 0), packages, token: minted.token.expose() };
    Ok(json_response(StatusCode::CREATED, &body))
}

struct Asked {
    packages: Vec<PackageName>,
    actions: ActionSet,
    ttl: Option<Duration>,
}

async fn read_request(req: Request<Incoming>, idle: Duration) -> Result<Asked, Refusal> {
    let bytes = net::read_body(net::IdleTimeout::new(req.into_body(), idle), MAX_EXCHANGE_BODY).await?;
    let bad = Refusal::BadRequest("the body must be {\"packages\": [...], \"actions\": [...], \"ttl_seconds\": N}");
    let doc = parse_object(&bytes).map_err(|_| Refusal::BadRequest("the body must be a JSON object"))?;
    let asked: ExchangeRequest = serde_json::from_value(doc.into()).map_err(|_| bad)?;
    if asked.packages.is_empty() || asked.packages.len() > MAX_PACKAGES || asked.actions.is_empty() {
        return Err(Refusal::BadRequest("`packages` (at most 100) and `actions` may not be empty"));
    }
    let mut packages = Vec::new();
    for p in &asked.packages {
        let name =
            PackageName::parse(p).map_err(|_| Refusal::BadRequest("`packages` holds an invalid package name"))?;
        if name.is_legacy() {
            return Err(Refusal::Route(crate::npm::RouteError::LegacyNameWrite));
        }
        if !packages.contains(&name) {
            packages.push(name);
        }
    }
    let mut actions = ActionSet::default();
    for a in &asked.actions {
        actions.insert(ActionKind::parse(a).ok_or(Refusal::BadRequest("`actions` holds an unknown action"))?);
    }
    if asked.ttl_seconds == Some(0) {
        return Err(Refusal::BadRequest("`ttl_seconds` must be at least 1"));
    }
    Ok(Asked { packages, actions, ttl: asked.ttl_seconds.map(Duration::from_secs) })
}

/// The ID token from `Authorization: Bearer`.
pub(super) fn bearer_id_token(req: &Request<Incoming>) -> Result<IdToken, Refusal> {
    match net::bearer(req.headers()) {
        net::Bearer::Token(token) => Ok(IdToken::new(token.to_owned())),
        _ => Err(Refusal::Identity(crate::identity::IdentityError::Malformed)),
    }
}

/// Verifies the ID token and records it as spent; a second exchange of it is refused.
pub(super) async fn verify_once(
    app: &App,
    token: &IdToken,
    audience: Audience<'_>,
    rec: &mut Record,
) -> Result<Verified, Refusal> {
    let now = crate::support::clock::unix_now();
    let verified = app.issuers.verify(token, audience, now).await?;
    rec.identity = Some(identity_summary(&verified.identity.issuer, &verified.identity.claims));
    rec.id_token_id = Some(app.audit.id_token_id(&verified.replay_key));
    if !app.store.claim_id_token(verified.replay_key, verified.replay_until, now).await? {
        return Err(Refusal::Replay);
    }
    Ok(verified)
}

struct Minted {
    token: PhantomToken,
    created: u64,
    expires: u64,
}

async fn mint(
    app: &App,
    identity: Identity,
    grant: &Grant,
    scope: Scope,
    ttl: Duration,
    rec: &mut Record,
) -> Result<Minted, Refusal> {
    let token = PhantomToken::generate(&app.rng);
    let digest = token.digest();
    let created = crate::support::clock::unix_now();
    let expires = created + ttl.as_secs();
    let id: std::sync::Arc<str> = app.audit.token_id(&digest).into();
    rec.token_id = Some(id.clone());
    rec.grant = Some(grant.name.clone());
    rec.expires = Some(rfc3339(expires, 0));
    let summary = rec.identity.clone().unwrap_or_else(|| identity_summary(&identity.issuer, &identity.claims));
    let record = PhantomRecord {
        id,
        summary,
        identity,
        scope,
        grant: grant.name.to_string(),
        issued_at: created,
        expires_at: expires,
        max_uses: grant.max_uses,
    };
    app.store.insert(digest, record).await?;
    rec.decision = Decision::Allow;
    Ok(Minted { token, created, expires })
}

/// The response carrying a phantom. (Its keys are written in byte order, as they always were.)
fn json_response(status: StatusCode, body: &impl serde::Serialize) -> Response<Body> {
    // Strings and string lists always serialise; were it otherwise, no empty 201 would go out.
    net::json_reply(status, serde_json::to_vec(body).expect("a phantom response serialises"))
}
