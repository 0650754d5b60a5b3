//! What every worker of the registry listener (and the forward proxy's) serves with.

use crate::app::App;
use hyper_util::rt::TokioExecutor;
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

/// What every worker shares.
pub(super) struct Shared {
    pub(super) app: Arc<App>,
    pub(super) acceptor: TlsAcceptor,
    pub(super) http1: hyper::server::conn::http1::Builder,
    pub(super) http2: hyper::server::conn::http2::Builder<TokioExecutor>,
    pub(super) connections: Arc<tokio::sync::Semaphore>,
    /// The forward proxy's tunnels, when `[proxy]` is configured.
    pub(super) tunnels: Option<Arc<crate::proxy::Tunnels>>,
}
