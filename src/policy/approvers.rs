//! `[approvers.NAME]` in a policy file: who may approve a write held under a grant with
//! `hold = "NAME"`, and how many distinct people must. The requester never counts, nor does
//! one person twice (the broker's held-write page enforces both).

use super::claims::{claims_match, ClaimMatcher};
use crate::support::units::parse_duration;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How long a held write waits for its approvals, unless `hold_ttl` says otherwise.
pub const DEFAULT_HOLD_TTL: Duration = Duration::from_secs(24 * 3600);
const MAX_HOLD_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// More distinct approvers than this is a typo, not a policy.
const MAX_REQUIRED: u32 = 10;

#[derive(Debug, Clone, PartialEq)]
pub struct Approvers {
    pub name: Arc<str>,
    /// The configured issuer approvers sign in with (`[issuer.NAME]`).
    pub issuer: String,
    /// Every claim must match (AND); a list-valued claim matches when it holds the value.
    pub claims: Vec<(String, ClaimMatcher)>,
    /// Distinct approvals a held write needs, the requester's never among them.
    pub required: u32,
    /// How long a held write waits for them.
    pub hold_ttl: Duration,
    pub file: PathBuf,
}

impl Approvers {
    /// Whether a person whose token `issuer` (a configured issuer's name) verified, with these
    /// claims, is one of these approvers.
    pub fn admits(&self, issuer: &str, claims: &serde_json::Map<String, serde_json::Value>) -> bool {
        issuer == self.issuer && claims_match(&self.claims, claims).is_ok()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ApproversFile {
    issuer: String,
    #[serde(default)]
    claims: BTreeMap<String, ClaimMatcher>,
    required: Option<u32>,
    hold_ttl: Option<String>,
}

pub(super) fn validate(name: String, raw: ApproversFile, path: &Path, issuers: &[&str]) -> Result<Approvers, String> {
    let err = |m: String| format!("approvers `{name}`: {m}");
    if name.is_empty() || name.len() > 128 || name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(err("the name must be 1-128 characters without spaces".into()));
    }
    if !issuers.contains(&raw.issuer.as_str()) {
        let configured = issuers.join(", ");
        return Err(err(format!("`issuer`: `{}` is not a configured issuer (configured: {configured})", raw.issuer)));
    }
    if raw.claims.is_empty() {
        return Err(err("`claims` may not be empty: every person the issuer signs in could approve".into()));
    }
    let required = raw.required.unwrap_or(1);
    if required == 0 || required > MAX_REQUIRED {
        return Err(err(format!("`required` must be between 1 and {MAX_REQUIRED}")));
    }
    let hold_ttl = match &raw.hold_ttl {
        Some(t) => parse_duration(t).map_err(|e| err(format!("`hold_ttl`: {e}")))?,
        None => DEFAULT_HOLD_TTL,
    };
    if hold_ttl.is_zero() || hold_ttl > MAX_HOLD_TTL {
        return Err(err("`hold_ttl` must be more than zero and at most 30d".into()));
    }
    Ok(Approvers {
        name: name.into(),
        issuer: raw.issuer,
        claims: raw.claims.into_iter().collect(),
        required,
        hold_ttl,
        file: path.to_owned(),
    })
}
