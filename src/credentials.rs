//! The real registry credentials, read once at start from a file or an environment variable.
//!
//! A credential is reachable only through `Credentials::for_authorized`, which takes proof that
//! policy permitted the request and returns an `UpstreamAuth`, the only value the upstream
//! client sends a credential from: there is no path from an unchecked request to a real token.

use crate::config::{CredentialConfig, SecretSource};
use crate::policy::{Authorized, Glob};
use crate::secret::Secret;
use http::HeaderValue;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
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
    /// The token's bytes, shared by every response scrubber instead of copied per response.
    scrub: Arc<Zeroizing<Vec<u8>>>,
}

impl Credential {
    pub fn from_secret(cfg: &CredentialConfig, secret: Secret) -> Result<Credential, String> {
        let mut authorization = HeaderValue::from_str(&format!("Bearer {}", secret.expose()))
            .map_err(|_| format!("credential `{}`: the token has characters a header cannot carry", cfg.name))?;
        authorization.set_sensitive(true);
        let scrub = Arc::new(Zeroizing::new(secret.expose().as_bytes().to_vec()));
        Ok(Credential {
            scrub,
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
    pub fn scrub_pattern(&self) -> &Arc<Zeroizing<Vec<u8>>> {
        &self.scrub
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

/// Reads a secret from its source. Surrounding whitespace (a trailing newline) is dropped.
pub fn read_secret(source: &SecretSource) -> Result<Secret, String> {
    let raw = match source {
        SecretSource::File(path) => {
            std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?
        }
        SecretSource::Env(var) => {
            std::env::var(var).map_err(|_| format!("the environment variable {var} is not set"))?
        }
    };
    let raw = zeroize::Zeroizing::new(raw);
    let value = raw.trim();
    if value.is_empty() {
        return Err("the secret is empty".into());
    }
    if value.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("the secret contains whitespace or control characters".into());
    }
    Ok(Secret::new(value.to_owned()))
}

/// How one upstream request authenticates: anonymously, or with the credential of the grant
/// that authorized it. Only `Credentials::for_authorized` makes one that carries a credential.
#[derive(Debug, Clone, Copy)]
pub(crate) struct UpstreamAuth<'a>(Option<&'a Credential>);

impl UpstreamAuth<'_> {
    /// No credential: `Authorization` is not sent upstream.
    pub(crate) const ANONYMOUS: UpstreamAuth<'static> = UpstreamAuth(None);

    pub(crate) fn credential(&self) -> Option<&Credential> {
        self.0
    }
}

#[derive(Default)]
pub struct Credentials {
    by_name: HashMap<String, Arc<Credential>>,
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
            by_name.insert(cfg.name.clone(), Arc::new(Credential::from_secret(cfg, secret)?));
        }
        Ok(Credentials { by_name })
    }

    /// How a request that policy authorized authenticates to `upstream`: with its grant's
    /// credential, which must belong to that upstream.
    pub(crate) fn for_authorized<T>(
        &self,
        authorized: &Authorized<T>,
        upstream: &str,
    ) -> Result<UpstreamAuth<'_>, String> {
        let grant = authorized.grant();
        match self.by_name.get(&grant.credential) {
            Some(c) if c.upstream == upstream => Ok(UpstreamAuth(Some(c))),
            Some(_) => Err(format!("grant `{}`'s credential does not serve upstream `{upstream}`", grant.name)),
            None => Err(format!("grant `{}` names an unknown credential", grant.name)),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Credential>> {
        self.by_name.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        };
        let creds = Credentials::load(std::slice::from_ref(&cfg)).unwrap();
        let c = creds.by_name.get("c").unwrap();
        assert_eq!(c.secret().expose(), "npm_CANARY_91f0");
        assert_eq!(c.authorization(), "Bearer npm_CANARY_91f0");
        assert!(c.authorization().is_sensitive());
        assert!(!format!("{c:?} {creds:?}").contains("CANARY"));

        let missing = SecretSource::Env("PHANTOM_TEST_SURELY_UNSET_VAR".into());
        assert!(read_secret(&missing).unwrap_err().contains("PHANTOM_TEST_SURELY_UNSET_VAR"));
        std::fs::write(dir.path().join("bad"), "two words").unwrap();
        assert!(read_secret(&SecretSource::File(dir.path().join("bad"))).is_err());
    }
}
