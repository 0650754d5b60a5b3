//! Issuer presets against tokens of each vendor's shape (minted by the loopback issuer with the
//! claims each vendor documents): a grant pinning the vendor's immutable ids admits its job and
//! refuses another's, and `policy check` knows which claims the vendor sends.

use crate::support::*;
use serde_json::{json, Value};
use std::process::Command;

struct Vendor {
    preset: &'static str,
    /// The `[grant.claims]` lines that pin the job.
    pins: &'static str,
    /// The token's own claims (the registered ones are added).
    claims: Value,
    /// A claim and a value that make it another project's job.
    other: (&'static str, &'static str),
    /// A claim this vendor never sends.
    foreign: &'static str,
}

fn vendors() -> Vec<Vendor> {
    vec![
        Vendor {
            preset: "github",
            pins: "repository_id = \"123456789\"\nrepository_owner_id = \"4242\"\nevent_name = \"push\"\njob_workflow_ref = \"acme/web/.github/workflows/release.yml@refs/heads/main\"\nrunner_environment = \"github-hosted\"",
            claims: json!({"sub": "repo:acme/web:ref:refs/heads/main", "repository": "acme/web", "repository_id": "123456789",
                "repository_owner": "acme", "repository_owner_id": "4242", "ref": "refs/heads/main", "event_name": "push",
                "job_workflow_ref": "acme/web/.github/workflows/release.yml@refs/heads/main", "runner_environment": "github-hosted"}),
            other: ("repository_id", "987654321"),
            foreign: "project_id",
        },
        Vendor {
            preset: "gitlab",
            pins: "project_id = \"42\"\nnamespace_id = \"7\"\nref_protected = \"true\"\npipeline_source = \"push\"\nrunner_environment = \"gitlab-hosted\"",
            claims: json!({"sub": "project_path:acme/web:ref_type:branch:ref:main", "project_id": "42", "project_path": "acme/web",
                "namespace_id": "7", "namespace_path": "acme", "ref": "main", "ref_type": "branch", "ref_protected": "true",
                "pipeline_source": "push", "runner_environment": "gitlab-hosted", "user_login": "alice"}),
            other: ("project_id", "43"),
            foreign: "repository_id",
        },
        Vendor {
            preset: "circleci",
            pins: "\"oidc.circleci.com/project-id\" = \"5b2a7c1e-0000-4000-8000-000000000001\"\n\"oidc.circleci.com/vcs-ref\" = \"refs/heads/main\"",
            claims: json!({"sub": "org/9f1e/project/5b2a7c1e-0000-4000-8000-000000000001/user/77aa",
                "oidc.circleci.com/project-id": "5b2a7c1e-0000-4000-8000-000000000001",
                "oidc.circleci.com/vcs-origin": "github.com/acme/web", "oidc.circleci.com/vcs-ref": "refs/heads/main",
                "oidc.circleci.com/context-ids": ["c0ffee00-0000-4000-8000-000000000002"]}),
            other: ("oidc.circleci.com/project-id", "5b2a7c1e-0000-4000-8000-000000000009"),
            foreign: "event_name",
        },
        Vendor {
            preset: "buildkite",
            pins: "organization_id = \"0a1b2c3d\"\npipeline_id = \"4e5f6071\"\nbuild_branch = \"main\"",
            claims: json!({"sub": "organization:acme:pipeline:web:ref:refs/heads/main:commit:abc123:step:publish",
                "organization_id": "0a1b2c3d", "organization_slug": "acme", "pipeline_id": "4e5f6071", "pipeline_slug": "web",
                "build_branch": "main", "build_number": "12", "build_commit": "abc123", "step_key": "publish"}),
            other: ("pipeline_id", "99999999"),
            foreign: "ref",
        },
        Vendor {
            preset: "kubernetes",
            pins: "sub = \"system:serviceaccount:release:publisher\"",
            claims: json!({"sub": "system:serviceaccount:release:publisher",
                "kubernetes.io": {"namespace": "release", "serviceaccount": {"name": "publisher", "uid": "3c4d"}}}),
            other: ("sub", "system:serviceaccount:default:default"),
            foreign: "namespace",
        },
    ]
}

#[test]
fn each_preset_admits_its_vendors_job_and_knows_its_claims() {
    for v in vendors() {
        let policy = format!(
            "[[grant]]\nname = \"{p}-release\"\nissuer = \"github\"\npackages = [\"pb-{p}\"]\nactions = [\"publish\"]\ncreate = true\ncredential = \"verdaccio-publisher\"\nttl = \"10m\"\nmax_uses = 1\nrate = \"3/1h\"\n[grant.claims]\n{}\n",
            v.pins,
            p = v.preset
        );
        let w = World::start_with(Options {
            policy: policy.clone(),
            issuer: format!("preset = \"{}\"", v.preset),
            ..Options::default()
        });
        let now = phantom_broker::support::clock::unix_now();
        let token = |edit: Option<(&str, &str)>| {
            let mut claims = v.claims.clone();
            for (k, val) in [
                ("iss", json!(w.issuer.url)),
                ("aud", json!(w.npm_audience())),
                ("iat", json!(now)),
                ("exp", json!(now + 300)),
                ("jti", json!(format!("{}-{}", v.preset, edit.is_some()))),
            ] {
                claims[k] = val;
            }
            if let Some((k, val)) = edit {
                claims[k] = json!(val);
            }
            w.mint(&claims, "rsa", json!({}))
        };
        let package = format!("pb-{}", v.preset);
        let ok = w.exchange(&token(None), &[&package], &["publish"], None);
        assert_eq!(ok.status, 201, "{}: its own job: {}", v.preset, ok.text());
        let refused = w.exchange(&token(Some(v.other)), &[&package], &["publish"], None);
        assert_eq!(refused.status, 403, "{}: another project's job: {}", v.preset, refused.text());

        // The vendor's policy checks clean; one pinning a claim the vendor never sends does not.
        let check = |dir: &std::path::Path| {
            let out = Command::new(env!("CARGO_BIN_EXE_phantom"))
                .args(["policy", "check", "--format", "json", "--config"])
                .arg(&w.broker.config)
                .current_dir(dir)
                .output()
                .unwrap();
            serde_json::from_slice::<Value>(&out.stdout).unwrap()
        };
        assert_eq!(check(w.root()), json!([]), "{}: its own policy", v.preset);
        let file = w.broker.dir.join("policies/test.toml");
        std::fs::write(&file, format!("{policy}{} = \"x\"\n", v.foreign)).unwrap();
        let findings = check(w.root());
        let rules: Vec<&str> = findings.as_array().unwrap().iter().filter_map(|f| f["rule"].as_str()).collect();
        assert_eq!(rules, ["unknown-claim"], "{}: {findings}", v.preset);
        assert!(findings[0]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("{} tokens never carry `{}`", v.preset, v.foreign)));
    }
}
