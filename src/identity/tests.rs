use super::*;
use crate::config::IssuerConfig;
use jsonwebtoken::{EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::json;
use std::time::Duration;

// Port 1 on loopback refuses connections: a refetch fails fast and never leaves the machine.
const ISS: &str = "https://127.0.0.1:1";
const AUD: &str = "npm:broker.test";
const NOW: u64 = 1_800_000_000;

struct Fixture {
    issuers: Issuers,
    key: EncodingKey,
    public_jwk: Value,
}

fn fixture() -> Fixture {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let point = pair.public_key().as_ref();
    let public_jwk = json!({
        "kty": "EC", "crv": "P-256", "kid": "ec-1", "alg": "ES256", "use": "sig",
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
    });
    let cfg = IssuerConfig {
        name: "github".into(),
        issuer: ISS.into(),
        preset: None,
        preset_from_url: false,
        algorithms: vec![Algorithm::ES256, Algorithm::RS256],
        audience: "phantom-generic".into(),
        ca_file: None,
        leeway: Duration::from_secs(30),
        jwks_cache: Duration::from_secs(3600),
        fetch_timeout: Duration::from_secs(2),
        device: None,
        web: None,
    };
    let issuers = Issuers::new(&[cfg]).unwrap();
    let jwks = json!({ "keys": [public_jwk.clone(), {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"}] });
    let keys = parse_jwks(jwks.to_string().as_bytes()).unwrap();
    assert_eq!(keys.len(), 1, "the symmetric key must be skipped");
    issuers.cache(ISS).unwrap().preload(KeySet::from_keys(keys));
    Fixture { issuers, key: EncodingKey::from_ec_der(pkcs8.as_ref()), public_jwk }
}

fn claims() -> Value {
    json!({
        "iss": ISS, "aud": AUD, "sub": "repo:acme/web:ref:refs/heads/main", "jti": "j-1",
        "iat": NOW - 10, "nbf": NOW - 600, "exp": NOW + 290, "repository": "acme/web",
    })
}

fn sign(f: &Fixture, claims: &Value) -> String {
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some("ec-1".into());
    jsonwebtoken::encode(&h, claims, &f.key).unwrap()
}

fn edit(change: Value) -> Value {
    let mut c = claims();
    for (k, v) in change.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

/// A token with a hand-made header and payload, signed with nothing useful.
fn raw(header: Value, claims: &Value, sig: &str) -> String {
    format!("{}.{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()), sig)
}

async fn verify(f: &Fixture, token: String, now: u64) -> Result<Verified, IdentityError> {
    f.issuers.verify(&IdToken::new(token), Audience::Exactly(AUD), now).await
}

fn kind(r: &Result<Verified, IdentityError>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => format!("{e:?}").split(['(', ' ']).next().unwrap().to_owned(),
    }
}

#[tokio::test]
async fn valid_token_yields_identity_and_replay_window() {
    let f = fixture();
    let v = verify(&f, sign(&f, &claims()), NOW).await.unwrap();
    assert_eq!(&*v.identity.issuer, "github");
    assert_eq!(v.identity.claim("repository"), Some("acme/web"));
    assert_eq!(v.replay_until, NOW + 290 + 30 + 1);
    let again = verify(&f, sign(&f, &claims()), NOW).await.unwrap();
    assert_eq!(v.replay_key, again.replay_key, "same jti, same replay key");
    let other = verify(&f, sign(&f, &edit(json!({"jti": "j-2"}))), NOW).await.unwrap();
    assert_ne!(v.replay_key, other.replay_key);
}

#[tokio::test]
async fn claim_checks_table() {
    let f = fixture();
    let table: Vec<(&str, Value, u64, &str)> = vec![
        ("exp inside the leeway", claims(), NOW + 290 + 30, "ok"),
        ("exp just past the leeway", claims(), NOW + 290 + 31, "Expired"),
        ("nbf in the future", edit(json!({"nbf": NOW + 31})), NOW, "NotYetValid"),
        ("nbf within the leeway", edit(json!({"nbf": NOW + 30})), NOW, "ok"),
        ("iat far in the future", edit(json!({"iat": NOW + 3600})), NOW, "IssuedInFuture"),
        ("lifetime over a day", edit(json!({"exp": NOW + 2 * 86_400})), NOW, "TooLongLived"),
        ("missing exp", edit(json!({"exp": null})), NOW, "MissingClaim"),
        ("missing iat", edit(json!({"iat": null})), NOW, "MissingClaim"),
        ("missing iss", edit(json!({"iss": null})), NOW, "MissingClaim"),
        ("iss of another issuer", edit(json!({"iss": "https://127.0.0.1:2"})), NOW, "UnknownIssuer"),
        ("iss with a trailing slash", edit(json!({"iss": format!("{ISS}/")})), NOW, "UnknownIssuer"),
        ("iss not a string", edit(json!({"iss": [ISS]})), NOW, "MissingClaim"),
        ("exp as a string", edit(json!({"exp": (NOW + 60).to_string()})), NOW, "BadClaimType"),
        ("exp negative", edit(json!({"exp": -1})), NOW, "BadClaimType"),
        ("wrong audience", edit(json!({"aud": "npm:other.test"})), NOW, "WrongAudience"),
        ("generic audience on npm's exchange", edit(json!({"aud": "phantom-generic"})), NOW, "WrongAudience"),
        ("aud array with ours", edit(json!({"aud": ["x", AUD]})), NOW, "ok"),
        ("aud array without ours", edit(json!({"aud": ["x", "y"]})), NOW, "WrongAudience"),
        ("aud a number", edit(json!({"aud": 5})), NOW, "BadClaimType"),
        ("missing aud", edit(json!({"aud": null})), NOW, "MissingClaim"),
        ("sub an array", edit(json!({"sub": ["a"]})), NOW, "BadClaimType"),
        ("jti a number", edit(json!({"jti": 7})), NOW, "BadClaimType"),
    ];
    for (what, c, now, want) in table {
        let got = verify(&f, sign(&f, &c), now).await;
        assert_eq!(kind(&got), want, "{what}: {got:?}");
    }
}

#[tokio::test]
async fn generic_exchange_uses_the_issuer_audience() {
    let f = fixture();
    let token = sign(&f, &edit(json!({"aud": "phantom-generic"})));
    let got = f.issuers.verify(&IdToken::new(token), Audience::IssuerDefault, NOW).await;
    assert!(got.is_ok(), "{got:?}");
    let token = sign(&f, &claims());
    let got = f.issuers.verify(&IdToken::new(token), Audience::IssuerDefault, NOW).await;
    assert_eq!(kind(&got), "WrongAudience");
}

#[tokio::test]
async fn header_and_format_attacks_table() {
    let f = fixture();
    let good = sign(&f, &claims());
    let sig = good.rsplit('.').next().unwrap().to_owned();
    let c = claims();
    // The issuer's public key used as an HMAC secret (algorithm confusion).
    let hs = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &c,
        &EncodingKey::from_secret(f.public_jwk.to_string().as_bytes()),
    )
    .unwrap();
    let mut tampered_claims = c.clone();
    tampered_claims["repository"] = json!("evil/web");
    let tampered = {
        let parts: Vec<&str> = good.split('.').collect();
        format!("{}.{}.{}", parts[0], URL_SAFE_NO_PAD.encode(tampered_claims.to_string()), parts[2])
    };
    let table: Vec<(&str, String, &str)> = vec![
        ("alg none", raw(json!({"alg": "none"}), &c, "x"), "AlgorithmNotAllowed"),
        (
            "alg none, empty signature",
            format!("{}.", raw(json!({"alg": "none"}), &c, "x").rsplit_once('.').unwrap().0),
            "Malformed",
        ),
        ("HS256 with the public key", hs, "AlgorithmNotAllowed"),
        ("alg not on the allow-list", raw(json!({"alg": "ES384", "kid": "ec-1"}), &c, &sig), "AlgorithmNotAllowed"),
        ("RS256 header on an EC key", raw(json!({"alg": "RS256", "kid": "ec-1"}), &c, &sig), "UnknownKey"),
        ("unknown kid", raw(json!({"alg": "ES256", "kid": "nope"}), &c, &sig), "UnknownKey"),
        ("kid with path text", raw(json!({"alg": "ES256", "kid": "../../etc/passwd"}), &c, &sig), "UnknownKey"),
        ("kid with SQL text", raw(json!({"alg": "ES256", "kid": "x' OR '1'='1"}), &c, &sig), "UnknownKey"),
        ("kid a number", raw(json!({"alg": "ES256", "kid": 1}), &c, &sig), "Malformed"),
        (
            "jku header",
            raw(json!({"alg": "ES256", "kid": "ec-1", "jku": "https://127.0.0.1:9/k"}), &c, &sig),
            "ForbiddenHeader",
        ),
        (
            "x5u header",
            raw(json!({"alg": "ES256", "kid": "ec-1", "x5u": "https://127.0.0.1:9/c"}), &c, &sig),
            "ForbiddenHeader",
        ),
        ("jwk header", raw(json!({"alg": "ES256", "kid": "ec-1", "jwk": f.public_jwk}), &c, &sig), "ForbiddenHeader"),
        ("tampered payload", tampered, "BadSignature"),
        (
            "signature of another token",
            raw(json!({"alg": "ES256", "kid": "ec-1", "typ": "JWT"}), &c, &sig),
            "BadSignature",
        ),
        ("truncated", good[..good.len() - 10].to_owned(), "BadSignature"),
        ("two segments", good.rsplit_once('.').unwrap().0.to_owned(), "Malformed"),
        ("extra segment", format!("{good}.x"), "Malformed"),
        ("bad base64", format!("!!{}", &good[2..]), "Malformed"),
        ("payload not an object", raw(json!({"alg": "ES256", "kid": "ec-1"}), &json!([1, 2]), &sig), "Malformed"),
        (
            "duplicate claim",
            format!(
                "{}.{}.{}",
                good.split('.').next().unwrap(),
                URL_SAFE_NO_PAD.encode(format!(r#"{{"iss":"{ISS}","iss":"x"}}"#)),
                sig
            ),
            "Malformed",
        ),
        ("huge token", format!("{good}{}", "A".repeat(MAX_TOKEN_BYTES)), "TooLarge"),
        ("empty", String::new(), "Malformed"),
    ];
    for (what, token, want) in table {
        let got = verify(&f, token, NOW).await;
        assert_eq!(kind(&got), want, "{what}: {got:?}");
    }
}
