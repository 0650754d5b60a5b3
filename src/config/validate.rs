//! From the file as written (`raw.rs`) to validated types, a section at a time. Every error
//! names the key. Relative paths are relative to the config file's directory.

use super::raw::{
    RawAdmin, RawConfig, RawCredential, RawDevice, RawIssuer, RawNotify, RawProxy, RawServer, RawState, RawUpstream,
};
use super::types::*;
use crate::policy::Glob;
use crate::support::net::is_loopback;
use crate::support::secret::SecretSource;
use crate::support::units::parse_duration;
use http::Uri;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

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

/// Where relative paths in the file are relative to.
struct Base<'a>(&'a Path);

impl Base<'_> {
    fn rel(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.0.join(p)
        }
    }

    /// A secret's source, a file's path made absolute.
    fn secret(&self, source: SecretSource) -> SecretSource {
        match source {
            SecretSource::File(p) => SecretSource::File(self.rel(&p)),
            env => env,
        }
    }
}

/// `key`'s duration, or `default` seconds.
fn dur(key: &str, v: &Option<String>, default: u64) -> Result<Duration, String> {
    match v {
        Some(s) => parse_duration(s).map_err(|e| format!("`{key}`: {e}")),
        None => Ok(Duration::from_secs(default)),
    }
}

pub(super) fn validate(raw: RawConfig, path: &Path, base: &Path) -> Result<Config, String> {
    let b = Base(base);
    let server = server(&raw.server, &b)?;
    let upstreams = upstreams(raw.upstream, &b)?;
    let console = super::console::console(
        raw.console,
        raw.admin.as_ref().map(|a| admin_listen(a.listen.as_deref())).transpose()?,
        &raw.issuer.iter().filter(|(_, i)| i.web.is_some()).map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
    )?;
    let issuers = issuers(raw.issuer, &server, &b)?;
    let credentials = credentials(raw.credential, &upstreams, &b)?;
    let state = state_config(raw.state, &b)?;
    let admin = admin(raw.admin, &b)?;
    let notify = notify(raw.notify, &b)?;
    let proxy = proxy(raw.proxy, &upstreams, &b)?;
    let rotation = super::rotation::rotation(raw.rotation)?;
    // A credential with no date has no deadline: under refuse-writes it would never be refused.
    if let Some(c) =
        credentials.iter().find(|c| c.class.is_some_and(|k| rotation.refuses_writes(k)) && c.created.is_none())
    {
        return Err(format!(
            "`credential.{}`: class {} refuses writes when overdue (`rotation.overdue`), so it needs `created`",
            c.name,
            c.class.unwrap_or('?')
        ));
    }
    Ok(Config {
        console,
        rotation,
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
            path: b.rel(&raw.audit.path),
            serve_reads_on_failure: raw.audit.serve_reads_on_failure.unwrap_or(true),
            key: raw.audit.key.map(|k| b.secret(k)),
        },
        policy_dir: b.rel(raw.policy.dir.as_deref().unwrap_or(Path::new("policies"))),
    })
}

fn server(s: &RawServer, b: &Base<'_>) -> Result<ServerConfig, String> {
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
        tls_cert: b.rel(&s.tls_cert),
        tls_key: b.rel(&s.tls_key),
        max_body_bytes: s.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY),
        default_ttl: dur("server.default_ttl", &s.default_ttl, 600)?,
        max_ttl: dur("server.max_ttl", &s.max_ttl, 3600)?,
        upstream_timeout: dur("server.upstream_timeout", &s.upstream_timeout, 300)?,
        client_timeout: dur("server.client_timeout", &s.client_timeout, 30)?,
        max_connections: s.max_connections.unwrap_or(20_000),
        max_buffered_bytes: s.max_buffered_bytes.unwrap_or(1024 * 1024 * 1024),
        workers: s.workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        freeze_on_burst: s.freeze_on_burst.unwrap_or(false),
        max_held_bytes: s.max_held_bytes.unwrap_or(64 * 1024 * 1024),
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
    Ok(server)
}

fn upstreams(raw: BTreeMap<String, RawUpstream>, b: &Base<'_>) -> Result<Vec<UpstreamConfig>, String> {
    if raw.is_empty() {
        return Err("at least one `[upstream.NAME]` is required".into());
    }
    let mut seen_scopes: BTreeMap<String, String> = BTreeMap::new();
    let mut upstreams = Vec::new();
    for (name, u) in raw {
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
            ca_file: u.ca_file.as_deref().map(|p| b.rel(p)),
            stages_only: u.stages_only.unwrap_or(false),
        });
    }
    Ok(upstreams)
}

fn issuers(raw: BTreeMap<String, RawIssuer>, server: &ServerConfig, b: &Base<'_>) -> Result<Vec<IssuerConfig>, String> {
    let mut issuers = Vec::new();
    for (name, i) in raw {
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
        let device = device_client(&name, i.device)?;
        let web = super::console::web_client(&name, i.web, |s| b.secret(s))?;
        // A person's ID token is for the client they signed in with.
        let audience = match (&i.audience, &device) {
            (Some(a), _) => a.clone(),
            (None, Some(d)) => d.client_id.clone(),
            (None, None) => server.npm_audience(),
        };
        issuers.push(IssuerConfig {
            audience,
            device,
            web,
            issuer,
            preset,
            preset_from_url,
            algorithms,
            ca_file: i.ca_file.as_deref().map(|p| b.rel(p)),
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
    Ok(issuers)
}

/// `device = { client_id, scopes }`: a public client's id, and scopes as OAuth writes them.
fn device_client(issuer: &str, raw: Option<RawDevice>) -> Result<Option<DeviceClient>, String> {
    let Some(raw) = raw else { return Ok(None) };
    let token =
        |s: &str| !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
    if !token(&raw.client_id) {
        return Err(format!(
            "`issuer.{issuer}.device.client_id` must be a non-empty client id without spaces or quotes"
        ));
    }
    let default = || ["email", "profile"].map(str::to_owned).to_vec();
    let scopes: Vec<String> = raw.scopes.unwrap_or_else(default).into_iter().filter(|s| s != "openid").collect();
    if scopes.len() > 16 || !scopes.iter().all(|s| token(s)) {
        return Err(format!("`issuer.{issuer}.device.scopes`: at most 16 scope names, without spaces or quotes"));
    }
    Ok(Some(DeviceClient { client_id: raw.client_id, scopes }))
}

fn credentials(
    raw: BTreeMap<String, RawCredential>,
    upstreams: &[UpstreamConfig],
    b: &Base<'_>,
) -> Result<Vec<CredentialConfig>, String> {
    let mut credentials = Vec::new();
    for (name, c) in raw {
        if !upstreams.iter().any(|u| u.name == c.upstream) {
            return Err(format!("`credential.{name}.upstream`: `{}` is not a configured upstream", c.upstream));
        }
        let packages = c
            .packages
            .iter()
            .map(|p| Glob::new(p).map_err(|e| format!("`credential.{name}.packages`: {e}")))
            .collect::<Result<_, _>>()?;
        let source = b.secret(c.source);
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
        let top = c.top.unwrap_or(false);
        if top && class != Some('A') {
            return Err(format!("`credential.{name}.top`: only a class \"A\" credential is marked top"));
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
            top,
        });
    }
    Ok(credentials)
}

fn admin(raw: Option<RawAdmin>, b: &Base<'_>) -> Result<Option<AdminConfig>, String> {
    let admin = match raw {
        None => None,
        Some(a) => {
            let listen = admin_listen(a.listen.as_deref())?;
            let token = b.secret(a.token);
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
    Ok(admin)
}

fn admin_listen(text: Option<&str>) -> Result<SocketAddr, String> {
    let text = text.unwrap_or("127.0.0.1:9090");
    text.parse().map_err(|_| format!("`admin.listen`: `{text}` is not an address like \"127.0.0.1:9090\""))
}

fn notify(raw: BTreeMap<String, RawNotify>, b: &Base<'_>) -> Result<Vec<NotifyConfig>, String> {
    let mut notify = Vec::new();
    let names: Vec<String> = raw.keys().cloned().collect();
    for (name, n) in raw {
        let webhook = checked_url(&n.webhook).map_err(|e| format!("`notify.{name}.webhook`: {e}"))?;
        let secret = n.secret.map(|k| b.secret(k));
        let mut events = Vec::new();
        for e in n.events.unwrap_or_default() {
            let event = NotifyEvent::parse(&format!("notify.{name}.events"), &e)?;
            if !events.contains(&event) {
                events.push(event);
            }
        }
        let escalate = n.escalate.unwrap_or_default();
        if let Some(bad) = escalate.iter().find(|t| !names.contains(t) || **t == name) {
            return Err(format!("`notify.{name}.escalate`: `{bad}` is not another [notify.NAME] target"));
        }
        let format = match n.format.as_deref() {
            None | Some("json") => NotifyFormat::Json,
            Some("ticket") => NotifyFormat::Ticket,
            Some(other) => {
                return Err(format!("`notify.{name}.format`: `{other}` must be \"json\" (the default) or \"ticket\""))
            }
        };
        let ca_file = n.ca_file.as_deref().map(|p| b.rel(p));
        notify.push(NotifyConfig { name, webhook, secret, ca_file, events, escalate, format });
    }
    Ok(notify)
}

fn proxy(raw: Option<RawProxy>, upstreams: &[UpstreamConfig], b: &Base<'_>) -> Result<Option<ProxyConfig>, String> {
    let proxy = match raw {
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
            Some(ProxyConfig { listen, ca_cert: b.rel(&p.ca_cert), ca_key: b.rel(&p.ca_key) })
        }
    };
    Ok(proxy)
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

fn state_config(raw: RawState, b: &Base<'_>) -> Result<StateConfig, String> {
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
        ca_file: raw.ca_file.as_deref().map(|p| b.rel(p)),
        username: raw.username,
        password: raw.password.map(|k| b.secret(k)),
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
