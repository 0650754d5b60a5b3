use super::*;
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;

const CTX: PolicyContext<'static> = PolicyContext {
    issuers: &["github", "gitlab"],
    credentials: &["acme-publish", "other"],
    credential_limits: &[],
    notify: &["releases"],
    default_ttl: Duration::from_secs(600),
    max_ttl: Duration::from_secs(3600),
};

const POLICY: &str = r#"
[[grant]]
name = "acme-web-release"
issuer = "github"
packages = ["@acme/web", "@acme/web-*"]
actions = ["publish", "dist-tag"]
dist_tags = ["latest", "next", "beta-*"]
credential = "acme-publish"
ttl = "10m"
max_uses = 3
[grant.claims]
repository_id = "123456789"
repository_owner_id = "4242"
ref = ["refs/heads/main", "refs/heads/release"]
job_workflow_ref = { glob = "acme/web/.github/workflows/release.yml@refs/*/*" }

[[grant]]
name = "tools"
issuer = "gitlab"
packages = ["left-pad", "@tools/*"]
actions = ["publish", "deprecate", "whoami"]
credential = "other"
ttl = "2h"
[grant.claims]
project_path = "tools/left-pad"
"#;

fn policy() -> Policy {
    let grants = grant::parse_file(&PathBuf::from("p.toml"), POLICY, &CTX).unwrap().0;
    Policy::new(grants).unwrap()
}

fn github(claims: Value) -> Identity {
    let mut base = json!({
        "repository_id": "123456789", "repository_owner_id": "4242", "ref": "refs/heads/main",
        "job_workflow_ref": "acme/web/.github/workflows/release.yml@refs/heads/main",
    });
    for (k, v) in claims.as_object().unwrap() {
        if v.is_null() {
            base.as_object_mut().unwrap().remove(k);
        } else {
            base[k] = v.clone();
        }
    }
    Identity { issuer: "github".into(), claims: base.as_object().unwrap().clone() }
}

fn pkg(s: &str) -> PackageName {
    PackageName::parse(s).unwrap()
}

#[test]
fn claim_matching_table() {
    let p = policy();
    let web = pkg("@acme/web");
    let table: &[(Value, bool)] = &[
        (json!({}), true),
        (json!({"ref": "refs/heads/release"}), true),
        (json!({"ref": "refs/heads/main-attacker"}), false),
        (json!({"ref": "refs/heads/feature"}), false),
        (json!({"ref": null}), false),
        // A list-valued claim (a person's `groups`) matches when it holds a matching string.
        (json!({"ref": ["refs/heads/main"]}), true),
        (json!({"ref": ["refs/heads/x", "refs/heads/release"]}), true),
        (json!({"ref": ["refs/heads/x", 7, {"a": "refs/heads/main"}]}), false),
        (json!({"ref": [["refs/heads/main"]]}), false),
        (json!({"ref": []}), false),
        (json!({"ref": {"0": "refs/heads/main"}}), false),
        (json!({"repository_id": 123456789}), false),
        (json!({"repository_id": "1234567890"}), false),
        (json!({"repository_owner_id": "4243"}), false),
        (json!({"job_workflow_ref": "acme/web/.github/workflows/release.yml@refs/tags/v1"}), true),
        (json!({"job_workflow_ref": "acme/web/.github/workflows/release.yml@refs/heads/a/b"}), false),
        (json!({"job_workflow_ref": "evil/web/.github/workflows/release.yml@refs/heads/main"}), false),
    ];
    for (claims, want) in table {
        let got = p.grant_for(&github(claims.clone()), &web, ActionKind::Publish).is_ok();
        assert_eq!(got, *want, "claims {claims}");
    }
    let mut other_issuer = github(json!({}));
    other_issuer.issuer = "gitlab".into();
    assert_eq!(p.grant_for(&other_issuer, &web, ActionKind::Publish).err(), Some(Denial::NoGrant));
}

#[test]
fn exchange_evaluation() {
    let p = policy();
    let id = github(json!({}));
    assert_eq!(p.grant_for(&id, &pkg("@acme/web-ui"), ActionKind::Publish).unwrap().name.as_ref(), "acme-web-release");
    for (name, action) in [
        ("@acme/other", ActionKind::Publish),
        ("@acme/web/x", ActionKind::Publish),
        ("@acme/web", ActionKind::Unpublish),
        ("@acme/web", ActionKind::Owner),
        ("left-pad", ActionKind::Publish),
    ] {
        let Ok(name) = PackageName::parse(name) else {
            continue;
        };
        assert_eq!(p.grant_for(&id, &name, action).err(), Some(Denial::NoGrant), "{name} {action:?}");
    }
}

#[test]
fn best_grant_intersects() {
    let p = policy();
    let asked = [pkg("@acme/web"), pkg("@acme/api"), pkg("@acme/web-ui")];
    let actions: ActionSet = [ActionKind::Publish, ActionKind::Unpublish, ActionKind::DistTag].into_iter().collect();
    let (g, scope) = p.best_grant(&github(json!({})), &asked, actions).unwrap();
    assert_eq!(&*g.name, "acme-web-release");
    assert_eq!(scope.packages, vec![pkg("@acme/web"), pkg("@acme/web-ui")]);
    assert_eq!(scope.actions.names(), ["publish", "dist-tag"]);
    let none: ActionSet = [ActionKind::Owner].into_iter().collect();
    assert!(p.best_grant(&github(json!({})), &asked, none).is_none());
    assert!(p.best_grant(&github(json!({"ref": "refs/heads/dev"})), &asked, actions).is_none());
}

#[test]
fn use_time_evaluation() {
    let p = policy();
    let id = github(json!({}));
    let scope = Scope { packages: vec![pkg("@acme/web")], actions: [ActionKind::Publish].into_iter().collect() };
    let web = pkg("@acme/web");
    let ui = pkg("@acme/web-ui");
    let latest = ["latest".to_owned()];
    let beta = ["beta-2".to_owned()];
    let evil = ["evil".to_owned()];
    let req = |package, action, tags| Requested { package, action, tags, version: None, creates: false };
    let table: Vec<(Requested<'_>, Result<(), Denial>)> = vec![
        (req(Some(&web), ActionKind::Publish, &latest), Ok(())),
        (req(Some(&web), ActionKind::Publish, &beta), Ok(())),
        (req(Some(&web), ActionKind::Read, &[]), Ok(())),
        (
            req(Some(&web), ActionKind::Publish, &evil),
            Err(Denial::TagNotAllowed("evil".into(), "acme-web-release".into())),
        ),
        (req(Some(&ui), ActionKind::Publish, &latest), Err(Denial::PackageOutOfScope)),
        (req(Some(&ui), ActionKind::Read, &[]), Err(Denial::PackageOutOfScope)),
        (req(Some(&web), ActionKind::DistTag, &latest), Err(Denial::ActionOutOfScope("dist-tag"))),
        (req(Some(&web), ActionKind::Unpublish, &[]), Err(Denial::ActionOutOfScope("unpublish"))),
        (req(None, ActionKind::Whoami, &[]), Err(Denial::ActionOutOfScope("whoami"))),
        (req(None, ActionKind::Read, &[]), Err(Denial::ActionOutOfScope("read"))),
    ];
    for (r, want) in table {
        let got = p.authorize(&id, "acme-web-release", &scope, r, ()).map(|_| ());
        assert_eq!(got, want, "{r:?}");
    }
    let req = req(Some(&web), ActionKind::Publish, &latest);
    assert_eq!(p.authorize(&id, "gone", &scope, req, ()).err(), Some(Denial::GrantGone("gone".into())));
    let moved = github(json!({"ref": "refs/heads/dev"}));
    assert_eq!(
        p.authorize(&moved, "acme-web-release", &scope, req, ()).err(),
        Some(Denial::ClaimMismatch("ref".into()))
    );
}

#[test]
fn ttl_is_capped_and_defaulted() {
    let p = policy();
    let tools = p.grants().find(|g| &*g.name == "tools").unwrap();
    assert_eq!(tools.ttl, Duration::from_secs(3600));
    assert_eq!(tools.max_uses, None);
}

#[test]
fn bad_files_name_the_problem() {
    let base = r#"name = "g"
issuer = "github"
packages = ["@acme/web"]
actions = ["publish"]
credential = "acme-publish"
"#;
    let table: &[(&str, &str)] = &[
        ("unknown = 1\n[grant.claims]\nsub = \"x\"", "unknown field `unknown`"),
        ("[grant.claims]", "`claims` may not be empty"),
        ("[grant.claims]\nsub = { regex = \"x\" }", "unknown key `regex`"),
        ("[grant.claims]\nsub = 5", "invalid type: integer"),
        ("[grant.claims]\nsub = []", "may not be empty"),
        ("ttl = \"10 minutes\"\n[grant.claims]\nsub = \"x\"", "`ttl`"),
        ("max_uses = 0\n[grant.claims]\nsub = \"x\"", "`max_uses`"),
        ("dist_tags = [\"latest\"]\n[grant.claims]\nsub = \"x\"", ""),
        ("publish = \"stage\"\nrate = \"5/1h\"\nnotify = [\"releases\"]\n[grant.claims]\nsub = \"x\"", ""),
        ("publish = \"staged\"\n[grant.claims]\nsub = \"x\"", "`publish`: `staged`"),
        ("rate = \"5 per hour\"\n[grant.claims]\nsub = \"x\"", "`rate`"),
        ("rate = \"0/1h\"\n[grant.claims]\nsub = \"x\"", "`rate`"),
        ("rate = \"5/0s\"\n[grant.claims]\nsub = \"x\"", "`rate`"),
        ("notify = [\"pager\"]\n[grant.claims]\nsub = \"x\"", "not a configured `[notify.NAME]`"),
    ];
    for (extra, want) in table {
        let text = format!("[[grant]]\n{base}{extra}\n");
        let got = grant::parse_file(&PathBuf::from("p.toml"), &text, &CTX);
        match got {
            Ok(_) => assert!(want.is_empty(), "{extra}: expected an error with {want}"),
            Err(e) => assert!(!want.is_empty() && e.contains(want), "{extra}: got {e}"),
        }
    }
    let swaps: &[(&str, &str, &str)] = &[
        ("issuer = \"github\"", "issuer = \"gitlub\"", "not a configured issuer"),
        ("credential = \"acme-publish\"", "credential = \"nope\"", "not a configured credential"),
        ("actions = [\"publish\"]", "actions = [\"admin\"]", "unknown action `admin`"),
        ("actions = [\"publish\"]", "actions = [\"whoami\"]\ndist_tags = [\"x\"]", "`dist_tags` applies only"),
        ("[\"@acme/web\"]", "[\"@Acme/web\"]", "upper case"),
        ("[\"@acme/web\"]", "[\"@acme/a/b\"]", "not a package name"),
        ("[\"@acme/web\"]", "[]", "`packages` may not be empty"),
        (
            "actions = [\"publish\"]",
            "actions = [\"stage-publish\"]\npublish = \"stage\"",
            "applies to the publish action",
        ),
    ];
    for (from, to, want) in swaps {
        let text = format!("[[grant]]\n{}[grant.claims]\nsub = \"x\"\n", base.replace(from, to));
        let err = grant::parse_file(&PathBuf::from("p.toml"), &text, &CTX).unwrap_err();
        assert!(err.contains(want), "{to}: got {err}");
    }
}

#[test]
fn duplicate_grant_names_are_refused() {
    let mut grants = grant::parse_file(&PathBuf::from("p.toml"), POLICY, &CTX).unwrap().0;
    grants.push(grants[0].clone());
    assert!(Policy::new(grants).unwrap_err().contains("used twice"));
}

#[test]
fn index_finds_grants_without_scanning() {
    let mut text = String::new();
    for i in 0..2000 {
        text.push_str(&format!(
            "[[grant]]\nname = \"g{i}\"\nissuer = \"github\"\npackages = [\"@s{i}/*\", \"p{i}\"]\nactions = [\"publish\"]\ncredential = \"other\"\n[grant.claims]\nsub = \"s{i}\"\n"
        ));
    }
    let p = Policy::new(grant::parse_file(&PathBuf::from("p.toml"), &text, &CTX).unwrap().0).unwrap();
    assert_eq!(p.candidates(&pkg("@s1500/x")), vec![1500]);
    assert_eq!(p.candidates(&pkg("p7")), vec![7]);
    assert!(p.candidates(&pkg("zzz")).is_empty());
    let id = Identity { issuer: "github".into(), claims: json!({"sub": "s1999"}).as_object().unwrap().clone() };
    assert_eq!(p.grant_for(&id, &pkg("@s1999/web"), ActionKind::Publish).unwrap().name.as_ref(), "g1999");
}

#[test]
fn provisional_authorization() {
    let p = policy();
    let id = github(json!({}));
    let scope = Scope { packages: vec![pkg("@acme/web")], actions: [ActionKind::Publish].into_iter().collect() };
    let put: ActionSet = [ActionKind::Publish, ActionKind::Deprecate].into_iter().collect();
    let unpublish: ActionSet = [ActionKind::Unpublish].into_iter().collect();
    assert!(p.authorize_provisional(&id, "acme-web-release", &scope, Some(&pkg("@acme/web")), put, ()).is_ok());
    let other = pkg("@acme/web-ui");
    assert_eq!(
        p.authorize_provisional(&id, "acme-web-release", &scope, Some(&other), put, ()).err(),
        Some(Denial::PackageOutOfScope)
    );
    assert_eq!(
        p.authorize_provisional(&id, "acme-web-release", &scope, Some(&pkg("@acme/web")), unpublish, ()).err(),
        Some(Denial::ActionOutOfScope("unpublish"))
    );
    let moved = github(json!({"ref": "refs/heads/dev"}));
    assert!(p.authorize_provisional(&moved, "acme-web-release", &scope, Some(&pkg("@acme/web")), put, ()).is_err());
}

#[test]
fn rates_and_publish_modes_parse() {
    let text = "[[grant]]\nname = \"g\"\nissuer = \"github\"\npackages = [\"@acme/web\"]\nactions = [\"publish\"]\n\
                credential = \"acme-publish\"\npublish = \"stage\"\nrate = \"5/1h\"\n[grant.claims]\nsub = \"x\"\n";
    let g = &grant::parse_file(&PathBuf::from("p.toml"), text, &CTX).unwrap().0[0];
    assert_eq!(g.publish, crate::policy::PublishMode::Stage);
    assert_eq!(g.rate, Some(crate::policy::Rate { max: 5, window: Duration::from_secs(3600) }));
    assert_eq!(crate::policy::Rate::parse("84/6m").unwrap().window, Duration::from_secs(360));
}

#[test]
fn grants_stay_within_their_credentials() {
    let acme = [Glob::new("@acme/*").unwrap(), Glob::new("left-pad").unwrap()];
    let check = |publish: Capability, grant: &str| {
        let limits = [CredentialLimits { name: "acme-publish", packages: &acme, publish }];
        let ctx = PolicyContext { credential_limits: &limits, ..CTX };
        let text = format!(
            "[[grant]]\nname = \"g\"\nissuer = \"github\"\ncredential = \"acme-publish\"\n{grant}\n[grant.claims]\nrepository_id = \"1\"\n"
        );
        grant::parse_file(&PathBuf::from("p.toml"), &text, &ctx).map(|_| ())
    };
    let ok = [
        (Capability::Direct, "packages = [\"@acme/web\", \"@acme/web-*\", \"left-pad\"]\nactions = [\"publish\"]"),
        (Capability::StageOnly, "packages = [\"@acme/*\"]\nactions = [\"publish\", \"dist-tag\"]\npublish = \"stage\""),
        (Capability::StageOnly, "packages = [\"@acme/web\"]\nactions = [\"dist-tag\", \"deprecate\"]"),
        (Capability::ReadOnly, "packages = [\"@acme/web\"]\nactions = [\"read\"]"),
    ];
    for (publish, grant) in ok {
        assert_eq!(check(publish, grant), Ok(()), "{grant}");
    }
    let refused = [
        (
            Capability::Direct,
            "packages = [\"@acme/web\", \"*\"]\nactions = [\"publish\"]",
            "`*` reaches beyond credential `acme-publish`",
        ),
        (
            Capability::Direct,
            "packages = [\"@acme-evil/web\"]\nactions = [\"publish\"]",
            "`@acme-evil/web` reaches beyond",
        ),
        (Capability::Direct, "packages = [\"left-pad-*\"]\nactions = [\"publish\"]", "`left-pad-*` reaches beyond"),
        (Capability::StageOnly, "packages = [\"@acme/web\"]\nactions = [\"publish\"]", "may only stage"),
        (Capability::ReadOnly, "packages = [\"@acme/web\"]\nactions = [\"read\", \"dist-tag\"]", "is read-only"),
    ];
    for (publish, grant, want) in refused {
        let err = check(publish, grant).unwrap_err();
        assert!(err.starts_with("grant `g`: `") && err.contains(want), "{grant}: {err}");
    }
    // A credential without `packages` is not scoped: any package pattern is within it.
    let limits = [CredentialLimits { name: "acme-publish", packages: &[], publish: Capability::Direct }];
    let ctx = PolicyContext { credential_limits: &limits, ..CTX };
    let text = "[[grant]]\nname = \"g\"\nissuer = \"github\"\ncredential = \"acme-publish\"\npackages = [\"*\"]\nactions = [\"publish\"]\n[grant.claims]\nrepository_id = \"1\"\n";
    assert!(grant::parse_file(&PathBuf::from("p.toml"), text, &ctx).is_ok());
}

#[test]
fn globs_cover_what_they_match_and_no_more() {
    let covers = |a: &str, b: &str| Glob::new(a).unwrap().covers(&Glob::new(b).unwrap());
    for (a, b) in
        [("@acme/*", "@acme/web-*"), ("@acme/*", "@acme/*"), ("*", "left-*"), ("a*c", "a*bc"), ("*-cli", "web-*-cli")]
    {
        assert!(covers(a, b), "{a} covers {b}");
    }
    for (a, b) in
        [("@acme/web-*", "@acme/*"), ("@acme/*", "*"), ("*", "@acme/*"), ("a*b", "a*"), ("*x", "*"), ("web", "web-*")]
    {
        assert!(!covers(a, b), "{a} does not cover {b}");
    }
}

#[test]
fn version_rules_restrict_what_may_be_published() {
    let text = r#"
[[grant]]
name = "agent"
issuer = "github"
packages = ["@acme/web"]
actions = ["publish", "dist-tag"]
credential = "acme-publish"
versions = ">=1.4.0-0 <1.5.0 || 2.0.0-0 - 2.0.0"
prerelease_only = true
[grant.claims]
repository_id = "123456789"
"#;
    let p = Policy::new(grant::parse_file(&PathBuf::from("p.toml"), text, &CTX).unwrap().0).unwrap();
    let id = github(json!({}));
    let web = pkg("@acme/web");
    let scope = Scope {
        packages: vec![web.clone()],
        actions: [ActionKind::Publish, ActionKind::DistTag].into_iter().collect(),
    };
    let check = |action, version: Option<&str>| {
        let req = Requested { package: Some(&web), action, tags: &[], version, creates: false };
        p.authorize(&id, "agent", &scope, req, ()).map(|_| ()).map_err(|d| d.to_string())
    };
    assert_eq!(check(ActionKind::Publish, Some("1.4.0-beta.1")), Ok(()));
    assert_eq!(check(ActionKind::Publish, Some("2.0.0-rc.1")), Ok(()));
    for (version, why) in [
        (Some("1.4.0"), "is not a prerelease"),
        (Some("2.1.0-beta.1"), "is outside `>=1.4.0-0 <1.5.0 || 2.0.0-0 - 2.0.0`"),
        // Within the range by its place, but npm takes a prerelease only of a named release.
        (Some("1.4.1-beta.1"), "npm matches a prerelease only against a range that names a prerelease of 1.4.1"),
        (Some("0.9.0-rc.1"), "is outside"),
        (Some("one"), "the version is not a semver version"),
        (Some("v1.4.0-beta.1"), "the version is not a semver version"),
        (None, "names no version"),
    ] {
        let err = check(ActionKind::Publish, version).unwrap_err();
        assert!(err.starts_with("version not allowed by grant `agent`") && err.contains(why), "{version:?}: {err}");
    }
    // A dist-tag move publishes no version: the rules do not apply to it.
    assert_eq!(check(ActionKind::DistTag, None), Ok(()));

    for (range, want) in [
        ("latest", "`versions`: `latest` is not an npm range"),
        (">=1.0.0, <2.0.0", "`versions`: `>=1.0.0, <2.0.0` joins comparators with a comma"),
    ] {
        let bad_range =
            text.replace("versions = \">=1.4.0-0 <1.5.0 || 2.0.0-0 - 2.0.0\"", &format!("versions = \"{range}\""));
        let err = grant::parse_file(&PathBuf::from("p.toml"), &bad_range, &CTX).unwrap_err();
        assert!(err.contains(&format!("grant `agent`: {want}")), "{err}");
    }
    let no_publish = text.replace("actions = [\"publish\", \"dist-tag\"]", "actions = [\"dist-tag\"]");
    let err = grant::parse_file(&PathBuf::from("p.toml"), &no_publish, &CTX).unwrap_err();
    assert!(err.contains("`versions` applies to publish"), "{err}");
}

#[test]
fn explain_and_authorize_give_one_verdict() {
    let p = policy();
    let ids = [github(json!({})), github(json!({"ref": "refs/heads/feature"}))];
    let packages = ["@acme/web", "@acme/other", "left-pad"];
    let actions = [ActionKind::Publish, ActionKind::DistTag, ActionKind::Deprecate, ActionKind::Read];
    let mut allowed = 0;
    for identity in &ids {
        for name in packages {
            let package = pkg(name);
            for action in actions {
                for creates in [false, true] {
                    let req = Requested { package: Some(&package), action, tags: &[], version: Some("1.0.0"), creates };
                    for (grant, explained) in p.explain(identity, &req) {
                        let g = p.grant(&grant).unwrap();
                        // A phantom for this package with all of the grant's actions.
                        let scope = Scope { packages: vec![package.clone()], actions: g.actions };
                        let authorized = p.authorize(identity, &grant, &scope, req, ()).map(|_| ());
                        assert_eq!(explained, authorized, "{grant} {name} {action:?} creates={creates}");
                        allowed += usize::from(explained.is_ok());
                    }
                }
            }
        }
    }
    // Some of each: the table is not all denials.
    assert!(allowed > 0 && allowed < ids.len() * packages.len() * actions.len() * 2 * 2);
}

#[test]
fn approvers_and_holds() {
    let text = r#"
[approvers.release-managers]
issuer = "gitlab"
claims = { groups = "release-managers" }
required = 2
hold_ttl = "2h"

[[grant]]
name = "held"
issuer = "github"
packages = ["@acme/web"]
actions = ["publish", "dist-tag"]
credential = "acme-publish"
hold = "release-managers"
[grant.claims]
repository_id = "123456789"
"#;
    let p = Policy::from_toml(Path::new("p.toml"), text, &CTX).unwrap();
    assert_eq!(p.grant("held").unwrap().hold.as_deref(), Some("release-managers"));
    let a = p.approvers("release-managers").unwrap();
    assert_eq!((a.required, a.hold_ttl), (2, Duration::from_secs(7200)));
    let person = |groups: Value| json!({"sub": "bob", "groups": groups}).as_object().unwrap().clone();
    assert!(a.admits("gitlab", &person(json!(["web", "release-managers"]))));
    assert!(a.admits("gitlab", &person(json!("release-managers"))));
    assert!(!a.admits("gitlab", &person(json!(["web"]))));
    assert!(!a.admits("github", &person(json!(["release-managers"]))), "another issuer");

    let cases = [
        (text.replace("hold = \"release-managers\"", "hold = \"nobody\""), "no `[approvers.nobody]`"),
        (text.replace("required = 2", "required = 0"), "`required`"),
        (text.replace("required = 2", "required = 11"), "`required`"),
        (text.replace("hold_ttl = \"2h\"", "hold_ttl = \"31d\""), "`hold_ttl`"),
        (text.replace("issuer = \"gitlab\"", "issuer = \"corp\""), "not a configured issuer"),
        (text.replace("claims = { groups = \"release-managers\" }", ""), "`claims` may not be empty"),
        (text.replace("required = 2", "required = 2\nvote = 1"), "unknown field `vote`"),
        (text.replace("actions = [\"publish\", \"dist-tag\"]", "actions = [\"read\"]"), "`hold` applies to writes"),
    ];
    for (bad, says) in cases {
        let err = Policy::from_toml(Path::new("p.toml"), &bad, &CTX).unwrap_err().to_string();
        assert!(err.contains(says), "{says}: {err}");
    }
}
