//! The state of one replica, in its memory (`[state] backend = "memory"`, the default).

use super::store::{
    Listed, Lookup, OpenWrite, PhantomStore, RateOutcome, Selector, StoreError, UseOutcome, MAX_OPEN_WRITES,
};
use crate::phantom::{Fingerprint, PhantomRecord, TokenDigest};
use crate::policy::Rate;
use dashmap::DashMap;
use std::sync::Arc;

/// Seconds an expired phantom is remembered, so its holder hears "expired", not "unknown".
const EXPIRED_GRACE: u64 = 3600;
struct Entry {
    record: Arc<PhantomRecord>,
    used: u32,
    /// The last write spent, and whether it succeeded upstream.
    last: Option<(Fingerprint, bool)>,
    revoked: bool,
    /// Writes opened and not closed yet.
    open: u32,
}

/// The single-replica store.
#[derive(Default)]
pub struct MemoryStore {
    phantoms: DashMap<TokenDigest, Entry>,
    spent_id_tokens: DashMap<[u8; 32], u64>,
    /// Per rate key: the window, and the times (ms) of the writes counted in it, oldest first.
    rates: DashMap<String, (std::time::Duration, std::collections::VecDeque<u64>)>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }
}

impl PhantomStore for MemoryStore {
    async fn insert(&self, digest: TokenDigest, record: PhantomRecord) -> Result<(), StoreError> {
        let entry = Entry { record: Arc::new(record), used: 0, last: None, revoked: false, open: 0 };
        self.phantoms.insert(digest, entry);
        Ok(())
    }

    async fn lookup(&self, digest: &TokenDigest, now: u64) -> Result<Lookup, StoreError> {
        Ok(match self.phantoms.get(digest) {
            None => Lookup::Unknown,
            Some(e) if e.revoked => Lookup::Revoked,
            Some(e) if now >= e.record.expires_at => Lookup::Expired,
            Some(e) => Lookup::Live(e.record.clone()),
        })
    }

    async fn consume_use(
        &self,
        digest: &TokenDigest,
        fingerprint: Fingerprint,
        now: u64,
    ) -> Result<UseOutcome, StoreError> {
        let Some(mut e) = self.phantoms.get_mut(digest) else {
            return Ok(UseOutcome::NotLive);
        };
        if e.revoked || now >= e.record.expires_at {
            return Ok(UseOutcome::NotLive);
        }
        if e.last == Some((fingerprint, false)) {
            return Ok(UseOutcome::Retry);
        }
        let max = e.record.max_uses;
        if max.is_some_and(|m| e.used >= m) {
            return Ok(UseOutcome::Exhausted);
        }
        e.used += 1;
        e.last = Some((fingerprint, false));
        Ok(UseOutcome::Counted { remaining: max.map(|m| m - e.used) })
    }

    async fn open_write(&self, digest: &TokenDigest, now: u64) -> Result<OpenWrite, StoreError> {
        let Some(mut e) = self.phantoms.get_mut(digest) else {
            return Ok(OpenWrite::NotLive);
        };
        if e.revoked || now >= e.record.expires_at {
            return Ok(OpenWrite::NotLive);
        }
        let resend = u32::from(matches!(e.last, Some((_, false))));
        let allowance = match e.record.max_uses {
            Some(max) => (max.saturating_sub(e.used) + resend).min(MAX_OPEN_WRITES),
            None => MAX_OPEN_WRITES,
        };
        Ok(if allowance == 0 {
            OpenWrite::NoUsesLeft
        } else if e.open >= allowance {
            OpenWrite::TooMany
        } else {
            e.open += 1;
            OpenWrite::Opened
        })
    }

    fn close_write(&self, digest: &TokenDigest) {
        if let Some(mut e) = self.phantoms.get_mut(digest) {
            e.open = e.open.saturating_sub(1);
        }
    }

    async fn settle(&self, digest: &TokenDigest, fingerprint: Fingerprint, succeeded: bool) -> Result<(), StoreError> {
        if let Some(mut e) = self.phantoms.get_mut(digest) {
            if e.last.is_some_and(|(fp, _)| fp == fingerprint) {
                e.last = Some((fingerprint, succeeded));
            }
        }
        Ok(())
    }

    async fn revoke(&self, which: &Selector) -> Result<Vec<Arc<str>>, StoreError> {
        let mut ids = Vec::new();
        for mut e in self.phantoms.iter_mut() {
            if !e.revoked && which.picks(&e.record) {
                e.revoked = true;
                ids.push(e.record.id.clone());
            }
        }
        Ok(ids)
    }

    async fn list(&self, now: u64) -> Result<Vec<Listed>, StoreError> {
        let mut out: Vec<Listed> = self
            .phantoms
            .iter()
            .filter(|e| !e.revoked && now < e.record.expires_at)
            .map(|e| Listed {
                record: e.record.clone(),
                uses_left: e.record.max_uses.map(|m| m.saturating_sub(e.used)),
            })
            .collect();
        out.sort_by(|a, b| a.record.issued_at.cmp(&b.record.issued_at).then_with(|| a.record.id.cmp(&b.record.id)));
        Ok(out)
    }

    async fn claim_id_token(&self, key: [u8; 32], until: u64, now: u64) -> Result<bool, StoreError> {
        use dashmap::mapref::entry::Entry as MapEntry;
        Ok(match self.spent_id_tokens.entry(key) {
            MapEntry::Occupied(mut o) if *o.get() <= now => {
                o.insert(until);
                true
            }
            MapEntry::Occupied(_) => false,
            MapEntry::Vacant(v) => {
                v.insert(until);
                true
            }
        })
    }

    async fn rate(&self, key: &str, rate: Rate, now_ms: u64, take: bool) -> Result<RateOutcome, StoreError> {
        let window = u64::try_from(rate.window.as_millis()).unwrap_or(u64::MAX);
        let mut entry = self.rates.entry(key.to_owned()).or_insert_with(|| (rate.window, Default::default()));
        let (kept_for, times) = &mut *entry;
        *kept_for = (*kept_for).max(rate.window);
        while times.front().is_some_and(|&t| t.saturating_add(window) <= now_ms) {
            times.pop_front();
        }
        if times.len() >= rate.max as usize {
            let oldest = times.front().copied().unwrap_or(now_ms);
            let ms = oldest.saturating_add(window).saturating_sub(now_ms);
            return Ok(RateOutcome::Limited { retry_after: std::time::Duration::from_millis(ms.max(1)) });
        }
        if take {
            times.push_back(now_ms);
        }
        Ok(RateOutcome::Allowed)
    }

    async fn rate_give_back(&self, key: &str, at_ms: u64) -> Result<(), StoreError> {
        if let Some(mut entry) = self.rates.get_mut(key) {
            if let Some(i) = entry.1.iter().rposition(|&t| t == at_ms) {
                entry.1.remove(i);
            }
        }
        Ok(())
    }

    async fn sweep(&self, now: u64) {
        self.phantoms.retain(|_, e| now < e.record.expires_at.saturating_add(EXPIRED_GRACE));
        self.spent_id_tokens.retain(|_, until| now < *until);
        let now_ms = now.saturating_mul(1000);
        self.rates.retain(|_, (window, times)| {
            let window = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
            times.back().is_some_and(|&t| t.saturating_add(window) > now_ms)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::npm::{ActionKind, PackageName};
    use crate::policy::{Identity, Scope};
    use std::future::Future;

    fn record(expires_at: u64, max_uses: Option<u32>) -> PhantomRecord {
        PhantomRecord {
            id: "id".into(),
            identity: Identity { issuer: "github".into(), claims: Default::default() },
            summary: crate::audit::identity_summary("github", &Default::default()),
            scope: Scope {
                packages: vec![PackageName::parse("web").unwrap()],
                actions: [ActionKind::Publish].into_iter().collect(),
            },
            grant: "g".into(),
            issued_at: 0,
            expires_at,
            max_uses,
        }
    }

    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
    }

    #[test]
    fn uses_retries_and_expiry() {
        block_on(async {
            let s = MemoryStore::new();
            let d = TokenDigest([1; 32]);
            s.insert(d, record(100, Some(2))).await.unwrap();
            assert!(matches!(s.lookup(&d, 50).await.unwrap(), Lookup::Live(_)));
            assert!(matches!(s.lookup(&d, 100).await.unwrap(), Lookup::Expired));
            assert!(matches!(s.lookup(&TokenDigest([2; 32]), 50).await.unwrap(), Lookup::Unknown));
            let use_ = |fp: u8| s.consume_use(&d, [fp; 32], 50);
            // Two uses: two writes may be open at once, not three.
            let open = || s.open_write(&d, 50);
            assert_eq!((open().await.unwrap(), open().await.unwrap()), (OpenWrite::Opened, OpenWrite::Opened));
            assert_eq!(open().await.unwrap(), OpenWrite::TooMany);
            s.close_write(&d);
            s.close_write(&d);
            assert_eq!(use_(1).await.unwrap(), UseOutcome::Counted { remaining: Some(1) });
            // The upstream failed (npm retries on 5xx): the same request again is free.
            s.settle(&d, [1; 32], false).await.unwrap();
            assert_eq!(use_(1).await.unwrap(), UseOutcome::Retry);
            // It succeeded: sending it again is a new use.
            s.settle(&d, [1; 32], true).await.unwrap();
            assert_eq!(use_(1).await.unwrap(), UseOutcome::Counted { remaining: Some(0) });
            // The last use is spent and pending: it may still be resent if it fails, once at a time.
            assert_eq!(open().await.unwrap(), OpenWrite::Opened);
            assert_eq!(open().await.unwrap(), OpenWrite::TooMany);
            s.close_write(&d);
            s.settle(&d, [1; 32], true).await.unwrap();
            assert_eq!(open().await.unwrap(), OpenWrite::NoUsesLeft, "a spent phantom may open a write");
            assert_eq!(use_(3).await.unwrap(), UseOutcome::Exhausted);
            // Only the last request is a retry, not any earlier one.
            assert_eq!(use_(2).await.unwrap(), UseOutcome::Exhausted);
            assert_eq!(s.consume_use(&d, [4; 32], 100).await.unwrap(), UseOutcome::NotLive);
            assert_eq!(s.list(50).await.unwrap()[0].uses_left, Some(0));
            assert!(s.revoke(&Selector::Id("other".into())).await.unwrap().is_empty());
            assert_eq!(s.revoke(&Selector::Id("id".into())).await.unwrap(), [Arc::from("id")]);
            assert!(s.revoke(&Selector::All).await.unwrap().is_empty());
            assert!(s.list(50).await.unwrap().is_empty());
            assert!(matches!(s.lookup(&d, 50).await.unwrap(), Lookup::Revoked));
            assert_eq!(use_(1).await.unwrap(), UseOutcome::NotLive);
            assert_eq!(s.open_write(&d, 50).await.unwrap(), OpenWrite::NotLive);
            s.sweep(100 + EXPIRED_GRACE).await;
            assert!(matches!(s.lookup(&d, 50).await.unwrap(), Lookup::Unknown));
        });
    }

    #[test]
    fn unlimited_phantoms_open_a_bounded_number_of_writes() {
        block_on(async {
            let s = MemoryStore::new();
            let d = TokenDigest([3; 32]);
            s.insert(d, record(100, None)).await.unwrap();
            for _ in 0..MAX_OPEN_WRITES {
                assert_eq!(s.open_write(&d, 50).await.unwrap(), OpenWrite::Opened);
            }
            assert_eq!(s.open_write(&d, 50).await.unwrap(), OpenWrite::TooMany);
            s.close_write(&d);
            assert_eq!(s.open_write(&d, 50).await.unwrap(), OpenWrite::Opened);
        });
    }

    #[test]
    fn rates_slide() {
        block_on(async {
            let s = MemoryStore::new();
            let rate = Rate { max: 2, window: std::time::Duration::from_secs(10) };
            let take = |ms| s.rate("k", rate, ms, true);
            assert_eq!(s.rate("k", rate, 0, false).await.unwrap(), RateOutcome::Allowed);
            assert_eq!(take(1_000).await.unwrap(), RateOutcome::Allowed);
            assert_eq!(take(2_000).await.unwrap(), RateOutcome::Allowed);
            let limited = RateOutcome::Limited { retry_after: std::time::Duration::from_millis(8_000) };
            assert_eq!(take(3_000).await.unwrap(), limited);
            assert_eq!(s.rate("k", rate, 3_000, false).await.unwrap(), limited, "a look is not a write");
            assert_eq!(s.rate("other", rate, 3_000, true).await.unwrap(), RateOutcome::Allowed);
            // A write that did not go through is given back: the window has room again.
            s.rate_give_back("k", 2_000).await.unwrap();
            assert_eq!(take(3_500).await.unwrap(), RateOutcome::Allowed);
            s.rate_give_back("k", 3_500).await.unwrap();
            s.rate_give_back("k", 3_500).await.unwrap();
            assert_eq!(take(2_000).await.unwrap(), RateOutcome::Allowed);
            // The first write leaves the window at 11 s.
            assert_eq!(take(11_000).await.unwrap(), RateOutcome::Allowed);
            assert!(matches!(take(11_500).await.unwrap(), RateOutcome::Limited { .. }));
            s.sweep(30).await;
            assert!(s.rates.is_empty(), "a lapsed window was kept");
        });
    }

    #[test]
    fn id_tokens_are_spent_once_until_they_lapse() {
        block_on(async {
            let s = MemoryStore::new();
            assert!(s.claim_id_token([7; 32], 200, 100).await.unwrap());
            assert!(!s.claim_id_token([7; 32], 200, 150).await.unwrap());
            assert!(!s.claim_id_token([7; 32], 200, 199).await.unwrap());
            assert!(s.claim_id_token([8; 32], 200, 150).await.unwrap());
            s.sweep(201).await;
            assert!(s.spent_id_tokens.is_empty());
        });
    }
}
