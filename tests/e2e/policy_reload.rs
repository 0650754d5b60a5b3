//! A running broker follows its policy files: a broken file keeps the last good policy in force
//! (and says so in the audit log and the metrics); a fixed file that removes a grant refuses the
//! phantoms it issued at their next write, within seconds, without a restart.

use crate::support::*;
use serde_json::Value;
use std::time::{Duration, Instant};

fn wait_for_reload(w: &World, decision: &str, seen: usize) -> Value {
    let start = Instant::now();
    loop {
        let lines: Vec<Value> = w
            .broker
            .audit_lines()
            .into_iter()
            .filter(|l| l["action"] == "policy-reload" && l["decision"] == decision)
            .collect();
        if lines.len() > seen {
            return lines.last().unwrap().clone();
        }
        assert!(start.elapsed() < Duration::from_secs(10), "no {decision} policy reload after the file changed");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn reloads(w: &World, result: &str) -> String {
    let auth = format!("Bearer {}", w.broker.admin_token);
    let text = w.http.request("GET", &format!("{}metrics", w.broker.admin_url), &[("authorization", &auth)], "").text();
    let key = format!("phantom_policy_reloads_total{{result=\"{result}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&key)).unwrap_or("missing").to_owned()
}

#[test]
fn policy_files_reload_with_last_known_good() {
    let w = World::start(DEFAULT_POLICY);
    let file = w.broker.dir.join("policies/test.toml");
    let phantom = w.phantom(&["pb-reload"], &["publish"], None);
    let publish = |version: &str| {
        let auth = format!("Bearer {phantom}");
        let headers =
            [("authorization", auth.as_str()), ("content-type", "application/json"), ("npm-command", "publish")];
        w.broker("PUT", "/pb-reload", &headers, publish_body("pb-reload", "pb-reload", version, "latest"))
    };
    assert_eq!(publish("1.0.0").status, 201);

    // A broken file: the last good policy stays in force, on record.
    std::fs::write(&file, "[[grant]]\nname = \"half-written").unwrap();
    let line = wait_for_reload(&w, "deny", 0);
    assert!(line["reason"].as_str().unwrap().contains("file change: kept the last good policy"), "{line}");
    assert_eq!(reloads(&w, "failed"), "1");
    assert_eq!(publish("1.0.1").status, 201, "the last good policy is not in force");

    // Fixed, without the grant the phantom came from: its next write is refused.
    let narrowed = DEFAULT_POLICY
        .replace("name = \"acme-release\"", "name = \"acme-release-v2\"")
        .replace("\"pb-*\"", "\"pb-other\"");
    std::fs::write(&file, narrowed).unwrap();
    let started = Instant::now();
    wait_for_reload(&w, "allow", 0);
    let refused = publish("1.0.2");
    assert_eq!(refused.status, 403, "{}", refused.text());
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    assert_eq!(reloads(&w, "ok"), "1");
    let versions = w.upstream_packument("pb-reload").json()["versions"].as_object().unwrap().len();
    assert_eq!(versions, 2, "the refused write reached the upstream");
    assert!(refused.headers["npm-notice"].to_str().unwrap().starts_with("phantom: the phantom token does not allow"));
}
