//! The real credential's lifecycle against a real Verdaccio: its inventory (the upstream
//! account, expiry warnings), a canaried rotation to another token of the same user (shown from
//! Verdaccio's side by revoking the old token there), a rotation under a streaming publish, a
//! refused rotation to another user's token, an overlap window, a revoke-first incident
//! rotation, and reloads on SIGHUP and through the admin API. No token appears in what the
//! broker logs, audits or prints.

use crate::support::*;
use serde_json::{json, Value};
use std::io::Write;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const POLICY: &str = r#"
[[grant]]
name = "release"
issuer = "github"
packages = ["pb-*", "priv-*"]
actions = ["publish", "dist-tag"]
create = true
credential = "verdaccio-publisher"
ttl = "10m"
max_uses = 20
[grant.claims]
repository_id = "123456789"
repository_owner_id = "4242"
"#;

fn day(secs: u64) -> String {
    phantom_broker::support::clock::date(secs)
}

struct Rig {
    w: World,
    /// Every output of the CLI, for the secret check.
    printed: std::cell::RefCell<String>,
}

impl Rig {
    fn cli(&self, args: &[&str]) -> Output {
        let out = Command::new(env!("CARGO_BIN_EXE_phantom"))
            .args(args)
            .arg("--config")
            .arg(&self.w.broker.config)
            .arg("--ca-file")
            .arg(&self.w.certs.ca)
            .output()
            .unwrap();
        self.printed.borrow_mut().push_str(&text(&out));
        out
    }

    fn rotate(&self, token: &str, extra: &[&str]) -> Output {
        let file = self.w.root().join("new-token");
        std::fs::write(&file, format!("{token}\n")).unwrap();
        let mut args = vec!["credentials", "rotate", "verdaccio-publisher", "--from-file", file.to_str().unwrap()];
        args.extend_from_slice(extra);
        let out = self.cli(&args);
        std::fs::remove_file(&file).unwrap();
        out
    }

    fn status(&self) -> Value {
        let out = self.cli(&["credentials", "status", "--json"]);
        assert!(ok(&out), "{}", text(&out));
        let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
        rows.as_array().unwrap().iter().find(|r| r["name"] == "verdaccio-publisher").unwrap().clone()
    }

    fn source(&self) -> String {
        std::fs::read_to_string(self.w.root().join("secrets/npm-token")).unwrap().trim().to_owned()
    }

    /// A publish of a fresh version with a fresh phantom, through the broker.
    fn publish(&self, name: &str, version: &str) -> u16 {
        let phantom = self.w.phantom(&[name], &["publish"], None);
        self.publish_with(&phantom, name, version)
    }

    fn publish_with(&self, phantom: &str, name: &str, version: &str) -> u16 {
        let auth = format!("Bearer {phantom}");
        let headers =
            [("authorization", auth.as_str()), ("content-type", "application/json"), ("npm-command", "publish")];
        self.w.broker("PUT", &format!("/{name}"), &headers, publish_body(name, name, version, "latest")).status
    }
}

#[test]
fn credentials_are_inventoried_rotated_and_reloaded() {
    let now = phantom_broker::support::clock::unix_now();
    let credential = format!(
        "class = \"B\"\npublish = \"direct\"\npackages = [\"pb-rot\", \"pb-*\", \"priv-*\"]\ncreated = \"{}\"\nexpires = \"{}\"",
        day(now - 30 * 86_400),
        day(now + 5 * 86_400)
    );
    let r = Rig {
        w: World::start_with(Options {
            policy: POLICY.into(),
            credential,
            // Short-lived tokens: the test sees Verdaccio refuse an old one while taking the new.
            verdaccio_token_ttl: Some("20s".into()),
            ..Options::default()
        }),
        printed: Default::default(),
    };
    let w = &r.w;
    let original = w.verdaccio.token.clone();
    assert_eq!(r.publish("pb-rot", "1.0.0"), 201);

    // The inventory: the upstream account, what it can do, and a warning five days out.
    let row = r.status();
    assert_eq!(row["account"], "publisher", "{row}");
    assert_eq!((row["publish"].as_str(), row["class"].as_str()), (Some("direct"), Some("B")));
    assert_eq!((row["age_days"].as_i64(), row["days_to_expiry"].as_i64()), (Some(30), Some(5)), "{row}");
    assert!(row["last_used"].is_string(), "{row}");
    assert!(row["warnings"].to_string().contains("expires in 5 days"), "{row}");
    let table = r.cli(&["credentials", "status"]);
    assert!(text(&table).contains("warning: verdaccio-publisher: expires in 5 days"), "{}", text(&table));

    // Another user's token fails the canary: nothing changes.
    let intruder = w.sign_up("intruder");
    let refused = r.rotate(&intruder, &[]);
    assert!(!ok(&refused), "{}", text(&refused));
    assert!(
        text(&refused).contains("authenticates as `intruder`, the current one as `publisher`"),
        "{}",
        text(&refused)
    );
    assert_eq!(r.source(), original, "the source changed after a failed canary");
    assert_eq!(r.publish("pb-rot", "1.0.1"), 201);

    // A second token of the same user: canaried, written, swapped.
    // Two logins in the same second get the same token from Verdaccio: wait for a new one.
    let fresh = || loop {
        let t = w.publisher_login();
        if t != r.source() {
            break t;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let (b, b_minted) = (fresh(), Instant::now());
    let done = r.rotate(&b, &[]);
    assert!(ok(&done), "{}", text(&done));
    assert!(
        text(&done).contains("authenticates as \"publisher\"") && text(&done).contains("it reads pb-rot"),
        "{}",
        text(&done)
    );
    assert_eq!(r.source(), b);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(w.root().join("secrets/npm-token")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert_eq!(r.publish("pb-rot", "1.0.2"), 201);

    // A publish streaming while the credential is swapped completes. The next token is minted
    // ten seconds after the last, so that Verdaccio refuses the old one well before the new.
    std::thread::sleep(Duration::from_secs(10).saturating_sub(b_minted.elapsed()));
    // The file watcher, woken by the rotation's own write, found the value in use: the new value
    // was canaried once, and not swapped in a second time.
    let lines = w.broker.audit_lines();
    let canaries =
        lines.iter().filter(|l| l["reason"].as_str().is_some_and(|r| r.starts_with("canary: the new"))).count();
    let reswapped = lines.iter().filter(|l| l["action"] == "credential-reload" && l["decision"] == "allow").count();
    assert_eq!((canaries, reswapped), (1, 0), "{lines:?}");
    let c = fresh();
    let phantom = w.phantom(&["pb-stream"], &["publish"], None);
    let body = publish_body("pb-stream", "pb-stream", "1.0.0", "latest");
    let mut tls = raw::connect(w.broker.port, &w.certs.ca, &[b"http/1.1"]);
    let head = format!(
        "PUT /pb-stream HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {phantom}\r\ncontent-type: application/json\r\nnpm-command: publish\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).unwrap();
    let (first, rest) = body.as_bytes().split_at(body.len() / 2);
    tls.write_all(first).unwrap();
    tls.flush().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(ok(&r.rotate(&c, &[])));
    tls.write_all(rest).unwrap();
    tls.flush().unwrap();
    let answer = raw::read_response(&mut tls, Duration::from_secs(10)).map(|(s, _)| s);
    assert_eq!(answer, Some(201), "the publish under way during the swap");

    // The upstream receives the new token: once Verdaccio refuses the old one, publishes go on.
    let start = Instant::now();
    while w.verdaccio_whoami(&b).is_some() {
        assert!(start.elapsed() < Duration::from_secs(20), "Verdaccio still takes the old token");
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(w.verdaccio_whoami(&c).as_deref(), Some("publisher"));
    assert_eq!(r.publish("pb-rot", "1.0.3"), 201);
    assert_eq!(r.publish("priv-rot", "1.0.0"), 201);

    // An overlap window: Verdaccio refuses the new value (revoked there, as a token not yet
    // accepted everywhere would be), so reads go again with the previous one until it ends.
    let (t3, k3) = w.mint_publisher_token();
    let done = r.rotate(&t3, &["--overlap", "4s"]);
    assert!(ok(&done) && text(&done).contains("stays for reads"), "{}", text(&done));
    w.revoke_publisher_token(&k3);
    let reader = w.phantom(&["priv-rot"], &["publish"], None);
    let read =
        |phantom: &str| w.broker("GET", "/priv-rot", &[("authorization", &format!("Bearer {phantom}"))], "").status;
    assert_eq!(read(&reader), 200, "no fallback to the previous value in the overlap window");
    let line =
        w.broker.audit_lines().into_iter().rev().find(|l| l["path"] == "/priv-rot" && l["status"] == 200).unwrap();
    assert!(line["reason"].as_str().unwrap().contains("previous one"), "{line}");
    assert_ne!(r.publish("pb-rot", "1.0.4"), 201, "a write went out with the previous value");
    let start = Instant::now();
    while r.status()["overlap_until"].is_string() {
        assert!(start.elapsed() < Duration::from_secs(15), "the overlap window did not end");
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_ne!(read(&reader), 200, "the previous value was used after its overlap window");

    // Incident: revoke first. The phantoms issued before are refused at once and the grant's
    // packages frozen; the current value (revoked upstream) cannot answer, so the canary
    // compares with the account it last knew.
    let d = fresh();
    let before = w.phantom(&["pb-rot"], &["publish"], None);
    let listed = w.admin("GET", "/admin/v1/phantoms", Value::Null).json()["phantoms"].as_array().unwrap().clone();
    let mut live_ids: Vec<&str> = listed.iter().map(|p| p["id"].as_str().unwrap()).collect();
    live_ids.sort_unstable();
    let live = live_ids.len();
    assert!(live >= 2, "{live}");
    let done = r.rotate(&d, &["--incident"]);
    assert!(ok(&done), "{}", text(&done));
    let said = text(&done);
    assert!(
        said.contains(&format!("revoked {live} phantoms")) && said.contains("pb-*") && said.contains("priv-*"),
        "{said}"
    );
    assert!(said.contains("phantom thaw pb-* priv-*"), "{said}");
    assert_eq!(w.admin("GET", "/admin/v1/phantoms", Value::Null).json()["phantoms"], Value::Array(vec![]));
    // Each step of the incident on its own line, in order: the phantoms revoked (their ids), the
    // patterns frozen, then the new value written.
    let lines = w.broker.audit_lines();
    let at = |want: &str| {
        lines
            .iter()
            .rposition(|l| l["reason"].as_str().is_some_and(|r| r.starts_with(want)))
            .unwrap_or_else(|| panic!("no `{want}`"))
    };
    let (revoked_at, frozen_at, written_at) =
        (at("incident: revoked"), at("incident: froze"), at("wrote the new value"));
    assert!(revoked_at < frozen_at && frozen_at < written_at, "{revoked_at} {frozen_at} {written_at}");
    let mut revoked: Vec<&str> =
        lines[revoked_at]["revoked"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    revoked.sort_unstable();
    assert_eq!(revoked, live_ids, "{}", lines[revoked_at]);
    assert!(lines[revoked_at]["reason"].as_str().unwrap().contains(&format!("revoked {live} live phantoms")));
    assert_eq!(lines[frozen_at]["frozen"], json!(["pb-*", "priv-*"]), "{}", lines[frozen_at]);
    assert!(lines[revoked_at..=frozen_at].iter().all(|l| l["credential"] == "verdaccio-publisher"));
    assert_eq!(r.publish_with(&before, "pb-rot", "1.0.5"), 401, "a phantom issued before the incident still works");
    assert_eq!(read(&reader), 401);
    assert_eq!(r.publish("pb-rot", "1.0.5"), 403, "the package is not frozen");
    let thaw = r.cli(&["thaw", "pb-*", "priv-*"]);
    assert!(ok(&thaw), "{}", text(&thaw));
    assert_eq!(r.publish("pb-rot", "1.0.5"), 201);
    assert!(r.status()["overlap_until"].is_null(), "an incident rotation kept an overlap");

    // Reloads re-read the source with the same canary: a secret manager rewrote the file.
    let e = fresh();
    std::fs::write(w.root().join("secrets/npm-token"), format!("{e}\n")).unwrap();
    let pid = w.broker.pid().unwrap().to_string();
    assert!(Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    let start = Instant::now();
    loop {
        let swapped =
            w.broker.audit_lines().iter().any(|l| l["action"] == "credential-reload" && l["decision"] == "allow");
        if swapped {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "SIGHUP did not reload the credential");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(r.publish("pb-rot", "1.0.6"), 201);
    let stranger = w.sign_up("stranger");
    std::fs::write(w.root().join("secrets/npm-token"), format!("{stranger}\n")).unwrap();
    let reload = r.cli(&["reload"]);
    assert!(ok(&reload), "{}", text(&reload));
    let outcome: Value = serde_json::from_slice(&reload.stdout).unwrap();
    assert_eq!(outcome["credentials"][0]["result"], "kept", "{outcome}");
    assert!(outcome["credentials"][0]["detail"].as_str().unwrap().contains("`stranger`"), "{outcome}");
    assert_eq!(r.publish("pb-rot", "1.0.7"), 201, "a reload swapped in a value that failed its canary");

    // Every step is on record; no token is in the log, the audit log or anything printed.
    let steps: Vec<String> = w
        .broker
        .audit_lines()
        .iter()
        .filter(|l| l["action"] == "credential-rotate")
        .filter_map(|l| l["reason"].as_str().map(str::to_owned))
        .collect();
    for want in [
        "canary failed",
        "canary: the new value authenticates as `publisher`",
        "wrote the new value",
        "swapped in",
        "incident: revoked",
    ] {
        assert!(steps.iter().any(|s| s.contains(want)), "no audited step `{want}`: {steps:?}");
    }
    let log = std::fs::read_to_string(w.broker.dir.join("broker.log")).unwrap();
    let audit = std::fs::read_to_string(w.broker.dir.join("audit/phantom.jsonl")).unwrap();
    let printed = r.printed.borrow().clone();
    assert!(!audit.contains("phm_") && !log.contains("phm_"), "a phantom is in the logs");
    for (what, hay) in [("the log", &log), ("the audit log", &audit), ("the CLI's output", &printed)] {
        let tokens = [
            ("the original", &original),
            ("b", &b),
            ("c", &c),
            ("t3", &t3),
            ("d", &d),
            ("e", &e),
            ("intruder's", &intruder),
            ("stranger's", &stranger),
        ];
        for (name, token) in tokens {
            assert!(!hay.contains(token.as_str()), "{name} token is in {what}");
        }
    }
    w.assert_canary_contained_without_writes();
}

/// When the current value can no longer answer `whoami` (it expired upstream) and the broker
/// never learned its account, the canary needs the account from the operator: without
/// `--account` nothing changes, a wrong one is refused, the right one rotates.
#[test]
fn a_dead_current_value_needs_the_account_stated() {
    let r = Rig {
        w: World::start_with(Options {
            policy: POLICY.into(),
            credential: "packages = [\"pb-*\", \"priv-*\"]".into(),
            verdaccio_token_ttl: Some("8s".into()),
            ..Options::default()
        }),
        printed: Default::default(),
    };
    let w = &r.w;
    let original = w.verdaccio.token.clone();
    let start = Instant::now();
    while w.verdaccio_whoami(&original).is_some() {
        assert!(start.elapsed() < Duration::from_secs(20), "Verdaccio still takes the original token");
        std::thread::sleep(Duration::from_millis(250));
    }
    let new = w.publisher_login();

    let refused = r.rotate(&new, &[]);
    assert!(!ok(&refused), "{}", text(&refused));
    assert!(text(&refused).contains("give the account it must be (--account)"), "{}", text(&refused));
    let wrong = r.rotate(&new, &["--account", "intruder"]);
    assert!(!ok(&wrong), "{}", text(&wrong));
    assert!(text(&wrong).contains("authenticates as `publisher`, the current one as `intruder`"), "{}", text(&wrong));
    assert_eq!(r.source(), original, "a refused rotation changed the source");

    let done = r.rotate(&new, &["--account", "publisher"]);
    assert!(ok(&done), "{}", text(&done));
    assert_eq!(r.source(), new);
    assert_eq!(r.publish("pb-dead", "1.0.0"), 201);

    // Now the broker knows the account: a stated one that differs is refused even when the
    // current value has died again.
    let start = Instant::now();
    while w.verdaccio_whoami(&new).is_some() {
        assert!(start.elapsed() < Duration::from_secs(20), "Verdaccio still takes the rotated token");
        std::thread::sleep(Duration::from_millis(250));
    }
    let next = w.publisher_login();
    let wrong = r.rotate(&next, &["--account", "intruder"]);
    assert!(!ok(&wrong), "{}", text(&wrong));
    assert!(text(&wrong).contains("last authenticated as `publisher`, not `intruder`"), "{}", text(&wrong));
    assert_eq!(r.source(), new);

    let printed = r.printed.borrow().clone();
    for token in [&original, &new, &next] {
        assert!(!printed.contains(token.as_str()), "a token is in the CLI's output");
    }
}
