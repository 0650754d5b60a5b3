//! Staged publishing and the approval gate, against Verdaccio 9 (which stages) and the real npm
//! CLI: an unmodified `npm publish` on a `publish = "stage"` grant leaves the version staged, not
//! live; only a maintainer's own approval, made upstream, publishes it; the broker never forwards
//! an approval; webhooks hear of each staged version; `rate` contains a burst; and a registry
//! that takes only staged publishes gets a refusal that says what to change.

use crate::support::recording::Recording;
use crate::support::*;
use serde_json::{json, Value};
use std::time::Duration;

const POLICY: &str = r#"
# CI stages; a maintainer approves. `st-*` is stage-only for the broker's credential upstream.
[[grant]]
name = "stage-release"
issuer = "github"
packages = ["st-*"]
actions = ["publish", "stage-publish"]
create = true
publish = "stage"
notify = ["releases", "flaky"]
credential = "verdaccio-stager"
[grant.claims]
repository_id = "123456789"

# The same, on packages the credential could also publish, deprecate and unpublish directly.
[[grant]]
name = "stage-any"
issuer = "github"
packages = ["sx-*"]
actions = ["publish", "deprecate"]
create = true
publish = "stage"
credential = "verdaccio-stager"
[grant.claims]
repository_id = "123456789"

[[grant]]
name = "burst"
issuer = "github"
packages = ["burst-*"]
actions = ["publish"]
create = true
rate = "2/1h"
credential = "verdaccio-publisher"
[grant.claims]
repository_id = "123456789"

[[grant]]
name = "strict"
issuer = "github"
packages = ["@strict/pkg"]
actions = ["publish"]
create = true
credential = "strict"
[grant.claims]
repository_id = "123456789"

[[grant]]
name = "once-an-hour"
issuer = "github"
packages = ["@strict/again"]
actions = ["publish"]
create = true
rate = "1/1h"
credential = "strict"
[grant.claims]
repository_id = "123456789"
"#;

struct Setup {
    w: World,
    /// The webhook receiver, and a registry that takes only staged publishes (`@strict`).
    rec: Recording,
    webhook_secret: String,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let certs = dev_certs(&dir.path().join("certs"));
    let rec = Recording::start(&certs.cert, &certs.key);
    let webhook_secret = format!("webhook-secret-{}", free_port());
    let secrets = dir.path().join("more-secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::write(secrets.join("webhook"), &webhook_secret).unwrap();
    std::fs::write(secrets.join("strict"), format!("strict-canary-{}", free_port())).unwrap();
    let extra = format!(
        r#"
[credential.verdaccio-stager]
upstream = "verdaccio"
source = {{ file = "{{secrets}}/stager-token" }}

[upstream.strict]
url = "{url}"
scopes = ["@strict"]
ca_file = "{{ca}}"

[credential.strict]
upstream = "strict"
source = {{ file = "{more}/strict" }}

[notify.releases]
webhook = "{url}hooks/releases"
secret = {{ file = "{more}/webhook" }}
ca_file = "{{ca}}"

[notify.flaky]
webhook = "{url}hooks/flaky"
ca_file = "{{ca}}"

[notify.oncall]
webhook = "{url}hooks/oncall"
ca_file = "{{ca}}"
events = ["burst-freeze", "staged"]
format = "ticket"

[console]
"#,
        url = rec.url(),
        more = secrets.display(),
    );
    let w = World::start_with(Options {
        policy: POLICY.into(),
        server: "freeze_on_burst = true".into(),
        extra,
        certs: Some(certs),
        verdaccio9: true,
        ..Options::default()
    });
    std::mem::forget(dir); // the certificates must outlive the world; the OS cleans /tmp
    Setup { w, rec, webhook_secret }
}

/// The publish's audit line (not its write-ahead line).
fn publish_line(w: &World, package: &str) -> Value {
    w.broker
        .audit_lines()
        .into_iter()
        .rev()
        .find(|l| {
            l["event"] == "request"
                && l["package"] == package
                && l["decision"] != "forwarding"
                && l["version"].is_string()
        })
        .unwrap_or_else(|| panic!("no audit line for a publish of {package}"))
}

/// A maintainer approves a staged version, with their own credential, upstream.
fn approve_upstream(w: &World, id: &str) -> u16 {
    let auth = format!("Bearer {}", w.verdaccio.token);
    let r =
        w.http.request("POST", &format!("{}-/stage/{id}/approve", w.verdaccio.url), &[("authorization", &auth)], "");
    w.http.seen.lock().unwrap().clear();
    r.status
}

fn hmac_hex(key: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.as_bytes());
    format!("sha256={}", phantom_broker::support::hex(ring::hmac::sign(&key, body).as_ref()))
}

#[test]
fn npm_publish_on_a_stage_grant_waits_for_a_maintainer() {
    let Setup { w, rec, webhook_secret } = setup();
    // The first notification to `flaky` fails: it is tried again.
    rec.answer("/hooks/flaky", 500, "{}");

    // An unmodified `npm publish`, OIDC, no token: npm succeeds and says what happened.
    let dir = w.package("st-web", "1.0.0");
    let out = w.npm(&dir, &["publish"], Some(&json!({})));
    assert!(ok(&out), "npm publish: {}", text(&out));
    assert!(text(&out).contains("st-web@1.0.0 is staged, not published (stage id"), "{}", text(&out));
    // Staged, not live.
    assert_eq!(w.upstream_packument("st-web").status, 404, "a staged version is live");
    let items = w.staged_upstream("st-web");
    assert_eq!(items.len(), 1, "{items:?}");
    let id = items[0]["id"].as_str().unwrap().to_owned();
    assert_eq!((items[0]["version"].as_str(), items[0]["actor"].as_str()), (Some("1.0.0"), Some("stager")));
    let line = publish_line(&w, "st-web");
    assert_eq!((line["action"].as_str(), line["decision"].as_str()), (Some("publish"), Some("allow")), "{line}");
    assert_eq!((line["staged"].as_bool(), line["stage_id"].as_str()), (Some(true), Some(id.as_str())), "{line}");
    assert!(text(&out).contains(&id), "npm did not print the stage id: {}", text(&out));
    // The console lists it as the stager credential may list it upstream (`GET /-/stage`), with
    // the command a maintainer runs.
    let page = w.console_page("/staged");
    let stager = page.split("<h3>verdaccio-stager").nth(1).and_then(|s| s.split("</section>").next()).unwrap();
    assert!(stager.contains(&format!("npm stage approve {id}")), "{page}");

    // The webhooks heard of it, signed; the flaky one on its second attempt; the one subscribed
    // to every staged version (`events`), as a ticket.
    wait_until("the notifications", Duration::from_secs(20), || {
        w.broker.audit_lines().iter().filter(|l| l["event"] == "notify" && l["decision"] == "allow").count() == 3
    });
    let ticket = rec.writes().into_iter().find(|s| s.target == "/hooks/oncall").expect("the subscribed target");
    let ticket: Value = serde_json::from_slice(&ticket.body).unwrap();
    assert_eq!(ticket["summary"], "Staged upstream: st-web@1.0.0", "{ticket}");
    assert_eq!(ticket["details"]["stage_id"].as_str(), Some(id.as_str()), "{ticket}");
    let hooks: Vec<_> = rec.writes().into_iter().filter(|s| s.target.starts_with("/hooks/")).collect();
    let releases: Vec<_> = hooks.iter().filter(|s| s.target == "/hooks/releases").collect();
    assert_eq!(releases.len(), 1, "{hooks:?}");
    let note: Value = serde_json::from_slice(&releases[0].body).unwrap();
    assert_eq!(
        (note["package"].as_str(), note["version"].as_str(), note["stage_id"].as_str()),
        (Some("st-web"), Some("1.0.0"), Some(id.as_str()))
    );
    assert_eq!(
        (note["grant"].as_str(), note["identity"]["repository"].as_str()),
        (Some("stage-release"), Some("acme/web"))
    );
    assert!(note["text"].as_str().unwrap().contains(&format!("npm stage approve {id}")), "{note}");
    let signature = releases[0].header("x-phantom-signature").expect("no signature");
    assert_eq!(signature, hmac_hex(&webhook_secret, &releases[0].body));
    assert_ne!(signature, hmac_hex("another-secret", &releases[0].body), "a wrong key would pass");
    assert_eq!(hooks.iter().filter(|s| s.target == "/hooks/flaky").count(), 2, "{hooks:?}");
    assert_eq!(hooks.iter().rfind(|s| s.target == "/hooks/flaky").unwrap().header("x-phantom-signature"), None);
    let flaky =
        w.broker.audit_lines().into_iter().find(|l| l["event"] == "notify" && l["upstream"] == "flaky").unwrap();
    assert!(flaky["reason"].as_str().unwrap().contains("on attempt 2"), "{flaky}");
    assert_eq!(flaky["stage_id"].as_str(), Some(id.as_str()));

    // Staged versions are reads of their package through the broker.
    w.login("st-web", "publish");
    let out = w.npm(w.root(), &["stage", "list", "st-web"], None);
    assert!(ok(&out) && text(&out).contains(&id), "npm stage list: {}", text(&out));
    let auth = format!("Bearer {}", w.phantom(&["st-web"], &["publish"], None));
    let view = w.broker("GET", &format!("/-/stage/{id}"), &[("authorization", &auth)], "");
    assert_eq!((view.status, view.json()["packageName"].as_str()), (200, Some("st-web")), "{}", view.text());
    let tarball = w.broker("GET", &format!("/-/stage/{id}/tarball"), &[("authorization", &auth)], "");
    assert_eq!(tarball.status, 200);
    assert!(tarball.body.starts_with(&[0x1f, 0x8b]), "not a tarball");
    // ... but not of another package's phantom, which cannot even tell the id exists.
    let other = format!("Bearer {}", w.phantom(&["sx-other"], &["publish"], None));
    let r = w.broker("GET", &format!("/-/stage/{id}"), &[("authorization", &other)], "");
    let unknown = w.broker("GET", "/-/stage/00000000-0000-0000-0000-000000000000", &[("authorization", &other)], "");
    assert_eq!(
        (r.status, r.text()),
        (unknown.status, unknown.text()),
        "the answer tells a foreign id from an unknown one"
    );
    assert_eq!(r.status, 404);
    let r = w.broker("GET", &format!("/-/stage/{id}/tarball"), &[("authorization", &other)], "");
    assert_eq!(r.status, 404, "{}", r.text());

    // Only a maintainer approves, upstream: never through the broker.
    let r = w.broker("POST", &format!("/-/stage/{id}/approve"), &[("authorization", &auth)], "");
    assert_eq!(r.status, 403, "{}", r.text());
    let out = w.npm(w.root(), &["stage", "approve", &id], None);
    assert!(!ok(&out), "npm stage approve through the broker: {}", text(&out));
    assert_eq!(w.upstream_packument("st-web").status, 404, "an approval went through the broker");
    assert_eq!(approve_upstream(&w, &id), 201);
    let live = w.broker("GET", "/st-web", &[], "");
    assert_eq!((live.status, live.json()["dist-tags"]["latest"].as_str()), (200, Some("1.0.0")), "{}", live.text());

    // `npm stage publish` is the stage-publish action.
    let dir = w.package("st-cli", "2.0.0");
    let out = w.npm(&dir, &["stage", "publish"], Some(&json!({})));
    assert!(ok(&out), "npm stage publish: {}", text(&out));
    let line = publish_line(&w, "st-cli");
    assert_eq!((line["action"].as_str(), line["staged"].as_bool()), (Some("stage-publish"), Some(true)), "{line}");
    let id = line["stage_id"].as_str().unwrap();
    assert!(text(&out).contains(&format!("staged with id {id}")), "{}", text(&out));
    assert_eq!(w.staged_upstream("st-cli").len(), 1);

    // A publish whose keys are escaped (the streaming scanner does not see its tarball data) is
    // staged all the same: the route follows what the checks settled, not the scanner's view.
    let auth = format!("Bearer {}", w.phantom(&["st-esc"], &["publish"], None));
    let body = r#"{"_id":"st-esc","name":"st-esc","dist-tags":{"latest":"1.0.0"},"versions":{"1.0.0":{"name":"st-esc","version":"1.0.0"}},"_attachments":{"st-esc-1.0.0\u002etgz":{"content_type":"application/octet-stream","d\u0061ta":"H4sIAAAAAAAAAw==","length":10}}}"#;
    let r = w.broker("PUT", "/st-esc", &[("authorization", &auth), ("content-type", "application/json")], body);
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(w.upstream_packument("st-esc").status, 404, "an escaped publish went live without approval");
    assert_eq!(w.staged_upstream("st-esc").len(), 1, "the escaped publish was not staged");
    assert_eq!(publish_line(&w, "st-esc")["staged"], true);

    // On a stage grant, a deprecate is not a publish: it goes upstream as itself.
    let dir = w.package("sx-app", "1.0.0");
    assert!(ok(&w.npm(&dir, &["publish"], Some(&json!({})))));
    let id = w.staged_upstream("sx-app")[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(approve_upstream(&w, &id), 201);
    w.login("sx-app", "deprecate");
    let out = w.npm(w.root(), &["deprecate", "sx-app@1.0.0", "use 2"], None);
    assert!(ok(&out), "npm deprecate: {}", text(&out));
    let doc = w.upstream_packument("sx-app").json();
    assert_eq!(doc["versions"]["1.0.0"]["deprecated"], "use 2", "{doc}");
    let line = w
        .broker
        .audit_lines()
        .into_iter()
        .rev()
        .find(|l| l["action"] == "deprecate" && l["decision"] == "allow")
        .unwrap();
    assert!(line.get("staged").is_none(), "a deprecate was staged: {line}");
    w.assert_canary_contained();
}

#[test]
fn rates_contain_a_burst_and_stage_only_registries_are_explained() {
    let Setup { w, rec, .. } = setup();

    // Two publishes an hour per grant and package, whichever identities the grant admits (a
    // GitHub `sub` changes with the ref and the environment: a count per identity would give a
    // job that runs under several a fresh window for each). The third is refused before its body
    // reaches the registry, and (freeze_on_burst) the package is frozen.
    let on_ref = |r: &str| json!({"sub": format!("repo:acme/web:ref:{r}"), "ref": r});
    for (version, identity) in [("1.0.0", json!({})), ("1.0.1", on_ref("refs/tags/v1.0.1"))] {
        let out = w.npm(&w.package("burst-a", version), &["publish"], Some(&identity));
        assert!(ok(&out), "publish {version}: {}", text(&out));
    }
    let before = w.storage();
    let other = json!({"sub": "repo:acme/web:environment:release", "environment": "release"});
    let out = w.npm(&w.package("burst-a", "1.0.2"), &["publish"], Some(&other));
    assert!(!ok(&out), "a third publish in the window went through: {}", text(&out));
    assert!(before == w.storage(), "the refused publish reached Verdaccio");
    // (npm tries a 429 again; by then the package is frozen.)
    let lines = w.broker.audit_lines();
    let line = lines.iter().find(|l| l["package"] == "burst-a" && l["status"] == 429).expect("no 429 on record");
    assert_eq!(line["action"], "publish|deprecate", "refused before its body was read: {line}");
    assert!(
        line["reason"].as_str().unwrap().contains("rate") && line["reason"].as_str().unwrap().contains("frozen"),
        "{line}"
    );
    let frozen = w.admin("GET", "/admin/v1/freeze", Value::Null).json();
    assert_eq!(frozen["frozen"], json!(["burst-a"]), "{frozen}");
    // The people on call hear of the freeze, and how to lift it.
    let freeze_notice = || {
        rec.writes().into_iter().filter(|s| s.target == "/hooks/oncall").find_map(|s| {
            let v: Value = serde_json::from_slice(&s.body).ok()?;
            (v["event"] == "burst-freeze").then_some(v)
        })
    };
    wait_until("the burst-freeze notice", Duration::from_secs(20), || freeze_notice().is_some());
    let notice = freeze_notice().unwrap();
    assert_eq!(notice["summary"], "Writes frozen after a burst: burst-a", "{notice}");
    assert_eq!((notice["priority"].as_str(), notice["details"]["grant"].as_str()), (Some("Highest"), Some("burst")));
    assert!(notice["description"].as_str().unwrap().contains("phantom thaw burst-a"), "{notice}");
    // A raw request sees the 429 and when to come back; another package is not affected.
    let auth = format!("Bearer {}", w.phantom(&["burst-a", "burst-b"], &["publish"], None));
    let body = json!({"_id": "burst-b", "name": "burst-b"}).to_string();
    let r =
        w.broker("PUT", "/burst-a", &[("authorization", &auth), ("content-type", "application/json")], body.clone());
    assert_eq!(r.status, 403, "a frozen package took a write: {}", r.text());
    assert_eq!(w.admin("POST", "/admin/v1/thaw", json!({"packages": ["burst-a"]})).status, 200);
    let r = w.broker("PUT", "/burst-a", &[("authorization", &auth), ("content-type", "application/json")], body);
    assert_eq!(r.status, 429, "{}", r.text());
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((3000..=3600).contains(&retry), "Retry-After: {retry}");
    let out = w.npm(&w.package("burst-b", "1.0.0"), &["publish"], Some(&json!({})));
    assert!(ok(&out), "another package was held back: {}", text(&out));

    // A registry that takes only staged publishes from this credential (as the public npm
    // registry answers a stage-only token since January 2027): the refusal says what to change.
    rec.answer("/@strict%2fpkg", 403, r#"{"code":"E_STAGE_REQUIRED","error":"this token may only stage"}"#);
    let auth = format!("Bearer {}", w.phantom(&["@strict/pkg"], &["publish"], None));
    let body = json!({
        "_id": "@strict/pkg", "name": "@strict/pkg", "dist-tags": {"latest": "1.0.0"},
        "versions": {"1.0.0": {"name": "@strict/pkg", "version": "1.0.0"}},
        "_attachments": {"@strict/pkg-1.0.0.tgz": {"data": "H4sIAAAAAAAAAw==", "length": 10}}
    });
    let r = w.broker(
        "PUT",
        "/@strict%2fpkg",
        &[("authorization", &auth), ("content-type", "application/json")],
        body.to_string(),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains(r#"publish = \"stage\""#), "{}", r.text());
    let line = publish_line(&w, "@strict/pkg");
    assert!(line["reason"].as_str().unwrap().contains("E_STAGE_REQUIRED"), "{line}");
    // A write that failed upstream and is sent again is the same write, not a second one.
    let again_auth = format!("Bearer {}", w.phantom(&["@strict/again"], &["publish"], None));
    let again_body = |version: &str| {
        json!({
            "_id": "@strict/again", "name": "@strict/again", "dist-tags": {"latest": version},
            "versions": {version: {"name": "@strict/again", "version": version}},
            "_attachments": {format!("@strict/again-{version}.tgz"): {"data": "H4sIAAAAAAAAAw==", "length": 10}}
        })
        .to_string()
    };
    rec.answer("/@strict%2fagain", 503, "{}");
    let headers = [("authorization", again_auth.as_str()), ("content-type", "application/json")];
    assert_eq!(w.broker("PUT", "/@strict%2fagain", &headers, again_body("1.0.0")).status, 502);
    let again = w.broker("PUT", "/@strict%2fagain", &headers, again_body("1.0.0"));
    assert_eq!(again.status, 201, "the resend of a failed write was counted twice: {}", again.text());
    let r = w.broker("PUT", "/@strict%2fagain", &headers, again_body("1.0.1"));
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(w.admin("POST", "/admin/v1/thaw", json!({"packages": ["@strict/again"]})).status, 200);

    // Another refusal by that registry is relayed as it came.
    rec.answer("/@strict%2fpkg", 403, r#"{"error":"you are not a maintainer"}"#);
    let r = w.broker(
        "PUT",
        "/@strict%2fpkg",
        &[("authorization", &auth), ("content-type", "application/json")],
        body.to_string(),
    );
    assert_eq!((r.status, r.text().contains("not a maintainer")), (403, true), "{}", r.text());
    w.assert_canary_contained();
}
