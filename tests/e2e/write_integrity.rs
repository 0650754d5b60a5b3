//! Write integrity: the upstream acts on exactly the bytes the broker checked, read exactly as
//! the broker read them. Every write here is sent as an attacker holding one valid phantom
//! would send it, in every framing (HTTP/1.1 Content-Length and chunked, HTTP/2 frames of 0, 1,
//! odd and large sizes, the end on an empty frame or on trailers), against a recording upstream
//! that reports exactly which bytes it received and whether the request was ever complete, and
//! against Verdaccio, whose storage must not change after any refusal.

use crate::support::framing::{self, Framing, H2End};
use crate::support::recording::{End, Recording};
use crate::support::*;
use base64::Engine;
use serde_json::{json, Value};
use std::io::Write;
use std::time::Duration;

const POLICY: &str = r#"
# No `create`: a publish of a package the upstream does not have is refused (first in the file,
# so that a phantom for `@rec/new-*` comes from it).
[[grant]]
name = "wi-no-create"
issuer = "github"
packages = ["@rec/new-*"]
actions = ["publish"]
credential = "recording"
[grant.claims]
repository_id = "123456789"

[[grant]]
name = "wi-verdaccio"
issuer = "github"
packages = ["wi-*"]
actions = ["publish", "deprecate", "unpublish", "dist-tag"]
create = true
dist_tags = ["latest", "next"]
credential = "verdaccio-publisher"
[grant.claims]
repository_id = "123456789"

[[grant]]
name = "wi-limited"
issuer = "github"
packages = ["lim-*"]
actions = ["publish"]
create = true
max_uses = 1
credential = "verdaccio-publisher"
[grant.claims]
repository_id = "123456789"

[[grant]]
name = "wi-recording"
issuer = "github"
packages = ["@rec/*"]
actions = ["publish", "deprecate", "unpublish", "dist-tag"]
create = true
dist_tags = ["latest"]
credential = "recording"
[grant.claims]
repository_id = "123456789"
"#;

struct Setup {
    w: World,
    rec: Recording,
}

fn setup(server: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let certs = dev_certs(&dir.path().join("certs"));
    let rec = Recording::start(&certs.cert, &certs.key);
    let secret = dir.path().join("recording-token");
    std::fs::write(&secret, format!("recording-canary-{}", free_port())).unwrap();
    let extra = format!(
        "[upstream.recording]\nurl = \"{}\"\nscopes = [\"@rec\"]\nca_file = \"{{ca}}\"\n\n\
         [credential.recording]\nupstream = \"recording\"\nsource = {{ file = \"{}\" }}\n",
        rec.url(),
        secret.display()
    );
    let w = World::start_with(Options {
        policy: POLICY.into(),
        server: server.into(),
        extra,
        certs: Some(certs),
        ..Options::default()
    });
    std::mem::forget(dir); // the certificates must outlive the world; the OS cleans /tmp
    Setup { w, rec }
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// A publish body as libnpmpublish lays it out, attachments first (so that the tarball data
/// streams before anything else), with `tarball` bytes of tarball data, and after it, at the
/// very end, `tail` (raw JSON members of the top-level object, to put a violation last).
fn publish(name: &str, version: &str, tags: &[&str], tarball: usize, tail: &str) -> Vec<u8> {
    // Zeros: their base64 has no `+`, which a UTF-7 reading of the body would decode.
    let data = vec![0u8; tarball];
    let attachments = json!({ format!("{name}-{version}.tgz"): {
        "content_type": "application/octet-stream", "data": b64(&data), "length": tarball,
    }});
    let tags: serde_json::Map<String, Value> = tags.iter().map(|t| (t.to_string(), json!(version))).collect();
    let manifest = json!({ "name": name, "version": version, "_id": format!("{name}@{version}"),
        "dist": { "shasum": "0", "integrity": "sha512-AAAA" } });
    format!(
        r#"{{"_attachments":{attachments},"_id":"{name}","name":"{name}","description":"write integrity","dist-tags":{},"versions":{{"{version}":{manifest}}}{tail}}}"#,
        Value::Object(tags)
    )
    .into_bytes()
}

/// The same, with a second version at the very end: refused (a publish carries one version).
fn publish_two_versions(name: &str, tarball: usize) -> Vec<u8> {
    let mut body = publish(name, "1.0.0", &["latest"], tarball, "");
    // Replace the closing `}}}` of versions with a second version.
    let second = format!(r#","9.9.9":{{"name":"{name}","version":"9.9.9"}}}}}}"#);
    body.truncate(body.len() - 2);
    body.extend_from_slice(second.as_bytes());
    assert!(serde_json::from_slice::<Value>(&body).is_ok());
    body
}

fn auth_headers(phantom: &str) -> Vec<(String, String)> {
    vec![("authorization".into(), format!("Bearer {phantom}")), ("content-type".into(), "application/json".into())]
}

fn send(
    s: &World,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
    f: &Framing,
) -> framing::Answer {
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    framing::send(s.broker.port, &s.certs.ca, method, path, &headers, body, f)
}

/// The byte that closes the body's top-level object, and what follows it, never reach the
/// upstream of a refused write, and the upstream never sees the request complete.
fn assert_not_delivered(rec: &Recording, body: &[u8], what: &str) {
    rec.settle();
    let closing = body.iter().rposition(|&b| b == b'}').unwrap();
    for seen in rec.writes() {
        assert_ne!(seen.end, End::Complete, "{what}: the upstream received a complete refused write");
        assert!(body.starts_with(&seen.body), "{what}: the upstream received bytes the caller did not send");
        assert!(seen.body.len() <= closing, "{what}: the upstream received the body's closing byte");
    }
    rec.clear();
}

/// Exactly one complete write reached the upstream: the caller's bytes, as JSON, in a framing
/// the broker chose.
fn assert_delivered(rec: &Recording, body: &[u8], what: &str) {
    rec.settle();
    let writes = rec.writes();
    assert_eq!(writes.len(), 1, "{what}: {} writes reached the upstream", writes.len());
    let seen = &writes[0];
    assert_eq!(seen.end, End::Complete, "{what}");
    assert!(seen.body == body, "{what}: the upstream received other bytes ({} of {})", seen.body.len(), body.len());
    assert_eq!(seen.header("content-type").as_deref(), Some("application/json"), "{what}");
    assert_eq!(seen.header("content-encoding"), None, "{what}");
    let chunked = seen.header("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked"));
    let length = seen.header("content-length");
    assert!(
        chunked != length.is_some() && length.is_none_or(|l| l == body.len().to_string()),
        "{what}: framing chosen by the caller, or a length not verified: {:?}",
        seen.headers
    );
    rec.clear();
}

/// Defect 1: however a refused write is framed, the upstream never has it whole; an accepted one
/// arrives exactly. The caller's Content-Length is never what frames the upstream request.
#[test]
fn no_framing_completes_a_refused_write_upstream() {
    let Setup { w, rec } = setup("");
    let phantom = w.phantom(&["@rec/pkg"], &["publish", "deprecate", "dist-tag"], None);
    let headers = auth_headers(&phantom);
    // The upstream's current packument, for the deprecate comparison: three versions.
    let readme = "r".repeat(40_000);
    let versions: serde_json::Map<String, Value> = ["1.0.0", "1.0.1", "1.0.2"]
        .iter()
        .map(|v| (v.to_string(), json!({"name": "@rec/pkg", "version": v})))
        .collect();
    let current = json!({"_id": "@rec/pkg", "name": "@rec/pkg", "_rev": "3-abc", "readme": readme,
        "dist-tags": {"latest": "1.0.2"}, "versions": versions, "_attachments": {}});
    rec.set_packument("@rec%2fpkg", &current);
    // A packument that removes two versions and deprecates the third: a deprecate may change
    // only `deprecated` fields.
    let mut rewrite = current.clone();
    rewrite["versions"] = json!({"1.0.2": {"name": "@rec/pkg", "version": "1.0.2", "deprecated": "gone"}});
    let rewrite = rewrite.to_string().into_bytes();

    let refused: [(&str, Vec<u8>, u16); 3] = [
        ("a dist-tag the grant does not allow", publish("@rec/pkg", "1.0.0", &["latest", "evil"], 48 * 1024, ""), 403),
        ("a second version at the very end", publish_two_versions("@rec/pkg", 48 * 1024), 400),
        ("a packument that removes versions", rewrite, 403),
    ];
    // A publish that would create a package, under a grant without `create`: the broker reads
    // first (the recording upstream has no `@rec/new-pkg`), and the body never goes whole.
    let creator = auth_headers(&w.phantom(&["@rec/new-pkg"], &["publish"], None));
    let new_package = publish("@rec/new-pkg", "1.0.0", &["latest"], 48 * 1024, "");
    for f in Framing::all() {
        for (what, body, status) in &refused {
            let what = format!("{what}, {f:?}");
            let a = send(&w, "PUT", "/@rec%2fpkg", &headers, body, &f);
            assert_eq!(a.status, *status, "{what}: {}", a.body);
            assert_not_delivered(&rec, body, &what);
        }
        let a = send(&w, "PUT", "/@rec%2fnew-pkg", &creator, &new_package, &f);
        assert_eq!(a.status, 403, "a new package without create, {f:?}: {}", a.body);
        assert!(a.body.contains("may not create packages"), "{f:?}: {}", a.body);
        assert!(rec.seen().iter().any(|s| s.method == "GET" && s.target == "/@rec%2fnew-pkg"), "no existence read");
        assert_not_delivered(&rec, &new_package, &format!("a new package without create, {f:?}"));
        let body = publish("@rec/pkg", "2.0.0", &["latest"], 48 * 1024, "");
        let a = send(&w, "PUT", "/@rec%2fpkg", &headers, &body, &f);
        assert_eq!(a.status, 201, "accepted publish, {f:?}: {}", a.body);
        assert_delivered(&rec, &body, &format!("accepted publish, {f:?}"));
    }

    // A small buffered write (a dist-tag) is sent with a length the broker counted itself.
    for f in
        [Framing::Chunked { sizes: vec![1], trailers: true }, Framing::H2 { sizes: vec![1, 0], end: H2End::EmptyFrame }]
    {
        let a = send(&w, "PUT", "/-/package/@rec%2fpkg/dist-tags/latest", &headers, br#""2.0.0""#, &f);
        assert_eq!(a.status, 201, "{f:?}: {}", a.body);
        assert_delivered(&rec, br#""2.0.0""#, &format!("dist-tag, {f:?}"));
        let a = send(&w, "PUT", "/-/package/@rec%2fpkg/dist-tags/evil", &headers, br#""2.0.0""#, &f);
        assert_eq!(a.status, 403, "{f:?}: {}", a.body);
        assert!(rec.writes().is_empty(), "a refused dist-tag reached the upstream");
    }
}

/// Defect 1 against Verdaccio: no refused write changes its storage, in any framing; the critical
/// case (an exhausted publish-only phantom streaming a packument that removes versions, ended
/// by an empty HTTP/2 frame) is refused before its body is read.
#[test]
fn verdaccio_is_unchanged_by_refused_writes_in_any_framing() {
    let Setup { w, .. } = setup("");
    let phantom = w.phantom(&["wi-frame"], &["publish", "deprecate", "dist-tag"], None);
    let headers = auth_headers(&phantom);
    let framings = Framing::all();
    for (i, version) in ["1.0.0", "1.0.1", "1.0.2"].iter().enumerate() {
        let body = publish("wi-frame", version, &["latest"], 24 * 1024, "");
        let a = send(&w, "PUT", "/wi-frame", &headers, &body, &framings[i * 3 % framings.len()]);
        assert_eq!(a.status, 201, "publishing {version}: {}", a.body);
    }
    let current = w.broker("GET", "/wi-frame?write=true", &[("authorization", &format!("Bearer {phantom}"))], "");
    assert_eq!(current.status, 200);
    let mut rewrite = current.json();
    rewrite["versions"] = json!({"1.0.2": rewrite["versions"]["1.0.2"].clone()});
    rewrite["versions"]["1.0.2"]["deprecated"] = json!("gone");
    rewrite["_attachments"] = json!({});
    let rewrite = rewrite.to_string().into_bytes();

    let before = w.storage();
    for f in &framings {
        let cases: [(&str, Vec<u8>, u16); 3] = [
            (
                "a dist-tag the grant does not allow",
                publish("wi-frame", "2.0.0", &["latest", "evil"], 24 * 1024, ""),
                403,
            ),
            ("a second version", publish_two_versions("wi-frame", 24 * 1024), 400),
            ("a packument that removes versions", rewrite.clone(), 403),
        ];
        for (what, body, status) in cases {
            let a = send(&w, "PUT", "/wi-frame", &headers, &body, f);
            assert_eq!(a.status, status, "{what}, {f:?}: {}", a.body);
            std::thread::sleep(Duration::from_millis(50));
            assert!(before == w.storage(), "{what}, {f:?}: Verdaccio's storage changed");
        }
    }

    // A publish-only phantom whose one use is spent.
    let limited = w.phantom(&["lim-a"], &["publish"], None);
    let lim_headers = auth_headers(&limited);
    let body = publish("lim-a", "1.0.0", &["latest"], 1024, "");
    let a = send(&w, "PUT", "/lim-a", &lim_headers, &body, &Framing::Length(vec![usize::MAX]));
    assert_eq!(a.status, 201, "{}", a.body);
    let lim_current = w.broker("GET", "/lim-a?write=true", &[("authorization", &format!("Bearer {limited}"))], "");
    let mut lim_rewrite = lim_current.json();
    lim_rewrite["versions"]["1.0.0"]["deprecated"] = json!("gone");
    lim_rewrite["_attachments"] = json!({});
    let lim_rewrite = lim_rewrite.to_string().into_bytes();
    let before = w.storage();
    for f in &framings {
        let a = send(&w, "PUT", "/lim-a", &lim_headers, &lim_rewrite, f);
        assert_eq!(a.status, 403, "{f:?}: {}", a.body);
        assert!(a.body.contains("no uses left"), "{f:?}: {}", a.body);
    }
    // A one-use phantom whose write failed upstream (409: the version exists) may resend it,
    // one write at a time: a second write open at once is refused before its body.
    let again = w.phantom(&["lim-a"], &["publish"], None);
    let a = send(&w, "PUT", "/lim-a", &auth_headers(&again), &body, &Framing::Length(vec![usize::MAX]));
    assert_eq!(a.status, 409, "{}", a.body);
    let mut first = raw::connect(w.broker.port, &w.certs.ca, &[b"http/1.1"]);
    write!(first, "PUT /lim-a HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {again}\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n{{").unwrap();
    assert_eq!(
        raw::read_response(&mut first, Duration::from_millis(500)).map(|(s, _)| s),
        None,
        "the resend was refused"
    );
    let mut second = raw::connect(w.broker.port, &w.certs.ca, &[b"http/1.1"]);
    write!(second, "PUT /lim-a HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {again}\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n").unwrap();
    assert_eq!(
        raw::read_response(&mut second, Duration::from_secs(5)).map(|(s, _)| s),
        Some(429),
        "a spent phantom opened two writes"
    );
    drop((first, second));

    // The refusal comes before the body: a head alone is answered.
    let mut tls = raw::connect(w.broker.port, &w.certs.ca, &[b"http/1.1"]);
    write!(
        tls,
        "PUT /lim-a HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {limited}\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n"
    )
    .unwrap();
    let answer = raw::read_response(&mut tls, Duration::from_secs(5));
    assert_eq!(answer.map(|(s, _)| s), Some(403), "an exhausted phantom could open a write");
    std::thread::sleep(Duration::from_millis(50));
    assert!(before == w.storage(), "Verdaccio's storage changed");
    w.assert_canary_contained();
}

/// UTF-7 text that Verdaccio's body parser decodes (it honours any `utf-*` charset) into a
/// later `"dist-tags"` key of the document; as UTF-8, it is an innocent description.
fn utf7(s: &str) -> String {
    let utf16: Vec<u8> = s.encode_utf16().flat_map(u16::to_be_bytes).collect();
    let encoded = base64::engine::general_purpose::STANDARD_NO_PAD.encode(utf16);
    format!("+{encoded}-")
}

/// Defect 2: the headers that decide how the upstream reads a body are the broker's. A charset
/// other than UTF-8, any other parameter or media type, and any content-encoding are refused
/// with 415; what goes upstream is `Content-Type: application/json` exactly.
#[test]
fn the_upstream_reads_the_body_as_the_broker_did() {
    let Setup { w, rec } = setup("");
    let auth = format!("Bearer {}", w.phantom(&["wi-utf7"], &["publish", "dist-tag"], None));

    // Against Verdaccio: the body's UTF-7 reading adds a dist-tag the grant does not allow.
    let smuggled = utf7(r#"","dist-tags":{"latest":"1.0.0","evil":"1.0.0"},"x":""#);
    let tail = format!(r#","access":"{smuggled}""#);
    let body = publish("wi-utf7", "1.0.0", &["latest"], 2048, &tail);
    let before = w.storage();
    for ct in
        ["application/json; charset=utf-7", "application/json;charset=UTF-7", "application/json; charset=\"utf-7\""]
    {
        let r = w.broker("PUT", "/wi-utf7", &[("authorization", &auth), ("content-type", ct)], body.clone());
        assert_eq!(r.status, 415, "{ct}: {}", r.text());
        assert_eq!(w.upstream_packument("wi-utf7").status, 404, "{ct}: the version reached Verdaccio");
    }
    std::thread::sleep(Duration::from_millis(50));
    assert!(before == w.storage(), "Verdaccio's storage changed");
    assert_eq!(w.upstream_packument("wi-utf7").status, 404);

    // Against the recording upstream: what is refused, and what the upstream gets when accepted.
    let auth = format!("Bearer {}", w.phantom(&["@rec/ct"], &["publish", "dist-tag"], None));
    let body = publish("@rec/ct", "1.0.0", &["latest"], 2048, "");
    let refused: &[&[(&str, &str)]] = &[
        &[("content-type", "application/json; charset=utf-16le")],
        &[("content-type", "application/json; charset=iso-8859-1")],
        &[("content-type", "application/json; foo=bar")],
        &[("content-type", "application/json; charset=utf-8; foo=bar")],
        &[("content-type", "text/plain")],
        &[("content-type", "application/json, text/plain")],
        &[("content-type", "application/jsonx")],
        &[],
        &[("content-type", "application/json"), ("content-encoding", "gzip")],
        &[("content-type", "application/json"), ("content-encoding", "identity, gzip")],
        &[("content-type", "application/json"), ("content-type", "text/plain")],
    ];
    for extra in refused {
        let mut headers = vec![("authorization", auth.as_str())];
        headers.extend_from_slice(extra);
        let r = w.broker("PUT", "/@rec%2fct", &headers, body.clone());
        assert!(matches!(r.status, 415 | 400), "{extra:?}: {} {}", r.status, r.text());
        assert!(rec.writes().is_empty(), "{extra:?}: the write reached the upstream");
        let r = w.broker("PUT", "/-/package/@rec%2fct/dist-tags/latest", &headers, r#""1.0.0""#);
        assert!(matches!(r.status, 415 | 400), "dist-tag {extra:?}: {} {}", r.status, r.text());
        assert!(rec.writes().is_empty(), "dist-tag {extra:?}: the write reached the upstream");
    }
    let accepted: &[&[(&str, &str)]] = &[
        &[("content-type", "application/json")],
        &[("content-type", "application/json; charset=utf-8")],
        &[("content-type", "Application/JSON ; Charset=\"UTF-8\"")],
        &[("content-type", "application/json"), ("content-encoding", "identity")],
    ];
    for extra in accepted {
        let mut headers = vec![("authorization", auth.as_str())];
        headers.extend_from_slice(extra);
        let r = w.broker("PUT", "/@rec%2fct", &headers, body.clone());
        assert_eq!(r.status, 201, "{extra:?}: {}", r.text());
        assert_delivered(&rec, &body, &format!("{extra:?}"));
    }
}

/// Defect 3: a version removal may change only the versions it removes (and the tags naming
/// them); attachments it carries are refused, even ones named like a tarball of the package.
#[test]
fn a_version_removal_changes_nothing_but_its_versions() {
    let Setup { w, .. } = setup("");
    let phantom = w.phantom(&["wi-rm"], &["publish", "unpublish"], None);
    let headers = auth_headers(&phantom);
    for version in ["1.0.0", "1.0.1"] {
        let body = publish("wi-rm", version, &["latest"], 1024, "");
        let a = send(&w, "PUT", "/wi-rm", &headers, &body, &Framing::Length(vec![usize::MAX]));
        assert_eq!(a.status, 201, "{}", a.body);
    }
    let auth = format!("Bearer {phantom}");
    let current = w.broker("GET", "/wi-rm?write=true", &[("authorization", &auth)], "").json();
    let rev = current["_rev"].as_str().unwrap().to_owned();
    // What npm sends to remove 1.0.1: the packument without it, `latest` moved back.
    let mut removal = current.clone();
    removal["versions"].as_object_mut().unwrap().remove("1.0.1");
    removal["dist-tags"]["latest"] = json!("1.0.0");
    removal.as_object_mut().unwrap().remove("_revisions");
    removal.as_object_mut().unwrap().remove("_attachments");
    let path = format!("/wi-rm/-rev/{rev}");

    let before = w.storage();
    let smuggling = [
        json!({"wi-rm-9.9.9.tgz": {"content_type": "application/octet-stream", "data": b64(b"evil"), "length": 4}}),
        json!({"wi-rm-1.0.0.tgz": {"content_type": "application/octet-stream", "data": b64(b"evil"), "length": 4}}),
        json!({"other-1.0.0.tgz": {"data": b64(b"evil")}}),
    ];
    for attachments in smuggling {
        let mut body = removal.clone();
        body["_attachments"] = attachments.clone();
        for f in [Framing::Length(vec![usize::MAX]), Framing::H2 { sizes: vec![7, 0], end: H2End::EmptyFrame }] {
            let a = send(&w, "PUT", &path, &headers, body.to_string().as_bytes(), &f);
            assert_eq!(a.status, 403, "{attachments}, {f:?}: {}", a.body);
        }
    }
    // Nor may it change anything else the upstream has.
    let mut body = removal.clone();
    body["readme"] = json!("rewritten");
    let a = send(&w, "PUT", &path, &headers, body.to_string().as_bytes(), &Framing::Length(vec![usize::MAX]));
    assert_eq!(a.status, 403, "{}", a.body);
    std::thread::sleep(Duration::from_millis(50));
    assert!(before == w.storage(), "Verdaccio's storage changed");

    // The removal itself, as npm sends it, goes through.
    let a = send(&w, "PUT", &path, &headers, removal.to_string().as_bytes(), &Framing::Length(vec![usize::MAX]));
    assert_eq!(a.status, 201, "{}", a.body);
    let after = w.upstream_packument("wi-rm").json();
    assert!(after["versions"]["1.0.1"].is_null() && after["versions"]["1.0.0"].is_object(), "{after}");
    w.assert_canary_contained();
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// Opens a streamed publish that sends `skeleton` bytes of description (kept by the broker for
/// the checks) and then stalls. Returns the connection and whether the broker refused it: with
/// a 503, or by closing the connection while the body was still being sent.
fn slow_publish(w: &World, phantom: &str, skeleton: usize) -> (raw::Tls, bool) {
    let mut tls = raw::connect(w.broker.port, &w.certs.ca, &[b"http/1.1"]);
    let head = format!(
        "PUT /wi-mem HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {phantom}\r\ncontent-type: application/json\r\ncontent-length: 4194000\r\n\r\n{{\"_id\":\"wi-mem\",\"name\":\"wi-mem\",\"description\":\""
    );
    let mut sent_all = tls.write_all(head.as_bytes()).is_ok();
    let block = vec![b'x'; 64 * 1024];
    let mut sent = 0;
    while sent_all && sent < skeleton {
        sent_all = tls.write_all(&block).and_then(|()| tls.flush()).is_ok();
        sent += block.len();
    }
    let answer = raw::read_response(&mut tls, Duration::from_millis(1500)).map(|(s, _)| s);
    assert!(matches!(answer, None | Some(503)), "a held write was answered {answer:?}");
    (tls, answer == Some(503) || !sent_all)
}

/// Defect 4: memory held for writes, streamed skeletons included, counts against
/// `max_buffered_bytes`; past it new writes get 503 while reads go on.
#[test]
fn held_write_memory_counts_against_the_budget() {
    const BUDGET: u64 = 4 * 1024 * 1024;
    let Setup { w, .. } = setup(&format!("max_body_bytes = {BUDGET}\nmax_buffered_bytes = {BUDGET}"));
    let phantom = w.phantom(&["wi-mem"], &["publish"], None);
    let pid = w.broker.pid().unwrap();

    // Streams keeping 1.5 MiB each: two fit in 4 MiB, whatever each costs beside its skeleton
    // (under 0.5 MiB); a third is refused as soon as it would pass the budget.
    let (first, a) = slow_publish(&w, &phantom, 1536 * 1024);
    let (second, b) = slow_publish(&w, &phantom, 1536 * 1024);
    assert_eq!((a, b), (false, false), "writes within the budget were refused");
    let (_third, c) = slow_publish(&w, &phantom, 1536 * 1024);
    assert!(c, "a write past the budget was not refused");
    assert_eq!(w.broker("GET", "/-/ping", &[], "").status, 200, "reads suffer from held writes");
    assert_eq!(w.broker("GET", "/wi-mem", &[], "").status, 404, "reads suffer from held writes");
    drop((first, second));
    std::thread::sleep(Duration::from_millis(300));

    // The budget comes back when writes end; many large skeletons at once stay within it.
    let baseline = rss_kib(pid);
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..6 {
        let (tls, was_refused) = slow_publish(&w, &phantom, 3 * 1024 * 1024);
        refused += usize::from(was_refused);
        held.push(tls);
    }
    let grown = rss_kib(pid).saturating_sub(baseline);
    assert!(refused >= 5, "skeletons past the budget were kept: only {refused} of 6 refused");
    assert!(grown < 12 * 1024, "the broker grew by {grown} KiB holding writes under a {BUDGET}-byte budget");
    drop(held);
    std::thread::sleep(Duration::from_millis(300));
    let body = publish("wi-mem", "1.0.0", &["latest"], 1024, "");
    let a = send(&w, "PUT", "/wi-mem", &auth_headers(&phantom), &body, &Framing::Length(vec![usize::MAX]));
    assert_eq!(a.status, 201, "the budget was not given back: {}", a.body);
}

fn line_for<'a>(lines: &'a [Value], request_id: &str) -> &'a Value {
    lines
        .iter()
        .rev()
        .find(|l| l["request_id"] == request_id && l["decision"] != "forwarding")
        .unwrap_or_else(|| panic!("no audit line for {request_id}"))
}

/// The audit log says what the broker classified before it refused, and what reached the
/// upstream: a write refused after part of its body was streamed says so, with the byte count.
#[test]
fn refusals_record_the_classification_and_what_reached_the_upstream() {
    let Setup { w, rec } = setup("");
    let phantom = w.phantom(&["@rec/audit"], &["publish"], None);
    let auth = format!("Bearer {phantom}");

    let r = w.broker("POST", "/-/v1/login", &[], "{}");
    assert_eq!(r.status, 403, "{}", r.text());
    let login = line_for(&w.broker.audit_lines(), r.headers["x-request-id"].to_str().unwrap()).clone();
    assert_eq!(login["path"], "/-/v1/login", "{login}");

    let r = w.broker("PUT", "/@rec%2faudit", &[("content-type", "application/json")], "{}");
    assert_eq!(r.status, 401, "{}", r.text());
    let line = line_for(&w.broker.audit_lines(), r.headers["x-request-id"].to_str().unwrap()).clone();
    assert_eq!(
        (line["path"].as_str(), line["package"].as_str()),
        (Some("/@rec%2faudit"), Some("@rec/audit")),
        "{line}"
    );
    assert!(line["action"].as_str().is_some_and(|a| a.contains("publish")), "{line}");

    let r = w.broker("DELETE", "/-/package/@rec%2faudit/dist-tags/next", &[], "");
    assert_eq!(r.status, 401, "{}", r.text());
    let line = line_for(&w.broker.audit_lines(), r.headers["x-request-id"].to_str().unwrap()).clone();
    assert_eq!(line["action"], "dist-tag", "{line}");

    let r = w.broker("PUT", "/@rec%2faudit", &[("authorization", &auth), ("content-type", "application/json")], "[1]");
    assert_eq!(r.status, 400, "{}", r.text());
    let line = line_for(&w.broker.audit_lines(), r.headers["x-request-id"].to_str().unwrap()).clone();
    assert!(line["action"].as_str().is_some_and(|a| a.contains("publish")), "{line}");
    assert_eq!(line["package"], "@rec/audit", "{line}");
    rec.clear();

    // Refused after most of its body went upstream.
    let body = publish("@rec/audit", "1.0.0", &["latest", "evil"], 256 * 1024, "");
    let r = w.broker(
        "PUT",
        "/@rec%2faudit",
        &[("authorization", &auth), ("content-type", "application/json")],
        body.clone(),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    rec.settle();
    let reached = rec.writes()[0].body.len();
    assert!(reached > 64 * 1024, "the body did not stream ({reached} bytes reached the upstream)");
    let line = line_for(&w.broker.audit_lines(), r.headers["x-request-id"].to_str().unwrap()).clone();
    assert_eq!(line["decision"], "deny", "{line}");
    assert_eq!(line["action"], "publish", "{line}");
    assert_eq!(line["upstream_request"], "aborted", "{line}");
    // What the broker handed to the upstream connection; the upstream may not have read it all.
    let handed = line["upstream_bytes"].as_u64().unwrap_or(0);
    assert!(handed >= reached as u64 && handed < body.len() as u64, "{handed} bytes, {reached} reached: {line}");
    rec.clear();

    // A caller that resets its HTTP/2 stream mid-body: the write is still audited, as cut off.
    let body = publish("@rec/audit", "1.0.0", &["latest"], 256 * 1024, "");
    let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
    let before = w.broker.audit_lines().len();
    framing::h2_reset_midway(w.broker.port, &w.certs.ca, "/@rec%2faudit", &headers, &body[..200_000]);
    rec.settle();
    assert!(rec.writes().iter().all(|s| s.end != End::Complete), "a reset write completed upstream");
    let mut reset_line = None;
    for _ in 0..40 {
        reset_line = w.broker.audit_lines()[before..].iter().find(|l| l["upstream_request"] == "aborted").cloned();
        if reset_line.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let line = reset_line.expect("a write reset by its caller left no audit line");
    assert_eq!((line["path"].as_str(), line["decision"].as_str()), (Some("/@rec%2faudit"), Some("deny")), "{line}");
    rec.clear();

    // A freeze made while a body is arriving stops that write too.
    let mut slow = raw::connect(w.broker.port, &w.certs.ca, &[b"http/1.1"]);
    write!(slow, "PUT /@rec%2faudit HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", body.len()).unwrap();
    slow.write_all(&body[..body.len() / 2]).unwrap();
    assert_eq!(w.admin("POST", "/admin/v1/freeze", json!({"packages": ["@rec/*"]})).status, 200);
    slow.write_all(&body[body.len() / 2..]).unwrap();
    assert_eq!(
        raw::read_response(&mut slow, Duration::from_secs(5)).map(|(s, _)| s),
        Some(403),
        "a frozen write went on"
    );
    assert_not_delivered(&rec, &body, "a write frozen mid-body");
    assert_eq!(w.admin("POST", "/admin/v1/thaw", json!({"packages": ["@rec/*"]})).status, 200);

    // Accepted: the record says the request was released whole.
    let body = publish("@rec/audit", "1.0.0", &["latest"], 64 * 1024, "");
    let r = w.broker(
        "PUT",
        "/@rec%2faudit",
        &[("authorization", &auth), ("content-type", "application/json")],
        body.clone(),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let line = line_for(&w.broker.audit_lines(), r.headers["x-request-id"].to_str().unwrap()).clone();
    assert_eq!(
        (line["decision"].as_str(), line["upstream_request"].as_str()),
        (Some("allow"), Some("complete")),
        "{line}"
    );
    assert_eq!(line["upstream_bytes"], body.len() as u64, "{line}");
    assert_eq!(line["upstream_status"], 201, "{line}");
}
