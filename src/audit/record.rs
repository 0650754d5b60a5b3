//! One audit line, before it is chained: what it is about, what was decided, and the fields a
//! security team reads.

use crate::npm::{ActionKind, RouteAction};
use serde::{Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::sync::Arc;

/// Declares a label: an enum, each variant's text, and the list of them all, derived from the
/// enum (the metrics make a series for each value; no list is kept by hand).
macro_rules! label {
    ($(#[$doc:meta])* $vis:vis enum $name:ident { $($(#[$vdoc:meta])* $variant:ident => $text:literal,)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name {
            $($(#[$vdoc])* $variant,)*
        }

        impl $name {
            $vis const ALL: &'static [$name] = &[$($name::$variant,)*];

            $vis fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
    };
}

label! {
    /// Which face a request came in on, when not the registry face.
    pub enum Via {
        /// Through the forward proxy (`HTTPS_PROXY`).
        Proxy => "proxy",
        /// Through the admin console, in a browser.
        Console => "console",
    }
}

label! {
    /// What an operator did (the admin API, a reload, a rotation).
    pub enum AdminAction {
        List => "list",
        Revoke => "revoke",
        Freeze => "freeze",
        Thaw => "thaw",
        Metrics => "metrics",
        Reload => "reload",
        PolicyReload => "policy-reload",
        CredentialStatus => "credential-status",
        CredentialRotate => "credential-rotate",
        CredentialReload => "credential-reload",
        CredentialFollow => "credential-follow",
        Holds => "holds",
        HoldReject => "hold-reject",
        ConsoleSignIn => "console-sign-in",
        ConsoleSignOut => "console-sign-out",
        ConsoleRefused => "console-refused",
    }
}

label! {
    /// Why the broker refused a request: the `reason` label of `phantom_refusals_total`.
    pub enum RefusalKind {
        Route => "route",
        Body => "body",
        Forbidden => "forbidden",
        NeedsPhantom => "needs_phantom",
        BadRequest => "bad_request",
        NotAPhantom => "not_a_phantom",
        BadPhantom => "bad_phantom",
        PhantomNotLive => "phantom_not_live",
        Denied => "denied",
        UsesExhausted => "uses_exhausted",
        WritesInFlight => "writes_in_flight",
        Frozen => "frozen",
        RotationOverdue => "rotation_overdue",
        RateLimited => "rate_limited",
        StageRequired => "stage_required",
        NoStagedVersion => "no_staged_version",
        AlreadyStaged => "already_staged",
        Identity => "identity",
        Replay => "replay",
        NoGrant => "no_grant",
        TooLarge => "too_large",
        UnsupportedMedia => "unsupported_media",
        NoUpstream => "no_upstream",
        StateUnavailable => "state_unavailable",
        Upstream => "upstream",
        UpstreamFailed => "upstream_failed",
        UpstreamAnsweredEarly => "upstream_answered_early",
        AuditUnavailable => "audit_unavailable",
        ClientBody => "client_body",
        ClientTimeout => "client_timeout",
        Busy => "busy",
        Login => "login",
        Misdirected => "misdirected",
        NotThroughProxy => "not_through_proxy",
        Hold => "hold",
        Internal => "internal",
    }
}

/// A line's `action`: what a request does (as its route, then its body, said), or what an
/// operator did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Npm(RouteAction),
    Admin(AdminAction),
}

impl Action {
    /// The one npm action `kind`.
    pub fn npm(kind: ActionKind) -> Action {
        Action::Npm(RouteAction::One(kind))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Npm(a) => a.as_str(),
            Action::Admin(a) => a.as_str(),
        }
    }
}

impl Serialize for Action {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Identity claims worth recording (never the token; `jti` is recorded keyed-hashed), with the
/// issuer's configured name under `issuer`: in byte order, as the summary lists them.
const SUMMARY_KEYS: &[&str] = &[
    "actor",
    "ci_config_ref_uri",
    "email",
    "environment",
    "event_name",
    "iss",
    "issuer",
    "job_id",
    "job_workflow_ref",
    "namespace_path",
    "pipeline_id",
    "project_id",
    "project_path",
    "ref",
    "repository",
    "repository_id",
    "repository_owner",
    "repository_owner_id",
    "run_attempt",
    "run_id",
    "runner_environment",
    "sha",
    "sub",
    "user_login",
    "workflow_ref",
];

/// What a line is about.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Event {
    /// A registry request (forwarded or refused).
    #[default]
    Request,
    /// An ID token exchanged for a phantom (or refused).
    Exchange,
    /// An admin API call.
    Admin,
    /// A notification of a staged version, delivered or given up.
    Notify,
    /// A step of a held write after it was held: an approval, a rejection, the forward, the
    /// expiry (`hold.step`).
    Hold,
}

/// What the broker decided.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// Refused by the broker, for the caller's reasons.
    #[default]
    Deny,
    /// Forwarded with a credential (or, for exchanges and admin calls, done).
    Allow,
    /// Forwarded without any credential.
    Anonymous,
    /// Written ahead of a write the broker is about to release: the write is on record before
    /// the upstream can act on it. The request's own line follows.
    Forwarding,
    /// Failed for reasons not the caller's (upstream, state store, audit log, internal).
    Error,
    /// Checked in full and held, its exact bytes kept, until approvers approve it.
    Held,
}

label! {
    /// What happened to a held write.
    pub enum HoldStep {
        Held => "held",
        /// A person's approval (`decision` says whether it counted).
        Approve => "approve",
        /// A person's or an operator's rejection.
        Reject => "reject",
        /// The approvals were enough: forwarded, with the upstream's answer.
        Forwarded => "forwarded",
        /// The forward got no answer: held again, approvals kept.
        Retry => "retry",
        Expired => "expired",
    }
}

/// A held write's line: which hold, what happened, and who approved it so far.
#[derive(Debug, Clone, Serialize)]
pub struct HoldLine {
    pub id: String,
    pub step: HoldStep,
    pub approvals: u32,
    pub required: u32,
    /// The approvers so far, each `{"identity": {...}, "at": "..."}` (on the forward's line).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub approved_by: Vec<Value>,
    /// Who asked for the write (on lines whose `identity` is an approver's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requester: Option<Arc<RawValue>>,
}

/// How a write's request to the upstream ended, when any of it was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamRequest {
    /// The broker released the whole request: the upstream could act on it.
    Complete,
    /// Part of the body went upstream, then the broker cut the request off: the upstream never
    /// had the whole request (nor the body's closing byte).
    Aborted,
}

/// One audit line, before it is chained.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Record {
    pub event: Event,
    pub request_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<std::borrow::Cow<'static, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Serialized once per identity (at the exchange) and shared by every line about it.
    pub identity: Option<Arc<RawValue>>,
    /// The npm action, as far as it is known: before a body decides between two
    /// (`publish|deprecate`, `unpublish|owner`), both.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub package: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dist_tags: Vec<String>,
    /// The version went upstream as a staged publish: it is live only once a maintainer
    /// approves it there.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub staged: bool,
    /// The upstream's id of the staged version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage_id: Option<String>,
    /// The staged version's status, as the registry reported it (`validating`, `staged`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage_status: Option<String>,
    /// The upstream did not have the package: the publish would create it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub new_package: bool,
    pub decision: Decision,
    /// `"proxy"` for a request that came through the forward proxy (absent on the registry face).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<Via>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant: Option<Arc<str>>,
    /// For admin actions on a real credential (status, rotation, reload): its name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_id: Option<Arc<str>>,
    /// The phantoms an admin action revoked: their ids (keyed hashes), never the tokens.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub revoked: Vec<Arc<str>>,
    /// The package patterns an admin action froze.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub frozen: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_token_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<Arc<str>>,
    /// For writes: whether the request reached the upstream whole, or was cut off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_request: Option<UpstreamRequest>,
    /// For writes: the body bytes the broker handed to the upstream connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_status: Option<u16>,
    /// A held write: its id and step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold: Option<Box<HoldLine>>,
    /// A notification's event (`staged`, `held`, `rotation-due`, `rotation-overdue`,
    /// `burst-freeze`, `incident`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notice: Option<&'static str>,
    pub status: u16,
    pub latency_ms: f64,
}

/// A request method as recorded: the standard ones without an allocation.
pub fn method(m: &http::Method) -> std::borrow::Cow<'static, str> {
    use http::Method;
    let name = match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => return std::borrow::Cow::Owned(m.as_str().to_owned()),
    };
    std::borrow::Cow::Borrowed(name)
}

/// Projects a verified identity's claims onto what the audit log keeps: the issuer's name and
/// the scalar claims of `SUMMARY_KEYS`, as one JSON object (written once per exchange and
/// shared by every line about the phantom).
pub fn identity_summary(issuer: &str, claims: &Map<String, Value>) -> Arc<RawValue> {
    struct Summary<'a>(&'a str, &'a Map<String, Value>);
    impl Serialize for Summary<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeMap;
            let mut map = s.serialize_map(None)?;
            for &key in SUMMARY_KEYS {
                if key == "issuer" {
                    map.serialize_entry(key, self.0)?;
                } else if let Some(v @ (Value::String(_) | Value::Number(_) | Value::Bool(_))) = self.1.get(key) {
                    map.serialize_entry(key, v)?;
                }
            }
            map.end()
        }
    }
    // Serialising strings and scalars cannot fail; `{}` is a fallback that is never taken.
    let raw = serde_json::value::to_raw_value(&Summary(issuer, claims));
    Arc::from(raw.unwrap_or_else(|_| RawValue::from_string("{}".into()).expect("valid JSON")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_written_as_their_text() {
        let rec = Record {
            action: Some(Action::Npm(RouteAction::Either(ActionKind::Publish, ActionKind::Deprecate))),
            via: Some(Via::Proxy),
            ..Record::default()
        };
        let line = serde_json::to_string(&rec).unwrap();
        assert!(line.contains(r#""action":"publish|deprecate""#) && line.contains(r#""via":"proxy""#), "{line}");
        let admin = serde_json::to_string(&Action::Admin(AdminAction::CredentialRotate)).unwrap();
        assert_eq!(admin, r#""credential-rotate""#);
        let mut reasons: Vec<&str> = RefusalKind::ALL.iter().map(|k| k.as_str()).collect();
        reasons.sort_unstable();
        reasons.dedup();
        assert_eq!(reasons.len(), RefusalKind::ALL.len(), "two refusal kinds share a label");
        let routes: Vec<&str> = RouteAction::ALL.iter().map(|a| a.as_str()).collect();
        assert!(routes.contains(&"unpublish|owner") && routes.contains(&"stage-publish"), "{routes:?}");
    }

    #[test]
    fn identity_summary_keeps_the_listed_scalar_claims_in_key_order() {
        let mut sorted = SUMMARY_KEYS.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted, SUMMARY_KEYS, "SUMMARY_KEYS must be in byte order, without repeats");
        let claims: Map<String, Value> = serde_json::from_str(
            r#"{"sub":"repo:o/r:ref:refs/heads/main","repository_id":"123","run_attempt":2,"aud":"npm:x",
                "jti":"secret-ish","exp":1,"iss":"https://issuer.test","actor":"a\"b","event_name":null,
                "environment":["prod"],"ref":{"x":1},"sha":true,"unlisted":"x","issuer":"forged"}"#,
        )
        .unwrap();
        let got = identity_summary("ci", &claims);
        assert_eq!(
            got.get(),
            r#"{"actor":"a\"b","iss":"https://issuer.test","issuer":"ci","repository_id":"123","run_attempt":2,"sha":true,"sub":"repo:o/r:ref:refs/heads/main"}"#
        );
        // The same as building the object and serialising it (which sorts its keys).
        let mut reference = Map::new();
        reference.insert("issuer".into(), Value::String("ci".into()));
        for key in SUMMARY_KEYS.iter().filter(|k| **k != "issuer") {
            if let Some(v @ (Value::String(_) | Value::Number(_) | Value::Bool(_))) = claims.get(*key) {
                reference.insert((*key).to_owned(), v.clone());
            }
        }
        assert_eq!(got.get(), serde_json::to_string(&reference).unwrap());
        assert_eq!(identity_summary("ci", &Map::new()).get(), r#"{"issuer":"ci"}"#);
    }
}
