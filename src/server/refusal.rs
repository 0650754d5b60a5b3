//! Every way a request can be refused: one status code and one fixed client message per kind.
//! Details go to the audit log (`detail`), never to the response.

use crate::identity::IdentityError;
use crate::net::{self, Body};
use crate::npm::{BodyError, RouteError};
use crate::phantom::{FormatError, StoreError};
use crate::policy::Denial;
use crate::upstream::UpstreamError;
use http::{header, Response, StatusCode};

#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    Route(#[from] RouteError),
    #[error("{0}")]
    Body(#[from] BodyError),
    #[error("{0} is never forwarded through the broker")]
    Forbidden(&'static str),
    #[error("this request needs a phantom token")]
    NeedsPhantom,
    #[error("{0}")]
    BadRequest(&'static str),
    #[error("the credential is not a phantom token")]
    NotAPhantom,
    #[error("{0}")]
    BadPhantom(FormatError),
    #[error("the phantom token is {0}")]
    PhantomNotLive(&'static str),
    #[error("policy denied: {0}")]
    Denied(Denial),
    #[error("the phantom token has no uses left")]
    UsesExhausted,
    #[error("writes to this package are frozen by an administrator")]
    Frozen,
    #[error("{0}")]
    Identity(#[from] IdentityError),
    #[error("the ID token has already been exchanged")]
    Replay,
    #[error("no grant matches: {0}")]
    NoGrant(Denial),
    #[error("the body is larger than the limit")]
    TooLarge,
    #[error("the body's content type or encoding is not accepted here")]
    UnsupportedMedia,
    #[error("no upstream serves this package")]
    NoUpstream,
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Upstream(#[from] UpstreamError),
    #[error("the upstream registry failed the write with status {0}")]
    UpstreamFailed(u16),
    #[error("the audit log cannot be written")]
    AuditUnavailable,
    #[error("the request body could not be read: {0}")]
    ClientBody(String),
    #[error("the client sent its body too slowly")]
    ClientTimeout,
    #[error("too many large request bodies are in flight")]
    Busy,
    #[error("internal error: {0}")]
    Internal(String),
}

impl Refusal {
    pub fn status(&self) -> StatusCode {
        let code = match self {
            Refusal::Route(e) => e.status(),
            Refusal::Body(e) => e.status(),
            Refusal::Forbidden(_)
            | Refusal::Denied(_)
            | Refusal::NoGrant(_)
            | Refusal::UsesExhausted
            | Refusal::Frozen => 403,
            Refusal::NeedsPhantom | Refusal::NotAPhantom | Refusal::BadPhantom(_) | Refusal::PhantomNotLive(_) => 401,
            Refusal::Identity(e) => e.status(),
            Refusal::Replay => 401,
            Refusal::BadRequest(_) | Refusal::ClientBody(_) => 400,
            Refusal::TooLarge => 413,
            Refusal::ClientTimeout => 408,
            Refusal::Busy => 503,
            Refusal::UnsupportedMedia => 415,
            Refusal::NoUpstream => 404,
            Refusal::Store(_) => 503,
            Refusal::Upstream(e) => e.status(),
            Refusal::UpstreamFailed(_) => 502,
            Refusal::AuditUnavailable => 503,
            Refusal::Internal(_) => 500,
        };
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// What the caller is told: fixed text that never echoes a token or a policy detail.
    pub fn client_message(&self) -> String {
        match self {
            Refusal::NeedsPhantom => {
                "this registry accepts writes only with a phantom token: exchange a CI OIDC ID token \
                 with `phantom login` or POST /-/phantom/v1/exchange (npm >= 11.5.1 does this itself on publish)"
                    .into()
            }
            Refusal::NotAPhantom => {
                "this registry accepts only phantom tokens (phm_...); other credentials are never forwarded".into()
            }
            Refusal::Denied(_) => "the phantom token does not allow this action on this package".into(),
            Refusal::NoGrant(_) => "no grant in the broker's policy allows this identity to do that".into(),
            Refusal::Identity(IdentityError::KeysUnavailable(_)) => {
                "the issuer's signing keys are unavailable; try again later".into()
            }
            Refusal::Store(_) => "the broker's state store is unavailable".into(),
            Refusal::Upstream(UpstreamError::Timeout) => "the upstream registry did not answer in time".into(),
            Refusal::Upstream(_) => "the upstream registry could not be reached or answered badly".into(),
            Refusal::ClientBody(_) => "the request body could not be read".into(),
            Refusal::AuditUnavailable => {
                "the broker's audit log cannot be written: writes are refused until it can".into()
            }
            Refusal::Internal(_) => "internal error".into(),
            other => other.to_string(),
        }
    }

    /// The detail for the audit log.
    pub fn detail(&self) -> String {
        self.to_string()
    }

    pub fn response(&self) -> Response<Body> {
        let msg = self.client_message();
        // npm prints `error`; the contract names `message`: send both.
        let body = serde_json::json!({ "error": msg, "message": msg }).to_string();
        Response::builder()
            .status(self.status())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CACHE_CONTROL, "no-store")
            .body(net::full(body))
            .expect("a static response is valid")
    }
}
