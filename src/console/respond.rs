//! How the console answers: a rendered page, a redirect, a page that says what went wrong,
//! the sign-in page and the start of a session; and the audit line of a console action.

use super::pages::{self, Frame};
use super::session::{self, Session};
use crate::app::App;
use crate::audit::{self, Action, AdminAction, Decision, Event, Record};
use crate::support::net::{self, Body};
use askama::Template;
use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use std::sync::Arc;

pub(super) fn sign_in_page(app: &App, error: Option<String>, status: StatusCode) -> Response<Body> {
    let mut frame = Frame::new("Sign in", "/sign-in", None);
    frame.error = error;
    let issuer = app.config.console.as_ref().and_then(|c| c.issuer.clone());
    rendered(status, pages::SignIn { frame, issuer }.render())
}

/// Starts `s` and sends the browser to the overview with its cookie.
pub(super) async fn signed_in(app: &App, s: Session, rec: &mut Record) -> Response<Body> {
    match session::start(app, s).await {
        Ok(id) => {
            rec.decision = Decision::Allow;
            rec.status = 303;
            let mut resp = redirect("/");
            let max_age = app.config.console.as_ref().map_or(3600, |c| c.session.as_secs());
            let cookie = session::set_cookie(session::COOKIE, &id, max_age);
            resp.headers_mut().append(header::SET_COOKIE, HeaderValue::from_str(&cookie).expect("a token is ASCII"));
            resp
        }
        Err(e) => {
            rec.reason = Some(format!("the session could not be kept: {e}"));
            rec.status = 503;
            sign_in_page(
                app,
                Some("The state store did not answer: try again.".into()),
                StatusCode::SERVICE_UNAVAILABLE,
            )
        }
    }
}

/// The audit line of a console action, as the admin API writes its own.
pub(super) fn admin_line(req: &Request<Incoming>, action: AdminAction) -> Record {
    Record {
        event: Event::Admin,
        method: Some(audit::method(req.method())),
        path: Some(req.uri().path().chars().take(200).collect()),
        action: Some(Action::Admin(action)),
        decision: Decision::Deny,
        via: Some(audit::Via::Console),
        ..Record::default()
    }
}

pub(super) async fn write_line(app: &App, rec: Record) {
    if let Err(e) = app.audit.write_confirmed(Arc::new(rec)).await {
        tracing::error!(error = %e, "could not write the audit log");
    }
}

pub(super) fn rendered(status: StatusCode, html: askama::Result<String>) -> Response<Body> {
    match html {
        Ok(html) => text(status, "text/html; charset=utf-8", html),
        Err(e) => {
            tracing::error!(error = %e, "a console page could not be rendered");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain; charset=utf-8",
                "the page could not be rendered".into(),
            )
        }
    }
}

pub(super) fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut resp = Response::new(net::full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// `303 See Other` to `to`.
pub(super) fn redirect(to: &str) -> Response<Body> {
    let mut resp = text(StatusCode::SEE_OTHER, "text/plain; charset=utf-8", String::new());
    if let Ok(v) = HeaderValue::from_str(to) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// A page that says what went wrong, with the status that says it too.
pub(super) fn problem(
    session: Option<&Session>,
    status: StatusCode,
    title: &str,
    message: &str,
    back: &'static str,
) -> Response<Body> {
    let mut frame = Frame::new(title, "", session);
    frame.error = Some(message.to_owned());
    rendered(status, pages::Problem { frame, back }.render())
}
