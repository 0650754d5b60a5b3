//! The `phantom` command line: the shipped example config, policy checks and explanations,
//! audit verification and development certificates.

use std::path::Path;
use std::process::{Command, Output};

fn phantom(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_phantom")).args(args).current_dir(cwd).output().unwrap()
}

fn all(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_shipped_example_config_and_policy_are_valid() {
    let out = phantom(&["policy", "check", "--config", "phantom.toml"], repo());
    assert!(out.status.success(), "{}", all(&out));
    assert!(all(&out).contains("2 grants, 0 errors, 0 warnings"), "{}", all(&out));
    // The container's config (deploy/), with the same policies mounted beside it.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(repo().join("deploy/phantom.toml"), dir.path().join("phantom.toml")).unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    for f in std::fs::read_dir(repo().join("policies")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, dir.path().join("policies").join(f.file_name().unwrap())).unwrap();
    }
    let out = phantom(&["policy", "check", "--config", "phantom.toml"], dir.path());
    assert!(out.status.success() && all(&out).contains("2 grants, 0 errors, 0 warnings"), "{}", all(&out));
}

#[test]
fn policy_check_names_the_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = std::fs::read_to_string(repo().join("phantom.toml")).unwrap();
    std::fs::write(dir.path().join("phantom.toml"), &config).unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    let policy = std::fs::read_to_string(repo().join("policies/acme.toml")).unwrap();

    let bad = policy.replacen("ref = \"refs/heads/main\"", "ref = { regex = \"refs/heads/.*\" }", 1);
    std::fs::write(dir.path().join("policies/acme.toml"), bad).unwrap();
    let out = phantom(&["policy", "check"], dir.path());
    assert!(!out.status.success());
    let text = all(&out);
    assert!(text.contains("policies/acme.toml") && text.contains("unknown key `regex`"), "{text}");

    let bad = policy.replacen("issuer = \"github\"", "issuer = \"gitlab\"", 1);
    std::fs::write(dir.path().join("policies/acme.toml"), bad).unwrap();
    let text = all(&phantom(&["policy", "check"], dir.path()));
    assert!(text.contains("grant `acme-web-release`: `issuer`: `gitlab` is not a configured issuer"), "{text}");

    std::fs::write(dir.path().join("policies/acme.toml"), &policy).unwrap();
    std::fs::write(dir.path().join("phantom.toml"), config.replacen("[audit]", "[audit]\nrotate = true", 1)).unwrap();
    let text = all(&phantom(&["policy", "check"], dir.path()));
    assert!(text.contains("phantom.toml") && text.contains("unknown field `rotate`"), "{text}");
}

#[test]
fn policy_explain_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let claims = dir.path().join("claims.json");
    let base = serde_json::json!({
        "iss": "https://token.actions.githubusercontent.com", "repository_id": "123456789",
        "repository_owner_id": "4242", "repository": "acme/web", "ref": "refs/heads/main",
        "event_name": "push", "runner_environment": "github-hosted",
        "job_workflow_ref": "acme/web/.github/workflows/release.yml@refs/heads/main",
    });
    std::fs::write(&claims, base.to_string()).unwrap();
    let claims_arg = claims.to_str().unwrap();
    let args = [
        "policy",
        "explain",
        "--config",
        "phantom.toml",
        "--claims",
        claims_arg,
        "--package",
        "@acme/web-ui",
        "--action",
        "publish",
    ];
    let out = phantom(&args, repo());
    assert!(out.status.success(), "{}", all(&out));
    assert!(all(&out).contains("allow  acme-web-release"));
    // The shipped grant stages its publishes, at a rate.
    assert!(all(&out).contains("staged: `npm publish` goes upstream as `npm stage publish`"), "{}", all(&out));
    assert!(
        all(&out).contains("at most 5 writes per package every 3600s, shared by every identity the grant admits"),
        "{}",
        all(&out)
    );
    // It publishes only packages the upstream has: a first publish (package creation) is denied.
    assert!(all(&out).contains("only packages the upstream already has"), "{}", all(&out));
    let out = phantom(&[&args[..], &["--new-package"]].concat(), repo());
    assert!(!out.status.success(), "{}", all(&out));
    let denial = "deny   acme-web-release: package creation not allowed by grant `acme-web-release`";
    assert!(all(&out).contains(denial), "{}", all(&out));

    let mut pr = base.clone();
    pr["event_name"] = "pull_request".into();
    std::fs::write(&claims, pr.to_string()).unwrap();
    let out = phantom(&args, repo());
    assert!(!out.status.success());
    assert!(all(&out).contains("deny   acme-web-release: claim `event_name` does not match"), "{}", all(&out));
}

#[test]
fn audit_verify_names_the_altered_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let audit = phantom_broker::audit::Audit::open(&path, b"key").unwrap();
    for i in 0..5 {
        let rec = phantom_broker::audit::Record {
            event: phantom_broker::audit::Event::Request,
            request_id: format!("r{i}"),
            decision: phantom_broker::audit::Decision::Allow,
            status: 201,
            ..Default::default()
        };
        audit.write(&rec).unwrap();
    }
    let p = path.to_str().unwrap();
    let out = phantom(&["audit", "verify", p], dir.path());
    assert!(out.status.success(), "{}", all(&out));
    assert!(all(&out).contains("intact, 5 lines"));

    let text = std::fs::read_to_string(&path).unwrap();
    let altered = text.replacen("\"status\":201", "\"status\":403", 3);
    let third = altered.lines().nth(2).unwrap().to_owned();
    let mut lines: Vec<&str> = text.lines().collect();
    lines[2] = &third;
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let out = phantom(&["audit", "verify", p], dir.path());
    assert!(!out.status.success());
    assert!(all(&out).contains("line 3: its hash does not match"), "{}", all(&out));
}

#[test]
fn certs_dev_writes_a_ca_and_a_server_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let out = phantom(&["certs", "dev", "--out", "c", "--san", "broker.internal"], dir.path());
    assert!(out.status.success(), "{}", all(&out));
    for f in ["ca.pem", "ca-key.pem", "server.pem", "server-key.pem"] {
        assert!(dir.path().join("c").join(f).exists(), "{f}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("c/server-key.pem")).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the private key is readable by others");
    }
    let again = phantom(&["certs", "dev", "--out", "c"], dir.path());
    assert!(!again.status.success() && all(&again).contains("--force"));
}

/// Logs a shipper can read: with stderr not a terminal (a file here), every line the broker
/// writes is one JSON object with a timestamp, a level, a target and its fields, and no secret;
/// `--log-format text` gives a person's lines instead.
#[test]
fn logs_are_json_lines_off_a_terminal() {
    use crate::support::{World, DEFAULT_POLICY};
    let mut w = World::start(DEFAULT_POLICY);
    w.login("pb-logs", "publish");
    let pkg = w.package("pb-logs", "1.0.0");
    assert!(w.npm(&pkg, &["publish"], None).status.success());
    // For a person (`--log-format text`), `serve` says where it listens on stdout.
    let config = std::fs::read_to_string(&w.broker.config).unwrap();
    let (port, admin) = (crate::support::free_port(), crate::support::free_port());
    let admin_port = w.broker.admin_url.trim_end_matches('/').rsplit(':').next().unwrap().to_owned();
    let text_config = w.broker.dir.join("text-mode.toml");
    std::fs::write(
        &text_config,
        config
            .replace(&format!("127.0.0.1:{}\"", w.broker.port), &format!("127.0.0.1:{port}\""))
            .replace(&format!("127.0.0.1:{admin_port}\""), &format!("127.0.0.1:{admin}\""))
            .replace("audit/phantom.jsonl", "audit/text-mode.jsonl"),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_phantom"))
        .args(["--log-format", "text", "serve", "--config"])
        .arg(&text_config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let person = crate::support::Proc::new(child);
    let line = crate::support::first_line(stdout, std::time::Duration::from_secs(20));
    assert_eq!(line.as_deref(), Some(format!("phantom: listening on https://127.0.0.1:{port}/").as_str()));
    drop(person);

    w.broker.terminate(std::time::Duration::from_secs(10)).expect("the broker stops");
    let log = std::fs::read_to_string(w.broker.dir.join("broker.log")).unwrap();
    let lines: Vec<serde_json::Value> =
        log.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}"))).collect();
    assert!(lines.len() > 3, "{log}");
    for l in &lines {
        assert!(l["timestamp"].is_string() && l["level"].is_string() && l["target"].is_string(), "{l}");
    }
    // Fields are fields, not text inside the message; the line that says where it listens too.
    assert!(lines.iter().any(|l| l["message"] == "listening" && l["grants"].is_number()), "{log}");
    assert!(lines.iter().any(|l| l["message"] == "listening" && l["url"] == w.broker.url.as_str()), "{log}");
    assert!(lines.iter().any(|l| l["message"] == "shutting down"), "{log}");
    assert!(!log.contains(&w.verdaccio.token) && !log.contains("phm_"), "a secret is in the log");

    // `serve` in JSON mode (asked for, or off a terminal): every line on stderr is JSON, its last
    // error too, and nothing goes to stdout. A one-shot command's error stays a person's line.
    let dir = tempfile::tempdir().unwrap();
    for args in [&["--log-format", "json", "serve", "--config", "nope.toml"][..], &["serve", "--config", "nope.toml"]] {
        let out = phantom(args, dir.path());
        assert!(!out.status.success() && out.stdout.is_empty(), "{args:?}: {}", all(&out));
        let stderr = String::from_utf8(out.stderr).unwrap();
        let lines: Vec<serde_json::Value> =
            stderr.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
        assert!(
            lines
                .iter()
                .any(|l| l["level"] == "ERROR"
                    && l["error"].as_str().is_some_and(|e| e.contains("nope.toml: cannot read"))),
            "{stderr}"
        );
    }
    let out = phantom(&["policy", "check", "--config", "nope.toml"], dir.path());
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("phantom: nope.toml: cannot read"), "{}", all(&out));
    let out = phantom(&["--log-format", "text", "certs", "dev", "--out", "x"], dir.path());
    assert!(out.status.success(), "{}", all(&out));
    let out = phantom(&["--log-format", "yaml", "certs", "dev"], dir.path());
    assert!(!out.status.success() && all(&out).contains("possible values: text, json"), "{}", all(&out));
}
