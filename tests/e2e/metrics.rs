//! `/metrics` on the admin face, read as Prometheus reads it: parsed by a text-format parser
//! (and `promtool check metrics` where Debian's prometheus package installed it), with each
//! counter moving by exactly what known requests did; only with the admin token, which a real
//! Prometheus sends from its `credentials_file`.

use crate::support::*;
use serde_json::json;
use std::collections::HashMap;

/// The scrape, as `name{label="value",...}` -> value (labels in sorted order).
fn scrape(w: &World) -> (String, HashMap<String, f64>) {
    let auth = format!("Bearer {}", w.broker.admin_token);
    let r = w.http.request("GET", &format!("{}metrics", w.broker.admin_url), &[("authorization", &auth)], "");
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

/// `/metrics` names the credentials, grants and packages an attacker would aim at: without the
/// admin token (none, or a wrong one) it is refused and the refusal is audited; Prometheus
/// itself, configured as docs/admin-api.md says (`authorization: { credentials_file: ... }`), scrapes
/// it, and the same job without the file is refused. That Prometheus loads the alerting rules of
/// `deploy/prometheus/phantom-rules.yml` and evaluates each without error, and, after a short
/// load, every query of every panel of `deploy/grafana/phantom.json` returns data.
#[test]
fn metrics_need_the_admin_token() {
    let now = phantom_broker::support::clock::unix_now();
    let date = |t: u64| phantom_broker::support::clock::date(t);
    let w = World::start_with(Options {
        policy: DEFAULT_POLICY.into(),
        credential: format!(
            "class = \"B\"\ncreated = \"{}\"\nexpires = \"{}\"",
            date(now - 20 * 86_400),
            date(now + 200 * 86_400)
        ),
        ..Options::default()
    });
    let url = format!("{}metrics", w.broker.admin_url);
    for auth in [None, Some("Bearer not-the-admin-token"), Some("Basic YWRtaW46YWRtaW4=")] {
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", *a)).collect();
        let r = w.http.request("GET", &url, &headers, "");
        assert_eq!(r.status, 401, "{auth:?}: {}", r.text());
        assert!(r.headers.contains_key("www-authenticate") && r.text().contains("credentials_file"), "{}", r.text());
        assert!(!r.text().contains("phantom_"), "a refused scrape got metrics");
    }
    let refusals: Vec<_> = w
        .broker
        .audit_lines()
        .into_iter()
        .filter(|l| l["action"] == "metrics" && l["decision"] == "deny" && l["status"] == 401)
        .collect();
    assert_eq!(refusals.len(), 3, "{refusals:?}");
    assert!(!std::fs::read_to_string(w.broker.dir.join("audit/phantom.jsonl"))
        .unwrap()
        .contains("not-the-admin-token"));

    let Ok(prometheus) = which("prometheus") else {
        eprintln!("prometheus is not installed here: its scrape was not tried (.ci/run installs it)");
        return;
    };
    let dir = w.root().join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = w.root().join("secrets/admin-token");
    let target = w.broker.admin_url.trim_start_matches("https://").trim_end_matches('/').to_owned();
    let job = |name: &str, auth: &str| {
        format!(
            "  - job_name: {name}\n    scheme: https\n    tls_config: {{ ca_file: {ca} }}\n{auth}    static_configs: [{{ targets: [\"{target}\"] }}]\n",
            ca = w.certs.ca.display()
        )
    };
    let rules = repo().join("deploy/prometheus/phantom-rules.yml");
    let config = format!(
        "global: {{ scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s }}\nrule_files: [\"{}\"]\nscrape_configs:\n{}{}",
        rules.display(),
        job("phantom", &format!("    authorization: {{ credentials_file: {} }}\n", token_file.display())),
        job("phantom-no-token", "")
    );
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let port = free_port();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let _prometheus = Proc::new(
        std::process::Command::new(prometheus)
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let up = |job: &str| -> Option<f64> {
        let body = plain_get(port, &format!("/api/v1/query?query=up%7Bjob%3D%22{job}%22%7D"))?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    };
    wait_until("prometheus's scrapes", std::time::Duration::from_secs(30), || {
        up("phantom").is_some() && up("phantom-no-token").is_some()
    });
    assert_eq!(up("phantom"), Some(1.0), "prometheus with the credentials_file could not scrape");
    assert_eq!(up("phantom-no-token"), Some(0.0), "prometheus without the token scraped /metrics");
    let healthy = plain_get(port, "/api/v1/query?query=phantom_audit_healthy").unwrap_or_default();
    assert!(healthy.contains("\"phantom_audit_healthy\"") && healthy.contains("\"1\"]"), "{healthy}");

    // A short load while Prometheus scrapes every second: exchanges, publishes, reads and
    // refusals, so that rates have two samples to go on.
    for i in 0..4 {
        let phantom = w.phantom(&["pb-dash"], &["publish"], None);
        let headers = [("authorization", format!("Bearer {phantom}")), ("content-type", "application/json".into())];
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let body = publish_body("pb-dash", "pb-dash", &format!("1.0.{i}"), "latest");
        assert_eq!(w.broker("PUT", "/pb-dash", &headers, body).status, 201);
        assert_eq!(w.broker("GET", "/pb-dash", &[], "").status, 200);
        assert_eq!(w.broker("PUT", "/pb-dash", &[("content-type", "application/json")], "{}").status, 401);
        std::thread::sleep(std::time::Duration::from_millis(700));
    }
    std::thread::sleep(std::time::Duration::from_secs(2));
    let query = |expr: &str| -> serde_json::Value {
        let q = percent_encoding::utf8_percent_encode(expr, percent_encoding::NON_ALPHANUMERIC);
        let body = plain_get(port, &format!("/api/v1/query?query={q}")).unwrap_or_else(|| panic!("{expr}: no answer"));
        serde_json::from_str(&body).unwrap()
    };
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join("deploy/grafana/phantom.json")).unwrap()).unwrap();
    let panels: Vec<&serde_json::Value> =
        dashboard["panels"].as_array().unwrap().iter().filter(|p| p["type"] != "row").collect();
    assert!(panels.len() >= 15, "the dashboard has {} panels", panels.len());
    for panel in panels {
        let targets = panel["targets"].as_array().map(Vec::as_slice).unwrap_or_default();
        assert!(!targets.is_empty(), "panel `{}` has no query", panel["title"]);
        for t in targets {
            let expr = t["expr"].as_str().unwrap().replace("$__rate_interval", "1m");
            assert!(!expr.contains('$'), "panel `{}`: a variable the test cannot fill: {expr}", panel["title"]);
            let answer = query(&expr);
            assert_eq!(answer["status"], "success", "panel `{}`: {expr}: {answer}", panel["title"]);
            let result = answer["data"]["result"].as_array().unwrap();
            assert!(!result.is_empty(), "panel `{}`: {expr} returned no data", panel["title"]);
        }
    }
    // The alerting rules loaded, and each evaluated against the broker's series without error.
    let rules: serde_json::Value = serde_json::from_str(&plain_get(port, "/api/v1/rules").unwrap()).unwrap();
    let loaded: Vec<&serde_json::Value> =
        rules["data"]["groups"].as_array().unwrap().iter().flat_map(|g| g["rules"].as_array().unwrap()).collect();
    assert!(loaded.len() >= 8, "{rules}");
    for rule in loaded {
        assert_eq!(rule["health"], "ok", "{rule}");
    }
}

/// The alerting rules pass promtool's check and their unit tests (`phantom-rules.test.yml`).
#[test]
fn the_alerting_rules_pass_their_unit_tests() {
    let Ok(promtool) = which("promtool") else {
        eprintln!("promtool is not installed here: the rules were not checked (.ci/run installs it)");
        return;
    };
    let dir = repo().join("deploy/prometheus");
    for args in [["check", "rules", "phantom-rules.yml"], ["test", "rules", "phantom-rules.test.yml"]] {
        let out = std::process::Command::new(&promtool).args(args).current_dir(&dir).output().unwrap();
        assert!(out.status.success(), "promtool {}: {}", args.join(" "), text(&out));
    }
}

fn which(name: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join(name)).find(|p| p.is_file()))
        .ok_or(())
}

/// A plain-HTTP GET on loopback (Prometheus's own API); the body, on a 200. HTTP/1.0, so that
/// the body is never chunked.
fn plain_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    (head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200")).then(|| body.to_owned())
}
