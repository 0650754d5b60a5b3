//! Hostile callers, against a running broker over real TLS with a real Verdaccio behind it.
//! Every case checks the status, that Verdaccio's storage is unchanged, and (at the end) that
//! the canary credential reached neither the caller nor the broker's files.

use crate::support::raw;
use crate::support::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};
use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn b64(v: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(v)
}

/// A publish body shaped as libnpmpublish sends it, for `name`.
fn publish_body(name: &str, version: &str) -> Value {
    json!({
        "_id": name, "name": name, "description": "x", "dist-tags": {"latest": version},
        "versions": {version: {"name": name, "version": version, "_id": format!("{name}@{version}")}},
        "access": null,
        "_attachments": {format!("{name}-{version}.tgz"): {"content_type": "application/octet-stream", "data": "AAAA", "length": 3}}
    })
}

struct Checked<'a> {
    w: &'a World,
    before: std::collections::BTreeMap<std::path::PathBuf, Vec<u8>>,
    raw_seen: Vec<String>,
}

impl Checked<'_> {
    /// Verdaccio's storage must not have changed since the last call.
    fn unchanged(&mut self, what: &str) {
        let now = self.w.storage();
        assert!(self.before == now, "{what}: Verdaccio's storage changed");
    }
}

#[test]
fn hostile_identity_tokens() {
    let mut w = World::start(DEFAULT_POLICY);
    // A second configured issuer, whose keys must not vouch for the first one's tokens.
    let other = Issuer::start(&w.root().join("issuer2"), &w.certs);
    let config = std::fs::read_to_string(&w.broker.config).unwrap()
        + &format!(
            "\n[issuer.other]\nissuer = \"{}\"\nalgorithms = [\"RS256\"]\nca_file = \"{}\"\n",
            other.url,
            w.certs.ca.display()
        );
    std::fs::write(&w.broker.config, config).unwrap();
    w.broker.restart();
    let mut c = Checked { before: w.storage(), w: &w, raw_seen: Vec::new() };

    let aud = w.npm_audience();
    let base = w.github_claims(&aud);
    let exchange = |token: &str| {
        w.broker(
            "POST",
            "/-/npm/v1/oidc/token/exchange/package/pb-jwt",
            &[("authorization", &format!("Bearer {token}"))],
            "",
        )
    };
    let with = |edit: Value| -> Value {
        let mut claims = base.clone();
        claims["jti"] = json!(format!("j-{}", free_port()));
        for (k, v) in edit.as_object().unwrap() {
            if v.is_null() {
                claims.as_object_mut().unwrap().remove(k);
            } else {
                claims[k] = v.clone();
            }
        }
        claims
    };
    let rsa = |edit: Value| w.mint(&with(edit), "rsa", json!({}));
    let good = rsa(json!({}));
    let (good_head, good_rest) = good.split_once('.').unwrap();
    let good_sig = good.rsplit('.').next().unwrap().to_owned();
    let jwks = w.http.request("GET", &format!("{}/.well-known/jwks", w.issuer.url), &[], "").text();
    let hs256 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &with(json!({})),
        &jsonwebtoken::EncodingKey::from_secret(jwks.as_bytes()),
    )
    .unwrap();
    let other_key = {
        let r = w.http.request(
            "POST",
            &format!("{}/mint", other.url),
            &[],
            json!({"claims": with(json!({})), "key": "rsa"}).to_string(),
        );
        r.json()["token"].as_str().unwrap().to_owned()
    };
    let crafted =
        |header: Value, claims: Value| format!("{}.{}.{good_sig}", b64(header.to_string()), b64(claims.to_string()));

    let cases: Vec<(&str, String, u16)> = vec![
        ("alg none", format!("{}.{}.", b64(r#"{"alg":"none","typ":"JWT"}"#), b64(with(json!({})).to_string())), 401),
        ("alg none with a signature", crafted(json!({"alg": "none"}), with(json!({}))), 401),
        ("HS256 keyed with the issuer's public JWKS", hs256, 401),
        ("an algorithm off the allow-list", w.mint(&with(json!({})), "rsa", json!({"alg": "PS256"})), 401),
        ("ES384 header", w.mint(&with(json!({})), "ec", json!({"alg": "ES384"})), 401),
        ("an unknown kid", w.mint(&with(json!({})), "rsa", json!({"kid": "rsa-9"})), 401),
        ("a kid with path text", w.mint(&with(json!({})), "rsa", json!({"kid": "../../../../etc/passwd"})), 401),
        ("a kid with SQL text", w.mint(&with(json!({})), "rsa", json!({"kid": "rsa-1' OR '1'='1"})), 401),
        (
            "a jku header",
            w.mint(&with(json!({})), "rsa", json!({"jku": format!("{}/.well-known/jwks", w.issuer.url)})),
            401,
        ),
        ("an x5u header", w.mint(&with(json!({})), "rsa", json!({"x5u": "https://127.0.0.1:1/cert"})), 401),
        ("a jwk header", w.mint(&with(json!({})), "rsa", json!({"jwk": {"kty": "oct", "k": "AAAA"}})), 401),
        ("a bad signature", format!("{good_head}.{}", good_rest.replacen('A', "B", 1)), 401),
        ("truncated", good[..good.len() - 20].to_owned(), 401),
        ("extra segments", format!("{good}.{good_sig}"), 401),
        ("bad base64", format!("{good_head}.!!!{good_rest}"), 401),
        ("a payload that is not an object", crafted(json!({"alg": "RS256", "kid": "rsa-1"}), json!(["iss"])), 401),
        ("sub as a number", rsa(json!({"sub": 5})), 401),
        ("aud as an array without ours", rsa(json!({"aud": ["npm:elsewhere", "x"]})), 401),
        ("exp as a string", rsa(json!({"exp": (now() + 60).to_string()})), 401),
        ("missing exp", rsa(json!({"exp": null})), 401),
        ("missing iat", rsa(json!({"iat": null})), 401),
        ("missing iss", rsa(json!({"iss": null})), 401),
        ("nbf in the future", rsa(json!({"nbf": now() + 120})), 401),
        ("iat far in the future", rsa(json!({"iat": now() + 3600, "exp": now() + 3900})), 401),
        ("exp just past the 30 s leeway", rsa(json!({"iat": now() - 400, "exp": now() - 35})), 401),
        ("larger than 16 KiB", rsa(json!({"padding": "x".repeat(17 * 1024)})), 401),
        ("signed by another configured issuer's key", other_key, 401),
        // A list-valued claim matches when it holds the grant's value (a person's `groups`); one
        // that does not, or the value as another type, matches nothing.
        ("repository_id as a list without ours", rsa(json!({"repository_id": ["999", "1234567890"]})), 403),
        ("repository_id as a number", rsa(json!({"repository_id": 123456789})), 403),
        ("repository_id in a nested list", rsa(json!({"repository_id": [["123456789"]]})), 403),
    ];
    for (what, token, status) in &cases {
        let r = exchange(token);
        assert_eq!(r.status, *status, "{what}: {}", r.text());
        assert!(!r.text().contains("phm_"), "{what}: a phantom was minted");
        c.unchanged(what);
    }

    // Accepted shapes: aud as an array holding ours, large (but not huge) claims, exp inside the
    // leeway; and a replay of that last one within the same leeway is refused.
    assert_eq!(exchange(&rsa(json!({"aud": ["x", aud.clone()]}))).status, 201);
    assert_eq!(exchange(&rsa(json!({"padding": "x".repeat(8 * 1024)}))).status, 201);
    let late = rsa(json!({"iat": now() - 400, "exp": now() - 15}));
    assert_eq!(exchange(&late).status, 201, "exp inside the leeway");
    let replay = exchange(&late);
    assert_eq!(replay.status, 401, "a replay inside the leeway: {}", replay.text());

    // Every refusal is on record, and no ID token is.
    settle(&w.broker.dir.join("audit/phantom.jsonl"));
    let audit = std::fs::read_to_string(w.broker.dir.join("audit/phantom.jsonl")).unwrap();
    let refusals =
        w.broker.audit_lines().iter().filter(|l| l["event"] == "exchange" && l["decision"] == "deny").count();
    assert_eq!(refusals, cases.len() + 1);
    for (what, token, _) in &cases {
        let sig = token.rsplit('.').next().unwrap_or_default();
        assert!(sig.len() < 8 || !audit.contains(sig), "{what}: the token reached the audit log");
    }
    c.raw_seen.clear();
}

#[test]
fn hostile_phantoms_routes_and_bodies() {
    let w = World::start(DEFAULT_POLICY);
    // Something to attack: pb-live exists upstream.
    let live = w.phantom(&["pb-live"], &["publish", "dist-tag"], None);
    let auth_live = format!("Bearer {live}");
    let json_auth = [("authorization", auth_live.as_str()), ("content-type", "application/json")];
    assert_eq!(w.broker("PUT", "/pb-live", &json_auth, publish_body("pb-live", "1.0.0").to_string()).status, 201);
    let mut c = Checked { before: w.storage(), w: &w, raw_seen: Vec::new() };

    // Phantom tampering and guessing.
    let rng = ring::rand::SystemRandom::new();
    let guessed = phantom_broker::phantom::PhantomToken::generate(&rng).expose().to_owned();
    let flip = |s: &str, i: usize| {
        let mut b = s.as_bytes().to_vec();
        b[i] = if b[i] == b'x' { b'y' } else { b'x' };
        String::from_utf8(b).unwrap()
    };
    let phantoms: Vec<(&str, String)> = vec![
        ("guessed (valid checksum, never issued)", guessed),
        ("bad checksum", flip(&live, live.len() - 1)),
        ("random part changed", flip(&live, 8)),
        ("prefix changed", format!("phx_{}", &live[4..])),
        ("suffix added", format!("{live}a")),
        ("suffix cut", live[..live.len() - 1].to_owned()),
        ("whitespace inside", format!("{} {}", &live[..20], &live[20..])),
    ];
    for (what, token) in &phantoms {
        let r = w.broker(
            "PUT",
            "/pb-live",
            &[("authorization", &format!("Bearer {token}")), ("content-type", "application/json")],
            publish_body("pb-live", "2.0.0").to_string(),
        );
        assert_eq!(r.status, 401, "{what}: {}", r.text());
        c.unchanged(what);
    }

    // A valid phantom outside its package, action or tag.
    let cases: Vec<(&str, &str, &str, String, u16)> = vec![
        ("another package", "PUT", "/pb-other", publish_body("pb-other", "1.0.0").to_string(), 403),
        ("another action (unpublish)", "DELETE", "/pb-live/-rev/1-abc", String::new(), 403),
        (
            "another action (deprecate body)",
            "PUT",
            "/pb-live",
            {
                let mut p = publish_body("pb-live", "1.0.0");
                p["_attachments"] = json!({});
                p.to_string()
            },
            403,
        ),
        ("another dist-tag", "PUT", "/-/package/pb-live/dist-tags/beta", "\"1.0.0\"".into(), 403),
        (
            "a publish under another tag",
            "PUT",
            "/pb-live",
            {
                let mut p = publish_body("pb-live", "3.0.0");
                p["dist-tags"] = json!({"beta": "3.0.0"});
                p.to_string()
            },
            403,
        ),
    ];
    for (what, method, path, body, status) in &cases {
        let r = w.broker(method, path, &json_auth, body.clone());
        assert_eq!(r.status, *status, "{what}: {}", r.text());
        c.unchanged(what);
    }

    // A phantom anywhere but Authorization is refused, and never forwarded from there.
    for (what, headers) in [
        ("Proxy-Authorization", vec![("proxy-authorization", auth_live.clone())]),
        ("a cookie", vec![("cookie", format!("token={live}"))]),
    ] {
        let hs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = w.broker("GET", "/pb-live", &hs, "");
        assert_eq!(r.status, 400, "{what}: {}", r.text());
    }
    assert_eq!(w.broker("GET", &format!("/pb-live?token={live}"), &[], "").status, 400);

    // Route confusion: each is refused or read exactly as the upstream would read it.
    let put = |path: &str| w.broker("PUT", path, &json_auth, publish_body("pb-live", "4.0.0").to_string()).status;
    for (path, status) in [
        ("/pb-live%2fx", 400),
        ("/%40scope%2fpb-live", 400),
        ("/@scope%252fpb-live", 400),
        ("/pb-live/..", 400),
        ("/pb-live/%2e%2e", 400),
        ("/./pb-live", 400),
        ("/pb-live/", 400),
        ("//pb-live", 400),
        ("/PB-LIVE", 400),
        ("/pb-live?write=true", 400),
        ("/pb-live/-rev/1-a", 403),
        ("/pb-live/4.0.0", 405),
        ("/pb-live/-/pb-live-4.0.0.tgz", 405),
        (&format!("/{}", "a".repeat(300)), 400),
    ] {
        assert_eq!(put(path), status, "PUT {path}");
        c.unchanged(path);
    }
    for method in ["HEAD", "OPTIONS", "PATCH", "BREW"] {
        let req = format!(
            "{method} /-/package/pb-live/dist-tags/latest HTTP/1.1\r\nhost: x\r\nauthorization: {auth_live}\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
        );
        let r = raw::send(w.broker.port, &w.certs.ca, req.as_bytes());
        assert_eq!(r.status, Some(405), "{method}: {r:?}");
        c.raw_seen.push(r.text);
        c.unchanged(method);
    }
    // The unescaped scoped form is the same package, as the registry reads it.
    let scoped = w.phantom(&["@acme/confused"], &["publish"], None);
    let r = w.broker(
        "PUT",
        "/@acme/confused",
        &[("authorization", &format!("Bearer {scoped}")), ("content-type", "application/json")],
        publish_body("@acme/other", "1.0.0").to_string(),
    );
    assert_eq!(r.status, 400, "a body for another package under the unescaped form: {}", r.text());
    // A tarball path naming another package inside this one's URL.
    assert_eq!(w.broker("GET", "/pb-live/-/pb-other-1.0.0.tgz", &[], "").status, 400);
    c.unchanged("routes");

    // Raw requests no client library would send.
    let raw_cases: Vec<(&str, Vec<u8>)> = vec![
        ("a space in the name", b"GET /pb live HTTP/1.1\r\nhost: x\r\n\r\n".to_vec()),
        ("a control character", b"GET /pb\x01live HTTP/1.1\r\nhost: x\r\n\r\n".to_vec()),
        ("a Cyrillic look-alike scope", "GET /@\u{430}cme%2fweb HTTP/1.1\r\nhost: x\r\n\r\n".as_bytes().to_vec()),
        ("Content-Length with Transfer-Encoding", format!("PUT /pb-live HTTP/1.1\r\nhost: x\r\nauthorization: {auth_live}\r\ncontent-type: application/json\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n").into_bytes()),
        ("two different Content-Lengths", format!("PUT /pb-live HTTP/1.1\r\nhost: x\r\nauthorization: {auth_live}\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\n{{}}").into_bytes()),
        ("obsolete line folding", format!("PUT /pb-live HTTP/1.1\r\nhost: x\r\nauthorization: {auth_live}\r\nx-folded: a\r\n b\r\ncontent-length: 2\r\n\r\n{{}}").into_bytes()),
        ("headers over 64 KiB", format!("GET /pb-live HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n", "a".repeat(70 * 1024)).into_bytes()),
        ("too many headers", format!("GET /pb-live HTTP/1.1\r\nhost: x\r\n{}\r\n", (0..150).map(|i| format!("x-h{i}: v\r\n")).collect::<String>()).into_bytes()),
    ];
    for (what, bytes) in raw_cases {
        let r = raw::send(w.broker.port, &w.certs.ca, &bytes);
        let status = r.status.unwrap_or(0);
        assert!(status == 0 || (400..500).contains(&status), "{what}: {r:?}");
        c.raw_seen.push(r.text);
        c.unchanged(what);
    }
    // A Host that is not ours chooses nothing: the request goes to the configured upstream.
    let r = raw::send(
        w.broker.port,
        &w.certs.ca,
        b"GET /pb-live HTTP/1.1\r\nhost: attacker.example.com\r\nconnection: close\r\n\r\n",
    );
    assert_eq!(r.status, Some(200), "{r:?}");
    assert!(r.text.contains("\"_id\": \"pb-live\"") || r.text.contains("\"_id\":\"pb-live\""), "{}", r.text);
    c.raw_seen.push(r.text);

    // Publish bodies.
    let bodies: Vec<(&str, Vec<u8>, &str, u16)> = vec![
        (
            "two versions",
            {
                let mut p = publish_body("pb-live", "5.0.0");
                p["versions"]["5.0.1"] = json!({"name": "pb-live", "version": "5.0.1"});
                p.to_string().into_bytes()
            },
            "application/json",
            400,
        ),
        (
            "a duplicate key",
            br#"{"_id":"pb-live","name":"pb-live","name":"pb-other"}"#.to_vec(),
            "application/json",
            400,
        ),
        (
            "a duplicate key, deep",
            publish_body("pb-live", "5.0.0")
                .to_string()
                .replacen("\"length\":3", "\"length\":3,\"length\":4", 1)
                .into_bytes(),
            "application/json",
            400,
        ),
        (
            "10,000 levels of nesting",
            format!("{{\"a\":{}{}}}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes(),
            "application/json",
            400,
        ),
        ("invalid UTF-8", b"{\"_id\":\"pb-live\",\"name\":\"\xff\xfe\"}".to_vec(), "application/json", 400),
        ("a text/plain body", publish_body("pb-live", "5.0.0").to_string().into_bytes(), "text/plain", 415),
        (
            "attachment for another version",
            {
                let mut p = publish_body("pb-live", "5.0.0");
                p["_attachments"] = json!({"pb-live-6.0.0.tgz": {"data": "AAAA"}});
                p.to_string().into_bytes()
            },
            "application/json",
            400,
        ),
    ];
    for (what, body, ctype, status) in bodies {
        let r = w.broker("PUT", "/pb-live", &[("authorization", auth_live.as_str()), ("content-type", ctype)], body);
        assert_eq!(r.status, status, "{what}: {}", r.text());
        c.unchanged(what);
    }
    let gz =
        [("authorization", auth_live.as_str()), ("content-type", "application/json"), ("content-encoding", "gzip")];
    assert_eq!(w.broker("PUT", "/pb-live", &gz, vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0]).status, 415);
    c.unchanged("gzip");

    let canary = w.verdaccio.token.clone();
    for seen in &c.raw_seen {
        assert!(!seen.contains(&canary));
    }
    w.assert_canary_contained();
}

#[test]
fn hostile_connections() {
    let w = World::start_with(Options {
        policy: DEFAULT_POLICY.into(),
        server: "client_timeout = \"2s\"\nmax_connections = 24\nmax_body_bytes = 1048576\nmax_buffered_bytes = 2097152"
            .into(),
        ..Options::default()
    });
    let p = w.phantom(&["pb-conn"], &["publish"], None);
    let auth = format!("authorization: Bearer {p}\r\n");
    let before = w.storage();

    // Bodies over the limit: refused on Content-Length alone, or as the chunks pass the limit.
    let r = raw::send(
        w.broker.port,
        &w.certs.ca,
        format!("PUT /pb-conn HTTP/1.1\r\nhost: x\r\n{auth}content-type: application/json\r\ncontent-length: 2097152\r\n\r\n").as_bytes(),
    );
    assert_eq!(r.status, Some(413), "{r:?}");
    let mut tls = raw::connect(w.broker.port, &w.certs.ca, &[b"http/1.1"]);
    write!(tls, "PUT /pb-conn HTTP/1.1\r\nhost: x\r\n{auth}content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n").unwrap();
    let chunk = vec![b' '; 64 * 1024];
    for _ in 0..24 {
        if write!(tls, "{:x}\r\n", chunk.len())
            .and_then(|()| tls.write_all(&chunk))
            .and_then(|()| tls.write_all(b"\r\n"))
            .is_err()
        {
            break;
        }
    }
    let r = raw::read_all(&mut tls, Duration::from_secs(5));
    assert_eq!(r.status, Some(413), "{r:?}");

    // Slow loris: on the head, and on the body.
    let mut slow = raw::connect(w.broker.port, &w.certs.ca, &[b"http/1.1"]);
    slow.write_all(b"GET /pb-conn HTTP/1.1\r\nhost: x\r\nx-slow: ").unwrap();
    let r = raw::read_all(&mut slow, Duration::from_secs(6));
    assert!(r.closed, "a slow head was not cut off: {r:?}");
    let mut slow = raw::connect(w.broker.port, &w.certs.ca, &[b"http/1.1"]);
    write!(slow, "PUT /pb-conn HTTP/1.1\r\nhost: x\r\n{auth}content-type: application/json\r\ncontent-length: 1000\r\n\r\n{{\"_id\"").unwrap();
    let r = raw::read_all(&mut slow, Duration::from_secs(6));
    assert_eq!(r.status, Some(408), "a slow body was not cut off: {r:?}");
    // An exchange's body is read by the same reader, and cut off the same way.
    let mut slow = raw::connect(w.broker.port, &w.certs.ca, &[b"http/1.1"]);
    write!(slow, "POST /-/phantom/v1/exchange HTTP/1.1\r\nhost: x\r\nauthorization: Bearer x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{{\"packages\"").unwrap();
    let r = raw::read_all(&mut slow, Duration::from_secs(6));
    assert_eq!(r.status, Some(408), "a slow exchange body was not cut off: {r:?}");

    // More connections than the limit: the extra ones are closed at once; the broker stays up.
    let mut held: Vec<raw::Tls> = Vec::new();
    for _ in 0..30 {
        let mut t = raw::connect(w.broker.port, &w.certs.ca, &[b"http/1.1"]);
        let _ = t.write_all(b"GET /-/ping HTTP/1.1\r\nhost: x\r\n\r\n");
        held.push(t);
    }
    let answered = held
        .iter_mut()
        .map(|t| raw::read_all(t, Duration::from_millis(800)).status)
        .filter(|s| *s == Some(200))
        .count();
    assert!(answered <= 24, "{answered} connections served over a limit of 24");
    assert!(answered >= 20, "only {answered} connections served");
    drop(held);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(w.broker("GET", "/-/ping", &[], "").status, 200);

    // HTTP/2: a rapid-reset flood ends the connection, and the broker keeps serving.
    let resets = h2_rapid_reset(w.broker.port, &w.certs.ca, 5000);
    assert!(resets < 5000, "the broker accepted 5000 reset streams on one connection");
    assert_eq!(w.broker("GET", "/-/ping", &[], "").status, 200);
    assert_eq!(before, w.storage());
    w.assert_canary_contained_without_writes();
}

/// Opens streams and resets each at once; returns how many it sent before the server ended
/// the connection.
fn h2_rapid_reset(port: u16, ca: &std::path::Path, n: usize) -> usize {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let (mut client, driver) = crate::support::framing::h2_connect(port, ca).await;
        let mut sent = 0;
        for _ in 0..n {
            let req = http::Request::get("https://127.0.0.1/-/ping").body(()).unwrap();
            match client.send_request(req, false) {
                Ok((_resp, mut stream)) => {
                    stream.send_reset(h2::Reason::CANCEL);
                    sent += 1;
                }
                Err(_) => break,
            }
            if sent % 50 == 0 {
                tokio::task::yield_now().await;
                if driver.is_finished() {
                    break;
                }
                // Let the server's GOAWAY arrive.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        sent
    })
}

/// An idle HTTP/1.1 connection gives its HTTP state back (it is "parked") and keeps serving:
/// the next request, a head split across the park, and pipelined requests all work on the same
/// connection. A refused request's unread body is never read as a request, parked connections
/// still time out, and a slow head is still cut off.
#[test]
fn idle_connections_park_and_keep_serving() {
    let mut w = World::start_with(Options {
        policy: DEFAULT_POLICY.into(),
        server: "client_timeout = \"3s\"".into(),
        ..Options::default()
    });
    let log = w.broker.dir.join("broker.log");
    let parked = || std::fs::read_to_string(&log).unwrap_or_default().matches("parked an idle connection").count();
    // Longer than twice the broker's park interval (1 s).
    let idle = Duration::from_millis(2600);
    let ping = b"GET /-/ping HTTP/1.1\r\nhost: x\r\n\r\n";
    let status = |tls: &mut raw::Tls| raw::read_response(tls, Duration::from_secs(5)).map(|(s, _)| s);

    let mut tls = raw::connect(w.broker.port, &w.certs.ca, &[b"http/1.1"]);
    tls.write_all(ping).unwrap();
    assert_eq!(status(&mut tls), Some(200));
    assert_eq!(parked(), 0);
    std::thread::sleep(idle);
    assert_eq!(parked(), 1, "the idle connection was not parked");
    tls.write_all(ping).unwrap();
    assert_eq!(status(&mut tls), Some(200), "a parked connection did not serve its next request");

    // A head that starts, then pauses across the park interval, then ends.
    tls.write_all(b"GET /-/ping HTTP/1.1\r\nho").unwrap();
    std::thread::sleep(idle);
    tls.write_all(b"st: x\r\n\r\n").unwrap();
    assert_eq!(status(&mut tls), Some(200), "a head split across a park was lost");

    // Two pipelined requests in one write, right after a park.
    std::thread::sleep(idle);
    // The split head's stream came back with bytes, so it was not counted as parked.
    assert_eq!(parked(), 2, "the connection did not park again after the split head");
    tls.write_all(&[&ping[..], &ping[..]].concat()).unwrap();
    assert_eq!(status(&mut tls), Some(200));
    assert_eq!(status(&mut tls), Some(200), "the second pipelined request was lost");

    // A refused write whose body carries a request: the body is never served as a request,
    // however long the connection idles afterwards.
    let smuggled = "GET /-/ping HTTP/1.1\r\nhost: x\r\n\r\n";
    let mut put = raw::connect(w.broker.port, &w.certs.ca, &[b"http/1.1"]);
    write!(
        put,
        "PUT /pb-park HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{smuggled}",
        smuggled.len()
    )
    .unwrap();
    assert_eq!(status(&mut put), Some(401));
    std::thread::sleep(idle);
    let rest = raw::read_all(&mut put, Duration::from_millis(500));
    assert!(!rest.text.contains("HTTP/1.1"), "the refused body was served as a request: {rest:?}");

    // A parked connection still ends after client_timeout of silence.
    let r = raw::read_all(&mut tls, Duration::from_secs(8));
    assert!(r.closed && r.text.is_empty(), "a parked connection outlived its idle timeout: {r:?}");

    // A slow head is cut off, parks or not.
    let mut slow = raw::connect(w.broker.port, &w.certs.ca, &[b"http/1.1"]);
    slow.write_all(b"GET /-/ping HTTP/1.1\r\nhost: x\r\nx-slow: ").unwrap();
    let started = std::time::Instant::now();
    let r = raw::read_all(&mut slow, Duration::from_secs(10));
    assert!(r.closed, "a slow head was not cut off: {r:?}");
    assert!(started.elapsed() < Duration::from_secs(7), "a slow head held on for {:?}", started.elapsed());
    w.assert_canary_contained_without_writes();

    // A stop: a publish in flight completes (its response says the connection closes), parked
    // and idle connections are closed at once, and the broker exits.
    let mut parked_conn = raw::connect(w.broker.port, &w.certs.ca, &[b"http/1.1"]);
    parked_conn.write_all(ping).unwrap();
    assert_eq!(status(&mut parked_conn), Some(200));
    std::thread::sleep(idle);
    let mut idle_conn = raw::connect(w.broker.port, &w.certs.ca, &[b"http/1.1"]);
    idle_conn.write_all(ping).unwrap();
    assert_eq!(status(&mut idle_conn), Some(200));
    let p = w.phantom(&["pb-drain"], &["publish"], None);
    let body = publish_body("pb-drain", "1.0.0").to_string();
    let (first, rest) = body.split_at(body.len() / 2);
    let mut busy = raw::connect(w.broker.port, &w.certs.ca, &[b"http/1.1"]);
    write!(
        busy,
        "PUT /pb-drain HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {p}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{first}",
        body.len()
    )
    .unwrap();
    let rest = rest.to_owned();
    let finisher = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(800));
        busy.write_all(rest.as_bytes()).unwrap();
        raw::read_response(&mut busy, Duration::from_secs(10))
    });
    std::thread::sleep(Duration::from_millis(300));
    let took = w.broker.terminate(Duration::from_secs(15)).expect("the broker did not exit after SIGTERM");
    let (code, text) = finisher.join().unwrap().expect("the publish in flight got no answer");
    assert!(code < 500, "the publish in flight was cut short: {text}");
    assert!(text.to_ascii_lowercase().contains("connection: close"), "{text}");
    for conn in [&mut parked_conn, &mut idle_conn] {
        let r = raw::read_all(conn, Duration::from_secs(1));
        assert!(r.closed && r.text.is_empty(), "{r:?}");
    }
    // Well within the drain timeout (10 s): no idle or parked connection held the stop up.
    assert!(took < Duration::from_secs(8), "the stop took {took:?}");
}
