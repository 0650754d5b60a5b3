//! The registry-facing HTTPS listener and the state every request shares.

mod admin;
mod conn;
mod exchange;
mod handler;
mod publish;
mod refusal;

pub use refusal::Refusal;

use crate::audit::Audit;
use crate::config::Config;
use crate::credentials::{read_secret, Credentials};
use crate::identity::Issuers;
use crate::net;
use crate::phantom::{MemoryStore, PhantomStore};
use crate::policy::{Glob, Policy, PolicyContext};
use crate::secret::Secret;
use crate::upstream::Upstreams;
use conn::Drain;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use ring::rand::{SecureRandom, SystemRandom};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket};
use tokio_rustls::TlsAcceptor;

const SWEEP_INTERVAL: Duration = Duration::from_secs(30);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything a request needs, built once from the config.
pub struct App {
    pub config: Config,
    policy: RwLock<Arc<Policy>>,
    pub issuers: Issuers,
    pub store: MemoryStore,
    pub credentials: Credentials,
    upstreams: Arc<Upstreams>,
    pub audit: Audit,
    pub rng: SystemRandom,
    npm_audience: String,
    /// Package patterns whose writes are frozen (incident response).
    frozen: RwLock<Vec<Glob>>,
    admin_token: Option<Secret>,
    /// Permits, in KiB, for request bodies held in memory (`server.max_buffered_bytes`).
    buffer_budget: Arc<tokio::sync::Semaphore>,
    buffer_budget_kib: u32,
    request_prefix: String,
    requests: std::sync::atomic::AtomicU64,
}

impl App {
    /// Loads policy, credentials and the audit log, and prepares the clients. Any error stops
    /// the start with a message naming the file and the problem.
    pub fn new(config: Config) -> Result<App, String> {
        let issuers = config.issuer_names();
        let credentials = config.credential_names();
        let ctx = PolicyContext {
            issuers: &issuers,
            credentials: &credentials,
            default_ttl: config.server.default_ttl,
            max_ttl: config.server.max_ttl,
        };
        let policy = Policy::load_dir(&config.policy_dir, &ctx).map_err(|e| e.to_string())?;
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
                tracing::info!("token ids in the audit log use a per-process key; set [audit] key to keep them stable across restarts");
                key
            }
        };
        let buffer_budget_kib = u32::try_from(config.server.max_buffered_bytes / 1024).unwrap_or(u32::MAX >> 4);
        let buffer_budget_kib = buffer_budget_kib.min(tokio::sync::Semaphore::MAX_PERMITS as u32);
        let mut prefix = [0u8; 4];
        rng.fill(&mut prefix).map_err(|_| "the system random source failed")?;
        let app = App {
            request_prefix: crate::audit::hex(&prefix),
            requests: std::sync::atomic::AtomicU64::new(0),
            buffer_budget: Arc::new(tokio::sync::Semaphore::new(buffer_budget_kib as usize)),
            buffer_budget_kib,
            npm_audience: config.server.npm_audience(),
            issuers: Issuers::new(&config.issuers)?,
            credentials: Credentials::load(&config.credentials)?,
            upstreams: Arc::new(Upstreams::new(&config.upstreams, config.server.upstream_timeout)?),
            audit: Audit::open(&config.audit.path, &audit_key).map_err(|e| e.to_string())?,
            policy: RwLock::new(Arc::new(policy)),
            store: MemoryStore::new(),
            rng,
            frozen: RwLock::new(Vec::new()),
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
    pub fn upstreams(&self) -> Arc<Upstreams> {
        WORKER_UPSTREAMS.with(|w| w.borrow().clone()).unwrap_or_else(|| self.upstreams.clone())
    }

    pub fn npm_audience(&self) -> &str {
        &self.npm_audience
    }

    /// Re-reads the policy directory. On any error the policy in force is kept.
    pub fn reload_policy(&self) -> Result<usize, String> {
        let issuers = self.config.issuer_names();
        let credentials = self.config.credential_names();
        let ctx = PolicyContext {
            issuers: &issuers,
            credentials: &credentials,
            default_ttl: self.config.server.default_ttl,
            max_ttl: self.config.server.max_ttl,
        };
        let policy = Policy::load_dir(&self.config.policy_dir, &ctx).map_err(|e| e.to_string())?;
        let n = policy.len();
        *self.policy.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(policy);
        Ok(n)
    }

    /// Whether writes to `package` are frozen.
    pub fn is_frozen(&self, package: &crate::npm::PackageName) -> bool {
        self.frozen.read().unwrap_or_else(|p| p.into_inner()).iter().any(|g| g.matches(package.as_str()))
    }

    pub fn frozen_patterns(&self) -> Vec<String> {
        self.frozen.read().unwrap_or_else(|p| p.into_inner()).iter().map(|g| g.as_str().to_owned()).collect()
    }

    fn set_frozen(&self, update: impl FnOnce(&mut Vec<Glob>)) {
        update(&mut self.frozen.write().unwrap_or_else(|p| p.into_inner()));
    }
}

/// Binds a listening socket that other workers can bind too (`SO_REUSEPORT`: the kernel spreads
/// connections across them). Only sockets of the same user can share the port.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(1024)?.into_std()
}

thread_local! {
    /// A worker thread's own upstream clients: its pooled connections live on its own runtime,
    /// so a request never wakes another thread.
    static WORKER_UPSTREAMS: std::cell::RefCell<Option<Arc<Upstreams>>> = const { std::cell::RefCell::new(None) };
}

/// What every worker shares.
struct Shared {
    app: Arc<App>,
    acceptor: TlsAcceptor,
    http1: hyper::server::conn::http1::Builder,
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
    connections: Arc<tokio::sync::Semaphore>,
}

/// Serves until `shutdown` resolves, then drains open connections for a bounded time.
///
/// Thread per core: each worker thread runs its own single-threaded runtime with its own
/// listening socket (`SO_REUSEPORT`) and its own upstream connection pools, as nginx's workers
/// do. The admin listener, the store sweeper and key prefetching run on the caller's runtime.
pub async fn serve(
    app: Arc<App>,
    listener: std::net::TcpListener,
    admin: Option<TcpListener>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), String> {
    let tls = net::server_config(&app.config.server.tls_cert, &app.config.server.tls_key)?;
    let client_timeout = app.config.server.client_timeout;
    let mut http1 = hyper::server::conn::http1::Builder::new();
    // The header limit is explicit: the buffer size alone lets a larger head through when it
    // arrives whole in one read.
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(client_timeout)
        .max_buf_size(64 * 1024)
        .max_header_size(64 * 1024);
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .max_concurrent_streams(128)
        .max_header_list_size(64 * 1024)
        .max_pending_accept_reset_streams(32);
    let shared = Arc::new(Shared {
        app: app.clone(),
        acceptor: TlsAcceptor::from(tls),
        http1,
        http2,
        connections: Arc::new(tokio::sync::Semaphore::new(app.config.server.max_connections)),
    });

    app.issuers.prefetch();
    let sweeper = {
        let app = app.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_INTERVAL);
            loop {
                tick.tick().await;
                app.store.sweep(crate::audit::unix_now()).await;
            }
        })
    };

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let mut first = Some(listener);
    let mut workers = Vec::new();
    for i in 0..app.config.server.workers {
        let listener = match first.take() {
            Some(l) => l,
            None => bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?,
        };
        let (shared, stopped) = (shared.clone(), stopped.clone());
        let worker = std::thread::Builder::new()
            .name(format!("phantom-worker-{i}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
                match rt {
                    Ok(rt) => rt.block_on(worker(shared, listener, stopped)),
                    Err(e) => tracing::error!(error = %e, "cannot start a worker runtime"),
                }
            })
            .map_err(|e| format!("cannot start a worker thread: {e}"))?;
        workers.push(worker);
    }

    // The admin face stays on this runtime, with a small connection reserve of its own.
    let admin_connections = Arc::new(tokio::sync::Semaphore::new(64));
    let (alive, mut all_closed) = tokio::sync::mpsc::channel::<()>(1);
    tokio::pin!(shutdown);
    loop {
        let tcp = tokio::select! {
            accepted = accept_admin(admin.as_ref()) => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = admin_connections.clone().try_acquire_owned() else { continue };
        conn::spawn(&shared, tcp, permit, Drain::new(stopped.clone(), alive.clone()), true);
    }
    drop(admin);
    let _ = stop.send(true);
    sweeper.abort();
    let _ = tokio::task::spawn_blocking(move || workers.into_iter().for_each(|w| drop(w.join()))).await;
    drop(alive);
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, all_closed.recv()).await;
    // Everything queued for the audit log is written before the process ends.
    app.audit.close();
    Ok(())
}

/// One worker: accepts on its own socket until told to stop, then drains its connections.
async fn worker(shared: Arc<Shared>, listener: std::net::TcpListener, mut stopped: tokio::sync::watch::Receiver<bool>) {
    let config = &shared.app.config;
    match Upstreams::new(&config.upstreams, config.server.upstream_timeout) {
        Ok(u) => WORKER_UPSTREAMS.with(|w| *w.borrow_mut() = Some(Arc::new(u))),
        Err(e) => tracing::error!(error = %e, "a worker uses the shared upstream clients"),
    }
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "a worker cannot listen");
            return;
        }
    };
    // Every connection holds a sender; the receiver sees the channel close when the last ends.
    let (alive, mut all_closed) = tokio::sync::mpsc::channel::<()>(1);
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            _ = stopped.changed() => break,
        };
        // Connections beyond the limit are closed at once.
        let Ok(permit) = shared.connections.clone().try_acquire_owned() else {
            tracing::debug!("connection limit reached: closing a new connection");
            continue;
        };
        conn::spawn(&shared, tcp, permit, Drain::new(stopped.clone(), alive.clone()), false);
    }
    drop(listener);
    drop(alive);
    if tokio::time::timeout(DRAIN_TIMEOUT, all_closed.recv()).await.is_err() {
        tracing::warn!("connections still open after the drain timeout");
    }
}

async fn accept_admin(admin: Option<&TcpListener>) -> std::io::Result<(tokio::net::TcpStream, SocketAddr)> {
    match admin {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// Out of file descriptors, typically: back off instead of spinning.
async fn accept_failed(e: std::io::Error) {
    tracing::warn!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}
