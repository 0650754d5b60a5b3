//! `[console]`: the admin console in the browser, on the admin listener. People sign in with the
//! organisation's OpenID Connect provider (`[issuer.NAME] web = { client_id, client_secret }`,
//! the authorization code flow with PKCE) and get the role their claims match; the admin token
//! signs in as `admin`.
//!
//! ```toml
//! [console]
//! issuer = "corp"                      # an [issuer.NAME] with a `web` client
//! url = "https://broker-admin.example.com:9090/"   # where people reach it (default: the admin listener)
//! session = "8h"
//! [console.roles]
//! admin = { groups = "security" }
//! approver = { groups = "release-managers" }
//! viewer = { groups = "engineering" }
//! ```

use crate::policy::ClaimMatcher;
use crate::support::secret::SecretSource;
use crate::support::units::parse_duration;
use http::Uri;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConsole {
    url: Option<String>,
    issuer: Option<String>,
    session: Option<String>,
    #[serde(default)]
    roles: BTreeMap<String, BTreeMap<String, ClaimMatcher>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWeb {
    client_id: String,
    client_secret: Option<SecretSource>,
    scopes: Option<Vec<String>>,
}

/// What a person may do in the console: each role may do what the ones before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Sees every page.
    Viewer,
    /// Approves and rejects the held writes their approvers' group may decide.
    Approver,
    /// Revokes phantoms, freezes and thaws, rejects any held write.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Approver => "approver",
            Role::Admin => "admin",
        }
    }
}

/// The client the console signs people in as.
#[derive(Debug, Clone)]
pub struct WebClient {
    pub client_id: String,
    /// A confidential client's secret (`client_secret_post`); without one, PKCE alone.
    pub client_secret: Option<SecretSource>,
    /// Scopes besides `openid`: the ones whose claims the roles match on.
    pub scopes: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct ConsoleConfig {
    /// `https://host[:port]`: the console's origin, for its redirect URI and the `Origin` every
    /// form post must carry.
    pub origin: String,
    /// The `[issuer.NAME]` people sign in with (it has a `web` client).
    pub issuer: Option<String>,
    /// The roles, highest first, each with the claims that give it.
    pub roles: Vec<(Role, Vec<(String, ClaimMatcher)>)>,
    pub session: Duration,
}

impl ConsoleConfig {
    /// The highest role whose claims `claims` match.
    pub fn role_of(&self, claims: &serde_json::Map<String, serde_json::Value>) -> Option<Role> {
        self.roles.iter().find(|(_, rules)| crate::policy::claims_match(rules, claims).is_ok()).map(|(r, _)| *r)
    }
}

pub(super) fn web_client(
    issuer: &str,
    raw: Option<RawWeb>,
    b: impl Fn(SecretSource) -> SecretSource,
) -> Result<Option<WebClient>, String> {
    let Some(raw) = raw else { return Ok(None) };
    let token = |s: &str| !s.is_empty() && s.len() <= 128 && s.bytes().all(|c| c.is_ascii_graphic() && c != b'"');
    if !token(&raw.client_id) {
        return Err(format!("`issuer.{issuer}.web.client_id` must be a client id without spaces or quotes"));
    }
    let scopes: Vec<String> = raw
        .scopes
        .unwrap_or_else(|| vec!["email".into(), "profile".into()])
        .into_iter()
        .filter(|s| s != "openid")
        .collect();
    if scopes.len() > 16 || !scopes.iter().all(|s| token(s)) {
        return Err(format!("`issuer.{issuer}.web.scopes`: at most 16 scope names, without spaces or quotes"));
    }
    Ok(Some(WebClient { client_id: raw.client_id, client_secret: raw.client_secret.map(b), scopes }))
}

pub(super) fn console(
    raw: Option<RawConsole>,
    admin: Option<SocketAddr>,
    web_issuers: &[&str],
) -> Result<Option<ConsoleConfig>, String> {
    let Some(raw) = raw else { return Ok(None) };
    let admin = admin.ok_or("`[console]` is served on the admin listener: it needs an `[admin]` section")?;
    let origin = match &raw.url {
        None => format!("https://{admin}"),
        Some(url) => {
            let uri: Uri = url.parse().map_err(|_| format!("`console.url`: `{url}` is not a URL"))?;
            let authority = uri.authority().filter(|_| uri.scheme_str() == Some("https"));
            let authority = authority.ok_or_else(|| format!("`console.url`: `{url}` must be an https:// URL"))?;
            if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
                return Err(format!("`console.url`: `{url}` must be an origin (the console is served at `/`)"));
            }
            format!("https://{authority}")
        }
    };
    if let Some(name) = &raw.issuer {
        if !web_issuers.contains(&name.as_str()) {
            return Err(format!("`console.issuer`: `{name}` is not an [issuer.NAME] with a `web` client"));
        }
    }
    let mut roles = Vec::new();
    for (name, rules) in raw.roles {
        let role = match name.as_str() {
            "admin" => Role::Admin,
            "approver" => Role::Approver,
            "viewer" => Role::Viewer,
            other => return Err(format!("`console.roles.{other}`: roles are admin, approver and viewer")),
        };
        if rules.is_empty() {
            return Err(format!("`console.roles.{name}` may not be empty: everyone the issuer signs in would have it"));
        }
        roles.push((role, rules.into_iter().collect()));
    }
    if !roles.is_empty() && raw.issuer.is_none() {
        return Err("`console.roles` need `console.issuer`, the provider people sign in with".into());
    }
    roles.sort_by_key(|r| std::cmp::Reverse(r.0));
    let session = match &raw.session {
        Some(t) => parse_duration(t).map_err(|e| format!("`console.session`: {e}"))?,
        None => Duration::from_secs(8 * 3600),
    };
    if session < Duration::from_secs(10) || session > Duration::from_secs(24 * 3600) {
        return Err("`console.session` must be between 10s and 24h".into());
    }
    Ok(Some(ConsoleConfig { origin, issuer: raw.issuer, roles, session }))
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, Role};

    const BASE: &str = r#"
[server]
public_url = "https://npm-broker.example.com/"
tls_cert = "s.pem"
tls_key = "k.pem"
[upstream.public]
url = "https://registry.example.com/"
scopes = ["*"]
[audit]
path = "a.jsonl"
[issuer.corp]
issuer = "https://idp.example.com"
algorithms = ["RS256"]
web = { client_id = "phantom-console", client_secret = { env = "S" } }
"#;

    fn parse(extra: &str) -> Result<Config, String> {
        Config::parse(std::path::Path::new("p.toml"), &format!("{BASE}{extra}")).map_err(|e| e.message)
    }

    #[test]
    fn roles_come_from_claims_and_the_console_needs_the_admin_listener() {
        let admin = "[admin]\nlisten = \"127.0.0.1:9443\"\ntoken = { env = \"T\" }\n";
        let c = parse(&format!(
            "{admin}[console]\nissuer = \"corp\"\n[console.roles]\nviewer = {{ groups = \"eng\" }}\n\
             admin = {{ groups = \"security\" }}\napprover = {{ groups = [\"rm\", \"leads\"] }}\n"
        ))
        .unwrap();
        let console = c.console.unwrap();
        assert_eq!(console.origin, "https://127.0.0.1:9443");
        let claims = |groups: serde_json::Value| serde_json::json!({ "groups": groups }).as_object().unwrap().clone();
        assert_eq!(console.role_of(&claims(serde_json::json!(["eng", "leads"]))), Some(Role::Approver), "the highest");
        assert_eq!(console.role_of(&claims(serde_json::json!(["security"]))), Some(Role::Admin));
        assert_eq!(console.role_of(&claims(serde_json::json!(["eng"]))), Some(Role::Viewer));
        assert_eq!(console.role_of(&claims(serde_json::json!(["sales"]))), None, "no role, no entry");
        let web = c.issuers[0].web.as_ref().unwrap();
        assert_eq!(
            (web.client_id.as_str(), web.scopes.as_slice()),
            ("phantom-console", &["email".to_owned(), "profile".to_owned()][..])
        );
        let url = parse(&format!("{admin}[console]\nurl = \"https://console.example.com/\"\n")).unwrap();
        assert_eq!(url.console.unwrap().origin, "https://console.example.com");
        for (bad, says) in [
            ("[console]\n".to_owned(), "needs an `[admin]` section"),
            (format!("{admin}[console]\nissuer = \"nope\"\n"), "with a `web` client"),
            (format!("{admin}[console]\n[console.roles]\nviewer = {{ groups = \"x\" }}\n"), "need `console.issuer`"),
            (
                format!("{admin}[console]\nissuer = \"corp\"\n[console.roles]\nroot = {{ groups = \"x\" }}\n"),
                "roles are",
            ),
            (format!("{admin}[console]\nissuer = \"corp\"\n[console.roles]\nviewer = {{}}\n"), "may not be empty"),
            (format!("{admin}[console]\nurl = \"http://console.example.com/\"\n"), "https://"),
            (format!("{admin}[console]\nurl = \"https://console.example.com/app\"\n"), "an origin"),
            (format!("{admin}[console]\nsession = \"5s\"\n"), "between 10s and 24h"),
        ] {
            let e = parse(&bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
