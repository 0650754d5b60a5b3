//! Types for values that must never be logged: real registry credentials, phantom tokens and
//! raw OIDC ID tokens.
//!
//! Each type has a redacted `Debug`, no `Display` and no `Serialize`, is zeroized on drop, and
//! is read through one explicit method (`expose`), so every use of the secret is greppable.

use serde::Deserialize;
use std::fmt;
use std::path::PathBuf;
use zeroize::Zeroizing;

/// A secret string: a real credential or a raw ID token.
pub struct Secret {
    value: Zeroizing<String>,
}

impl Secret {
    pub fn new(value: String) -> Self {
        Secret { value: Zeroizing::new(value) }
    }

    /// The secret itself. Callers must not log, format or store what they get.
    pub fn expose(&self) -> &str {
        &self.value
    }

    pub fn len(&self) -> usize {
        self.value.len()
    }

    pub fn is_empty(&self) -> bool {
        self.value.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A raw OIDC ID token as received from a caller, not yet verified.
pub struct IdToken(Secret);

impl IdToken {
    pub fn new(raw: String) -> Self {
        IdToken(Secret::new(raw))
    }

    pub fn expose(&self) -> &str {
        self.0.expose()
    }
}

impl fmt::Debug for IdToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IdToken(<redacted>)")
    }
}

/// Where a secret comes from: `{ file = "..." }` or `{ env = "..." }`. It names the place (a
/// path or a variable's name), never holds the secret.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum SecretSource {
    File(PathBuf),
    Env(String),
}

/// Written by hand, not derived: it prints where a secret lives, and a variant that held one
/// would have to decide here what to show. `tests/secrets_debug.rs` checks it with a canary.
impl std::fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretSource::File(path) => write!(f, "SecretSource::File({})", path.display()),
            SecretSource::Env(name) => write!(f, "SecretSource::Env({name})"),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_secret() {
        let canary = "npm_CANARY_3f9a7c1e";
        assert!(!format!("{:?}", Secret::new(canary.into())).contains("CANARY"));
        assert!(!format!("{:#?}", IdToken::new(canary.into())).contains("CANARY"));
    }
}
