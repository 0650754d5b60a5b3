//! `/metrics` on the admin face, read as Prometheus reads it: parsed by a text-format parser
//! (and `promtool check metrics` where Debian's prometheus package installed it), with each
//! counter moving by exactly what known requests did.

use crate::support::*;
use serde_json::json;
use std::collections::HashMap;

/// The scrape, as `name{label="value",...}` -> value (labels in sorted order).
fn scrape(w: &World) -> (String, HashMap<String, f64>) {
    let r = w.http.request("GET", &format!("{}metrics", w.broker.admin_url), &[], "");
    assert_eq!(r.status, 200);
    assert!(r.headers["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
    let text = r.text();
    let parsed =
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("parses as Prometheus text");
    let mut values = HashMap::new();
    for s in parsed.samples {
        let mut labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        labels.sort();
        let value = match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(buckets) => {
                values.insert(format!("{}_bucket_count{{{}}}", s.metric, labels.join(",")), buckets.len() as f64);
                continue;
            }
            prometheus_parse::Value::Summary(_) => continue,
        };
        values.insert(format!("{}{{{}}}", s.metric, labels.join(",")), value);
    }
    (text, values)
}

fn delta(before: &HashMap<String, f64>, after: &HashMap<String, f64>, key: &str) -> f64 {
    let get = |m: &HashMap<String, f64>| m.get(key).copied();
    assert!(get(after).is_some(), "no series {key}");
    get(after).unwrap() - get(before).unwrap_or(0.0)
}

#[test]
fn metrics_count_what_the_broker_did() {
    let w = World::start(DEFAULT_POLICY);
    let (_, before) = scrape(&w);
    // Every series is there from the start, at zero.
    assert_eq!(before["phantom_requests_total{action=\"publish\",decision=\"allow\"}"], 0.0);
    assert_eq!(before["phantom_refusals_total{reason=\"needs_phantom\"}"], 0.0);
    assert_eq!(before["phantom_exchanges_total{issuer=\"github\",result=\"allow\"}"], 0.0);

    // One exchange allowed, one denied (an identity no grant admits).
    let phantom = w.phantom(&["pb-metrics"], &["publish"], None);
    let denied = w.exchange(&w.id_token(json!({"repository_id": "1"})), &["pb-metrics"], &["publish"], None);
    assert_eq!(denied.status, 403);
    // A publish with the phantom, a write without one, two anonymous reads.
    let auth = format!("Bearer {phantom}");
    let headers = [("authorization", auth.as_str()), ("content-type", "application/json"), ("npm-command", "publish")];
    let body = publish_body("pb-metrics", "pb-metrics", "1.0.0", "latest");
    assert_eq!(w.broker("PUT", "/pb-metrics", &headers, body.clone()).status, 201);
    assert_eq!(w.broker("PUT", "/pb-metrics", &[("content-type", "application/json")], body).status, 401);
    assert_eq!(w.broker("GET", "/pb-metrics", &[], "").status, 200);
    assert_eq!(w.broker("GET", "/pb-nothing-here", &[], "").status, 404);

    settle(&w.broker.dir.join("audit/phantom.jsonl"));
    let (text, after) = scrape(&w);
    for (series, moved) in [
        ("phantom_exchanges_total{issuer=\"github\",result=\"allow\"}", 1.0),
        ("phantom_exchanges_total{issuer=\"github\",result=\"deny\"}", 1.0),
        ("phantom_refusals_total{reason=\"no_grant\"}", 1.0),
        ("phantom_requests_total{action=\"publish\",decision=\"allow\"}", 1.0),
        ("phantom_requests_total{action=\"publish|deprecate\",decision=\"deny\"}", 1.0),
        ("phantom_refusals_total{reason=\"needs_phantom\"}", 1.0),
        ("phantom_requests_total{action=\"read\",decision=\"anonymous\"}", 2.0),
        ("phantom_staged_total{}", 0.0),
        ("phantom_upstream_duration_seconds_count{upstream=\"verdaccio\"}", 3.0),
    ] {
        assert_eq!(delta(&before, &after, series), moved, "{series}");
    }
    assert_eq!(after["phantom_phantoms_active{}"], 1.0);
    assert_eq!(after["phantom_audit_healthy{}"], 1.0);
    assert_eq!(after["phantom_state_healthy{}"], 1.0);
    // The world's one credential has no `packages` and can publish directly.
    assert_eq!(after["phantom_credentials_unscoped{}"], 1.0);
    assert_eq!(after["phantom_credentials_direct_publish{}"], 1.0);
    assert!(!text.contains(&w.verdaccio.token) && !text.contains("phm_"), "a secret is in the metrics");

    // Prometheus's own checker, where it is installed (.ci/run installs it).
    match std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(mut child) => {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "promtool check metrics: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Err(e) => eprintln!("promtool not installed here ({e}): the exposition was checked by the parser only"),
    }
}
