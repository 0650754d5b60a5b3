//! Held writes, as an operator sees them: the list, a rejection (an operator may reject a held
//! write, never approve one: an approval is a person's), and the expiry of the ones past their
//! `hold_ttl`, each on record.

use crate::app::App;
use crate::audit::{Decision, Event, HoldStep, Record};
use crate::state::holds::{party_key, Approval, HeldWrite, HoldState, Reject};
use crate::state::{Selector, StoreError};
use crate::support::clock::unix_now;
use serde_json::value::RawValue;
use serde_json::Value;
use std::sync::Arc;

/// Every hold kept (held, forwarding, and finished ones for a week), newest first.
pub async fn list(app: &App) -> Result<Vec<Value>, StoreError> {
    Ok(app.store.hold_list(unix_now()).await?.iter().map(|h| h.to_json()).collect())
}

/// How an operator's rejection went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    Rejected,
    /// No such hold.
    Unknown,
    /// It is no longer waiting: forwarded, forwarding, rejected or expired.
    NotHeld(&'static str),
}

/// Rejects a held write for the admin API: its bytes are dropped. `rec` is the admin call's line.
pub async fn reject(app: &App, id: &str, rec: &mut Record) -> Result<Rejected, StoreError> {
    let now = unix_now();
    let Some(held) = app.store.hold_status(id, now).await? else { return Ok(Rejected::Unknown) };
    held.write.describe(rec);
    rec.hold = Some(Box::new(held.write.line(HoldStep::Reject, held.approvals.len() as u32)));
    let by = Approval {
        who: party_key("admin", "admin-token"),
        summary: RawValue::from_string(r#"{"issuer":"admin"}"#.into()).expect("fixed JSON"),
        at: now,
    };
    Ok(match app.store.hold_reject(id, by, now).await? {
        Reject::Rejected => Rejected::Rejected,
        Reject::Unknown => Rejected::Unknown,
        Reject::Closed(state) => Rejected::NotHeld(state.as_str()),
    })
}

/// Rejects every write still held that a revocation reaches: made with a phantom it revoked
/// (`revoked`, their ids), or by an identity or grant it names, so that a revoked caller's held
/// writes cannot be approved into the registry. One audit line each; returns their ids.
pub async fn reject_revoked(app: &App, which: &Selector, revoked: &[Arc<str>]) -> Result<Vec<String>, StoreError> {
    let now = unix_now();
    let mut rejected = Vec::new();
    for held in app.store.hold_list(now).await? {
        let w = &held.write;
        if held.state != HoldState::Held || !(revoked.iter().any(|id| **id == *w.token_id) || picks(which, w)) {
            continue;
        }
        let mut rec = Record {
            event: Event::Hold,
            request_id: w.request_id.clone(),
            identity: Some(w.requester_summary.clone().into()),
            decision: Decision::Allow,
            reason: Some("rejected: the phantom or identity that asked for it was revoked".into()),
            ..Record::default()
        };
        if reject(app, &w.id, &mut rec).await? == Rejected::Rejected {
            app.audit.write_queued(Arc::new(rec));
            rejected.push(w.id.clone());
        }
    }
    Ok(rejected)
}

/// Whether a revocation's selector names the identity or grant of a held write.
fn picks(which: &Selector, w: &HeldWrite) -> bool {
    let claim = |k: &str| w.claims.get(k).and_then(Value::as_str);
    match which {
        Selector::Id(id) => w.token_id == *id,
        Selector::Subject(s) => claim("sub") == Some(s.as_str()),
        Selector::Repository(r) => claim("repository") == Some(r.as_str()) || claim("project_path") == Some(r.as_str()),
        Selector::Grants(names) => names.contains(&w.grant),
        Selector::All => true,
    }
}

/// Expires the held writes past their time, one audit line each.
pub async fn expire(app: &App) {
    let expired = match app.store.hold_sweep(unix_now()).await {
        Ok(expired) => expired,
        Err(e) => {
            tracing::warn!(error = %e, "could not expire held writes: tried again at the next sweep");
            return;
        }
    };
    for w in expired {
        let mut rec = Record {
            event: Event::Hold,
            request_id: w.request_id.clone(),
            identity: Some(w.requester_summary.clone().into()),
            decision: Decision::Deny,
            reason: Some(format!("not approved within its hold_ttl by `{}`: its bytes are dropped", w.approvers)),
            ..Record::default()
        };
        w.describe(&mut rec);
        rec.hold = Some(Box::new(w.line(HoldStep::Expired, 0)));
        app.audit.write_queued(Arc::new(rec));
    }
}
