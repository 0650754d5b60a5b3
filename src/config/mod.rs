//! `phantom.toml`: strict parsing (unknown keys are errors) into validated types, once, at start.
//!
//! Relative paths in the file are relative to the file's own directory.

mod console;
mod raw;
mod rotation;
mod types;
mod validate;

pub use types::*;

use std::path::Path;

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError { file: path.display().to_string(), message: format!("cannot read: {e}") })?;
        Config::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let err = |message: String| ConfigError { file: path.display().to_string(), message };
        let raw: raw::RawConfig = toml::from_str(text).map_err(|e| err(e.to_string().trim_end().to_owned()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        validate::validate(raw, path, base).map_err(err)
    }

    pub(crate) fn issuer_names(&self) -> Vec<&str> {
        self.issuers.iter().map(|i| i.name.as_str()).collect()
    }

    pub(crate) fn credential_names(&self) -> Vec<&str> {
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

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
