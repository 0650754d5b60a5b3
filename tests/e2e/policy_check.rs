//! `phantom policy check` golden tests: the fixture policy (`fixtures/policy-check`) trips every
//! error and every lint once or more; each finding's place, severity and rule id, and the exit
//! code, are pinned in all three formats. The shipped example policy trips none.

use crate::support::repo;
use std::path::Path;
use std::process::{Command, Output};

/// `(file:line:col, severity, rule)` of every finding, in order.
const GOLDEN: &[(&str, &str, &str)] = &[
    ("policies/10-errors.toml:3:1", "error", "unknown-issuer"),
    ("policies/10-errors.toml:15:1", "error", "unknown-credential"),
    ("policies/10-errors.toml:25:1", "error", "unknown-key"),
    ("policies/10-errors.toml:32:1", "error", "beyond-credential"),
    ("policies/10-errors.toml:38:1", "error", "stage-only-credential"),
    ("policies/10-errors.toml:53:1", "error", "read-only-credential"),
    ("policies/10-errors.toml:58:1", "error", "empty-claims"),
    ("policies/10-errors.toml:71:1", "error", "invalid-value"),
    ("policies/10-errors.toml:81:1", "error", "invalid-value"),
    ("policies/20-lints.toml:1:1", "warning", "mutable-identity"),
    ("policies/20-lints.toml:1:1", "warning", "no-max-uses"),
    ("policies/20-lints.toml:1:1", "warning", "no-rate"),
    ("policies/20-lints.toml:1:1", "warning", "self-hosted-publish"),
    ("policies/20-lints.toml:1:1", "warning", "unpinned-workflow"),
    ("policies/20-lints.toml:4:1", "warning", "wildcard-package"),
    ("policies/20-lints.toml:7:1", "warning", "long-ttl"),
    ("policies/20-lints.toml:9:1", "warning", "glob-identity-claim"),
    ("policies/20-lints.toml:10:1", "warning", "pull-request-writes"),
    ("policies/20-lints.toml:11:1", "warning", "unknown-claim"),
    ("policies/20-lints.toml:13:1", "warning", "unprotected-ref"),
    ("policies/20-lints.toml:23:1", "warning", "pull-request-writes"),
    ("policies/20-lints.toml:26:1", "warning", "unpinned-event"),
    ("policies/20-lints.toml:46:1", "warning", "unsatisfiable-versions"),
    ("policies/20-lints.toml:58:1", "warning", "unsatisfiable-versions"),
    ("policies/20-lints.toml:68:1", "warning", "create-under-glob"),
    ("policies/30-duplicate.toml:2:1", "error", "duplicate-grant"),
    ("policies/35-holds.toml:1:1", "error", "duplicate-approvers"),
    ("policies/35-holds.toml:6:1", "error", "invalid-value"),
    ("policies/35-holds.toml:19:1", "error", "unknown-approvers"),
    ("policies/40-syntax.toml:2:13", "error", "toml-syntax"),
];

fn check(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_phantom"))
        .args(["policy", "check", "--config", "phantom.toml"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

fn fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let from = repo().join("tests/e2e/fixtures/policy-check");
    std::fs::copy(from.join("phantom.toml"), dir.path().join("phantom.toml")).unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    for f in std::fs::read_dir(from.join("policies")).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), dir.path().join("policies").join(f.file_name())).unwrap();
    }
    dir
}

#[test]
fn every_rule_at_its_place_in_three_formats() {
    let dir = fixture();
    // Text: `file:line:col: severity[rule]: message`, then `  fix: ...`.
    let out = check(dir.path(), &[]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    let found: Vec<(String, String, String)> = text
        .lines()
        .filter(|l| l.starts_with("policies/") && l.contains(": "))
        .filter(|l| !l.starts_with("policies: "))
        .map(|l| {
            let (place, rest) = l.split_once(": ").unwrap();
            let (severity, rest) = rest.split_once('[').unwrap();
            (place.to_owned(), severity.to_owned(), rest.split(']').next().unwrap().to_owned())
        })
        .collect();
    let golden: Vec<(String, String, String)> =
        GOLDEN.iter().map(|(p, s, r)| (p.to_string(), s.to_string(), r.to_string())).collect();
    assert_eq!(found, golden, "{text}");
    assert_eq!(text.lines().filter(|l| l.starts_with("  fix: ")).count(), GOLDEN.len(), "a finding without its fix");
    assert!(text.ends_with("policies: 0 grants, 14 errors, 16 warnings\n"), "{text}");
    assert!(text.contains("policies/10-errors.toml:81:1: error[invalid-value]: grant `cargo-range`: `versions`: `>=1.0.0, <2.0.0` joins comparators with a comma (Cargo's form): npm ranges join them with a space (`>=1.0.0 <2.0.0`)"), "{text}");
    assert!(text.contains("policies/20-lints.toml:11:1: warning[unknown-claim]: grant `gh-names-only`: github tokens never carry `branch`\n"));

    // JSON: the same findings, as objects.
    let out = check(dir.path(), &["--format", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let found: Vec<(String, String, String)> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            assert!(f["message"].is_string() && f["fix"].is_string(), "{f}");
            (
                format!("{}:{}:{}", f["file"].as_str().unwrap(), f["line"], f["col"]),
                f["severity"].as_str().unwrap().to_owned(),
                f["rule"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(found, golden);

    // GitHub: one workflow command per finding, which annotates the line in a pull request.
    let out = check(dir.path(), &["--format", "github"]);
    assert_eq!(out.status.code(), Some(1));
    let commands = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = commands.lines().collect();
    assert_eq!(lines.len(), GOLDEN.len(), "{commands}");
    for (line, (place, severity, rule)) in lines.iter().zip(GOLDEN) {
        let mut at = place.split(':');
        let (file, l, c) = (at.next().unwrap(), at.next().unwrap(), at.next().unwrap());
        let head = format!("::{severity} file={file},line={l},col={c},title={rule}::");
        assert!(line.starts_with(&head), "{line} does not start with {head}");
        assert!(line.contains("(fix: "), "{line}");
    }
}

#[test]
fn exit_codes_follow_errors_and_deny_warnings() {
    // Warnings only: 0, unless warnings are denied.
    let dir = fixture();
    for f in ["10-errors.toml", "30-duplicate.toml", "35-holds.toml", "40-syntax.toml"] {
        std::fs::remove_file(dir.path().join("policies").join(f)).unwrap();
    }
    let out = check(dir.path(), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stdout).ends_with("policies: 6 grants, 0 errors, 16 warnings\n"));
    assert_eq!(check(dir.path(), &["--deny-warnings"]).status.code(), Some(1));
    assert_eq!(check(dir.path(), &["--deny-warnings", "--format", "github"]).status.code(), Some(1));

    // The shipped example: nothing to say, even with warnings denied.
    let out = Command::new(env!("CARGO_BIN_EXE_phantom"))
        .args(["policy", "check", "--config", "phantom.toml", "--deny-warnings"])
        .current_dir(repo())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "policies: 2 grants, 0 errors, 0 warnings\n");
    let json = Command::new(env!("CARGO_BIN_EXE_phantom"))
        .args(["policy", "check", "--config", "phantom.toml", "--format", "json"])
        .current_dir(repo())
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&json.stdout).trim(), "[]");
}

const TRUST_CONFIG: &str = r#"
[server]
public_url = "https://npm-broker.example.com/"
tls_cert = "s.pem"
tls_key = "k.pem"
[upstream.public]
url = "https://registry.example.com/"
scopes = ["*"]
[issuer.gh]
preset = "github"
[issuer.gl]
preset = "gitlab"
issuer = "https://gitlab.example.com"
[issuer.cc]
preset = "circleci"
issuer = "https://oidc.circleci.com/org/9f1e0000-0000-4000-8000-000000000000"
[issuer.bk]
preset = "buildkite"
[credential.cred]
upstream = "public"
source = { env = "T" }
[audit]
path = "a.jsonl"
"#;

const TRUST_POLICY: &str = r#"
[[grant]]
name = "a-github"
issuer = "gh"
packages = ["@acme/web", "@acme/web-*"]
actions = ["publish", "dist-tag"]
publish = "stage"
credential = "cred"
[grant.claims]
repository = "acme/web"
repository_id = "1"
job_workflow_ref = "acme/web/.github/workflows/release.yml@refs/heads/main"
runner_environment = "github-hosted"
environment = "npm"

[[grant]]
name = "b-gitlab"
issuer = "gl"
packages = ["@acme/tools"]
actions = ["publish"]
credential = "cred"
[grant.claims]
project_id = "42"
project_path = "acme/tools"
runner_environment = "gitlab-hosted"
ci_config_ref_uri = "gitlab.example.com/acme/tools//ci/release.yml@refs/heads/main"

[[grant]]
name = "c-circleci"
issuer = "cc"
packages = ["@acme/cli"]
actions = ["publish"]
credential = "cred"
[grant.claims]
sub = { glob = "org/9f1e0000-0000-4000-8000-000000000000/project/*" }
"oidc.circleci.com/project-id" = "5b2a7c1e-0000-4000-8000-000000000001"
"oidc.circleci.com/pipeline-definition-id" = "d3f00000-0000-4000-8000-000000000003"
"oidc.circleci.com/vcs-origin" = "github.com/acme/cli"
aud = "9f1e0000-0000-4000-8000-000000000000"

[[grant]]
name = "d-buildkite"
issuer = "bk"
packages = ["@acme/ops"]
actions = ["publish"]
credential = "cred"
[grant.claims]
organization_id = "0a1b"

[[grant]]
name = "e-self-hosted"
issuer = "gh"
packages = ["@acme/infra"]
actions = ["publish"]
credential = "cred"
[grant.claims]
repository = "acme/infra"
repository_id = "2"
job_workflow_ref = "acme/infra/.github/workflows/release.yml@refs/heads/main"
"#;

const TRUST_SCRIPT: &str = "# npm's own trusted publishing for the grants it could serve (review, then run; each asks to confirm).
# The broker keeps serving everything else: dist-tags, deprecations, agents, other CI vendors.

# grant `a-github`
# (its other actions stay with the broker: dist-tag; npm's trusted publishing covers publish only)
npm trust github @acme/web --repository acme/web --file release.yml --environment npm --allow-stage-publish
# @acme/web-*: npm trusts one package per command: run the line above for each package it covers

# grant `b-gitlab`
npm trust gitlab @acme/tools --project acme/tools --file ci/release.yml --allow-publish

# grant `c-circleci`
npm trust circleci @acme/cli --org-id 9f1e0000-0000-4000-8000-000000000000 --project-id 5b2a7c1e-0000-4000-8000-000000000001 --pipeline-definition-id d3f00000-0000-4000-8000-000000000003 --vcs-origin github.com/acme/cli --allow-publish

# grant `d-buildkite`
# not for npm: npm trusts only GitHub Actions, GitLab CI/CD and CircleCI, not buildkite

# grant `e-self-hosted`
# not for npm: npm trusts only GitHub-hosted runners: pin runner_environment = \"github-hosted\" first
";

/// `phantom policy trust` prints npm's own commands for what npm could serve, and says why not
/// for the rest; every flag it writes is one the pinned npm CLI's `npm trust` takes.
#[test]
fn policy_trust_prints_the_npm_trust_commands() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("phantom.toml"), TRUST_CONFIG).unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("policies/trust.toml"), TRUST_POLICY).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_phantom"))
        .args(["policy", "trust", "--config", "phantom.toml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), TRUST_SCRIPT);

    let npm = repo().join("tests/node/node_modules/.bin/npm");
    for line in TRUST_SCRIPT.lines().filter(|l| l.starts_with("npm trust ")) {
        let vendor = line.split_whitespace().nth(2).unwrap();
        let help = Command::new(&npm)
            .args(["trust", vendor, "--help"])
            .env("NPM_CONFIG_USERCONFIG", dir.path().join("npmrc"))
            .env("NPM_CONFIG_UPDATE_NOTIFIER", "false")
            .output()
            .unwrap();
        let usage = String::from_utf8_lossy(&help.stdout);
        for flag in line.split_whitespace().filter(|w| w.starts_with("--")) {
            assert!(usage.contains(flag), "npm trust {vendor} does not take {flag}:\n{usage}");
        }
    }
}

/// An issuer written as a vendor's own issuer URL, without `preset`, is that vendor's: the
/// fixture with GitHub's URL in place of `preset = "github"` gets exactly the same findings (every
/// GitHub lint), and a note saying which vendor was recognised; `policy trust` serves it as
/// GitHub's. A `preset` that contradicts the URL is an error.
#[test]
fn a_vendors_issuer_url_is_its_preset() {
    let json_findings = |dir: &Path| -> Vec<serde_json::Value> {
        let out = check(dir, &["--format", "json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap().as_array().unwrap().clone()
    };
    let preset = fixture();
    let url = fixture();
    let config = std::fs::read_to_string(url.path().join("phantom.toml")).unwrap();
    let by_url = config.replace(
        "[issuer.gh]\npreset = \"github\"",
        "[issuer.gh]\nissuer = \"https://token.actions.githubusercontent.com/\"",
    );
    assert_ne!(by_url, config);
    std::fs::write(url.path().join("phantom.toml"), &by_url).unwrap();
    let (with_preset, with_url) = (json_findings(preset.path()), json_findings(url.path()));
    let github_rules = [
        "mutable-identity",
        "pull-request-writes",
        "unpinned-event",
        "unpinned-workflow",
        "self-hosted-publish",
        "unknown-claim",
    ];
    for rule in github_rules {
        assert!(with_url.iter().any(|f| f["rule"] == rule), "no {rule} for GitHub's issuer URL: {with_url:?}");
    }
    let (notes, rest): (Vec<_>, Vec<_>) = with_url.into_iter().partition(|f| f["severity"] == "note");
    assert_eq!(rest, with_preset, "GitHub's URL is linted otherwise than preset = \"github\"");
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert_eq!(
        (notes[0]["file"].as_str(), notes[0]["line"].as_u64(), notes[0]["rule"].as_str()),
        (Some("phantom.toml"), Some(10), Some("recognised-issuer"))
    );
    assert!(notes[0]["message"].as_str().unwrap().contains("is the issuer of GitHub Actions"), "{}", notes[0]);
    let text = String::from_utf8(check(url.path(), &[]).stdout).unwrap();
    assert!(text.starts_with("phantom.toml:10:1: note[recognised-issuer]: issuer `gh`: https://token.actions.githubusercontent.com/ is the issuer of GitHub Actions"), "{text}");
    assert!(text.ends_with("policies: 0 grants, 14 errors, 16 warnings, 1 note\n"), "{text}");
    let github = String::from_utf8(check(url.path(), &["--format", "github"]).stdout).unwrap();
    assert!(github.starts_with("::notice file=phantom.toml,line=10,col=1,title=recognised-issuer::"), "{github}");

    // `policy trust` serves it as GitHub's.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("phantom.toml"),
        TRUST_CONFIG.replace(
            "[issuer.gh]\npreset = \"github\"",
            "[issuer.gh]\nissuer = \"https://token.actions.githubusercontent.com\"",
        ),
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("policies/trust.toml"), TRUST_POLICY).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_phantom"))
        .args(["policy", "trust", "--config", "phantom.toml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), TRUST_SCRIPT);

    // A preset that says another vendor than the URL is refused.
    std::fs::write(
        url.path().join("phantom.toml"),
        by_url.replace("[issuer.gh]\n", "[issuer.gh]\npreset = \"gitlab\"\n"),
    )
    .unwrap();
    let out = check(url.path(), &[]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("`issuer.gh.preset`: `gitlab` contradicts the issuer URL https://token.actions.githubusercontent.com/, which is the issuer of GitHub Actions (preset `github`)"), "{said}");
}

/// The worked examples for the other CI vendors (docs/ci.md) are real: each `toml` block that
/// declares an issuer and a grant, added to the shipped config and policy, checks clean with
/// warnings denied.
#[test]
fn the_ci_docs_vendor_examples_check_clean() {
    let readme = std::fs::read_to_string(repo().join("docs/ci.md")).unwrap();
    let blocks: Vec<&str> = readme
        .split("```toml\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .filter(|b| b.contains("[issuer.") && b.contains("[[grant]]"))
        .collect();
    let issuers: Vec<&str> = blocks
        .iter()
        .filter_map(|b| b.lines().find_map(|l| l.strip_prefix("preset = \"")?.strip_suffix('"')))
        .collect();
    assert_eq!(issuers, ["gitlab", "circleci", "buildkite"], "docs/ci.md's vendor examples");

    let dir = tempfile::tempdir().unwrap();
    let mut config = std::fs::read_to_string(repo().join("phantom.toml")).unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::copy(repo().join("policies/acme.toml"), dir.path().join("policies/acme.toml")).unwrap();
    for (block, vendor) in blocks.iter().zip(&issuers) {
        let (issuer, grant) = block.split_at(block.find("[[grant]]").unwrap());
        config.push('\n');
        config.push_str(issuer);
        std::fs::write(dir.path().join(format!("policies/{vendor}.toml")), grant).unwrap();
    }
    std::fs::write(dir.path().join("phantom.toml"), config).unwrap();
    let out = check(dir.path(), &["--deny-warnings"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(text, "policies: 5 grants, 0 errors, 0 warnings\n");
}

/// A GitHub grant with nothing to lint, and a GitLab one: each case below edits one of them.
const CLEAN_GITHUB: &str = r#"[[grant]]
name = "g"
issuer = "gh"
packages = ["@acme/web"]
actions = ["publish"]
credential = "cred"
ttl = "10m"
max_uses = 3
rate = "5/1h"
[grant.claims]
repository_id = "1"
job_workflow_ref = "acme/web/.github/workflows/release.yml@refs/heads/main"
event_name = "push"
runner_environment = "github-hosted"
"#;

const CLEAN_GITLAB: &str = r#"[[grant]]
name = "g"
issuer = "gl"
packages = ["@acme/tools"]
actions = ["publish"]
credential = "cred"
ttl = "10m"
max_uses = 3
rate = "5/1h"
[grant.claims]
project_id = "42"
ref_protected = "true"
runner_environment = "gitlab-hosted"
"#;

/// Every lint, with an edit of a clean grant that triggers it and a near miss that must not:
/// `(rule, base, replace, with (triggers), with (does not))`.
const LINT_PAIRS: &[(&str, &str, &str, &str, &str)] = &[
    (
        "mutable-identity",
        CLEAN_GITHUB,
        "repository_id = \"1\"",
        "repository = \"acme/web\"",
        "repository = \"acme/web\"\nrepository_owner_id = \"4242\"",
    ),
    (
        "pull-request-writes",
        CLEAN_GITHUB,
        "event_name = \"push\"",
        "event_name = [\"push\", \"pull_request_target\"]",
        "event_name = [\"push\", \"workflow_dispatch\"]",
    ),
    (
        "pull-request-writes",
        CLEAN_GITLAB,
        "ref_protected",
        "pipeline_source = \"merge_request_event\"\nref_protected",
        "pipeline_source = [\"push\", \"web\"]\nref_protected",
    ),
    ("unpinned-event", CLEAN_GITHUB, "event_name = \"push\"\n", "", "event_name = \"release\"\n"),
    // Reads need no workflow pin: only writes do.
    (
        "unpinned-workflow",
        CLEAN_GITHUB,
        "job_workflow_ref = \"acme/web/.github/workflows/release.yml@refs/heads/main\"\n",
        "",
        "actions = [\"read\"]\n",
    ),
    (
        "self-hosted-publish",
        CLEAN_GITHUB,
        "runner_environment = \"github-hosted\"",
        "runner_environment = \"self-hosted\"",
        "runner_environment = [\"github-hosted\"]",
    ),
    (
        "self-hosted-publish",
        CLEAN_GITLAB,
        "runner_environment = \"gitlab-hosted\"",
        "runner_environment = \"self-hosted\"",
        "runner_environment = \"gitlab-hosted\"\nref = \"main\"",
    ),
    (
        "unprotected-ref",
        CLEAN_GITLAB,
        "ref_protected = \"true\"",
        "ref_protected = \"false\"",
        "ref_protected = [\"true\"]",
    ),
    ("wildcard-package", CLEAN_GITHUB, "packages = [\"@acme/web\"]", "packages = [\"*\"]", "packages = [\"@acme/*\"]"),
    ("long-ttl", CLEAN_GITHUB, "ttl = \"10m\"", "ttl = \"2h\"", "ttl = \"1h\""),
    // Without max_uses, a grant that only reads is fine; one that writes is not.
    ("no-max-uses", CLEAN_GITHUB, "max_uses = 3\nrate = \"5/1h\"\n", "rate = \"5/1h\"\n", "actions = [\"read\"]\n"),
    // rate is asked of publishing grants only.
    ("no-rate", CLEAN_GITHUB, "rate = \"5/1h\"\n", "", "actions = [\"dist-tag\"]\n"),
    (
        "glob-identity-claim",
        CLEAN_GITHUB,
        "repository_id = \"1\"",
        "repository_id = { glob = \"1*\" }",
        "repository_id = \"1\"\nref = { glob = \"refs/tags/v*\" }",
    ),
    (
        "unknown-claim",
        CLEAN_GITHUB,
        "event_name = \"push\"",
        "event_name = \"push\"\nbranch = \"main\"",
        "event_name = \"push\"\nref = \"refs/heads/main\"",
    ), // An npm range whose comparators have nothing in common, and one that takes no prerelease
    // from a grant that publishes only prereleases.
    (
        "unsatisfiable-versions",
        CLEAN_GITHUB,
        "max_uses = 3",
        "max_uses = 3\nversions = \"1.2.3 1.2.4\"",
        "max_uses = 3\nversions = \"1.2.3 || 1.2.4\"",
    ),
    (
        "unsatisfiable-versions",
        CLEAN_GITHUB,
        "max_uses = 3",
        "max_uses = 3\nversions = \"^1.2.0\"\nprerelease_only = true",
        "max_uses = 3\nversions = \">=1.2.0-0 <1.3.0\"\nprerelease_only = true",
    ),
    (
        "create-under-glob",
        CLEAN_GITHUB,
        "packages = [\"@acme/web\"]",
        "packages = [\"@acme/web-*\"]\ncreate = true",
        "packages = [\"@acme/web\"]\ncreate = true",
    ),
];

/// The rules `policy check --format json` reports for one policy file.
fn rules_for(policy: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("phantom.toml"), TRUST_CONFIG).unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("policies/p.toml"), policy).unwrap();
    let out = check(dir.path(), &["--format", "json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    });
    json.as_array().unwrap().iter().map(|f| f["rule"].as_str().unwrap().to_owned()).collect()
}

/// Each lint fires on the mistake it names and stays quiet on the nearest correct grant.
#[test]
fn each_lint_fires_on_its_mistake_and_not_on_the_near_miss() {
    assert_eq!(rules_for(CLEAN_GITHUB), Vec::<String>::new());
    assert_eq!(rules_for(CLEAN_GITLAB), Vec::<String>::new());
    for (rule, base, from, bad, near) in LINT_PAIRS {
        assert!(base.contains(from), "{rule}: the base has no `{from}`");
        // An `actions` edit goes where the grant's own `actions` was.
        let edit = |with: &str| {
            if with.starts_with("actions = ") {
                base.replacen(from, "", 1).replacen("actions = [\"publish\"]", with.trim_end(), 1)
            } else {
                base.replacen(from, with, 1)
            }
        };
        let fired = rules_for(&edit(bad));
        assert_eq!(fired, [rule.to_string()], "{rule} should fire (alone) on:\n{}", edit(bad));
        let quiet = rules_for(&edit(near));
        assert_eq!(quiet, Vec::<String>::new(), "{rule}'s near miss should pass clean:\n{}", edit(near));
    }
    // Every lint of the rule list has a pair.
    let lints: std::collections::BTreeSet<&str> = LINT_PAIRS.iter().map(|p| p.0).collect();
    let golden: std::collections::BTreeSet<&str> = GOLDEN.iter().filter(|g| g.1 == "warning").map(|g| g.2).collect();
    assert_eq!(lints, golden);
}
