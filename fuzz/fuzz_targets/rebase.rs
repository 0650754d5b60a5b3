//! The tarball-URL rewrite (`upstream/rebase.rs`), on bodies an upstream could send:
//! - chunking never changes what it produces;
//! - on JSON, it changes nothing but `"tarball"` string values, and each only by putting the
//!   broker's base in place of the upstream's at its start;
//! - on JSON written without escapes in its URLs (as registries write it), every such value
//!   that starts with the upstream's base is rewritten.
#![no_main]

use libfuzzer_sys::fuzz_target;
use phantom_broker::rebase_chunks;
use serde_json::Value;

const FROM: &[u8] = b"https://up.test:4873/";
const TO: &[u8] = b"https://b/";

fn chunked(body: &[u8], size: usize) -> Vec<u8> {
    let chunks: Vec<&[u8]> = body.chunks(size.max(1)).collect();
    rebase_chunks(&chunks, FROM, TO)
}

/// `out` is `input` with some `"tarball"` values rebased (all of them when `all`).
fn same_but_tarballs(input: &Value, out: &Value, all: bool) -> bool {
    match (input, out) {
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len()
                && a.iter().all(|(k, va)| {
                    let Some(vb) = b.get(k) else { return false };
                    match (k.as_str(), va, vb) {
                        ("tarball", Value::String(sa), Value::String(sb)) => {
                            let from = std::str::from_utf8(FROM).unwrap();
                            let rebased = sa.strip_prefix(from).map(|rest| format!("{}{rest}", std::str::from_utf8(TO).unwrap()));
                            match rebased {
                                Some(r) => *sb == r || (!all && sa == sb),
                                None => sa == sb,
                            }
                        }
                        _ => same_but_tarballs(va, vb, all),
                    }
                })
        }
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same_but_tarballs(x, y, all))
        }
        _ => input == out,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, body)) = data.split_first() else { return };
    let whole = chunked(body, body.len());
    assert_eq!(whole, chunked(body, seed as usize % 13 + 1), "chunking changed the rewrite");
    assert_eq!(whole, chunked(body, 1), "byte by byte changed the rewrite");
    let Ok(input) = serde_json::from_slice::<Value>(body) else { return };
    let out: Value = serde_json::from_slice(&whole).expect("valid JSON stays valid");
    assert!(same_but_tarballs(&input, &out, false), "more than tarball values changed");
    // Read back from its own text: serde_json's float parsing is not an exact round trip.
    let canonical = serde_json::to_vec(&input).unwrap();
    let input: Value = serde_json::from_slice(&canonical).unwrap();
    let out: Value = serde_json::from_slice(&chunked(&canonical, seed as usize % 7 + 1)).unwrap();
    assert!(same_but_tarballs(&input, &out, true), "a tarball value naming the upstream was not rebased");
});
