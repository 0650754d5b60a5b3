//! `phantom demo`: the whole job on one machine, in one command.
//!
//! On loopback, over TLS on every leg, it starts an upstream registry (Verdaccio, installed
//! into the demo's cache folder on first use), an identity provider shaped like GitHub Actions'
//! (`issuer`, in this process, demo only) and the broker, with a config it writes. Then a CI job
//! of `acme/hello` publishes `demo-hello` with the real npm CLI and no token (npm's own OIDC
//! exchange), the same job is refused a package no grant gives it, and the audit log is
//! verified. It stays up, for the caller to try more, until Ctrl-C, and stops all it started.
//!
//! The cache folder (`--dir`, default `.phantom-demo`) holds `node/` (the installed tools, kept)
//! and `run/` (certificates, config, policy, secrets, storage, logs: made anew on every run).

mod issuer;
mod registry;

use issuer::{Issuer, JOB};
use phantom_broker::config::Config;
use phantom_broker::server::{self, App};
use phantom_broker::support::net::{self, HttpsClient};
use registry::{Tools, Verdaccio};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

/// The package the demo's job may publish, and one it may not.
const GRANTED: &str = "demo-hello";
const REFUSED: &str = "demo-other";

#[derive(clap::Args, Debug)]
pub(crate) struct DemoArgs {
    /// The demo's cache folder: the tools it installs (kept) and each run's files (made anew).
    #[arg(long, default_value = ".phantom-demo")]
    pub(crate) dir: PathBuf,
}

/// What the demo prints: a few lines a person reads, on stdout.
fn say(line: &str) {
    println!("{line}");
}

pub(crate) struct Certs {
    pub(crate) ca: PathBuf,
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
}

/// Empties the run folder and opens the broker's log in it (`run/phantom.log`): the broker's
/// log lines go there, so the terminal keeps the demo's own story.
pub(crate) fn start_run(args: &DemoArgs) -> Result<std::fs::File, String> {
    let run = args.dir.join("run");
    if run.exists() {
        std::fs::remove_dir_all(&run).map_err(|e| format!("cannot empty {}: {e}", run.display()))?;
    }
    std::fs::create_dir_all(&run).map_err(|e| format!("cannot create {}: {e}", run.display()))?;
    let log = run.join("phantom.log");
    std::fs::File::create(&log).map_err(|e| format!("cannot create {}: {e}", log.display()))
}

/// Runs the demo until `shutdown` resolves; stops everything it started on the way out,
/// whether it succeeded or not.
pub(crate) async fn run(args: DemoArgs, shutdown: impl Future<Output = ()>) -> Result<(), String> {
    let dir = std::path::absolute(&args.dir).map_err(|e| format!("{}: {e}", args.dir.display()))?;
    let run = dir.join("run");
    say("phantom demo: a broker in front of a local registry, and a CI job that publishes through it");
    let tools = registry::tools(&dir.join("node")).await?;
    let written = crate::cli::certs::write_dev_certs(&run.join("certs"), &[], true)?;
    let certs = Certs { ca: written.ca, cert: written.cert, key: written.key };
    let http = net::https_client(net::client_config(Some(&certs.ca))?, Duration::from_secs(5));
    let mut verdaccio = Verdaccio::start(&tools, &run.join("verdaccio"), &certs, &http).await?;
    let issuer = Issuer::start(&certs.cert, &certs.key).await;
    let result = match &issuer {
        Ok(issuer) => {
            let demo =
                Demo { run: &run, dir: &dir, tools: &tools, certs: &certs, http: &http, verdaccio: &verdaccio, issuer };
            demo.run(shutdown).await
        }
        Err(e) => Err(e.clone()),
    };
    if let Ok(issuer) = &issuer {
        issuer.stop();
    }
    verdaccio.stop().await;
    if result.is_ok() {
        say("phantom demo: stopped the broker, the registry and the identity provider");
    }
    result
}

struct Demo<'a> {
    run: &'a Path,
    dir: &'a Path,
    tools: &'a Tools,
    certs: &'a Certs,
    http: &'a HttpsClient,
    verdaccio: &'a Verdaccio,
    issuer: &'a Issuer,
}

impl Demo<'_> {
    async fn run(&self, shutdown: impl Future<Output = ()>) -> Result<(), String> {
        let listener = server::bind(([127, 0, 0, 1], 0).into()).map_err(|e| format!("broker: {e}"))?;
        let broker_addr = listener.local_addr().map_err(|e| e.to_string())?;
        let admin = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.map_err(|e| format!("admin: {e}"))?;
        let admin_addr = admin.local_addr().map_err(|e| e.to_string())?;
        let broker_url = format!("https://127.0.0.1:{}/", broker_addr.port());
        let config_path = self.write_config(broker_addr, admin_addr)?;
        let config = Config::load(&config_path).map_err(|e| e.to_string())?;
        let app = Arc::new(App::new(config)?);
        tracing::info!(addr = %broker_addr, grants = app.policy().len(), "listening");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let mut serving = tokio::spawn(server::serve(app, listener, None, Some(admin), async {
            let _ = stopped.await;
        }));

        let rel =
            |p: &Path| p.strip_prefix(std::env::current_dir().unwrap_or_default()).unwrap_or(p).display().to_string();
        say(&format!(
            "  upstream registry  {} (Verdaccio {}; its user {}'s token is the real credential)",
            self.verdaccio.url,
            registry::VERDACCIO_VERSION,
            registry::PUBLISHER
        ));
        say(&format!("  identity provider  {} (GitHub Actions' shape, demo only)", self.issuer.url));
        say(&format!("  broker             {broker_url} (config {})", rel(&config_path)));

        let story = self.story(&broker_url, &rel).await;
        let outcome = match story {
            Ok(()) => {
                say("");
                say("phantom demo: ready. Ctrl-C stops the broker, the registry and the identity provider.");
                say("Try next (in another shell):");
                say(&format!(
                    "  . {}   # be the CI job: its ID-token endpoint, the broker as npm's registry",
                    rel(&self.run.join("ci-env.sh"))
                ));
                say(&format!(
                    "  cd {} && npm version patch && npm publish",
                    rel(&self.run.join("sample").join(GRANTED))
                ));
                say(&format!(
                    "  curl --cacert {} {}{GRANTED}   # the upstream's own record",
                    rel(&self.certs.ca),
                    self.verdaccio.url
                ));
                say(&format!("  {} audit verify {}", rel(&phantom_exe()), rel(&self.run.join("audit/phantom.jsonl"))));
                tokio::select! {
                    _ = shutdown => Ok(()),
                    ended = &mut serving => return Err(format!("the broker stopped: {}", joined(ended))),
                }
            }
            Err(e) => Err(e),
        };
        let _ = stop.send(());
        match tokio::time::timeout(Duration::from_secs(15), &mut serving).await {
            Ok(Ok(Ok(()))) => outcome,
            Ok(ended) => outcome.and(Err(format!("the broker did not stop cleanly: {}", joined(ended)))),
            Err(_) => {
                serving.abort();
                outcome.and(Err("the broker did not stop within 15 s".into()))
            }
        }
    }

    /// The two publishes and the audit log's account of them.
    async fn story(&self, broker_url: &str, rel: &dyn Fn(&Path) -> String) -> Result<(), String> {
        say("");
        say(&format!("1. npm publish {GRANTED}@1.0.0, as a GitHub Actions job of {} with no token:", JOB.repository));
        let out = self.npm_publish(GRANTED).await?;
        if !out.status.success() {
            return Err(format!("npm publish {GRANTED} through the broker failed:\n{}", tail(&out, 12)));
        }
        match self.verdaccio.latest(self.http, GRANTED).await? {
            Some(v) if v == "1.0.0" => {}
            other => return Err(format!("npm said it published {GRANTED}, but the registry's latest is {other:?}")),
        }
        let printed = String::from_utf8_lossy(&out.stdout).lines().find(|l| l.starts_with("+ ")).map(str::to_owned);
        say(&format!("   npm: {}", printed.unwrap_or_else(|| format!("published {GRANTED}"))));
        say("   npm asked the CI for an ID token, traded it at the broker for a phantom, and published with it");
        say(&format!("   upstream: {GRANTED}@1.0.0 is live at {}{GRANTED}", self.verdaccio.url));

        say(&format!("2. npm publish {REFUSED}@1.0.0, which no grant gives {}:", JOB.repository));
        let out = self.npm_publish(REFUSED).await?;
        if out.status.success() {
            return Err(format!("npm publish {REFUSED} was not refused:\n{}", tail(&out, 12)));
        }
        if let Some(v) = self.verdaccio.latest(self.http, REFUSED).await? {
            return Err(format!("{REFUSED}@{v} reached the registry, though the broker refused it"));
        }
        let npm_code = String::from_utf8_lossy(&out.stderr)
            .lines()
            .find_map(|l| l.strip_prefix("npm error code ").map(str::to_owned))
            .unwrap_or_else(|| "an error".into());
        say(&format!(
            "   refused: the broker gave npm no phantom, npm stopped with {npm_code}; the upstream has no {REFUSED}"
        ));

        let audit = self.run.join("audit/phantom.jsonl");
        let (lines, records) = settled_audit(&audit).await?;
        say(&format!(
            "3. audit log {}: intact, {lines} lines (what `phantom audit verify` says); its writes and exchanges:",
            rel(&audit)
        ));
        for r in
            records.iter().filter(|r| r["event"] == "exchange" || (r["event"] == "request" && r["action"] != "read"))
        {
            say(&format!("   {}", audit_line(r)));
        }
        self.write_ci_env(broker_url)
    }

    /// An unmodified `npm publish` of a fresh sample package, in the environment a GitHub
    /// Actions job with `id-token: write` has, and nothing else of the caller's npm settings.
    async fn npm_publish(&self, name: &str) -> Result<std::process::Output, String> {
        let dir = self.run.join("sample").join(name);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let manifest = serde_json::json!({"name": name, "version": "1.0.0", "main": "index.js", "license": "MIT",
            "description": "Published by phantom demo, through the broker, with no token in the job."});
        std::fs::write(dir.join("package.json"), format!("{manifest:#}\n")).map_err(|e| e.to_string())?;
        std::fs::write(dir.join("index.js"), format!("module.exports = 'hello from {name}';\n"))
            .map_err(|e| e.to_string())?;
        let mut cmd = tokio::process::Command::new(&self.tools.node);
        cmd.arg(&self.tools.npm_cli).arg("publish").current_dir(&dir);
        // None of the caller's own npm settings or tokens: the job holds no token.
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy().to_ascii_lowercase();
            if k.starts_with("npm_config_") || k == "npm_token" || k == "node_auth_token" {
                cmd.env_remove(key);
            }
        }
        cmd.envs(self.job_env());
        let run = cmd.stdin(Stdio::null()).kill_on_drop(true).output();
        tokio::time::timeout(Duration::from_secs(120), run)
            .await
            .map_err(|_| format!("npm publish {name} did not finish in 120 s"))?
            .map_err(|e| format!("cannot run npm: {e}"))
    }

    /// What the job's environment holds: GitHub's ID-token endpoint (here the demo's issuer)
    /// and an npm config whose registry is the broker. No token.
    fn job_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("GITHUB_ACTIONS", "true".into()),
            ("ACTIONS_ID_TOKEN_REQUEST_URL", format!("{}/token", self.issuer.url)),
            ("ACTIONS_ID_TOKEN_REQUEST_TOKEN", self.issuer.request_token.expose().to_owned()),
            // npm fetches the ID token with Node's own trust, not its `cafile`.
            ("NODE_EXTRA_CA_CERTS", self.certs.ca.display().to_string()),
            ("NPM_CONFIG_USERCONFIG", self.run.join("npmrc").display().to_string()),
            ("NPM_CONFIG_CACHE", self.run.join("npm-cache").display().to_string()),
            ("NPM_CONFIG_UPDATE_NOTIFIER", "false".into()),
            ("NPM_CONFIG_FUND", "false".into()),
            ("NPM_CONFIG_AUDIT", "false".into()),
        ]
    }

    /// `run/ci-env.sh`: the job's environment for the caller's own shell (owner-only: it holds
    /// the demo runner's request token).
    fn write_ci_env(&self, broker_url: &str) -> Result<(), String> {
        let mut text = format!(
            "# Written by `phantom demo`: source it to be the demo's CI job. npm's registry is the broker\n\
             # ({broker_url}); npm asks the job's ID-token endpoint (the demo's identity provider) for a token.\n"
        );
        for (key, value) in self.job_env() {
            text.push_str(&format!("export {key}='{value}'\n"));
        }
        let bin = self.dir.join("node/node_modules/.bin");
        text.push_str(&format!("export PATH='{}':\"$PATH\"   # npm {}\n", bin.display(), registry::NPM_VERSION));
        write_private(&self.run.join("ci-env.sh"), &text)
    }

    /// `run/phantom.toml`, its policy and its secrets; returns the config's path.
    fn write_config(&self, broker: std::net::SocketAddr, admin: std::net::SocketAddr) -> Result<PathBuf, String> {
        let secrets = self.run.join("secrets");
        write_private(&secrets.join("npm-token"), &format!("{}\n", self.verdaccio.token.expose()))?;
        let rng = ring::rand::SystemRandom::new();
        write_private(&secrets.join("admin-token"), &format!("{}\n", issuer::random_hex(&rng, 24)?))?;
        let config = format!(
            r#"# Written by `phantom demo`: the broker in front of the demo's Verdaccio, trusting the demo's
# identity provider. Relative paths are relative to this file.

[server]
listen = "{broker}"
public_url = "https://127.0.0.1:{port}/"   # npm asks for an ID token with audience npm:127.0.0.1
tls_cert = "certs/server.pem"
tls_key = "certs/server-key.pem"
workers = 1

[upstream.verdaccio]
url = "{upstream}"
scopes = ["*"]
ca_file = "certs/ca.pem"

[issuer.demo]
issuer = "{issuer}"
algorithms = ["ES256"]
ca_file = "certs/ca.pem"

[credential.demo-publisher]
upstream = "verdaccio"
source = {{ file = "secrets/npm-token" }}
packages = ["demo-*"]

[audit]
path = "audit/phantom.jsonl"

[admin]
listen = "{admin}"
token = {{ file = "secrets/admin-token" }}

[policy]
dir = "policies"
"#,
            port = broker.port(),
            upstream = self.verdaccio.url,
            issuer = self.issuer.url,
        );
        let policy = format!(
            r#"# Written by `phantom demo`. The demo's CI job (the release workflow of {repo}, on main, pinned
# by its repository's and owner's ids) may publish {GRANTED} and move its dist-tags; nothing else.
[[grant]]
name = "demo-release"
issuer = "demo"
packages = ["{GRANTED}"]
actions = ["publish", "dist-tag"]
create = true
credential = "demo-publisher"
ttl = "10m"
max_uses = 3
rate = "10/1h"
[grant.claims]
repository_id = "{repo_id}"
repository_owner_id = "{owner_id}"
job_workflow_ref = "{workflow}"
ref = "refs/heads/main"
event_name = ["push", "workflow_dispatch"]
"#,
            repo = JOB.repository,
            repo_id = JOB.repository_id,
            owner_id = JOB.repository_owner_id,
            workflow = JOB.workflow_ref,
        );
        let npmrc = format!("registry=https://127.0.0.1:{}/\ncafile={}\n", broker.port(), self.certs.ca.display());
        let path = self.run.join("phantom.toml");
        for (file, text) in
            [(&path, config), (&self.run.join("policies/demo.toml"), policy), (&self.run.join("npmrc"), npmrc)]
        {
            if let Some(parent) = file.parent() {
                std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
            }
            std::fs::write(file, text).map_err(|e| format!("{}: {e}", file.display()))?;
        }
        Ok(path)
    }
}

/// One audit record as a person reads it: `#6 publish demo-hello: allow (grant demo-release), upstream 201`.
fn audit_line(r: &serde_json::Value) -> String {
    let what = if r["event"] == "exchange" { "exchange" } else { r["action"].as_str().unwrap_or("request") };
    let decision = match r["decision"].as_str().unwrap_or("?") {
        // The write-ahead line: a write is on record before it is forwarded.
        "forwarding" => "on record before it went upstream".to_owned(),
        d => d.to_owned(),
    };
    let mut line = format!("#{} {what} {}: {decision}", r["seq"], r["package"].as_str().unwrap_or("-"));
    if let Some(grant) = r["grant"].as_str().filter(|_| r["decision"] == "allow") {
        line.push_str(&format!(" (grant {grant})"));
    }
    if let Some(status) = r["upstream_status"].as_u64() {
        line.push_str(&format!(", upstream answered {status}"));
    }
    if let Some(reason) = r["reason"].as_str() {
        line.push_str(&format!(" ({}): {reason}", r["status"]));
    }
    line
}

/// The audit log once it verifies and has stopped growing (lines are written moments after
/// the requests they record): its line count and records.
async fn settled_audit(path: &Path) -> Result<(u64, Vec<serde_json::Value>), String> {
    let mut last = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let len = std::fs::metadata(path).map(|m| m.len()).ok();
        if len.is_some() && len == last {
            break;
        }
        last = len;
    }
    match phantom_broker::audit::verify(path).map_err(|e| e.to_string())? {
        phantom_broker::audit::Verdict::Intact { lines } => {
            let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            Ok((lines, text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()))
        }
        phantom_broker::audit::Verdict::Broken { line, reason } => {
            Err(format!("the audit log {} does not verify: line {line}: {reason}", path.display()))
        }
    }
}

/// How the caller runs this binary again: its path (`target/release/phantom` under `cargo run`).
fn phantom_exe() -> PathBuf {
    std::env::current_exe().unwrap_or_else(|_| "phantom".into())
}

fn joined(ended: Result<Result<(), String>, tokio::task::JoinError>) -> String {
    match ended {
        Ok(Ok(())) => "stopped".into(),
        Ok(Err(e)) => e,
        Err(e) => e.to_string(),
    }
}

fn tail(out: &std::process::Output, n: usize) -> String {
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Writes a file only its owner can read (a secret, or what holds one).
fn write_private(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut file = opts.open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    file.write_all(text.as_bytes()).map_err(|e| format!("{}: {e}", path.display()))
}

fn free_port() -> Result<u16, String> {
    let socket = std::net::TcpListener::bind(("127.0.0.1", 0)).map_err(|e| format!("no free port: {e}"))?;
    socket.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}
