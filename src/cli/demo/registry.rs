//! The demo's Node.js side: Verdaccio as the upstream registry and a pinned npm CLI, installed
//! with the machine's npm into the demo's cache folder on first use, and Verdaccio started on
//! loopback over TLS with a publisher whose token becomes the broker's real credential.

use super::say;
use phantom_broker::support::net::{self, HttpsClient};
use phantom_broker::support::secret::Secret;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, ChildStdin, Command};

/// What the demo installs: the registry, and an npm that does the OIDC exchange itself (11.5.1
/// or newer), whatever npm the machine has. Verdaccio 6.9 and later need Node 22; 6.8.0 runs on
/// Node 20, and its install needs `node-fetch` pinned (a dist-tag it asks for is not always
/// published).
const MANIFEST: &str = r#"{
  "name": "phantom-demo-tools",
  "private": true,
  "description": "Installed by `phantom demo`: the upstream registry and the npm CLI it publishes with.",
  "dependencies": { "verdaccio": "6.8.0", "npm": "11.19.1" },
  "overrides": { "node-fetch": "2.7.0" }
}
"#;
pub(crate) const VERDACCIO_VERSION: &str = "6.8.0";
pub(crate) const NPM_VERSION: &str = "11.19.1";
/// npm 11's own floor (`engines`).
const NODE_MIN: (u64, u64) = (20, 17);

/// The Node.js programs the demo runs.
pub(crate) struct Tools {
    pub(crate) node: PathBuf,
    /// The pinned npm CLI's entry point (run with `node`).
    pub(crate) npm_cli: PathBuf,
    verdaccio: PathBuf,
}

/// Finds Node.js and npm, and installs the demo's tools into `dir` unless a finished install of
/// the same manifest is there.
pub(crate) async fn tools(dir: &Path) -> Result<Tools, String> {
    let node = version("node").await.map_err(|e| {
        format!(
            "phantom demo runs Verdaccio and the npm CLI, which need Node.js {}.{} or newer and npm: {e}. \
             Install Node.js and npm (Debian: apt-get install nodejs npm), then run phantom demo again",
            NODE_MIN.0, NODE_MIN.1
        )
    })?;
    let parsed = node.trim_start_matches('v').split('.').map(|p| p.parse::<u64>().unwrap_or(0)).collect::<Vec<_>>();
    if (parsed.first().copied().unwrap_or(0), parsed.get(1).copied().unwrap_or(0)) < NODE_MIN {
        return Err(format!(
            "phantom demo needs Node.js {}.{} or newer (the npm CLI it runs does); this machine has {node}",
            NODE_MIN.0, NODE_MIN.1
        ));
    }
    let tools = Tools {
        node: "node".into(),
        npm_cli: dir.join("node_modules/npm/bin/npm-cli.js"),
        verdaccio: dir.join("node_modules/verdaccio/bin/verdaccio"),
    };
    let stamp = dir.join(".installed");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == MANIFEST) && tools.npm_cli.exists() {
        return Ok(tools);
    }
    version("npm").await.map_err(|e| {
        format!("phantom demo installs its tools with npm, which was not found ({e}): install npm and run it again")
    })?;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let _ = std::fs::remove_file(&stamp);
    std::fs::write(dir.join("package.json"), MANIFEST).map_err(|e| format!("{}: {e}", dir.display()))?;
    say(&format!(
        "installing Verdaccio {VERDACCIO_VERSION} and npm {NPM_VERSION} into {} with npm (first run only, about half a minute)",
        dir.display()
    ));
    let start = Instant::now();
    let mut install = Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--loglevel=error", "--no-update-notifier"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run npm: {e}"))?;
    let stderr = install.stderr.take();
    let errors = tokio::spawn(async move {
        let mut text = String::new();
        if let Some(mut e) = stderr {
            let _ = tokio::io::AsyncReadExt::read_to_string(&mut e, &mut text).await;
        }
        text
    });
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(10), install.wait()).await {
            Ok(status) => break status.map_err(|e| format!("npm install: {e}"))?,
            Err(_) if start.elapsed() > Duration::from_secs(900) => {
                return Err("npm install did not finish in 15 minutes".into());
            }
            Err(_) => say(&format!("  still installing ({} s)", start.elapsed().as_secs())),
        }
    };
    let errors = errors.await.unwrap_or_default();
    if !status.success() || !tools.npm_cli.exists() || !tools.verdaccio.exists() {
        let tail: Vec<&str> = errors.lines().rev().take(8).collect();
        return Err(format!(
            "npm install in {} failed ({status}); the npm registry must be reachable on first use. npm said:\n{}",
            dir.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ));
    }
    std::fs::write(&stamp, MANIFEST).map_err(|e| format!("{}: {e}", stamp.display()))?;
    say(&format!("  installed in {} s", start.elapsed().as_secs()));
    Ok(tools)
}

async fn version(program: &str) -> Result<String, String> {
    let out = Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("`{program}` was not found on PATH ({e})"))?;
    if !out.status.success() {
        return Err(format!("`{program} --version` failed ({})", out.status));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A running Verdaccio and the token of its publisher.
pub(crate) struct Verdaccio {
    pub(crate) url: String,
    pub(crate) token: Secret,
    child: Child,
    /// Verdaccio exits when this closes (see `WATCHDOG`): it never outlives the demo, however
    /// the demo ends.
    stdin: Option<ChildStdin>,
}

/// Preloaded into Verdaccio's Node process: its stdin is a pipe from the demo, which closes
/// when the demo exits, even on SIGKILL.
const WATCHDOG: &str = "process.stdin.on('end', () => process.exit(0));\n\
process.stdin.on('error', () => process.exit(0));\nprocess.stdin.resume();\n";

pub(crate) const PUBLISHER: &str = "demo-publisher";

impl Verdaccio {
    /// Starts Verdaccio in `dir` (config, storage, log) over TLS on a free loopback port, waits
    /// for it, and signs up the publisher.
    pub(crate) async fn start(
        tools: &Tools,
        dir: &Path,
        certs: &super::Certs,
        http: &HttpsClient,
    ) -> Result<Self, String> {
        let io = |e: std::io::Error| format!("{}: {e}", dir.display());
        let storage = dir.join("storage");
        std::fs::create_dir_all(&storage).map_err(io)?;
        let rng = ring::rand::SystemRandom::new();
        // Verdaccio 6 signs its tokens with the secret in this file.
        let db = json!({"list": [], "secret": super::issuer::random_hex(&rng, 16)?});
        std::fs::write(storage.join(".verdaccio-db.json"), db.to_string()).map_err(io)?;
        let port = super::free_port()?;
        let config = format!(
            "# Written by `phantom demo`: an offline registry on loopback, over TLS.\n\
             storage: {storage}\nsecret: {secret}\nlisten: https://127.0.0.1:{port}\n\
             https:\n  key: {key}\n  cert: {cert}\n\
             auth:\n  htpasswd:\n    file: {htpasswd}\n\
             # JWT API tokens: legacy tokens re-check the bcrypt password on every request.\n\
             security:\n  api:\n    jwt:\n      sign:\n        expiresIn: 7d\n\
             # No uplinks: nothing is fetched from another registry.\n\
             uplinks: {{}}\n\
             packages:\n  '**':\n    access: $all\n    publish: $authenticated\n    unpublish: $authenticated\n\
             # Its audit middleware would forward requests, Authorization included, to another registry.\n\
             middlewares:\n  audit:\n    enabled: false\n\
             web:\n  enable: false\n\
             log:\n  type: stdout\n  format: pretty\n  level: warn\n",
            storage = storage.display(),
            secret = super::issuer::random_hex(&rng, 16)?,
            key = certs.key.display(),
            cert = certs.cert.display(),
            htpasswd = dir.join("htpasswd").display(),
        );
        let config_path = dir.join("verdaccio.yaml");
        std::fs::write(&config_path, config).map_err(io)?;
        let watchdog = dir.join("watchdog.cjs");
        std::fs::write(&watchdog, WATCHDOG).map_err(io)?;
        let log = std::fs::File::create(dir.join("verdaccio.log")).map_err(io)?;
        let mut child = Command::new(&tools.node)
            .arg("--require")
            .arg(&watchdog)
            .arg(&tools.verdaccio)
            .arg("--config")
            .arg(&config_path)
            .env_remove("VERDACCIO_PUBLIC_URL")
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::from(log.try_clone().map_err(io)?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start Verdaccio: {e}"))?;
        let stdin = child.stdin.take();
        let url = format!("https://127.0.0.1:{port}/");
        let mut verdaccio = Verdaccio { url, token: Secret::new(String::new()), child, stdin };
        verdaccio.ready(http, &dir.join("verdaccio.log")).await?;
        verdaccio.token = verdaccio.sign_up(http, &rng).await?;
        Ok(verdaccio)
    }

    async fn ready(&mut self, http: &HttpsClient, log: &Path) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let ping: http::Uri = format!("{}-/ping", self.url).parse().map_err(|e| format!("{e}"))?;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                let tail = std::fs::read_to_string(log).unwrap_or_default();
                return Err(format!(
                    "Verdaccio exited ({status}) before it was ready; its log ({}):\n{tail}",
                    log.display()
                ));
            }
            if net::get_json(http, &ping, Duration::from_secs(2), 4096).await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("Verdaccio did not answer on {} within 60 s (log: {})", self.url, log.display()));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Signs the publisher up (Verdaccio 6 wants Basic auth for it) and returns its token.
    async fn sign_up(&self, http: &HttpsClient, rng: &ring::rand::SystemRandom) -> Result<Secret, String> {
        use base64::Engine;
        let password = Secret::new(super::issuer::random_hex(rng, 16)?);
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{PUBLISHER}:{}", password.expose()));
        let body = json!({"_id": format!("org.couchdb.user:{PUBLISHER}"), "name": PUBLISHER,
            "password": password.expose(), "type": "user", "roles": [], "date": phantom_broker::support::clock::rfc3339(phantom_broker::support::clock::unix_now(), 0)});
        let req = http::Request::put(format!("{}-/user/org.couchdb.user:{PUBLISHER}", self.url))
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::AUTHORIZATION, format!("Basic {basic}"))
            .body(net::full(body.to_string()))
            .map_err(|e| e.to_string())?;
        let (parts, bytes) = net::fetch(http, req, Duration::from_secs(10), 64 * 1024)
            .await
            .map_err(|e| format!("signing up {PUBLISHER} in Verdaccio: {e}"))?;
        if parts.status != http::StatusCode::CREATED {
            return Err(format!("signing up {PUBLISHER} in Verdaccio: status {}", parts.status));
        }
        let answer: Value = serde_json::from_slice(&bytes).map_err(|_| "Verdaccio's sign-up answer is not JSON")?;
        answer["token"]
            .as_str()
            .map(|t| Secret::new(t.to_owned()))
            .ok_or_else(|| "Verdaccio's sign-up answer has no token".to_owned())
    }

    /// The package's latest version in the registry (read anonymously), `None` if it has none.
    pub(crate) async fn latest(&self, http: &HttpsClient, package: &str) -> Result<Option<String>, String> {
        let uri: http::Uri = format!("{}{package}", self.url).parse().map_err(|e| format!("{e}"))?;
        match net::get_json(http, &uri, Duration::from_secs(10), 1 << 20).await {
            Ok(body) => {
                let doc: Value = serde_json::from_slice(&body).map_err(|_| format!("{package}: not JSON"))?;
                Ok(doc["dist-tags"]["latest"].as_str().map(str::to_owned))
            }
            Err(net::FetchError::Status(404)) => Ok(None),
            Err(e) => Err(format!("reading {package} from Verdaccio: {e}")),
        }
    }

    /// Closes its stdin (the watchdog exits it) and waits; kills it if it lingers.
    pub(crate) async fn stop(&mut self) {
        self.stdin.take();
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
    }
}
