//! A person's sign-in from the CLI: the OAuth 2.0 device authorization grant (RFC 8628) with the
//! organisation's OpenID Connect provider, through the `openidconnect` crate over the broker's
//! own HTTPS client. The broker names the provider and the client (`GET /-/phantom/v1/issuers`);
//! the CLI prints where to sign in and the code, polls, and returns the person's ID token, which
//! the broker verifies and spends as it does a CI job's.

use http::{header, Request, Uri};
use openidconnect::core::{
    CoreAuthDisplay, CoreClaimName, CoreClaimType, CoreClient, CoreClientAuthMethod, CoreDeviceAuthorizationResponse,
    CoreGrantType, CoreJsonWebKey, CoreJweContentEncryptionAlgorithm, CoreJweKeyManagementAlgorithm, CoreResponseMode,
    CoreResponseType, CoreSubjectIdentifierType,
};
use openidconnect::{
    AdditionalProviderMetadata, AuthType, ClientId, DeviceAuthorizationUrl, IssuerUrl, ProviderMetadata, Scope,
    TokenResponse,
};
use phantom_broker::support::net::{self, HttpsClient};
use phantom_broker::support::oidc::{call, chain};
use phantom_broker::support::secret::IdToken;
use serde::{Deserialize, Serialize};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(30);
/// The longest a person is waited for, whatever the provider says.
const MAX_WAIT: Duration = Duration::from_secs(15 * 60);
const MAX_ANSWER: usize = 256 * 1024;

#[derive(Clone, Debug, Deserialize, Serialize)]
struct DeviceEndpoint {
    device_authorization_endpoint: DeviceAuthorizationUrl,
}
impl AdditionalProviderMetadata for DeviceEndpoint {}

type DeviceProviderMetadata = ProviderMetadata<
    DeviceEndpoint,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

/// An issuer people may sign in with, as the broker lists it.
#[derive(Debug, Deserialize)]
pub(crate) struct PeopleIssuer {
    pub(crate) name: String,
    pub(crate) issuer: String,
    pub(crate) client_id: String,
    pub(crate) scopes: Vec<String>,
}

/// The broker's `GET /-/phantom/v1/issuers`, and the one named `name` in it.
pub(crate) async fn people_issuer(client: &HttpsClient, base: &str, name: &str) -> Result<PeopleIssuer, String> {
    let uri: Uri = format!("{base}-/phantom/v1/issuers").parse().map_err(|_| "cannot build the issuers URL")?;
    let req =
        Request::get(uri).header(header::ACCEPT, "application/json").body(net::empty()).map_err(|e| e.to_string())?;
    let (parts, bytes) =
        net::fetch(client, req, TIMEOUT, MAX_ANSWER).await.map_err(|e| format!("asking the broker: {e}"))?;
    if !parts.status.is_success() {
        return Err(format!("the broker answered {} for its issuers", parts.status));
    }
    #[derive(Deserialize)]
    struct Listing {
        issuers: Vec<PeopleIssuer>,
    }
    let listing: Listing =
        serde_json::from_slice(&bytes).map_err(|_| "the broker's issuer list is not what it should be")?;
    let names: Vec<String> = listing.issuers.iter().map(|i| i.name.clone()).collect();
    listing.issuers.into_iter().find(|i| i.name == name).ok_or_else(|| match names.is_empty() {
        true => format!("the broker lists no issuer people may sign in with (none has `device`), not `{name}`"),
        false => format!("the broker has no issuer `{name}` for people; it has: {}", names.join(", ")),
    })
}

/// Signs a person in at `issuer` and returns their ID token. Tells them where, on stderr.
pub(crate) async fn sign_in(client: &HttpsClient, issuer: &PeopleIssuer) -> Result<IdToken, String> {
    let http = |req: openidconnect::HttpRequest| call(client, req);
    let issuer_url = IssuerUrl::new(issuer.issuer.clone()).map_err(|e| format!("issuer `{}`: {e}", issuer.name))?;
    let metadata = DeviceProviderMetadata::discover_async(issuer_url, &http)
        .await
        .map_err(|e| format!("discovering issuer `{}`: {}", issuer.name, chain(&e)))?;
    let device_url = metadata.additional_metadata().device_authorization_endpoint.clone();
    let oidc = CoreClient::from_provider_metadata(metadata, ClientId::new(issuer.client_id.clone()), None)
        .set_device_authorization_url(device_url)
        .set_auth_type(AuthType::RequestBody);
    let details: CoreDeviceAuthorizationResponse = oidc
        .exchange_device_code()
        .add_scopes(issuer.scopes.iter().map(|s| Scope::new(s.clone())))
        .request_async(&http)
        .await
        .map_err(|e| format!("starting the sign-in at `{}`: {}", issuer.name, chain(&e)))?;
    eprintln!(
        "phantom: to sign in, open {} and enter the code {}",
        details.verification_uri().as_str(),
        details.user_code().secret()
    );
    if let Some(complete) = details.verification_uri_complete() {
        eprintln!("phantom: (or open {})", complete.secret());
    }
    let wait = details.expires_in().min(MAX_WAIT);
    let token = oidc
        .exchange_device_access_token(&details)
        .map_err(|e| format!("the sign-in at `{}`: {e}", issuer.name))?
        .request_async(&http, tokio::time::sleep, Some(wait))
        .await
        .map_err(|e| format!("the sign-in at `{}` did not finish: {}", issuer.name, chain(&e)))?;
    // Only the ID token goes to the broker; the access token is the provider's business.
    let id_token = token
        .id_token()
        .ok_or_else(|| format!("issuer `{}` answered without an ID token (is `openid` allowed?)", issuer.name))?;
    Ok(IdToken::new(id_token.to_string()))
}
