//! npm's own trusted-publishing flow through the broker: the unmodified npm 11 CLI, in a job
//! whose only configuration is the registry URL and a CA, publishes with a credential it never
//! sees; identities that no grant admits change nothing upstream.

use crate::support::*;
use serde_json::json;

fn escaped(name: &str) -> String {
    name.replace('/', "%2f")
}

#[test]
fn npm_publishes_views_and_installs_through_the_broker() {
    let w = World::start(DEFAULT_POLICY);
    let npmrc = std::fs::read_to_string(w.npmrc()).unwrap();
    assert!(!npmrc.contains("_authToken") && !npmrc.contains("_auth"), "the job must hold no token");

    for name in ["pb-unscoped", "@acme/web"] {
        let dir = w.package(name, "1.0.0");
        let out = w.npm(&dir, &["publish"], Some(&json!({})));
        assert!(ok(&out), "npm publish {name}: {}", text(&out));
        let p = w.upstream_packument(&escaped(name));
        assert_eq!(p.status, 200, "{name} is not in Verdaccio");
        assert_eq!(p.json()["dist-tags"]["latest"], "1.0.0");
    }

    let out = w.npm(w.root(), &["view", "@acme/web", "version"], None);
    assert!(ok(&out), "npm view: {}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1.0.0");

    let app = w.root().join("app");
    std::fs::create_dir_all(&app).unwrap();
    let manifest = json!({"name": "app", "version": "0.0.0", "private": true,
        "dependencies": {"@acme/web": "1.0.0", "pb-unscoped": "^1.0.0"}});
    std::fs::write(app.join("package.json"), manifest.to_string()).unwrap();
    // An empty cache, so the tarballs come through the broker rather than from publish's cache.
    std::fs::remove_dir_all(w.root().join("npm-cache")).unwrap();
    let out = w.npm(&app, &["install"], None);
    assert!(ok(&out), "npm install: {}", text(&out));
    let installed = std::fs::read_to_string(app.join("node_modules/@acme/web/index.js")).unwrap();
    assert!(installed.contains("@acme/web@1.0.0"));
    assert!(app.join("node_modules/pb-unscoped/package.json").exists());

    // The audit log tells the story: two exchanges and two publishes, each under the grant.
    let lines = w.broker.audit_lines();
    let exchanges: Vec<_> = lines.iter().filter(|l| l["event"] == "exchange").collect();
    assert_eq!(exchanges.len(), 2);
    for e in &exchanges {
        assert_eq!(e["decision"], "allow");
        assert_eq!(e["grant"], "acme-release");
        assert_eq!(e["identity"]["repository"], "acme/web");
        assert!(e["token_id"].as_str().is_some_and(|t| t.len() == 24));
    }
    // Each write is on record before it is forwarded (write-ahead), then with its outcome.
    let intents: Vec<_> = lines.iter().filter(|l| l["decision"] == "forwarding").collect();
    assert_eq!(intents.len(), 2, "{intents:?}");
    assert!(intents.iter().all(|l| l["action"] == "publish" && l["grant"] == "acme-release"));
    let publishes: Vec<_> = lines
        .iter()
        .filter(|l| l["action"] == "publish" && l["event"] == "request" && l["decision"] != "forwarding")
        .collect();
    assert_eq!(publishes.len(), 2, "{publishes:?}");
    for p in &publishes {
        assert_eq!(p["decision"], "allow");
        assert_eq!(p["upstream_status"], 201);
        assert_eq!(p["version"], "1.0.0");
    }
    // Anonymous reads went through too (npm install ran without any token).
    for tarball in ["/@acme/web/-/web-1.0.0.tgz", "/pb-unscoped/-/pb-unscoped-1.0.0.tgz"] {
        let fetched = lines.iter().any(|l| l["decision"] == "anonymous" && l["path"] == tarball && l["status"] == 200);
        assert!(fetched, "{tarball} was not fetched through the broker");
    }

    settle(&w.broker.dir.join("audit/phantom.jsonl"));
    let verify = std::process::Command::new(env!("CARGO_BIN_EXE_phantom"))
        .args(["audit", "verify"])
        .arg(w.broker.dir.join("audit/phantom.jsonl"))
        .output()
        .unwrap();
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stderr));
    w.assert_canary_contained();
}

#[test]
fn identities_without_a_grant_change_nothing_upstream() {
    let w = World::start(DEFAULT_POLICY);
    let before = w.storage();

    for (what, claims) in [
        ("another repository", json!({"repository_id": "987654321", "repository": "evil/web"})),
        ("another branch", json!({"ref": "refs/heads/feature", "sub": "repo:acme/web:ref:refs/heads/feature"})),
    ] {
        let dir = w.package("pb-refused", "1.0.0");
        let out = w.npm(&dir, &["publish"], Some(&claims));
        assert!(!ok(&out), "{what}: npm publish succeeded: {}", text(&out));
    }
    let lines = w.broker.audit_lines();
    let denied: Vec<_> = lines.iter().filter(|l| l["event"] == "exchange").collect();
    assert_eq!(denied.len(), 2, "{lines:?}");
    for l in denied {
        assert_eq!(l["status"], 403);
        assert_eq!(l["decision"], "deny");
        assert!(l["reason"].as_str().unwrap().contains("no grant"), "{l}");
    }

    // The same exchange, by hand, for tokens that must never verify.
    let exchange = |token: &str| {
        w.broker(
            "POST",
            "/-/npm/v1/oidc/token/exchange/package/pb-refused",
            &[("authorization", &format!("Bearer {token}"))],
            "",
        )
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let cases = [
        ("no grant", w.id_token(json!({"repository_owner_id": "1"})), 403),
        ("expired", w.id_token(json!({"iat": now - 900, "nbf": now - 900, "exp": now - 300})), 401),
        ("wrong audience", w.id_token(json!({"aud": "npm:registry.example.com"})), 401),
        ("unconfigured issuer", w.id_token(json!({"iss": "https://127.0.0.1:9/other"})), 401),
        (
            "ES256 from the same issuer, wrong audience",
            {
                let mut c = w.github_claims("npm:other");
                c["jti"] = "es-1".into();
                w.mint(&c, "ec", json!({}))
            },
            401,
        ),
    ];
    for (what, token, status) in &cases {
        let r = exchange(token);
        assert_eq!(r.status, *status, "{what}: {}", r.text());
        let msg = r.json()["message"].as_str().unwrap_or_default().to_owned();
        assert!(!msg.is_empty() && !msg.contains(token.as_str()), "{what}: {msg}");
    }
    let good = w.id_token(json!({}));
    assert_eq!(exchange(&good).status, 201);
    let replay = exchange(&good);
    assert_eq!(replay.status, 401, "replayed: {}", replay.text());
    assert!(replay.text().contains("already been exchanged"));

    assert_eq!(before, w.storage(), "Verdaccio's storage changed");
    // No publish happened, so check containment by hand.
    let canary = w.verdaccio.token.as_bytes();
    assert!(memchr::memmem::find(&w.http.seen.lock().unwrap(), canary).is_none());
    settle(&w.broker.dir.join("audit/phantom.jsonl"));
    let audit = std::fs::read(w.broker.dir.join("audit/phantom.jsonl")).unwrap();
    assert!(memchr::memmem::find(&audit, canary).is_none());
    let log = std::fs::read(w.broker.dir.join("broker.log")).unwrap();
    assert!(memchr::memmem::find(&log, canary).is_none());
    for (_, token, _) in &cases {
        assert!(memchr::memmem::find(&audit, token.as_bytes()).is_none(), "an ID token reached the audit log");
        assert!(memchr::memmem::find(&log, token.as_bytes()).is_none(), "an ID token reached the log");
    }
}

/// The composite GitHub Action (action.yml, deploy/action/login.sh) run as GitHub runs its step:
/// with the job's token endpoint in the environment it writes the registry and a phantom into
/// the job's .npmrc, and the unmodified npm CLI publishes with them; without `id-token: write`
/// it stops with an error annotation.
#[test]
fn the_github_action_logs_the_job_in() {
    use base64::Engine;
    let w = World::start(crate::support::DEFAULT_POLICY);
    let npmrc = w.root().join("job-npmrc");
    let step = |with_token: bool| {
        let mut cmd = std::process::Command::new("bash");
        cmd.arg(crate::support::repo().join("deploy/action/login.sh"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .env("HOME", w.root().join("home"))
            .env("GITHUB_ACTIONS", "true")
            .env("PHANTOM_BIN", env!("CARGO_BIN_EXE_phantom"))
            .env("PHANTOM_BROKER", &w.broker.url)
            .env("PHANTOM_PACKAGES", "pb-action")
            .env("PHANTOM_ACTIONS", "publish")
            .env("PHANTOM_NPMRC", &npmrc)
            .env("PHANTOM_CA_FILE", &w.certs.ca)
            .env("PHANTOM_SET_REGISTRY", "true");
        if with_token {
            let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("{}");
            cmd.env("ACTIONS_ID_TOKEN_REQUEST_URL", format!("{}/token?claims={claims}", w.issuer.url))
                .env("ACTIONS_ID_TOKEN_REQUEST_TOKEN", &w.issuer.request_token);
        }
        let out = cmd.output().unwrap();
        w.record_output(&out);
        out
    };
    let out = step(false);
    assert!(
        !out.status.success() && text(&out).contains("::error::") && text(&out).contains("id-token: write"),
        "{}",
        text(&out)
    );
    let out = step(true);
    assert!(out.status.success(), "{}", text(&out));
    let written = std::fs::read_to_string(&npmrc).unwrap();
    assert!(written.starts_with(&format!("registry={}\n", w.broker.url)), "{written}");
    assert!(written.contains(":_authToken=phm_") && !text(&out).contains("phm_"), "{written}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&npmrc).unwrap().permissions().mode() & 0o077, 0, "the .npmrc is readable by others");
    let pkg = w.package("pb-action", "1.0.0");
    let out = w.npm_with(&npmrc, &pkg, &["publish"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(w.upstream_packument("pb-action").status, 200);
    w.assert_canary_contained();
}
