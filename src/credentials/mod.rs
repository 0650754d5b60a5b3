//! The real registry credentials: read at start from a file or an environment variable, and
//! swapped for new values by a rotation or a reload (`ops::rotate`, `ops::reload`).
//!
//! A credential is reachable only through `Credentials::for_authorized`, which takes proof that
//! policy permitted a request and returns an `UpstreamAuth` for that request (its method and
//! path with the credential), the only value the upstream client sends: there is no path from
//! an unchecked request to a real token, nor from a checked one to another request.
//! A request holds the credential it started with until it ends, so a swap never changes the
//! token under a request in flight.

pub mod deadline;

use crate::config::{CredentialConfig, RotationConfig};
use crate::npm::NpmRequest;
use crate::policy::{Authorized, Glob};
use crate::support::secret::read_secret;
use crate::support::secret::Secret;
use arc_swap::{ArcSwap, ArcSwapOption};
use deadline::Deadline;
use http::{HeaderValue, Method};
use memchr::memmem;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use yoke::{Yoke, Yokeable};
use zeroize::Zeroizing;

pub struct Credential {
    pub name: String,
    pub upstream: String,
    pub packages: Vec<Glob>,
    pub expires: Option<u64>,
    secret: Secret,
    /// `Bearer <token>`, marked sensitive so HTTP/2 never indexes it in HPACK tables. (A
    /// `HeaderValue` cannot be zeroized; this one copy lives as long as the credential.)
    authorization: HeaderValue,
    /// The token's bytes and a searcher for them, shared by every response scrubber instead of
    /// copied or built per response.
    scrub: Arc<ScrubPattern>,
    /// SHA-256 of the token: compares two values without holding both in the clear, and names
    /// a value to other replicas.
    fingerprint: [u8; 32],
}

impl Credential {
    pub fn from_secret(cfg: &CredentialConfig, secret: Secret) -> Result<Credential, String> {
        let mut authorization = HeaderValue::from_str(&format!("Bearer {}", secret.expose()))
            .map_err(|_| format!("credential `{}`: the token has characters a header cannot carry", cfg.name))?;
        authorization.set_sensitive(true);
        let scrub = Arc::new(ScrubPattern::new(secret.expose().as_bytes().to_vec()));
        let digest = ring::digest::digest(&ring::digest::SHA256, secret.expose().as_bytes());
        let mut fingerprint = [0u8; 32];
        fingerprint.copy_from_slice(digest.as_ref());
        Ok(Credential {
            scrub,
            fingerprint,
            name: cfg.name.clone(),
            upstream: cfg.upstream.clone(),
            packages: cfg.packages.clone(),
            expires: cfg.expires,
            secret,
            authorization,
        })
    }

    pub fn authorization(&self) -> &HeaderValue {
        &self.authorization
    }

    /// The token itself.
    pub fn secret(&self) -> &Secret {
        &self.secret
    }

    /// The token's bytes, for cutting it out of responses.
    pub(crate) fn scrub_pattern(&self) -> &Arc<ScrubPattern> {
        &self.scrub
    }

    pub fn fingerprint(&self) -> &[u8; 32] {
        &self.fingerprint
    }
}

/// A credential's bytes, as the scrubber looks for them: a substring searcher built once per
/// value (not per response or per chunk), borrowing the bytes it searches for, which are
/// zeroized when the last response that uses them ends.
pub(crate) struct ScrubPattern(Yoke<Searcher<'static>, Arc<Zeroizing<Vec<u8>>>>);

#[derive(Yokeable)]
pub(crate) struct Searcher<'a>(memmem::Finder<'a>);

impl ScrubPattern {
    pub(crate) fn new(bytes: Vec<u8>) -> ScrubPattern {
        let bytes = Arc::new(Zeroizing::new(bytes));
        ScrubPattern(Yoke::attach_to_cart(bytes, |b| Searcher(memmem::Finder::new(&b[..]))))
    }

    /// Where the credential first occurs in `haystack`.
    pub(crate) fn find(&self, haystack: &[u8]) -> Option<usize> {
        self.0.get().0.find(haystack)
    }

    /// The credential's bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        self.0.get().0.needle()
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("name", &self.name)
            .field("upstream", &self.upstream)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// One upstream request as it will be sent: its method and path, rebuilt from the classified
/// request that policy authorized (or that goes anonymously), and the credential it carries.
/// Only `Credentials::for_authorized` makes one with a caller's grant's credential, from that
/// grant's proof for that very request, so a credential is never spent on another request
/// than the one it was authorized for. It holds the credential for as long as the request
/// runs, a rotation notwithstanding.
#[derive(Debug, Clone)]
pub(crate) struct UpstreamAuth {
    method: Method,
    path: String,
    credential: Option<Arc<Credential>>,
    /// The value before the last rotation, during its overlap window: a read the upstream
    /// refuses with `credential` may be tried again with it.
    previous: Option<Arc<Credential>>,
}

impl UpstreamAuth {
    /// `request` without a credential: `Authorization` is not sent upstream.
    pub(crate) fn anonymous(request: &NpmRequest) -> UpstreamAuth {
        UpstreamAuth { method: request.method.clone(), path: request.upstream_path(), credential: None, previous: None }
    }

    /// The broker's own read with `credential` (the account check and the read of a rotation's
    /// canary): never on a caller's behalf, so no policy decision stands behind it, and never
    /// anything but a `GET`.
    pub(crate) fn for_broker(credential: Arc<Credential>, read: &NpmRequest) -> UpstreamAuth {
        UpstreamAuth { method: Method::GET, path: read.upstream_path(), credential: Some(credential), previous: None }
    }

    /// A read the broker makes with this request's credential to check it (does the package
    /// exist, the packument a write is compared with, a new stage's status): a `GET`, whatever
    /// this request is.
    pub(crate) fn then_get(&self, read: &NpmRequest) -> UpstreamAuth {
        UpstreamAuth {
            method: Method::GET,
            path: read.upstream_path(),
            credential: self.credential.clone(),
            previous: None,
        }
    }

    pub(crate) fn method(&self) -> &Method {
        &self.method
    }

    /// The path and query, from the classified request.
    pub(crate) fn path(&self) -> &str {
        &self.path
    }

    pub(crate) fn credential(&self) -> Option<&Credential> {
        self.credential.as_deref()
    }

    /// The same request with the previous value of the credential, in its overlap window.
    pub(crate) fn with_previous(&self) -> Option<UpstreamAuth> {
        self.previous.as_ref().map(|p| UpstreamAuth {
            method: self.method.clone(),
            path: self.path.clone(),
            credential: Some(p.clone()),
            previous: None,
        })
    }
}

/// How many swapped-out values a credential remembers (by fingerprint), so that one coming
/// back does not count as a rotation.
const RETIRED: usize = 16;

/// One configured credential: its value now, the one before it during an overlap, and what
/// the inventory knows of it.
pub(crate) struct Slot {
    pub(crate) config: CredentialConfig,
    current: ArcSwap<Credential>,
    previous: ArcSwapOption<Overlap>,
    /// Unix seconds of the last request sent with it (0: none since start).
    last_used: AtomicU64,
    /// Unix seconds of the last rotation this replica saw (0: none), or that the state store
    /// remembered from an earlier run.
    rotated: AtomicU64,
    /// The values this replica swapped out (their fingerprints, the newest last, at most
    /// `RETIRED`), each with when it had been rotated in (0: counted from `created`). A value
    /// that comes back is not a rotation: its deadline counts from when it first came in.
    retired: Mutex<Vec<([u8; 32], u64)>>,
    /// The upstream account it authenticates as (`GET /-/whoami`), and when that was asked.
    pub(crate) account: Mutex<Option<(String, std::time::Instant)>>,
    /// Held by a rotation from its canary to its swap, and by a reload while it reads the
    /// source: a reload that the rotation's own write to the file woke waits, then finds the
    /// value in use and leaves it (rather than canary it a second time).
    pub(crate) changing: tokio::sync::Mutex<()>,
}

struct Overlap {
    credential: Arc<Credential>,
    /// Unix seconds.
    until: u64,
}

impl Slot {
    pub(crate) fn current(&self) -> Arc<Credential> {
        self.current.load_full()
    }

    /// The previous value and the end of its overlap window, while it lasts.
    pub(crate) fn overlap(&self, now: u64) -> Option<(Arc<Credential>, u64)> {
        let o = self.previous.load();
        o.as_ref().filter(|o| now < o.until).map(|o| (o.credential.clone(), o.until))
    }

    pub(crate) fn last_used(&self) -> Option<u64> {
        Some(self.last_used.load(Ordering::Relaxed)).filter(|t| *t > 0)
    }

    /// When the value in use was rotated in, if the broker saw it.
    pub(crate) fn rotated(&self) -> Option<u64> {
        Some(self.rotated.load(Ordering::Relaxed)).filter(|t| *t > 0)
    }

    /// Remembers a rotation at `at` (unix seconds) of the value in use, unless a later one is
    /// known.
    pub(crate) fn rotated_at(&self, at: u64) {
        self.rotated.fetch_max(at, Ordering::Relaxed);
    }

    /// Its rotation deadline now, if it has one.
    pub(crate) fn deadline(&self, rotation: &RotationConfig, now: u64) -> Option<Deadline> {
        deadline::deadline(&self.config, self.rotated(), rotation, now)
    }

    /// When `fingerprint` was rotated in, if it is a value this replica used before and swapped
    /// out (0: it was counted from `created`).
    pub(crate) fn retired_since(&self, fingerprint: &[u8; 32]) -> Option<u64> {
        let retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        retired.iter().find(|(fp, _)| fp == fingerprint).map(|(_, since)| *since)
    }

    /// New requests use `next` from now on; requests in flight keep the value they hold. With
    /// `overlap_until`, the old value stays at hand until then (else it is dropped, and
    /// zeroized, once the last request holding it ends). `rotated` is when the rotation
    /// happened (unix seconds): the credential's rotation deadline counts from it, unless `next`
    /// is a value used before, whose deadline counts from when it first came in. Returns when
    /// the deadline counts from (0: from `created`), for the other replicas to hear.
    pub(crate) fn swap(&self, next: Credential, overlap_until: Option<u64>, rotated: u64) -> u64 {
        let fingerprint = *next.fingerprint();
        let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        let since = match retired.iter().position(|(fp, _)| *fp == fingerprint) {
            Some(i) => retired.remove(i).1,
            None => rotated,
        };
        let old = self.current.swap(Arc::new(next));
        retired.retain(|(fp, _)| fp != old.fingerprint());
        if retired.len() == RETIRED {
            retired.remove(0);
        }
        retired.push((*old.fingerprint(), self.rotated.load(Ordering::Relaxed)));
        self.rotated.store(since, Ordering::Relaxed);
        drop(retired);
        self.previous.store(overlap_until.map(|until| Arc::new(Overlap { credential: old, until })));
        since
    }
}

#[derive(Default)]
pub struct Credentials {
    by_name: HashMap<String, Slot>,
}

/// Names only: a credential's value never reaches a log line, whatever `Credential` prints.
impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&str> = self.by_name.keys().map(String::as_str).collect();
        names.sort_unstable();
        f.debug_struct("Credentials").field("names", &names).field("secrets", &"<redacted>").finish()
    }
}

impl Credentials {
    pub fn load(configs: &[CredentialConfig]) -> Result<Credentials, String> {
        let mut by_name = HashMap::new();
        for cfg in configs {
            let secret = read_secret(&cfg.source).map_err(|e| format!("credential `{}`: {e}", cfg.name))?;
            let credential = Credential::from_secret(cfg, secret)?;
            by_name.insert(
                cfg.name.clone(),
                Slot {
                    config: cfg.clone(),
                    current: ArcSwap::from_pointee(credential),
                    previous: ArcSwapOption::empty(),
                    last_used: AtomicU64::new(0),
                    rotated: AtomicU64::new(0),
                    retired: Mutex::new(Vec::new()),
                    account: Mutex::new(None),
                    changing: tokio::sync::Mutex::new(()),
                },
            );
        }
        Ok(Credentials { by_name })
    }

    /// How a request that policy authorized authenticates to `upstream`: with its grant's
    /// credential, which must belong to that upstream.
    pub(crate) fn for_authorized(
        &self,
        authorized: &Authorized<NpmRequest>,
        upstream: &str,
    ) -> Result<UpstreamAuth, String> {
        let grant = authorized.grant();
        let request = authorized.get();
        match self.by_name.get(&grant.credential) {
            Some(slot) if slot.config.upstream == upstream => {
                let now = crate::support::clock::unix_now();
                slot.last_used.store(now, Ordering::Relaxed);
                Ok(UpstreamAuth {
                    method: request.method.clone(),
                    path: request.upstream_path(),
                    credential: Some(slot.current()),
                    previous: slot.overlap(now).map(|(c, _)| c),
                })
            }
            Some(_) => Err(format!("grant `{}`'s credential does not serve upstream `{upstream}`", grant.name)),
            None => Err(format!("grant `{}` names an unknown credential", grant.name)),
        }
    }

    /// The current value of every credential.
    pub fn iter(&self) -> impl Iterator<Item = Arc<Credential>> + '_ {
        self.by_name.values().map(Slot::current)
    }

    pub(crate) fn slot(&self, name: &str) -> Option<&Slot> {
        self.by_name.get(name)
    }

    pub(crate) fn slots(&self) -> impl Iterator<Item = &Slot> {
        self.by_name.values()
    }

    /// Drops previous values whose overlap window has ended (they are zeroized once no request
    /// holds them).
    pub(crate) fn sweep(&self, now: u64) {
        for slot in self.by_name.values() {
            if slot.previous.load().as_ref().is_some_and(|o| now >= o.until) {
                slot.previous.store(None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::npm::PackageName;
    use crate::support::secret::SecretSource;

    #[test]
    fn the_brokers_checks_with_a_writes_credential_are_reads() {
        let web = PackageName::parse("web").unwrap();
        let write = UpstreamAuth { method: Method::PUT, path: "/web".into(), credential: None, previous: None };
        let check = write.then_get(&NpmRequest::packument(&web, true));
        assert_eq!((check.method(), check.path()), (&Method::GET, "/web?write=true"));
        let anonymous = UpstreamAuth::anonymous(&NpmRequest::whoami());
        assert!(anonymous.credential().is_none() && anonymous.with_previous().is_none());
    }

    #[test]
    fn debug_is_redacted_and_sources_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "npm_CANARY_91f0\n").unwrap();
        let cfg = CredentialConfig {
            name: "c".into(),
            upstream: "u".into(),
            source: SecretSource::File(path),
            packages: vec![],
            class: None,
            publish: crate::config::Capability::Direct,
            created: None,
            expires: None,
            top: false,
        };
        let creds = Credentials::load(std::slice::from_ref(&cfg)).unwrap();
        let c = creds.by_name.get("c").unwrap().current();
        assert_eq!(c.secret().expose(), "npm_CANARY_91f0");
        assert_eq!(c.authorization(), "Bearer npm_CANARY_91f0");
        assert!(c.authorization().is_sensitive());
        assert!(!format!("{c:?} {creds:?}").contains("CANARY"));

        let missing = SecretSource::Env("PHANTOM_TEST_SURELY_UNSET_VAR".into());
        assert!(read_secret(&missing).unwrap_err().contains("PHANTOM_TEST_SURELY_UNSET_VAR"));
        std::fs::write(dir.path().join("bad"), "two words").unwrap();
        assert!(read_secret(&SecretSource::File(dir.path().join("bad"))).is_err());
    }

    #[test]
    fn a_value_that_comes_back_keeps_its_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "npm_first\n").unwrap();
        let cfg = CredentialConfig {
            name: "c".into(),
            upstream: "u".into(),
            source: SecretSource::File(path),
            packages: vec![],
            class: Some('A'),
            publish: crate::config::Capability::Direct,
            created: Some(1_000),
            expires: None,
            top: false,
        };
        let creds = Credentials::load(std::slice::from_ref(&cfg)).unwrap();
        let slot = creds.slot("c").unwrap();
        let value = |v: &str| Credential::from_secret(&cfg, Secret::new(v.to_owned())).unwrap();
        let first = *slot.current().fingerprint();
        assert_eq!(slot.swap(value("npm_second"), None, 5_000), 5_000, "a new value counts from its swap");
        assert_eq!(slot.retired_since(&first), Some(0), "the first value counted from `created`");
        assert_eq!(slot.swap(value("npm_third"), None, 9_000), 9_000);
        assert_eq!(slot.swap(value("npm_second"), None, 12_000), 5_000, "the second value came back");
        assert_eq!(slot.rotated(), Some(5_000));
        assert_eq!(slot.swap(value("npm_first"), None, 13_000), 0, "the first value came back");
        assert_eq!(slot.rotated(), None);
        assert!(slot.retired_since(&first).is_none(), "the value in use is not retired");
        for n in 0..2 * RETIRED {
            slot.swap(value(&format!("npm_v{n}")), None, 20_000 + n as u64);
        }
        let retired = slot.retired.lock().unwrap();
        assert_eq!(retired.len(), RETIRED, "the history is bounded");
        assert_eq!(retired.last().map(|r| r.1), Some(20_000 + 2 * RETIRED as u64 - 2));
    }
}
