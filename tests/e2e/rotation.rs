//! Rotation deadlines as a workflow, with the clock set by the credentials' configured dates:
//! a class A credential 40 days after its last rotation (30-day cadence: 10 days overdue) and a
//! class B one 5 days before its deadline (`due`). Webhook receivers hear `rotation-due` and
//! `rotation-overdue` (the overdue one escalated, as a ticket); replicas and restarts on a shared
//! Redis send each notice once, and a day later (the dates moved a day back) the overdue notice
//! goes out again. `refuse-writes` refuses a publish with a clear message and Verdaccio stays
//! unchanged; a rotation clears the state, and a restart remembers it.

use crate::support::redis::Redis;
use crate::support::*;
use serde_json::Value;
use std::time::Duration;

const DAY: u64 = 86_400;

fn day(secs: u64) -> String {
    phantom_broker::support::clock::date(secs)
}

/// The JSON bodies the receiver got at `/hooks/<name>`.
fn heard(rec: &recording::Recording, name: &str) -> Vec<Value> {
    let target = format!("/hooks/{name}");
    rec.writes().into_iter().filter(|s| s.target == target).map(|s| serde_json::from_slice(&s.body).unwrap()).collect()
}

fn status_row(w: &World, name: &str) -> Value {
    let r = w.admin("GET", "/admin/v1/credentials", Value::Null);
    assert_eq!(r.status, 200, "{}", r.text());
    let rows: Value = serde_json::from_str(&r.text()).unwrap();
    rows["credentials"].as_array().unwrap().iter().find(|r| r["name"] == name).unwrap().clone()
}

fn metric(w: &World, series: &str) -> Option<f64> {
    let auth = format!("Bearer {}", w.broker.admin_token);
    let text = w.http.request("GET", &format!("{}metrics", w.broker.admin_url), &[("authorization", &auth)], "").text();
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn publish(w: &World, name: &str, version: &str) -> Resp {
    let phantom = w.phantom(&[name], &["publish"], None);
    let auth = format!("Bearer {phantom}");
    let headers = [("authorization", auth.as_str()), ("content-type", "application/json"), ("npm-command", "publish")];
    w.broker("PUT", &format!("/{name}"), &headers, publish_body(name, name, version, "latest"))
}

#[test]
fn rotation_deadlines_notify_escalate_and_refuse_writes() {
    let now = phantom_broker::support::clock::unix_now();
    let today = now - now % DAY;
    let base = tempfile::tempdir().unwrap();
    let certs = dev_certs(&base.path().join("certs"));
    let rec = recording::Recording::start(&certs.cert, &certs.key);
    let redis = Redis::start(&base.path().join("redis"), &certs);
    let spare = base.path().join("spare-token");
    std::fs::write(&spare, "spare-canary-5e0c\n").unwrap();
    let url = rec.url();
    let extra = format!(
        r#"{state}
[credential.spare]
upstream = "verdaccio"
source = {{ file = "{spare}" }}
class = "B"
packages = ["pb-spare"]
created = "{spare_created}"

[rotation]
overdue = {{ A = "refuse-writes" }}
check = "1s"

[notify.team]
webhook = "{url}hooks/team"
ca_file = "{{ca}}"
events = ["rotation-due", "rotation-overdue", "incident"]
escalate = ["leads"]

[notify.leads]
webhook = "{url}hooks/leads"
ca_file = "{{ca}}"
format = "ticket"

[notify.chat]
webhook = "{url}hooks/chat"
ca_file = "{{ca}}"
events = ["rotation-due"]
"#,
        state = redis.state_table(),
        spare = spare.display(),
        spare_created = day(today - 85 * DAY),
    );
    let created = |days_ago: u64| format!("created = \"{}\"", day(today - days_ago * DAY));
    let mut w = World::start_with(Options {
        policy: DEFAULT_POLICY.into(),
        credential: format!("class = \"A\"\n{}", created(40)),
        certs: Some(certs),
        extra,
        ..Options::default()
    });

    // Each target hears what it subscribed to, once: the team both notices, the chat only the
    // due one, the leads the overdue one as a ticket (escalated).
    wait_until("the rotation notices", Duration::from_secs(20), || {
        heard(&rec, "team").len() >= 2 && !heard(&rec, "leads").is_empty() && !heard(&rec, "chat").is_empty()
    });
    std::thread::sleep(Duration::from_secs(3)); // three more checks: nothing is sent twice
    let (team, leads, chat) = (heard(&rec, "team"), heard(&rec, "leads"), heard(&rec, "chat"));
    assert_eq!((team.len(), leads.len(), chat.len()), (2, 1, 1), "{team:?} {leads:?} {chat:?}");
    let overdue = team.iter().find(|b| b["event"] == "rotation-overdue").expect("the team hears of the overdue one");
    let due_by = day(today - 10 * DAY);
    assert_eq!(overdue["credential"], "verdaccio-publisher");
    assert_eq!((overdue["class"].as_str(), overdue["due"].as_str()), (Some("A"), Some(due_by.as_str())), "{overdue}");
    assert_eq!((overdue["days_overdue"].as_u64(), overdue["refuses_writes"].as_bool()), (Some(10), Some(true)));
    assert_eq!(overdue["escalation"], true);
    let line = overdue["text"].as_str().unwrap();
    assert!(line.contains("OVERDUE") && line.contains("phantom credentials rotate verdaccio-publisher"), "{line}");
    let due = team.iter().find(|b| b["event"] == "rotation-due").unwrap();
    assert_eq!((due["credential"].as_str(), due["due"].as_str()), (Some("spare"), Some(day(today + 5 * DAY).as_str())));
    assert_eq!((chat[0]["event"].as_str(), chat[0]["credential"].as_str()), (Some("rotation-due"), Some("spare")));
    let ticket = &leads[0];
    assert_eq!(ticket["summary"], format!("Rotate npm credential verdaccio-publisher (overdue since {due_by})"));
    assert_eq!((ticket["priority"].as_str(), ticket["event"].as_str()), (Some("High"), Some("rotation-overdue")));
    assert_eq!(ticket["dedupe_key"], format!("phantom:rotation:verdaccio-publisher:{due_by}"));
    assert_eq!(ticket["details"]["days_overdue"], 10);
    let notices: Vec<Value> =
        w.broker.audit_lines().into_iter().filter(|l| l["event"] == "notify" && l["decision"] == "allow").collect();
    assert_eq!(notices.len(), 4, "{notices:?}");
    assert!(notices.iter().any(|l| l["notice"] == "rotation-overdue" && l["credential"] == "verdaccio-publisher"));

    // The inventory and the metrics say the same.
    let row = status_row(&w, "verdaccio-publisher");
    assert_eq!(row["rotation"]["state"], "overdue", "{row}");
    assert_eq!(
        (row["rotation"]["days_to_due"].as_i64(), row["rotation"]["cadence_days"].as_u64()),
        (Some(-10), Some(30))
    );
    assert!(row["warnings"].to_string().contains("rotation overdue since"), "{row}");
    let spare_row = status_row(&w, "spare");
    assert_eq!(
        (spare_row["rotation"]["state"].as_str(), spare_row["rotation"]["days_to_due"].as_i64()),
        (Some("due"), Some(5))
    );
    let table = std::process::Command::new(env!("CARGO_BIN_EXE_phantom"))
        .args(["credentials", "status", "--config"])
        .arg(&w.broker.config)
        .arg("--ca-file")
        .arg(&w.certs.ca)
        .output()
        .unwrap();
    let row = text(&table).lines().find(|l| l.starts_with("verdaccio-publisher")).unwrap_or_default().to_owned();
    assert!(row.contains("overdue") && row.contains(&due_by), "{}", text(&table));
    assert!(text(&table).contains("warning: verdaccio-publisher: rotation overdue since"), "{}", text(&table));
    assert_eq!(metric(&w, "phantom_credentials_overdue"), Some(1.0));
    assert_eq!(metric(&w, "phantom_credentials_due"), Some(1.0));
    let state = "phantom_credential_rotation_state{credential=\"verdaccio-publisher\",class=\"A\",state=\"overdue\"}";
    assert_eq!(metric(&w, state), Some(1.0));

    // refuse-writes: a publish through the overdue credential is refused, and says why.
    let refused = publish(&w, "pb-overdue", "1.0.0");
    assert_eq!(refused.status, 403, "{}", refused.text());
    let message = serde_json::from_str::<Value>(&refused.text()).unwrap()["error"].as_str().unwrap().to_owned();
    assert!(message.contains(&format!("due for rotation on {due_by} and is overdue")), "{message}");
    assert_eq!(w.upstream_packument("pb-overdue").status, 404, "Verdaccio got the refused publish");
    let line =
        w.broker.audit_lines().into_iter().rfind(|l| l["event"] == "request" && l["decision"] == "deny").unwrap();
    assert_eq!((line["action"].as_str(), line["package"].as_str()), (Some("publish"), Some("pb-overdue")), "{line}");
    assert!(line["reason"].as_str().unwrap().contains("overdue for rotation"), "{line}");
    assert_eq!(metric(&w, "phantom_refusals_total{reason=\"rotation_overdue\"}"), Some(1.0));

    // A restart on the same store sends nothing again the same day.
    w.broker.restart();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!((heard(&rec, "team").len(), heard(&rec, "leads").len()), (2, 1), "a restart sent a notice twice");

    // A day later (the dates moved a day back), the overdue credential's daily notice goes out
    // again, escalated; the due one is not repeated.
    let config = std::fs::read_to_string(&w.broker.config).unwrap().replace(&created(40), &created(41));
    std::fs::write(&w.broker.config, config).unwrap();
    w.broker.restart();
    wait_until("the next day's notice", Duration::from_secs(20), || heard(&rec, "leads").len() == 2);
    std::thread::sleep(Duration::from_secs(2));
    let team = heard(&rec, "team");
    assert_eq!((team.len(), heard(&rec, "chat").len()), (3, 1), "{team:?}");
    assert_eq!((team[2]["event"].as_str(), team[2]["days_overdue"].as_u64()), (Some("rotation-overdue"), Some(11)));

    // A rotation clears it: writes go through again, and a restart remembers the rotation.
    let fresh = loop {
        let t = w.publisher_login();
        if t != w.verdaccio.token {
            break t;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let file = w.root().join("new-token");
    std::fs::write(&file, format!("{fresh}\n")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_phantom"))
        .args(["credentials", "rotate", "verdaccio-publisher", "--from-file", file.to_str().unwrap(), "--incident"])
        .arg("--config")
        .arg(&w.broker.config)
        .arg("--ca-file")
        .arg(&w.certs.ca)
        .output()
        .unwrap();
    assert!(ok(&out), "{}", text(&out));
    std::fs::remove_file(&file).unwrap();
    // It was an incident rotation: the team heard what was revoked and frozen, before the swap.
    wait_until("the incident notice", Duration::from_secs(20), || {
        heard(&rec, "team").iter().any(|b| b["event"] == "incident")
    });
    let incident = heard(&rec, "team").into_iter().find(|b| b["event"] == "incident").unwrap();
    assert_eq!(incident["credential"], "verdaccio-publisher");
    let frozen = incident["frozen"].clone();
    assert!(frozen.as_array().is_some_and(|f| f.iter().any(|p| p == "pb-*")), "{incident}");
    assert!(incident["text"].as_str().unwrap().contains("phantom thaw"), "{incident}");
    assert_eq!(w.admin("POST", "/admin/v1/thaw", serde_json::json!({ "packages": frozen })).status, 200);
    let row = status_row(&w, "verdaccio-publisher");
    assert_eq!(
        (row["rotation"]["state"].as_str(), row["rotation"]["last_rotated"].as_str()),
        (Some("ok"), Some(day(today).as_str())),
        "{row}"
    );
    assert_eq!(row["age_days"], 0, "{row}");
    assert_eq!(publish(&w, "pb-overdue", "1.0.0").status, 201);
    assert_eq!(metric(&w, "phantom_credentials_overdue"), Some(0.0));

    // Going back to the old value is not a rotation: `credentials rotate` refuses it, and a
    // source that holds it again (a reload) brings back its deadline, overdue; the fresh value
    // back is no new rotation either, and keeps today's.
    let old = w.root().join("old-token");
    std::fs::write(&old, format!("{}\n", w.verdaccio.token)).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_phantom"))
        .args(["credentials", "rotate", "verdaccio-publisher", "--from-file", old.to_str().unwrap()])
        .arg("--config")
        .arg(&w.broker.config)
        .arg("--ca-file")
        .arg(&w.certs.ca)
        .output()
        .unwrap();
    assert!(!ok(&out) && text(&out).contains("was in use before"), "{}", text(&out));
    std::fs::remove_file(&old).unwrap();
    let source = w.root().join("secrets").join("npm-token");
    let reload_to = |value: &str, state: &str| {
        std::fs::write(&source, format!("{value}\n")).unwrap();
        let _ = w.admin("POST", "/admin/v1/reload", Value::Null);
        wait_until(&format!("the reload to the {state} value"), Duration::from_secs(10), || {
            status_row(&w, "verdaccio-publisher")["rotation"]["state"] == state
        });
    };
    reload_to(&w.verdaccio.token, "overdue");
    assert_eq!(publish(&w, "pb-overdue", "0.9.0").status, 403, "the old value's deadline did not come back");
    let reloaded = w.broker.audit_lines().into_iter().rev().find(|l| l["action"] == "credential-reload");
    let reloaded = reloaded.expect("the reload is on record");
    assert!(reloaded["reason"].as_str().is_some_and(|r| r.contains("not a rotation")), "{reloaded}");
    reload_to(&fresh, "ok");
    assert_eq!(status_row(&w, "verdaccio-publisher")["rotation"]["last_rotated"], day(today).as_str());
    w.broker.restart();
    assert_eq!(status_row(&w, "verdaccio-publisher")["rotation"]["state"], "ok", "a restart forgot the rotation");
    assert_eq!(publish(&w, "pb-overdue", "1.0.1").status, 201);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(heard(&rec, "leads").len(), 2, "a rotated credential was escalated again");
    for hook in rec.writes() {
        let body = String::from_utf8_lossy(&hook.body);
        assert!(!body.contains(&fresh) && !body.contains("spare-canary"), "a secret reached a webhook: {body}");
    }
    w.assert_secrets_contained(&[&fresh, "spare-canary-5e0c"]);
}
