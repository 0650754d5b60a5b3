//! The chain's line format: each line ends with `"prev"` (the previous line's hash) and
//! `"hash"`, the SHA-256 of the line up to and excluding `,"hash":...`, closed with `}`.

use crate::support::hex;
use serde_json::{Map, Value};

/// The `prev` of the first line.
pub(super) const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
pub(super) const HASH_KEY: &str = ",\"hash\":\"";

#[derive(Debug, Clone, thiserror::Error)]
#[error("audit log: {0}")]
pub struct AuditError(pub String);

pub(super) fn sha256_hex(data: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

/// Splits a line into (hashed body, hash, seq, prev).
pub(super) fn split_line(line: &str) -> Result<(String, String, u64, String), String> {
    let at = line.rfind(HASH_KEY).ok_or("it has no hash")?;
    let hash = line[at + HASH_KEY.len()..]
        .strip_suffix("\"}")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or("its hash is malformed")?;
    let body = format!("{}}}", &line[..at]);
    let doc: Map<String, Value> = serde_json::from_str(&body).map_err(|_| "it is not a JSON object")?;
    let seq = doc.get("seq").and_then(Value::as_u64).ok_or("it has no seq")?;
    let prev = doc.get("prev").and_then(Value::as_str).ok_or("it has no prev")?;
    Ok((body, hash.to_owned(), seq, prev.to_owned()))
}
