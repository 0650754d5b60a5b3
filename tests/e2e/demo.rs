//! `phantom demo` as a new user meets it: from a fresh clone, with an empty HOME and npm cache,
//! one command installs what it needs, publishes with the real npm CLI and no token, refuses a
//! package no grant gives, and on Ctrl-C (SIGINT) stops every process it started.

use crate::support::{repo, Http};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// First use installs Verdaccio and npm from an empty cache.
const READY_WITHIN: Duration = Duration::from_secs(420);

/// Every live process whose command line or working directory is inside `dir`.
fn processes_in(dir: &Path) -> Vec<(u32, String)> {
    let needle = dir.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else { continue };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // A zombie is gone but for its exit status.
        if stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')) {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let cwd = std::fs::read_link(entry.path().join("cwd")).map(|p| p.display().to_string()).unwrap_or_default();
        if cmdline.contains(&needle) || cwd.starts_with(&needle) {
            found.push((pid, cmdline));
        }
    }
    found
}

fn port_of(line: &str) -> u16 {
    let url = line.split_whitespace().find(|w| w.starts_with("https://127.0.0.1:")).unwrap_or_else(|| panic!("{line}"));
    url.trim_start_matches("https://127.0.0.1:").trim_end_matches('/').parse().unwrap()
}

#[test]
fn demo_publishes_from_a_fresh_clone_and_stops_all_it_started() {
    let tmp = tempfile::tempdir().unwrap();
    let clone = tmp.path().join("clone");
    let status = Command::new("git").args(["clone", "--quiet"]).arg(repo()).arg(&clone).status().unwrap();
    assert!(status.success(), "git clone of the repository failed");
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_phantom"));
    cmd.arg("demo").current_dir(&clone).env("HOME", &home).env_remove("PHANTOM_LOG");
    // An empty HOME and npm cache: nothing of this machine's npm setup but its global config.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().to_ascii_lowercase().starts_with("npm_config_") {
            cmd.env_remove(key);
        }
    }
    let mut demo = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let pid = demo.id();
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = demo.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let stderr = demo.stderr.take().unwrap();
    let errors = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());

    let mut lines = Vec::new();
    let start = Instant::now();
    while !lines.iter().any(|l: &String| l.starts_with("phantom demo: ready")) {
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(line) => lines.push(line),
            Err(mpsc::RecvTimeoutError::Timeout) if start.elapsed() < READY_WITHIN => {}
            Err(_) => {
                let _ = demo.kill();
                let _ = demo.wait();
                panic!("no ready line from phantom demo:\n{}\n{}", lines.join("\n"), errors.join().unwrap());
            }
        }
    }
    let story = lines.join("\n");
    let line =
        |prefix: &str| lines.iter().find(|l| l.trim_start().starts_with(prefix)).unwrap_or_else(|| panic!("{story}"));
    let (upstream, issuer, broker) =
        (port_of(line("upstream registry")), port_of(line("identity provider")), port_of(line("broker ")));
    // First use installed the tools, and said so while it did.
    assert!(story.contains("installing Verdaccio 6.8.0 and npm 11.19.1"), "{story}");
    assert!(story.contains("installed in"), "{story}");

    // The upstream has the sample package, and not the refused one.
    let demo_dir = clone.join(".phantom-demo");
    let run = demo_dir.join("run");
    let http = Http::new(&run.join("certs/ca.pem"));
    let hello = http.request("GET", &format!("https://127.0.0.1:{upstream}/demo-hello"), &[], "");
    assert_eq!(hello.status, 200, "{}", hello.text());
    assert_eq!(hello.json()["dist-tags"]["latest"], "1.0.0");
    let other = http.request("GET", &format!("https://127.0.0.1:{upstream}/demo-other"), &[], "");
    assert_eq!(other.status, 404, "demo-other reached the registry: {}", other.text());

    // The audit log verifies and tells the same story: a publish allowed under the grant and
    // answered 201, an exchange for the other package denied.
    let audit = run.join("audit/phantom.jsonl");
    let verify = Command::new(env!("CARGO_BIN_EXE_phantom")).args(["audit", "verify"]).arg(&audit).output().unwrap();
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stderr));
    let records: Vec<serde_json::Value> =
        std::fs::read_to_string(&audit).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(
        records.iter().any(|r| r["action"] == "publish"
            && r["package"] == "demo-hello"
            && r["decision"] == "allow"
            && r["grant"] == "demo-release"
            && r["upstream_status"] == 201),
        "{records:?}"
    );
    assert!(
        records.iter().any(|r| r["event"] == "exchange" && r["decision"] == "deny" && r["status"] == 403),
        "{records:?}"
    );
    assert!(story.contains("intact"), "{story}");

    // Every process it started runs inside the clone (Verdaccio from its cache folder).
    let started: Vec<(u32, String)> = processes_in(&clone).into_iter().filter(|(p, _)| *p != pid).collect();
    assert!(started.iter().any(|(_, cmd)| cmd.contains("verdaccio")), "Verdaccio is not running: {started:?}");

    // Ctrl-C.
    assert!(Command::new("kill").args(["-INT", &pid.to_string()]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = demo.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = demo.kill();
            panic!("phantom demo did not stop within 30 s of SIGINT");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    reader.join().unwrap();
    lines.extend(rx.try_iter());
    let errors = errors.join().unwrap();
    let story = lines.join("\n");
    assert!(status.success(), "phantom demo exited with {status}:\n{story}\n{errors}");
    assert!(story.contains("phantom demo: stopped"), "{story}");
    let left = processes_in(&clone);
    assert!(left.is_empty(), "still running after phantom demo stopped: {left:?}");
    for port in [upstream, issuer, broker] {
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "port {port} still answers");
    }

    // The real credential, the phantoms and the runner's request token stay out of what it
    // printed and logged.
    let token = std::fs::read_to_string(run.join("secrets/npm-token")).unwrap();
    let ci_env = std::fs::read_to_string(run.join("ci-env.sh")).unwrap();
    let request_token = ci_env
        .lines()
        .find_map(|l| l.strip_prefix("export ACTIONS_ID_TOKEN_REQUEST_TOKEN='"))
        .map(|t| t.trim_end_matches('\''))
        .unwrap();
    let log = std::fs::read_to_string(run.join("phantom.log")).unwrap();
    assert!(log.lines().count() > 3, "{log}");
    for l in log.lines() {
        serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}"));
    }
    for (what, text) in [("its output", format!("{story}\n{errors}")), ("its log", log)] {
        assert!(!text.contains(token.trim()), "the real token is in {what}");
        assert!(!text.contains(request_token), "the runner's request token is in {what}");
        assert!(!text.contains("phm_"), "a phantom is in {what}");
    }
    let installed = ["node/node_modules/verdaccio", "node/node_modules/npm"].map(|p| demo_dir.join(p));
    assert!(installed.iter().all(|p| p.exists()), "the tools are not in the cache folder");
}

/// Without Node.js the demo says what it needs, and starts nothing.
#[test]
fn demo_without_node_says_what_it_needs() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("bin");
    std::fs::create_dir_all(&empty).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_phantom"))
        .args(["demo", "--dir"])
        .arg(tmp.path().join("demo"))
        .env("PATH", &empty)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("need Node.js 20.17 or newer and npm") && text.contains("apt-get install nodejs npm"),
        "{text}"
    );
    assert!(!tmp.path().join("demo/node").exists(), "it installed something: {text}");
}
