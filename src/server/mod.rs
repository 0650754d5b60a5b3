//! Transport: the registry-facing TLS listener and its worker threads, connections, graceful
//! drain, and the admin face. What a request does is the pipeline's business (`crate::pipeline`).

mod admin;
mod conn;
mod shared;
mod tunnel;
mod watch;

pub use crate::app::App;

use crate::state::PhantomStore;
use crate::support::net;
use crate::upstream::Upstreams;
use conn::{Drain, Listener};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use shared::Shared;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket};
use tokio_rustls::TlsAcceptor;

const SWEEP_INTERVAL: Duration = Duration::from_secs(30);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds a listening socket that other workers can bind too (`SO_REUSEPORT`: the kernel spreads
/// connections across them). Only sockets of the same user can share the port.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(1024)?.into_std()
}

/// Serves until `shutdown` resolves, then drains open connections for a bounded time.
///
/// Thread per core: each worker thread runs its own single-threaded runtime with its own
/// listening socket (`SO_REUSEPORT`) and its own upstream connection pools, as nginx's workers
/// do. The admin listener, the store sweeper and sync, the state store's connection and key
/// prefetching run on the caller's runtime.
pub async fn serve(
    app: Arc<App>,
    listener: std::net::TcpListener,
    proxy: Option<std::net::TcpListener>,
    admin: Option<TcpListener>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), String> {
    let shared = shared(&app)?;
    app.issuers.prefetch();
    // Policy files and credential sources reload when they change, until the end of serving.
    let _watching = watch::start(&app);
    let background = Background::start(&app);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let workers = spawn_workers(&shared, listener, proxy, &stopped)?;

    // The admin face stays on this runtime, with a small connection reserve of its own.
    let admin_connections = Arc::new(tokio::sync::Semaphore::new(64));
    let (alive, mut all_closed) = tokio::sync::mpsc::channel::<()>(1);
    tokio::pin!(shutdown);
    loop {
        let tcp = tokio::select! {
            accepted = accept_on(admin.as_ref()) => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = admin_connections.clone().try_acquire_owned() else { continue };
        conn::spawn(&shared, tcp, permit, Drain::new(stopped.clone(), alive.clone()), Listener::Admin);
    }
    drop(admin);
    let _ = stop.send(true);
    background.sweeper.abort();
    let _ = tokio::task::spawn_blocking(move || workers.into_iter().for_each(|w| drop(w.join()))).await;
    drop(alive);
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, all_closed.recv()).await;
    background.stop(&app).await;
    // Everything queued for the audit log is written before the process ends.
    app.audit.close();
    Ok(())
}

/// The TLS acceptor, the HTTP/1.1 and HTTP/2 settings and the tunnels every worker serves with.
fn shared(app: &Arc<App>) -> Result<Arc<Shared>, String> {
    let tls = net::server_config(&app.config.server.tls_cert, &app.config.server.tls_key)?;
    let mut http1 = hyper::server::conn::http1::Builder::new();
    // The header limit is explicit: the buffer size alone lets a larger head through when it
    // arrives whole in one read.
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(app.config.server.client_timeout)
        .max_buf_size(64 * 1024)
        .max_header_size(64 * 1024);
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .max_concurrent_streams(128)
        .max_header_list_size(64 * 1024)
        .max_pending_accept_reset_streams(32);
    Ok(Arc::new(Shared {
        app: app.clone(),
        acceptor: TlsAcceptor::from(tls),
        http1,
        http2,
        connections: Arc::new(tokio::sync::Semaphore::new(app.config.server.max_connections)),
        tunnels: match &app.config.proxy {
            Some(p) => Some(Arc::new(crate::proxy::Tunnels::new(&app.config, p)?)),
            None => None,
        },
    }))
}

/// The tasks that run beside the listeners on the caller's runtime.
struct Background {
    notifications: tokio::task::JoinHandle<()>,
    /// A shared store's revocations and freezes, kept current on this replica.
    syncing: tokio::task::JoinHandle<()>,
    /// The credentials other replicas rotated.
    following: tokio::task::JoinHandle<()>,
    sweeper: tokio::task::JoinHandle<()>,
    /// Rotation deadlines' notices.
    deadlines: tokio::task::JoinHandle<()>,
}

impl Background {
    fn start(app: &Arc<App>) -> Background {
        let notifications = tokio::spawn(crate::notify::deliver_queued(app.notifier.clone(), app.audit.clone()));
        let syncing = {
            let app = app.clone();
            tokio::spawn(async move { app.store.keep_synced().await })
        };
        let following = {
            let app = app.clone();
            tokio::spawn(async move {
                if !app.store.is_shared() {
                    return;
                }
                let mut tick = tokio::time::interval(crate::state::SYNC_INTERVAL);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    crate::ops::follow(&app).await;
                }
            })
        };
        let sweeper = {
            let app = app.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(SWEEP_INTERVAL);
                loop {
                    tick.tick().await;
                    app.store.sweep(crate::support::clock::unix_now()).await;
                    app.credentials.sweep(crate::support::clock::unix_now());
                    crate::ops::holds::expire(&app).await;
                }
            })
        };
        let deadlines = {
            let app = app.clone();
            tokio::spawn(async move { crate::ops::deadlines::watch(&app).await })
        };
        Background { notifications, syncing, following, sweeper, deadlines }
    }

    /// After the drain: the store's tasks end; notifications still queued or under way get
    /// their chance, then stop.
    async fn stop(self, app: &App) {
        self.syncing.abort();
        self.following.abort();
        self.deadlines.abort();
        app.notifier.close();
        if tokio::time::timeout(DRAIN_TIMEOUT, self.notifications).await.is_err() {
            tracing::warn!("notifications still under way after the drain timeout");
        }
    }
}

/// One thread per worker, each with its own runtime and its own listening sockets (the first
/// worker takes the ones already bound).
fn spawn_workers(
    shared: &Arc<Shared>,
    listener: std::net::TcpListener,
    proxy: Option<std::net::TcpListener>,
    stopped: &tokio::sync::watch::Receiver<bool>,
) -> Result<Vec<std::thread::JoinHandle<()>>, String> {
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let proxy_addr = proxy.as_ref().map(|p| p.local_addr().map_err(|e| e.to_string())).transpose()?;
    let (mut first, mut first_proxy) = (Some(listener), proxy);
    let mut workers = Vec::new();
    for i in 0..shared.app.config.server.workers {
        let listener = match first.take() {
            Some(l) => l,
            None => bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?,
        };
        let proxy = match (first_proxy.take(), proxy_addr) {
            (Some(l), _) => Some(l),
            (None, Some(a)) => Some(bind(a).map_err(|e| format!("cannot listen on {a}: {e}"))?),
            (None, None) => None,
        };
        let (shared, stopped) = (shared.clone(), stopped.clone());
        let worker = std::thread::Builder::new()
            .name(format!("phantom-worker-{i}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
                match rt {
                    Ok(rt) => rt.block_on(worker(shared, listener, proxy, stopped)),
                    Err(e) => tracing::error!(error = %e, "cannot start a worker runtime"),
                }
            })
            .map_err(|e| format!("cannot start a worker thread: {e}"))?;
        workers.push(worker);
    }
    Ok(workers)
}

/// One worker: accepts on its own sockets (the registry face's, and the proxy's when there is
/// one) until told to stop, then drains its connections.
async fn worker(
    shared: Arc<Shared>,
    listener: std::net::TcpListener,
    proxy: Option<std::net::TcpListener>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let config = &shared.app.config;
    match Upstreams::new(&config.upstreams, config.server.upstream_timeout, &shared.app.metrics) {
        Ok(u) => crate::app::set_worker_upstreams(u),
        Err(e) => tracing::error!(error = %e, "a worker uses the shared upstream clients"),
    }
    let (listener, proxy) = match (TcpListener::from_std(listener), proxy.map(TcpListener::from_std).transpose()) {
        (Ok(l), Ok(p)) => (l, p),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "a worker cannot listen");
            return;
        }
    };
    // Every connection holds a sender; the receiver sees the channel close when the last ends.
    let (alive, mut all_closed) = tokio::sync::mpsc::channel::<()>(1);
    loop {
        let (accepted, kind) = tokio::select! {
            accepted = listener.accept() => (accepted, Listener::Registry),
            accepted = accept_on(proxy.as_ref()) => (accepted, Listener::Proxy),
            _ = stopped.changed() => break,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                accept_failed(e).await;
                continue;
            }
        };
        // Connections beyond the limit (both faces together) are closed at once.
        let Ok(permit) = shared.connections.clone().try_acquire_owned() else {
            tracing::debug!("connection limit reached: closing a new connection");
            continue;
        };
        conn::spawn(&shared, tcp, permit, Drain::new(stopped.clone(), alive.clone()), kind);
    }
    drop(listener);
    drop(proxy);
    drop(alive);
    if tokio::time::timeout(DRAIN_TIMEOUT, all_closed.recv()).await.is_err() {
        tracing::warn!("connections still open after the drain timeout");
    }
}

async fn accept_on(listener: Option<&TcpListener>) -> std::io::Result<(tokio::net::TcpStream, SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// Out of file descriptors, typically: back off instead of spinning.
async fn accept_failed(e: std::io::Error) {
    tracing::warn!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}
