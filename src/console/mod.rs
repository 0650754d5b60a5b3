//! The admin console: server-rendered pages on the admin listener, at `/`, for people who sign
//! in with the organisation's provider (`signin.rs`) or with the admin token. Pages show held
//! writes, staged versions, live phantoms, freezes, credentials and their rotation deadlines,
//! recent refusals (with what each grant says of them) and the policy with its lint results
//! (`pages.rs`); forms approve and reject held writes, revoke phantoms, freeze and thaw
//! (`actions.rs`), each as the signed-in person's role allows.
//!
//! No JavaScript. Every answer carries a strict Content-Security-Policy (nothing but the
//! console's own stylesheet, forms only to itself, never in a frame) and `no-store`; every form
//! carries the session's CSRF token and must come from the console's own origin; the session
//! cookie is `__Host-`, Secure, HttpOnly and SameSite=Strict (`session.rs`).

mod actions;
mod limits;
mod pages;
mod respond;
mod session;
pub(crate) use self::session::revoke_sessions;
mod signin;

use crate::app::App;
use crate::audit::AdminAction;
use crate::support::net::Body;
use askama::Template;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use pages::Frame;
use respond::{admin_line, problem, redirect, rendered, sign_in_page, signed_in, text, write_line};
use std::sync::Arc;

const CSS: &str = include_str!("../../templates/console/console.css");
const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; \
                   base-uri 'none'";

/// Whether the console serves `path` (with a console configured).
pub(crate) fn serves(app: &App, path: &str) -> bool {
    app.config.console.is_some()
        && !path.starts_with("/admin/v1/")
        && !matches!(path, "/healthz" | "/readyz" | "/metrics")
}

/// One console request.
pub(crate) async fn handle(app: Arc<App>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let mut resp = match (req.method().clone(), path.as_str()) {
        (Method::GET, "/console.css") => text(StatusCode::OK, "text/css; charset=utf-8", CSS.into()),
        (Method::GET, "/sign-in") => sign_in_page(&app, None, StatusCode::OK),
        (Method::GET, "/sign-in/oidc") => start_sign_in(&app).await,
        (Method::GET, signin::CALLBACK) => finish_sign_in(&app, &req).await,
        (Method::POST, _) => actions::post(&app, req).await,
        (Method::GET, _) => page(&app, &req, &path).await,
        _ => problem(None, StatusCode::METHOD_NOT_ALLOWED, "Not allowed", "The console takes GET and POST only.", "/"),
    };
    let h = resp.headers_mut();
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    h.insert("cross-origin-opener-policy", HeaderValue::from_static("same-origin"));
    resp
}

/// A page for a signed-in session, or the sign-in page.
async fn page(app: &App, req: &Request<Incoming>, path: &str) -> Response<Body> {
    let Some(s) = session::current(app, req.headers()).await else {
        return if path == "/" { sign_in_page(app, None, StatusCode::OK) } else { redirect("/sign-in") };
    };
    let query = req.uri().query().map(str::to_owned);
    let frame = |title: &'static str, page: &'static str| {
        let mut f = Frame::new(title, page, Some(&s));
        f.notice = actions::notice(query.as_deref());
        f
    };
    let html = match path {
        "/" => pages::overview(app, frame("Overview", "/")).await.render(),
        "/holds" => pages::holds(app, frame("Held writes", "/holds"), &s).await.render(),
        "/staged" => pages::staged(app, frame("Staged versions", "/staged")).await.render(),
        "/phantoms" => pages::phantoms(app, frame("Live phantoms", "/phantoms")).await.render(),
        "/freezes" => {
            pages::Freezes { frame: frame("Freezes", "/freezes"), patterns: app.store.frozen_patterns() }.render()
        }
        "/credentials" => pages::credentials(app, frame("Credentials", "/credentials")).await.render(),
        "/refusals" => pages::refusals(app, frame("Recent refusals", "/refusals")).render(),
        "/policy" => pages::policy(app, frame("Policy", "/policy")).render(),
        p if p.starts_with("/refusals/") => {
            let id = &p["/refusals/".len()..];
            if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                return problem(Some(&s), StatusCode::NOT_FOUND, "Not found", "No such request id.", "/refusals");
            }
            pages::explain(app, frame("Why it was refused", "/refusals"), id).render()
        }
        _ => return problem(Some(&s), StatusCode::NOT_FOUND, "Not found", "There is no such page.", "/"),
    };
    rendered(StatusCode::OK, html)
}

async fn start_sign_in(app: &App) -> Response<Body> {
    if !limits::allow(app, "sign-in", 60).await {
        let why = "Too many sign-ins are under way: try again in a minute.".to_owned();
        return sign_in_page(app, Some(why), StatusCode::TOO_MANY_REQUESTS);
    }
    match signin::start(app).await {
        Ok((url, binding)) => {
            let mut resp = redirect(&url);
            let cookie = session::set_cookie(session::SIGNIN_COOKIE, &binding, 600);
            resp.headers_mut().append(header::SET_COOKIE, HeaderValue::from_str(&cookie).expect("a token is ASCII"));
            resp
        }
        Err(e) => {
            // The details (the provider's URL, a file) are for the log, not for whoever asked.
            tracing::error!(error = %e, "a console sign-in could not start");
            let why = "The sign-in could not start: the provider did not answer as expected (see the broker's log).";
            sign_in_page(app, Some(why.into()), StatusCode::BAD_GATEWAY)
        }
    }
}

async fn finish_sign_in(app: &App, req: &Request<Incoming>) -> Response<Body> {
    let callback = signin::Callback::parse(req.uri().query());
    let mut rec = admin_line(req, AdminAction::ConsoleSignIn);
    let outcome = signin::finish(app, req.headers(), callback).await;
    // A new sign-in ends the session this browser had.
    if let (Ok(_), Some(old)) = (&outcome, session::cookie(req.headers(), session::COOKIE)) {
        session::end(app, old).await;
    }
    let mut resp = match outcome {
        Ok(s) => {
            rec.identity = s
                .summary
                .as_deref()
                .and_then(|j| serde_json::value::RawValue::from_string(j.to_owned()).ok())
                .map(Arc::from);
            rec.reason = Some(format!("signed in as {}", s.role.as_str()));
            onward(signed_in(app, s, &mut rec).await)
        }
        Err(why) => {
            rec.reason = Some(why.clone());
            rec.status = 403;
            sign_in_page(app, Some(format!("You are not signed in: {why}")), StatusCode::FORBIDDEN)
        }
    };
    // The sign-in under way is over, whatever its outcome.
    let gone = session::set_cookie(session::SIGNIN_COOKIE, "", 0);
    resp.headers_mut().append(header::SET_COOKIE, HeaderValue::from_str(&gone).expect("ASCII"));
    write_line(app, rec).await;
    resp
}

/// After the provider's redirect (a navigation another site started), a page that moves on to
/// the overview by itself: a redirect would still count as that navigation, and the browser
/// would not send the new SameSite=Strict session cookie with it.
fn onward(resp: Response<Body>) -> Response<Body> {
    if resp.status() != StatusCode::SEE_OTHER {
        return resp;
    }
    let html = "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" \
                content=\"0;url=/\"><title>Signed in · phantom-broker</title><link rel=\"stylesheet\" \
                href=\"/console.css\"></head><body><main><p class=\"notice\">Signed in. <a href=\"/\">Continue \
                to the console</a>.</p></main></body></html>";
    let mut page = text(StatusCode::OK, "text/html; charset=utf-8", html.into());
    for cookie in resp.headers().get_all(header::SET_COOKIE) {
        page.headers_mut().append(header::SET_COOKIE, cookie.clone());
    }
    page
}
