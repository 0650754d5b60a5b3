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
    // The agent's whole setup for the forward proxy is in its .npmrc.
    for line in
        [format!("registry={}", w.upstream_url), format!("https-proxy={}", proxy.url), format!("cafile={proxy_ca}")]
    {
        assert!(written.lines().any(|l| l == line), "no `{line}` in: {written}");
    }

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

const HELD_POLICY: &str = r#"
[approvers.release-managers]
issuer = "corp"
claims = { groups = "release-managers" }
required = 2

[approvers.quick]
issuer = "corp"
claims = { groups = "release-managers" }
hold_ttl = "2s"

[[grant]]
name = "held-ci"
issuer = "github"
packages = ["@held/app"]
actions = ["publish", "dist-tag", "deprecate"]
create = true
credential = "verdaccio-publisher"
hold = "release-managers"
[grant.claims]
repository_id = "123456789"

[[grant]]
name = "held-person"
issuer = "corp"
packages = ["@held/mine"]
actions = ["publish"]
create = true
credential = "verdaccio-publisher"
hold = "release-managers"
[grant.claims]
groups = "web-team"

[[grant]]
name = "quick-ci"
issuer = "github"
packages = ["@held/quick"]
actions = ["publish"]
create = true
credential = "verdaccio-publisher"
hold = "quick"
[grant.claims]
repository_id = "123456789"
"#;

/// The hold id an npm notice named.
fn hold_id(out: &std::process::Output) -> String {
    let printed = text(out);
    let at = printed.find("(hold ").unwrap_or_else(|| panic!("no hold id in: {printed}"));
    let id = &printed[at + 6..at + 30];
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{printed}");
    id.to_owned()
}

/// `phantom <verb> [ID]` as `who`, signed in with the device flow.
fn person(idp: &Idp, w: &World, broker: &str, who: &str, verb: &str, id: Option<&str>) -> std::process::Output {
    let ca = w.certs.ca.display().to_string();
    let mut args = vec![verb];
    args.extend(id);
    args.extend(["--broker", broker, "--issuer", "corp", "--ca-file", &ca]);
    let out = idp.run_signed_in(&args, who);
    w.record_output(&out);
    out
}

/// A held write waits for two distinct release managers, then exactly its checked bytes reach
/// Verdaccio, once; the requester, one person twice, a non-approver, a rejection and an expiry
/// each do what a two-person rule must. A held dist-tag move likewise.
#[test]
fn held_writes_wait_for_two_distinct_people() {
    let tmp = tempfile::tempdir().unwrap();
    let (idp, w) = people_world(tmp.path(), HELD_POLICY, false);
    let url = w.broker.url.clone();
    let says = |out: &std::process::Output, what: &str| {
        assert!(text(out).contains(what), "expected {what:?} in: {}", text(out));
    };

    // A CI job publishes: npm is told it is held, and nothing reaches Verdaccio.
    let pkg = w.package("@held/app", "1.0.0");
    let out = w.npm(&pkg, &["publish"], Some(&serde_json::json!({})));
    assert!(out.status.success(), "{}", text(&out));
    says(&out, "held for approval");
    let id = hold_id(&out);
    assert_eq!(w.upstream_packument("@held%2fapp").status, 404, "a held publish reached the registry");

    let out = person(&idp, &w, &url, "bob", "holds", None);
    assert!(out.status.success(), "{}", text(&out));
    says(&out, &format!("{id}  publish @held/app@1.0.0 by repo:acme/web"));
    let out = person(&idp, &w, &url, "alice", "approve", Some(&id));
    assert!(!out.status.success());
    says(&out, "403");
    says(&out, "not one of the hold's approvers");
    let out = person(&idp, &w, &url, "bob", "approve", Some(&id));
    assert!(out.status.success(), "{}", text(&out));
    says(&out, "held (1 of 2 approvals)");
    let out = person(&idp, &w, &url, "bob", "approve", Some(&id));
    says(&out, "409");
    says(&out, "approved it already");
    assert_eq!(w.upstream_packument("@held%2fapp").status, 404, "one person's two approvals released it");
    let out = person(&idp, &w, &url, "carol", "approve", Some(&id));
    assert!(out.status.success(), "{}", text(&out));
    says(&out, "forwarded (2 of 2 approvals; the registry answered 201)");
    let packument = w.upstream_packument("@held%2fapp");
    assert_eq!(packument.status, 200);
    let out = person(&idp, &w, &url, "dave", "approve", Some(&id));
    says(&out, "409");
    says(&out, "is forwarded");

    // Exactly the checked bytes, once: Verdaccio's tarball is the one npm declared, and the
    // forward sent the bytes the hold kept.
    let doc = packument.json();
    assert_eq!(doc["versions"].as_object().unwrap().len(), 1);
    let tarball = doc["versions"]["1.0.0"]["dist"]["tarball"].as_str().unwrap().to_owned();
    let tarball = tarball.replacen(&w.broker.url, &w.verdaccio.url, 1);
    let bytes = w.http.request("GET", &tarball, &[], "").body;
    let sha512 = ring::digest::digest(&ring::digest::SHA512, &bytes);
    let integrity = format!("sha512-{}", base64::Engine::encode(&base64::engine::general_purpose::STANDARD, sha512));
    assert_eq!(doc["versions"]["1.0.0"]["dist"]["integrity"], integrity.as_str());
    let audit = w.broker.audit_lines();
    let of = |step: &str| -> Vec<&serde_json::Value> {
        audit.iter().filter(|l| l["hold"]["id"] == id.as_str() && l["hold"]["step"] == step).collect()
    };
    let (held, forwarded) = (of("held"), of("forwarded"));
    assert_eq!((held.len(), forwarded.len()), (1, 1), "one hold, one forward");
    assert_eq!(held[0]["decision"], "held");
    assert_eq!(forwarded[0]["upstream_status"], 201);
    assert_eq!(forwarded[0]["identity"]["sub"], "repo:acme/web:ref:refs/heads/main", "the requester");
    let approvers: Vec<&str> = forwarded[0]["hold"]["approved_by"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["identity"]["sub"].as_str().unwrap())
        .collect();
    assert_eq!(approvers, ["bob", "carol"]);
    let approved: Vec<_> = of("approve").into_iter().filter(|l| l["decision"] == "allow").collect();
    assert_eq!(approved.len(), 2, "each approval on record");
    assert_eq!(approved[0]["hold"]["requester"]["sub"], "repo:acme/web:ref:refs/heads/main");
    assert!(
        audit.iter().any(|l| l["hold"]["id"] == id.as_str()
            && l["reason"].as_str().is_some_and(|r| r.contains("approved it already"))),
        "the second approval by one person is on record"
    );
    assert!(forwarded[0]["upstream_bytes"].as_u64().is_some_and(|n| n > 1000), "{:?}", forwarded[0]);

    // A held dist-tag move, with a phantom from `phantom login`.
    w.login("@held/app", "dist-tag,deprecate");
    let dir = w.root().join("tagging");
    std::fs::create_dir_all(&dir).unwrap();
    let out = w.npm(&dir, &["dist-tag", "add", "@held/app@1.0.0", "next"], None);
    assert!(out.status.success(), "{}", text(&out));
    let tag_id = hold_id(&out);
    assert!(w.upstream_packument("@held%2fapp").json()["dist-tags"].get("next").is_none());
    assert!(person(&idp, &w, &url, "dave", "approve", Some(&tag_id)).status.success());
    let out = person(&idp, &w, &url, "bob", "approve", Some(&tag_id));
    says(&out, "forwarded");
    assert_eq!(w.upstream_packument("@held%2fapp").json()["dist-tags"]["next"], "1.0.0");

    // A held deprecate: the whole packument npm sends back is compared with the registry's when
    // it is held and again when it is released.
    let out = w.npm(&dir, &["deprecate", "@held/app@1.0.0", "use 2.x"], None);
    assert!(out.status.success(), "{}", text(&out));
    let dep_id = hold_id(&out);
    assert!(w.upstream_packument("@held%2fapp").json()["versions"]["1.0.0"].get("deprecated").is_none());
    assert!(person(&idp, &w, &url, "carol", "approve", Some(&dep_id)).status.success());
    says(&person(&idp, &w, &url, "dave", "approve", Some(&dep_id)), "forwarded");
    assert_eq!(w.upstream_packument("@held%2fapp").json()["versions"]["1.0.0"]["deprecated"], "use 2.x");

    // A person's own held write: they cannot approve it; a rejection ends it.
    let npmrc = w.root().join("dave-npmrc");
    std::fs::write(&npmrc, format!("registry={}\ncafile={}\n", w.broker.url, w.certs.ca.display())).unwrap();
    let ca = w.certs.ca.display().to_string();
    let args = [
        "login",
        "--broker",
        &url,
        "--device",
        "--issuer",
        "corp",
        "--packages",
        "@held/mine",
        "--actions",
        "publish",
        "--ca-file",
        &ca,
        "--npmrc",
        npmrc.to_str().unwrap(),
    ];
    let out = idp.run_signed_in(&args, "dave");
    w.record_output(&out);
    assert!(out.status.success(), "{}", text(&out));
    let mine = w.package("@held/mine", "1.0.0");
    let out = w.npm_with(&npmrc, &mine, &["publish"]);
    assert!(out.status.success(), "{}", text(&out));
    let own = hold_id(&out);
    let out = person(&idp, &w, &url, "dave", "approve", Some(&own));
    says(&out, "403");
    says(&out, "requester of a held write may not approve it");
    let out = person(&idp, &w, &url, "bob", "holds", None);
    says(&out, &own);
    assert!(person(&idp, &w, &url, "bob", "reject", Some(&own)).status.success());
    let out = person(&idp, &w, &url, "carol", "approve", Some(&own));
    says(&out, "is rejected");
    assert_eq!(w.upstream_packument("@held%2fmine").status, 404);

    // An expired hold (hold_ttl 2s) cannot be approved.
    let quick = w.package("@held/quick", "1.0.0");
    let out = w.npm(&quick, &["publish"], Some(&serde_json::json!({})));
    let late = hold_id(&out);
    std::thread::sleep(std::time::Duration::from_secs(3));
    let out = person(&idp, &w, &url, "bob", "approve", Some(&late));
    says(&out, "410");
    assert_eq!(w.upstream_packument("@held%2fquick").status, 404);

    // The operator's view: every hold and its state; a rejection of a finished one is refused.
    let listed = w.admin("GET", "/admin/v1/holds", serde_json::Value::Null).json();
    let state = |hid: &str| {
        listed["holds"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["id"] == hid)
            .map(|h| h["state"].as_str().unwrap().to_owned())
    };
    assert_eq!(
        [state(&id), state(&tag_id), state(&own), state(&late)].map(Option::unwrap),
        ["forwarded", "forwarded", "rejected", "expired"]
    );
    assert_eq!(w.admin("POST", &format!("/admin/v1/holds/{id}/reject"), serde_json::Value::Null).status, 409);
    let metrics = w.admin("GET", "/metrics", serde_json::Value::Null).text();
    assert!(metrics.contains("phantom_holds{state=\"forwarded\"} 3"), "{metrics}");

    let issued = idp.issued();
    assert!(issued.len() >= 12, "every step signed a person in");
    let canaries: Vec<&str> = issued.iter().map(String::as_str).collect();
    w.assert_secrets_contained(&canaries);
}

/// On the shared store, a held write survives its replica's restart: approvals on either
/// replica count toward one hold, and the one that makes them enough forwards it, once. Redis
/// holds the checked bytes and the approvals, never a token.
#[test]
fn held_writes_survive_a_replica_restart_on_redis() {
    use crate::support::redis::Redis;
    let tmp = tempfile::tempdir().unwrap();
    let certs = dev_certs(&tmp.path().join("certs"));
    let idp = Idp::start(&tmp.path().join("idp"), &certs);
    let redis = Redis::start(&tmp.path().join("redis"), &certs);
    let key = tmp.path().join("audit-key");
    std::fs::write(&key, "a9f1c2e4b6d8a0f1c3e5b7d9a1f2c4e6\n").unwrap();
    let policy = format!("{DEFAULT_POLICY}\n{HELD_POLICY}");
    let mut w = World::start_with(Options {
        policy: policy.clone(),
        extra: format!("{}\n{}", idp.issuer_config(), redis.state_table()),
        audit: format!("key = {{ file = \"{}\" }}", key.display()),
        certs: Some(certs),
        ..Options::default()
    });
    let b = w.replica(&policy);

    let pkg = w.package("@held/app", "2.0.0");
    let out = w.npm(&pkg, &["publish"], Some(&serde_json::json!({})));
    assert!(out.status.success(), "{}", text(&out));
    let id = hold_id(&out);
    w.broker.restart();
    let url_a = w.broker.url.clone();
    let out = person(&idp, &w, &url_a, "bob", "approve", Some(&id));
    assert!(text(&out).contains("held (1 of 2 approvals)"), "{}", text(&out));
    // The same person at the other replica is still one person.
    let out = person(&idp, &w, &b.url, "bob", "approve", Some(&id));
    assert!(text(&out).contains("approved it already"), "{}", text(&out));
    assert_eq!(w.upstream_packument("@held%2fapp").status, 404);
    let out = person(&idp, &w, &b.url, "carol", "approve", Some(&id));
    assert!(text(&out).contains("forwarded (2 of 2 approvals; the registry answered 201)"), "{}", text(&out));
    let doc = w.upstream_packument("@held%2fapp").json();
    assert_eq!(doc["versions"].as_object().map(|v| v.len()), Some(1), "{doc}");
    let forwarded = b.audit_lines().into_iter().filter(|l| l["hold"]["step"] == "forwarded").count();
    assert_eq!(forwarded, 1);
    assert!(w.broker.audit_lines().iter().all(|l| l["hold"]["step"] != "forwarded"));

    // A revocation reaches the held writes of what it revokes: they can no longer be approved.
    let pkg = w.package("@held/app", "2.1.0");
    let out = w.npm(&pkg, &["publish"], Some(&serde_json::json!({})));
    let revoked_id = hold_id(&out);
    let r = w.admin("POST", "/admin/v1/revoke", serde_json::json!({"subject": "repo:acme/web:ref:refs/heads/main"}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["holds_rejected"], serde_json::json!([revoked_id]));
    assert!(r.json().get("console_sessions_ended").is_none(), "no console, no sessions to end: {}", r.text());
    let out = person(&idp, &w, &b.url, "bob", "approve", Some(&revoked_id));
    assert!(text(&out).contains("is rejected"), "{}", text(&out));

    let dump = redis.dump("pbtest:");
    assert!(dump.contains(&format!("pbtest:hold:{id} hash")), "{dump}");
    let issued = idp.issued();
    for secret in issued.iter().map(String::as_str).chain([w.verdaccio.token.as_str()]) {
        assert!(!dump.contains(secret), "a secret is in Redis");
    }
    let canaries: Vec<&str> = issued.iter().map(String::as_str).collect();
    w.assert_secrets_contained(&canaries);
}

/// A held body, framed every way a hostile caller could (HTTP/1.1 lengths and chunks, HTTP/2
/// frames of any size), is kept only if it passes every check, and what the upstream finally
/// gets is exactly the bytes that were checked. Bodies the checks refuse are not kept, and
/// nothing of them reaches the upstream.
#[test]
fn held_bodies_in_hostile_framings_release_exactly_what_was_checked() {
    use crate::support::framing::{self, Framing};
    use crate::support::recording::{End, Recording};
    let tmp = tempfile::tempdir().unwrap();
    let certs = dev_certs(&tmp.path().join("certs"));
    let idp = Idp::start(&tmp.path().join("idp"), &certs);
    let rec = Recording::start(&certs.cert, &certs.key);
    let canary = format!("held-canary-{}", crate::support::free_port());
    let secret = tmp.path().join("recording-token");
    std::fs::write(&secret, &canary).unwrap();
    let extra = format!(
        "{}\n[upstream.recording]\nurl = \"{}\"\nscopes = [\"@rec\"]\nca_file = \"{{ca}}\"\n\n\
         [credential.recording]\nupstream = \"recording\"\nsource = {{ file = \"{}\" }}\n",
        idp.issuer_config(),
        rec.url(),
        secret.display()
    );
    let policy = r#"
[approvers.one]
issuer = "corp"
claims = { groups = "release-managers" }

[[grant]]
name = "rec-held"
issuer = "github"
packages = ["@rec/tool"]
actions = ["publish"]
create = true
credential = "recording"
hold = "one"
[grant.claims]
repository_id = "123456789"

[[grant]]
name = "rec-staged"
issuer = "github"
packages = ["@rec/staged"]
actions = ["publish"]
publish = "stage"
create = true
credential = "recording"
hold = "one"
[grant.claims]
repository_id = "123456789"
"#;
    let w = World::start_with(Options { policy: policy.into(), extra, certs: Some(certs), ..Options::default() });
    let phantom = w.phantom(&["@rec/tool"], &["publish"], None);
    let auth = format!("Bearer {phantom}");
    let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
    rec.set_packument("@rec%2ftool", &serde_json::json!({"name": "@rec/tool", "versions": {}}));
    let body = |version: &str| crate::support::publish_body("@rec/tool", "@rec/tool", version, "latest");
    let send = |b: &[u8], h: &[(&str, &str)], f: &Framing| {
        framing::send(w.broker.port, &w.certs.ca, "PUT", "/@rec%2ftool", h, b, f)
    };

    let mut kept = Vec::new();
    for (i, f) in Framing::all().iter().enumerate() {
        let sent = body(&format!("1.0.{i}"));
        let a = send(sent.as_bytes(), &headers, f);
        assert_eq!(a.status, 202, "{f:?}: {}", a.body);
        let id = serde_json::from_str::<serde_json::Value>(&a.body).unwrap()["held"].as_str().unwrap().to_owned();
        kept.push((id, sent));
    }
    let length = Framing::Length(vec![1, 7, 4093]);
    let good = body("2.0.0");
    let doubled = good.replacen("\"versions\":", "\"versions\":{},\"versions\":", 1);
    let renamed = body("2.0.0").replace("\"name\":\"@rec/tool\"", "\"name\":\"@rec/other\"");
    for (what, b, h, want) in [
        ("a key twice", doubled.as_str(), &headers[..], 400),
        ("another name in the body", renamed.as_str(), &headers[..], 400),
        (
            "a charset other than UTF-8",
            good.as_str(),
            &[headers[0], ("content-type", "application/json; charset=utf-16")][..],
            415,
        ),
    ] {
        let a = send(b.as_bytes(), h, &length);
        assert_eq!(a.status, want, "{what}: {}", a.body);
    }
    let listed = w.admin("GET", "/admin/v1/holds", serde_json::Value::Null).json();
    assert_eq!(listed["holds"].as_array().unwrap().len(), kept.len(), "a refused body was kept: {listed}");
    rec.settle();
    assert!(rec.writes().is_empty(), "a held write reached the upstream before its approval");

    let url = w.broker.url.clone();
    for (id, sent) in &kept {
        rec.clear();
        let out = person(&idp, &w, &url, "bob", "approve", Some(id));
        assert!(text(&out).contains("forwarded (1 of 1 approvals; the registry answered 201)"), "{}", text(&out));
        rec.settle();
        let writes = rec.writes();
        assert_eq!(writes.len(), 1, "one forward per hold");
        assert_eq!(writes[0].end, End::Complete);
        assert_eq!(writes[0].target, "/@rec%2ftool");
        assert_eq!(writes[0].header("authorization"), Some(format!("Bearer {canary}")));
        assert!(writes[0].body == sent.as_bytes(), "the upstream got other bytes than were checked");
    }

    // Under a grant that stages its publishes, the approved publish goes to the stage route, as
    // `npm stage publish` sends it, with exactly the bytes checked.
    let stager = w.phantom(&["@rec/staged"], &["publish"], None);
    let auth = format!("Bearer {stager}");
    let sent = crate::support::publish_body("@rec/staged", "@rec/staged", "1.0.0", "latest");
    let h = [("authorization", auth.as_str()), ("content-type", "application/json")];
    let a = framing::send(w.broker.port, &w.certs.ca, "PUT", "/@rec%2fstaged", &h, sent.as_bytes(), &length);
    assert_eq!(a.status, 202, "{}", a.body);
    let id = serde_json::from_str::<serde_json::Value>(&a.body).unwrap()["held"].as_str().unwrap().to_owned();
    rec.clear();
    assert!(person(&idp, &w, &url, "carol", "approve", Some(&id)).status.success());
    rec.settle();
    let writes = rec.writes();
    assert_eq!(writes.len(), 1);
    assert_eq!((writes[0].method.as_str(), writes[0].target.as_str()), ("POST", "/-/stage/package/@rec%2fstaged"));
    assert_eq!(writes[0].header("npm-command").as_deref(), Some("stage"));
    assert!(writes[0].body == sent.as_bytes(), "the stage route got other bytes than were checked");
    let staged =
        w.broker.audit_lines().into_iter().find(|l| l["hold"]["id"] == id.as_str() && l["hold"]["step"] == "forwarded");
    assert_eq!(staged.expect("the forward is on record")["staged"], true);

    let issued = idp.issued();
    let mut canaries: Vec<&str> = issued.iter().map(String::as_str).collect();
    canaries.push(&canary);
    w.assert_secrets_contained(&canaries);
    // The phantom reached its caller (the exchange's answer) and nowhere the broker writes.
    let log = std::fs::read_to_string(w.broker.dir.join("broker.log")).unwrap();
    let audit = std::fs::read_to_string(w.broker.dir.join("audit/phantom.jsonl")).unwrap();
    assert!(!log.contains(&phantom) && !audit.contains(&phantom));
}
