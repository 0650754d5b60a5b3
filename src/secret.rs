//! Types for values that must never be logged: real registry credentials, phantom tokens and
//! raw OIDC ID tokens.
//!
//! Each type has a redacted `Debug`, no `Display` and no `Serialize`, is zeroized on drop, and
//! is read through one explicit method (`expose`), so every use of the secret is greppable.

use std::fmt;
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
