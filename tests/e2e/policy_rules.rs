//! Version rules in grants (`versions`, an npm range read as node-semver reads it, and
//! `prerelease_only`), enforced on what the unmodified npm CLI publishes, and readable denials:
//! npm prints the broker's `npm-notice` with the request id, and `phantom policy explain
//! --request ID` gives the admin the grant-by-grant detail.

use crate::support::*;
use std::process::Command;

const POLICY: &str = r#"
[[grant]]
name = "agent"
issuer = "github"
packages = ["pb-agent"]
actions = ["publish"]
create = true
credential = "verdaccio-publisher"
ttl = "10m"
max_uses = 10
versions = ">=1.2.0-0 <1.3.0"
prerelease_only = true
[grant.claims]
repository_id = "123456789"
repository_owner_id = "4242"

# An admin pins an agent to one version: in npm, a bare version is exactly that version.
[[grant]]
name = "pinned"
issuer = "github"
packages = ["pb-pinned"]
actions = ["publish"]
create = true
credential = "verdaccio-publisher"
max_uses = 10
versions = "1.2.3"
[grant.claims]
repository_id = "123456789"

# Spaces are AND, `||` is OR.
[[grant]]
name = "lines"
issuer = "github"
packages = ["pb-lines"]
actions = ["publish"]
create = true
credential = "verdaccio-publisher"
max_uses = 10
versions = ">=1.0.0 <1.2.0 || 2.x"
[grant.claims]
repository_id = "123456789"
"#;

/// The request id in npm's `npm notice phantom: ... (request ID)` line.
fn request_id(npm_output: &str) -> String {
    let line =
        npm_output.lines().find(|l| l.contains("npm notice phantom: ")).unwrap_or_else(|| panic!("{npm_output}"));
    let (_, rest) = line.rsplit_once("(request ").unwrap_or_else(|| panic!("{line}"));
    rest.trim_end_matches(')').to_owned()
}

#[test]
fn version_rules_hold_and_npm_says_why() {
    let w = World::start(POLICY);
    w.login("pb-agent", "publish");
    let publish = |version: &str| {
        let dir = w.package("pb-agent", version);
        w.npm(&dir, &["publish", "--tag", "next"], None)
    };

    let out = publish("1.2.0-beta.1");
    assert!(ok(&out), "a prerelease within the range: {}", text(&out));

    for (version, why) in [
        ("1.2.0", "`1.2.0` is not a prerelease (prerelease_only)"),
        ("2.0.0-beta.1", "`2.0.0-beta.1` is outside `>=1.2.0-0 <1.3.0`"),
    ] {
        let out = publish(version);
        let said = text(&out);
        assert!(!ok(&out), "{version} was published: {said}");
        let notice =
            format!("npm notice phantom: the phantom token's grant does not allow publishing this version: {why}");
        assert!(said.contains(&notice), "{version}: {said}");
        let id = request_id(&said);
        let line = w.broker.audit_lines().into_iter().find(|l| l["request_id"] == id.as_str()).unwrap();
        assert_eq!((line["status"].as_u64(), line["version"].as_str()), (Some(403), Some(version)), "{line}");

        // The admin's view of the same request, grant by grant.
        let explain = Command::new(env!("CARGO_BIN_EXE_phantom"))
            .args(["policy", "explain", "--config"])
            .arg(&w.broker.config)
            .args(["--request", &id])
            .output()
            .unwrap();
        let detail = text(&explain);
        assert!(!explain.status.success(), "{detail}");
        assert!(detail.contains(&format!("request {id}: publish pb-agent by repo:acme/web")), "{detail}");
        assert!(detail.contains(&format!("deny   agent: version not allowed by grant `agent`: {why}")), "{detail}");
    }
    let p = w.upstream_packument("pb-agent").json();
    let versions: Vec<&String> = p["versions"].as_object().unwrap().keys().collect();
    assert_eq!(versions, ["1.2.0-beta.1"], "the upstream has more than the allowed version");

    // `versions = "1.2.3"` is exactly 1.2.3 (a Cargo-style reading took it as ^1.2.3); a range
    // with spaces and `||` decides as node-semver does.
    for (package, tries, allowed) in [
        ("pb-pinned", &["1.2.4", "1.9.0", "1.2.3"][..], &["1.2.3"][..]),
        ("pb-lines", &["1.2.0", "1.1.9", "2.5.0", "3.0.0", "1.0.0-rc.1"][..], &["1.1.9", "2.5.0"][..]),
    ] {
        w.login(package, "publish");
        for version in tries {
            let out = w.npm(&w.package(package, version), &["publish", "--tag", "next"], None);
            let refused = text(&out).contains("does not allow publishing this version");
            assert_eq!(ok(&out), allowed.contains(version), "{package}@{version}: {}", text(&out));
            assert_eq!(refused, !allowed.contains(version), "{package}@{version}: {}", text(&out));
        }
        let p = w.upstream_packument(package).json();
        let mut stored: Vec<&str> = p["versions"].as_object().unwrap().keys().map(String::as_str).collect();
        stored.sort_unstable();
        assert_eq!(stored, allowed, "{package}: the upstream has other versions than the range allows");
    }

    // A refusal without a phantom carries the notice too, and the explain of an unknown id says so.
    let out = w.broker("PUT", "/pb-agent", &[("content-type", "application/json")], "{}");
    let notice = out.headers["npm-notice"].to_str().unwrap();
    assert!(
        notice.starts_with("phantom: this registry accepts writes only with a phantom token")
            && notice.contains("(request "),
        "{notice}"
    );
    let explain = Command::new(env!("CARGO_BIN_EXE_phantom"))
        .args(["policy", "explain", "--config"])
        .arg(&w.broker.config)
        .args(["--request", "nope"])
        .output()
        .unwrap();
    assert!(!explain.status.success() && text(&explain).contains("request nope is not in"), "{}", text(&explain));
    w.assert_canary_contained();
}
