//! `phantom.toml`'s parsing and validation, by table.

use super::*;
use crate::policy::presets::Preset;
use crate::support::net::is_loopback;
use std::path::{Path, PathBuf};
use std::time::Duration;

const GOOD: &str = r#"
[server]
listen = "127.0.0.1:8443"
public_url = "https://npm-broker.example.com/"
tls_cert = "certs/server.pem"
tls_key = "certs/server-key.pem"

[upstream.public]
url = "https://registry.example.com/"
scopes = ["*"]

[upstream.acme]
url = "http://127.0.0.1:4873"
scopes = ["@acme"]

[issuer.github]
issuer = "https://token.actions.example.com"
algorithms = ["RS256", "ES256"]

[credential.acme-publish]
upstream = "acme"
source = { file = "/run/secrets/acme-npm-token" }
packages = ["@acme/*"]
expires = "2027-01-31"

[credential.env-one]
upstream = "public"
source = { env = "NPM_TOKEN" }

[state]
backend = "memory"

[audit]
path = "audit/phantom.jsonl"
"#;

#[test]
fn parses_the_documented_shape() {
    let c = Config::parse(Path::new("/etc/phantom/phantom.toml"), GOOD).unwrap();
    assert_eq!(c.server.npm_audience(), "npm:npm-broker.example.com");
    let upper = GOOD.replace("https://npm-broker.example.com/", "https://NPM-Broker.Example.com:8443/");
    assert_eq!(Config::parse(Path::new("p.toml"), &upper).unwrap().server.npm_audience(), "npm:npm-broker.example.com");
    let v6 = GOOD.replace("https://npm-broker.example.com/", "https://[::1]:8443/");
    assert_eq!(Config::parse(Path::new("p.toml"), &v6).unwrap().server.npm_audience(), "npm:[::1]");
    assert_eq!(c.server.tls_cert, PathBuf::from("/etc/phantom/certs/server.pem"));
    assert_eq!(c.policy_dir, PathBuf::from("/etc/phantom/policies"));
    assert_eq!(c.server.max_body_bytes, DEFAULT_MAX_BODY);
    assert_eq!(c.upstreams.len(), 2);
    assert_eq!(c.upstreams[1].url.to_string(), "https://registry.example.com/");
    assert_eq!(c.issuers[0].audience, "npm:npm-broker.example.com");
    assert_eq!(c.issuers[0].leeway, Duration::from_secs(30));
    assert_eq!(c.credentials[0].source, SecretSource::File("/run/secrets/acme-npm-token".into()));
    assert_eq!(c.credentials[1].source, SecretSource::Env("NPM_TOKEN".into()));
    assert!(matches!(c.state, StateConfig::Memory));
    assert_eq!((c.credentials[0].expires, c.credentials[0].publish), (Some(1_801_353_600), Capability::Direct));

    let shared = GOOD.replace(
        "backend = \"memory\"",
        "backend = \"rediss://cache.example.com:6380/2\"\nca_file = \"certs/redis-ca.pem\"\npassword = { file = \"redis-pw\" }",
    );
    let c = Config::parse(Path::new("/etc/phantom/phantom.toml"), &shared).unwrap();
    let StateConfig::Redis(r) = &c.state else { panic!("not a redis backend") };
    assert_eq!((r.host.as_str(), r.port, r.db, r.tls), ("cache.example.com", 6380, 2, true));
    assert_eq!((r.key_prefix.as_str(), r.timeout), ("phantom:", Duration::from_secs(1)));
    assert_eq!(r.ca_file.as_deref(), Some(Path::new("/etc/phantom/certs/redis-ca.pem")));
    assert_eq!(r.password, Some(SecretSource::File("/etc/phantom/redis-pw".into())));
    let local = GOOD.replace("backend = \"memory\"", "backend = \"redis://127.0.0.1:6379\"");
    let c = Config::parse(Path::new("p.toml"), &local).unwrap();
    assert!(matches!(&c.state, StateConfig::Redis(r) if !r.tls && r.db == 0));

    let dated = GOOD.replace(
        "expires = \"2027-01-31\"",
        "expires = 2027-01-31\ncreated = \"2026-11-01\"\nclass = \"A\"\npublish = \"stage-only\"",
    );
    let github = GOOD.replace("https://token.actions.example.com", "https://token.actions.githubusercontent.com");
    let c = Config::parse(Path::new("p.toml"), &github).unwrap();
    assert_eq!((c.issuers[0].preset, c.issuers[0].preset_from_url), (Some(Preset::Github), true));
    let said = github.replace("algorithms = [\"RS256\", \"ES256\"]", "preset = \"github\"");
    let c = Config::parse(Path::new("p.toml"), &said).unwrap();
    assert_eq!((c.issuers[0].preset, c.issuers[0].preset_from_url), (Some(Preset::Github), false));
    let admin = |metrics: &str| {
        let text = GOOD.replace("[audit]", &format!("[admin]\ntoken = {{ env = \"T\" }}\n{metrics}\n[audit]"));
        Config::parse(Path::new("p.toml"), &text).unwrap().admin.unwrap().metrics_open
    };
    assert_eq!((admin(""), admin("metrics = \"token\""), admin("metrics = \"open\"")), (false, false, true));
    let c = Config::parse(Path::new("p.toml"), &dated).unwrap();
    let cred = &c.credentials[0];
    assert_eq!((cred.class, cred.publish), (Some('A'), Capability::StageOnly));
    assert_eq!((cred.created, cred.expires), (Some(1_793_491_200), Some(1_801_353_600)));
}

#[test]
fn errors_name_the_file_and_the_key() {
    let table: &[(&str, &str, &str)] = &[
        ("listen = \"127.0.0.1:8443\"", "lisen = \"127.0.0.1:8443\"", "unknown field `lisen`, expected one of"),
        ("listen = \"127.0.0.1:8443\"", "listen = \"localhost\"", "`server.listen`"),
        ("https://npm-broker.example.com/", "http://npm-broker.example.com/", "`server.public_url` must be an https"),
        ("https://registry.example.com/", "http://registry.example.com/", "only for loopback"),
        ("scopes = [\"@acme\"]", "scopes = [\"*\"]", "already routed"),
        ("scopes = [\"@acme\"]", "scopes = [\"acme\"]", "must be \"*\" or \"@scope\""),
        ("[\"RS256\", \"ES256\"]", "[\"HS256\"]", "`HS256` is not allowed"),
        ("[\"RS256\", \"ES256\"]", "[\"none\"]", "`none` is not allowed"),
        ("upstream = \"acme\"", "upstream = \"nope\"", "not a configured upstream"),
        ("{ env = \"NPM_TOKEN\" }", "{ vault = \"x\" }", "unknown variant `vault`"),
        ("backend = \"memory\"", "backend = \"etcd://x\"", "`state.backend`"),
        ("backend = \"memory\"", "backend = \"redis://cache.example.com:6379/0\"", "use rediss:// (TLS)"),
        ("backend = \"memory\"", "backend = \"rediss://:hunter2@cache.example.com/0\"", "carries credentials"),
        ("backend = \"memory\"", "backend = \"rediss://cache.example.com/x\"", "not a database number"),
        ("backend = \"memory\"", "backend = \"memory\"\nkey_prefix = \"p:\"", "are for a redis backend"),
        ("backend = \"memory\"", "backend = \"rediss://c.example.com\"\ntimeout = \"0s\"", "`state.timeout`"),
        ("expires = \"2027-01-31\"", "class = \"E\"", "`credential.acme-publish.class`"),
        ("expires = \"2027-01-31\"", "publish = \"yes\"", "`credential.acme-publish.publish`"),
        ("expires = \"2027-01-31\"", "expires = 2027-01-31T10:00:00Z", "give a date like"),
        ("expires = \"2027-01-31\"", "expires = \"2027-02-30\"", "`credential.acme-publish.expires`"),
        ("expires = \"2027-01-31\"", "expires = \"next year\"", "give a date like"),
        ("expires = \"2027-01-31\"", "expires = \"2027-01-31\"\ncreated = \"2027-02-01\"", "not after its `created`"),
        ("[audit]", "[audit]\ncolour = 1", "unknown field `colour`"),
        (
            "issuer = \"https://token.actions.example.com\"",
            "issuer = \"https://token.actions.githubusercontent.com\"\npreset = \"gitlab\"",
            "`issuer.github.preset`: `gitlab` contradicts the issuer URL",
        ),
        ("[audit]", "[admin]\ntoken = { env = \"T\" }\nmetrics = \"public\"\n[audit]", "`admin.metrics`"),
    ];
    for (from, to, want) in table {
        assert!(GOOD.contains(from), "{from}");
        let err = Config::parse(Path::new("conf/phantom.toml"), &GOOD.replacen(from, to, 1)).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("conf/phantom.toml: "), "{text}");
        assert!(text.contains(want), "{to}: {text}");
    }
}

#[test]
fn loopback_hosts() {
    for h in ["127.0.0.1", "127.1.2.3", "[::1]", "localhost"] {
        assert!(is_loopback(h), "{h}");
    }
    for h in ["10.0.0.1", "example.com", "localhost.example.com", "0.0.0.0"] {
        assert!(!is_loopback(h), "{h}");
    }
}

#[test]
fn issuers_for_people_have_a_device_client() {
    let people = "\n[issuer.corp]\nissuer = \"https://idp.example.com\"\nalgorithms = [\"RS256\"]\n";
    let with = |device: &str| Config::parse(Path::new("p.toml"), &format!("{GOOD}{people}{device}\n"));
    let c = with("device = { client_id = \"phantom-cli\" }").unwrap();
    let corp = c.issuers.iter().find(|i| i.name == "corp").unwrap();
    let device = corp.device.as_ref().unwrap();
    assert_eq!(device.client_id, "phantom-cli");
    assert_eq!(device.scopes, ["email", "profile"]);
    // A person's ID token is for the client they signed in with.
    assert_eq!(corp.audience, "phantom-cli");
    assert!(c.issuers.iter().find(|i| i.name == "github").unwrap().device.is_none());

    let c = with("audience = \"people\"\ndevice = { client_id = \"cli\", scopes = [\"openid\", \"groups\"] }").unwrap();
    let corp = c.issuers.iter().find(|i| i.name == "corp").unwrap();
    assert_eq!(
        (corp.audience.as_str(), corp.device.as_ref().unwrap().scopes.as_slice()),
        ("people", &["groups".to_owned()][..])
    );

    for (bad, says) in [
        ("device = { client_id = \"\" }", "device.client_id"),
        ("device = { client_id = \"a b\" }", "device.client_id"),
        ("device = { client_id = \"x\", scopes = [\"a b\"] }", "device.scopes"),
        ("device = { client_id = \"x\", secret = \"s\" }", "unknown field"),
    ] {
        let err = with(bad).unwrap_err().to_string();
        assert!(err.contains(says), "{bad}: {err}");
    }
}

#[test]
fn rotation_deadlines_need_what_they_count_from() {
    let with = |extra: &str| Config::parse(Path::new("/etc/phantom/phantom.toml"), &format!("{GOOD}{extra}"));
    let top = "[credential.t]\nupstream = \"public\"\nsource = { env = \"T\" }\nclass = \"B\"\ntop = true\n";
    assert!(with(top).unwrap_err().message.contains("only a class \"A\" credential is marked top"));
    let undated = "[credential.u]\nupstream = \"public\"\nsource = { env = \"U\" }\nclass = \"A\"\n";
    assert!(with(undated).is_ok(), "no deadline, no refusal asked for: a warning in `credentials status`");
    let refusing = format!("{undated}[rotation]\noverdue = \"refuse-writes\"\n");
    let e = with(&refusing).unwrap_err().message;
    assert!(e.contains("`credential.u`: class A refuses writes when overdue") && e.contains("needs `created`"), "{e}");
    let c = with("[rotation]\nB = \"60d\"\n").unwrap();
    assert_eq!(c.rotation.cadence_of('B', false), Some(60 * 86_400));
    let notify = "[notify.a]\nwebhook = \"https://hooks.example.com/a\"\nevents = [\"rotation-overdue\", \"burst-freeze\"]\nescalate = [\"b\"]\nformat = \"ticket\"\n[notify.b]\nwebhook = \"https://hooks.example.com/b\"\n";
    let n = with(notify).unwrap();
    assert_eq!(n.notify[0].events, [NotifyEvent::RotationOverdue, NotifyEvent::BurstFreeze]);
    assert_eq!((n.notify[0].escalate.as_slice(), n.notify[0].format), (&["b".to_owned()][..], NotifyFormat::Ticket));
    for (bad, says) in [
        ("[notify.a]\nwebhook = \"https://h.example.com/\"\nevents = [\"rotation\"]\n", "is not one of staged, held"),
        (
            "[notify.a]\nwebhook = \"https://h.example.com/\"\nescalate = [\"a\"]\n",
            "is not another [notify.NAME] target",
        ),
        ("[notify.a]\nwebhook = \"https://h.example.com/\"\nformat = \"xml\"\n", "\"ticket\""),
    ] {
        let e = with(bad).unwrap_err().message;
        assert!(e.contains(says), "{bad}: {e}");
    }
}
