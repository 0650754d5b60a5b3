//! The registry-facing HTTPS listener and the state every request shares.

mod admin;
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
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use ring::rand::{SecureRandom, SystemRandom};
use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::net::TcpListener;
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
    pub upstreams: Upstreams,
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
            upstreams: Upstreams::new(&config.upstreams, config.server.upstream_timeout)?,
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

/// Serves until `shutdown` resolves, then drains open connections for a bounded time.
pub async fn serve(
    app: Arc<App>,
    listener: TcpListener,
    admin: Option<TcpListener>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), String> {
    let tls = net::server_config(&app.config.server.tls_cert, &app.config.server.tls_key)?;
    let acceptor = TlsAcceptor::from(tls);
    let client_timeout = app.config.server.client_timeout;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(client_timeout).max_buf_size(64 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(128)
        .max_header_list_size(64 * 1024)
        .max_pending_accept_reset_streams(32);
    let builder = Arc::new(builder);

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

    // Registry-facing connections beyond the limit are closed at once; the admin listener has
    // its own small reserve so that operators can still get in.
    let connections = Arc::new(tokio::sync::Semaphore::new(app.config.server.max_connections));
    let admin_connections = Arc::new(tokio::sync::Semaphore::new(64));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, is_admin) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => (tcp, false),
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            accepted = accept_admin(admin.as_ref()) => match accepted {
                Ok((tcp, _)) => (tcp, true),
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let limit = if is_admin { &admin_connections } else { &connections };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::debug!(admin = is_admin, "connection limit reached: closing a new connection");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, app, builder) = (acceptor.clone(), app.clone(), builder.clone());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(client_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                _ => return,
            };
            let service = service_fn(move |req| {
                let app = app.clone();
                async move {
                    let resp = if is_admin { admin::handle(app, req).await } else { handler::handle(app, req).await };
                    Ok::<_, Infallible>(resp)
                }
            });
            let conn = builder.serve_connection(TokioIo::new(tls), service);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    drop(admin);
    sweeper.abort();
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(DRAIN_TIMEOUT) => tracing::warn!("connections still open after the drain timeout"),
    }
    // Everything queued for the audit log is written before the process ends.
    app.audit.close();
    Ok(())
}

async fn accept_admin(admin: Option<&TcpListener>) -> std::io::Result<(tokio::net::TcpStream, std::net::SocketAddr)> {
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
