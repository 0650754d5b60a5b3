//! Held writes: a write checked in full and kept, its exact bytes included, until the people a
//! grant's `hold` names approve it (then it is forwarded, once) or reject it, or it expires.
//!
//! Every step that decides is one atomic step in the store (a Lua script on Redis, a lock here):
//! two approvals racing on two replicas count twice only if they are two people, and exactly
//! one of them starts the forward. A forward that dies with its replica is taken up again by the
//! next approval after a lease (`FORWARD_LEASE`), so nothing approved is lost.

use super::store::StoreError;
use crate::audit::{Action, HoldLine, HoldStep, Record};
use crate::npm::ActionKind;
use crate::support::clock::rfc3339;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// How long a forward may take before another approval may start it again. The release itself
/// is cut off well within it (`RELEASE_LIMIT`), and a forward that ends after its lease was taken
/// over changes nothing (its lease token no longer matches).
pub(crate) const FORWARD_LEASE: u64 = 900;
/// The longest a release may take, checks and the upstream's answer included.
pub(crate) const RELEASE_LIMIT: std::time::Duration = std::time::Duration::from_secs(FORWARD_LEASE - 120);
/// How long a finished hold stays listed (and its record readable).
pub(crate) const RETAIN: u64 = 7 * 24 * 3600;
/// Holds kept at once, at most (finished ones included).
pub(crate) const MAX_HOLDS: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum HoldState {
    /// Waiting for approvals.
    Held,
    /// Approved; one replica is forwarding it.
    Forwarding,
    /// Forwarded; the upstream answered (`upstream_status`).
    Forwarded,
    Rejected,
    Expired,
}

impl HoldState {
    pub(crate) const ALL: [HoldState; 5] =
        [HoldState::Held, HoldState::Forwarding, HoldState::Forwarded, HoldState::Rejected, HoldState::Expired];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            HoldState::Held => "held",
            HoldState::Forwarding => "forwarding",
            HoldState::Forwarded => "forwarded",
            HoldState::Rejected => "rejected",
            HoldState::Expired => "expired",
        }
    }

    fn parse(s: &str) -> Option<HoldState> {
        HoldState::ALL.into_iter().find(|h| h.as_str() == s)
    }
}

/// What was held: everything needed to check it again and release it, and to show it. Nothing
/// in it is a secret (no token, no phantom: the requester's claims and the phantom's id).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct HeldWrite {
    pub(crate) id: String,
    pub(crate) created: u64,
    pub(crate) expires: u64,
    /// The `[approvers.NAME]` that must approve, and how many of them (at the time it was held).
    pub(crate) approvers: String,
    pub(crate) required: u32,
    /// Who asked: the configured issuer's name and the token's claims (re-authorized at release).
    pub(crate) issuer: String,
    pub(crate) claims: Map<String, Value>,
    /// The requester as approvals are keyed: never counted as an approver.
    pub(crate) requester: String,
    pub(crate) requester_summary: Box<RawValue>,
    pub(crate) grant: String,
    pub(crate) scope_packages: Vec<String>,
    pub(crate) scope_actions: Vec<String>,
    /// The phantom's id (a keyed hash) and the request's.
    pub(crate) token_id: String,
    /// The SHA-256 of the phantom (what the store keys it by; never the token): a release
    /// checks that it was not revoked since.
    pub(crate) phantom: [u8; 32],
    pub(crate) request_id: String,
    pub(crate) upstream: String,
    /// The request as the caller sent it: classified again at release.
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) action: String,
    pub(crate) package: String,
    pub(crate) version: Option<String>,
    pub(crate) tags: Vec<String>,
    pub(crate) creates: bool,
    pub(crate) bytes: u64,
}

impl HeldWrite {
    /// A line about this held write carries what it is: its package, action, version, tags,
    /// grant, phantom and upstream.
    pub(crate) fn describe(&self, rec: &mut Record) {
        rec.package = Some(self.package.clone());
        rec.action = ActionKind::parse(&self.action).map(Action::npm);
        rec.version = self.version.clone();
        rec.dist_tags = self.tags.clone();
        rec.grant = Some(self.grant.as_str().into());
        rec.token_id = Some(self.token_id.as_str().into());
        rec.upstream = Some(self.upstream.as_str().into());
    }

    /// Its `hold` field on an audit line.
    pub(crate) fn line(&self, step: HoldStep, approvals: u32) -> HoldLine {
        HoldLine {
            id: self.id.clone(),
            step,
            approvals,
            required: self.required,
            approved_by: Vec::new(),
            requester: None,
        }
    }
}

/// One person's approval (or rejection).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Approval {
    /// The issuer's name and `sub`, as `party_key` makes it.
    pub(crate) who: String,
    pub(crate) summary: Box<RawValue>,
    pub(crate) at: u64,
}

/// The key a person is counted under: one per issuer and subject.
pub(crate) fn party_key(issuer: &str, sub: &str) -> String {
    serde_json::json!([issuer, sub]).to_string()
}

/// A hold as listed and as its steps see it (never its bytes).
#[derive(Debug, Clone)]
pub(crate) struct HoldStatus {
    pub(crate) write: Arc<HeldWrite>,
    pub(crate) state: HoldState,
    pub(crate) approvals: Vec<Approval>,
    pub(crate) rejected: Option<Approval>,
    pub(crate) upstream_status: Option<u16>,
    pub(crate) finished: Option<u64>,
}

impl HoldStatus {
    /// A hold as a person or an admin sees it listed.
    pub(crate) fn to_json(&self) -> Value {
        let w = &self.write;
        let requester: Value = serde_json::from_str(w.requester_summary.get()).unwrap_or_default();
        serde_json::json!({
            "id": w.id, "state": self.state.as_str(), "package": w.package, "action": w.action,
            "version": w.version, "dist_tags": w.tags, "requester": requester, "grant": w.grant,
            "approvers": w.approvers, "approvals": self.approvals.len(), "required": w.required,
            "created": rfc3339(w.created, 0), "expires": rfc3339(w.expires, 0),
            "upstream_status": self.upstream_status,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Approve {
    /// Counted; this many approvals so far, not yet enough.
    Counted(u32),
    /// Enough: this caller forwards it now, and ends with `hold_finish`.
    Ready(u32),
    /// This person had approved it already.
    Twice(u32),
    /// The requester may not approve their own write.
    Requester,
    Closed(HoldState),
    /// It was past its time: it expired now (the caller audits its end).
    Expired,
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reject {
    Rejected,
    Closed(HoldState),
    Unknown,
}

/// How a forward ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Finish {
    /// The upstream answered with this status: the hold is done, whatever it said.
    Answered(u16),
    /// No answer (the upstream unreachable, the write refused before it went): held again, its
    /// approvals kept; the next approval forwards it.
    Retry,
}

/// Whether one more held write of `bytes` fits: `Ok(false)` past `max_held_bytes` or
/// `MAX_HOLDS`.
pub(crate) type Put = Result<bool, StoreError>;

/// The memory store's holds (one replica).
#[derive(Default)]
pub struct MemoryHolds {
    inner: Mutex<HashMap<String, Entry>>,
}

pub(super) struct Entry {
    status: HoldStatus,
    pub(super) body: Option<Bytes>,
    forwarding_since: u64,
    /// The token of the forward under way: only it may end the forward.
    lease: String,
}

impl MemoryHolds {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn put(&self, write: &HeldWrite, body: Bytes, max_bytes: u64) -> bool {
        let mut all = self.lock();
        let held: u64 = all.values().filter(|e| e.body.is_some()).map(|e| e.status.write.bytes).sum();
        if held + write.bytes > max_bytes || all.len() >= MAX_HOLDS {
            return false;
        }
        let status = HoldStatus {
            write: Arc::new(write.clone()),
            state: HoldState::Held,
            approvals: Vec::new(),
            rejected: None,
            upstream_status: None,
            finished: None,
        };
        all.insert(write.id.clone(), Entry { status, body: Some(body), forwarding_since: 0, lease: String::new() });
        true
    }

    pub(super) fn approve(&self, id: &str, approval: Approval, now: u64, lease: &str) -> Approve {
        let mut all = self.lock();
        let Some(e) = all.get_mut(id) else { return Approve::Unknown };
        if e.refresh(now) {
            return Approve::Expired;
        }
        if e.status.state != HoldState::Held {
            return Approve::Closed(e.status.state);
        }
        if approval.who == e.status.write.requester {
            return Approve::Requester;
        }
        let added = !e.status.approvals.iter().any(|a| a.who == approval.who);
        if added {
            e.status.approvals.push(approval);
        }
        let n = e.status.approvals.len() as u32;
        if n >= e.status.write.required {
            e.status.state = HoldState::Forwarding;
            e.forwarding_since = now;
            e.lease = lease.to_owned();
            Approve::Ready(n)
        } else if added {
            Approve::Counted(n)
        } else {
            Approve::Twice(n)
        }
    }

    pub(super) fn reject(&self, id: &str, by: Approval, now: u64) -> Reject {
        let mut all = self.lock();
        let Some(e) = all.get_mut(id) else { return Reject::Unknown };
        if e.refresh(now) {
            return Reject::Closed(HoldState::Expired);
        }
        if e.status.state != HoldState::Held {
            return Reject::Closed(e.status.state);
        }
        e.status.rejected = Some(by);
        e.close(HoldState::Rejected, now);
        Reject::Rejected
    }

    pub(super) fn finish(&self, id: &str, how: Finish, now: u64, lease: &str) {
        let mut all = self.lock();
        let Some(e) = all.get_mut(id) else { return };
        if e.status.state != HoldState::Forwarding || e.lease != lease {
            return;
        }
        match how {
            Finish::Retry => e.status.state = HoldState::Held,
            Finish::Answered(status) => {
                e.status.upstream_status = Some(status);
                e.close(HoldState::Forwarded, now);
            }
        }
    }

    pub(super) fn sweep(&self, now: u64) -> Vec<Arc<HeldWrite>> {
        let mut all = self.lock();
        all.retain(|_, e| e.status.finished.is_none_or(|f| f + RETAIN > now));
        let mut expired = Vec::new();
        for e in all.values_mut() {
            if e.refresh(now) {
                expired.push(e.status.write.clone());
            }
        }
        expired
    }
}

impl Entry {
    pub(super) fn view(&self, now: u64) -> HoldStatus {
        let mut status = self.status.clone();
        let approved = status.approvals.len() as u32 >= status.write.required;
        if status.state == HoldState::Held && status.write.expires <= now && !approved {
            status.state = HoldState::Expired;
        }
        status
    }

    /// A stale forward goes back to held; a held write past its time expires. True if it
    /// expired now.
    fn refresh(&mut self, now: u64) -> bool {
        if self.status.state == HoldState::Forwarding && self.forwarding_since + FORWARD_LEASE < now {
            self.status.state = HoldState::Held;
        }
        // A write with its approvals (held again after a forward that got no answer) does not
        // expire: nothing approved is lost.
        let approved = self.status.approvals.len() as u32 >= self.status.write.required;
        if self.status.state == HoldState::Held && self.status.write.expires <= now && !approved {
            self.close(HoldState::Expired, now);
            return true;
        }
        false
    }

    fn close(&mut self, state: HoldState, now: u64) {
        self.status.state = state;
        self.status.finished = Some(now);
        self.body = None;
    }
}

/// A hold's state as stored (Redis keeps it as text).
pub(crate) fn parse_state(s: &str) -> Option<HoldState> {
    HoldState::parse(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(id: &str, required: u32, bytes: u64) -> HeldWrite {
        let summary = RawValue::from_string("{}".into()).unwrap();
        HeldWrite {
            id: id.into(),
            created: 100,
            expires: 1000,
            approvers: "rm".into(),
            required,
            issuer: "github".into(),
            claims: Map::new(),
            requester: party_key("github", "ci"),
            requester_summary: summary,
            grant: "g".into(),
            scope_packages: vec!["@acme/web".into()],
            scope_actions: vec!["publish".into()],
            token_id: "t".into(),
            phantom: [7; 32],
            request_id: "r".into(),
            upstream: "u".into(),
            method: "PUT".into(),
            path: "/@acme%2fweb".into(),
            action: "publish".into(),
            package: "@acme/web".into(),
            version: Some("1.0.0".into()),
            tags: vec!["latest".into()],
            creates: false,
            bytes,
        }
    }

    fn by(issuer: &str, sub: &str, at: u64) -> Approval {
        Approval { who: party_key(issuer, sub), summary: RawValue::from_string("{}".into()).unwrap(), at }
    }

    #[test]
    fn two_people_and_never_the_requester() {
        let h = MemoryHolds::default();
        assert!(h.put(&write("a", 2, 10), Bytes::from_static(b"0123456789"), 15));
        assert!(!h.put(&write("b", 1, 10), Bytes::from_static(b"0123456789"), 15), "past max_held_bytes");
        assert_eq!(h.approve("a", by("github", "ci", 110), 110, "l1"), Approve::Requester);
        assert_eq!(h.approve("a", by("corp", "bob", 111), 111, "l111"), Approve::Counted(1));
        assert_eq!(h.approve("a", by("corp", "bob", 112), 112, "l112"), Approve::Twice(1));
        assert_eq!(h.approve("a", by("corp", "carol", 113), 113, "l113"), Approve::Ready(2));
        assert_eq!(h.approve("a", by("corp", "dave", 114), 114, "l114"), Approve::Closed(HoldState::Forwarding));
        // A forward that got no answer is held again, approvals kept: the next approval retries.
        h.finish("a", Finish::Retry, 115, "l113");
        assert_eq!(h.approve("a", by("corp", "bob", 116), 116, "l116"), Approve::Ready(2));
        h.finish("a", Finish::Answered(200), 117, "l999");
        assert_eq!(h.lock()["a"].status.state, HoldState::Forwarding, "only its own lease ends a forward");
        h.finish("a", Finish::Answered(201), 117, "l116");
        assert_eq!(h.lock()["a"].status.state, HoldState::Forwarded);
        assert!(h.lock()["a"].body.is_none(), "a forwarded hold's bytes are dropped");
        assert!(h.put(&write("b", 1, 10), Bytes::from_static(b"0123456789"), 15), "its bytes no longer count");
        assert_eq!(h.reject("b", by("corp", "bob", 118), 118), Reject::Rejected);
        assert_eq!(h.approve("b", by("corp", "carol", 119), 119, "l119"), Approve::Closed(HoldState::Rejected));
        assert_eq!(h.approve("zz", by("corp", "carol", 119), 119, "l119"), Approve::Unknown);
    }

    #[test]
    fn holds_expire_and_stale_forwards_are_taken_up_again() {
        let h = MemoryHolds::default();
        assert!(h.put(&write("a", 1, 1), Bytes::from_static(b"x"), 100));
        assert!(h.put(&write("b", 1, 1), Bytes::from_static(b"y"), 100));
        assert_eq!(h.approve("a", by("corp", "bob", 200), 200, "l200"), Approve::Ready(1));
        // Its replica died mid-forward: after the lease, an approval forwards it again.
        assert_eq!(h.approve("a", by("corp", "carol", 300), 300, "l300"), Approve::Closed(HoldState::Forwarding));
        assert_eq!(
            h.approve("a", by("corp", "carol", 201 + FORWARD_LEASE), 201 + FORWARD_LEASE, "l201"),
            Approve::Ready(2)
        );
        let expired = h.sweep(1000);
        assert_eq!(expired.iter().map(|w| w.id.as_str()).collect::<Vec<_>>(), ["b"]);
        h.finish("a", Finish::Answered(200), 1000, "l201");
        assert_eq!(h.approve("b", by("corp", "bob", 1001), 1001, "l1001"), Approve::Closed(HoldState::Expired));
        assert!(h.sweep(1000 + RETAIN + 1).is_empty());
        // Approved, then held again after a forward with no answer: past its time, it stays.
        assert!(h.put(&write("c", 1, 1), Bytes::from_static(b"z"), 100));
        assert_eq!(h.approve("c", by("corp", "bob", 900), 900, "lc"), Approve::Ready(1));
        h.finish("c", Finish::Retry, 901, "lc");
        assert!(h.sweep(5000).is_empty(), "an approved hold expired");
        assert_eq!(h.approve("c", by("corp", "bob", 5001), 5001, "lc2"), Approve::Ready(1));
        assert!(!h.lock().contains_key("b"), "finished holds are forgotten after RETAIN");
    }
}
