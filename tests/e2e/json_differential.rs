//! A JSON differential: for every body-parser edge case here (encodings, BOM, escapes in keys,
//! duplicate keys, numbers, trailing data, nesting, surrogates), a publish goes through the
//! broker to an upstream that reads bodies exactly as Verdaccio does (its own `express.json`,
//! tests/node/json-upstream.mjs). Either the broker refuses, and the upstream parses nothing,
//! or the upstream received the caller's bytes unchanged and read the document the broker
//! checked (its scanner's skeleton, the tarball data aside, through its strict parser).

use crate::support::*;
use base64::Engine;
use serde_json::Value;
use std::process::{Command, Stdio};

const POLICY: &str = r#"
[[grant]]
name = "json"
issuer = "github"
packages = ["@json/*"]
actions = ["publish"]
create = true
credential = "json"
[grant.claims]
repository_id = "123456789"
"#;

/// The body's name, replaced in each case.
const NAME: &str = "@json/NAME";

/// A valid publish body for `NAME`, compact, with an `"x"` member in the version manifest
/// that cases replace.
fn base() -> String {
    format!(
        r#"{{"_id":"{NAME}","name":"{NAME}","description":"d","dist-tags":{{"latest":"1.0.0"}},"versions":{{"1.0.0":{{"name":"{NAME}","version":"1.0.0","x":0}}}},"_attachments":{{"{NAME}-1.0.0.tgz":{{"content_type":"application/octet-stream","data":"QUJD","length":3}}}}}}"#
    )
}

fn with_x(x: &str) -> Vec<u8> {
    base().replace(r#""x":0"#, &format!(r#""x":{x}"#)).into_bytes()
}

fn replaced(from: &str, to: &str) -> Vec<u8> {
    let b = base();
    assert!(b.contains(from), "{from}");
    b.replacen(from, to, 1).into_bytes()
}

/// `"x"` as a string holding `raw` bytes, whatever they are.
fn bytes_in_x(raw: &[u8]) -> Vec<u8> {
    let marked = with_x(r#""a@@b""#);
    let at = memchr::memmem::find(&marked, b"@@").unwrap();
    [&marked[..at], raw, &marked[at + 2..]].concat()
}

fn appended(tail: &[u8]) -> Vec<u8> {
    [base().as_bytes(), tail].concat()
}

/// Before the closing brace of the top-level object.
fn member(raw: &str) -> Vec<u8> {
    let b = base();
    format!("{}{raw}}}", &b[..b.len() - 1]).into_bytes()
}

struct Case {
    what: &'static str,
    content_type: &'static str,
    body: Vec<u8>,
    accepted: bool,
}

fn cases() -> Vec<Case> {
    let json = "application/json";
    let c = |what, body, accepted| Case { what, content_type: json, body, accepted };
    let utf16: Vec<u8> = base().encode_utf16().flat_map(u16::to_le_bytes).collect();
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    let utf7_run = {
        let text: Vec<u8> =
            r#"","dist-tags":{"evil":"1.0.0"},"y":""#.encode_utf16().flat_map(u16::to_be_bytes).collect();
        format!("+{}-", base64::engine::general_purpose::STANDARD_NO_PAD.encode(text))
    };
    vec![
        c("plain", base().into_bytes(), true),
        Case {
            what: "charset=utf-8",
            content_type: "application/json; charset=utf-8",
            body: base().into_bytes(),
            accepted: true,
        },
        Case {
            what: "charset=utf-7 with a UTF-7 run",
            content_type: "application/json; charset=utf-7",
            body: replaced(r#""description":"d""#, &format!(r#""description":"{utf7_run}""#)),
            accepted: false,
        },
        c("byte order mark", [b"\xef\xbb\xbf".as_slice(), base().as_bytes()].concat(), false),
        c("UTF-16LE body", utf16, false),
        c("escaped key", replaced(r#""dist-tags""#, r#""dist\u002dtags""#), true),
        c("escaped value", replaced(r#""name":"@json/NAME""#, r#""name":"@json\u002fNAME""#), true),
        c("escaped solidus", replaced(r#""description":"d""#, r#""description":"a\/b""#), true),
        // Keys the streaming scanner looks for, escaped: it keeps their data in what it checks.
        c("escaped _attachments key", replaced(r#""_attachments""#, r#""_att\u0061chments""#), true),
        c("escaped data key", replaced(r#""data""#, r#""d\u0061ta""#), true),
        c("escaped tarball name", replaced(r#"-1.0.0.tgz""#, r#"-1.0.0\u002etgz""#), true),
        c("duplicate attachment", member(r#","_attachments":{}"#), false),
        c("duplicate data", replaced(r#""data":"QUJD""#, r#""data":"QUJD","data":"QUJE""#), false),
        c("tarball data that is not base64", replaced(r#""data":"QUJD""#, r#""data":"QU\nJD""#), false),
        c("duplicate key by escape", member(r#","n\u0061me":"@json/other""#), false),
        c("duplicate dist-tags", member(r#","dist-tags":{"evil":"1.0.0"}"#), false),
        c("duplicate key in a manifest", with_x(r#"0,"version":"9.9.9""#), false),
        c("escaped __proto__ key", with_x(r#"{"\u005f_proto__":{"a":1}}"#), true),
        c("__proto__ key", with_x(r#"{"__proto__":{"a":1},"constructor":{"prototype":{"b":2}}}"#), true),
        c("escaped quote in a key", with_x(r#"{"a\"b":1,"a\\":2}"#), true),
        c("non-ASCII key", with_x(r#"{"é":1,"\u00e9x":2}"#), true),
        c("number forms", with_x("[-0,1.0,1E2,0.1e-5,1e-400,-1.5e+3]"), true),
        c("big integer", with_x("123456789012345678901234567890"), true),
        c("integer past 2^53", with_x("9007199254740993"), true),
        c("number out of range", with_x("1e400"), false),
        c("leading zero", with_x("01"), false),
        c("plus sign", with_x("+1"), false),
        c("NaN", with_x("NaN"), false),
        c("hexadecimal", with_x("0x10"), false),
        c("escaped surrogate pair", with_x(r#""\ud83d\ude00""#), true),
        c("lone surrogate escape", with_x(r#""\ud800""#), false),
        c("NUL escape", with_x(r#""a\u0000b""#), true),
        c("raw control character", with_x("\"a\u{1}b\""), false),
        c("raw U+2028", with_x("\"a\u{2028}b\""), true),
        c("invalid UTF-8", bytes_in_x(b"\xff"), false),
        c("overlong UTF-8", bytes_in_x(b"\xc0\xaf"), false),
        c("UTF-8 encoded surrogate", bytes_in_x(b"\xed\xa0\x80"), false),
        c("unknown escape", with_x(r#""\x41""#), false),
        c("single quotes", with_x("'a'"), false),
        c("comment", with_x("/* c */ 1"), false),
        c("deep nesting", with_x(&deep), false),
        c("trailing whitespace", appended(b" \r\n\t"), true),
        c("trailing data", appended(b"x"), false),
        c("a second document", appended(base().as_bytes()), false),
        c("trailing NBSP", appended("\u{a0}".as_bytes()), false),
        c("empty body", Vec::new(), false),
        c("top-level array", format!("[{}]", base()).into_bytes(), false),
    ]
}

/// JSON values equal as JavaScript reads them: numbers compare as doubles.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

struct JsonUpstream {
    _proc: Proc,
    url: String,
}

fn start_json_upstream(certs: &Certs) -> JsonUpstream {
    let mut child = Command::new("node")
        .arg(repo().join("tests/node/json-upstream.mjs"))
        .arg("--cert")
        .arg(&certs.cert)
        .arg("--key")
        .arg(&certs.key)
        .current_dir(repo().join("tests/node"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let proc = Proc::new(child);
    let line = first_line(stdout, std::time::Duration::from_secs(20)).expect("the JSON upstream printed nothing");
    let v: Value = serde_json::from_str(&line).unwrap();
    JsonUpstream { _proc: proc, url: v["url"].as_str().unwrap().to_owned() }
}

#[test]
fn the_upstream_reads_every_accepted_body_as_the_broker_did() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dev_certs(&dir.path().join("certs"));
    let upstream = start_json_upstream(&certs);
    let secret = dir.path().join("json-token");
    std::fs::write(&secret, format!("json-canary-{}", free_port())).unwrap();
    let extra = format!(
        "[upstream.json]\nurl = \"{}/\"\nscopes = [\"@json\"]\nca_file = \"{{ca}}\"\n\n\
         [credential.json]\nupstream = \"json\"\nsource = {{ file = \"{}\" }}\n",
        upstream.url,
        secret.display()
    );
    let w = World::start_with(Options { policy: POLICY.into(), extra, certs: Some(certs), ..Options::default() });
    let cases = cases();
    let names: Vec<String> = (0..cases.len()).map(|i| format!("c{i}")).collect();
    let packages: Vec<String> = names.iter().map(|n| format!("@json/{n}")).collect();
    let packages: Vec<&str> = packages.iter().map(String::as_str).collect();
    let phantom = w.phantom(&packages, &["publish"], None);
    let auth = format!("Bearer {phantom}");

    let mut statuses = Vec::new();
    for (case, n) in cases.iter().zip(&names) {
        let body = rename(&case.body, n);
        let r = w.broker(
            "PUT",
            &format!("/@json%2f{n}"),
            &[("authorization", &auth), ("content-type", case.content_type)],
            body,
        );
        statuses.push(r.status);
    }
    let seen = w.http.request("GET", &format!("{}/-/seen", upstream.url), &[], "").json();
    let seen = seen.as_array().unwrap();
    let mut failures = Vec::new();
    for ((case, n), status) in cases.iter().zip(&names).zip(statuses) {
        let body = rename(&case.body, n);
        let url = format!("/@json%2f{n}");
        let parsed: Vec<&Value> =
            seen.iter().filter(|s| s["url"] == url.as_str() && s.get("parsed").is_some()).collect();
        let accepted = (200..300).contains(&status);
        if accepted != case.accepted {
            failures.push(format!("{}: the broker answered {status}", case.what));
        }
        if !accepted {
            if !parsed.is_empty() {
                failures.push(format!("{}: refused ({status}), yet the upstream parsed a body", case.what));
            }
            continue;
        }
        let [upstream_saw] = parsed.as_slice() else {
            failures.push(format!("{}: accepted, and the upstream parsed {} bodies", case.what, parsed.len()));
            continue;
        };
        let raw = base64::engine::general_purpose::STANDARD.decode(upstream_saw["raw"].as_str().unwrap()).unwrap();
        if raw != body {
            failures.push(format!("{}: the upstream received other bytes than the caller sent", case.what));
        }
        if upstream_saw["content_type"] != "application/json" {
            failures.push(format!("{}: the upstream got content-type {}", case.what, upstream_saw["content_type"]));
        }
        let node: Value = serde_json::from_str(upstream_saw["parsed"].as_str().unwrap()).unwrap();
        let checked = checked(&body);
        if !same(&node, &checked) && !same(&without_tarball_data(&node, &checked), &checked) {
            failures.push(format!("{}: the upstream read {node}, the broker checked {checked}", case.what));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// What the broker checks of a publish body: the skeleton its streaming scanner keeps (tarball
/// data as `"x"`), parsed by its strict parser.
fn checked(body: &[u8]) -> Value {
    let mut scanner = phantom_broker::npm::scan::PublishScanner::new(1 << 20);
    scanner.feed(body).expect("the broker accepted what its scanner refuses");
    let skeleton = scanner.finish().expect("the broker accepted what its scanner refuses").skeleton;
    phantom_broker::support::json::parse_strict(&skeleton).expect("the broker accepted what its parser refuses")
}

/// `doc` with each tarball's data as the skeleton has it (`"x"`), where the skeleton left it out.
fn without_tarball_data(doc: &Value, skeleton: &Value) -> Value {
    let mut doc = doc.clone();
    if let (Some(attachments), Some(kept)) = (doc["_attachments"].as_object_mut(), skeleton["_attachments"].as_object())
    {
        for (name, a) in attachments.iter_mut() {
            let elided = kept.get(name).and_then(|k| k["data"].as_str()) == Some("x");
            if elided && a["data"].as_str().is_some_and(|d| !d.is_empty()) {
                a["data"] = Value::from("x");
            }
        }
    }
    doc
}

fn rename(body: &[u8], n: &str) -> Vec<u8> {
    // `NAME` appears only where the name goes (the cases never contain it elsewhere).
    let mut out = Vec::with_capacity(body.len());
    let mut rest = body;
    while let Some(i) = memchr::memmem::find(rest, b"NAME") {
        out.extend_from_slice(&rest[..i]);
        out.extend_from_slice(n.as_bytes());
        rest = &rest[i + 4..];
    }
    out.extend_from_slice(rest);
    out
}
