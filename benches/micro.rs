//! Micro-benchmarks of the request path's pure parts: `cargo bench --bench micro`.
//! (The load benchmark, `benches/load/run.sh`, measures the whole broker against nginx.)

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::Method;
use phantom_broker::audit::{Audit, Record};
use phantom_broker::config::IssuerConfig;
use phantom_broker::identity::{parse_jwks, Audience, Issuers, KeySet};
use phantom_broker::npm::{classify, ActionKind, PackageName};
use phantom_broker::phantom::{PhantomRecord, PhantomToken};
use phantom_broker::policy::{Identity, Policy, PolicyContext, Requested, Scope};
use phantom_broker::state::{MemoryStore, PhantomStore};
use phantom_broker::support::secret::IdToken;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use std::future::Future;
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Polls a future that never waits (the in-memory store's) to completion.
fn now<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => panic!("the future waited"),
    }
}

fn routes(c: &mut Criterion) {
    let cases = [
        (Method::GET, "/@acme%2fweb", None),
        (Method::GET, "/@acme/web/-/web-1.2.3.tgz", None),
        (Method::PUT, "/@acme%2fweb", None),
        (Method::PUT, "/-/package/@acme%2fweb/dist-tags/next", None),
        (Method::GET, "/left-pad", Some("write=true")),
    ];
    c.bench_function("classify (5 typical routes)", |b| {
        b.iter(|| {
            for (m, p, q) in &cases {
                black_box(classify(m, black_box(p), *q).unwrap());
            }
        })
    });
    c.bench_function("package name parse", |b| b.iter(|| PackageName::parse(black_box("@acme/web-ui")).unwrap()));
}

const CTX: PolicyContext<'static> = PolicyContext {
    issuers: &["github"],
    credentials: &["cred"],
    credential_limits: &[],
    notify: &[],
    default_ttl: Duration::from_secs(600),
    max_ttl: Duration::from_secs(3600),
};

/// `n` grants, each for its own scope and repository; half use a literal name, half a glob.
fn policy_of(n: usize) -> Policy {
    let mut text = String::new();
    for i in 0..n {
        let pkg = if i % 2 == 0 { format!("@s{i}/web") } else { format!("@s{i}/web-*") };
        text.push_str(&format!(
            "[[grant]]\nname = \"g{i}\"\nissuer = \"github\"\npackages = [\"{pkg}\"]\nactions = [\"publish\", \"dist-tag\"]\n\
             dist_tags = [\"latest\", \"next\"]\ncredential = \"cred\"\n[grant.claims]\nrepository_id = \"{i}\"\n\
             ref = [\"refs/heads/main\", \"refs/heads/release\"]\njob_workflow_ref = {{ glob = \"acme/web/.github/workflows/*@refs/heads/*\" }}\n"
        ));
    }
    Policy::from_toml(Path::new("bench.toml"), &text, &CTX).unwrap()
}

fn policy(c: &mut Criterion) {
    let mut group = c.benchmark_group("policy");
    for n in [10usize, 10_000] {
        let p = policy_of(n);
        let i = n - 1; // the last grant: a scan would visit every other first
        let pkg = PackageName::parse(&format!("@s{i}/web-ui")).unwrap();
        let claims = serde_json::json!({"repository_id": i.to_string(), "ref": "refs/heads/main",
            "job_workflow_ref": "acme/web/.github/workflows/release.yml@refs/heads/main"});
        let identity = Identity { issuer: "github".into(), claims: claims.as_object().unwrap().clone() };
        group.bench_with_input(BenchmarkId::new("exchange: grant_for", n), &n, |b, _| {
            b.iter(|| p.grant_for(black_box(&identity), black_box(&pkg), ActionKind::Publish).unwrap())
        });
        let scope = Scope { packages: vec![pkg.clone()], actions: [ActionKind::Publish].into_iter().collect() };
        let tags = ["latest".to_owned()];
        group.bench_with_input(BenchmarkId::new("use: authorize", n), &n, |b, _| {
            b.iter(|| {
                let req = Requested {
                    package: Some(&pkg),
                    action: ActionKind::Publish,
                    tags: &tags,
                    version: Some("1.0.0"),
                    creates: false,
                };
                p.authorize(black_box(&identity), &format!("g{i}"), &scope, req, ()).unwrap()
            })
        });
    }
    group.finish();
}

fn phantoms(c: &mut Criterion) {
    let rng = SystemRandom::new();
    let store = MemoryStore::new();
    let mut tokens = Vec::new();
    for _ in 0..10_000 {
        let t = PhantomToken::generate(&rng);
        let record = PhantomRecord {
            id: "id".into(),
            identity: Identity { issuer: "github".into(), claims: Default::default() },
            summary: phantom_broker::audit::identity_summary("github", &Default::default()),
            scope: Scope { packages: vec![], actions: Default::default() },
            grant: "g".into(),
            issued_at: 0,
            expires_at: u64::MAX,
            max_uses: None,
        };
        now(store.insert(t.digest(), record)).unwrap();
        tokens.push(t.expose().to_owned());
    }
    let token = tokens[5_000].clone();
    c.bench_function("phantom verify (format + checksum + SHA-256 + lookup among 10k)", |b| {
        b.iter(|| {
            let parsed = PhantomToken::parse(black_box(&token)).unwrap();
            now(store.lookup(&parsed.digest(), 1)).unwrap()
        })
    });
    c.bench_function("phantom mint (256 random bits + checksum)", |b| b.iter(|| PhantomToken::generate(&rng)));
}

const ISS: &str = "https://127.0.0.1:1";
const AUD: &str = "npm:broker.test";
const NOW: u64 = 1_800_000_000;

fn claims(jti: usize) -> String {
    serde_json::json!({"iss": ISS, "aud": AUD, "sub": "repo:acme/web:ref:refs/heads/main", "jti": format!("j{jti}"),
        "iat": NOW - 10, "nbf": NOW - 600, "exp": NOW + 290, "repository": "acme/web", "repository_id": "123456789",
        "repository_owner_id": "4242", "ref": "refs/heads/main", "event_name": "push",
        "job_workflow_ref": "acme/web/.github/workflows/release.yml@refs/heads/main"})
    .to_string()
}

/// An RSA-2048 key from the openssl command (ring cannot generate RSA keys): a PKCS#8 PEM and
/// its JWK; None without openssl.
fn rsa_key() -> Option<(jsonwebtoken::EncodingKey, serde_json::Value)> {
    let dir = tempfile::tempdir().ok()?;
    let pem = dir.path().join("rsa.pem");
    let ok = std::process::Command::new("openssl")
        .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out"])
        .arg(&pem)
        .output()
        .ok()?
        .status
        .success();
    if !ok {
        return None;
    }
    let modulus =
        std::process::Command::new("openssl").args(["rsa", "-noout", "-modulus", "-in"]).arg(&pem).output().ok()?;
    let hex = String::from_utf8(modulus.stdout).ok()?.trim().strip_prefix("Modulus=")?.to_owned();
    let n: Vec<u8> = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&std::fs::read(&pem).ok()?).ok()?;
    let jwk =
        serde_json::json!({"kty": "RSA", "kid": "rsa", "alg": "RS256", "n": URL_SAFE_NO_PAD.encode(n), "e": "AQAB"});
    Some((key, jwk))
}

fn identity(c: &mut Criterion) {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let point = pair.public_key().as_ref();
    let ec_jwk = serde_json::json!({"kty": "EC", "crv": "P-256", "kid": "ec", "alg": "ES256",
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65])});
    let ec_key = jsonwebtoken::EncodingKey::from_ec_der(pkcs8.as_ref());
    let mut keys = vec![("ES256", jsonwebtoken::Algorithm::ES256, ec_key, ec_jwk)];
    match rsa_key() {
        Some((k, jwk)) => keys.push(("RS256", jsonwebtoken::Algorithm::RS256, k, jwk)),
        None => eprintln!("openssl is not available: skipping the RS256 benchmarks"),
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let cfg = IssuerConfig {
        name: "github".into(),
        issuer: ISS.into(),
        preset: None,
        preset_from_url: false,
        algorithms: vec![jsonwebtoken::Algorithm::ES256, jsonwebtoken::Algorithm::RS256],
        audience: AUD.into(),
        ca_file: None,
        leeway: Duration::from_secs(30),
        jwks_cache: Duration::from_secs(3600),
        fetch_timeout: Duration::from_secs(1),
        device: None,
        web: None,
    };
    let issuers = rt.block_on(async { Issuers::new(std::slice::from_ref(&cfg)).unwrap() });
    let mut group = c.benchmark_group("id-token verify");
    for (name, alg, key, jwk) in keys {
        let jwks = serde_json::json!({"keys": [jwk]}).to_string();
        issuers.cache(ISS).unwrap().preload(KeySet::from_keys(parse_jwks(jwks.as_bytes()).unwrap()));
        let mut header = jsonwebtoken::Header::new(alg);
        header.kid = Some(jwk["kid"].as_str().unwrap().to_owned());
        let token =
            jsonwebtoken::encode(&header, &serde_json::from_str::<serde_json::Value>(&claims(1)).unwrap(), &key)
                .unwrap();
        group.bench_function(BenchmarkId::new("cached keys", name), |b| {
            b.iter(|| rt.block_on(issuers.verify(&IdToken::new(token.clone()), Audience::Exactly(AUD), NOW)).unwrap())
        });
        // The signature check alone, straight to ring: what the verifier adds around it is the
        // difference (base64, the header and claims parsed, the claims checked).
        let (input, sig) = token.rsplit_once('.').unwrap();
        let sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
        let b64 = |k: &str| URL_SAFE_NO_PAD.decode(jwk[k].as_str().unwrap()).unwrap();
        group.bench_function(BenchmarkId::new("the signature alone (ring)", name), |b| match name {
            "RS256" => {
                let key = ring::signature::RsaPublicKeyComponents { n: b64("n"), e: b64("e") };
                b.iter(|| key.verify(&ring::signature::RSA_PKCS1_2048_8192_SHA256, input.as_bytes(), &sig).unwrap())
            }
            _ => {
                let point = [&[4u8][..], &b64("x"), &b64("y")].concat();
                let key = ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, point);
                b.iter(|| key.verify(input.as_bytes(), &sig).unwrap())
            }
        });
        // Cold: the JWKS document is parsed into keys first (what a fetch costs besides the network).
        group.bench_function(BenchmarkId::new("cold (parse the JWKS first)", name), |b| {
            b.iter(|| {
                issuers.cache(ISS).unwrap().preload(KeySet::from_keys(parse_jwks(jwks.as_bytes()).unwrap()));
                rt.block_on(issuers.verify(&IdToken::new(token.clone()), Audience::Exactly(AUD), NOW)).unwrap()
            })
        });
    }
    group.finish();
}

fn audit(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let log = Audit::open(&dir.path().join("audit.jsonl"), b"key").unwrap();
    let identity = phantom_broker::audit::identity_summary(
        "github",
        serde_json::json!({"iss": ISS, "sub": "repo:acme/web:ref:refs/heads/main", "repository": "acme/web",
            "repository_id": "123456789", "ref": "refs/heads/main", "run_id": "1608516462"})
        .as_object()
        .unwrap(),
    );
    let record = Record {
        event: phantom_broker::audit::Event::Request,
        request_id: "a1b2c3d40000000001".into(),
        method: Some("GET".into()),
        path: Some("/@acme%2fweb".into()),
        identity: Some(identity),
        action: Some(phantom_broker::audit::Action::npm(phantom_broker::npm::ActionKind::Read)),
        package: Some("@acme/web".into()),
        decision: phantom_broker::audit::Decision::Allow,
        grant: Some("acme-release".into()),
        token_id: Some("0f1e2d3c4b5a69788796a5b4".into()),
        upstream: Some("registry".into()),
        upstream_status: Some(200),
        status: 200,
        latency_ms: 0.412,
        ..Record::default()
    };
    let arc = Arc::new(record.clone());
    c.bench_function("audit append, queued (the request path's cost)", |b| b.iter(|| log.write_queued(arc.clone())));
    c.bench_function("audit append, confirmed (chained, hashed, written)", |b| b.iter(|| log.write(&record).unwrap()));
}

/// A publish body's streaming checks, per byte: the scan of a base64 tarball and the body's
/// fingerprint, fed in 16 KiB pieces as TLS delivers them.
fn publish_stream(c: &mut Criterion) {
    use base64::engine::general_purpose::STANDARD;
    let tarball: Vec<u8> = (0..12u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let mut body = br#"{"_id":"a","name":"a","versions":{"1.0.0":{"name":"a","version":"1.0.0"}},"_attachments":{"a-1.0.0.tgz":{"data":""#.to_vec();
    body.extend_from_slice(STANDARD.encode(&tarball).as_bytes());
    body.extend_from_slice(br#""}}}"#);
    let mut g = c.benchmark_group("publish body, 16 MiB in 16 KiB pieces");
    g.throughput(criterion::Throughput::Bytes(body.len() as u64));
    g.sample_size(20);
    g.bench_function("scan", |b| {
        b.iter(|| {
            let mut scanner = phantom_broker::npm::scan::PublishScanner::new(1 << 20);
            body.chunks(16 * 1024).for_each(|piece| scanner.feed(piece).unwrap());
            black_box(scanner.finish().unwrap())
        })
    });
    g.bench_function("fingerprint BLAKE3", |b| {
        b.iter(|| {
            let mut h = blake3::Hasher::new();
            body.chunks(16 * 1024).for_each(|piece| {
                h.update(piece);
            });
            black_box(h.finalize())
        })
    });
    g.bench_function("fingerprint SHA-256 (ring), for comparison", |b| {
        b.iter(|| {
            let mut h = ring::digest::Context::new(&ring::digest::SHA256);
            body.chunks(16 * 1024).for_each(|piece| h.update(piece));
            black_box(h.finish())
        })
    });
    g.finish();
}

criterion_group!(benches, routes, policy, phantoms, identity, audit, publish_stream);
criterion_main!(benches);
