//! What the broker remembers between requests: live phantoms, their uses and retry
//! fingerprints, spent ID tokens, revocations, freezes and rate windows.
//!
//! `memory` (the default) keeps it in this process: one replica. `redis://` or `rediss://`
//! keeps it in a Redis server that every replica shares (`redis.rs`), so that they act as
//! one broker. Both fail closed: a store that cannot answer refuses writes and exchanges.

pub mod holds;
pub mod kv;
mod memory;
mod record;
mod redis;
pub(crate) mod store;

pub use self::memory::MemoryStore;
pub use self::redis::RedisStore;
pub use self::store::{
    Listed, Lookup, OpenWrite, PhantomStore, RateOutcome, Selector, StoreError, UseOutcome, MAX_OPEN_WRITES,
};

use crate::config::StateConfig;
use crate::npm::PackageName;
use crate::phantom::{Fingerprint, PhantomRecord, TokenDigest};
use crate::policy::{Glob, Rate};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// How often a replica on the shared store reads its `epoch` (revocations and freezes).
pub(crate) const SYNC_INTERVAL: Duration = Duration::from_millis(250);

pub enum Store {
    Memory { store: MemoryStore, frozen: RwLock<Arc<Vec<Glob>>>, holds: holds::MemoryHolds, kv: Box<kv::MemoryKv> },
    Redis(Box<RedisStore>),
}

impl Store {
    /// Needs a Tokio runtime for a Redis store (its connection's task runs there).
    pub fn new(cfg: &StateConfig) -> Result<Store, String> {
        Ok(match cfg {
            StateConfig::Memory => {
                let (frozen, holds, kv) = Default::default();
                Store::Memory { store: MemoryStore::new(), frozen, holds, kv }
            }
            StateConfig::Redis(r) => Store::Redis(Box::new(RedisStore::new(r)?)),
        })
    }

    /// Whether the store answers: always for memory; for Redis, whether its last call did.
    pub(crate) fn is_healthy(&self) -> bool {
        match self {
            Store::Memory { .. } => true,
            Store::Redis(r) => r.is_healthy(),
        }
    }

    pub(crate) fn is_shared(&self) -> bool {
        matches!(self, Store::Redis(_))
    }

    /// Reads a shared store's revocations and freezes once, so that a replica that starts while
    /// Redis answers serves writes from its first request. (If Redis does not answer, the
    /// replica starts all the same, unready, and `keep_synced` retries.)
    pub async fn prime(&self) {
        if let Store::Redis(r) = self {
            let _ = r.sync().await;
        }
    }

    /// Keeps a shared store's revocations and freezes current on this replica, until the
    /// process ends; returns at once for memory.
    pub(crate) async fn keep_synced(&self) {
        let Store::Redis(r) = self else { return };
        let mut tick = tokio::time::interval(SYNC_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let _ = r.sync().await;
        }
    }

    /// Tells the other replicas a credential's new value (its fingerprint): memory has none.
    pub(crate) async fn announce_credential(
        &self,
        name: &str,
        fingerprint: &str,
        overlap_until: u64,
        rotated: u64,
    ) -> Result<(), StoreError> {
        match self {
            Store::Memory { .. } => Ok(()),
            Store::Redis(r) => r.announce_credential(name, fingerprint, overlap_until, rotated).await,
        }
    }

    /// The credentials' values the replicas announced: (name, fingerprint, overlap_until,
    /// rotated), the last when the value was rotated in.
    pub(crate) async fn announced_credentials(&self) -> Result<Vec<(String, String, u64, u64)>, StoreError> {
        match self {
            Store::Memory { .. } => Ok(Vec::new()),
            Store::Redis(r) => r.announced_credentials().await,
        }
    }

    /// Keeps `value` under `key` for `ttl` seconds (a console session, a sign-in under way).
    pub(crate) async fn kv_put(&self, key: &str, value: &str, ttl: u64, now: u64) -> Result<(), StoreError> {
        match self {
            Store::Memory { kv, .. } => match kv.put(key, value, now + ttl, now) {
                true => Ok(()),
                false => Err(StoreError::Unavailable("too many console sessions and sign-ins".into())),
            },
            Store::Redis(r) => r.kv_put(key, value, ttl).await,
        }
    }

    pub(crate) async fn kv_get(&self, key: &str, now: u64) -> Result<Option<String>, StoreError> {
        match self {
            Store::Memory { kv, .. } => Ok(kv.get(key, now)),
            Store::Redis(r) => r.kv_get(key, false).await,
        }
    }

    /// The value under `key`, removed: whoever takes it first has it.
    pub(crate) async fn kv_take(&self, key: &str, now: u64) -> Result<Option<String>, StoreError> {
        match self {
            Store::Memory { kv, .. } => Ok(kv.take(key, now)),
            Store::Redis(r) => r.kv_get(key, true).await,
        }
    }

    pub(crate) async fn kv_delete(&self, key: &str) -> Result<(), StoreError> {
        match self {
            Store::Memory { kv, .. } => {
                kv.delete(key);
                Ok(())
            }
            Store::Redis(r) => r.kv_delete(key).await,
        }
    }

    /// Live phantoms, for the metrics.
    pub(crate) async fn count_live(&self, now: u64) -> Result<u64, StoreError> {
        match self {
            Store::Memory { store, .. } => Ok(store.list(now).await?.len() as u64),
            Store::Redis(r) => r.count_live(now).await,
        }
    }

    fn frozen(&self) -> Arc<Vec<Glob>> {
        match self {
            Store::Memory { frozen, .. } => frozen.read().unwrap_or_else(|p| p.into_inner()).clone(),
            Store::Redis(r) => r.frozen(),
        }
    }

    /// Whether writes to `package` are frozen (as this replica last read the freezes).
    pub(crate) fn is_frozen(&self, package: &PackageName) -> bool {
        self.frozen().iter().any(|g| g.matches(package.as_str()))
    }

    pub(crate) fn frozen_patterns(&self) -> Vec<String> {
        self.frozen().iter().map(|g| g.as_str().to_owned()).collect()
    }

    /// Freezes (or thaws) writes to the packages the patterns match, on every replica.
    pub(crate) async fn set_frozen(&self, patterns: &[Glob], freeze: bool) -> Result<(), StoreError> {
        match self {
            Store::Memory { frozen, .. } => {
                let mut frozen = frozen.write().unwrap_or_else(|p| p.into_inner());
                let mut next: Vec<Glob> = frozen.iter().filter(|g| freeze || !patterns.contains(g)).cloned().collect();
                if freeze {
                    next.extend(patterns.iter().filter(|g| !frozen.contains(g)).cloned());
                }
                next.sort_by(|a, b| a.as_str().cmp(b.as_str()));
                *frozen = Arc::new(next);
                Ok(())
            }
            Store::Redis(r) => {
                let patterns: Vec<String> = patterns.iter().map(|g| g.as_str().to_owned()).collect();
                r.set_frozen(&patterns, freeze).await
            }
        }
    }
}

impl PhantomStore for Store {
    async fn insert(&self, digest: TokenDigest, record: PhantomRecord) -> Result<(), StoreError> {
        match self {
            Store::Memory { store, .. } => store.insert(digest, record).await,
            Store::Redis(r) => r.insert(digest, record).await,
        }
    }

    async fn lookup(&self, digest: &TokenDigest, now: u64) -> Result<Lookup, StoreError> {
        match self {
            Store::Memory { store, .. } => store.lookup(digest, now).await,
            Store::Redis(r) => r.lookup(digest, now).await,
        }
    }

    async fn consume_use(
        &self,
        digest: &TokenDigest,
        fingerprint: Fingerprint,
        now: u64,
    ) -> Result<UseOutcome, StoreError> {
        match self {
            Store::Memory { store, .. } => store.consume_use(digest, fingerprint, now).await,
            Store::Redis(r) => r.consume_use(digest, fingerprint, now).await,
        }
    }

    async fn open_write(&self, digest: &TokenDigest, now: u64) -> Result<OpenWrite, StoreError> {
        match self {
            Store::Memory { store, .. } => store.open_write(digest, now).await,
            Store::Redis(r) => r.open_write(digest, now).await,
        }
    }

    fn close_write(&self, digest: &TokenDigest) {
        match self {
            Store::Memory { store, .. } => store.close_write(digest),
            Store::Redis(r) => r.close_write(digest),
        }
    }

    async fn settle(&self, digest: &TokenDigest, fingerprint: Fingerprint, succeeded: bool) -> Result<(), StoreError> {
        match self {
            Store::Memory { store, .. } => store.settle(digest, fingerprint, succeeded).await,
            Store::Redis(r) => r.settle(digest, fingerprint, succeeded).await,
        }
    }

    async fn revoke(&self, which: &Selector) -> Result<Vec<Arc<str>>, StoreError> {
        match self {
            Store::Memory { store, .. } => store.revoke(which).await,
            Store::Redis(r) => r.revoke(which).await,
        }
    }

    async fn list(&self, now: u64) -> Result<Vec<Listed>, StoreError> {
        match self {
            Store::Memory { store, .. } => store.list(now).await,
            Store::Redis(r) => r.list(now).await,
        }
    }

    async fn claim_id_token(&self, key: [u8; 32], until: u64, now: u64) -> Result<bool, StoreError> {
        match self {
            Store::Memory { store, .. } => store.claim_id_token(key, until, now).await,
            Store::Redis(r) => r.claim_id_token(key, until, now).await,
        }
    }

    async fn rate(&self, key: &str, rate: Rate, now_ms: u64, take: bool) -> Result<RateOutcome, StoreError> {
        match self {
            Store::Memory { store, .. } => store.rate(key, rate, now_ms, take).await,
            Store::Redis(r) => r.rate(key, rate, now_ms, take).await,
        }
    }

    async fn rate_give_back(&self, key: &str, at_ms: u64) -> Result<(), StoreError> {
        match self {
            Store::Memory { store, .. } => store.rate_give_back(key, at_ms).await,
            Store::Redis(r) => r.rate_give_back(key, at_ms).await,
        }
    }

    async fn sweep(&self, now: u64) {
        match self {
            Store::Memory { store, kv, .. } => {
                kv.sweep(now);
                store.sweep(now).await;
            }
            Store::Redis(r) => r.sweep(),
        }
    }
}

/// Held writes (`holds.rs`), on whichever store the broker runs with.
impl Store {
    /// Keeps a checked write and its exact bytes. False when it does not fit
    /// (`max_held_bytes` across every held write, or `MAX_HOLDS`).
    pub(crate) async fn hold_put(&self, write: &holds::HeldWrite, body: bytes::Bytes, max_bytes: u64) -> holds::Put {
        match self {
            Store::Memory { holds, .. } => Ok(holds.put(write, body, max_bytes)),
            Store::Redis(r) => r.hold_put(write, body, max_bytes).await,
        }
    }

    /// A hold's state (never its bytes). Past its time, a write still held is shown expired;
    /// the sweep (or the next approval) closes it.
    pub(crate) async fn hold_status(&self, id: &str, now: u64) -> Result<Option<holds::HoldStatus>, StoreError> {
        match self {
            Store::Memory { holds, .. } => Ok(holds.lock().get(id).map(|e| e.view(now))),
            Store::Redis(r) => r.hold_status(id, now).await,
        }
    }

    /// The exact bytes of a hold that is being forwarded.
    pub(crate) async fn hold_body(&self, id: &str) -> Result<Option<bytes::Bytes>, StoreError> {
        match self {
            Store::Memory { holds, .. } => Ok(holds.lock().get(id).and_then(|e| e.body.clone())),
            Store::Redis(r) => r.hold_body(id).await,
        }
    }

    /// Every hold kept, newest first.
    pub(crate) async fn hold_list(&self, now: u64) -> Result<Vec<holds::HoldStatus>, StoreError> {
        let mut list = match self {
            Store::Memory { holds, .. } => holds.lock().values().map(|e| e.view(now)).collect(),
            Store::Redis(r) => r.hold_list(now).await?,
        };
        list.sort_by(|a: &holds::HoldStatus, b| {
            b.write.created.cmp(&a.write.created).then(a.write.id.cmp(&b.write.id))
        });
        Ok(list)
    }

    /// One person's approval, atomically: see `Approve`. `lease` names the forward an
    /// `Approve::Ready` starts: only it may end that forward (`hold_finish`).
    pub(crate) async fn hold_approve(
        &self,
        id: &str,
        approval: holds::Approval,
        now: u64,
        lease: &str,
    ) -> Result<holds::Approve, StoreError> {
        match self {
            Store::Memory { holds, .. } => Ok(holds.approve(id, approval, now, lease)),
            Store::Redis(r) => r.hold_approve(id, approval, now, lease).await,
        }
    }

    /// Rejects a hold that is still waiting; its bytes are dropped.
    pub(crate) async fn hold_reject(
        &self,
        id: &str,
        by: holds::Approval,
        now: u64,
    ) -> Result<holds::Reject, StoreError> {
        match self {
            Store::Memory { holds, .. } => Ok(holds.reject(id, by, now)),
            Store::Redis(r) => r.hold_reject(id, by, now).await,
        }
    }

    /// Ends the forward `Approve::Ready` started.
    pub(crate) async fn hold_finish(
        &self,
        id: &str,
        how: holds::Finish,
        now: u64,
        lease: &str,
    ) -> Result<(), StoreError> {
        match self {
            Store::Memory { holds, .. } => {
                holds.finish(id, how, now, lease);
                Ok(())
            }
            Store::Redis(r) => r.hold_finish(id, how, now, lease).await,
        }
    }

    /// Expires the holds past their time (returned, to be audited) and forgets finished ones
    /// after `RETAIN`.
    pub(crate) async fn hold_sweep(&self, now: u64) -> Result<Vec<Arc<holds::HeldWrite>>, StoreError> {
        match self {
            Store::Memory { holds, .. } => Ok(holds.sweep(now)),
            Store::Redis(r) => r.hold_sweep(now).await,
        }
    }
}
