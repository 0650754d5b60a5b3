//! A person's sign-in to the console: the authorization code flow with PKCE at the
//! organisation's OpenID Connect provider (`[console] issuer`, its `web` client), through the
//! `openidconnect` crate over the broker's own HTTPS client. The flow under way is bound to the
//! browser that started it by a `__Host-` cookie and kept in the state store for ten minutes;
//! the ID token the provider returns is verified as every ID token is (signature, issuer,
//! audience: the web client), its `nonce` checked, spent once, and the person's role read from
//! its claims. Nothing of it is kept but the person's claims.

use super::session::{self, PersonRecord, Session, SIGNIN_COOKIE};
use crate::app::App;
use crate::audit::identity_summary;
use crate::config::{IssuerConfig, WebClient};
use crate::identity::Audience;
use crate::state::PhantomStore;
use crate::support::clock::unix_now;
use crate::support::net;
use crate::support::oidc::{chain, Http};
use crate::support::secret::{read_secret, IdToken};
use http::HeaderMap;
use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata};
use openidconnect::{
    AuthType, AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, Scope, TokenResponse,
};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How long a person has to finish signing in at the provider.
const PENDING: u64 = 300;

/// A sign-in under way.
#[derive(Serialize, Deserialize)]
struct Pending {
    state: String,
    nonce: String,
    verifier: String,
}

/// Where the provider sends the browser back.
pub(super) const CALLBACK: &str = "/auth/callback";

/// The console's issuer and its web client.
fn web(app: &App) -> Result<(&IssuerConfig, &WebClient), String> {
    let name =
        app.config.console.as_ref().and_then(|c| c.issuer.as_deref()).ok_or("no sign-in provider is configured")?;
    let issuer = app.config.issuers.iter().find(|i| i.name == name).ok_or("the sign-in provider is not configured")?;
    Ok((issuer, issuer.web.as_ref().ok_or("the sign-in provider has no web client")?))
}

async fn client(app: &App) -> Result<(CoreClient_, Http, &WebClient), String> {
    let (issuer, web) = web(app)?;
    let tls = net::client_config(issuer.ca_file.as_deref())?;
    let http = Http(net::https_client(tls, Duration::from_secs(10)));
    let url = IssuerUrl::new(issuer.issuer.clone()).map_err(|e| format!("issuer `{}`: {e}", issuer.name))?;
    let metadata = CoreProviderMetadata::discover_async(url, &http)
        .await
        .map_err(|e| format!("discovering issuer `{}`: {}", issuer.name, chain(&e)))?;
    let secret = match &web.client_secret {
        Some(source) => Some(ClientSecret::new(read_secret(source)?.expose().to_owned())),
        None => None,
    };
    let origin = &app.config.console.as_ref().ok_or("no console")?.origin;
    let redirect = RedirectUrl::new(format!("{origin}{CALLBACK}")).map_err(|e| e.to_string())?;
    let client = CoreClient::from_provider_metadata(metadata, ClientId::new(web.client_id.clone()), secret)
        .set_redirect_uri(redirect)
        .set_auth_type(AuthType::RequestBody);
    Ok((client, http, web))
}

type CoreClient_ = openidconnect::Client<
    openidconnect::EmptyAdditionalClaims,
    openidconnect::core::CoreAuthDisplay,
    openidconnect::core::CoreGenderClaim,
    openidconnect::core::CoreJweContentEncryptionAlgorithm,
    openidconnect::core::CoreJsonWebKey,
    openidconnect::core::CoreAuthPrompt,
    openidconnect::StandardErrorResponse<openidconnect::core::CoreErrorResponseType>,
    openidconnect::core::CoreTokenResponse,
    openidconnect::core::CoreTokenIntrospectionResponse,
    openidconnect::core::CoreRevocableToken,
    openidconnect::core::CoreRevocationErrorResponse,
    openidconnect::EndpointSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointMaybeSet,
    openidconnect::EndpointMaybeSet,
>;

/// Starts a sign-in: where to send the browser, and the cookie that binds the flow to it.
pub(super) async fn start(app: &App) -> Result<(String, String), String> {
    let (client, _, web) = client(app).await?;
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, state, nonce) = client
        .authorize_url(CoreAuthenticationFlow::AuthorizationCode, CsrfToken::new_random, Nonce::new_random)
        .add_scopes(web.scopes.iter().map(|s| Scope::new(s.clone())))
        .set_pkce_challenge(challenge)
        .url();
    let pending =
        Pending { state: state.secret().clone(), nonce: nonce.secret().clone(), verifier: verifier.secret().clone() };
    let binding = session::random_token(app);
    let value = serde_json::to_string(&pending).map_err(|e| e.to_string())?;
    app.store
        .kv_put(&session::key("signin", &binding), &value, PENDING, unix_now())
        .await
        .map_err(|e| e.to_string())?;
    Ok((url.to_string(), binding))
}

/// What the callback's query carries.
pub(super) struct Callback {
    pub(super) code: Option<String>,
    pub(super) state: Option<String>,
    pub(super) error: Option<String>,
}

impl Callback {
    pub(super) fn parse(query: Option<&str>) -> Callback {
        let mut c = Callback { code: None, state: None, error: None };
        for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            let v: String = v.chars().take(2048).collect();
            match &*k {
                "code" => c.code = Some(v),
                "state" => c.state = Some(v),
                "error" => {
                    c.error = Some(v.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').take(64).collect())
                }
                _ => {}
            }
        }
        c
    }
}

/// Finishes a sign-in: the session of the person the provider vouched for, with their role.
/// Each failure says what failed, never with a token in it.
pub(super) async fn finish(app: &App, headers: &HeaderMap, cb: Callback) -> Result<Session, String> {
    let binding =
        session::cookie(headers, SIGNIN_COOKIE).ok_or("this browser did not start a sign-in (or it ended)")?;
    let now = unix_now();
    let pending = app.store.kv_take(&session::key("signin", binding), now).await.map_err(|e| e.to_string())?;
    let pending: Pending = pending
        .and_then(|p| serde_json::from_str(&p).ok())
        .ok_or("the sign-in expired or was already used: sign in again")?;
    let state = cb.state.unwrap_or_default();
    if !bool::from(subtle::ConstantTimeEq::ct_eq(state.as_bytes(), pending.state.as_bytes())) {
        return Err("the sign-in's state does not match this browser's: sign in again".into());
    }
    if let Some(e) = cb.error {
        return Err(format!("the provider refused the sign-in ({e})"));
    }
    let code = cb.code.filter(|c| !c.is_empty()).ok_or("the provider sent no authorization code")?;
    let (client, http, web) = client(app).await?;
    let token = client
        .exchange_code(AuthorizationCode::new(code))
        .map_err(|e| e.to_string())?
        .set_pkce_verifier(PkceCodeVerifier::new(pending.verifier))
        .request_async(&http)
        .await
        .map_err(|e| format!("the provider did not exchange the code: {}", chain(&e)))?;
    let id_token = token.id_token().ok_or("the provider answered without an ID token")?;
    let id_token = IdToken::new(id_token.to_string());
    let verified = app
        .issuers
        .verify(&id_token, Audience::Exactly(&web.client_id), now)
        .await
        .map_err(|e| format!("the ID token was not accepted: {e}"))?;
    let identity = verified.identity;
    let console = app.config.console.as_ref().ok_or("no console")?;
    if console.issuer.as_deref() != Some(&*identity.issuer) {
        return Err("the ID token is not from the console's provider".into());
    }
    let nonce = identity.claims.get("nonce").and_then(|n| n.as_str()).unwrap_or_default();
    if !bool::from(subtle::ConstantTimeEq::ct_eq(nonce.as_bytes(), pending.nonce.as_bytes())) {
        return Err("the ID token's nonce is not this sign-in's".into());
    }
    if !app.store.claim_id_token(verified.replay_key, verified.replay_until, now).await.map_err(|e| e.to_string())? {
        return Err("the ID token was already used".into());
    }
    let sub = identity.claim("sub").filter(|s| !s.is_empty()).ok_or("the ID token names no subject")?.to_owned();
    let role = console.role_of(&identity.claims).ok_or("your account has no role in the console")?;
    let name = ["email", "preferred_username", "name"].iter().find_map(|k| identity.claim(k)).unwrap_or(&sub);
    let who = format!("{name} ({sub})");
    let summary = identity_summary(&identity.issuer, &identity.claims).get().to_owned();
    let person = PersonRecord { issuer: identity.issuer.to_string(), claims: identity.claims };
    Ok(Session {
        who,
        role,
        person: Some(person),
        summary: Some(summary),
        csrf: String::new(),
        signed_in: 0,
        expires: 0,
        token: None,
    })
}
