//! Reading the log back: `phantom audit verify` (every line's hash and its link to the one
//! before) and `phantom policy explain --request` (what a request's line says was asked).

use super::line::{sha256_hex, split_line, AuditError, GENESIS};
use serde_json::{Map, Value};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

/// The result of checking a log file.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Intact { lines: u64 },
    Broken { line: u64, reason: String },
}

/// What a request's audit line says was asked: the identity's claims as the log keeps them,
/// the package, the action and the version.
pub struct Asked {
    pub claims: Map<String, Value>,
    pub package: String,
    pub action: String,
    pub version: Option<String>,
    /// The upstream did not have the package (the publish would have created it).
    pub new_package: bool,
}

/// The last line of request `id` that names an identity, a package and an action (its
/// outcome, not the line written ahead of a write).
pub fn find_request(path: &Path, id: &str) -> std::io::Result<Option<Asked>> {
    let text = std::fs::read_to_string(path)?;
    let found = text
        .lines()
        .rev()
        .filter(|l| l.contains(id))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["request_id"] == id && v["decision"] != "forwarding")
        .filter_map(|v| {
            let mut claims = v.get("identity")?.as_object()?.clone();
            claims.remove("issuer");
            Some(Asked {
                claims,
                package: v.get("package")?.as_str()?.to_owned(),
                action: v.get("action")?.as_str()?.to_owned(),
                version: v.get("version").and_then(Value::as_str).map(str::to_owned),
                new_package: v["new_package"] == true,
            })
        })
        .next();
    Ok(found)
}

/// Checks every line's hash and its link to the line before.
pub fn verify(path: &Path) -> Result<Verdict, AuditError> {
    let file = File::open(path).map_err(|e| AuditError(format!("cannot open {}: {e}", path.display())))?;
    let mut prev_hash: Option<String> = None;
    let mut prev_seq = 0u64;
    let mut n = 0u64;
    for line in BufReader::new(file).split(b'\n') {
        let line = line.map_err(|e| AuditError(e.to_string()))?;
        n += 1;
        let broken = |reason: String| Ok(Verdict::Broken { line: n, reason });
        let text = match String::from_utf8(line) {
            Ok(t) => t,
            Err(_) => return broken("not UTF-8".into()),
        };
        let (body, hash, seq, prev) = match split_line(&text) {
            Ok(parts) => parts,
            Err(e) => return broken(e),
        };
        if sha256_hex(body.as_bytes()) != hash {
            return broken("its hash does not match its content (the line was altered)".into());
        }
        match &prev_hash {
            None if prev != GENESIS => {
                return broken(format!("the chain starts mid-way (seq {seq}): earlier lines were removed"))
            }
            Some(p) if *p != prev => {
                return broken("it does not link to the line before (a line before it was removed or altered)".into())
            }
            _ => {}
        }
        if seq != prev_seq + 1 {
            return broken(format!("seq {seq} follows seq {prev_seq} (lines were removed)"));
        }
        prev_hash = Some(hash);
        prev_seq = seq;
    }
    Ok(Verdict::Intact { lines: n })
}
