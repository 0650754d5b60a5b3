//! People in the loop: a person signs in with the organisation's OpenID Connect provider (a real
//! one on loopback, node-oidc-provider, device flow) and hands an agent a phantom narrowed to
//! what it needs.

use crate::support::people::Idp;
use crate::support::{dev_certs, text, Options, World, DEFAULT_POLICY};

const PEOPLE_POLICY: &str = r#"
[[grant]]
name = "web-team"
issuer = "corp"
packages = ["@acme/*"]
actions = ["publish", "dist-tag"]
create = true
credential = "verdaccio-publisher"
ttl = "10m"
[grant.claims]
groups = "web-team"
"#;

fn people_world(dir: &std::path::Path, policy: &str, proxy: bool) -> (Idp, World) {
    let certs = dev_certs(&dir.join("certs"));
    let idp = Idp::start(&dir.join("idp"), &certs);
    let opts = Options {
        policy: format!("{DEFAULT_POLICY}\n{policy}"),
        extra: idp.issuer_config(),
        certs: Some(certs),
        proxy,
        ..Options::default()
    };
    (idp, World::start_with(opts))
}

/// `phantom login --device`: the person signs in, the CLI exchanges their ID token for a phantom
/// narrowed to one package and `publish`, and writes an agent's .npmrc for the forward proxy;
/// the unmodified npm CLI, as the agent, publishes with it and can do nothing more. A person
/// outside the grant's group gets nothing; the broker lists the issuer people sign in with.
#[test]
fn a_person_signs_in_and_hands_an_agent_a_narrowed_phantom() {
    let tmp = tempfile::tempdir().unwrap();
    let (idp, w) = people_world(tmp.path(), PEOPLE_POLICY, true);
    let proxy = w.proxy.as_ref().unwrap();

    let listed = w.http.request("GET", &format!("{}-/phantom/v1/issuers", w.broker.url), &[], "");
    assert_eq!(listed.status, 200, "{}", listed.text());
    let issuers = listed.json()["issuers"].clone();
    assert_eq!(issuers.as_array().map(Vec::len), Some(1), "only issuers with a device client: {issuers}");
    assert_eq!(issuers[0]["name"], "corp");
    assert_eq!(issuers[0]["client_id"], "phantom-cli");
    assert_eq!(issuers[0]["issuer"], idp.url.as_str());

    let npmrc = w.root().join("agent-npmrc");
    let (ca, proxy_ca, npmrc_arg) =
        (w.certs.ca.display().to_string(), proxy.ca.display().to_string(), npmrc.display().to_string());
    let login = |who: &str, packages: &str| {
        let args = [
            "login",
            "--broker",
            &w.broker.url,
            "--device",
            "--issuer",
            "corp",
            "--packages",
            packages,
            "--actions",
            "publish",
            "--ttl",
            "5m",
            "--proxy",
            &proxy.url,
            "--registry",
            &w.upstream_url,
            "--proxy-ca",
            &proxy_ca,
            "--ca-file",
            &ca,
            "--npmrc",
            &npmrc_arg,
        ];
        let out = idp.run_signed_in(&args, who);
        w.record_output(&out);
        out
    };
    let out = login("alice", "@acme/agent-tool");
    let printed = text(&out);
    assert!(out.status.success(), "{printed}");
    assert!(printed.contains("to sign in, open") && printed.contains("enter the code"), "{printed}");
    assert!(printed.contains("@acme/agent-tool (publish)"), "narrowed as asked: {printed}");
    let written = std::fs::read_to_string(&npmrc).unwrap();
    let phantom = written.lines().find_map(|l| l.split_once("_authToken=").map(|(_, t)| t.to_owned())).unwrap();
    assert!(phantom.starts_with("phm_"), "{written}");
    let lines: Vec<&str> = printed.lines().filter_map(|l| l.strip_prefix("  ")).collect();
    std::fs::write(&npmrc, format!("{written}{}\n", lines.join("\n"))).unwrap();

    // The agent publishes the one package it was given, through the forward proxy.
    let pkg = w.package("@acme/agent-tool", "1.0.0");
    let out = w.npm_with(&npmrc, &pkg, &["publish"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(w.upstream_packument("@acme/agent-tool").status, 200);
    // Nothing more: another package of the grant, or an action the person did not hand over.
    let other = w.package("@acme/web", "1.0.0");
    let out = w.npm_with(&npmrc, &other, &["publish"]);
    assert!(!out.status.success(), "a package outside the phantom was published");
    assert_eq!(w.upstream_packument("@acme/web").status, 404);
    let out = w.npm_with(&npmrc, &pkg, &["dist-tag", "add", "@acme/agent-tool@1.0.0", "next"]);
    assert!(!out.status.success(), "a dist-tag move the phantom was not given: {}", text(&out));

    // The person cannot ask for more than their grant: outside it, the exchange is refused.
    let out = login("alice", "left-pad");
    assert!(!out.status.success());
    assert!(text(&out).contains("refused the exchange (403"), "{}", text(&out));
    // Nor can a person outside the grant's group.
    let out = login("bob", "@acme/agent-tool");
    assert!(!out.status.success() && text(&out).contains("403"), "{}", text(&out));

    let audit = w.broker.audit_lines();
    let minted: Vec<_> = audit.iter().filter(|l| l["event"] == "exchange" && l["decision"] == "allow").collect();
    assert_eq!(minted.len(), 1, "one phantom for a person");
    assert_eq!(minted[0]["identity"]["sub"], "alice");
    assert_eq!(minted[0]["identity"]["email"], "alice@people.test");
    assert_eq!(minted[0]["grant"], "web-team");
    let publish = audit.iter().find(|l| l["action"] == "publish" && l["decision"] == "allow").unwrap();
    assert_eq!((&publish["via"], &publish["identity"]["sub"]), (&"proxy".into(), &"alice".into()));

    let issued = idp.issued();
    assert_eq!(issued.len(), 3, "three sign-ins, three ID tokens");
    let mut canaries: Vec<&str> = issued.iter().map(String::as_str).collect();
    canaries.push(&phantom);
    w.assert_secrets_contained(&canaries);
}
