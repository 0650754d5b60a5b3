//! The admin face (its own listener): health, live phantoms, revocation, incident freeze and
//! policy reload. Everything under `/admin/v1/` needs the admin bearer token, and every admin
//! action is audited.

use crate::app::App;
use crate::audit::{self, Action, AdminAction, Decision, Event, Record};
use crate::policy::Glob;
use crate::state::{PhantomStore, Selector};
use crate::support::clock::rfc3339;
use crate::support::json::parse_object;
use crate::support::net::{self, Body};
use http::{header, Method, Request, Response, StatusCode};

use hyper::body::Incoming;
use serde_json::{json, Value};
use std::sync::Arc;
use subtle::ConstantTimeEq;

pub(super) async fn handle(app: Arc<App>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    if crate::console::serves(&app, &path) {
        return crate::console::handle(app, req).await;
    }
    let metrics_open = app.config.admin.as_ref().is_some_and(|a| a.metrics_open);
    match (req.method(), path.as_str()) {
        (&Method::GET, "/healthz") => return reply(StatusCode::OK, json!({"status": "ok"})),
        (&Method::GET, "/readyz") => return readyz(&app).await,
        // Prometheus sends the token from its `credentials_file` (or `metrics = "open"`).
        (&Method::GET, "/metrics") if metrics_open || authorized(&app, &req) => return metrics(&app).await,
        (&Method::GET, "/metrics") => {}
        _ if path.starts_with("/admin/v1/") => {}
        _ => return reply(StatusCode::NOT_FOUND, json!({"message": "not found"})),
    }
    let mut rec = Record {
        event: Event::Admin,
        request_id: String::new(),
        method: Some(audit::method(req.method())),
        path: Some(path.clone()),
        decision: Decision::Deny,
        ..Record::default()
    };
    let (status, body) = if path == "/metrics" {
        // Only an unauthorized scrape gets here.
        rec.action = Some(Action::Admin(AdminAction::Metrics));
        rec.reason = Some("missing or wrong admin token".into());
        let msg = "/metrics needs the admin bearer token (Prometheus: `authorization: { credentials_file: ... }`), \
                   unless [admin] metrics = \"open\"";
        (StatusCode::UNAUTHORIZED, json!({ "message": msg }))
    } else if !authorized(&app, &req) {
        rec.reason = Some("missing or wrong admin token".into());
        (StatusCode::UNAUTHORIZED, json!({"message": "the admin API needs the admin bearer token"}))
    } else {
        match route(&app, req, &mut rec).await {
            Ok(v) => {
                rec.decision = Decision::Allow;
                (StatusCode::OK, v)
            }
            Err((status, msg)) => {
                rec.reason = Some(msg.clone());
                (status, json!({"message": msg}))
            }
        }
    };
    rec.status = status.as_u16();
    if let Err(e) = app.audit.write_confirmed(Arc::new(rec)).await {
        tracing::error!(error = %e, "could not write the audit log");
        return reply(StatusCode::SERVICE_UNAVAILABLE, json!({"message": "the audit log cannot be written"}));
    }
    let mut resp = reply(status, body);
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer realm=\"phantom admin\""));
    }
    resp
}

fn authorized(app: &App, req: &Request<Incoming>) -> bool {
    let Some(expected) = app.admin_token.as_ref() else { return false };
    let given = match net::bearer(req.headers()) {
        net::Bearer::Token(token) => token,
        _ => "",
    };
    bool::from(given.as_bytes().ct_eq(expected.expose().as_bytes()))
}

type AdminResult = Result<Value, (StatusCode, String)>;

async fn route(app: &App, req: Request<Incoming>, rec: &mut Record) -> AdminResult {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let mut act = |a: AdminAction| rec.action = Some(Action::Admin(a));
    match (method, path.trim_start_matches("/admin/v1")) {
        (Method::GET, "/phantoms") => {
            act(AdminAction::List);
            list_phantoms(app).await
        }
        (Method::POST, "/revoke") => {
            act(AdminAction::Revoke);
            revoke(app, req, rec).await
        }
        (Method::GET, "/freeze") => Ok(json!({ "frozen": app.store.frozen_patterns() })),
        (Method::GET, "/holds") => {
            act(AdminAction::Holds);
            let holds =
                crate::ops::holds::list(app).await.map_err(|e| (StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
            Ok(json!({ "holds": holds }))
        }
        (Method::POST, p) if p.starts_with("/holds/") && p.ends_with("/reject") => {
            act(AdminAction::HoldReject);
            let id = p.trim_start_matches("/holds/").trim_end_matches("/reject");
            if !crate::npm::is_hold_id(id) {
                return Err((StatusCode::NOT_FOUND, "no such held write".into()));
            }
            use crate::ops::holds::Rejected;
            match crate::ops::holds::reject(app, id, rec).await {
                Ok(Rejected::Rejected) => Ok(json!({ "id": id, "state": "rejected" })),
                Ok(Rejected::Unknown) => Err((StatusCode::NOT_FOUND, "no such held write".into())),
                Ok(Rejected::NotHeld(state)) => Err((StatusCode::CONFLICT, format!("the held write is {state}"))),
                Err(e) => Err((StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
            }
        }
        (Method::POST, op @ ("/freeze" | "/thaw")) => {
            act(if op == "/freeze" { AdminAction::Freeze } else { AdminAction::Thaw });
            freeze(app, req, op == "/freeze", rec).await
        }
        (Method::GET, "/credentials") => {
            act(AdminAction::CredentialStatus);
            Ok(json!({ "credentials": crate::ops::status(app).await }))
        }
        (Method::POST, "/reload") => {
            act(AdminAction::Reload);
            Ok(crate::ops::reload(app, "admin API").await)
        }
        (Method::POST, p) if p.starts_with("/credentials/") && p.ends_with("/rotate") => {
            act(AdminAction::CredentialRotate);
            let segment = p.trim_start_matches("/credentials/").trim_end_matches("/rotate");
            let name = percent_encoding::percent_decode_str(segment).decode_utf8_lossy().into_owned();
            rotate(app, req, &name, rec).await
        }
        (Method::POST, "/policy/reload") => {
            act(AdminAction::PolicyReload);
            let grants = app.reload_policy().map_err(|e| (StatusCode::BAD_REQUEST, e))?;
            Ok(json!({ "grants": grants }))
        }
        _ => Err((StatusCode::NOT_FOUND, "unknown admin route".into())),
    }
}

fn bad(message: &str) -> (StatusCode, String) {
    (StatusCode::BAD_REQUEST, message.to_owned())
}

/// Live phantoms: ids, identities, packages, expiry, uses left (never the tokens).
async fn list_phantoms(app: &App) -> AdminResult {
    let listed = app.store.list(crate::support::clock::unix_now()).await.map_err(unavailable)?;
    let phantoms: Vec<Value> = listed
        .iter()
        .map(|l| {
            let r = &l.record;
            json!({
                "id": r.id, "issuer": &*r.identity.issuer, "sub": r.identity.claim("sub"),
                "repository": r.identity.claim("repository").or(r.identity.claim("project_path")),
                "grant": r.grant, "packages": r.scope.packages.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "actions": r.scope.actions.names(), "issued": rfc3339(r.issued_at, 0),
                "expires": rfc3339(r.expires_at, 0), "uses_left": l.uses_left,
            })
        })
        .collect();
    Ok(json!({ "phantoms": phantoms }))
}

async fn revoke(app: &App, req: Request<Incoming>, rec: &mut Record) -> AdminResult {
    let body = read_json(req).await?;
    let selector = match (body.get("id"), body.get("subject"), body.get("repository"), body.get("all")) {
        (Some(Value::String(id)), None, None, None) => Selector::Id(id.clone()),
        (None, Some(Value::String(s)), None, None) => Selector::Subject(s.clone()),
        (None, None, Some(Value::String(r)), None) => Selector::Repository(r.clone()),
        (None, None, None, Some(Value::Bool(true))) => Selector::All,
        _ => return Err(bad("give exactly one of {\"id\"}, {\"subject\"}, {\"repository\"} or {\"all\": true}")),
    };
    rec.reason = Some(format!("{selector:?}"));
    let revoked = app.store.revoke(&selector).await.map_err(unavailable)?;
    rec.revoked = revoked.clone();
    let mut answer = json!({ "revoked": revoked.len(), "ids": revoked });
    match crate::ops::holds::reject_revoked(app, &selector, &revoked).await {
        Ok(holds) => answer["holds_rejected"] = json!(holds),
        Err(e) => {
            rec.reason = Some(format!("{selector:?}; the held writes of what was revoked were not all rejected: {e}"));
            answer["holds_rejected_error"] = json!(e.to_string());
        }
    }
    // A person whose subject is revoked (or everyone, with `all`) is signed out of the console too.
    match crate::console::revoke_sessions(app, &selector).await {
        Ok(true) => answer["console_sessions_ended"] = json!(true),
        Ok(false) => {}
        Err(e) => {
            rec.reason = Some(format!("{selector:?}; console sessions were not ended: {e}"));
            answer["console_sessions_error"] = json!(e.to_string());
        }
    }
    Ok(answer)
}

async fn freeze(app: &App, req: Request<Incoming>, freeze: bool, rec: &mut Record) -> AdminResult {
    let body = read_json(req).await?;
    let patterns: Vec<String> = body
        .get("packages")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .filter(|v: &Vec<String>| !v.is_empty())
        .ok_or_else(|| bad("give {\"packages\": [\"pattern\", ...]}"))?;
    let globs = patterns.iter().map(|p| Glob::new(p)).collect::<Result<Vec<_>, _>>().map_err(|e| bad(&e))?;
    rec.package = Some(patterns.join(","));
    app.store.set_frozen(&globs, freeze).await.map_err(unavailable)?;
    Ok(json!({ "frozen": app.store.frozen_patterns() }))
}

async fn rotate(app: &App, req: Request<Incoming>, name: &str, rec: &mut Record) -> AdminResult {
    rec.credential = Some(name.chars().take(64).filter(|c| !c.is_control()).collect());
    let rotation = read_rotation(req).await?;
    rec.reason = Some(format!(
        "rotation{}{}",
        if rotation.incident { ", incident" } else { "" },
        rotation.overlap.map(|d| format!(", overlap {}s", d.as_secs())).unwrap_or_default()
    ));
    match crate::ops::rotate(app, name, rotation).await {
        Ok(done) => Ok(serde_json::to_value(done).unwrap_or_default()),
        Err(e) => Err((StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), e.to_string())),
    }
}

/// Ready to serve every kind of request: policy loaded, the audit log written, the state store
/// answering, and every issuer's keys at hand. The body says which check failed. (That the
/// listeners accept is shown by this answer itself: they start before the admin face.)
async fn readyz(app: &App) -> Response<Body> {
    let issuers = app.issuers.keys_usable().await;
    let checks = [
        ("policy", !app.policy().is_empty()),
        ("audit", app.audit.is_healthy()),
        ("state", app.store.is_healthy()),
        ("issuers", issuers.iter().all(|(_, ok)| *ok)),
    ];
    let ready = checks.iter().all(|(_, ok)| *ok);
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let mut body = json!({"ready": ready, "grants": app.policy().len()});
    for (name, ok) in checks {
        body[name] = json!(if ok { "ok" } else { "failing" });
    }
    body["issuer_keys"] =
        issuers.into_iter().map(|(name, ok)| (name, json!(ok))).collect::<serde_json::Map<_, _>>().into();
    reply(status, body)
}

/// `GET /metrics`: Prometheus text. It holds counts, names and ages, never a secret, but names
/// the credentials, grants and packages an attacker would aim at: it needs the admin token
/// unless `[admin] metrics = "open"`.
async fn metrics(app: &App) -> Response<Body> {
    let now = crate::support::clock::unix_now();
    let limit = std::time::Duration::from_secs(2);
    let active = tokio::time::timeout(limit, app.store.count_live(now)).await;
    let holds = tokio::time::timeout(limit, app.store.hold_list(now)).await.ok().and_then(Result::ok).map(|list| {
        use crate::state::holds::HoldState;
        HoldState::ALL.map(|s| (s.as_str(), list.iter().filter(|h| h.state == s).count() as u64)).to_vec()
    });
    let credentials = app
        .credentials
        .slots()
        .map(|slot| crate::metrics::CredentialFigures {
            name: slot.config.name.clone(),
            class: slot.config.class,
            since: slot.config.created.max(slot.rotated()),
            deadline: slot.deadline(&app.config.rotation, now),
        })
        .collect();
    let snap = crate::metrics::Snapshot {
        now,
        phantoms_active: active.ok().and_then(Result::ok),
        holds,
        credentials,
        freezes: app.store.frozen_patterns().len(),
        audit_healthy: app.audit.is_healthy(),
        state_healthy: app.store.is_healthy(),
    };
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)
        .header(header::CACHE_CONTROL, "no-store")
        .body(net::full(app.metrics.render(&app.config, &snap)))
        .expect("a metrics response is valid")
}

/// The body of a rotation: `{"token": "...", "overlap_seconds": N, "incident": true}`. The
/// token goes straight into a `Secret`; the bytes it came in are zeroized.
async fn read_rotation(req: Request<Incoming>) -> Result<crate::ops::Rotation, (StatusCode, String)> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        token: String,
        overlap_seconds: Option<u64>,
        incident: Option<bool>,
        account: Option<String>,
    }
    let bytes = zeroize::Zeroizing::new(read(req).await.map_err(|_| bad("the body could not be read"))?.to_vec());
    // Parsed strictly (a duplicate key is refused), then read into its fields.
    let what = "give {\"token\": \"...\"} and optionally \"overlap_seconds\", \"incident\" and \"account\"";
    let doc = parse_object(&bytes).map_err(|_| bad(what))?;
    let body: Body = serde_json::from_value(Value::Object(doc)).map_err(|_| bad(what))?;
    let incident = body.incident.unwrap_or(false);
    if incident && body.overlap_seconds.is_some_and(|s| s > 0) {
        return Err(bad("an incident rotation keeps no overlap: the old value is revoked first"));
    }
    Ok(crate::ops::Rotation {
        token: crate::support::secret::Secret::new(body.token),
        overlap: body.overlap_seconds.filter(|s| *s > 0).map(std::time::Duration::from_secs),
        incident,
        account: body.account,
    })
}

fn unavailable(e: crate::state::StoreError) -> (StatusCode, String) {
    (StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}

/// An admin request's body: at most 64 KiB, within 10 s.
async fn read(req: Request<Incoming>) -> Result<bytes::Bytes, net::ReadError> {
    net::read_body(net::IdleTimeout::new(req.into_body(), std::time::Duration::from_secs(10)), 64 * 1024).await
}

async fn read_json(req: Request<Incoming>) -> Result<serde_json::Map<String, Value>, (StatusCode, String)> {
    let bytes = read(req).await.map_err(|_| (StatusCode::BAD_REQUEST, "the body could not be read".to_owned()))?;
    parse_object(&bytes).map_err(|_| (StatusCode::BAD_REQUEST, "the body must be a JSON object".to_owned()))
}

fn reply(status: StatusCode, body: Value) -> Response<Body> {
    net::json_reply(status, body.to_string())
}
