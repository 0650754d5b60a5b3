//! The inventory of the real credentials: per credential its upstream, class, packages, what it
//! can publish, age, days to expiry, last use and the upstream account it authenticates as,
//! with the warnings a security team acts on. Never a token.

use crate::app::App;
use crate::config::Capability;
use crate::credentials::deadline::RotationState;
use crate::credentials::{Credential, Slot, UpstreamAuth};
use crate::npm::NpmRequest;
use crate::support::clock::{date, rfc3339, unix_now};
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long an answer of `GET /-/whoami` is trusted.
const ACCOUNT_CACHE: Duration = Duration::from_secs(600);

#[derive(Debug, Serialize)]
pub struct StatusRow {
    pub name: String,
    pub upstream: String,
    pub class: Option<String>,
    pub packages: Vec<String>,
    pub publish: &'static str,
    pub created: Option<String>,
    pub expires: Option<String>,
    pub age_days: Option<i64>,
    pub days_to_expiry: Option<i64>,
    pub last_used: Option<String>,
    /// The upstream account (`GET /-/whoami` with the credential), if the upstream said.
    pub account: Option<String>,
    pub account_error: Option<String>,
    /// Until when the value before the last rotation is kept, if it is.
    pub overlap_until: Option<String>,
    /// Its rotation deadline, when it has a class and a date to count from.
    pub rotation: Option<RotationRow>,
    pub warnings: Vec<String>,
}

/// A credential against its rotation deadline.
#[derive(Debug, Serialize)]
pub struct RotationRow {
    pub state: RotationState,
    /// The day it must be rotated by.
    pub due: String,
    /// Whole days until then (negative once overdue).
    pub days_to_due: i64,
    pub cadence_days: u64,
    /// Its last rotation (its `created` date, or a later rotation the broker saw).
    pub last_rotated: String,
    pub top: bool,
    /// Writes through it are refused while it is overdue.
    pub refuses_writes: bool,
}

/// One row per credential, sorted by name; accounts asked of the upstreams (cached).
pub async fn status(app: &App) -> Vec<StatusRow> {
    let mut rows = Vec::new();
    for slot in app.credentials.slots() {
        rows.push(row(app, slot).await);
    }
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    rows
}

async fn row(app: &App, slot: &Slot) -> StatusRow {
    let c = &slot.config;
    let now = unix_now();
    // Whole days between today's date (UTC) and the credential's dates, as a calendar counts.
    let today = (now - now % 86_400) as i64;
    // The value in use's age: since its `created` date, or a later rotation the broker saw.
    let age_days = c.created.max(slot.rotated()).map(|t| (now as i64 - t as i64).div_euclid(86_400));
    let days_to_expiry = c.expires.map(|t| (t as i64 - today).div_euclid(86_400));
    let (account, account_error) = match cached_account(app, slot, false).await {
        Ok(a) => (Some(a), None),
        Err(e) => (None, Some(e)),
    };
    let mut warnings = Vec::new();
    let rotate = format!("rotate it: phantom credentials rotate {} --from-file NEW_TOKEN_FILE", c.name);
    if let (Some(left), Some(expires)) = (days_to_expiry, c.expires) {
        let within = if c.class == Some('A') { 7 } else { 14 };
        if left <= 0 {
            warnings.push(format!("expired on {} ({} days ago): {rotate}", date(expires), -left));
        } else if left <= within {
            warnings.push(format!("expires in {left} days ({}): {rotate}", date(expires)));
        }
    }
    if c.packages.is_empty() {
        warnings.push("no package scope (`packages`): nothing says which packages the token can reach".into());
    }
    let stages_only = app.config.upstreams.iter().any(|u| u.name == c.upstream && u.stages_only);
    if c.publish == Capability::Direct && stages_only {
        warnings.push(format!(
            "can publish directly, but upstream `{}` takes only staged publishes from tokens: mint a stage-only token \
             and set publish = \"stage-only\"",
            c.upstream
        ));
    }
    if let Some(e) = &account_error {
        warnings.push(format!("the upstream did not say whose token it is: {e}"));
    }
    let rotation = rotation_row(app, slot, now, &mut warnings);
    StatusRow {
        name: c.name.clone(),
        upstream: c.upstream.clone(),
        class: c.class.map(String::from),
        packages: c.packages.iter().map(|g| g.as_str().to_owned()).collect(),
        publish: c.publish.as_str(),
        created: c.created.map(date),
        expires: c.expires.map(date),
        age_days,
        days_to_expiry,
        last_used: slot.last_used().map(|t| rfc3339(t, 0)),
        account,
        account_error,
        overlap_until: slot.overlap(now).map(|(_, until)| rfc3339(until, 0)),
        rotation,
        warnings,
    }
}

/// The credential's rotation deadline, and the warning it calls for.
fn rotation_row(app: &App, slot: &Slot, now: u64, warnings: &mut Vec<String>) -> Option<RotationRow> {
    let c = &slot.config;
    let rotate = format!("phantom credentials rotate {} --from-file NEW_TOKEN_FILE", c.name);
    let Some(d) = slot.deadline(&app.config.rotation, now) else {
        if c.class.is_none() {
            warnings.push("no `class`: it has no rotation deadline".into());
        } else {
            warnings.push("no `created` date and no rotation seen: its rotation deadline is not known".into());
        }
        return None;
    };
    let today = (now - now % 86_400) as i64;
    let days_to_due = (d.due as i64 - today).div_euclid(86_400);
    let stops = if d.refuses_writes { "; writes through it are refused until then" } else { "" };
    match d.state {
        RotationState::Ok => {}
        RotationState::Due => warnings.push(format!(
            "rotation due by {} (in {days_to_due} days, every {} days for class {}): {rotate}",
            date(d.due),
            d.cadence / 86_400,
            d.class
        )),
        RotationState::Overdue => warnings.push(format!(
            "rotation overdue since {} ({} days){stops}: {rotate}",
            date(d.due),
            d.days_overdue(now).unwrap_or(0)
        )),
    }
    Some(RotationRow {
        state: d.state,
        due: date(d.due),
        days_to_due,
        cadence_days: d.cadence / 86_400,
        last_rotated: date(d.since),
        top: c.top,
        refuses_writes: d.refuses_writes,
    })
}

/// The account the slot's current value authenticates as: cached for ten minutes, unless
/// `fresh` asks the upstream again.
pub(crate) async fn cached_account(app: &App, slot: &Slot, fresh: bool) -> Result<String, String> {
    if !fresh {
        let cached = slot.account.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some((account, _)) = cached.filter(|(_, at)| at.elapsed() < ACCOUNT_CACHE) {
            return Ok(account);
        }
    }
    let account = whoami(app, &slot.config.upstream, slot.current()).await?;
    *slot.account.lock().unwrap_or_else(|p| p.into_inner()) = Some((account.clone(), Instant::now()));
    Ok(account)
}

/// The last account the upstream named for the slot, however old.
pub(crate) fn last_known_account(slot: &Slot) -> Option<String> {
    slot.account.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|(a, _)| a.clone())
}

/// `GET /-/whoami` with `credential` (the broker's own request, on no caller's behalf).
pub(crate) async fn whoami(app: &App, upstream: &str, credential: Arc<Credential>) -> Result<String, String> {
    let upstreams = app.upstreams();
    let upstream = upstreams.named(upstream).ok_or_else(|| format!("no upstream `{upstream}`"))?;
    let auth = UpstreamAuth::for_broker(credential, &NpmRequest::whoami());
    let (status, body) = upstream.fetch_json(&auth, 64 * 1024).await.map_err(|e| e.to_string())?;
    if status != 200 {
        return Err(format!("GET /-/whoami answered {status}"));
    }
    let doc: serde_json::Value = serde_json::from_slice(&body).map_err(|_| "GET /-/whoami: not JSON".to_owned())?;
    let name = doc.get("username").and_then(|v| v.as_str()).ok_or("GET /-/whoami: no `username`")?;
    // An account name as printed: bounded, and nothing that could carry a value or a control code.
    if name.is_empty() || name.len() > 214 || name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("GET /-/whoami: the username is not a plausible account name".into());
    }
    // It is shown in the console and printed by the CLI: never the credential echoed back.
    if auth.credential().is_some_and(|c| c.scrub_pattern().find(name.as_bytes()).is_some()) {
        return Err("GET /-/whoami: the upstream echoed the credential".into());
    }
    Ok(name.to_owned())
}
