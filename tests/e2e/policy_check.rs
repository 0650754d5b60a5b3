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
    ("policies/30-duplicate.toml:2:1", "error", "duplicate-grant"),
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
    assert!(text.ends_with("policies: 0 grants, 10 errors, 13 warnings\n"), "{text}");
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
    for f in ["10-errors.toml", "30-duplicate.toml", "40-syntax.toml"] {
        std::fs::remove_file(dir.path().join("policies").join(f)).unwrap();
    }
    let out = check(dir.path(), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stdout).ends_with("policies: 3 grants, 0 errors, 13 warnings\n"));
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
