//! The public npm registry as it behaves since late 2026, against its loopback double
//! (tests/node/public-registry.mjs, each behaviour with its source) and the unmodified npm CLI:
//! a bypass-2FA token's direct publish comes back staged and is recorded and notified as staged;
//! a version already staged gets a 409 that says what to do; stage-only tokens and
//! trusted-publishing connections that may only stage are explained; staging a package that
//! does not exist creates it (a public placeholder), which only a grant with `create = true` may
//! do; translated publishes say `npm-command: stage`; a new stage is `validating`, then `staged`.

use crate::support::public_registry::PublicRegistry;
use crate::support::recording::Recording;
use crate::support::*;
use serde_json::{json, Value};
use std::time::Duration;

const POLICY: &str = r#"
# A bypass-2FA token: the registry stages its direct publishes without being asked to.
[[grant]]
name = "bypass"
issuer = "github"
packages = ["@pub/web"]
actions = ["publish"]
credential = "bypass"
notify = ["releases"]
[grant.claims]
repository_id = "123456789"

# Staged publishing of packages the registry already has (no `create`).
[[grant]]
name = "stage"
issuer = "github"
packages = ["@pub/app", "@pub/fresh"]
actions = ["publish", "stage-publish"]
publish = "stage"
credential = "stager"
notify = ["releases"]
[grant.claims]
repository_id = "123456789"

# The same, allowed to create the one package it names.
[[grant]]
name = "stage-create"
issuer = "github"
packages = ["@pub/brand-new"]
actions = ["publish"]
publish = "stage"
create = true
credential = "stager"
notify = ["releases"]
[grant.claims]
repository_id = "123456789"

# Direct publishing with a token that may only stage, and over a trusted-publishing connection
# that may only stage: what the registry says is explained.
[[grant]]
name = "stage-only-token"
issuer = "github"
packages = ["@pub/sto"]
actions = ["publish"]
credential = "stager-undeclared"
[grant.claims]
repository_id = "123456789"

[[grant]]
name = "oidc-connection"
issuer = "github"
packages = ["@pub/oidc"]
actions = ["publish"]
credential = "oidc"
[grant.claims]
repository_id = "123456789"
"#;

struct Setup {
    w: World,
    double: PublicRegistry,
    hooks: Recording,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let certs = dev_certs(&dir.path().join("certs"));
    let hooks = Recording::start(&certs.cert, &certs.key);
    let packages = json!({"@pub/web": ["0.9.0"], "@pub/app": ["0.9.0"], "@pub/sto": ["0.9.0"], "@pub/oidc": ["0.9.0"]});
    let double = PublicRegistry::start(&dir.path().join("double"), &certs, packages, 1500);
    let secrets = dir.path().join("double-secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    for (name, kind) in [("bypass", "bypass-2fa"), ("stager", "stage-only"), ("oidc", "oidc-stage-only")] {
        std::fs::write(secrets.join(name), double.token(kind)).unwrap();
    }
    let extra = format!(
        r#"
[upstream.public]
url = "{url}"
scopes = ["@pub"]
ca_file = "{{ca}}"
stages_only = true

[credential.bypass]
upstream = "public"
source = {{ file = "{secrets}/bypass" }}

[credential.stager]
upstream = "public"
source = {{ file = "{secrets}/stager" }}
publish = "stage-only"

[credential.oidc]
upstream = "public"
source = {{ file = "{secrets}/oidc" }}

# The stage-only token again, as an admin who did not know it may only stage would declare it.
[credential.stager-undeclared]
upstream = "public"
source = {{ file = "{secrets}/stager" }}

[notify.releases]
webhook = "{hooks}hooks/releases"
ca_file = "{{ca}}"
"#,
        url = double.url,
        secrets = secrets.display(),
        hooks = hooks.url(),
    );
    let w = World::start_with(Options { policy: POLICY.into(), extra, certs: Some(certs), ..Options::default() });
    std::mem::forget(dir); // the certificates and secrets must outlive the world; the OS cleans /tmp
    Setup { w, double, hooks }
}

/// The request's outcome line for a publish of `package@version`.
fn publish_line(w: &World, package: &str, version: &str) -> Value {
    w.broker
        .audit_lines()
        .into_iter()
        .rev()
        .find(|l| {
            l["event"] == "request"
                && l["package"] == package
                && l["version"] == version
                && l["decision"] != "forwarding"
        })
        .unwrap_or_else(|| panic!("no audit line for {package}@{version}"))
}

fn stages_of(state: &Value, package: &str) -> Vec<Value> {
    state["stages"].as_array().unwrap().iter().filter(|s| s["packageName"] == package).cloned().collect()
}

#[test]
fn the_public_registry_since_late_2026() {
    let Setup { w, double, hooks } = setup();
    let npm_publish = |package: &str, version: &str, args: &[&str]| {
        let dir = w.package(package, version);
        w.npm(&dir, args, Some(&json!({})))
    };

    // Silent staging: a plain `npm publish` under a direct grant, which the registry stages.
    let out = npm_publish("@pub/web", "1.0.0", &["publish"]);
    assert!(ok(&out), "npm publish: {}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("@pub/web@1.0.0 is staged, not published (the registry staged the direct publish)"),
        "{said}"
    );
    assert!(said.contains("status validating") && said.contains("still validating"), "{said}");
    let state = double.state(&w.http);
    let staged = stages_of(&state, "@pub/web");
    assert_eq!(staged.len(), 1, "{state}");
    let id = staged[0]["id"].as_str().unwrap().to_owned();
    assert!(state["packages"]["@pub/web"]["versions"].get("1.0.0").is_none(), "a staged version is live");
    let line = publish_line(&w, "@pub/web", "1.0.0");
    assert_eq!((line["action"].as_str(), line["decision"].as_str()), (Some("publish"), Some("allow")), "{line}");
    assert_eq!((line["staged"].as_bool(), line["stage_id"].as_str()), (Some(true), Some(id.as_str())), "{line}");
    assert_eq!(line["stage_status"], "validating", "{line}");
    assert!(line["reason"].as_str().unwrap().contains("silent staging"), "{line}");
    wait_until("the notification", Duration::from_secs(20), || {
        hooks.writes().iter().any(|s| s.target == "/hooks/releases")
    });
    let note: Value = serde_json::from_slice(&hooks.writes()[0].body).unwrap();
    assert_eq!(
        (note["package"].as_str(), note["stage_id"].as_str(), note["status"].as_str(), note["silent"].as_bool()),
        (Some("@pub/web"), Some(id.as_str()), Some("validating"), Some(true)),
        "{note}"
    );
    assert!(note["approve_hint"].as_str().unwrap().contains("still validating"), "{note}");

    // The same version again: the registry has it staged (409), and npm says what to do.
    let out = npm_publish("@pub/web", "1.0.0", &["publish"]);
    assert!(!ok(&out), "a staged version was published over: {}", text(&out));
    assert!(text(&out).contains("already staged upstream"), "{}", text(&out));
    assert_eq!(publish_line(&w, "@pub/web", "1.0.0")["status"], 409);
    assert_eq!(stages_of(&double.state(&w.http), "@pub/web").len(), 1);

    // Validating, then staged: the broker reads the stage with the grant's credential.
    wait_until("the stage's checks", Duration::from_secs(10), || {
        stages_of(&double.state(&w.http), "@pub/web")[0]["status"] == "staged"
    });
    let auth = format!("Bearer {}", w.phantom(&["@pub/web"], &["publish"], None));
    let view = w.broker("GET", &format!("/-/stage/{id}"), &[("authorization", &auth)], "");
    assert_eq!((view.status, view.json()["status"].as_str()), (200, Some("staged")), "{}", view.text());

    // A direct publish with a token that may only stage, and over a trusted-publishing
    // connection that may only stage: refused upstream, explained by the broker.
    for package in ["@pub/sto", "@pub/oidc"] {
        let out = npm_publish(package, "1.0.0", &["publish"]);
        assert!(!ok(&out), "{package}: {}", text(&out));
        assert!(text(&out).contains("publish = \"stage\""), "{package}: {}", text(&out));
        let line = publish_line(&w, package, "1.0.0");
        assert_eq!(line["status"], 403, "{line}");
        assert!(line["reason"].as_str().unwrap().contains("E_STAGE_REQUIRED"), "{line}");
    }

    // Staging a package the registry does not have would create it: not under a grant without
    // `create`, which reads first and sends nothing.
    let out = npm_publish("@pub/fresh", "1.0.0", &["publish"]);
    assert!(!ok(&out), "a new package was staged without create: {}", text(&out));
    assert!(text(&out).contains("may not create packages"), "{}", text(&out));
    let out = npm_publish("@pub/fresh", "1.0.1", &["stage", "publish"]);
    assert!(!ok(&out), "a new package was staged without create: {}", text(&out));
    let state = double.state(&w.http);
    assert!(state["packages"].get("@pub/fresh").is_none() && stages_of(&state, "@pub/fresh").is_empty(), "{state}");
    // (A streamed publish's request starts before the verdict; the gate holds back its end.)
    let writes = |path: &str| -> usize {
        let requests = state["requests"].as_array().unwrap();
        requests.iter().filter(|r| r["path"] == path && r["method"] != "GET" && r["complete"] == true).count()
    };
    assert_eq!(writes("/@pub%2ffresh") + writes("/-/stage/package/@pub%2ffresh"), 0, "{state}");
    let line = publish_line(&w, "@pub/fresh", "1.0.0");
    assert_eq!((line["status"].as_u64(), line["new_package"].as_bool()), (Some(403), Some(true)), "{line}");
    assert!(line["reason"].as_str().unwrap().contains("package creation not allowed by grant `stage`"), "{line}");

    // With `create = true` it may: the registry creates the package with its placeholder, and the
    // translated publish says `npm-command: stage`, as `npm stage publish` does.
    let out = npm_publish("@pub/brand-new", "1.0.0", &["publish"]);
    assert!(ok(&out), "npm publish: {}", text(&out));
    let state = double.state(&w.http);
    assert_eq!(stages_of(&state, "@pub/brand-new").len(), 1, "{state}");
    let placeholder = &state["packages"]["@pub/brand-new"];
    assert_eq!(placeholder["versions"]["0.0.0-stage"]["stub"], true, "{placeholder}");
    let sent: Vec<&Value> = state["requests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["path"] == "/-/stage/package/@pub%2fbrand-new" && r["complete"] == true)
        .collect();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!((sent[0]["method"].as_str(), sent[0]["npm_command"].as_str()), (Some("POST"), Some("stage")));
    // A package that exists (a placeholder counts) is no creation: a grant without `create`
    // stages it.
    let out = npm_publish("@pub/app", "1.0.0", &["stage", "publish"]);
    assert!(ok(&out), "npm stage publish: {}", text(&out));
    assert_eq!(stages_of(&double.state(&w.http), "@pub/app").len(), 1);

    let tokens: Vec<&str> = double.tokens.iter().map(|(_, t)| t.as_str()).collect();
    w.assert_secrets_contained(&tokens);
}
