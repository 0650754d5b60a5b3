//! `phantom.toml` as written: serde structs, strict (unknown keys are errors).

use crate::support::secret::SecretSource;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) server: RawServer,
    #[serde(default)]
    pub(super) upstream: BTreeMap<String, RawUpstream>,
    #[serde(default)]
    pub(super) issuer: BTreeMap<String, RawIssuer>,
    #[serde(default)]
    pub(super) credential: BTreeMap<String, RawCredential>,
    #[serde(default)]
    pub(super) state: RawState,
    pub(super) audit: RawAudit,
    #[serde(default)]
    pub(super) policy: RawPolicy,
    pub(super) admin: Option<RawAdmin>,
    #[serde(default)]
    pub(super) notify: BTreeMap<String, RawNotify>,
    pub(super) proxy: Option<RawProxy>,
    pub(super) rotation: Option<super::rotation::RawRotation>,
    pub(super) console: Option<super::console::RawConsole>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProxy {
    pub(super) listen: Option<String>,
    pub(super) ca_cert: PathBuf,
    pub(super) ca_key: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNotify {
    pub(super) webhook: String,
    pub(super) secret: Option<SecretSource>,
    pub(super) ca_file: Option<PathBuf>,
    pub(super) events: Option<Vec<String>>,
    pub(super) escalate: Option<Vec<String>>,
    pub(super) format: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) listen: Option<String>,
    pub(super) token: SecretSource,
    pub(super) metrics: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub(super) listen: Option<String>,
    pub(super) public_url: String,
    pub(super) tls_cert: PathBuf,
    pub(super) tls_key: PathBuf,
    pub(super) max_body_bytes: Option<u64>,
    pub(super) default_ttl: Option<String>,
    pub(super) max_ttl: Option<String>,
    pub(super) upstream_timeout: Option<String>,
    pub(super) client_timeout: Option<String>,
    pub(super) max_connections: Option<usize>,
    pub(super) max_buffered_bytes: Option<u64>,
    pub(super) workers: Option<usize>,
    pub(super) freeze_on_burst: Option<bool>,
    pub(super) max_held_bytes: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    pub(super) url: String,
    pub(super) scopes: Vec<String>,
    pub(super) ca_file: Option<PathBuf>,
    pub(super) stages_only: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIssuer {
    pub(super) preset: Option<String>,
    pub(super) issuer: Option<String>,
    pub(super) algorithms: Option<Vec<String>>,
    pub(super) audience: Option<String>,
    pub(super) ca_file: Option<PathBuf>,
    pub(super) leeway: Option<String>,
    pub(super) jwks_cache: Option<String>,
    pub(super) fetch_timeout: Option<String>,
    pub(super) device: Option<RawDevice>,
    pub(super) web: Option<super::console::RawWeb>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDevice {
    pub(super) client_id: String,
    pub(super) scopes: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCredential {
    pub(super) upstream: String,
    pub(super) source: SecretSource,
    #[serde(default)]
    pub(super) packages: Vec<String>,
    pub(super) class: Option<String>,
    pub(super) publish: Option<String>,
    pub(super) created: Option<toml::Value>,
    pub(super) expires: Option<toml::Value>,
    pub(super) top: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawState {
    pub(super) backend: Option<String>,
    pub(super) key_prefix: Option<String>,
    pub(super) timeout: Option<String>,
    pub(super) ca_file: Option<PathBuf>,
    pub(super) username: Option<String>,
    pub(super) password: Option<SecretSource>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAudit {
    pub(super) path: PathBuf,
    pub(super) key: Option<SecretSource>,
    pub(super) serve_reads_on_failure: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    pub(super) dir: Option<PathBuf>,
}
