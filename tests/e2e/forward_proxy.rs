//! The forward proxy against callers no client library would be: CONNECT to hosts and ports
//! that are not upstreams, plain-HTTP forwarding, bytes before the tunnel, a TLS server name or
//! a Host that is not the CONNECT host, and the token exchanges asked for inside a tunnel.
//! Every refusal is audited with `"via": "proxy"`; the tunnel's certificate chains to the
//! proxy's CA (not to the CA of Verdaccio's own certificate), for the upstream's name.

use crate::support::raw::{read_all, RawResp, Tls};
use crate::support::{Options, World};
use rustls::pki_types::ServerName;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Sends `bytes` to the proxy and returns what it answers before closing (or within 3 s).
fn proxy_exchange(port: u16, bytes: &[u8]) -> String {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    tcp.write_all(bytes).unwrap();
    let (start, mut got, mut buf) = (Instant::now(), Vec::new(), [0u8; 4096]);
    while start.elapsed() < Duration::from_secs(3) {
        match tcp.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// A tunnel to `authority` with TLS inside it for `sni`, trusting only `ca` (and the system's
/// roots). `Err` with why, if the proxy or the handshake refused.
fn tunnel(port: u16, authority: &str, sni: &str, ca: &std::path::Path) -> Result<Tls, String> {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    tcp.write_all(format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tcp.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return Err(format!("the proxy closed: {}", String::from_utf8_lossy(&head))),
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    if !head.starts_with("HTTP/1.1 200") {
        return Err(head);
    }
    let mut cfg = phantom_broker::support::net::client_config(Some(ca)).unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let conn = rustls::ClientConnection::new(Arc::new(cfg), ServerName::try_from(sni.to_owned()).unwrap()).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).map_err(|e| format!("TLS: {e}"))?;
    }
    tls.sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    Ok(tls)
}

fn request(tls: &mut Tls, head: &str) -> RawResp {
    tls.write_all(head.as_bytes()).unwrap();
    read_all(tls, Duration::from_secs(5))
}

#[test]
fn the_proxy_tunnels_only_to_upstream_hosts_and_checks_every_name() {
    let w = World::start_with(Options { proxy: true, ..Options::default() });
    let proxy = w.proxy.as_ref().unwrap();
    let upstream = w.upstream_url.trim_start_matches("https://").trim_end_matches('/').to_owned();
    let upstream_port = upstream.rsplit_once(':').unwrap().1;
    assert!(upstream.starts_with("localhost:"), "{upstream}");

    // CONNECT to anything but the upstream's host and port, and anything but CONNECT: 403.
    for (what, head) in [
        ("the upstream's port on another name", format!("CONNECT 127.0.0.1:{upstream_port} HTTP/1.1\r\n\r\n")),
        ("another port", "CONNECT localhost:1 HTTP/1.1\r\n\r\n".to_owned()),
        ("another host", "CONNECT registry.invalid:443 HTTP/1.1\r\n\r\n".to_owned()),
        ("plain-HTTP forwarding", format!("GET http://{upstream}/-/ping HTTP/1.1\r\nHost: {upstream}\r\n\r\n")),
    ] {
        let answer = proxy_exchange(proxy.port, head.as_bytes());
        assert!(answer.starts_with("HTTP/1.1 403"), "{what}: {answer}");
    }
    // Malformed targets and bytes sent before the tunnel exists: 400.
    for (what, bytes) in [
        ("a target without a port", "CONNECT localhost HTTP/1.1\r\n\r\n".to_owned()),
        ("TLS before the 200", format!("CONNECT {upstream} HTTP/1.1\r\n\r\n\x16\x03\x01")),
    ] {
        let answer = proxy_exchange(proxy.port, bytes.as_bytes());
        assert!(answer.starts_with("HTTP/1.1 400"), "{what}: {answer}");
    }

    // The tunnel's certificate is the proxy's, for the upstream's name: a client that trusts
    // only the proxy's CA completes the handshake for `localhost`...
    let mut tls = tunnel(proxy.port, &upstream, "localhost", &proxy.ca).expect("a tunnel to the upstream");
    let ok = request(&mut tls, &format!("GET /-/ping HTTP/1.1\r\nHost: {upstream}\r\nConnection: close\r\n\r\n"));
    assert_eq!(ok.status, Some(200), "{}", ok.text);
    // ...and one that trusts only the CA of Verdaccio's own certificate does not: nothing is
    // tunnelled blindly.
    let blind = tunnel(proxy.port, &upstream, "localhost", &w.certs.ca);
    assert!(blind.as_ref().err().is_some_and(|e| e.starts_with("TLS")), "{:?}", blind.err());
    // A server name other than the CONNECT host gets no certificate at all.
    let other = tunnel(proxy.port, &upstream, "other.test", &proxy.ca);
    assert!(other.as_ref().err().is_some_and(|e| e.starts_with("TLS")), "{:?}", other.err());

    // Inside the tunnel, Host must name the CONNECT host.
    for host in [format!("other.test:{upstream_port}"), "localhost:1".to_owned(), "localhost".to_owned()] {
        let mut tls = tunnel(proxy.port, &upstream, "localhost", &proxy.ca).unwrap();
        let r = request(&mut tls, &format!("GET /-/ping HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"));
        assert_eq!(r.status, Some(421), "Host {host}: {}", r.text);
    }
    // The exchanges are the registry face's: not offered inside a tunnel.
    for path in ["/-/phantom/v1/exchange", "/-/npm/v1/oidc/token/exchange/package/pb-web"] {
        let mut tls = tunnel(proxy.port, &upstream, "localhost", &proxy.ca).unwrap();
        let id_token = w.id_token(serde_json::json!({}));
        let r = request(
            &mut tls,
            &format!(
                "POST {path} HTTP/1.1\r\nHost: {upstream}\r\nAuthorization: Bearer {id_token}\r\n\
                 Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
            ),
        );
        assert_eq!(r.status, Some(403), "{path}: {}", r.text);
        assert!(r.text.contains("phantom login --proxy"), "{path}: {}", r.text);
    }

    let audit = w.broker.audit_lines();
    let refused_connects: Vec<_> = audit.iter().filter(|l| l["method"] == "CONNECT").collect();
    assert!(refused_connects.len() >= 7, "{refused_connects:?}");
    for l in &refused_connects {
        assert_eq!(l["via"], "proxy");
        assert_eq!(l["decision"], "deny");
        assert!(l["reason"].is_string());
    }
    assert!(refused_connects.iter().any(|l| l["status"] == 421), "the SNI refusal is audited");
    let misdirected = audit.iter().filter(|l| l["status"] == 421 && l["method"] == "GET").count();
    assert_eq!(misdirected, 3);
    assert!(audit.iter().all(|l| l["via"] == "proxy"), "every line of this run came through the proxy");
    w.assert_canary_contained_without_writes();

    // A tunnel kept alive and idle does not hold up a graceful stop: it is closed at once.
    let mut kept = tunnel(proxy.port, &upstream, "localhost", &proxy.ca).unwrap();
    kept.write_all(format!("GET /-/ping HTTP/1.1\r\nHost: {upstream}\r\n\r\n").as_bytes()).unwrap();
    let r = read_all(&mut kept, Duration::from_secs(1));
    assert_eq!((r.status, r.closed), (Some(200), false), "{}", r.text);
    let mut w = w;
    let took = w.broker.terminate(Duration::from_secs(10)).expect("the broker stops");
    assert!(took < Duration::from_secs(5), "the stop took {took:?}");
    assert!(read_all(&mut kept, Duration::from_secs(2)).closed, "the tunnel was left open");
}

/// `phantom login --proxy` files the phantom under the upstream's own host and prints the
/// lines an agent's .npmrc needs; with them, the unmodified npm CLI publishes through the proxy.
#[test]
fn phantom_login_for_an_agent_behind_the_proxy() {
    let policy = crate::support::DEFAULT_POLICY.to_owned();
    let w = World::start_with(Options { policy, proxy: true, ..Options::default() });
    let proxy = w.proxy.as_ref().unwrap();
    let npmrc = w.root().join("agent-npmrc");
    let token_file = w.root().join("id-token");
    std::fs::write(&token_file, w.id_token(serde_json::json!({}))).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_phantom"))
        .args(["login", "--broker", &w.broker.url, "--packages", "pb-agent", "--actions", "publish"])
        .args(["--proxy", &proxy.url, "--registry", &w.upstream_url])
        .arg("--proxy-ca")
        .arg(&proxy.ca)
        .arg("--ca-file")
        .arg(&w.certs.ca)
        .arg("--npmrc")
        .arg(&npmrc)
        .arg("--id-token-file")
        .arg(&token_file)
        .output()
        .unwrap();
    let printed = crate::support::text(&out);
    assert!(out.status.success(), "{printed}");
    w.record_output(&out);
    let key = format!("//{}:_authToken=phm_", w.upstream_url.trim_start_matches("https://"));
    let written = std::fs::read_to_string(&npmrc).unwrap();
    assert!(written.contains(&key), "{written}");
    assert!(!printed.contains("phm_"), "the phantom is printed: {printed}");
    // The lines the agent's setup needs are printed, and written into its .npmrc.
    let lines: Vec<&str> = printed.lines().filter_map(|l| l.strip_prefix("  ")).collect();
    assert_eq!(lines.len(), 3, "{printed}");
    assert!(lines.contains(&format!("https-proxy={}", proxy.url).as_str()), "{printed}");
    for line in lines {
        assert!(written.lines().any(|l| l == line), "`{line}` is not in the agent's .npmrc: {written}");
    }

    let pkg = w.package("pb-agent", "1.0.0");
    let out = w.npm_with(&npmrc, &pkg, &["publish"]);
    assert!(out.status.success(), "{}", crate::support::text(&out));
    assert_eq!(w.upstream_packument("pb-agent").status, 200);
    let audit = w.broker.audit_lines();
    let publish = audit.iter().find(|l| l["action"] == "publish" && l["decision"] == "allow");
    assert_eq!(publish.expect("the publish is audited")["via"], "proxy");
    w.assert_canary_contained();
}

/// `npm login` against the broker is told, in a notice npm prints, how to get a phantom.
#[test]
fn npm_login_is_told_to_use_phantom_login() {
    let w = World::start(crate::support::DEFAULT_POLICY);
    let dir = w.root().join("login");
    std::fs::create_dir_all(&dir).unwrap();
    let out = w.npm(&dir, &["login"], None);
    let printed = crate::support::text(&out);
    assert!(!out.status.success(), "{printed}");
    assert!(printed.contains("npm notice phantom: this registry has no accounts"), "{printed}");
    assert!(printed.contains("phantom login --broker"), "{printed}");
    let r = w.broker("PUT", "/-/user/org.couchdb.user:eve", &[("content-type", "application/json")], "{}");
    assert_eq!(r.status, 403);
    assert!(r.headers["npm-notice"].to_str().unwrap().starts_with("phantom: "));
    let audit = w.broker.audit_lines();
    assert!(audit.iter().any(|l| l["path"] == "/-/v1/login" && l["decision"] == "deny"), "{audit:?}");
    assert!(audit.iter().any(|l| l["path"] == "/-/user" && l["status"] == 403), "{audit:?}");
}

/// Through the proxy, a recording upstream (behind TLS, named `localhost`) sees the real
/// credential on a write and on a read with a phantom, no credential on an anonymous read, and
/// never the phantom; what it got is exactly the body that was sent.
#[test]
fn the_upstream_behind_the_proxy_sees_the_credential_only_with_a_phantom() {
    use crate::support::recording::{End, Recording};
    let dir = tempfile::tempdir().unwrap();
    let certs = crate::support::dev_certs(&dir.path().join("certs"));
    let rec = Recording::start(&certs.cert, &certs.key);
    let canary = format!("recording-canary-{}", crate::support::free_port());
    let secret = dir.path().join("recording-token");
    std::fs::write(&secret, &canary).unwrap();
    let extra = format!(
        "[upstream.recording]\nurl = \"https://localhost:{}/\"\nscopes = [\"@rec\"]\nca_file = \"{{ca}}\"\n\n\
         [credential.recording]\nupstream = \"recording\"\nsource = {{ file = \"{}\" }}\n",
        rec.port,
        secret.display()
    );
    let policy = r#"
[[grant]]
name = "rec"
issuer = "github"
packages = ["@rec/*"]
actions = ["publish"]
create = true
credential = "recording"
[grant.claims]
repository_id = "123456789"
"#;
    let w = World::start_with(Options {
        policy: policy.into(),
        extra,
        certs: Some(certs),
        proxy: true,
        ..Options::default()
    });
    let proxy = w.proxy.as_ref().unwrap();
    let authority = format!("localhost:{}", rec.port);
    let phantom = w.phantom(&["@rec/tool"], &["publish"], None);
    let open = || tunnel(proxy.port, &authority, "localhost", &proxy.ca).unwrap();

    let r =
        request(&mut open(), &format!("GET /@rec%2fother HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"));
    assert!(r.status.is_some(), "{}", r.text);
    let r = request(
        &mut open(),
        &format!(
            "GET /@rec%2ftool HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Bearer {phantom}\r\nConnection: close\r\n\r\n"
        ),
    );
    assert!(r.status.is_some(), "{}", r.text);
    let tgz = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, b"tarball");
    let body = serde_json::json!({"_id": "@rec/tool", "name": "@rec/tool", "dist-tags": {"latest": "1.0.0"},
        "versions": {"1.0.0": {"name": "@rec/tool", "version": "1.0.0", "_id": "@rec/tool@1.0.0"}},
        "_attachments": {"@rec/tool-1.0.0.tgz": {"content_type": "application/octet-stream", "data": tgz, "length": 7}}})
    .to_string();
    let r = request(
        &mut open(),
        &format!(
            "PUT /@rec%2ftool HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Bearer {phantom}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    );
    assert_eq!(r.status, Some(201), "{}", r.text);
    rec.settle();
    let seen = rec.seen();
    let by = |method: &str, target: &str| {
        seen.iter()
            .find(|s| s.method == method && s.target == target)
            .unwrap_or_else(|| panic!("{method} {target}: {seen:?}"))
    };
    let bearer = Some(format!("Bearer {canary}"));
    assert_eq!(by("GET", "/@rec%2fother").header("authorization"), None, "an anonymous read carried a credential");
    assert_eq!(by("GET", "/@rec%2ftool").header("authorization"), bearer);
    let put = by("PUT", "/@rec%2ftool");
    assert_eq!(put.header("authorization"), bearer);
    assert_eq!(put.end, End::Complete);
    assert_eq!(put.body, body.as_bytes(), "the upstream got other bytes than were sent");
    for s in &seen {
        for (name, value) in &s.headers {
            assert!(!value.as_bytes().windows(4).any(|w| w == b"phm_"), "a phantom reached the upstream in {name}");
        }
    }
    let audit = w.broker.audit_lines();
    let publish = audit.iter().find(|l| l["action"] == "publish" && l["decision"] == "allow").expect("audited");
    assert_eq!(publish["via"], "proxy");
    assert_eq!(publish["upstream"], "recording");
    let text = std::fs::read_to_string(w.broker.dir.join("audit/phantom.jsonl")).unwrap();
    assert!(!text.contains(&canary) && !text.contains(&phantom), "a secret is in the audit log");
    let log = std::fs::read_to_string(w.broker.dir.join("broker.log")).unwrap();
    assert!(!log.contains(&canary) && !log.contains(&phantom), "a secret is in the broker's log");
    std::mem::forget(dir);
}
