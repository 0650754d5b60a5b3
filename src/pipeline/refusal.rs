//! Every way a request can be refused: one status code and one fixed client message per kind.
//! Details go to the audit log (`detail`), never to the response: `client_message` names every
//! variant, so a new one cannot echo its text to the caller by default.

use crate::audit::{Decision, RefusalKind};
use crate::identity::IdentityError;
use crate::npm::{BodyError, RouteError};
use crate::phantom::FormatError;
use crate::policy::Denial;
use crate::state::StoreError;
use crate::support::net::{self, Body};
use crate::upstream::UpstreamError;
use http::{header, HeaderValue, Response, StatusCode};
use std::borrow::Cow;

#[derive(Debug, thiserror::Error)]
pub(crate) enum Refusal {
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
    #[error("the phantom token already has as many writes open as it could still make")]
    WritesInFlight,
    #[error("writes to this package are frozen by an administrator")]
    Frozen,
    #[error("credential `{credential}` is overdue for rotation since {due}: writes through it are refused")]
    RotationOverdue { credential: String, due: String },
    #[error("past the grant's rate for this package (again in {retry_after:?}){}", if *.frozen { "; the package is now frozen" } else { "" })]
    RateLimited { retry_after: std::time::Duration, frozen: bool },
    #[error("the upstream registry accepts only staged publishes with this grant's credential (E_STAGE_REQUIRED)")]
    StageRequired,
    #[error("no such staged version")]
    NoStagedVersion,
    #[error("the registry has this version staged already (409)")]
    AlreadyStaged,
    #[error("{0}")]
    Identity(#[from] IdentityError),
    #[error("the ID token has already been exchanged")]
    Replay,
    #[error("no grant matches: {0}")]
    NoGrant(Denial),
    #[error("the body is larger than the limit")]
    TooLarge,
    #[error("the body's content type or encoding is not accepted here: {0}")]
    UnsupportedMedia(&'static str),
    #[error("no upstream serves this package")]
    NoUpstream,
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Upstream(#[from] UpstreamError),
    #[error("the upstream registry failed the write with status {0}")]
    UpstreamFailed(u16),
    #[error("the upstream registry answered {0} to a write before the broker released it")]
    UpstreamAnsweredEarly(u16),
    #[error("the audit log cannot be written")]
    AuditUnavailable,
    #[error("the request body could not be read: {0}")]
    ClientBody(String),
    #[error("the client sent its body too slowly")]
    ClientTimeout,
    #[error("the memory for write bodies (server.max_buffered_bytes) is in use")]
    Busy,
    #[error("login and user accounts are never forwarded through the broker")]
    Login,
    #[error("the request's Host does not name the host the proxy tunnel was opened to")]
    Misdirected,
    #[error("token exchanges are not offered through the proxy")]
    NotThroughProxy,
    #[error("held write: {0}")]
    Hold(HoldRefusal),
    #[error("internal error: {0}")]
    Internal(String),
}

/// Why a held write's step (keeping it, approving, rejecting) was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HoldRefusal {
    #[error("the held writes already fill server.max_held_bytes")]
    Full,
    #[error("no such held write")]
    Unknown,
    #[error("this person is not one of the hold's approvers")]
    NotApprover,
    #[error("the requester of a held write may not approve it")]
    Requester,
    #[error("this person has approved it already")]
    Twice,
    #[error("the held write is {}", .0.as_str())]
    Closed(crate::state::holds::HoldState),
    #[error("the held write expired")]
    Expired,
    #[error("the hold's [approvers] section is no longer in the policy, or its grant no longer holds for it")]
    ApproversGone,
    #[error("the approvers now require {0} approvals")]
    NeedsMore(u32),
}

impl HoldRefusal {
    /// Fixed texts, and a hold's state by name.
    fn client_message(self) -> Cow<'static, str> {
        match self {
            HoldRefusal::Full => Cow::Borrowed(
                "the broker holds as many writes for approval as server.max_held_bytes allows; try again once some \
                 are approved or rejected",
            ),
            HoldRefusal::ApproversGone => Cow::Borrowed(
                "the approvers this write was held for are no longer in the broker's policy: reject it and write again",
            ),
            h => Cow::Owned(h.to_string()),
        }
    }
}

/// What `npm login` and `npm adduser` are told: there is nothing to log in to.
const LOGIN_HELP: &str = "this registry has no accounts to log in to: get a short-lived token for this job with \
    `phantom login --broker <this registry's URL> --packages ... --actions ...`, which writes it into .npmrc \
    (npm >= 11.5.1 publishing from CI with an OIDC ID token needs no login at all)";

impl From<net::ReadError> for Refusal {
    fn from(e: net::ReadError) -> Refusal {
        match e {
            net::ReadError::TooLarge(_) => Refusal::TooLarge,
            net::ReadError::Timeout => Refusal::ClientTimeout,
            net::ReadError::Failed(why) => Refusal::ClientBody(why),
        }
    }
}

impl Refusal {
    /// The refusal's kind, as the audit log's metrics count it (`phantom_refusals_total{reason}`).
    pub(crate) fn kind(&self) -> RefusalKind {
        match self {
            Refusal::Route(_) => RefusalKind::Route,
            Refusal::Body(_) => RefusalKind::Body,
            Refusal::Forbidden(_) => RefusalKind::Forbidden,
            Refusal::NeedsPhantom => RefusalKind::NeedsPhantom,
            Refusal::BadRequest(_) => RefusalKind::BadRequest,
            Refusal::NotAPhantom => RefusalKind::NotAPhantom,
            Refusal::BadPhantom(_) => RefusalKind::BadPhantom,
            Refusal::PhantomNotLive(_) => RefusalKind::PhantomNotLive,
            Refusal::Denied(_) => RefusalKind::Denied,
            Refusal::UsesExhausted => RefusalKind::UsesExhausted,
            Refusal::WritesInFlight => RefusalKind::WritesInFlight,
            Refusal::Frozen => RefusalKind::Frozen,
            Refusal::RotationOverdue { .. } => RefusalKind::RotationOverdue,
            Refusal::RateLimited { .. } => RefusalKind::RateLimited,
            Refusal::StageRequired => RefusalKind::StageRequired,
            Refusal::NoStagedVersion => RefusalKind::NoStagedVersion,
            Refusal::AlreadyStaged => RefusalKind::AlreadyStaged,
            Refusal::Identity(_) => RefusalKind::Identity,
            Refusal::Replay => RefusalKind::Replay,
            Refusal::NoGrant(_) => RefusalKind::NoGrant,
            Refusal::TooLarge => RefusalKind::TooLarge,
            Refusal::UnsupportedMedia(_) => RefusalKind::UnsupportedMedia,
            Refusal::NoUpstream => RefusalKind::NoUpstream,
            Refusal::Store(_) => RefusalKind::StateUnavailable,
            Refusal::Upstream(_) => RefusalKind::Upstream,
            Refusal::UpstreamFailed(_) => RefusalKind::UpstreamFailed,
            Refusal::UpstreamAnsweredEarly(_) => RefusalKind::UpstreamAnsweredEarly,
            Refusal::AuditUnavailable => RefusalKind::AuditUnavailable,
            Refusal::ClientBody(_) => RefusalKind::ClientBody,
            Refusal::ClientTimeout => RefusalKind::ClientTimeout,
            Refusal::Busy => RefusalKind::Busy,
            Refusal::Login => RefusalKind::Login,
            Refusal::Misdirected => RefusalKind::Misdirected,
            Refusal::NotThroughProxy => RefusalKind::NotThroughProxy,
            Refusal::Hold(_) => RefusalKind::Hold,
            Refusal::Internal(_) => RefusalKind::Internal,
        }
    }

    pub(crate) fn status(&self) -> StatusCode {
        let code = match self {
            Refusal::Route(e) => e.status(),
            Refusal::Body(e) => e.status(),
            Refusal::Forbidden(_)
            | Refusal::Denied(_)
            | Refusal::NoGrant(_)
            | Refusal::UsesExhausted
            | Refusal::Frozen
            | Refusal::RotationOverdue { .. }
            | Refusal::StageRequired => 403,
            Refusal::RateLimited { .. } => 429,
            Refusal::NoStagedVersion => 404,
            Refusal::AlreadyStaged => 409,
            Refusal::NeedsPhantom | Refusal::NotAPhantom | Refusal::BadPhantom(_) | Refusal::PhantomNotLive(_) => 401,
            Refusal::Identity(e) => e.status(),
            Refusal::Replay => 401,
            Refusal::BadRequest(_) | Refusal::ClientBody(_) => 400,
            Refusal::TooLarge => 413,
            Refusal::WritesInFlight => 429,
            Refusal::ClientTimeout => 408,
            Refusal::Busy => 503,
            Refusal::UnsupportedMedia(_) => 415,
            Refusal::NoUpstream => 404,
            Refusal::Store(_) => 503,
            Refusal::Upstream(e) => e.status(),
            Refusal::UpstreamFailed(_) | Refusal::UpstreamAnsweredEarly(_) => 502,
            Refusal::AuditUnavailable => 503,
            Refusal::Misdirected => 421,
            Refusal::Login => 403,
            Refusal::NotThroughProxy => 403,
            Refusal::Hold(h) => match h {
                HoldRefusal::Full => 503,
                HoldRefusal::Unknown => 404,
                HoldRefusal::NotApprover | HoldRefusal::Requester => 403,
                HoldRefusal::Twice
                | HoldRefusal::Closed(_)
                | HoldRefusal::ApproversGone
                | HoldRefusal::NeedsMore(_) => 409,
                HoldRefusal::Expired => 410,
            },
            Refusal::Internal(_) => 500,
        };
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// How the audit log classifies it: the caller's doing, or a failure of the broker's side.
    pub(crate) fn decision(&self) -> Decision {
        match self {
            Refusal::Upstream(_)
            | Refusal::UpstreamFailed(_)
            | Refusal::UpstreamAnsweredEarly(_)
            | Refusal::Store(_)
            | Refusal::Internal(_)
            | Refusal::AuditUnavailable => Decision::Error,
            _ => Decision::Deny,
        }
    }

    /// What the caller is told: fixed text that never echoes a token, a header's value or a
    /// policy detail. Every variant is named here.
    pub(crate) fn client_message(&self) -> Cow<'static, str> {
        let fixed = match self {
            // Route and body errors carry fixed texts (and, for names, which rule failed).
            Refusal::Route(e) => return e.to_string().into(),
            Refusal::Body(e) => return e.to_string().into(),
            Refusal::Forbidden(_) => return self.to_string().into(),
            Refusal::BadRequest(what) => what,
            Refusal::BadPhantom(e) => return e.to_string().into(),
            Refusal::PhantomNotLive(_) => return self.to_string().into(),
            Refusal::NeedsPhantom => {
                "this registry accepts writes only with a phantom token: exchange a CI OIDC ID token \
                 with `phantom login` or POST /-/phantom/v1/exchange (npm >= 11.5.1 does this itself on publish)"
            }
            Refusal::NotAPhantom => {
                "this registry accepts only phantom tokens (phm_...); other credentials are never forwarded"
            }
            // Its own grant's rule, and the version as parsed: nothing about other grants.
            Refusal::Denied(crate::policy::Denial::VersionNotAllowed(_, why)) => {
                return format!("the phantom token's grant does not allow publishing this version: {why}").into()
            }
            Refusal::Denied(crate::policy::Denial::CreateNotAllowed(_)) => {
                "the upstream registry does not have this package, and the phantom token's grant may not create \
                 packages (an administrator sets `create = true` on the grant, or creates the package first)"
            }
            Refusal::Denied(_) => "the phantom token does not allow this action on this package",
            Refusal::UsesExhausted => "the phantom token has no uses left",
            Refusal::WritesInFlight => {
                "the phantom token already has as many writes open as it could still make; wait for them to end"
            }
            Refusal::Frozen => "writes to this package are frozen by an administrator",
            // The date is the broker's own; the credential's name stays in the audit line.
            Refusal::RotationOverdue { due, .. } => return overdue_message(due).into(),
            Refusal::RateLimited { frozen: false, .. } => {
                "this package has had as many writes under the phantom's grant as the grant's rate allows; try again \
                 later"
            }
            Refusal::RateLimited { frozen: true, .. } => {
                "this package has had as many writes under the phantom's grant as the grant's rate allows, and it is \
                 now frozen until an administrator thaws it"
            }
            Refusal::StageRequired => {
                "the upstream registry accepts only staged publishes with this credential: an administrator sets \
                 `publish = \"stage\"` on the broker's grant, and a maintainer then approves each version with \
                 `npm stage approve <id>`"
            }
            Refusal::NoStagedVersion => "no such staged version",
            Refusal::AlreadyStaged => {
                "this version is already staged upstream, waiting for a maintainer: a maintainer approves it \
                 (`npm stage approve <id>`) or rejects it (`npm stage reject <id>`; `npm stage list <package>` shows \
                 the id), or publish a new version"
            }
            Refusal::Identity(IdentityError::KeysUnavailable(_)) => {
                "the issuer's signing keys are unavailable; try again later"
            }
            // Identity errors other than the keys' carry fixed texts.
            Refusal::Identity(e) => return e.to_string().into(),
            Refusal::Replay => "the ID token has already been exchanged",
            Refusal::NoGrant(_) => "no grant in the broker's policy allows this identity to do that",
            Refusal::TooLarge => "the body is larger than the limit",
            Refusal::UnsupportedMedia(_) => {
                "writes must be sent as `Content-Type: application/json` (optionally `; charset=utf-8`), \
                 without a content-encoding"
            }
            Refusal::NoUpstream => "no upstream serves this package",
            Refusal::Store(_) => "the broker's state store is unavailable",
            Refusal::Upstream(UpstreamError::Timeout) => "the upstream registry did not answer in time",
            Refusal::Upstream(_) => "the upstream registry could not be reached or answered badly",
            Refusal::UpstreamFailed(_) => "the upstream registry failed the write",
            Refusal::UpstreamAnsweredEarly(_) => "the upstream registry answered the write before it was complete",
            Refusal::AuditUnavailable => "the broker's audit log cannot be written: writes are refused until it can",
            Refusal::ClientBody(_) => "the request body could not be read",
            Refusal::ClientTimeout => "the client sent its body too slowly",
            Refusal::Busy => "the broker holds as many write bodies as its memory budget allows; try again shortly",
            Refusal::Login => LOGIN_HELP,
            Refusal::Misdirected => "the Host header must name the host the proxy tunnel was opened to",
            Refusal::NotThroughProxy => {
                "phantoms are not exchanged through the proxy: run `phantom login --proxy` against the broker's \
                 registry URL, which writes the phantom for this registry host into .npmrc"
            }
            Refusal::Hold(h) => return h.client_message(),
            Refusal::Internal(_) => "internal error",
        };
        Cow::Borrowed(fixed)
    }

    /// The detail for the audit log.
    pub(crate) fn detail(&self) -> String {
        self.to_string()
    }

    pub(crate) fn response(&self) -> Response<Body> {
        let msg = self.client_message();
        // npm prints `error`; the contract names `message`: send both.
        let body = serde_json::json!({ "error": msg, "message": msg }).to_string();
        let mut resp = net::json_reply(self.status(), body);
        let headers = resp.headers_mut();
        match self {
            Refusal::Busy => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            // npm prints an `npm-notice` header as a notice line, even on a failed login.
            Refusal::Login => {
                let notice = HeaderValue::from_str(&format!("phantom: {LOGIN_HELP}"));
                headers.insert("npm-notice", notice.expect("the login help is one line of text"));
            }
            Refusal::RateLimited { retry_after, .. } => {
                let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
            }
            _ => {}
        }
        resp
    }
}

fn overdue_message(due: &str) -> String {
    format!(
        "the real credential behind this grant was due for rotation on {due} and is overdue: writes through it are \
         refused until an administrator rotates it (`phantom credentials rotate`)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages_never_carry_details() {
        let secret = "SECRET_DETAIL_4f1e";
        for r in [
            Refusal::ClientBody(secret.into()),
            Refusal::Internal(secret.into()),
            Refusal::Identity(IdentityError::KeysUnavailable(secret.into())),
            Refusal::Upstream(UpstreamError::Failed(secret.into())),
            Refusal::Store(StoreError::Unavailable(secret.into())),
        ] {
            assert!(!r.client_message().contains(secret), "{r:?}");
            assert!(r.detail().contains(secret), "{r:?}");
        }
        assert_eq!(Refusal::Busy.response().headers()[header::RETRY_AFTER], "1");
        assert_eq!(Refusal::UnsupportedMedia("charset utf-7").status(), 415);
    }
}
