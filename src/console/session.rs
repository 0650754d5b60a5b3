//! Who is signed in to the console: a session kept in the state store under the SHA-256 of a
//! random id, which the browser holds in a `__Host-` cookie (Secure, HttpOnly, SameSite=Strict,
//! Path=/). Every form carries the session's CSRF token, and every post must come from the
//! console's own origin. The session keeps who signed in and their role, never a token.

use crate::app::App;
use crate::config::Role;
use crate::support::clock::unix_now;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::{header, HeaderMap};
use ring::rand::SecureRandom;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

/// The session cookie.
pub(super) const COOKIE: &str = "__Host-phantom-console";
/// The cookie that binds a sign-in under way to the browser that started it.
pub(super) const SIGNIN_COOKIE: &str = "__Host-phantom-signin";

/// A signed-in session, as kept in the state store.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Session {
    /// Who, as the pages show them: a person's name or email and subject, or "admin token".
    pub(super) who: String,
    pub(super) role: Role,
    /// A person's issuer name, claims (the verified ID token's) and approval key; none for the
    /// admin token.
    pub(super) person: Option<PersonRecord>,
    /// The identity summary audit lines carry for this person.
    pub(super) summary: Option<String>,
    pub(super) csrf: String,
    /// Unix seconds: when the session began, and when it ends.
    #[serde(default)]
    pub(super) signed_in: u64,
    pub(super) expires: u64,
    /// For the admin token's session: the token's fingerprint. The session ends with the token
    /// it was begun with.
    #[serde(default)]
    pub(super) token: Option<String>,
}

/// How recent a person's sign-in must be for an approval: the claims it was checked against are
/// that recent (the CLI spends a fresh ID token on every decision).
pub(super) const FRESH_FOR_APPROVAL: u64 = 15 * 60;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct PersonRecord {
    pub(super) issuer: String,
    pub(super) claims: serde_json::Map<String, serde_json::Value>,
}

impl Session {
    pub(super) fn may(&self, role: Role) -> bool {
        self.role >= role
    }

    /// Whether the person signed in recently enough to approve.
    pub(super) fn fresh(&self, now: u64) -> bool {
        now.saturating_sub(self.signed_in) <= FRESH_FOR_APPROVAL
    }

    /// Whether `given` is this session's CSRF token.
    pub(super) fn csrf_ok(&self, given: &str) -> bool {
        !given.is_empty() && bool::from(given.as_bytes().ct_eq(self.csrf.as_bytes()))
    }
}

/// 32 random bytes, base64url.
pub(super) fn random_token(app: &App) -> String {
    let mut b = [0u8; 32];
    app.rng.fill(&mut b).expect("the system random source works");
    URL_SAFE_NO_PAD.encode(b)
}

/// The store key of a cookie's value: its hash, so that the store never holds what the browser
/// presents.
pub(super) fn key(kind: &str, value: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, value.as_bytes());
    format!("console:{kind}:{}", crate::support::hex(digest.as_ref()))
}

/// The value of cookie `name` in the request, when it is there exactly once.
pub(super) fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    let mut found = None;
    for value in headers.get_all(header::COOKIE) {
        for pair in value.to_str().ok()?.split(';') {
            if let Some((k, v)) = pair.trim().split_once('=') {
                if k == name {
                    if found.is_some() {
                        return None;
                    }
                    found = Some(v);
                }
            }
        }
    }
    found.filter(|v| !v.is_empty() && v.len() <= 128)
}

/// `Set-Cookie` for a `__Host-` cookie that lasts `max_age` seconds (0: removed). The session
/// cookie is SameSite=Strict; the sign-in binding must come back on the provider's redirect, a
/// top-level navigation from another site, so it is Lax (sent on that GET, never on a post).
pub(super) fn set_cookie(name: &str, value: &str, max_age: u64) -> String {
    let same_site = if name == SIGNIN_COOKIE { "Lax" } else { "Strict" };
    format!("{name}={value}; Path=/; Secure; HttpOnly; SameSite={same_site}; Max-Age={max_age}")
}

/// The session the request's cookie names, if it is live: not expired, begun with the admin
/// token the broker has now (for the admin token's), and begun after any revocation of its
/// person's subject or of everything.
pub(super) async fn current(app: &App, headers: &HeaderMap) -> Option<Session> {
    let id = cookie(headers, COOKIE)?;
    let now = unix_now();
    let stored = app.store.kv_get(&key("session", id), now).await.ok()??;
    let session: Session = serde_json::from_str(&stored).ok()?;
    let token_ok = session.token.as_ref().is_none_or(|fp| Some(fp) == admin_token_fingerprint(app).as_ref());
    if session.expires <= now || !token_ok {
        return None;
    }
    let subject = session.person.as_ref().and_then(|p| p.claims.get("sub")).and_then(|s| s.as_str());
    for marker in std::iter::once(key("revoked", "*")).chain(subject.map(|s| key("revoked-sub", s))) {
        // A store that cannot answer ends the session too: the console never fails open.
        let revoked = app.store.kv_get(&marker, now).await.ok()?;
        if revoked.and_then(|at| at.parse::<u64>().ok()).is_some_and(|at| at >= session.signed_in) {
            return None;
        }
    }
    Some(session)
}

/// Ends the console sessions a revocation names: a subject's (`phantom revoke --subject`),
/// across every issuer as the phantoms' revocation is, or everyone's (`--all`). It leaves a
/// marker in the state store that outlives the longest session: a session begun before it is
/// over, on every replica. Revoking one phantom or a repository's phantoms ends no session;
/// without a `[console]` there is none to end.
pub(crate) async fn revoke_sessions(
    app: &App,
    which: &crate::state::Selector,
) -> Result<bool, crate::state::StoreError> {
    use crate::state::Selector;
    let Some(console) = app.config.console.as_ref() else { return Ok(false) };
    let marker = match which {
        Selector::Subject(sub) => key("revoked-sub", sub),
        Selector::All => key("revoked", "*"),
        Selector::Id(_) | Selector::Repository(_) | Selector::Grants(_) => return Ok(false),
    };
    let longest = console.session.as_secs() + 60;
    let now = unix_now();
    app.store.kv_put(&marker, &now.to_string(), longest, now).await?;
    Ok(true)
}

/// The admin token's fingerprint (SHA-256, hex), which an admin-token session carries.
pub(super) fn admin_token_fingerprint(app: &App) -> Option<String> {
    let token = app.admin_token.as_ref()?;
    Some(crate::support::hex(ring::digest::digest(&ring::digest::SHA256, token.expose().as_bytes()).as_ref()))
}

/// Starts a session; returns the cookie's value.
pub(super) async fn start(app: &App, mut session: Session) -> Result<String, crate::state::StoreError> {
    let console = app.config.console.as_ref().map_or(3600, |c| c.session.as_secs());
    let now = unix_now();
    session.signed_in = now;
    session.expires = now + console;
    session.csrf = random_token(app);
    let id = random_token(app);
    let value = serde_json::to_string(&session).unwrap_or_default();
    app.store.kv_put(&key("session", &id), &value, console, now).await?;
    Ok(id)
}

/// Ends the session whose cookie is `id`.
pub(super) async fn end(app: &App, id: &str) {
    let _ = app.store.kv_delete(&key("session", id)).await;
}

/// Whether a state-changing request comes from the console's own pages: its `Origin` (or, when
/// a browser sends none, its `Referer`) is the console's origin, and a browser that says where
/// the request came from (`Sec-Fetch-Site`) says from the same origin.
pub(super) fn same_origin(headers: &HeaderMap, origin: &str) -> bool {
    let one = |name| {
        let mut all = headers.get_all(name).iter();
        let first = all.next().and_then(|v| v.to_str().ok());
        if all.next().is_some() {
            return Err(());
        }
        Ok(first)
    };
    let (Ok(from), Ok(referer), Ok(site)) =
        (one(header::ORIGIN), one(header::REFERER), one(http::HeaderName::from_static("sec-fetch-site")))
    else {
        return false;
    };
    if site.is_some_and(|s| s != "same-origin") {
        return false;
    }
    match (from, referer) {
        (Some(o), _) => o == origin,
        (None, Some(r)) => r.strip_prefix(origin).is_some_and(|rest| rest.starts_with('/')),
        (None, None) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn roles_rank_approvals_need_a_fresh_sign_in_and_csrf_tokens_compare_whole() {
        let s = Session {
            who: "bob".into(),
            role: Role::Approver,
            person: None,
            summary: None,
            csrf: "token-1".into(),
            signed_in: 1_000,
            expires: 9_000,
            token: None,
        };
        assert!(s.may(Role::Viewer) && s.may(Role::Approver) && !s.may(Role::Admin));
        assert!(s.fresh(1_000 + FRESH_FOR_APPROVAL) && !s.fresh(1_001 + FRESH_FOR_APPROVAL));
        assert!(s.csrf_ok("token-1") && !s.csrf_ok("") && !s.csrf_ok("token-") && !s.csrf_ok("token-12"));
    }

    #[test]
    fn cookies_and_origins() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("a=1; __Host-phantom-console=abc; b=2"));
        assert_eq!(cookie(&h, COOKIE), Some("abc"));
        h.append(header::COOKIE, HeaderValue::from_static("__Host-phantom-console=other"));
        assert_eq!(cookie(&h, COOKIE), None, "two session cookies: neither");

        let origin = "https://127.0.0.1:9090";
        let mut h = HeaderMap::new();
        assert!(!same_origin(&h, origin), "no Origin, no Referer");
        h.insert(header::ORIGIN, HeaderValue::from_static("https://127.0.0.1:9090"));
        assert!(same_origin(&h, origin));
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(!same_origin(&h, origin));
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, HeaderValue::from_static("https://evil.example"));
        assert!(!same_origin(&h, origin));
        let mut h = HeaderMap::new();
        h.insert(header::REFERER, HeaderValue::from_static("https://127.0.0.1:9090/holds"));
        assert!(same_origin(&h, origin));
        h.insert(header::REFERER, HeaderValue::from_static("https://127.0.0.1:90901/holds"));
        assert!(!same_origin(&h, origin));
        assert!(set_cookie(COOKIE, "v", 60).contains("Secure; HttpOnly; SameSite=Strict"));
        assert!(set_cookie(SIGNIN_COOKIE, "v", 60).contains("Secure; HttpOnly; SameSite=Lax"));
    }
}
