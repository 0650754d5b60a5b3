//! The loopback double of the public npm registry (tests/node/public-registry.mjs): staging that
//! creates packages, silent staging, stage-only tokens and trusted-publishing connections, and a
//! stage's `validating` status, each as the registry is documented to behave.

use super::{first_line, repo, Certs, Http, Proc};
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

pub(crate) struct PublicRegistry {
    _proc: Proc,
    pub url: String,
    /// Its tokens, by kind: `direct`, `bypass-2fa`, `stage-only`, `oidc-stage-only` (canaries:
    /// none may reach a client of the broker).
    pub tokens: Vec<(String, String)>,
}

impl PublicRegistry {
    /// Starts the double with one token of each kind and the packages it already has
    /// (`name -> versions`); a stage is `validating` for `validating_ms`.
    pub(crate) fn start(dir: &Path, certs: &Certs, packages: Value, validating_ms: u64) -> PublicRegistry {
        std::fs::create_dir_all(dir).unwrap();
        let tokens: Vec<(String, String)> = ["direct", "bypass-2fa", "stage-only", "oidc-stage-only"]
            .into_iter()
            .map(|kind| (kind.to_owned(), format!("npm_double_{}_{}", kind.replace('-', "_"), super::random_hex(12))))
            .collect();
        let state = json!({
            "tokens": tokens.iter().map(|(kind, token)| json!({"token": token, "user": format!("{kind}-user"), "kind": kind})).collect::<Vec<_>>(),
            "packages": packages,
        });
        std::fs::write(dir.join("state.json"), state.to_string()).unwrap();
        let log = std::fs::File::create(dir.join("public-registry.log")).unwrap();
        let mut child = Command::new("node")
            .arg(repo().join("tests/node/public-registry.mjs"))
            .arg("--cert")
            .arg(&certs.cert)
            .arg("--key")
            .arg(&certs.key)
            .arg("--state")
            .arg(dir.join("state.json"))
            .arg("--validating-ms")
            .arg(validating_ms.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let proc = Proc::new(child);
        let line = first_line(stdout, Duration::from_secs(20)).expect("the public-registry double printed nothing");
        let url = serde_json::from_str::<Value>(&line).unwrap()["url"].as_str().unwrap().to_owned();
        PublicRegistry { _proc: proc, url, tokens }
    }

    /// The token of `kind`.
    pub(crate) fn token(&self, kind: &str) -> &str {
        &self.tokens.iter().find(|(k, _)| k == kind).unwrap().1
    }

    /// Its packages, stages and the requests it got (method, path, `npm-command`, the token's user).
    pub(crate) fn state(&self, http: &Http) -> Value {
        let r = http.request("GET", &format!("{}-/double/state", self.url), &[], "");
        assert_eq!(r.status, 200);
        r.json()
    }
}
