//! Two broker processes sharing one real redis-server (over TLS) act as one broker: a phantom
//! minted on one works on the other, an ID token is spent on both at once, `max_uses` holds
//! under a burst split between them, revocations and freezes reach the other within a second;
//! while Redis is down both fail closed, and both recover by themselves when it returns.

use crate::support::redis::Redis;
use crate::support::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

struct Pair {
    w: World,
    /// The second replica (`w.broker` is the first).
    b: Broker,
    redis: Redis,
    _base: tempfile::TempDir,
}

fn pair() -> Pair {
    let base = tempfile::tempdir().unwrap();
    let certs = dev_certs(&base.path().join("certs"));
    let redis = Redis::start(&base.path().join("redis"), &certs);
    // Every replica hashes token ids with the same key, so that they name a phantom alike.
    let key = base.path().join("audit-key");
    std::fs::write(&key, "a9f1c2e4b6d8a0f1c3e5b7d9a1f2c4e6\n").unwrap();
    let w = World::start_with(Options {
        policy: DEFAULT_POLICY.into(),
        certs: Some(certs),
        extra: redis.state_table(),
        audit: format!("key = {{ file = \"{}\" }}", key.display()),
        ..Options::default()
    });
    let b = w.replica(DEFAULT_POLICY);
    Pair { w, b, redis, _base: base }
}

impl Pair {
    fn exchange_at(&self, broker: &Broker, id_token: &str, packages: &[&str]) -> Resp {
        let body = json!({"packages": packages, "actions": ["publish", "dist-tag"]});
        let auth = format!("Bearer {id_token}");
        self.w.to(
            broker,
            "POST",
            "/-/phantom/v1/exchange",
            &[("authorization", &auth), ("content-type", "application/json")],
            body.to_string(),
        )
    }

    fn phantom_at(&self, broker: &Broker, packages: &[&str]) -> String {
        let r = self.exchange_at(broker, &self.w.id_token(json!({})), packages);
        let log = || std::fs::read_to_string(broker.dir.join("broker.log")).unwrap_or_default();
        assert_eq!(r.status, 201, "exchange: {}; the broker's log:\n{}", r.text(), log());
        r.json()["token"].as_str().unwrap().to_owned()
    }

    fn publish_at(&self, broker: &Broker, phantom: &str, name: &str, version: &str) -> Resp {
        let auth = format!("Bearer {phantom}");
        let headers =
            [("authorization", auth.as_str()), ("content-type", "application/json"), ("npm-command", "publish")];
        self.w.to(broker, "PUT", &format!("/{name}"), &headers, publish_body(name, name, version, "latest"))
    }

    fn read_at(&self, broker: &Broker, phantom: &str, name: &str) -> Resp {
        self.w.to(broker, "GET", &format!("/{name}"), &[("authorization", &format!("Bearer {phantom}"))], "")
    }
}

/// Polls `check` every 20 ms until it holds; returns how long that took, failing past `limit`.
fn time_until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

#[test]
fn two_replicas_act_as_one_broker() {
    let p = pair();
    let (a, b, w) = (&p.w.broker, &p.b, &p.w);

    // A phantom minted on A publishes through B, with the unmodified npm CLI.
    let token = p.phantom_at(a, &["pb-shared"]);
    let npmrc = w.root().join("npmrc-b");
    std::fs::write(
        &npmrc,
        format!("registry={}\ncafile={}\n//127.0.0.1:{}/:_authToken={token}\n", b.url, w.certs.ca.display(), b.port),
    )
    .unwrap();
    let out = w.npm_with(&npmrc, &w.package("pb-shared", "1.0.0"), &["publish"]);
    assert!(ok(&out), "npm publish through B: {}", text(&out));
    assert_eq!(w.upstream_packument("pb-shared").json()["dist-tags"]["latest"], "1.0.0");
    let minted = a.audit_lines().into_iter().find(|l| l["event"] == "exchange").unwrap();
    let published =
        b.audit_lines().into_iter().find(|l| l["action"] == "publish" && l["upstream_status"] == 201).unwrap();
    assert_eq!(published["token_id"], minted["token_id"], "the replicas name the phantom differently");
    assert_eq!(published["grant"], "acme-release");

    // An ID token exchanged on A is a replay on B.
    let id_token = w.id_token(json!({}));
    assert_eq!(p.exchange_at(a, &id_token, &["pb-shared"]).status, 201);
    let replay = p.exchange_at(b, &id_token, &["pb-shared"]);
    assert_eq!(replay.status, 401, "{}", replay.text());
    let line = b.audit_lines().into_iter().rev().find(|l| l["event"] == "exchange").unwrap();
    assert!(line["reason"].as_str().unwrap().contains("already been exchanged"), "{line}");

    // max_uses (3) holds under a burst of ten writes split between A and B.
    let packages: Vec<String> = (0..10).map(|i| format!("pb-burst-{i}")).collect();
    let names: Vec<&str> = packages.iter().map(String::as_str).collect();
    let burst = p.phantom_at(a, &names);
    let barrier = std::sync::Barrier::new(packages.len());
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = packages
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let (barrier, burst) = (&barrier, &burst);
                let broker = if i % 2 == 0 { a } else { b };
                s.spawn(move || {
                    let http = Http::new(&w.certs.ca);
                    let auth = format!("Bearer {burst}");
                    let headers = [
                        ("authorization", auth.as_str()),
                        ("content-type", "application/json"),
                        ("npm-command", "publish"),
                    ];
                    let url = format!("{}{name}", broker.url);
                    barrier.wait();
                    http.request("PUT", &url, &headers, publish_body(name, name, "1.0.0", "latest")).status
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let stored = packages.iter().filter(|n| w.upstream_packument(n).status == 200).count();
    assert_eq!(stored, 3, "the upstream stored {stored} of the burst (statuses {statuses:?})");
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 3, "{statuses:?}");
    assert!(statuses.iter().all(|s| [201, 403, 429].contains(s)), "{statuses:?}");

    // A revocation made through A's admin API is enforced by B within a second, for reads it
    // had cached and for writes.
    let revocable = p.phantom_at(a, &["pb-shared"]);
    assert_eq!(p.read_at(b, &revocable, "pb-shared").status, 200);
    let listed = w.admin_of(a, "GET", "/admin/v1/phantoms", Value::Null).json();
    assert_eq!(listed["phantoms"].as_array().unwrap().len(), 4, "live phantoms across the replicas: {listed}");
    let exchanges: Vec<Value> = a.audit_lines().into_iter().filter(|l| l["event"] == "exchange").collect();
    let id = exchanges.last().unwrap()["token_id"].as_str().unwrap().to_owned();
    assert!(listed.to_string().contains(&id));
    let listed_on_b = w.admin_of(b, "GET", "/admin/v1/phantoms", Value::Null).json();
    assert_eq!(listed_on_b["phantoms"], listed["phantoms"]);
    assert_eq!(w.admin_of(a, "POST", "/admin/v1/revoke", json!({"id": id})).json()["revoked"], 1);
    assert_eq!(p.publish_at(b, &revocable, "pb-shared", "1.0.1").status, 401, "B wrote with a revoked phantom");
    let took = time_until("B refuses reads of the revoked phantom", Duration::from_secs(3), || {
        p.read_at(b, &revocable, "pb-shared").status == 401
    });
    assert!(took <= Duration::from_secs(1), "B served a revoked phantom for {took:?}");

    // A freeze made through A is enforced by B within a second; a thaw through B reaches A.
    let writer = p.phantom_at(b, &["pb-frozen"]);
    let frozen_on = |broker: &Broker| {
        w.admin_of(broker, "GET", "/admin/v1/freeze", Value::Null).json()["frozen"]
            .as_array()
            .is_some_and(|f| f.iter().any(|p| p == "pb-frozen"))
    };
    assert!(!frozen_on(b));
    assert_eq!(w.admin_of(a, "POST", "/admin/v1/freeze", json!({"packages": ["pb-frozen"]})).status, 200);
    let took = time_until("B sees the freeze", Duration::from_secs(3), || frozen_on(b));
    assert!(took <= Duration::from_secs(1), "the freeze took {took:?} to reach B");
    let refused = p.publish_at(b, &writer, "pb-frozen", "1.0.0");
    assert_eq!(refused.status, 403, "{}", refused.text());
    assert_eq!(w.upstream_packument("pb-frozen").status, 404);
    assert_eq!(w.admin_of(b, "POST", "/admin/v1/thaw", json!({"packages": ["pb-frozen"]})).status, 200);
    let took = time_until("A sees the thaw", Duration::from_secs(3), || !frozen_on(a));
    assert!(took <= Duration::from_secs(1), "the thaw took {took:?} to reach A");
    assert_eq!(p.publish_at(a, &writer, "pb-frozen", "1.0.0").status, 201);

    // A credential rotated through A is swapped in on B within a second: B reads the value from
    // its own copy of the source (here the same file), checked against the fingerprint A
    // announced (the value itself never goes into Redis).
    let rotated = loop {
        let t = w.publisher_login();
        if t != w.verdaccio.token {
            break t;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let file = w.root().join("rotated-token");
    std::fs::write(&file, &rotated).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_phantom"))
        .args(["credentials", "rotate", "verdaccio-publisher", "--from-file"])
        .arg(&file)
        .arg("--config")
        .arg(&a.config)
        .arg("--ca-file")
        .arg(&w.certs.ca)
        .output()
        .unwrap();
    assert!(ok(&out) && text(&out).contains("replicas: announced"), "{}", text(&out));
    // B swaps it in by following A's announcement, or, as it watches the same file, by reloading
    // it (with the canary): either way within a second.
    let followed = |l: &Value| {
        (l["action"] == "credential-follow" || l["action"] == "credential-reload") && l["decision"] == "allow"
    };
    let took =
        time_until("B swaps the rotated value in", Duration::from_secs(3), || b.audit_lines().iter().any(followed));
    assert!(took <= Duration::from_secs(1), "B followed the rotation after {took:?}");
    assert!(!a.audit_lines().iter().any(|l| l["action"] == "credential-follow"), "A followed its own rotation");
    let writer2 = p.phantom_at(a, &["pb-rotated"]);
    assert_eq!(p.publish_at(b, &writer2, "pb-rotated", "1.0.0").status, 201);

    // Redis holds records, counters and digests: no real credential, no phantom.
    let dump = p.redis.dump("pbtest:");
    assert!(dump.contains("pbtest:ph:") && dump.contains("pbtest:jti:") && dump.contains("pbtest:live"), "{dump}");
    for secret in [w.verdaccio.token.as_str(), &rotated, &token, &burst, &revocable, &writer, &writer2] {
        assert!(!dump.contains(secret), "a secret is in Redis");
    }
    assert!(!dump.contains("phm_"), "a phantom is in Redis");
    w.assert_canary_contained();
}

#[test]
fn a_redis_outage_fails_closed_and_both_replicas_recover() {
    let mut p = pair();
    let phantom = p.phantom_at(&p.w.broker, &["pb-outage"]);
    assert_eq!(p.publish_at(&p.b, &phantom, "pb-outage", "1.0.0").status, 201);

    p.redis.stop();
    let (a, b, w) = (&p.w.broker, &p.b, &p.w);
    for broker in [a, b] {
        let ready = |broker: &Broker| w.http.request("GET", &format!("{}readyz", broker.admin_url), &[], "");
        time_until("/readyz answers 503", Duration::from_secs(5), || ready(broker).status == 503);
        assert_eq!(ready(broker).json()["state"], "failing");
        let write = p.publish_at(broker, &phantom, "pb-outage", "1.0.1");
        assert_eq!(write.status, 503, "a write while Redis is down: {}", write.text());
        let exchange = p.exchange_at(broker, &w.id_token(json!({})), &["pb-outage"]);
        assert_eq!(exchange.status, 503, "an exchange while Redis is down: {}", exchange.text());
        let read = w.to(broker, "GET", "/pb-outage", &[], "");
        assert_eq!(read.status, 200, "an anonymous read while Redis is down");
        let line = broker.audit_lines().into_iter().rev().find(|l| l["event"] == "exchange").unwrap();
        assert_eq!(line["decision"], "error", "{line}");
    }
    assert_eq!(w.upstream_packument("pb-outage").json()["dist-tags"]["latest"], "1.0.0");

    // Redis is back on the same port (empty: it kept nothing): both replicas serve writes
    // again within seconds, without a restart.
    p.redis.resume();
    let (a, b, w) = (&p.w.broker, &p.b, &p.w);
    for (broker, version) in [(a, "1.0.1"), (b, "1.0.2")] {
        let mut fresh = None;
        time_until("exchanges are served again", Duration::from_secs(10), || {
            let r = p.exchange_at(broker, &w.id_token(json!({})), &["pb-outage"]);
            fresh = (r.status == 201).then(|| r.json()["token"].as_str().unwrap().to_owned());
            fresh.is_some()
        });
        assert_eq!(p.publish_at(broker, &fresh.unwrap(), "pb-outage", version).status, 201);
        assert_eq!(w.http.request("GET", &format!("{}readyz", broker.admin_url), &[], "").status, 200);
    }
    assert_eq!(w.upstream_packument("pb-outage").json()["dist-tags"]["latest"], "1.0.2");
}
