//! Every type that holds a secret (real credential, phantom, raw ID token, admin token) is
//! formatted with `{:?}` and `{:#?}`; the output must not contain the secret.

use phantom_broker::config::{CredentialConfig, SecretSource};
use phantom_broker::credentials::{Credential, Credentials};
use phantom_broker::phantom::PhantomToken;
use phantom_broker::support::secret::read_secret;
use phantom_broker::support::secret::{IdToken, Secret};

const CANARY: &str = "CANARY_b8c0f1d2e3a4";

fn assert_hidden(what: &str, debug: String, secret: &str) {
    assert!(!debug.contains(secret), "{what} leaks its secret in Debug: {debug}");
    // Nor a recognisable piece of it.
    assert!(!debug.contains(&secret[secret.len() / 2..]), "{what} leaks part of its secret: {debug}");
}

#[test]
fn secret_holding_types_redact_debug() {
    let s = Secret::new(format!("npm_{CANARY}"));
    assert_hidden("Secret", format!("{s:?} {s:#?}"), CANARY);

    let id = IdToken::new(format!("eyJhbGciOiJSUzI1NiJ9.{CANARY}.sig"));
    assert_hidden("IdToken", format!("{id:?} {id:#?}"), CANARY);

    let rng = ring::rand::SystemRandom::new();
    let phantom = PhantomToken::generate(&rng);
    let text = phantom.expose().to_owned();
    assert_hidden("PhantomToken", format!("{phantom:?} {phantom:#?}"), &text[4..]);
    let digest = phantom.digest();
    assert_hidden("TokenDigest", format!("{digest:?}"), &phantom_broker::support::hex(&digest.0));

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, format!("npm_{CANARY}\n")).unwrap();
    let cfg = CredentialConfig {
        name: "c".into(),
        upstream: "u".into(),
        source: SecretSource::File(file.clone()),
        packages: vec![],
        class: None,
        publish: phantom_broker::config::Capability::Direct,
        created: None,
        expires: None,
        top: false,
    };
    assert_hidden("CredentialConfig", format!("{cfg:?} {cfg:#?}"), CANARY);
    let env_source = SecretSource::Env("PB_SECRETS_DEBUG_CANARY".into());
    std::env::set_var("PB_SECRETS_DEBUG_CANARY", format!("npm_{CANARY}"));
    assert_eq!(read_secret(&env_source).unwrap().expose(), format!("npm_{CANARY}"));
    assert_hidden("SecretSource", format!("{env_source:?} {env_source:#?}"), CANARY);
    let credential = Credential::from_secret(&cfg, read_secret(&cfg.source).unwrap()).unwrap();
    assert_hidden("Credential", format!("{credential:?} {credential:#?}"), CANARY);
    let all = Credentials::load(std::slice::from_ref(&cfg)).unwrap();
    assert_hidden("Credentials", format!("{all:?} {all:#?}"), CANARY);
    assert!(format!("{all:?}").contains("\"c\""), "Credentials' Debug names its credentials: {all:?}");
    // The header value is marked sensitive, which hyper and h2 honour.
    assert!(credential.authorization().is_sensitive());

    // Config types name where secrets live, never the secrets.
    let config =
        phantom_broker::config::Config::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("phantom.toml"))
            .unwrap();
    assert_hidden("Config", format!("{config:?}"), CANARY);
}
