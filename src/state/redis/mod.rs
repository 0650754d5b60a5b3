//! The shared store: one Redis (or Valkey) server that every replica uses, so that they act as
//! one broker.
//!
//! Keys (all under `key_prefix`, default `phantom:`):
//!
//! | key | type | what | expiry |
//! |---|---|---|---|
//! | `ph:<digest>` | hash | a phantom: `r` its record (JSON, no token), `exp`, `max`, `u` uses, `fp`/`ok` the last write and whether it succeeded, `rv` revoked | `PX`: its expiry plus an hour, so its holder hears "expired" |
//! | `live` | sorted set | digests by expiry: for listing and revoking by subject or repository | trimmed at each insert |
//! | `jti:<replay key>` | string | a spent ID token | `PX`: until it can no longer verify |
//! | `rate:<sha256 of identity and package>` | sorted set | the writes counted in a grant's sliding window | `PX`: the window |
//! | `frozen` | set | frozen package patterns | none |
//! | `epoch` | counter | bumped by every revocation, freeze and thaw | none |
//! | `credentials` | hash | per real credential, the SHA-256 of the value a rotation swapped in (never the value) | none |
//!
//! A phantom is stored under the SHA-256 digest of its token only; nothing here holds a token.
//! Every check-and-spend is one Lua script, so two replicas can never spend one use twice.
//!
//! Revocations and freezes reach the other replicas through `epoch`, which each polls every
//! 250 ms (`sync`): a poll cannot miss a change the way a pub/sub message lost in a reconnect
//! would, needs no second kind of connection, and costs one `GET` per replica every 250 ms.
//! Writes never rely on it (their spend reads the phantom's own `rv` in the same script); it
//! bounds how long a revoked phantom's cached lookup may still serve a read, and how long a
//! freeze takes to reach the other replicas' write checks. A write opens (the bound on how many
//! one phantom may have under way) on the uses its lookup read in the same round trip, at most
//! a second old and updated at once by this replica's own spends; the spend then reads Redis. A replica that failed a call
//! refuses writes and exchanges until a poll succeeds again, so it never acts on state it may
//! have missed.

mod holds;
mod scripts;

use super::store::{Listed, Lookup, OpenWrite, RateOutcome, Selector, StoreError, UseOutcome, MAX_OPEN_WRITES};
use crate::config::RedisConfig;
use crate::phantom::{Fingerprint, PhantomRecord, TokenDigest};
use crate::policy::{Glob, Rate};
use dashmap::DashMap;
use redis::aio::ConnectionManager;
use scripts::Scripts;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// How long a replica serves reads from a phantom it looked up, without asking Redis again.
/// A revocation wins within this (sooner when the poll sees it).
const LOOKUP_CACHE: Duration = Duration::from_secs(1);
/// Phantoms looked up and cached at once, at most (a full cache starts over).
const LOOKUP_CACHE_MAX: usize = 16 * 1024;
/// Seconds an expired phantom is remembered, as the memory store does.
const EXPIRED_GRACE: u64 = 3600;

pub struct RedisStore {
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
    /// Whether the last call to Redis succeeded.
    healthy: AtomicBool,
    /// What the log last said: 0 nothing yet, 1 reachable, 2 failing (each change is logged once).
    reported: std::sync::atomic::AtomicU8,
    /// Whether this replica has read the revocations and freezes since its last failed call.
    synced: AtomicBool,
    /// The last `epoch` read (-1: none yet).
    epoch: AtomicI64,
    frozen: RwLock<Arc<Vec<Glob>>>,
    cache: DashMap<TokenDigest, Cached>,
    /// Writes open on this replica, per phantom. (Each replica bounds what it opens; the
    /// spend itself is shared and atomic.)
    open: DashMap<TokenDigest, u32>,
    scripts: Scripts,
    holds: scripts::HoldScripts,
}

/// What this replica last read of a live phantom: its record, for reads, and its uses, for
/// `open_write`. Both are served for `LOOKUP_CACHE` at most; this replica's own spends update
/// the uses at once, another replica's are seen within that second. (The spend itself always
/// reads Redis: a stale view can only let a write be opened whose spend is then refused.)
struct Cached {
    live: Live,
    at: Instant,
}

/// A live phantom as `read` found it.
#[derive(Clone)]
struct Live {
    record: Arc<PhantomRecord>,
    max: Option<u32>,
    used: u32,
    /// The last write was spent and has not succeeded upstream: it may be sent again.
    resend: bool,
}

impl RedisStore {
    /// Prepares the connection (made lazily, and remade whenever it fails). Needs a Tokio
    /// runtime: the connection's task runs on the caller's.
    pub fn new(cfg: &RedisConfig) -> Result<RedisStore, String> {
        let password = match &cfg.password {
            Some(source) => {
                Some(crate::support::secret::read_secret(source).map_err(|e| format!("state.password: {e}"))?)
            }
            None => None,
        };
        let addr = if cfg.tls {
            redis::ConnectionAddr::TcpTls { host: cfg.host.clone(), port: cfg.port, insecure: false, tls_params: None }
        } else {
            redis::ConnectionAddr::Tcp(cfg.host.clone(), cfg.port)
        };
        let mut settings = redis::RedisConnectionInfo::default().set_db(cfg.db);
        if let Some(user) = &cfg.username {
            settings = settings.set_username(user);
        }
        if let Some(password) = &password {
            settings = settings.set_password(password.expose());
        }
        let info = redis::IntoConnectionInfo::into_connection_info(addr)
            .map_err(|e| format!("state.backend: {e}"))?
            .set_redis_settings(settings);
        let client = match (&cfg.ca_file, cfg.tls) {
            (Some(ca), true) => {
                let root_cert = std::fs::read(ca).map_err(|e| format!("state.ca_file {}: {e}", ca.display()))?;
                redis::Client::build_with_tls(
                    info,
                    redis::TlsCertificates { client_tls: None, root_cert: Some(root_cert) },
                )
            }
            _ => redis::Client::open(info),
        }
        .map_err(|e| format!("state.backend: {e}"))?;
        let manager = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cfg.timeout))
            .set_response_timeout(Some(cfg.timeout))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let conn =
            ConnectionManager::new_lazy_with_config(client, manager).map_err(|e| format!("state.backend: {e}"))?;
        Ok(RedisStore {
            conn,
            prefix: cfg.key_prefix.clone(),
            timeout: cfg.timeout,
            healthy: AtomicBool::new(false),
            reported: std::sync::atomic::AtomicU8::new(0),
            synced: AtomicBool::new(false),
            epoch: AtomicI64::new(-1),
            frozen: RwLock::new(Arc::new(Vec::new())),
            cache: DashMap::new(),
            open: DashMap::new(),
            scripts: Scripts::new(),
            holds: scripts::HoldScripts::new(),
        })
    }

    pub(crate) fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    fn key(&self, kind: &str, id: &[u8]) -> String {
        format!("{}{kind}:{}", self.prefix, crate::support::hex(id))
    }

    fn named(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Runs one call within the timeout; a failure marks this replica unhealthy and unsynced.
    async fn call<T>(&self, work: impl std::future::Future<Output = redis::RedisResult<T>>) -> Result<T, StoreError> {
        let outcome = match tokio::time::timeout(self.timeout, work).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => format!("redis: {e}"),
            Err(_) => format!("redis did not answer within {:?}", self.timeout),
        };
        self.healthy.store(false, Ordering::Relaxed);
        if self.reported.swap(2, Ordering::Relaxed) != 2 {
            tracing::error!(error = %outcome, "the state store failed: writes and exchanges are refused until it is back");
        }
        self.synced.store(false, Ordering::Relaxed);
        Err(StoreError::Unavailable(outcome))
    }

    /// Writes and exchanges act only on state this replica is sure of.
    fn synced(&self) -> Result<(), StoreError> {
        if self.synced.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err(StoreError::Unavailable("the state store is being resynchronised".into()))
        }
    }

    /// One poll: reads `epoch`; after a change, or when this replica is not synced, reads the
    /// freezes again and drops its cached lookups.
    pub async fn sync(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let epoch: Option<i64> = self.call(redis::cmd("GET").arg(self.named("epoch")).query_async(&mut conn)).await?;
        let epoch = epoch.unwrap_or(0);
        if self.synced.load(Ordering::Relaxed) && self.epoch.load(Ordering::Relaxed) == epoch {
            return Ok(());
        }
        self.reload_frozen().await?;
        self.cache.clear();
        self.epoch.store(epoch, Ordering::Relaxed);
        self.healthy.store(true, Ordering::Relaxed);
        if self.reported.swap(1, Ordering::Relaxed) != 1 {
            tracing::info!("the state store answers: writes and exchanges are served");
        }
        self.synced.store(true, Ordering::Relaxed);
        Ok(())
    }

    async fn reload_frozen(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let mut patterns: Vec<String> =
            self.call(redis::cmd("SMEMBERS").arg(self.named("frozen")).query_async(&mut conn)).await?;
        patterns.sort();
        // Patterns were checked when they were frozen; one that no longer parses freezes all.
        let globs =
            patterns.iter().map(|p| Glob::new(p).unwrap_or_else(|_| Glob::new("*").expect("`*` is a glob"))).collect();
        *self.frozen.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(globs);
        Ok(())
    }

    pub fn frozen(&self) -> Arc<Vec<Glob>> {
        self.frozen.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Adds (or, with `frozen` false, removes) package patterns, and tells every replica.
    pub(crate) async fn set_frozen(&self, patterns: &[String], frozen: bool) -> Result<(), StoreError> {
        self.synced()?;
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd(if frozen { "SADD" } else { "SREM" })
            .arg(self.named("frozen"))
            .arg(patterns)
            .ignore()
            .cmd("INCR")
            .arg(self.named("epoch"))
            .ignore();
        self.call(pipe.query_async::<()>(&mut conn)).await?;
        self.reload_frozen().await
    }

    pub async fn insert(&self, digest: TokenDigest, record: PhantomRecord) -> Result<(), StoreError> {
        self.synced()?;
        let now = crate::support::clock::unix_now();
        let json = super::record::to_json(&record);
        let key = self.key("ph", &digest.0);
        let keep_ms = (record.expires_at + EXPIRED_GRACE).saturating_sub(now).max(1) * 1000;
        let max = record.max_uses.map(|m| m.to_string()).unwrap_or_default();
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset_multiple(
                &key,
                &[
                    ("r", json.as_str()),
                    ("exp", &record.expires_at.to_string()),
                    ("max", &max),
                    ("u", "0"),
                    ("fp", ""),
                    ("ok", "0"),
                    ("rv", "0"),
                ],
            )
            .ignore()
            .pexpire(&key, keep_ms as i64)
            .ignore()
            .zadd(self.named("live"), crate::support::hex(&digest.0), record.expires_at)
            .ignore()
            .cmd("ZREMRANGEBYSCORE")
            .arg(self.named("live"))
            .arg("-inf")
            .arg(format!("({now}"))
            .ignore();
        self.call(pipe.query_async::<()>(&mut conn)).await
    }

    pub async fn lookup(&self, digest: &TokenDigest, now: u64) -> Result<Lookup, StoreError> {
        if let Some(hit) = self.cache.get(digest) {
            if hit.at.elapsed() < LOOKUP_CACHE && now < hit.live.record.expires_at {
                return Ok(Lookup::Live(hit.live.record.clone()));
            }
        }
        Ok(match self.read(digest, now).await? {
            Ok(live) => Lookup::Live(live.record),
            Err(other) => other,
        })
    }

    /// Reads a phantom (its record and its uses, one round trip) and caches it if it is live;
    /// otherwise says why not.
    async fn read(&self, digest: &TokenDigest, now: u64) -> Result<Result<Live, Lookup>, StoreError> {
        let mut conn = self.conn.clone();
        let key = self.key("ph", &digest.0);
        // The uses too, in the same round trip: the write that follows a lookup opens on them.
        let h: Vec<Option<String>> = self
            .call(
                redis::cmd("HMGET")
                    .arg(&key)
                    .arg("r")
                    .arg("rv")
                    .arg("exp")
                    .arg("max")
                    .arg("u")
                    .arg("ok")
                    .arg("fp")
                    .query_async(&mut conn),
            )
            .await?;
        let field = |i: usize| h.get(i).cloned().flatten();
        let (Some(json), Some(exp)) = (field(0), field(2).and_then(|e| e.parse::<u64>().ok())) else {
            return Ok(Err(Lookup::Unknown));
        };
        if field(1).as_deref() == Some("1") {
            return Ok(Err(Lookup::Revoked));
        }
        if now >= exp {
            return Ok(Err(Lookup::Expired));
        }
        let record = Arc::new(super::record::from_json(&json)?);
        if self.cache.len() >= LOOKUP_CACHE_MAX {
            self.cache.clear();
        }
        let (max, used, resend) = uses(field(3), field(4), field(5), field(6));
        let live = Live { record, max, used, resend };
        self.cache.insert(*digest, Cached { live: live.clone(), at: Instant::now() });
        Ok(Ok(live))
    }

    pub(crate) async fn consume_use(
        &self,
        digest: &TokenDigest,
        fingerprint: Fingerprint,
        now: u64,
    ) -> Result<UseOutcome, StoreError> {
        self.synced()?;
        let mut conn = self.conn.clone();
        let mut invocation = self.scripts.consume.key(self.key("ph", &digest.0));
        invocation.arg(crate::support::hex(&fingerprint)).arg(now);
        let answer: Vec<String> = self.call(invocation.invoke_async(&mut conn)).await?;
        Ok(match answer.first().map(String::as_str) {
            Some("retry") => UseOutcome::Retry,
            Some("exhausted") => {
                if let Some(mut c) = self.cache.get_mut(digest) {
                    c.live.used = c.live.max.unwrap_or(u32::MAX);
                }
                UseOutcome::Exhausted
            }
            Some("counted") => {
                let used: u32 = answer.get(1).and_then(|u| u.parse().ok()).unwrap_or(u32::MAX);
                let max: Option<u32> = answer.get(2).and_then(|m| m.parse().ok());
                if let Some(mut c) = self.cache.get_mut(digest) {
                    (c.live.used, c.live.max, c.live.resend) = (used, max, true);
                }
                UseOutcome::Counted { remaining: max.map(|m| m.saturating_sub(used)) }
            }
            _ => {
                self.cache.remove(digest);
                UseOutcome::NotLive
            }
        })
    }

    /// Opens on the uses the lookup just read (or this replica's own spends since), when they
    /// are less than `LOOKUP_CACHE` old; otherwise it reads them.
    pub(crate) async fn open_write(&self, digest: &TokenDigest, now: u64) -> Result<OpenWrite, StoreError> {
        self.synced()?;
        let cached = self.cache.get(digest).filter(|c| c.at.elapsed() < LOOKUP_CACHE).map(|c| c.live.clone());
        let Live { record, max, used, resend } = match cached {
            Some(live) => live,
            None => match self.read(digest, now).await? {
                Ok(live) => live,
                Err(_) => return Ok(OpenWrite::NotLive),
            },
        };
        let exp = record.expires_at;
        if now >= exp {
            return Ok(OpenWrite::NotLive);
        }
        let allowance = match max {
            Some(max) => (max.saturating_sub(used) + u32::from(resend)).min(MAX_OPEN_WRITES),
            None => MAX_OPEN_WRITES,
        };
        if allowance == 0 {
            return Ok(OpenWrite::NoUsesLeft);
        }
        let mut open = self.open.entry(*digest).or_insert(0);
        if *open >= allowance {
            return Ok(OpenWrite::TooMany);
        }
        *open += 1;
        Ok(OpenWrite::Opened)
    }

    pub(crate) fn close_write(&self, digest: &TokenDigest) {
        self.open.remove_if_mut(digest, |_, open| {
            *open = open.saturating_sub(1);
            *open == 0
        });
    }

    pub async fn settle(
        &self,
        digest: &TokenDigest,
        fingerprint: Fingerprint,
        succeeded: bool,
    ) -> Result<(), StoreError> {
        if succeeded {
            if let Some(mut c) = self.cache.get_mut(digest) {
                c.live.resend = false;
            }
        }
        let mut conn = self.conn.clone();
        let mut invocation = self.scripts.settle.key(self.key("ph", &digest.0));
        invocation.arg(crate::support::hex(&fingerprint)).arg(if succeeded { "1" } else { "0" });
        self.call(invocation.invoke_async::<i64>(&mut conn)).await.map(drop)
    }

    /// The live phantoms' digests and records (one round trip for the index, one for them).
    async fn live(
        &self,
        now: u64,
    ) -> Result<Vec<(String, Option<String>, Option<String>, Option<String>)>, StoreError> {
        let mut conn = self.conn.clone();
        let digests: Vec<String> = self
            .call(
                redis::cmd("ZRANGEBYSCORE")
                    .arg(self.named("live"))
                    .arg(format!("({now}"))
                    .arg("+inf")
                    .query_async(&mut conn),
            )
            .await?;
        if digests.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for d in &digests {
            pipe.cmd("HMGET").arg(format!("{}ph:{d}", self.prefix)).arg("r").arg("u").arg("rv");
        }
        let rows: Vec<(Option<String>, Option<String>, Option<String>)> =
            self.call(pipe.query_async(&mut conn)).await?;
        Ok(digests.into_iter().zip(rows).map(|(d, (r, u, rv))| (d, r, u, rv)).collect())
    }

    /// Revokes the live phantoms `which` picks; returns their ids (keyed hashes, never tokens).
    pub async fn revoke(&self, which: &Selector) -> Result<Vec<Arc<str>>, StoreError> {
        let now = crate::support::clock::unix_now();
        let mut revoked = Vec::new();
        for (digest, record, _, rv) in self.live(now).await? {
            let Some(record) = record.filter(|_| rv.as_deref() != Some("1")) else { continue };
            let record = super::record::from_json(&record)?;
            if !which.picks(&record) {
                continue;
            }
            let mut conn = self.conn.clone();
            let mut invocation = self.scripts.revoke.key(format!("{}ph:{digest}", self.prefix));
            invocation.key(self.named("live")).key(self.named("epoch")).arg(&digest);
            if self.call(invocation.invoke_async::<usize>(&mut conn)).await? > 0 {
                revoked.push(record.id.clone());
            }
        }
        self.cache.clear();
        Ok(revoked)
    }

    pub async fn list(&self, now: u64) -> Result<Vec<Listed>, StoreError> {
        let mut out = Vec::new();
        for (_, record, used, rv) in self.live(now).await? {
            let Some(record) = record.filter(|_| rv.as_deref() != Some("1")) else { continue };
            let record = Arc::new(super::record::from_json(&record)?);
            let used: u32 = used.and_then(|u| u.parse().ok()).unwrap_or(0);
            out.push(Listed { uses_left: record.max_uses.map(|m| m.saturating_sub(used)), record });
        }
        out.sort_by(|a, b| a.record.issued_at.cmp(&b.record.issued_at).then_with(|| a.record.id.cmp(&b.record.id)));
        Ok(out)
    }

    /// Live phantoms (for the metrics): the index's count, revoked ones excluded.
    pub(crate) async fn count_live(&self, now: u64) -> Result<u64, StoreError> {
        let mut conn = self.conn.clone();
        self.call(
            redis::cmd("ZCOUNT").arg(self.named("live")).arg(format!("({now}")).arg("+inf").query_async(&mut conn),
        )
        .await
    }

    pub(crate) async fn claim_id_token(&self, key: [u8; 32], until: u64, now: u64) -> Result<bool, StoreError> {
        self.synced()?;
        let mut conn = self.conn.clone();
        let ms = until.saturating_sub(now).max(1) * 1000;
        let set: Option<String> = self
            .call(
                redis::cmd("SET")
                    .arg(self.key("jti", &key))
                    .arg("1")
                    .arg("NX")
                    .arg("PX")
                    .arg(ms)
                    .query_async(&mut conn),
            )
            .await?;
        Ok(set.is_some())
    }

    pub async fn rate(&self, key: &str, rate: Rate, now_ms: u64, take: bool) -> Result<RateOutcome, StoreError> {
        if take {
            self.synced()?;
        }
        let window = u64::try_from(rate.window.as_millis()).unwrap_or(u64::MAX / 2);
        let member = format!("{now_ms}-{}", unique());
        let mut conn = self.conn.clone();
        let mut invocation = self.scripts.rate.key(self.rate_key(key));
        invocation.arg(now_ms).arg(window).arg(rate.max).arg(if take { "1" } else { "0" }).arg(member);
        let answer: Vec<u64> = self.call(invocation.invoke_async(&mut conn)).await?;
        Ok(match answer.as_slice() {
            [0, ms, ..] => RateOutcome::Limited { retry_after: Duration::from_millis(*ms) },
            _ => RateOutcome::Allowed,
        })
    }

    pub(crate) async fn rate_give_back(&self, key: &str, at_ms: u64) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let mut invocation = self.scripts.give_back.key(self.rate_key(key));
        invocation.arg(at_ms);
        self.call(invocation.invoke_async::<i64>(&mut conn)).await.map(drop)
    }

    /// Rate keys name an identity and a package: hashed, so keys stay short and uniform.
    fn rate_key(&self, key: &str) -> String {
        self.key("rate", ring::digest::digest(&ring::digest::SHA256, key.as_bytes()).as_ref())
    }

    /// Tells every replica that credential `name` now has the value whose SHA-256 is
    /// `fingerprint` (never the value itself), kept before it until `overlap_until` (0: not).
    pub(crate) async fn announce_credential(
        &self,
        name: &str,
        fingerprint: &str,
        overlap_until: u64,
        rotated: u64,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let value = format!("{fingerprint}:{overlap_until}:{rotated}");
        self.call(redis::cmd("HSET").arg(self.named("credentials")).arg(name).arg(value).query_async::<i64>(&mut conn))
            .await
            .map(drop)
    }

    /// The credentials' values as last announced: (name, fingerprint, overlap_until, rotated).
    pub(crate) async fn announced_credentials(&self) -> Result<Vec<(String, String, u64, u64)>, StoreError> {
        let mut conn = self.conn.clone();
        let all: Vec<(String, String)> =
            self.call(redis::cmd("HGETALL").arg(self.named("credentials")).query_async(&mut conn)).await?;
        Ok(all
            .into_iter()
            .filter_map(|(name, v)| {
                let mut parts = v.splitn(3, ':');
                let fp = parts.next()?.to_owned();
                let until = parts.next()?.parse().unwrap_or(0);
                let rotated = parts.next().and_then(|r| r.parse().ok()).unwrap_or(0);
                Some((name, fp, until, rotated))
            })
            .collect())
    }

    /// `SET kv:<key> value EX ttl`.
    pub(crate) async fn kv_put(&self, key: &str, value: &str, ttl: u64) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let set = redis::cmd("SET").arg(self.named(&format!("kv:{key}"))).arg(value).arg("EX").arg(ttl.max(1)).clone();
        self.call(set.query_async::<()>(&mut conn)).await
    }

    /// `GET` (or, to take it, `GETDEL`) `kv:<key>`.
    pub(crate) async fn kv_get(&self, key: &str, take: bool) -> Result<Option<String>, StoreError> {
        let mut conn = self.conn.clone();
        let cmd = redis::cmd(if take { "GETDEL" } else { "GET" }).arg(self.named(&format!("kv:{key}"))).clone();
        self.call(cmd.query_async::<Option<String>>(&mut conn)).await
    }

    pub(crate) async fn kv_delete(&self, key: &str) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        self.call(redis::cmd("DEL").arg(self.named(&format!("kv:{key}"))).query_async::<i64>(&mut conn)).await.map(drop)
    }

    /// Redis expires what it holds; this replica drops only its own stale cache entries.
    pub(crate) fn sweep(&self) {
        self.cache.retain(|_, c| c.at.elapsed() < LOOKUP_CACHE);
    }
}

/// A phantom's uses from its hash's `max`, `u`, `ok` and `fp`: `(max, used, resend)`.
fn uses(max: Option<String>, used: Option<String>, ok: Option<String>, fp: Option<String>) -> (Option<u32>, u32, bool) {
    let max = max.and_then(|m| m.parse::<u32>().ok());
    let used = used.and_then(|u| u.parse().ok()).unwrap_or(0);
    let resend = fp.is_some_and(|fp| !fp.is_empty()) && ok.as_deref() == Some("0");
    (max, used, resend)
}

/// Distinguishes two writes counted in the same millisecond, on any replica: a random
/// per-process prefix and a counter.
fn unique() -> String {
    use ring::rand::SecureRandom;
    use std::sync::atomic::AtomicU64;
    static PREFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| {
        let mut b = [0u8; 8];
        let _ = ring::rand::SystemRandom::new().fill(&mut b);
        crate::support::hex(&b)
    });
    format!("{prefix}{:x}", NEXT.fetch_add(1, Ordering::Relaxed))
}
