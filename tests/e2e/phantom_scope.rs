//! A phantom is worth exactly its scope: its packages, its actions, its dist-tags, its lifetime
//! and its number of writes. Everything outside is refused before the upstream sees it.

use crate::support::*;
use serde_json::{json, Value};

fn put(w: &World, phantom: &str, name: &str, body: String) -> Resp {
    w.broker(
        "PUT",
        &format!("/{}", name.replace('/', "%2f")),
        &[
            ("authorization", &format!("Bearer {phantom}")),
            ("content-type", "application/json"),
            ("npm-command", "publish"),
        ],
        body,
    )
}

#[test]
fn phantom_scope_lifetime_and_uses() {
    let w = World::start(DEFAULT_POLICY);

    // Scope: a phantom for pb-a cannot publish pb-b, nor unpublish pb-a.
    let a = w.phantom(&["pb-a"], &["publish"], None);
    let before = w.storage();
    let r = put(&w, &a, "pb-b", publish_body("pb-b", "pb-b", "1.0.0", "latest"));
    assert_eq!(r.status, 403, "{}", r.text());
    let r = w.broker("DELETE", "/pb-a/-rev/1-abc", &[("authorization", &format!("Bearer {a}"))], "");
    assert_eq!(r.status, 403, "{}", r.text());
    // A body whose name differs from its URL, and one with a tag the grant does not allow.
    let r = put(&w, &a, "pb-a", publish_body("pb-a", "pb-b", "1.0.0", "latest"));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("`name` in the body does not match"));
    let r = put(&w, &a, "pb-a", publish_body("pb-a", "pb-a", "1.0.0", "beta"));
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(before, w.storage(), "a refused publish reached Verdaccio");
    // In scope, it works.
    let r = put(&w, &a, "pb-a", publish_body("pb-a", "pb-a", "1.0.0", "latest"));
    assert_eq!(r.status, 201, "{}", r.text());

    // Uses: the grant allows 3 writes. Resending a write that succeeded is a new use; resending
    // one that failed upstream (npm retries PUTs on 5xx) is free.
    let m = w.phantom(&["pb-m"], &["publish"], None);
    let body = publish_body("pb-m", "pb-m", "1.0.0", "latest");
    assert_eq!(put(&w, &m, "pb-m", body.clone()).status, 201, "use 1");
    let again = put(&w, &m, "pb-m", body.clone());
    assert_eq!(again.status, 409, "use 2 reaches Verdaccio, which has the version: {}", again.text());
    let retry = put(&w, &m, "pb-m", body);
    assert_eq!(retry.status, 409, "a retry of a failed write is free: {}", retry.text());
    assert_eq!(put(&w, &m, "pb-m", publish_body("pb-m", "pb-m", "1.0.1", "latest")).status, 201, "use 3");
    let before = w.storage();
    let r = put(&w, &m, "pb-m", publish_body("pb-m", "pb-m", "1.0.3", "latest"));
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("no uses left"));
    assert_eq!(before, w.storage());
    // Reads of its own package stay allowed, with the credential.
    let r = w.broker("GET", "/pb-m", &[("authorization", &format!("Bearer {m}"))], "");
    assert_eq!(r.status, 200);

    // Lifetime: a phantom asked for 1 second is refused after it.
    let short = w.phantom(&["pb-t"], &["publish"], Some(1));
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let r = put(&w, &short, "pb-t", publish_body("pb-t", "pb-t", "1.0.0", "latest"));
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(r.text().contains("expired"));

    // Tampered, unknown and non-phantom credentials.
    let mut tampered = a.clone().into_bytes();
    tampered[10] = if tampered[10] == b'a' { b'b' } else { b'a' };
    let tampered = String::from_utf8(tampered).unwrap();
    for (what, cred, status) in [
        ("checksum", format!("Bearer {tampered}"), 401),
        ("npm token", "Bearer npm_abcdefghijklmnopqrstuvwxyz0123456789".to_owned(), 401),
        ("basic auth", "Basic cHVibGlzaGVyOnB3".to_owned(), 401),
        ("the real credential", format!("Bearer {}", w.verdaccio.token), 401),
    ] {
        let r = w.broker("GET", "/pb-a", &[("authorization", &cred)], "");
        assert_eq!(r.status, status, "{what}: {}", r.text());
    }
    let r = w.broker("GET", &format!("/pb-a?token={a}"), &[], "");
    assert_eq!(r.status, 400, "a phantom in the query string: {}", r.text());

    // Writes without a phantom say how to authenticate.
    let r = w.broker(
        "PUT",
        "/pb-a",
        &[("content-type", "application/json")],
        publish_body("pb-a", "pb-a", "2.0.0", "latest"),
    );
    assert_eq!(r.status, 401);
    assert!(r.text().contains("phantom login"));

    // Token management never reaches the upstream, phantom or not, through npm or by hand.
    let r = w.broker(
        "POST",
        "/-/npm/v1/tokens",
        &[("authorization", &format!("Bearer {a}")), ("content-type", "application/json")],
        json!({"password": "x"}).to_string(),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    let out = w.npm(w.root(), &["token", "create", "--name", "x", "--password", "x"], None);
    assert!(!ok(&out), "npm token create succeeded: {}", text(&out));
    let lines = w.broker.audit_lines();
    let token_calls: Vec<&Value> =
        lines.iter().filter(|l| l["reason"].as_str().is_some_and(|r| r.contains("token management"))).collect();
    assert!(token_calls.len() >= 2, "{token_calls:?}");
    assert!(token_calls.iter().all(|l| l["status"] == 403 && l.get("upstream_status").is_none()));

    // Every refusal is audited, and no line holds a phantom.
    settle(&w.broker.dir.join("audit/phantom.jsonl"));
    let audit = std::fs::read_to_string(w.broker.dir.join("audit/phantom.jsonl")).unwrap();
    assert!(!audit.contains("phm_"), "a phantom reached the audit log");
    assert!(lines.iter().filter(|l| l["decision"] == "deny").count() >= 12);
    w.assert_canary_contained();
}

#[test]
fn phantom_login_then_npm_dist_tag() {
    let w = World::start(DEFAULT_POLICY);
    // Something to tag: publish 1.0.0 and 1.1.0 through npm's own OIDC flow.
    for v in ["1.0.0", "1.1.0"] {
        let out = w.npm(&w.package("@acme/tags", v), &["publish"], Some(&json!({})));
        assert!(ok(&out), "{}", text(&out));
    }

    // `phantom login` trades an ID token for a phantom and writes it under the broker's key.
    let token_file = w.root().join("id-token");
    let generic_aud = w.npm_audience();
    std::fs::write(&token_file, w.mint(&w.github_claims(&generic_aud), "rsa", json!({}))).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_phantom"))
        .args(["login", "--broker", &w.broker.url, "--packages", "@acme/tags", "--actions", "dist-tag,unpublish"])
        .arg("--npmrc")
        .arg(w.npmrc())
        .arg("--id-token-file")
        .arg(&token_file)
        .arg("--ca-file")
        .arg(&w.certs.ca)
        .output()
        .unwrap();
    assert!(out.status.success(), "phantom login: {}", text(&out));
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains("@acme/tags (dist-tag)"), "unpublish is not granted: {summary}");
    let npmrc = std::fs::read_to_string(w.npmrc()).unwrap();
    let key = format!("//127.0.0.1:{}/:_authToken=phm_", w.broker.port);
    assert!(npmrc.contains(&key), "{npmrc}");
    assert!(!summary.contains("phm_"), "login printed the phantom");

    let out = w.npm(w.root(), &["dist-tag", "add", "@acme/tags@1.0.0", "next"], None);
    assert!(ok(&out), "dist-tag next: {}", text(&out));
    let p = w.upstream_packument("@acme%2ftags").json();
    assert_eq!(p["dist-tags"]["next"], "1.0.0");
    assert_eq!(p["dist-tags"]["latest"], "1.1.0");

    let before = w.storage();
    let out = w.npm(w.root(), &["dist-tag", "add", "@acme/tags@1.0.0", "beta"], None);
    assert!(!ok(&out), "dist-tag beta was allowed: {}", text(&out));
    assert!(text(&out).contains("403"), "{}", text(&out));
    assert_eq!(before, w.storage());
    let p = w.upstream_packument("@acme%2ftags").json();
    assert!(p["dist-tags"].get("beta").is_none());

    // The same ID token cannot be exchanged twice.
    let again = std::process::Command::new(env!("CARGO_BIN_EXE_phantom"))
        .args(["login", "--broker", &w.broker.url, "--packages", "@acme/tags", "--actions", "dist-tag"])
        .arg("--npmrc")
        .arg(w.root().join("other-npmrc"))
        .arg("--id-token-file")
        .arg(&token_file)
        .arg("--ca-file")
        .arg(&w.certs.ca)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(text(&again).contains("401"), "{}", text(&again));
    w.assert_canary_contained();
}

#[test]
fn revocation_freeze_and_listing_through_the_admin_api() {
    let w = World::start(DEFAULT_POLICY);
    let auth = |t: &str| format!("Bearer {t}");

    // Listing shows ids, identity and scope, never the token.
    let p = w.phantom(&["pb-r"], &["publish"], None);
    let listed = w.admin("GET", "/admin/v1/phantoms", Value::Null);
    assert_eq!(listed.status, 200, "{}", listed.text());
    assert!(!listed.text().contains(&p) && !listed.text().contains("phm_"));
    // A rotation body is parsed strictly: two `token` keys are refused, as everywhere else.
    let admin_auth = format!("Bearer {}", w.broker.admin_token);
    let url = format!("{}admin/v1/credentials/verdaccio-publisher/rotate", w.broker.admin_url);
    let twice = r#"{"token":"npm_one_value","token":"npm_another_value"}"#;
    let r =
        w.http.request("POST", &url, &[("authorization", &admin_auth), ("content-type", "application/json")], twice);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(!r.text().contains("npm_one_value") && !r.text().contains("npm_another_value"), "{}", r.text());
    let entry = &listed.json()["phantoms"][0];
    assert_eq!(entry["repository"], "acme/web");
    assert_eq!(entry["packages"], json!(["pb-r"]));
    assert_eq!(entry["uses_left"], 3);
    let id = entry["id"].as_str().unwrap().to_owned();

    // The admin API needs its token.
    let r =
        w.http.request("GET", &format!("{}admin/v1/phantoms", w.broker.admin_url), &[("authorization", &auth(&p))], "");
    assert_eq!(r.status, 401);
    assert_eq!(w.http.request("GET", &format!("{}healthz", w.broker.admin_url), &[], "").status, 200);

    // Revoked by id: refused at once, and nothing reaches Verdaccio.
    let before = w.storage();
    assert_eq!(w.admin("POST", "/admin/v1/revoke", json!({"id": id})).json()["revoked"], 1);
    let r = put(&w, &p, "pb-r", publish_body("pb-r", "pb-r", "1.0.0", "latest"));
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(r.text().contains("revoked"));
    assert_eq!(before, w.storage());

    // Revoked by repository: every phantom of that repository.
    let p1 = w.phantom(&["pb-r"], &["publish"], None);
    let p2 = w.phantom(&["pb-s"], &["publish"], None);
    assert_eq!(w.admin("POST", "/admin/v1/revoke", json!({"repository": "acme/web"})).json()["revoked"], 2);
    for p in [&p1, &p2] {
        assert_eq!(w.broker("GET", "/pb-r", &[("authorization", &auth(p))], "").status, 401);
    }
    assert_eq!(w.admin("POST", "/admin/v1/revoke", json!({"id": "x", "all": true})).status, 400);

    // Freeze: writes refused while frozen, whatever the phantom; thaw restores them.
    let p = w.phantom(&["@acme/frozen"], &["publish"], None);
    let frozen = w.admin("POST", "/admin/v1/freeze", json!({"packages": ["@acme/*"]}));
    assert_eq!(frozen.json()["frozen"], json!(["@acme/*"]));
    let r = put(&w, &p, "@acme/frozen", publish_body("@acme/frozen", "@acme/frozen", "1.0.0", "latest"));
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("frozen"));
    assert_eq!(before, w.storage());
    let dir = w.package("@acme/frozen", "1.0.0");
    let out = w.npm(&dir, &["publish"], Some(&json!({})));
    assert!(!ok(&out), "npm publish during a freeze: {}", text(&out));
    assert_eq!(w.admin("POST", "/admin/v1/thaw", json!({"packages": ["@acme/*"]})).json()["frozen"], json!([]));
    let r = put(&w, &p, "@acme/frozen", publish_body("@acme/frozen", "@acme/frozen", "1.0.0", "latest"));
    assert_eq!(r.status, 201, "{}", r.text());

    let admin_lines: Vec<Value> = w.broker.audit_lines().into_iter().filter(|l| l["event"] == "admin").collect();
    let actions: Vec<&str> = admin_lines.iter().filter_map(|l| l["action"].as_str()).collect();
    for a in ["list", "revoke", "freeze", "thaw"] {
        assert!(actions.contains(&a), "{a} not audited: {actions:?}");
    }
    assert!(admin_lines.iter().any(|l| l["status"] == 401));
    w.assert_canary_contained();
}
