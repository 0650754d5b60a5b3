//! `phantom.toml`: strict parsing (unknown keys are errors) into validated types, once, at start.
//!
//! Relative paths in the file are relative to the file's own directory.

use crate::policy::Glob;
use crate::support::units::parse_duration;
use http::Uri;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_MAX_BODY: u64 = 256 * 1024 * 1024;

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
}

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

/// A webhook told about each staged version of the grants that name it.
#[derive(Debug, Clone)]
pub struct NotifyConfig {
    pub name: String,
    /// https:// (http:// only on loopback).
    pub webhook: Uri,
    /// The HMAC-SHA256 key of the `X-Phantom-Signature` header, if any.
    pub secret: Option<SecretSource>,
    /// Extra trust anchors for the webhook's TLS, added to the system roots.
    pub ca_file: Option<PathBuf>,
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: RawServer,
    #[serde(default)]
    upstream: BTreeMap<String, RawUpstream>,
    #[serde(default)]
    issuer: BTreeMap<String, RawIssuer>,
    #[serde(default)]
    credential: BTreeMap<String, RawCredential>,
    #[serde(default)]
    state: RawState,
    audit: RawAudit,
    #[serde(default)]
    policy: RawPolicy,
    admin: Option<RawAdmin>,
    #[serde(default)]
    notify: BTreeMap<String, RawNotify>,
    proxy: Option<RawProxy>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProxy {
    listen: Option<String>,
    ca_cert: PathBuf,
    ca_key: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNotify {
    webhook: String,
    secret: Option<SecretSource>,
    ca_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Option<String>,
    token: SecretSource,
    metrics: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    public_url: String,
    tls_cert: PathBuf,
    tls_key: PathBuf,
    max_body_bytes: Option<u64>,
    default_ttl: Option<String>,
    max_ttl: Option<String>,
    upstream_timeout: Option<String>,
    client_timeout: Option<String>,
    max_connections: Option<usize>,
    max_buffered_bytes: Option<u64>,
    workers: Option<usize>,
    freeze_on_burst: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    url: String,
    scopes: Vec<String>,
    ca_file: Option<PathBuf>,
    stages_only: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIssuer {
    preset: Option<String>,
    issuer: Option<String>,
    algorithms: Option<Vec<String>>,
    audience: Option<String>,
    ca_file: Option<PathBuf>,
    leeway: Option<String>,
    jwks_cache: Option<String>,
    fetch_timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCredential {
    upstream: String,
    source: SecretSource,
    #[serde(default)]
    packages: Vec<String>,
    class: Option<String>,
    publish: Option<String>,
    created: Option<toml::Value>,
    expires: Option<toml::Value>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawState {
    backend: Option<String>,
    key_prefix: Option<String>,
    timeout: Option<String>,
    ca_file: Option<PathBuf>,
    username: Option<String>,
    password: Option<SecretSource>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    path: PathBuf,
    key: Option<SecretSource>,
    serve_reads_on_failure: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    dir: Option<PathBuf>,
}

/// Algorithms an issuer may be allowed: asymmetric only. `none` and HMAC never verify ID tokens.
const ALLOWED_ALGS: &[(&str, jsonwebtoken::Algorithm)] = {
    use jsonwebtoken::Algorithm::*;
    &[
        ("RS256", RS256),
        ("RS384", RS384),
        ("RS512", RS512),
        ("PS256", PS256),
        ("PS384", PS384),
        ("PS512", PS512),
        ("ES256", ES256),
        ("ES384", ES384),
        ("EdDSA", EdDSA),
    ]
};

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError { file: path.display().to_string(), message: format!("cannot read: {e}") })?;
        Config::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let err = |message: String| ConfigError { file: path.display().to_string(), message };
        let raw: RawConfig = toml::from_str(text).map_err(|e| err(e.to_string().trim_end().to_owned()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        validate(raw, path, base).map_err(err)
    }

    pub fn issuer_names(&self) -> Vec<&str> {
        self.issuers.iter().map(|i| i.name.as_str()).collect()
    }

    pub fn credential_names(&self) -> Vec<&str> {
        self.credentials.iter().map(|c| c.name.as_str()).collect()
    }

    /// Loads the policy directory against what this config defines (issuers, credentials,
    /// notification targets, lifetimes).
    pub fn load_policy(&self) -> Result<crate::policy::Policy, crate::policy::PolicyError> {
        self.with_policy_context(|ctx| crate::policy::Policy::load_dir(&self.policy_dir, ctx))
    }

    /// `phantom policy check`: every error and lint of the policy directory, where it is, and a
    /// note for each issuer recognised by its URL as a vendor's.
    pub fn check_policy(&self) -> Vec<crate::policy::check::Finding> {
        use crate::policy::check;
        let presets: Vec<(&str, Option<crate::policy::presets::Preset>)> =
            self.issuers.iter().map(|i| (i.name.as_str(), i.preset)).collect();
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        let mut findings: Vec<check::Finding> = self
            .issuers
            .iter()
            .filter(|i| i.preset_from_url)
            .filter_map(|i| Some(check::recognised_issuer(&self.path, &text, &i.name, &i.issuer, i.preset?)))
            .collect();
        findings.extend(self.with_policy_context(|ctx| check::check(&self.policy_dir, ctx, &presets)));
        findings
    }

    /// What grants may refer to: this config's issuers, credentials (and what their tokens can
    /// do), notification targets and lifetimes.
    fn with_policy_context<R>(&self, f: impl FnOnce(&crate::policy::PolicyContext<'_>) -> R) -> R {
        let issuers = self.issuer_names();
        let credentials = self.credential_names();
        let notify: Vec<&str> = self.notify.iter().map(|n| n.name.as_str()).collect();
        let limits: Vec<crate::policy::CredentialLimits<'_>> = self
            .credentials
            .iter()
            .map(|c| crate::policy::CredentialLimits { name: &c.name, packages: &c.packages, publish: c.publish })
            .collect();
        f(&crate::policy::PolicyContext {
            issuers: &issuers,
            credentials: &credentials,
            credential_limits: &limits,
            notify: &notify,
            default_ttl: self.server.default_ttl,
            max_ttl: self.server.max_ttl,
        })
    }
}

fn validate(raw: RawConfig, path: &Path, base: &Path) -> Result<Config, String> {
    let rel = |p: &Path| {
        if p.is_absolute() {
            p.to_owned()
        } else {
            base.join(p)
        }
    };
    let dur = |key: &str, v: &Option<String>, default: u64| -> Result<Duration, String> {
        match v {
            Some(s) => parse_duration(s).map_err(|e| format!("`{key}`: {e}")),
            None => Ok(Duration::from_secs(default)),
        }
    };

    let s = &raw.server;
    let listen_text = s.listen.as_deref().unwrap_or("127.0.0.1:8443");
    let listen: SocketAddr = listen_text
        .parse()
        .map_err(|_| format!("`server.listen`: `{listen_text}` is not an address like \"127.0.0.1:8443\""))?;
    let public_url: Uri =
        s.public_url.parse().map_err(|_| format!("`server.public_url`: `{}` is not a URL", s.public_url))?;
    if public_url.scheme_str() != Some("https") {
        return Err("`server.public_url` must be an https:// URL".into());
    }
    // As npm computes it: the WHATWG URL `hostname`, lower case, IPv6 in brackets, no port.
    let public_host = public_url.host().ok_or("`server.public_url` has no host")?.to_ascii_lowercase();
    let server = ServerConfig {
        listen,
        public_host,
        public_url,
        tls_cert: rel(&s.tls_cert),
        tls_key: rel(&s.tls_key),
        max_body_bytes: s.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY),
        default_ttl: dur("server.default_ttl", &s.default_ttl, 600)?,
        max_ttl: dur("server.max_ttl", &s.max_ttl, 3600)?,
        upstream_timeout: dur("server.upstream_timeout", &s.upstream_timeout, 300)?,
        client_timeout: dur("server.client_timeout", &s.client_timeout, 30)?,
        max_connections: s.max_connections.unwrap_or(20_000),
        max_buffered_bytes: s.max_buffered_bytes.unwrap_or(1024 * 1024 * 1024),
        workers: s.workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        freeze_on_burst: s.freeze_on_burst.unwrap_or(false),
    };
    if server.workers == 0 || server.workers > 256 {
        return Err("`server.workers` must be between 1 and 256".into());
    }
    if server.max_buffered_bytes < server.max_body_bytes {
        return Err("`server.max_buffered_bytes` must be at least `server.max_body_bytes`".into());
    }
    if server.client_timeout.is_zero() || server.upstream_timeout.is_zero() || server.max_connections == 0 {
        return Err(
            "`server.client_timeout`, `server.upstream_timeout` and `server.max_connections` must be more than zero"
                .into(),
        );
    }
    if server.default_ttl > server.max_ttl {
        return Err("`server.default_ttl` is longer than `server.max_ttl`".into());
    }

    if raw.upstream.is_empty() {
        return Err("at least one `[upstream.NAME]` is required".into());
    }
    let mut seen_scopes: BTreeMap<String, String> = BTreeMap::new();
    let mut upstreams = Vec::new();
    for (name, u) in raw.upstream {
        let url = checked_url(&u.url).map_err(|e| format!("`upstream.{name}.url`: {e}"))?;
        if u.scopes.is_empty() {
            return Err(format!("`upstream.{name}.scopes` may not be empty (use [\"*\"] for every package)"));
        }
        for scope in &u.scopes {
            let ok = scope == "*"
                || scope.strip_prefix('@').is_some_and(|s| {
                    !s.is_empty()
                        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
                });
            if !ok {
                return Err(format!("`upstream.{name}.scopes`: `{scope}` must be \"*\" or \"@scope\""));
            }
            if let Some(other) = seen_scopes.insert(scope.clone(), name.clone()) {
                return Err(format!("`upstream.{name}.scopes`: `{scope}` is already routed to upstream `{other}`"));
            }
        }
        upstreams.push(UpstreamConfig {
            name,
            url,
            scopes: u.scopes,
            ca_file: u.ca_file.as_deref().map(rel),
            stages_only: u.stages_only.unwrap_or(false),
        });
    }

    let mut issuers = Vec::new();
    for (name, i) in raw.issuer {
        let preset = match i.preset.as_deref() {
            None => None,
            Some(p) => Some(crate::policy::presets::Preset::parse(p).ok_or_else(|| {
                let known: Vec<&str> = crate::policy::presets::Preset::ALL.iter().map(|p| p.name()).collect();
                format!("`issuer.{name}.preset`: `{p}` is not one of {}", known.join(", "))
            })?),
        };
        // A preset fills in the issuer URL where the vendor has one for everybody; a given one
        // (GitHub Enterprise Server, a GitLab instance) wins.
        let issuer = match (i.issuer, preset.and_then(|p| p.issuer())) {
            (Some(given), _) => given,
            (None, Some(fixed)) => fixed.to_owned(),
            (None, None) => {
                let why = match preset {
                    Some(p) => format!(" (preset `{}` has no issuer of its own: its tokens' `iss` is yours)", p.name()),
                    None => String::new(),
                };
                return Err(format!("`issuer.{name}.issuer` is required{why}"));
            }
        };
        // A vendor's own fixed issuer URL is that vendor's preset, said or not; a preset that
        // says another vendor would lint and trust the grants for the wrong one.
        let recognised = crate::policy::presets::Preset::recognise(&issuer);
        let preset_from_url = preset.is_none() && recognised.is_some();
        let preset = match (preset, recognised) {
            (Some(said), Some(url)) if said != url => {
                return Err(format!(
                    "`issuer.{name}.preset`: `{}` contradicts the issuer URL {issuer}, which is the issuer of {} (preset `{}`)",
                    said.name(),
                    url.vendor(),
                    url.name()
                ))
            }
            (said, url) => said.or(url),
        };
        checked_url(&issuer).map_err(|e| format!("`issuer.{name}.issuer`: {e}"))?;
        let given_algorithms = match (i.algorithms, preset) {
            (Some(a), _) => a,
            // Every preset's vendor signs with RS256.
            (None, Some(_)) => vec!["RS256".to_owned()],
            (None, None) => return Err(format!("`issuer.{name}.algorithms` is required")),
        };
        if given_algorithms.is_empty() {
            return Err(format!("`issuer.{name}.algorithms` may not be empty"));
        }
        let mut algorithms = Vec::new();
        for a in &given_algorithms {
            let alg = ALLOWED_ALGS.iter().find(|(n, _)| n == a).map(|(_, alg)| *alg).ok_or_else(|| {
                let names: Vec<_> = ALLOWED_ALGS.iter().map(|(n, _)| *n).collect();
                format!("`issuer.{name}.algorithms`: `{a}` is not allowed (expected one of {})", names.join(", "))
            })?;
            algorithms.push(alg);
        }
        issuers.push(IssuerConfig {
            audience: i.audience.clone().unwrap_or_else(|| server.npm_audience()),
            issuer,
            preset,
            preset_from_url,
            algorithms,
            ca_file: i.ca_file.as_deref().map(rel),
            leeway: dur(&format!("issuer.{name}.leeway"), &i.leeway, 30)?,
            jwks_cache: match dur(&format!("issuer.{name}.jwks_cache"), &i.jwks_cache, 3600)? {
                d if d < Duration::from_secs(60) => {
                    return Err(format!("`issuer.{name}.jwks_cache` must be at least 60s"))
                }
                d => d,
            },
            fetch_timeout: dur(&format!("issuer.{name}.fetch_timeout"), &i.fetch_timeout, 5)?,
            name,
        });
    }

    let mut credentials = Vec::new();
    for (name, c) in raw.credential {
        if !upstreams.iter().any(|u| u.name == c.upstream) {
            return Err(format!("`credential.{name}.upstream`: `{}` is not a configured upstream", c.upstream));
        }
        let packages = c
            .packages
            .iter()
            .map(|p| Glob::new(p).map_err(|e| format!("`credential.{name}.packages`: {e}")))
            .collect::<Result<_, _>>()?;
        let source = match c.source {
            SecretSource::File(p) => SecretSource::File(rel(&p)),
            env => env,
        };
        let class = match c.class.as_deref() {
            None => None,
            Some(k @ ("A" | "B" | "C" | "D")) => k.chars().next(),
            Some(other) => {
                return Err(format!("`credential.{name}.class`: `{other}` is not one of \"A\", \"B\", \"C\", \"D\""))
            }
        };
        let publish = match c.publish.as_deref() {
            None | Some("direct") => Capability::Direct,
            Some("stage-only") => Capability::StageOnly,
            Some("read-only") => Capability::ReadOnly,
            Some(other) => {
                return Err(format!(
                    "`credential.{name}.publish`: `{other}` is not one of \"direct\", \"stage-only\", \"read-only\""
                ))
            }
        };
        let created = c.created.map(|d| day(&format!("credential.{name}.created"), d)).transpose()?;
        let expires = c.expires.map(|d| day(&format!("credential.{name}.expires"), d)).transpose()?;
        if let (Some(c), Some(e)) = (created, expires) {
            if e <= c {
                return Err(format!("`credential.{name}.expires` is not after its `created`"));
            }
        }
        credentials.push(CredentialConfig {
            name,
            upstream: c.upstream,
            source,
            packages,
            class,
            publish,
            created,
            expires,
        });
    }

    let state = state_config(raw.state, &rel)?;

    let admin = match raw.admin {
        None => None,
        Some(a) => {
            let text = a.listen.as_deref().unwrap_or("127.0.0.1:9090");
            let listen = text
                .parse()
                .map_err(|_| format!("`admin.listen`: `{text}` is not an address like \"127.0.0.1:9090\""))?;
            let token = match a.token {
                SecretSource::File(p) => SecretSource::File(rel(&p)),
                env => env,
            };
            let metrics_open = match a.metrics.as_deref() {
                None | Some("token") => false,
                Some("open") => true,
                Some(other) => {
                    return Err(format!("`admin.metrics`: `{other}` must be \"token\" (the default) or \"open\""))
                }
            };
            Some(AdminConfig { listen, token, metrics_open })
        }
    };

    let mut notify = Vec::new();
    for (name, n) in raw.notify {
        let webhook = checked_url(&n.webhook).map_err(|e| format!("`notify.{name}.webhook`: {e}"))?;
        let secret = n.secret.map(|k| match k {
            SecretSource::File(p) => SecretSource::File(rel(&p)),
            env => env,
        });
        notify.push(NotifyConfig { name, webhook, secret, ca_file: n.ca_file.as_deref().map(rel) });
    }

    let proxy = match raw.proxy {
        None => None,
        Some(p) => {
            let text = p.listen.as_deref().unwrap_or("127.0.0.1:3128");
            let listen = text
                .parse()
                .map_err(|_| format!("`proxy.listen`: `{text}` is not an address like \"127.0.0.1:3128\""))?;
            if !upstreams.iter().any(|u| u.url.scheme_str() == Some("https")) {
                return Err(
                    "`[proxy]` needs at least one https:// upstream: it tunnels only to upstreams' hosts".into()
                );
            }
            Some(ProxyConfig { listen, ca_cert: rel(&p.ca_cert), ca_key: rel(&p.ca_key) })
        }
    };

    Ok(Config {
        state,
        proxy,
        notify,
        admin,
        path: path.to_owned(),
        server,
        upstreams,
        issuers,
        credentials,
        audit: AuditConfig {
            path: rel(&raw.audit.path),
            serve_reads_on_failure: raw.audit.serve_reads_on_failure.unwrap_or(true),
            key: raw.audit.key.map(|k| match k {
                SecretSource::File(p) => SecretSource::File(rel(&p)),
                env => env,
            }),
        },
        policy_dir: rel(raw.policy.dir.as_deref().unwrap_or(Path::new("policies"))),
    })
}

/// A day (`"2027-01-31"`, or the TOML date 2027-01-31) as the unix time of its midnight, UTC.
fn day(key: &str, v: toml::Value) -> Result<u64, String> {
    let bad = || format!("`{key}`: give a date like \"2027-01-31\", not `{v}`");
    let text = match &v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Datetime(d) if d.time.is_none() && d.offset.is_none() => d.to_string(),
        _ => return Err(bad()),
    };
    let parts: Vec<&str> = text.split('-').collect();
    let [y, m, d] = parts.as_slice() else { return Err(bad()) };
    let (Ok(y), Ok(m), Ok(d)) = (y.parse::<i32>(), m.parse::<u8>(), d.parse::<u8>()) else { return Err(bad()) };
    let date = time::Month::try_from(m)
        .and_then(|m| time::Date::from_calendar_date(y, m, d))
        .map_err(|e| format!("`{key}`: {text}: {e}"))?;
    u64::try_from(date.midnight().assume_utc().unix_timestamp()).map_err(|_| format!("`{key}`: {text} is before 1970"))
}

fn state_config(raw: RawState, rel: &dyn Fn(&Path) -> PathBuf) -> Result<StateConfig, String> {
    let url = match raw.backend.as_deref() {
        None | Some("memory") => {
            let redis_only = raw.key_prefix.is_some()
                || raw.timeout.is_some()
                || raw.ca_file.is_some()
                || raw.username.is_some()
                || raw.password.is_some();
            if redis_only {
                return Err(
                    "`state`: key_prefix, timeout, ca_file, username and password are for a redis backend".into()
                );
            }
            return Ok(StateConfig::Memory);
        }
        Some(url) => url,
    };
    let bad = |why: &str| format!("`state.backend`: `{url}` {why}");
    let uri: Uri = url.parse().map_err(|_| bad("is not \"memory\" or a redis:// or rediss:// URL"))?;
    let tls = match uri.scheme_str() {
        Some("rediss") => true,
        Some("redis") => false,
        _ => return Err(bad("is not \"memory\" or a redis:// or rediss:// URL")),
    };
    let authority = uri.authority().ok_or_else(|| bad("names no host"))?;
    if authority.as_str().contains('@') {
        return Err(bad("carries credentials: put the password in `state.password = { file = ... }`"));
    }
    let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_owned();
    if !tls && !is_loopback(&host) {
        return Err(bad("is plain redis:// to another host: use rediss:// (TLS)"));
    }
    let db = match uri.path().trim_matches('/') {
        "" => 0,
        n => {
            n.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| bad("has a path that is not a database number"))?
        }
    };
    if uri.query().is_some() {
        return Err(bad("has a query: give its options as [state] keys"));
    }
    let timeout = match &raw.timeout {
        Some(t) => parse_duration(t).map_err(|e| format!("`state.timeout`: {e}"))?,
        None => Duration::from_secs(1),
    };
    if timeout.is_zero() || timeout > Duration::from_secs(30) {
        return Err("`state.timeout` must be more than 0s and at most 30s".into());
    }
    let key_prefix = raw.key_prefix.unwrap_or_else(|| "phantom:".into());
    if key_prefix.is_empty() || key_prefix.len() > 64 || key_prefix.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err("`state.key_prefix` must be 1 to 64 characters without spaces".into());
    }
    Ok(StateConfig::Redis(RedisConfig {
        url: url.to_owned(),
        port: authority.port_u16().unwrap_or(6379),
        host,
        db,
        tls,
        ca_file: raw.ca_file.as_deref().map(rel),
        username: raw.username,
        password: raw.password.map(|k| match k {
            SecretSource::File(p) => SecretSource::File(rel(&p)),
            env => env,
        }),
        key_prefix,
        timeout,
    }))
}

/// An https URL, or an http URL on a loopback host. Returns it without a trailing `/`.
fn checked_url(s: &str) -> Result<Uri, String> {
    let uri: Uri = s.parse().map_err(|_| format!("`{s}` is not a URL"))?;
    let host = uri.host().ok_or_else(|| format!("`{s}` has no host"))?;
    match uri.scheme_str() {
        Some("https") => {}
        Some("http") if is_loopback(host) => {}
        Some("http") => return Err(format!("`{s}`: plain http:// is accepted only for loopback hosts")),
        _ => return Err(format!("`{s}` must be an https:// URL")),
    }
    if uri.query().is_some() {
        return Err(format!("`{s}` may not have a query string"));
    }
    let trimmed = s.trim_end_matches('/');
    trimmed.parse().map_err(|_| format!("`{s}` is not a URL"))
}

pub fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::presets::Preset;

    const GOOD: &str = r#"
[server]
listen = "127.0.0.1:8443"
public_url = "https://npm-broker.example.com/"
tls_cert = "certs/server.pem"
tls_key = "certs/server-key.pem"

[upstream.public]
url = "https://registry.example.com/"
scopes = ["*"]

[upstream.acme]
url = "http://127.0.0.1:4873"
scopes = ["@acme"]

[issuer.github]
issuer = "https://token.actions.example.com"
algorithms = ["RS256", "ES256"]

[credential.acme-publish]
upstream = "acme"
source = { file = "/run/secrets/acme-npm-token" }
packages = ["@acme/*"]
expires = "2027-01-31"

[credential.env-one]
upstream = "public"
source = { env = "NPM_TOKEN" }

[state]
backend = "memory"

[audit]
path = "audit/phantom.jsonl"
"#;

    #[test]
    fn parses_the_documented_shape() {
        let c = Config::parse(Path::new("/etc/phantom/phantom.toml"), GOOD).unwrap();
        assert_eq!(c.server.npm_audience(), "npm:npm-broker.example.com");
        let upper = GOOD.replace("https://npm-broker.example.com/", "https://NPM-Broker.Example.com:8443/");
        assert_eq!(
            Config::parse(Path::new("p.toml"), &upper).unwrap().server.npm_audience(),
            "npm:npm-broker.example.com"
        );
        let v6 = GOOD.replace("https://npm-broker.example.com/", "https://[::1]:8443/");
        assert_eq!(Config::parse(Path::new("p.toml"), &v6).unwrap().server.npm_audience(), "npm:[::1]");
        assert_eq!(c.server.tls_cert, PathBuf::from("/etc/phantom/certs/server.pem"));
        assert_eq!(c.policy_dir, PathBuf::from("/etc/phantom/policies"));
        assert_eq!(c.server.max_body_bytes, DEFAULT_MAX_BODY);
        assert_eq!(c.upstreams.len(), 2);
        assert_eq!(c.upstreams[1].url.to_string(), "https://registry.example.com/");
        assert_eq!(c.issuers[0].audience, "npm:npm-broker.example.com");
        assert_eq!(c.issuers[0].leeway, Duration::from_secs(30));
        assert_eq!(c.credentials[0].source, SecretSource::File("/run/secrets/acme-npm-token".into()));
        assert_eq!(c.credentials[1].source, SecretSource::Env("NPM_TOKEN".into()));
        assert!(matches!(c.state, StateConfig::Memory));
        assert_eq!((c.credentials[0].expires, c.credentials[0].publish), (Some(1_801_353_600), Capability::Direct));

        let shared = GOOD.replace(
            "backend = \"memory\"",
            "backend = \"rediss://cache.example.com:6380/2\"\nca_file = \"certs/redis-ca.pem\"\npassword = { file = \"redis-pw\" }",
        );
        let c = Config::parse(Path::new("/etc/phantom/phantom.toml"), &shared).unwrap();
        let StateConfig::Redis(r) = &c.state else { panic!("not a redis backend") };
        assert_eq!((r.host.as_str(), r.port, r.db, r.tls), ("cache.example.com", 6380, 2, true));
        assert_eq!((r.key_prefix.as_str(), r.timeout), ("phantom:", Duration::from_secs(1)));
        assert_eq!(r.ca_file.as_deref(), Some(Path::new("/etc/phantom/certs/redis-ca.pem")));
        assert_eq!(r.password, Some(SecretSource::File("/etc/phantom/redis-pw".into())));
        let local = GOOD.replace("backend = \"memory\"", "backend = \"redis://127.0.0.1:6379\"");
        let c = Config::parse(Path::new("p.toml"), &local).unwrap();
        assert!(matches!(&c.state, StateConfig::Redis(r) if !r.tls && r.db == 0));

        let dated = GOOD.replace(
            "expires = \"2027-01-31\"",
            "expires = 2027-01-31\ncreated = \"2026-11-01\"\nclass = \"A\"\npublish = \"stage-only\"",
        );
        let github = GOOD.replace("https://token.actions.example.com", "https://token.actions.githubusercontent.com");
        let c = Config::parse(Path::new("p.toml"), &github).unwrap();
        assert_eq!((c.issuers[0].preset, c.issuers[0].preset_from_url), (Some(Preset::Github), true));
        let said = github.replace("algorithms = [\"RS256\", \"ES256\"]", "preset = \"github\"");
        let c = Config::parse(Path::new("p.toml"), &said).unwrap();
        assert_eq!((c.issuers[0].preset, c.issuers[0].preset_from_url), (Some(Preset::Github), false));
        let admin = |metrics: &str| {
            let text = GOOD.replace("[audit]", &format!("[admin]\ntoken = {{ env = \"T\" }}\n{metrics}\n[audit]"));
            Config::parse(Path::new("p.toml"), &text).unwrap().admin.unwrap().metrics_open
        };
        assert_eq!((admin(""), admin("metrics = \"token\""), admin("metrics = \"open\"")), (false, false, true));
        let c = Config::parse(Path::new("p.toml"), &dated).unwrap();
        let cred = &c.credentials[0];
        assert_eq!((cred.class, cred.publish), (Some('A'), Capability::StageOnly));
        assert_eq!((cred.created, cred.expires), (Some(1_793_491_200), Some(1_801_353_600)));
    }

    #[test]
    fn errors_name_the_file_and_the_key() {
        let table: &[(&str, &str, &str)] = &[
            ("listen = \"127.0.0.1:8443\"", "lisen = \"127.0.0.1:8443\"", "unknown field `lisen`, expected one of"),
            ("listen = \"127.0.0.1:8443\"", "listen = \"localhost\"", "`server.listen`"),
            (
                "https://npm-broker.example.com/",
                "http://npm-broker.example.com/",
                "`server.public_url` must be an https",
            ),
            ("https://registry.example.com/", "http://registry.example.com/", "only for loopback"),
            ("scopes = [\"@acme\"]", "scopes = [\"*\"]", "already routed"),
            ("scopes = [\"@acme\"]", "scopes = [\"acme\"]", "must be \"*\" or \"@scope\""),
            ("[\"RS256\", \"ES256\"]", "[\"HS256\"]", "`HS256` is not allowed"),
            ("[\"RS256\", \"ES256\"]", "[\"none\"]", "`none` is not allowed"),
            ("upstream = \"acme\"", "upstream = \"nope\"", "not a configured upstream"),
            ("{ env = \"NPM_TOKEN\" }", "{ vault = \"x\" }", "unknown variant `vault`"),
            ("backend = \"memory\"", "backend = \"etcd://x\"", "`state.backend`"),
            ("backend = \"memory\"", "backend = \"redis://cache.example.com:6379/0\"", "use rediss:// (TLS)"),
            ("backend = \"memory\"", "backend = \"rediss://:hunter2@cache.example.com/0\"", "carries credentials"),
            ("backend = \"memory\"", "backend = \"rediss://cache.example.com/x\"", "not a database number"),
            ("backend = \"memory\"", "backend = \"memory\"\nkey_prefix = \"p:\"", "are for a redis backend"),
            ("backend = \"memory\"", "backend = \"rediss://c.example.com\"\ntimeout = \"0s\"", "`state.timeout`"),
            ("expires = \"2027-01-31\"", "class = \"E\"", "`credential.acme-publish.class`"),
            ("expires = \"2027-01-31\"", "publish = \"yes\"", "`credential.acme-publish.publish`"),
            ("expires = \"2027-01-31\"", "expires = 2027-01-31T10:00:00Z", "give a date like"),
            ("expires = \"2027-01-31\"", "expires = \"2027-02-30\"", "`credential.acme-publish.expires`"),
            ("expires = \"2027-01-31\"", "expires = \"next year\"", "give a date like"),
            (
                "expires = \"2027-01-31\"",
                "expires = \"2027-01-31\"\ncreated = \"2027-02-01\"",
                "not after its `created`",
            ),
            ("[audit]", "[audit]\ncolour = 1", "unknown field `colour`"),
            (
                "issuer = \"https://token.actions.example.com\"",
                "issuer = \"https://token.actions.githubusercontent.com\"\npreset = \"gitlab\"",
                "`issuer.github.preset`: `gitlab` contradicts the issuer URL",
            ),
            ("[audit]", "[admin]\ntoken = { env = \"T\" }\nmetrics = \"public\"\n[audit]", "`admin.metrics`"),
        ];
        for (from, to, want) in table {
            assert!(GOOD.contains(from), "{from}");
            let err = Config::parse(Path::new("conf/phantom.toml"), &GOOD.replacen(from, to, 1)).unwrap_err();
            let text = err.to_string();
            assert!(text.starts_with("conf/phantom.toml: "), "{text}");
            assert!(text.contains(want), "{to}: {text}");
        }
    }

    #[test]
    fn loopback_hosts() {
        for h in ["127.0.0.1", "127.1.2.3", "[::1]", "localhost"] {
            assert!(is_loopback(h), "{h}");
        }
        for h in ["10.0.0.1", "example.com", "localhost.example.com", "0.0.0.0"] {
            assert!(!is_loopback(h), "{h}");
        }
    }
}
