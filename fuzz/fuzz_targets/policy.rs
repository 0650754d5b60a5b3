//! The policy file loader, and evaluation of whatever it accepts: no panics, and a grant is
//! only ever found for an identity that matches its issuer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use phantom_broker::npm::{ActionKind, PackageName};
use phantom_broker::policy::{Identity, Policy, PolicyContext, Requested};
use std::path::Path;
use std::time::Duration;

const CTX: PolicyContext<'static> = PolicyContext {
    issuers: &["github", "gitlab"],
    credentials: &["cred"],
    credential_limits: &[],
    notify: &["releases"],
    default_ttl: Duration::from_secs(600),
    max_ttl: Duration::from_secs(3600),
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(policy) = Policy::from_toml(Path::new("fuzz.toml"), text, &CTX) else { return };
    let claims = serde_json::json!({"sub": "repo:acme/web", "repository_id": "1", "ref": "refs/heads/main"});
    let identity = Identity { issuer: "github".into(), claims: claims.as_object().unwrap().clone() };
    for name in ["@acme/web", "left-pad", "@x/y"] {
        let pkg = PackageName::parse(name).unwrap();
        for action in ActionKind::ALL {
            if let Ok(g) = policy.grant_for(&identity, &pkg, action) {
                assert_eq!(g.issuer, "github");
                assert!(g.actions.contains(action) && g.covers_package(&pkg));
                assert!(g.ttl <= CTX.max_ttl && !g.claims.is_empty());
            }
        }
        let asked = Requested {
            package: Some(&pkg),
            action: ActionKind::Publish,
            tags: &[],
            version: Some("1.0.0-rc.1"),
            creates: true,
        };
        let _ = policy.explain(&identity, &asked);
    }
});
