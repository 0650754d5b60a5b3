//! `phantom.toml` as the rest of the broker reads it: validated types, made once at start.

use crate::policy::Glob;
use http::Uri;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub(crate) const DEFAULT_MAX_BODY: u64 = 256 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub message: String,
}

pub use crate::support::secret::SecretSource;

#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub server: ServerConfig,
    pub upstreams: Vec<UpstreamConfig>,
    pub issuers: Vec<IssuerConfig>,
    pub credentials: Vec<CredentialConfig>,
    pub audit: AuditConfig,
    pub policy_dir: PathBuf,
    pub admin: Option<AdminConfig>,
    /// `[notify.NAME]`: where staged versions are announced.
    pub notify: Vec<NotifyConfig>,
    /// `[proxy]`: the forward-proxy listener for agents behind `HTTPS_PROXY`.
    pub proxy: Option<ProxyConfig>,
    /// `[state]`: where phantoms, uses, spent ID tokens, revocations, freezes and rates live.
    pub state: StateConfig,
    /// `[rotation]`: the deadlines of each class of credential.
    pub rotation: RotationConfig,
    /// `[console]`: the admin console in the browser.
    pub console: Option<ConsoleConfig>,
}

pub use super::console::{ConsoleConfig, Role, WebClient};

pub use super::rotation::{NotifyEvent, NotifyFormat, RotationConfig};

/// `[state] backend`: one process's memory, or a Redis server every replica shares.
#[derive(Debug, Clone)]
pub enum StateConfig {
    Memory,
    Redis(RedisConfig),
}

/// A Redis (or Valkey) server. Its password comes from a file or a variable, never from the
/// URL: the URL is printed in messages, a secret never is.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://host:port/db` (loopback only) or `rediss://host:port/db` (TLS, through rustls).
    pub url: String,
    pub host: String,
    pub port: u16,
    pub db: i64,
    pub tls: bool,
    /// Extra trust anchors for `rediss://`, added to the system roots.
    pub ca_file: Option<PathBuf>,
    pub username: Option<String>,
    pub password: Option<SecretSource>,
    /// Every key the broker writes starts with this (default `phantom:`).
    pub key_prefix: String,
    /// The longest any one call to Redis may take (default 1s).
    pub timeout: Duration,
}

/// The forward-proxy listener: plain TCP, `CONNECT` to the configured upstreams' hosts only.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub listen: SocketAddr,
    /// The CA that signs a leaf certificate for each upstream host (agents trust it).
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
}

/// A webhook told about each staged (or held) version of the grants that name it, and about
/// the `events` it subscribes to.
#[derive(Debug, Clone)]
pub struct NotifyConfig {
    pub name: String,
    /// https:// (http:// only on loopback).
    pub webhook: Uri,
    /// The HMAC-SHA256 key of the `X-Phantom-Signature` header, if any.
    pub secret: Option<SecretSource>,
    /// Extra trust anchors for the webhook's TLS, added to the system roots.
    pub ca_file: Option<PathBuf>,
    /// What it is told of, whatever the grants name.
    pub events: Vec<NotifyEvent>,
    /// The targets an overdue credential's daily notice also goes to (`escalate = [...]`).
    pub escalate: Vec<String>,
    pub format: NotifyFormat,
}

/// The admin listener: health, metrics, phantom listing and revocation, freeze, policy reload.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// The bearer token `/admin/v1/*` (and, unless `metrics_open`, `/metrics`) requires.
    pub token: SecretSource,
    /// `[admin] metrics = "open"`: `/metrics` answers without the token (default: it needs it).
    pub metrics_open: bool,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub public_url: Uri,
    /// The host of `public_url`: npm asks its CI for an ID token with audience `npm:<host>`.
    pub public_host: String,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    pub max_body_bytes: u64,
    pub default_ttl: Duration,
    pub max_ttl: Duration,
    pub upstream_timeout: Duration,
    /// How long a client may take to send its request head, or to send the next part of a body.
    pub client_timeout: Duration,
    /// Open client connections beyond this are closed at once.
    pub max_connections: usize,
    /// Total bytes of request bodies held in memory at once, across all requests.
    pub max_buffered_bytes: u64,
    /// Worker threads serving the registry listener (default: one per CPU).
    pub workers: usize,
    /// A write refused for passing its grant's `rate` also freezes the package, until an admin
    /// thaws it.
    pub freeze_on_burst: bool,
    /// The bytes of every write held for approval at once, across replicas (in the state store).
    pub max_held_bytes: u64,
}

impl ServerConfig {
    /// The audience npm's own exchange requires.
    pub fn npm_audience(&self) -> String {
        format!("npm:{}", self.public_host)
    }
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    /// Scheme, authority and path prefix (without a trailing `/`).
    pub url: Uri,
    pub scopes: Vec<String>,
    pub ca_file: Option<PathBuf>,
    /// The registry takes only staged publishes from tokens (`stages_only = true`: the public npm
    /// registry from January 2027): a credential that can publish directly there is warned of.
    pub stages_only: bool,
}

#[derive(Debug, Clone)]
pub struct IssuerConfig {
    pub name: String,
    pub issuer: String,
    /// The CI vendor, when `preset` names one or the URL is the vendor's own fixed issuer: what
    /// its tokens carry, for the lints and `policy trust`.
    pub preset: Option<crate::policy::presets::Preset>,
    /// The preset was recognised from the issuer URL, without a `preset` line.
    pub preset_from_url: bool,
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    /// The audience the generic exchange requires (default `npm:<public host>`).
    pub audience: String,
    pub ca_file: Option<PathBuf>,
    pub leeway: Duration,
    pub jwks_cache: Duration,
    pub fetch_timeout: Duration,
    /// `device = { client_id, scopes }`: people sign in with this issuer from the CLI, by the
    /// device authorization grant (RFC 8628), as this public client.
    pub device: Option<DeviceClient>,
    /// `web = { client_id, client_secret, scopes }`: people sign in to the console with this
    /// issuer (authorization code with PKCE), as this client.
    pub web: Option<WebClient>,
}

/// The public client the CLI signs people in as (`phantom login --device`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceClient {
    pub client_id: String,
    /// Scopes asked for besides `openid`: the ones whose claims the grants match on.
    pub scopes: Vec<String>,
}

#[derive(Clone)]
pub struct CredentialConfig {
    pub name: String,
    pub upstream: String,
    pub source: SecretSource,
    pub packages: Vec<Glob>,
    /// `A` (high-download publish) to `D` (personal): how much harm the token could do.
    pub class: Option<char>,
    /// What the real token can do upstream.
    pub publish: Capability,
    /// Unix seconds (midnight UTC of the day given).
    pub created: Option<u64>,
    pub expires: Option<u64>,
    /// Class A's most-downloaded (`top = true`): rotated on `[rotation] A_top`'s cadence.
    pub top: bool,
}

pub use crate::policy::Capability;

/// By hand: the credential's name, upstream and where its secret lives; never the secret.
impl std::fmt::Debug for CredentialConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialConfig")
            .field("name", &self.name)
            .field("upstream", &self.upstream)
            .field("source", &self.source)
            .field("packages", &self.packages.iter().map(Glob::as_str).collect::<Vec<_>>())
            .field("class", &self.class)
            .field("publish", &self.publish)
            .field("created", &self.created)
            .field("expires", &self.expires)
            .field("top", &self.top)
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub path: PathBuf,
    /// While the log cannot be written, writes and exchanges are always refused; reads are
    /// served unless this is false.
    pub serve_reads_on_failure: bool,
    /// The key for hashing token ids; a random per-process key when absent.
    pub key: Option<SecretSource>,
}
