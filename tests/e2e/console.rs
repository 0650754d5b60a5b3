//! The admin console in a real browser: Debian's headless Chromium, driven over WebDriver,
//! against a running broker, Verdaccio and the OpenID Connect provider (node-oidc-provider).
//! A viewer sees a held publish but has no button to approve it, and a forged approval is
//! refused; an approver signs in at the provider and approves it, and Verdaccio then has the
//! version; the admin token revokes a phantom (its next request is refused), freezes and thaws;
//! the credentials page shows a credential due for rotation; refusals link to what each grant
//! says of them. A screenshot of every page goes to `target/console-screenshots/`.
//!
//! And the console's defences, over plain HTTPS: a post without the session's CSRF token, a
//! post from another origin, an expired session, the admin token on the registry face.

use crate::support::browser::Browser;
use crate::support::people::Idp;
use crate::support::*;
use serde_json::{json, Value};
use std::time::Duration;

const POLICY: &str = r#"
[approvers.release-managers]
issuer = "corp"
claims = { groups = "release-managers" }
required = 1

[[grant]]
name = "held-ci"
issuer = "github"
packages = ["@held/app"]
actions = ["publish"]
create = true
credential = "verdaccio-publisher"
hold = "release-managers"
[grant.claims]
repository_id = "123456789"
"#;

const CONSOLE: &str = r#"
[console]
issuer = "corp"
[console.roles]
approver = { groups = "release-managers" }
viewer = { groups = "web-team" }
"#;

fn screenshots() -> std::path::PathBuf {
    let dir = repo().join("target/console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Signs `login` in at the provider from the console's sign-in page; returns on the overview.
fn sign_in_as(b: &Browser, origin: &str, login: &str) {
    b.goto(origin);
    b.find("#sign-in-oidc").expect("the sign-in page offers the provider").click();
    // The provider's own pages: its login form, then its consent. Each step waits for the page
    // it leads to.
    let start = std::time::Instant::now();
    let mut at = String::new();
    while !b.url().starts_with(origin) {
        assert!(start.elapsed() < Duration::from_secs(30), "the sign-in did not come back: {}", b.source());
        let url = b.url();
        if url == at {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        std::thread::sleep(Duration::from_millis(200));
        if let Some(field) = b.find("input[name=login]") {
            field.send_keys(login);
            b.find("input[name=password]").unwrap().send_keys("any");
            b.find("button[type=submit]").unwrap().click();
            at = url;
        } else if let Some(button) = b.find("button[type=submit]") {
            button.click();
            at = url;
        }
    }
    // The callback's page moves on to the overview by itself.
    while b.find(".who").is_none() {
        assert!(start.elapsed() < Duration::from_secs(30), "no overview after the sign-in: {}", b.source());
        std::thread::sleep(Duration::from_millis(100));
    }
    let who = b.find(".who").map(|e| e.text()).unwrap_or_default();
    assert!(who.contains(&format!("{login}@people.test")), "not signed in as {login}: {}", b.source());
}

/// Waits (up to 10 s) until the page's URL contains `part`: a form's answer has arrived.
fn arrives(b: &Browser, part: &str) {
    let start = std::time::Instant::now();
    while !b.url().contains(part) {
        assert!(start.elapsed() < Duration::from_secs(10), "no `{part}` in {}: {}", b.url(), b.source());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The session cookie the browser holds for the console.
fn session_cookie(b: &Browser) -> String {
    let cookies = b.cookies();
    let c = cookies.iter().find(|c| c["name"] == "__Host-phantom-console").expect("a session cookie");
    assert_eq!((c["secure"].as_bool(), c["httpOnly"].as_bool()), (Some(true), Some(true)), "{c}");
    assert_eq!(c["sameSite"], "Strict", "{c}");
    format!("__Host-phantom-console={}", c["value"].as_str().unwrap())
}

/// The CSRF token in the page's forms.
fn csrf(b: &Browser) -> String {
    b.find("input[name=csrf]").expect("a form with a CSRF token").attr("value").unwrap()
}

#[test]
fn the_console_in_a_browser() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = dev_certs(&tmp.path().join("certs"));
    let idp = Idp::start(&tmp.path().join("idp"), &certs);
    let now = phantom_broker::support::clock::unix_now();
    let created = phantom_broker::support::clock::date(now - 85 * 86_400);
    let w = World::start_with(Options {
        policy: format!("{DEFAULT_POLICY}\n{POLICY}"),
        credential: format!("class = \"B\"\ncreated = \"{created}\""),
        extra: format!("{}\n{CONSOLE}", idp.issuer_config()),
        certs: Some(certs),
        ..Options::default()
    });
    let origin = w.broker.admin_url.trim_end_matches('/').to_owned();
    let shots = screenshots();

    // A CI job's publish is held for a release manager.
    let phantom = w.phantom(&["@held/app"], &["publish"], None);
    let auth = format!("Bearer {phantom}");
    let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
    let held = w.broker("PUT", "/@held%2fapp", &headers, publish_body("@held/app", "@held/app", "1.0.0", "latest"));
    assert_eq!(held.status, 202, "{}", held.text());
    let holds = w.admin("GET", "/admin/v1/holds", Value::Null).json();
    let id = holds["holds"][0]["id"].as_str().unwrap().to_owned();

    // A viewer sees it, without a button to approve it; a forged approval is refused.
    let viewer = Browser::start(&shots);
    sign_in_as(&viewer, &origin, "alice");
    assert!(viewer.source().contains("viewer"), "{}", viewer.source());
    viewer.screenshot("overview");
    viewer.goto(&format!("{origin}/holds"));
    assert!(viewer.find(&format!("#hold-{id}")).is_some(), "the held write is not listed: {}", viewer.source());
    assert!(viewer.find(&format!("#hold-{id} button.approve")).is_none(), "a viewer has an approve button");
    viewer.screenshot("holds-viewer");
    let forged = w.http.request(
        "POST",
        &format!("{origin}/holds/{id}/approve"),
        &[
            ("cookie", &session_cookie(&viewer)),
            ("origin", &origin),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        format!("csrf={}", csrf(&viewer)),
    );
    assert_eq!(forged.status, 403, "{}", forged.text());
    assert!(forged.text().contains("approver role"), "{}", forged.text());
    assert_eq!(w.upstream_packument("@held%2fapp").status, 404, "a viewer's forged approval published");
    // Revoking a person's subject signs them out of the console as well.
    let alice_cookie = session_cookie(&viewer);
    let revoked = std::process::Command::new(env!("CARGO_BIN_EXE_phantom"))
        .args(["revoke", "--subject", "alice", "--config"])
        .arg(&w.broker.config)
        .arg("--ca-file")
        .arg(&w.certs.ca)
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&revoked.stdout);
    assert!(revoked.status.success() && printed.contains("ended their console sessions"), "{printed}");
    viewer.goto(&format!("{origin}/holds"));
    arrives(&viewer, "/sign-in");
    let after = w.http.request("GET", &format!("{origin}/holds"), &[("cookie", &alice_cookie)], Vec::new());
    assert_eq!(after.status, 303, "a revoked subject's session still opens the console: {}", after.text());
    drop(viewer);

    // An approver approves it in the console: Verdaccio then has it.
    let approver = Browser::start(&shots);
    sign_in_as(&approver, &origin, "bob");
    approver.goto(&format!("{origin}/holds"));
    approver.screenshot("holds-approver");
    approver.find(&format!("#hold-{id} button.approve")).expect("an approver's button").click();
    arrives(&approver, "ok=forwarded");
    assert!(approver.source().contains("the write went to the registry"), "{}", approver.source());
    approver.screenshot("holds-approved");
    let packument = w.upstream_packument("@held%2fapp");
    assert_eq!(packument.status, 200, "Verdaccio does not have the approved version");
    assert!(packument.json()["versions"]["1.0.0"].is_object());
    let approved =
        w.broker.audit_lines().into_iter().find(|l| l["event"] == "hold" && l["hold"]["step"] == "forwarded");
    let approved = approved.expect("the forward is on record");
    assert_eq!(approved["hold"]["approved_by"][0]["identity"]["sub"], "bob", "{approved}");
    approver.find("form.who button").unwrap().click();
    arrives(&approver, "/sign-in");
    drop(approver);

    // The admin token: revoke a phantom, freeze and thaw, the credentials and the refusals.
    let admin = Browser::start(&shots);
    admin.goto(&format!("{origin}/sign-in"));
    admin.find("#token").unwrap().send_keys(&w.broker.admin_token);
    admin.find("form[action='/sign-in/token'] button").unwrap().click();
    assert!(admin.source().contains("admin token"), "{}", admin.source());
    let doomed = w.phantom(&["pb-console"], &["publish"], None);
    let listed = w.admin("GET", "/admin/v1/phantoms", Value::Null).json();
    let doomed_id =
        listed["phantoms"].as_array().unwrap().iter().find(|p| p["packages"] == json!(["pb-console"])).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
    admin.goto(&format!("{origin}/phantoms"));
    admin.screenshot("phantoms");
    admin.find(&format!("#phantom-{doomed_id} button")).expect("a revoke button").click();
    arrives(&admin, "ok=revoked");
    let publish = |token: &str, name: &str, version: &str| {
        let auth = format!("Bearer {token}");
        let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
        w.broker("PUT", &format!("/{name}"), &headers, publish_body(name, name, version, "latest"))
    };
    assert_eq!(publish(&doomed, "pb-console", "1.0.0").status, 401, "a revoked phantom still works");

    admin.goto(&format!("{origin}/freezes"));
    assert!(admin.source().contains("Nothing is frozen"), "{}", admin.source());
    admin.find("#pattern").unwrap().send_keys("pb-frozen");
    admin.find("form[action='/freezes'] button").unwrap().click();
    arrives(&admin, "ok=frozen");
    admin.screenshot("freezes");
    let writer = w.phantom(&["pb-frozen"], &["publish"], None);
    let frozen = publish(&writer, "pb-frozen", "1.0.0");
    assert_eq!(frozen.status, 403, "{}", frozen.text());
    admin.find("form[action='/freezes/thaw'] button").expect("a thaw button").click();
    arrives(&admin, "ok=thawed");
    assert_eq!(publish(&writer, "pb-frozen", "1.0.0").status, 201);

    admin.goto(&format!("{origin}/credentials"));
    let due = admin.find("#credential-verdaccio-publisher .badge").expect("a rotation badge");
    assert_eq!(due.text(), "due", "{}", admin.source());
    admin.screenshot("credentials");

    admin.goto(&format!("{origin}/refusals"));
    let request_id = frozen.headers["x-request-id"].to_str().unwrap().to_owned();
    admin.screenshot("refusals");
    admin.find(&format!("a[href='/refusals/{request_id}']")).expect("the frozen write's refusal").click();
    assert!(admin.source().contains("allows it now"), "{}", admin.source());
    admin.screenshot("explain");
    for page in ["staged", "policy", "holds"] {
        admin.goto(&format!("{origin}/{page}"));
        assert!(admin.find("main h1").is_some(), "{page}: {}", admin.source());
        admin.screenshot(page);
    }
    // The admin token cannot approve: an approval is a person's.
    assert!(admin.find("button.approve").is_none());
    drop(admin);

    for shot in ["overview", "holds-viewer", "holds-approved", "phantoms", "freezes", "credentials", "refusals"] {
        let png = std::fs::read(shots.join(format!("{shot}.png"))).unwrap();
        assert!(png.len() > 5_000 && png.starts_with(b"\x89PNG"), "{shot}.png is not a screenshot");
    }
    // (The phantoms came to this test in exchange answers: they are not canaries here.)
    let mut canaries: Vec<String> = idp.issued();
    assert!(canaries.len() >= 2, "two people signed in: {canaries:?}");
    canaries.extend([idp.console_secret(), w.broker.admin_token.clone()]);
    let canaries: Vec<&str> = canaries.iter().map(String::as_str).collect();
    w.assert_secrets_contained(&canaries);
}

/// The console's defences, without a browser: every refused post changes nothing.
#[test]
fn the_console_refuses_forged_and_expired_sessions() {
    let w = World::start_with(Options {
        policy: DEFAULT_POLICY.into(),
        extra: "[console]\nsession = \"10s\"\n".into(),
        ..Options::default()
    });
    let origin = w.broker.admin_url.trim_end_matches('/').to_owned();
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let post = |path: &str, headers: &[(&str, &str)], body: String| {
        let mut all = form.to_vec();
        all.extend_from_slice(headers);
        w.http.request("POST", &format!("{origin}{path}"), &all, body)
    };
    let token_form = format!("token={}", w.broker.admin_token);

    // Signing in needs the console's own origin, and the admin token.
    assert_eq!(post("/sign-in/token", &[], token_form.clone()).status, 403, "a sign-in without an Origin");
    assert_eq!(post("/sign-in/token", &[("origin", &origin)], "token=wrong".into()).status, 401);
    let signed_in = post("/sign-in/token", &[("origin", &origin)], token_form.clone());
    assert_eq!(signed_in.status, 303, "{}", signed_in.text());
    let set = signed_in.headers["set-cookie"].to_str().unwrap().to_owned();
    assert!(set.contains("Secure; HttpOnly; SameSite=Strict") && set.starts_with("__Host-phantom-console="), "{set}");
    let cookie = set.split(';').next().unwrap().to_owned();
    let page = w.http.request("GET", &format!("{origin}/freezes"), &[("cookie", &cookie)], "");
    assert_eq!(page.status, 200);
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    let html = page.text();
    let at = html.find("name=\"csrf\" value=\"").unwrap() + "name=\"csrf\" value=\"".len();
    let csrf = html[at..at + 43].to_owned();

    let freeze =
        |headers: &[(&str, &str)], token: &str| post("/freezes", headers, format!("csrf={token}&pattern=pb-x"));
    // No CSRF token, or another: refused.
    assert_eq!(freeze(&[("cookie", &cookie), ("origin", &origin)], "").status, 403);
    assert_eq!(freeze(&[("cookie", &cookie), ("origin", &origin)], &"A".repeat(43)).status, 403);
    // The session cookie, sent from another origin: refused, whatever the token.
    assert_eq!(freeze(&[("cookie", &cookie), ("origin", "https://evil.example")], &csrf).status, 403);
    let cross = [("cookie", cookie.as_str()), ("origin", origin.as_str()), ("sec-fetch-site", "cross-site")];
    assert_eq!(freeze(&cross, &csrf).status, 403);
    assert!(w.admin("GET", "/admin/v1/freeze", Value::Null).json()["frozen"].as_array().unwrap().is_empty());
    // The same post from the console's pages works.
    let done = freeze(&[("cookie", &cookie), ("origin", &origin)], &csrf);
    assert_eq!(done.status, 303, "{}", done.text());
    assert_eq!(w.admin("GET", "/admin/v1/freeze", Value::Null).json()["frozen"], json!(["pb-x"]));
    let refused =
        w.broker.audit_lines().into_iter().filter(|l| l["via"] == "console" && l["decision"] == "deny").count();
    assert!(refused >= 6, "every refused post is on record ({refused})");

    // The admin token is nothing on the registry face.
    let auth = format!("Bearer {}", w.broker.admin_token);
    let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
    let r = w.broker("PUT", "/pb-x", &headers, publish_body("pb-x", "pb-x", "1.0.0", "latest"));
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(w.upstream_packument("pb-x").status, 404);

    // Past its 10 seconds the session is gone: pages send the browser to sign in, posts are refused.
    std::thread::sleep(Duration::from_secs(11));
    let page = w.http.request("GET", &format!("{origin}/freezes"), &[("cookie", &cookie)], "");
    assert_eq!((page.status, page.headers["location"].to_str().unwrap()), (303, "/sign-in"));
    let late = post("/freezes/thaw", &[("cookie", &cookie), ("origin", &origin)], format!("csrf={csrf}&pattern=pb-x"));
    assert_eq!(late.status, 401, "{}", late.text());
    assert_eq!(w.admin("GET", "/admin/v1/freeze", Value::Null).json()["frozen"], json!(["pb-x"]));

    // Guessing the admin token is slowed down: ten tries a minute, then 429.
    let tries: Vec<u16> =
        (0..10).map(|_| post("/sign-in/token", &[("origin", &origin)], "token=guess".into()).status).collect();
    assert_eq!((tries[0], tries[9]), (401, 429), "{tries:?}");
    w.assert_secrets_contained(&[&w.broker.admin_token]);
}
