//! The seam for what the broker remembers: `PhantomStore`, which the in-memory store
//! (`memory.rs`, one replica) and the Redis store (`redis.rs`, every replica) implement, and
//! what its operations answer. Every operation that decides a use is one atomic step in the
//! store, so that revocation, use counts and replay protection hold across replicas.

use crate::phantom::{Fingerprint, PhantomRecord, TokenDigest};
use crate::policy::Rate;
use std::future::Future;
use std::sync::Arc;

/// What a lookup found.
#[derive(Debug, Clone)]
pub enum Lookup {
    Live(Arc<PhantomRecord>),
    Expired,
    Revoked,
    Unknown,
}

/// The result of asking to spend one write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UseOutcome {
    /// A new use was counted; `remaining` is what is left (None: no limit).
    Counted {
        remaining: Option<u32>,
    },
    /// The same request (method, path, body) as one already counted: a client retry, not a use.
    Retry,
    Exhausted,
    /// Expired, revoked or unknown by the time the use was asked for.
    NotLive,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("the state store is unavailable: {0}")]
    Unavailable(String),
}

/// Which phantoms to revoke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// By token id (the keyed hash shown in the audit log and listings).
    Id(String),
    /// By the ID token's `sub`.
    Subject(String),
    /// By `repository` (GitHub) or `project_path` (GitLab).
    Repository(String),
    /// Every phantom minted under one of these grants (an incident rotation of their credential).
    Grants(Vec<String>),
    All,
}

impl Selector {
    pub fn picks(&self, r: &PhantomRecord) -> bool {
        match self {
            Selector::Id(id) => *r.id == **id,
            Selector::Subject(s) => r.identity.claim("sub") == Some(s.as_str()),
            Selector::Repository(repo) => {
                r.identity.claim("repository") == Some(repo.as_str())
                    || r.identity.claim("project_path") == Some(repo.as_str())
            }
            Selector::Grants(names) => names.contains(&r.grant),
            Selector::All => true,
        }
    }
}

/// A live phantom as listings show it.
#[derive(Debug, Clone)]
pub struct Listed {
    pub record: Arc<PhantomRecord>,
    pub uses_left: Option<u32>,
}

/// Whether a write could be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenWrite {
    Opened,
    /// No use left, and no failed write to resend.
    NoUsesLeft,
    /// As many writes already open as the phantom could still spend.
    TooMany,
    /// Expired, revoked or unknown.
    NotLive,
}

/// Writes one phantom may have open at once, whatever its uses.
pub const MAX_OPEN_WRITES: u32 = 16;

pub trait PhantomStore: Send + Sync + 'static {
    fn insert(&self, digest: TokenDigest, record: PhantomRecord)
        -> impl Future<Output = Result<(), StoreError>> + Send;

    fn lookup(&self, digest: &TokenDigest, now: u64) -> impl Future<Output = Result<Lookup, StoreError>> + Send;

    /// Spends one write use, atomically. The same request as the last one spent (same
    /// fingerprint) is a retry and free, unless that one already succeeded upstream.
    fn consume_use(
        &self,
        digest: &TokenDigest,
        fingerprint: Fingerprint,
        now: u64,
    ) -> impl Future<Output = Result<UseOutcome, StoreError>> + Send;

    /// Opens a write, before its body is read: a phantom may have as many writes open at once as
    /// it could still spend (its uses left, plus one to resend its last write if that failed
    /// upstream), and never more than `MAX_OPEN_WRITES`. So a spent phantom cannot open a
    /// request at all, and one phantom cannot hold many. The use itself is spent atomically by
    /// `consume_use` once the body has been checked. Every `Opened` is closed with `close_write`.
    fn open_write(&self, digest: &TokenDigest, now: u64) -> impl Future<Output = Result<OpenWrite, StoreError>> + Send;

    /// Ends a write `open_write` opened. (Not async: it runs when a write ends however it ends,
    /// cancelled included; a shared store applies it in the background.)
    fn close_write(&self, digest: &TokenDigest);

    /// Records whether the request with `fingerprint` succeeded upstream: after a success, sending
    /// it again is a new use, not a retry.
    fn settle(
        &self,
        digest: &TokenDigest,
        fingerprint: Fingerprint,
        succeeded: bool,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Revokes every live phantom the selector picks; returns their ids (keyed hashes, never the
    /// tokens).
    fn revoke(&self, which: &Selector) -> impl Future<Output = Result<Vec<Arc<str>>, StoreError>> + Send;

    /// Live phantoms (never the tokens), with the writes each has left.
    fn list(&self, now: u64) -> impl Future<Output = Result<Vec<Listed>, StoreError>> + Send;

    /// Records an ID token as spent until `until` (unix seconds). Returns false if it already was.
    fn claim_id_token(
        &self,
        key: [u8; 32],
        until: u64,
        now: u64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// The `rate` of a grant, per key (an identity and a package): with `take`, counts one write
    /// if the sliding window has room for it, atomically; without, only looks. `now_ms` in
    /// milliseconds.
    fn rate(
        &self,
        key: &str,
        rate: Rate,
        now_ms: u64,
        take: bool,
    ) -> impl Future<Output = Result<RateOutcome, StoreError>> + Send;

    /// Gives back a write counted by `rate` at `at_ms` that did not go through (refused after it
    /// was counted, or failed upstream: its resend is the same write, not another).
    fn rate_give_back(&self, key: &str, at_ms: u64) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Drops what has expired.
    fn sweep(&self, now: u64) -> impl Future<Output = ()> + Send;
}

/// Whether a write fits its grant's `rate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateOutcome {
    Allowed,
    /// The window is full; it has room again after this long.
    Limited {
        retry_after: std::time::Duration,
    },
}
