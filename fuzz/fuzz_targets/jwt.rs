//! ID-token parsing and verification. The first byte picks the mode:
//! - raw: the input is the token (header, claims, signature all attacker-made);
//! - signed: the input is a claims payload, properly signed with the issuer's key, so the
//!   fuzzer reaches every claim check behind the signature.
//! A token verifies only if it carries our audience, our issuer and a valid time window.
#![no_main]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use libfuzzer_sys::fuzz_target;
use phantom_broker::config::IssuerConfig;
use phantom_broker::identity::{decode_unverified, parse_jwks, Audience, Issuers, KeySet};
use phantom_broker::support::secret::IdToken;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use std::sync::OnceLock;
use std::time::Duration;

const ISS: &str = "https://127.0.0.1:1";
const AUD: &str = "npm:broker.test";
const NOW: u64 = 1_800_000_000;

struct Fixture {
    rt: tokio::runtime::Runtime,
    issuers: Issuers,
    key: EcdsaKeyPair,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
        let point = key.public_key().as_ref();
        let jwks = serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k", "alg": "ES256",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65])}]});
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let cfg = IssuerConfig {
            name: "ci".into(),
            issuer: ISS.into(),
            preset: None,
            preset_from_url: false,
            algorithms: vec![jsonwebtoken::Algorithm::ES256, jsonwebtoken::Algorithm::RS256],
            audience: AUD.into(),
            ca_file: None,
            leeway: Duration::from_secs(30),
            jwks_cache: Duration::from_secs(3600),
            fetch_timeout: Duration::from_millis(1),
            device: None,
            web: None,
        };
        let issuers = rt.block_on(async { Issuers::new(&[cfg]).unwrap() });
        let keys = parse_jwks(jwks.to_string().as_bytes()).unwrap();
        issuers.cache(ISS).unwrap().preload(KeySet::from_keys(keys));
        Fixture { rt, issuers, key }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let f = fixture();
    let token = if mode % 2 == 0 {
        String::from_utf8_lossy(rest).into_owned()
    } else {
        let input = format!("{}.{}", URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256","kid":"k"}"#), URL_SAFE_NO_PAD.encode(rest));
        let sig = f.key.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    };
    let _ = decode_unverified(&token);
    let verified = f.rt.block_on(f.issuers.verify(&IdToken::new(token.clone()), Audience::Exactly(AUD), NOW));
    if let Ok(v) = verified {
        assert!(mode % 2 == 1, "an unsigned fuzz input verified: {token}");
        let (_, claims) = decode_unverified(&token).unwrap();
        assert_eq!(claims.get("iss").and_then(|v| v.as_str()), Some(ISS));
        let exp = claims["exp"].as_f64().unwrap();
        assert!(exp + 30.0 >= NOW as f64, "an expired token verified");
        assert!(v.replay_until > NOW);
    }
});
