//! What the console's forms do: sign in with the admin token, sign out, approve or reject a
//! held write, revoke a phantom, freeze and thaw. Each post must come from the console's own
//! origin, carry the session's CSRF token and fit the session's role; each is an audit line,
//! refused or done. A done action sends the browser back to its page with a notice.

use super::respond::{admin_line, problem, redirect, write_line};
use super::session::{self, Session};
use crate::app::App;
use crate::audit::{AdminAction, Decision, Record};
use crate::config::Role;
use crate::pipeline::people::{decide_as, Person};
use crate::policy::Glob;
use crate::state::{PhantomStore, Selector};
use crate::support::net::{self, Body};
use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use std::collections::HashMap;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// The largest form the console takes.
const MAX_FORM: usize = 16 * 1024;

/// The notice a page shows after an action (`?ok=<code>`): fixed texts, never the query's.
pub(super) fn notice(query: Option<&str>) -> Option<String> {
    let code = form_urlencoded::parse(query?.as_bytes()).find(|(k, _)| k == "ok")?.1;
    let text = match &*code {
        "approved" => "Approved. The write waits for more approvals.",
        "forwarded" => "Approved, and with that the write went to the registry.",
        "rejected" => "Rejected. The write will not be sent.",
        "revoked" => "Revoked. The phantom is refused from its next request.",
        "frozen" => "Frozen. Writes to it are refused until it is thawed.",
        "thawed" => "Thawed. Writes go through as policy allows.",
        _ => return None,
    };
    Some(text.to_owned())
}

/// A refusal: its page, and its audit line.
struct Refused {
    status: StatusCode,
    message: String,
}

fn refused(status: StatusCode, message: impl Into<String>) -> Refused {
    Refused { status, message: message.into() }
}

/// One form post.
pub(super) async fn post(app: &App, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let action = action_of(&path);
    let mut rec = admin_line(&req, action);
    let s = session::current(app, req.headers()).await;
    let cookie = session::cookie(req.headers(), session::COOKIE).map(str::to_owned);
    if let Some(s) = &s {
        rec.identity = s
            .summary
            .as_deref()
            .and_then(|j| serde_json::value::RawValue::from_string(j.to_owned()).ok())
            .map(Arc::from);
    }
    let outcome = match checked(app, req, s.as_ref()).await {
        Ok(_) if path == "/sign-out" && s.is_some() => Ok(sign_out(app, cookie.as_deref()).await),
        Ok(form) => act(app, &path, s.as_ref(), &form, &mut rec).await,
        Err(r) => Err(r),
    };
    let resp = match outcome {
        Ok(resp) => {
            // A new sign-in ends the session this browser had.
            if let (Some(old), "/sign-in/token") = (cookie.as_deref(), path.as_str()) {
                session::end(app, old).await;
            }
            rec.decision = Decision::Allow;
            rec.status = resp.status().as_u16();
            resp
        }
        Err(r) => {
            rec.decision = Decision::Deny;
            rec.status = r.status.as_u16();
            rec.reason = Some(r.message.clone());
            let back = back_to(&path);
            problem(s.as_ref(), r.status, "Not done", &r.message, back)
        }
    };
    write_line(app, rec).await;
    resp
}

fn action_of(path: &str) -> AdminAction {
    match path {
        "/sign-in/token" => AdminAction::ConsoleSignIn,
        "/sign-out" => AdminAction::ConsoleSignOut,
        "/freezes" => AdminAction::Freeze,
        "/freezes/thaw" => AdminAction::Thaw,
        p if p.starts_with("/phantoms/") => AdminAction::Revoke,
        p if p.ends_with("/reject") => AdminAction::HoldReject,
        p if p.ends_with("/approve") => AdminAction::Holds,
        _ => AdminAction::ConsoleRefused,
    }
}

fn back_to(path: &str) -> &'static str {
    match path {
        p if p.starts_with("/holds/") => "/holds",
        p if p.starts_with("/phantoms/") => "/phantoms",
        p if p.starts_with("/freezes") => "/freezes",
        "/sign-in/token" => "/sign-in",
        _ => "/",
    }
}

/// The form, once the post is shown to come from the console's pages: same origin, a form
/// body of bounded size, and (for a session) its CSRF token.
async fn checked(app: &App, req: Request<Incoming>, s: Option<&Session>) -> Result<HashMap<String, String>, Refused> {
    let origin = app.config.console.as_ref().map(|c| c.origin.as_str()).unwrap_or_default();
    if !session::same_origin(req.headers(), origin) {
        return Err(refused(StatusCode::FORBIDDEN, "This form was not sent from the console's own pages."));
    }
    let form_type = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    if form_type.map(|t| t.split(';').next().unwrap_or_default().trim()) != Some("application/x-www-form-urlencoded") {
        return Err(refused(StatusCode::UNSUPPORTED_MEDIA_TYPE, "The console takes forms only."));
    }
    let is_sign_in = req.uri().path() == "/sign-in/token";
    let body = net::read_body(req.into_body(), MAX_FORM)
        .await
        .map_err(|_| refused(StatusCode::PAYLOAD_TOO_LARGE, "The form is too large."))?;
    let mut form = HashMap::new();
    for (k, v) in form_urlencoded::parse(&body) {
        if form.insert(k.into_owned(), v.into_owned()).is_some() {
            return Err(refused(StatusCode::BAD_REQUEST, "A field was given twice."));
        }
    }
    if is_sign_in {
        return Ok(form);
    }
    let s =
        s.ok_or_else(|| refused(StatusCode::UNAUTHORIZED, "Your session ended (or never began): sign in again."))?;
    if !s.csrf_ok(form.get("csrf").map(String::as_str).unwrap_or_default()) {
        return Err(refused(StatusCode::FORBIDDEN, "The form's CSRF token is not this session's: reload the page."));
    }
    Ok(form)
}

async fn act(
    app: &App,
    path: &str,
    s: Option<&Session>,
    form: &HashMap<String, String>,
    rec: &mut Record,
) -> Result<Response<Body>, Refused> {
    if path == "/sign-in/token" {
        return sign_in_with_token(app, form, rec).await;
    }
    let s = s.ok_or_else(|| refused(StatusCode::UNAUTHORIZED, "Sign in first."))?;
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        ["holds", id, verb @ ("approve" | "reject")] if crate::npm::is_hold_id(id) => {
            decide(app, s, id, *verb == "approve", rec).await
        }
        ["phantoms", id] | ["phantoms", id, "revoke"] => revoke(app, s, id, rec).await,
        ["freezes"] => freeze(app, s, form, true, rec).await,
        ["freezes", "thaw"] => freeze(app, s, form, false, rec).await,
        _ => Err(refused(StatusCode::NOT_FOUND, "There is no such action.")),
    }
}

async fn sign_in_with_token(
    app: &App,
    form: &HashMap<String, String>,
    rec: &mut Record,
) -> Result<Response<Body>, Refused> {
    // Guesses are slowed down: a few a minute, for every replica together.
    if !super::limits::allow(app, "token-sign-in", 10).await {
        return Err(refused(StatusCode::TOO_MANY_REQUESTS, "Too many sign-ins with a token: wait a minute."));
    }
    let given = form.get("token").map(String::as_str).unwrap_or_default();
    let expected = app.admin_token.as_ref().map(|t| t.expose().as_bytes()).unwrap_or_default();
    if given.is_empty() || expected.is_empty() || !bool::from(given.as_bytes().ct_eq(expected)) {
        return Err(refused(StatusCode::UNAUTHORIZED, "That is not the admin token."));
    }
    rec.reason = Some("signed in with the admin token, as admin".into());
    let s = Session {
        who: "admin token".into(),
        role: Role::Admin,
        person: None,
        summary: None,
        csrf: String::new(),
        signed_in: 0,
        expires: 0,
        token: session::admin_token_fingerprint(app),
    };
    let resp = super::respond::signed_in(app, s, rec).await;
    if resp.status() != StatusCode::SEE_OTHER {
        return Err(refused(resp.status(), "The session could not be kept: try again."));
    }
    Ok(resp)
}

async fn sign_out(app: &App, cookie: Option<&str>) -> Response<Body> {
    if let Some(id) = cookie {
        session::end(app, id).await;
    }
    let mut resp = redirect("/sign-in");
    let gone = session::set_cookie(session::COOKIE, "", 0);
    resp.headers_mut().append(header::SET_COOKIE, HeaderValue::from_str(&gone).expect("ASCII"));
    resp
}

/// A person's approval or rejection, as the CLI's; an admin's rejection, as the admin API's.
async fn decide(app: &App, s: &Session, id: &str, approve: bool, rec: &mut Record) -> Result<Response<Body>, Refused> {
    rec.reason = Some(format!("hold {id}"));
    let held = app.store.hold_status(id, crate::support::clock::unix_now()).await;
    let held =
        held.map_err(|e| refused(StatusCode::SERVICE_UNAVAILABLE, format!("The state store did not answer: {e}")))?;
    let held = held.ok_or_else(|| refused(StatusCode::NOT_FOUND, "There is no such held write."))?;
    let as_person = super::pages::may_approve(app, s, &held);
    if !approve && !as_person && s.may(Role::Admin) {
        use crate::ops::holds::Rejected;
        return match crate::ops::holds::reject(app, id, rec).await {
            Ok(Rejected::Rejected) => Ok(redirect("/holds?ok=rejected")),
            Ok(Rejected::Unknown) => Err(refused(StatusCode::NOT_FOUND, "There is no such held write.")),
            Ok(Rejected::NotHeld(state)) => Err(refused(StatusCode::CONFLICT, format!("The held write is {state}."))),
            Err(e) => Err(refused(StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
        };
    }
    let (Some(p), true) = (s.person.as_ref(), s.may(Role::Approver)) else {
        return Err(refused(StatusCode::FORBIDDEN, "Only a person with the approver role approves a held write."));
    };
    if !s.fresh(crate::support::clock::unix_now()) {
        let why = "A decision on a held write needs a sign-in within the last 15 minutes: sign out and in again.";
        return Err(refused(StatusCode::FORBIDDEN, why));
    }
    let identity = crate::policy::Identity { issuer: p.issuer.as_str().into(), claims: p.claims.clone() };
    let person = Person::new(identity).map_err(|r| refused(r.status(), r.client_message().into_owned()))?;
    let mut line = Record {
        via: Some(crate::audit::Via::Console),
        identity: rec.identity.clone(),
        request_id: rec.request_id.clone(),
        ..Record::default()
    };
    let outcome = decide_as(app, &person, id, approve, &mut line).await;
    line.status = match &outcome {
        Ok(_) => 200,
        Err(r) => r.status().as_u16(),
    };
    if let Err(r) = &outcome {
        line.decision = r.decision();
        line.reason = Some(r.detail());
    }
    write_line(app, line).await;
    match outcome {
        Ok(d) if d.upstream_status.is_some() => Ok(redirect("/holds?ok=forwarded")),
        Ok(_) if approve => Ok(redirect("/holds?ok=approved")),
        Ok(_) => Ok(redirect("/holds?ok=rejected")),
        Err(r) => Err(refused(r.status(), r.client_message().into_owned())),
    }
}

async fn revoke(app: &App, s: &Session, id: &str, rec: &mut Record) -> Result<Response<Body>, Refused> {
    if !s.may(Role::Admin) {
        return Err(refused(StatusCode::FORBIDDEN, "Only an admin revokes phantoms."));
    }
    if id.is_empty() || id.len() > 128 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(refused(StatusCode::NOT_FOUND, "There is no such phantom."));
    }
    let selector = Selector::Id(id.to_owned());
    let revoked =
        app.store.revoke(&selector).await.map_err(|e| refused(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    if revoked.is_empty() {
        return Err(refused(StatusCode::NOT_FOUND, "There is no such live phantom."));
    }
    rec.revoked = revoked.clone();
    if let Err(e) = crate::ops::holds::reject_revoked(app, &selector, &revoked).await {
        rec.reason = Some(format!("the held writes of what was revoked were not all rejected: {e}"));
    }
    Ok(redirect("/phantoms?ok=revoked"))
}

async fn freeze(
    app: &App,
    s: &Session,
    form: &HashMap<String, String>,
    freeze: bool,
    rec: &mut Record,
) -> Result<Response<Body>, Refused> {
    if !s.may(Role::Admin) {
        return Err(refused(StatusCode::FORBIDDEN, "Only an admin freezes and thaws."));
    }
    let pattern = form.get("pattern").map(|p| p.trim()).unwrap_or_default();
    let glob = Glob::new(pattern).map_err(|e| refused(StatusCode::BAD_REQUEST, format!("`{pattern}`: {e}")))?;
    rec.package = Some(pattern.to_owned());
    app.store.set_frozen(&[glob], freeze).await.map_err(|e| refused(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    Ok(redirect(if freeze { "/freezes?ok=frozen" } else { "/freezes?ok=thawed" }))
}
