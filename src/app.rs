//! The state every request shares, built once from the config: policy, issuers, the state
//! store (phantoms, uses, revocations, freezes, rates), credentials, upstream clients, the audit
//! log, the metrics and the memory budget for write bodies.

use crate::audit::Audit;
use crate::config::Config;
use crate::credentials::Credentials;
use crate::identity::Issuers;
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::policy::Policy;
use crate::state::Store;
use crate::support::budget::MemoryBudget;
use crate::support::secret::read_secret;
use crate::support::secret::Secret;
use crate::upstream::Upstreams;
use ring::rand::{SecureRandom, SystemRandom};
use std::sync::{Arc, RwLock};

/// Everything a request needs, built once from the config.
pub struct App {
    pub config: Config,
    policy: RwLock<Arc<Policy>>,
    pub issuers: Issuers,
    pub store: Store,
    pub metrics: Metrics,
    pub credentials: Credentials,
    upstreams: Arc<Upstreams>,
    pub audit: Arc<Audit>,
    pub rng: SystemRandom,
    npm_audience: String,
    pub(crate) admin_token: Option<Secret>,
    /// Memory for write bodies held at once (`server.max_buffered_bytes`).
    pub(crate) write_memory: MemoryBudget,
    /// Webhooks told of staged versions.
    pub(crate) notifier: Arc<Notifier>,
    /// Packages the upstreams were seen to have (a first publish needs `create`).
    pub(crate) known_packages: crate::upstream::KnownPackages,
    request_prefix: String,
    requests: std::sync::atomic::AtomicU64,
    /// `public_url` with a trailing `/`: what packuments' tarball URLs are rebased onto.
    pub(crate) public_base: bytes::Bytes,
}

/// Sets the upstream clients of the current worker thread: its pooled connections live on its
/// own runtime, so a request never wakes another thread.
pub(crate) fn set_worker_upstreams(upstreams: Upstreams) {
    WORKER_UPSTREAMS.with(|w| *w.borrow_mut() = Some(Arc::new(upstreams)));
}

impl App {
    /// Loads policy, credentials and the audit log, and prepares the clients. Any error stops
    /// the start with a message naming the file and the problem.
    pub fn new(config: Config) -> Result<App, String> {
        let policy = config.load_policy().map_err(|e| e.to_string())?;
        let admin_token = match &config.admin {
            Some(a) => Some(read_secret(&a.token).map_err(|e| format!("admin token: {e}"))?),
            None => None,
        };
        let rng = SystemRandom::new();
        let audit_key = match &config.audit.key {
            Some(source) => read_secret(source).map_err(|e| format!("audit key: {e}"))?.expose().as_bytes().to_vec(),
            None => {
                let mut key = vec![0u8; 32];
                rng.fill(&mut key).map_err(|_| "the system random source failed")?;
                if matches!(config.state, crate::config::StateConfig::Redis(_)) {
                    tracing::warn!("token ids in the audit log use a per-process key: set [audit] key (the same on every replica) so that replicas name a phantom alike");
                } else {
                    tracing::info!("token ids in the audit log use a per-process key; set [audit] key to keep them stable across restarts");
                }
                key
            }
        };
        let mut prefix = [0u8; 4];
        rng.fill(&mut prefix).map_err(|_| "the system random source failed")?;
        let metrics = Metrics::new(&config);
        let app = App {
            store: Store::new(&config.state)?,
            request_prefix: crate::support::hex(&prefix),
            public_base: crate::upstream::base_url(&config.server.public_url).into(),
            requests: std::sync::atomic::AtomicU64::new(0),
            write_memory: MemoryBudget::new(config.server.max_buffered_bytes),
            notifier: Arc::new(Notifier::new(&config.notify, metrics.notification_counters())?),
            known_packages: Default::default(),
            npm_audience: config.server.npm_audience(),
            issuers: Issuers::new(&config.issuers)?,
            credentials: Credentials::load(&config.credentials)?,
            upstreams: Arc::new(Upstreams::new(&config.upstreams, config.server.upstream_timeout, &metrics)?),
            metrics,
            audit: Arc::new(Audit::open(&config.audit.path, &audit_key).map_err(|e| e.to_string())?),
            policy: RwLock::new(Arc::new(policy)),
            rng,
            admin_token,
            config,
        };
        Ok(app)
    }

    /// The policy in force now.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The upstream clients of the current worker thread (or the shared ones elsewhere).
    pub(crate) fn upstreams(&self) -> Arc<Upstreams> {
        WORKER_UPSTREAMS.with(|w| w.borrow().clone()).unwrap_or_else(|| self.upstreams.clone())
    }

    pub fn npm_audience(&self) -> &str {
        &self.npm_audience
    }

    /// Re-reads the policy directory. On any error the policy in force is kept.
    pub(crate) fn reload_policy(&self) -> Result<usize, String> {
        let policy = self.config.load_policy().map_err(|e| e.to_string())?;
        let n = policy.len();
        *self.policy.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(policy);
        Ok(n)
    }

    /// Whether writes to `package` are frozen.
    pub(crate) fn is_frozen(&self, package: &crate::npm::PackageName) -> bool {
        self.store.is_frozen(package)
    }

    /// Freezes writes to exactly this package (a burst past a grant's rate).
    pub(crate) async fn freeze(&self, package: &crate::npm::PackageName) -> Result<(), crate::state::StoreError> {
        let Ok(glob) = crate::policy::Glob::new(package.as_str()) else { return Ok(()) };
        self.store.set_frozen(&[glob], true).await
    }
}

thread_local! {
    /// A worker thread's own upstream clients: its pooled connections live on its own runtime,
    /// so a request never wakes another thread.
    static WORKER_UPSTREAMS: std::cell::RefCell<Option<Arc<Upstreams>>> = const { std::cell::RefCell::new(None) };
}

impl App {
    /// A new request id: a random per-process prefix and a counter (no system call per request).
    pub(crate) fn new_request_id(&self) -> String {
        let n = self.requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        request_id(&self.request_prefix, n)
    }
}

/// `prefix` and `n` in hexadecimal, at least 10 digits (as `{n:010x}`, without the formatter).
fn request_id(prefix: &str, n: u64) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let width = (16 - n.leading_zeros() as usize / 4).max(10);
    let mut id = String::with_capacity(prefix.len() + 16);
    id.push_str(prefix);
    for i in (0..width).rev() {
        id.push(DIGITS[(n >> (4 * i)) as usize & 15] as char);
    }
    id
}

#[cfg(test)]
mod tests {
    #[test]
    fn request_ids_are_the_prefix_and_ten_or_more_hex_digits() {
        for n in [0, 1, 0xabc, 0xff_ffff_ffff, 0x100_0000_0000, 0x1234_5678_9abc_def0, u64::MAX] {
            assert_eq!(super::request_id("p-", n), format!("p-{n:010x}"));
        }
    }
}
