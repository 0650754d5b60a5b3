//! The npm actions beyond publish, through `phantom login` and the real npm CLI: deprecate,
//! unpublish of a version and of a package, and the body tricks each could hide.

use crate::support::*;
use serde_json::{json, Value};

const POLICY: &str = r#"
[[grant]]
name = "acme-maintain"
issuer = "github"
packages = ["@acme/*"]
actions = ["publish", "deprecate", "unpublish", "dist-tag"]
create = true
credential = "verdaccio-publisher"
ttl = "10m"
[grant.claims]
repository_id = "123456789"
ref = "refs/heads/main"
"#;

fn phantom_in_npmrc(w: &World) -> String {
    let npmrc = std::fs::read_to_string(w.npmrc()).unwrap();
    npmrc.lines().find_map(|l| l.split_once(":_authToken=").map(|(_, t)| t.to_owned())).unwrap()
}

#[test]
fn deprecate_and_unpublish_with_the_npm_cli() {
    let w = World::start(POLICY);
    w.login("@acme/tool", "publish,deprecate,unpublish");
    for v in ["1.0.0", "1.1.0", "2.0.0"] {
        let out = w.npm(&w.package("@acme/tool", v), &["publish"], None);
        assert!(ok(&out), "publish {v}: {}", text(&out));
    }

    let out = w.npm(w.root(), &["deprecate", "@acme/tool@1.0.0", "use 2.x"], None);
    assert!(ok(&out), "npm deprecate: {}", text(&out));
    let p = w.upstream_packument("@acme%2ftool").json();
    assert_eq!(p["versions"]["1.0.0"]["deprecated"], "use 2.x");
    assert!(p["versions"]["1.1.0"].get("deprecated").is_none());

    let out = w.npm(w.root(), &["unpublish", "@acme/tool@2.0.0"], None);
    assert!(ok(&out), "npm unpublish a version: {}", text(&out));
    let p = w.upstream_packument("@acme%2ftool").json();
    assert!(p["versions"].get("2.0.0").is_none());
    assert_eq!(p["dist-tags"]["latest"], "1.1.0", "npm moves latest to the highest remaining version");

    let out = w.npm(w.root(), &["unpublish", "@acme/tool", "--force"], None);
    assert!(ok(&out), "npm unpublish the package: {}", text(&out));
    assert_eq!(w.upstream_packument("@acme%2ftool").status, 404);
    w.assert_canary_contained();
}

#[test]
fn writes_cannot_smuggle_more_than_their_action() {
    let w = World::start(POLICY);
    w.login("@acme/lib", "publish");
    for v in ["1.0.0", "2.0.0"] {
        let out = w.npm(&w.package("@acme/lib", v), &["publish"], None);
        assert!(ok(&out), "publish {v}: {}", text(&out));
    }
    let publish_only = phantom_in_npmrc(&w);
    let auth = format!("Bearer {publish_only}");
    let json_headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
    let before = w.storage();

    // A publish whose version carries `deprecated` would make Verdaccio replace the package.
    let mut body = json!({
        "_id": "@acme/lib", "name": "@acme/lib", "dist-tags": {"latest": "3.0.0"},
        "versions": {"3.0.0": {"name": "@acme/lib", "version": "3.0.0", "deprecated": ""}},
        "_attachments": {"@acme/lib-3.0.0.tgz": {"content_type": "application/octet-stream", "data": "AAAA", "length": 3}}
    });
    let r = w.broker("PUT", "/@acme%2flib", &json_headers, body.to_string());
    assert_eq!(r.status, 403, "{}", r.text());
    body["versions"]["3.0.0"].as_object_mut().unwrap().remove("deprecated");
    body["_rev"] = json!("2-x");
    assert_eq!(w.broker("PUT", "/@acme%2flib", &json_headers, body.to_string()).status, 403);
    // A deprecate is not a publish: this phantom may not deprecate at all.
    let mut packument: Value = w.upstream_packument("@acme%2flib?write=true").json();
    packument["versions"]["1.0.0"]["deprecated"] = json!("x");
    let r = w.broker("PUT", "/@acme%2flib", &json_headers, packument.to_string());
    assert_eq!(r.status, 403, "{}", r.text());
    // Gzip-encoded or non-JSON publish bodies are refused, not passed on unchecked.
    let gz = [("authorization", auth.as_str()), ("content-type", "application/json"), ("content-encoding", "gzip")];
    assert_eq!(w.broker("PUT", "/@acme%2flib", &gz, vec![0x1f, 0x8b, 0, 0]).status, 415);
    let text_body = [("authorization", auth.as_str()), ("content-type", "text/plain")];
    assert_eq!(w.broker("PUT", "/@acme%2flib", &text_body, "{}").status, 415);
    assert_eq!(before, w.storage(), "a smuggled write reached Verdaccio");

    // With unpublish rights: a version removal that also moves `latest` back is refused.
    w.login("@acme/lib", "unpublish,deprecate");
    let unpublisher = phantom_in_npmrc(&w);
    let auth = format!("Bearer {unpublisher}");
    let json_headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
    let current: Value = w.upstream_packument("@acme%2flib?write=true").json();
    let rev = current["_rev"].as_str().unwrap().to_owned();
    let mut sneaky = current.clone();
    sneaky["versions"].as_object_mut().unwrap().remove("2.0.0");
    sneaky["dist-tags"]["latest"] = json!("1.0.0");
    sneaky["maintainers"] = json!([{"name": "mallory", "email": "m@example.com"}]);
    let r = w.broker("PUT", &format!("/@acme%2flib/-rev/{rev}"), &json_headers, sneaky.to_string());
    assert_eq!(r.status, 403, "{}", r.text());
    // A deprecate that also rewrites dist-tags is refused.
    let mut deprecate = current.clone();
    deprecate["versions"]["1.0.0"]["deprecated"] = json!("old");
    deprecate["dist-tags"]["latest"] = json!("1.0.0");
    let r = w.broker("PUT", "/@acme%2flib", &json_headers, deprecate.to_string());
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(before, w.storage(), "a smuggled write reached Verdaccio");

    // Writes outside the phantom's scope are refused before their body is read.
    let r = w.broker("PUT", "/@acme%2fother", &json_headers, "not even json");
    assert_eq!(r.status, 403, "{}", r.text());
    let r = w.broker("PUT", "/@acme%2flib", &[("content-type", "application/json")], "not even json");
    assert_eq!(r.status, 401, "{}", r.text());
    w.assert_canary_contained();
}

/// A grant without `create` publishes only packages the upstream has: a hijacked release job
/// cannot claim a new name under its glob (dependency confusion, squatting). And a write the
/// broker does not classify as an action (`npm star`) is refused as such, with a notice.
#[test]
fn new_packages_need_create_and_stars_are_no_action() {
    let policy = r#"
# A person's bootstrap of one new package.
[[grant]]
name = "bootstrap"
issuer = "github"
packages = ["@acme/made"]
actions = ["publish"]
create = true
credential = "verdaccio-publisher"
[grant.claims]
repository_id = "123456789"

# CI releases of the team's existing packages.
[[grant]]
name = "release"
issuer = "github"
packages = ["@acme/*"]
actions = ["publish", "whoami"]
credential = "verdaccio-publisher"
[grant.claims]
repository_id = "123456789"
"#;
    let w = World::start(policy);
    w.login("@acme/made", "publish");
    let out = w.npm(&w.package("@acme/made", "1.0.0"), &["publish"], None);
    assert!(ok(&out), "the bootstrap grant creates the package: {}", text(&out));

    w.login("@acme/made,@acme/squat", "publish,whoami");
    let out = w.npm(&w.package("@acme/made", "1.1.0"), &["publish"], None);
    assert!(ok(&out), "a release of an existing package: {}", text(&out));
    let before = w.storage();
    let out = w.npm(&w.package("@acme/squat", "1.0.0"), &["publish"], None);
    let said = text(&out);
    assert!(!ok(&out), "a grant without create made a new package: {said}");
    assert!(said.contains("npm notice phantom: the upstream registry does not have this package"), "{said}");
    assert!(said.contains("may not create packages"), "{said}");
    assert!(before == w.storage(), "the refused package reached Verdaccio");
    assert_eq!(w.upstream_packument("@acme%2fsquat").status, 404);
    let line =
        w.broker.audit_lines().into_iter().rev().find(|l| l["package"] == "@acme/squat" && l["status"] == 403).unwrap();
    assert_eq!((line["action"].as_str(), line["new_package"].as_bool()), (Some("publish"), Some(true)), "{line}");
    let id = line["request_id"].as_str().unwrap();
    let explain = std::process::Command::new(env!("CARGO_BIN_EXE_phantom"))
        .args(["policy", "explain", "--config"])
        .arg(&w.broker.config)
        .args(["--request", id])
        .output()
        .unwrap();
    let detail = text(&explain);
    assert!(!explain.status.success(), "{detail}");
    assert!(detail.contains("deny   release: package creation not allowed by grant `release`"), "{detail}");

    // `npm star` sends `{_id, _rev, users}` to `PUT /<name>`: not a publish, not a deprecate.
    let out = w.npm(w.root(), &["star", "@acme/made"], None);
    let said = text(&out);
    assert!(!ok(&out), "npm star went through: {said}");
    assert!(
        said.contains("npm notice phantom: a change of `users` alone (`npm star`, `npm unstar`) is not an action"),
        "{said}"
    );
    let line =
        w.broker.audit_lines().into_iter().rev().find(|l| l["package"] == "@acme/made" && l["status"] == 403).unwrap();
    assert_eq!(line["action"], "publish|deprecate", "{line}");
    assert!(w
        .upstream_packument("@acme%2fmade")
        .json()
        .get("users")
        .is_none_or(|u| u.as_object().is_some_and(|u| u.is_empty())));
    w.assert_canary_contained();
}
