//! A hostile or failing network: an upstream that redirects elsewhere, echoes the credential,
//! stalls, resets mid-body, fails writes, compresses, is down or has an untrusted certificate;
//! an OIDC issuer whose keys are slow, huge or unavailable. Each gets a clear status, an audit
//! line, and the real credential goes nowhere it should not.

use crate::support::counting::Counting;
use crate::support::hostile::Hostile;
use crate::support::*;
use serde_json::{json, Value};

const HOSTILE_POLICY: &str = r#"
[[grant]]
name = "hostile"
issuer = "github"
packages = ["@hostile/*"]
actions = ["publish"]
create = true
credential = "hostile"
[grant.claims]
repository_id = "123456789"

[[grant]]
name = "untrusted"
issuer = "github"
packages = ["@untrusted/*"]
actions = ["publish"]
create = true
credential = "untrusted"
[grant.claims]
repository_id = "123456789"

[[grant]]
name = "down"
issuer = "github"
packages = ["@down/*"]
actions = ["publish"]
create = true
credential = "down"
[grant.claims]
repository_id = "123456789"
"#;

struct Setup {
    w: World,
    hostile: Hostile,
    untrusted: Hostile,
    canary: String,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let certs = dev_certs(&dir.path().join("trusted"));
    let other_ca = dev_certs(&dir.path().join("untrusted"));
    let hostile = Hostile::start(&certs.cert, &certs.key);
    let untrusted = Hostile::start(&other_ca.cert, &other_ca.key);
    let canary = format!("hostile-canary-{}", free_port());
    let secret = dir.path().join("hostile-token");
    std::fs::write(&secret, &canary).unwrap();
    let down_port = free_port();
    let extra = format!(
        r#"
[upstream.hostile]
url = "https://127.0.0.1:{}/"
scopes = ["@hostile"]
ca_file = "{{ca}}"

[upstream.untrusted]
url = "https://127.0.0.1:{}/"
scopes = ["@untrusted"]

[upstream.down]
url = "https://127.0.0.1:{down_port}/"
scopes = ["@down"]

[credential.hostile]
upstream = "hostile"
source = {{ file = "{s}" }}

[credential.untrusted]
upstream = "untrusted"
source = {{ file = "{s}" }}

[credential.down]
upstream = "down"
source = {{ file = "{s}" }}
"#,
        hostile.port,
        untrusted.port,
        s = secret.display()
    );
    let w = World::start_with(Options {
        policy: format!("{DEFAULT_POLICY}\n{HOSTILE_POLICY}"),
        server: "upstream_timeout = \"2s\"".into(),
        extra,
        certs: Some(certs),
        ..Options::default()
    });
    std::mem::forget(dir); // the certificates must outlive the world; the OS cleans /tmp
    Setup { w, hostile, untrusted, canary }
}

fn get(w: &World, path: &str, phantom: Option<&str>) -> Resp {
    match phantom {
        Some(p) => w.broker("GET", path, &[("authorization", &format!("Bearer {p}"))], ""),
        None => w.broker("GET", path, &[], ""),
    }
}

#[test]
fn hostile_and_failing_upstreams() {
    let Setup { w, hostile, untrusted, canary } = setup();
    let p = w.phantom(
        &["@hostile/echo", "@hostile/redirect", "@hostile/stall", "@hostile/gzip", "@hostile/fail", "@hostile/reset"],
        &["publish"],
        None,
    );

    // Echo: the credential is cut out of the body, and headers carrying it are dropped.
    let r = get(&w, "/@hostile%2fecho", Some(&p));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(!r.text().contains(&canary), "{}", r.text());
    assert!(r.text().contains("Bearer ******"), "scrubbed in place: {}", r.text());
    assert!(r.headers.get("x-echo").is_none() && r.headers.get("set-cookie").is_none());
    assert!(hostile.seen.lock().unwrap().iter().any(|a| a == &format!("Bearer {canary}")));

    // Redirect to another host: passed back, never followed.
    let r = get(&w, "/@hostile%2fredirect", Some(&p));
    assert_eq!(r.status, 302);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(hostile.elsewhere.lock().unwrap().is_empty(), "the broker followed a redirect");

    // A compressed answer to a credentialed request cannot be scrubbed: refused.
    assert_eq!(get(&w, "/@hostile%2fgzip", Some(&p)).status, 502);
    assert_eq!(get(&w, "/@hostile%2fgzip", None).status, 200, "anonymous reads carry no credential");

    // Stalls: a 504 after the upstream timeout.
    let started = std::time::Instant::now();
    assert_eq!(get(&w, "/@hostile%2fstall", Some(&p)).status, 504);
    assert!(started.elapsed() < std::time::Duration::from_secs(10));

    // A reset in the middle of a packument (read whole, to rewrite its tarball URLs): a clear 502.
    let r = get(&w, "/@hostile%2freset", Some(&p));
    assert_eq!(r.status, 502, "{}", r.text());
    // A reset in the middle of a streamed body (a tarball): the client sees the body end early,
    // and the audit says so.
    let mut tls = raw::connect(w.broker.port, &w.certs.ca, &[b"http/1.1"]);
    use std::io::Write;
    let req = format!("GET /@hostile/reset/-/reset-1.0.0.tgz HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {p}\r\n\r\n");
    tls.write_all(req.as_bytes()).unwrap();
    let raw = raw::read_all(&mut tls, std::time::Duration::from_secs(5));
    assert_eq!(raw.status, Some(200));
    assert!(raw.closed && raw.text.len() < 1000, "{raw:?}");

    // A 5xx after the upstream took a publish: a clear 502, and npm's retry of it is free.
    let body = json!({"_id": "@hostile/fail", "name": "@hostile/fail", "dist-tags": {"latest": "1.0.0"},
        "versions": {"1.0.0": {"name": "@hostile/fail", "version": "1.0.0"}},
        "_attachments": {"@hostile/fail-1.0.0.tgz": {"data": "AAAA", "length": 3}}})
    .to_string();
    let auth = format!("Bearer {p}");
    let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
    for _ in 0..2 {
        let r = w.broker("PUT", "/@hostile%2ffail", &headers, body.clone());
        assert_eq!(r.status, 502, "{}", r.text());
        assert!(r.text().contains("upstream registry"));
    }

    // An upstream that refuses a streamed write from its head, before the body is through: its
    // refusal reaches the caller, and the record has it.
    let e = w.phantom(&["@hostile/early"], &["publish"], None);
    let data = "QUJD".repeat(2 * 1024 * 1024);
    let body = format!(
        r#"{{"_attachments":{{"@hostile/early-1.0.0.tgz":{{"data":"{data}"}}}},"_id":"@hostile/early","name":"@hostile/early","dist-tags":{{"latest":"1.0.0"}},"versions":{{"1.0.0":{{"name":"@hostile/early","version":"1.0.0"}}}}}}"#
    );
    let auth = format!("Bearer {e}");
    let r =
        w.broker("PUT", "/@hostile%2fearly", &[("authorization", &auth), ("content-type", "application/json")], body);
    assert_eq!((r.status, r.text().contains("too big")), (413, true), "{}", r.text());
    let line = w.broker.audit_lines().into_iter().rev().find(|l| l["path"] == "/@hostile%2fearly").unwrap();
    assert_eq!((line["status"].as_u64(), line["upstream_status"].as_u64()), (Some(413), Some(413)), "{line}");

    // Down, and an untrusted certificate: 502, and the credential never crossed.
    let d = w.phantom(&["@down/x"], &["publish"], None);
    assert_eq!(get(&w, "/@down%2fx", Some(&d)).status, 502);
    assert_eq!(get(&w, "/@down%2fx", None).status, 502);
    let u = w.phantom(&["@untrusted/x"], &["publish"], None);
    assert_eq!(get(&w, "/@untrusted%2fx", Some(&u)).status, 502);
    assert!(untrusted.seen.lock().unwrap().is_empty(), "the credential crossed an untrusted TLS connection");

    // The audit log says what happened, and never holds the credential.
    let lines = w.broker.audit_lines();
    let reason = |path: &str| -> Vec<String> {
        lines
            .iter()
            .filter(|l| l["path"] == path && l["decision"] != "forwarding")
            .map(|l| {
                let reason = l["reason"].as_str().unwrap_or_default();
                format!("{} {} {reason}", l["status"], l["decision"].as_str().unwrap_or_default())
            })
            .collect()
    };
    assert!(reason("/@hostile%2fstall").iter().any(|r| r.starts_with("504 error") && r.contains("in time")));
    assert!(reason("/@hostile%2ffail").iter().all(|r| r.starts_with("502 error") && r.contains("500")));
    assert!(reason("/@down%2fx").iter().all(|r| r.starts_with("502 error")));
    assert!(
        reason("/@untrusted%2fx").iter().any(|r| r.contains("certificate") || r.contains("Certificate")),
        "{:?}",
        reason("/@untrusted%2fx")
    );
    assert!(
        reason("/@hostile%2freset").iter().any(|r| r.starts_with("502 error") && r.contains("packument")),
        "{:?}",
        reason("/@hostile%2freset")
    );
    let tarball = "/@hostile/reset/-/reset-1.0.0.tgz";
    assert!(reason(tarball).iter().any(|r| r.contains("error") && r.contains("body")), "{:?}", reason(tarball));
    settle(&w.broker.dir.join("audit/phantom.jsonl"));
    let audit = std::fs::read_to_string(w.broker.dir.join("audit/phantom.jsonl")).unwrap();
    let log = std::fs::read_to_string(w.broker.dir.join("broker.log")).unwrap();
    assert!(!audit.contains(&canary) && !log.contains(&canary));
    assert!(!String::from_utf8_lossy(&w.http.seen.lock().unwrap()).contains(&canary));
    assert!(!raw.text.contains(&canary));
}

const KEPT_POLICY: &str = r#"
[[grant]]
name = "kept"
issuer = "github"
packages = ["@kept/*"]
actions = ["publish"]
create = true
credential = "kept"
[grant.claims]
repository_id = "123456789"
"#;

/// The broker keeps its upstream connections: consecutive requests share one, an empty answer
/// gives it back too, and when the upstream closes kept connections, whether idle for a while or
/// just as the next request goes out, that request takes a new one and the caller never sees
/// the difference.
#[test]
fn upstream_connections_are_kept_and_replaced_when_the_upstream_closes_them() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dev_certs(&dir.path().join("certs"));
    let kept = Counting::start(&certs.cert, &certs.key);
    let secret = dir.path().join("kept-token");
    std::fs::write(&secret, "kept-canary-token").unwrap();
    let extra = format!(
        r#"
[upstream.kept]
url = "https://127.0.0.1:{}/"
scopes = ["@kept"]
ca_file = "{{ca}}"

[credential.kept]
upstream = "kept"
source = {{ file = "{}" }}
"#,
        kept.port,
        secret.display()
    );
    let w = World::start_with(Options {
        policy: format!("{DEFAULT_POLICY}\n{KEPT_POLICY}"),
        // One worker thread, so one pool of upstream connections.
        server: "workers = 1".into(),
        extra,
        certs: Some(certs),
        ..Options::default()
    });
    let p = w.phantom(&["@kept/a", "@kept/empty"], &["publish"], None);
    for _ in 0..5 {
        let r = get(&w, "/@kept%2fa", Some(&p));
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.text(), r#"{"name":"kept"}"#);
    }
    for _ in 0..3 {
        assert_eq!(get(&w, "/@kept%2fempty", Some(&p)).status, 204);
    }
    assert_eq!(get(&w, "/@kept%2fa", None).status, 200, "anonymous reads use the same connections");
    assert_eq!(kept.accepted(), 1, "one connection serves consecutive requests");

    // Closed while idle: the next request goes on a new connection.
    kept.close_all();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(get(&w, "/@kept%2fa", Some(&p)).status, 200);
    assert_eq!(kept.accepted(), 2);

    // Closed just before each request, over and over: the request is never lost.
    for round in 0..30 {
        kept.close_all();
        let r = get(&w, "/@kept%2fa", Some(&p));
        if r.status != 200 {
            let lines = w.broker.audit_lines();
            let why = lines.iter().rev().find(|l| l["decision"] == "error").map(|l| l["reason"].to_string());
            panic!("round {round}: {} {why:?}", r.status);
        }
    }
    assert!(kept.accepted() > 2 && kept.accepted() <= 33, "{}", kept.accepted());
    let errors = w.broker.audit_lines().into_iter().filter(|l| l["decision"] == "error").count();
    assert_eq!(errors, 0, "no request failed");
    drop(w);
    drop(dir);
}

fn control(w: &World, body: Value) {
    let r = w.http.request("POST", &format!("{}/control", w.issuer.url), &[], body.to_string());
    assert_eq!(r.status, 200, "{}", r.text());
}

fn jwks_fetches(w: &World) -> u64 {
    w.http.request("GET", &format!("{}/stats", w.issuer.url), &[], "").json()["jwks_fetches"].as_u64().unwrap()
}

fn exchange_with(w: &World, key: &str, kid: Option<&str>) -> Resp {
    let claims = w.github_claims(&w.npm_audience());
    let header = match kid {
        Some(k) => json!({"kid": k}),
        None => json!({}),
    };
    let token = w.mint(&claims, key, header);
    w.broker(
        "POST",
        "/-/npm/v1/oidc/token/exchange/package/pb-jwks",
        &[("authorization", &format!("Bearer {token}"))],
        "",
    )
}

#[test]
fn issuer_keys_rotate_and_fail_closed() {
    let w = World::start_with(Options { policy: DEFAULT_POLICY.into(), extra: String::new(), ..Options::default() });
    // Rewrite the issuer's fetch timeout to 2 s: restart the broker with it.
    let config = std::fs::read_to_string(&w.broker.config).unwrap();
    let config = config
        .replace("algorithms = [\"RS256\", \"ES256\"]", "algorithms = [\"RS256\", \"ES256\"]\nfetch_timeout = \"2s\"");
    std::fs::write(&w.broker.config, config).unwrap();
    let mut w = w;
    w.broker.restart();

    assert_eq!(exchange_with(&w, "rsa", None).status, 201);
    let fetched = jwks_fetches(&w);

    // Rotation: a new kid triggers one refetch, and then verifies.
    control(&w, json!({"rotate": true}));
    assert_eq!(exchange_with(&w, "rsa2", None).status, 201);
    assert_eq!(jwks_fetches(&w), fetched + 1);
    // Unknown kids right after are refused without another fetch (rate limited).
    let r = exchange_with(&w, "rsa", Some("nope"));
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(jwks_fetches(&w), fetched + 1);

    // The JWKS endpoint goes slow, then huge, then down: cached keys keep working, and no
    // exchange waits much longer than the fetch timeout.
    for mode in ["slow", "huge", "error"] {
        control(&w, json!({"keys": mode}));
        let started = std::time::Instant::now();
        assert_eq!(exchange_with(&w, "rsa", None).status, 201, "{mode}: cached keys stop working");
        assert!(started.elapsed() < std::time::Duration::from_secs(4), "{mode}: waited {:?}", started.elapsed());
    }
    let lines = w.broker.audit_lines();
    let refused: Vec<&Value> = lines.iter().filter(|l| l["event"] == "exchange" && l["status"] == 401).collect();
    assert!(refused.iter().any(|l| l["reason"].as_str().is_some_and(|r| r.contains("no key"))), "{refused:?}");
}

/// Runs the broker with its files capped at `limit` bytes and SIGXFSZ ignored, so that a write
/// past the cap fails with EFBIG, as a full disk would fail it.
fn capped(limit: u64, audit: &str) -> Options {
    Options {
        policy: DEFAULT_POLICY.into(),
        wrapper: vec![
            "sh".into(),
            "-c".into(),
            format!("trap '' XFSZ; exec prlimit --fsize={limit}:{limit} \"$@\""),
            "sh".into(),
        ],
        // The library at warn; the binary's own lines (it listens, it stops) still said.
        log: Some("warn,phantom=info".into()),
        audit: audit.into(),
        ..Options::default()
    }
}

/// Sends cheap reads until the audit log stops growing: the next line no longer fits.
fn fill_audit_log(w: &World, limit: u64) {
    let audit = w.broker.dir.join("audit/phantom.jsonl");
    let size = || std::fs::metadata(&audit).unwrap().len();
    for _ in 0..limit / 100 {
        let before = size();
        w.broker("GET", "/-/ping", &[], "");
        settle(&audit);
        if size() == before {
            return;
        }
    }
    panic!("the audit log never filled up");
}

#[test]
fn an_unwritable_audit_log_refuses_writes_and_exchanges() {
    const LIMIT: u64 = 48 * 1024;
    let w = World::start_with(capped(LIMIT, ""));
    let p = w.phantom(&["pb-full"], &["publish"], None);
    fill_audit_log(&w, LIMIT);
    let before = w.storage();

    let body = json!({"_id": "pb-full", "name": "pb-full", "dist-tags": {"latest": "1.0.0"},
        "versions": {"1.0.0": {"name": "pb-full", "version": "1.0.0"}},
        "_attachments": {"pb-full-1.0.0.tgz": {"data": "AAAA", "length": 3}}})
    .to_string();
    let auth = format!("Bearer {p}");
    let r = w.broker("PUT", "/pb-full", &[("authorization", &auth), ("content-type", "application/json")], body);
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("audit log"));
    assert_eq!(before, w.storage(), "a write was forwarded without being on record");

    let r = w.exchange(&w.id_token(json!({})), &["pb-full"], &["publish"], None);
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(!r.text().contains("phm_"), "a phantom was handed out without an audit line");

    // Reads are served by default.
    assert_eq!(w.broker("GET", "/-/ping", &[], "").status, 200);
    // The chain stays verifiable: partial lines were cut back.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_phantom"))
        .args(["audit", "verify"])
        .arg(w.broker.dir.join("audit/phantom.jsonl"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));

    // With `serve_reads_on_failure = false`, reads are refused too.
    let strict = World::start_with(capped(LIMIT, "serve_reads_on_failure = false"));
    fill_audit_log(&strict, LIMIT);
    assert_eq!(strict.broker("GET", "/-/ping", &[], "").status, 503);
}
