//! Held writes on Redis, shared by every replica. Keys (under the prefix):
//!
//! | key | type | what | expiry |
//! |---|---|---|---|
//! | `hold:<id>` | hash | `meta` (the `HeldWrite`, JSON), `body` (its exact bytes, while held), `state`, `expires`, `requester`, `required`, `bytes`, `fwd` (forwarding since), `status`, `finished`, `rejected` | `RETAIN` after it finishes |
//! | `hold:<id>:ok` | hash | approver key -> approval (JSON) | as the hold |
//! | `holds` | sorted set | hold ids by creation | trimmed by the sweep |
//! | `held_bytes` | counter | the bytes of every write still held | none |
//!
//! Every step that decides is one script: `KEYS` are always the hold, its approvals, the byte
//! counter and the index; `ARGV[1]` is now, `ARGV[2]` the retention and `ARGV[3]` the forward
//! lease, then each script's own (the scripts are in `scripts.rs`).

use super::RedisStore;
use crate::state::holds::{
    parse_state, Approval, Approve, Finish, HeldWrite, HoldState, HoldStatus, Put, Reject, FORWARD_LEASE, MAX_HOLDS,
    RETAIN,
};
use crate::state::store::StoreError;
use bytes::Bytes;
use std::sync::Arc;

impl RedisStore {
    fn hold_keys(&self, id: &str) -> [String; 4] {
        [
            format!("{}hold:{id}", self.prefix),
            format!("{}hold:{id}:ok", self.prefix),
            self.named("held_bytes"),
            self.named("holds"),
        ]
    }

    /// A script over one hold's keys, with now, the retention and the lease first.
    async fn hold_script<T: redis::FromRedisValue>(
        &self,
        script: &redis::Script,
        id: &str,
        now: u64,
        args: &[&[u8]],
    ) -> Result<T, StoreError> {
        let mut inv = script.prepare_invoke();
        for k in self.hold_keys(id) {
            inv.key(k);
        }
        inv.arg(now).arg(RETAIN).arg(FORWARD_LEASE);
        for a in args {
            inv.arg(*a);
        }
        let mut conn = self.conn.clone();
        self.call(inv.invoke_async(&mut conn)).await
    }

    pub(crate) async fn hold_put(&self, write: &HeldWrite, body: Bytes, max_bytes: u64) -> Put {
        self.synced()?;
        let meta = serde_json::to_string(write).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let mut inv = self.holds.put.prepare_invoke();
        for k in self.hold_keys(&write.id) {
            inv.key(k);
        }
        inv.arg(write.created)
            .arg(RETAIN)
            .arg(meta)
            .arg(body.as_ref())
            .arg(write.bytes)
            .arg(max_bytes)
            .arg(write.expires)
            .arg(&write.requester)
            .arg(write.required)
            .arg(write.created)
            .arg(&write.id)
            .arg(MAX_HOLDS);
        let mut conn = self.conn.clone();
        let put: i64 = self.call(inv.invoke_async(&mut conn)).await?;
        Ok(put == 1)
    }

    pub(crate) async fn hold_status(&self, id: &str, now: u64) -> Result<Option<HoldStatus>, StoreError> {
        let [key, ok, ..] = self.hold_keys(id);
        let mut conn = self.conn.clone();
        let (h, approvals): (Vec<Option<String>>, Vec<String>) = self
            .call(
                redis::pipe()
                    .cmd("HMGET")
                    .arg(&key)
                    .arg(&["meta", "state", "status", "finished", "rejected"][..])
                    .cmd("HVALS")
                    .arg(&ok)
                    .query_async(&mut conn),
            )
            .await?;
        let field = |i: usize| h.get(i).cloned().flatten();
        let (Some(meta), Some(state)) = (field(0), field(1).as_deref().and_then(parse_state)) else {
            return Ok(None);
        };
        let bad = |what: &str| StoreError::Unavailable(format!("hold {id}: its {what} does not parse"));
        let write: HeldWrite = serde_json::from_str(&meta).map_err(|_| bad("record"))?;
        let mut approvals: Vec<Approval> = approvals
            .iter()
            .map(|a| serde_json::from_str(a))
            .collect::<Result<_, _>>()
            .map_err(|_| bad("approvals"))?;
        approvals.sort_by_key(|a| a.at);
        let rejected = field(4).map(|r| serde_json::from_str(&r)).transpose().map_err(|_| bad("rejection"))?;
        Ok(Some(HoldStatus {
            // Past its time, a write still held is shown expired; the sweep closes it.
            state: if state == HoldState::Held && write.expires <= now { HoldState::Expired } else { state },
            write: Arc::new(write),
            approvals,
            rejected,
            upstream_status: field(2).and_then(|s| s.parse().ok()),
            finished: field(3).and_then(|s| s.parse().ok()),
        }))
    }

    pub(crate) async fn hold_body(&self, id: &str) -> Result<Option<Bytes>, StoreError> {
        let [key, ..] = self.hold_keys(id);
        let mut conn = self.conn.clone();
        let body: Option<Vec<u8>> = self.call(redis::cmd("HGET").arg(&key).arg("body").query_async(&mut conn)).await?;
        Ok(body.map(Bytes::from))
    }

    pub(crate) async fn hold_list(&self, now: u64) -> Result<Vec<HoldStatus>, StoreError> {
        let mut conn = self.conn.clone();
        let ids: Vec<String> = self
            .call(redis::cmd("ZREVRANGE").arg(self.named("holds")).arg(0).arg(MAX_HOLDS).query_async(&mut conn))
            .await?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(status) = self.hold_status(&id, now).await? {
                out.push(status);
            }
        }
        Ok(out)
    }

    pub(crate) async fn hold_approve(
        &self,
        id: &str,
        approval: Approval,
        now: u64,
        lease: &str,
    ) -> Result<Approve, StoreError> {
        self.synced()?;
        let json = serde_json::to_string(&approval).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let word: String = self
            .hold_script(&self.holds.approve, id, now, &[approval.who.as_bytes(), json.as_bytes(), lease.as_bytes()])
            .await?;
        let (word, n) = word.split_once(':').unwrap_or((word.as_str(), "0"));
        let n: u32 = n.parse().unwrap_or(0);
        Ok(match word {
            "counted" => Approve::Counted(n),
            "ready" => Approve::Ready(n),
            "twice" => Approve::Twice(n),
            "requester" => Approve::Requester,
            "expired-now" => Approve::Expired,
            "unknown" => Approve::Unknown,
            other => Approve::Closed(parse_state(other).unwrap_or(HoldState::Forwarded)),
        })
    }

    pub(crate) async fn hold_reject(&self, id: &str, by: Approval, now: u64) -> Result<Reject, StoreError> {
        self.synced()?;
        let json = serde_json::to_string(&by).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let word: String = self.hold_script(&self.holds.reject, id, now, &[json.as_bytes()]).await?;
        Ok(match word.as_str() {
            "rejected" => Reject::Rejected,
            "unknown" => Reject::Unknown,
            "expired-now" => Reject::Closed(HoldState::Expired),
            other => Reject::Closed(parse_state(other).unwrap_or(HoldState::Forwarded)),
        })
    }

    pub(crate) async fn hold_finish(&self, id: &str, how: Finish, now: u64, lease: &str) -> Result<(), StoreError> {
        let arg = match how {
            Finish::Retry => "retry".to_owned(),
            Finish::Answered(status) => status.to_string(),
        };
        let _: i64 = self.hold_script(&self.holds.finish, id, now, &[arg.as_bytes(), lease.as_bytes()]).await?;
        Ok(())
    }

    pub(crate) async fn hold_sweep(&self, now: u64) -> Result<Vec<Arc<HeldWrite>>, StoreError> {
        let mut conn = self.conn.clone();
        let ids: Vec<String> =
            self.call(redis::cmd("ZRANGE").arg(self.named("holds")).arg(0).arg(-1).query_async(&mut conn)).await?;
        let mut expired = Vec::new();
        for id in ids {
            let outcome: i64 = self.hold_script(&self.holds.refresh, &id, now, &[id.as_bytes()]).await?;
            // Closed now: its line is owed even if its record cannot be read back.
            if outcome == 1 {
                if let Ok(Some(status)) = self.hold_status(&id, now).await {
                    expired.push(status.write);
                }
            }
        }
        Ok(expired)
    }
}
