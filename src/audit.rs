//! The audit log: one JSON object per line, hash-chained, never holding a secret.
//!
//! Each line ends with `"prev"` (the previous line's hash) and `"hash"`: the SHA-256 of the line
//! up to and excluding `,"hash":...`, closed with `}`. Removing or editing a line breaks the
//! chain at that line; `phantom audit verify` names it. Token ids and ID-token ids are HMACs
//! under a key, so they correlate lines without revealing anything.

use crate::phantom::TokenDigest;
use ring::hmac;
use serde::Serialize;
use serde_json::{Map, Value};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const HASH_KEY: &str = ",\"hash\":\"";

/// Identity claims worth recording (never the token; `jti` is recorded keyed-hashed).
const IDENTITY_CLAIMS: &[&str] = &[
    "iss",
    "sub",
    "repository",
    "repository_id",
    "repository_owner",
    "repository_owner_id",
    "ref",
    "sha",
    "workflow_ref",
    "job_workflow_ref",
    "environment",
    "event_name",
    "run_id",
    "run_attempt",
    "actor",
    "runner_environment",
    "project_path",
    "project_id",
    "namespace_path",
    "pipeline_id",
    "job_id",
    "ci_config_ref_uri",
    "user_login",
];

/// One audit line, before it is chained.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Record {
    pub event: &'static str,
    pub request_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub package: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dist_tags: Vec<String>,
    pub decision: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_token_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_status: Option<u16>,
    pub status: u16,
    pub latency_ms: f64,
}

/// Projects a verified identity's claims onto what the audit log keeps.
pub fn identity_summary(issuer: &str, claims: &Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("issuer".into(), Value::String(issuer.to_owned()));
    for key in IDENTITY_CLAIMS {
        if let Some(v @ (Value::String(_) | Value::Number(_) | Value::Bool(_))) = claims.get(*key) {
            out.insert((*key).to_owned(), v.clone());
        }
    }
    out
}

#[derive(Serialize)]
struct Chained<'a> {
    ts: String,
    seq: u64,
    #[serde(flatten)]
    record: &'a Record,
    prev: &'a str,
}

struct Chain {
    file: File,
    seq: u64,
    prev: String,
    /// The file's length after the last complete line: a failed write is cut back to it.
    len: u64,
}

pub struct Audit {
    chain: Mutex<Chain>,
    key: hmac::Key,
    /// Whether the last write succeeded. While it did not, the broker refuses writes.
    healthy: AtomicBool,
}

#[derive(Debug, thiserror::Error)]
#[error("audit log: {0}")]
pub struct AuditError(pub String);

impl Audit {
    /// Opens (or creates) the log and continues its chain.
    pub fn open(path: &Path, key: &[u8]) -> Result<Audit, AuditError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| AuditError(format!("cannot create {}: {e}", dir.display())))?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(path)
            .map_err(|e| AuditError(format!("cannot open {}: {e}", path.display())))?;
        let (seq, prev) =
            match last_line(&mut file).map_err(|e| AuditError(format!("cannot read {}: {e}", path.display())))? {
                None => (0, GENESIS.to_owned()),
                Some(line) => {
                    let (_, hash, seq, _) = split_line(&line).map_err(|e| {
                        AuditError(format!(
                            "{}: the last line is damaged ({e}); run `phantom audit verify`",
                            path.display()
                        ))
                    })?;
                    (seq, hash)
                }
            };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(Audit {
            chain: Mutex::new(Chain { file, seq, prev, len }),
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
            healthy: AtomicBool::new(true),
        })
    }

    /// A keyed hash of a phantom's digest: its id in logs and listings.
    pub fn token_id(&self, digest: &TokenDigest) -> String {
        self.keyed(b"phantom", &digest.0)
    }

    /// A keyed hash of an ID token's replay key.
    pub fn id_token_id(&self, replay_key: &[u8; 32]) -> String {
        self.keyed(b"id-token", replay_key)
    }

    fn keyed(&self, domain: &[u8], data: &[u8]) -> String {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(domain);
        ctx.update(&[0]);
        ctx.update(data);
        hex(&ctx.sign().as_ref()[..12])
    }

    /// Appends one line. The line is written whole with one `write` call.
    pub fn write(&self, record: &Record) -> Result<(), AuditError> {
        let mut chain = self.chain.lock().unwrap_or_else(|p| p.into_inner());
        let seq = chain.seq + 1;
        let body = serde_json::to_vec(&Chained { ts: rfc3339_now(), seq, record, prev: &chain.prev })
            .map_err(|e| AuditError(e.to_string()))?;
        let hash = sha256_hex(&body);
        let mut line = body;
        line.pop(); // the closing '}'
        line.extend_from_slice(HASH_KEY.as_bytes());
        line.extend_from_slice(hash.as_bytes());
        line.extend_from_slice(b"\"}\n");
        if let Err(e) = chain.file.write_all(&line) {
            // Cut off a partial line so that the chain stays verifiable once writes work again.
            let _ = chain.file.set_len(chain.len);
            self.healthy.store(false, Ordering::Relaxed);
            return Err(AuditError(format!("write failed: {e}")));
        }
        chain.seq = seq;
        chain.prev = hash;
        chain.len += line.len() as u64;
        self.healthy.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Whether the last write succeeded.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }
}

/// The result of checking a log file.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Intact { lines: u64 },
    Broken { line: u64, reason: String },
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

/// Splits a line into (hashed body, hash, seq, prev).
fn split_line(line: &str) -> Result<(String, String, u64, String), String> {
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

/// The last complete line of a file, reading only its tail.
fn last_line(file: &mut File) -> std::io::Result<Option<String>> {
    let len = file.seek(SeekFrom::End(0))?;
    if len == 0 {
        return Ok(None);
    }
    let start = len.saturating_sub(256 * 1024);
    file.seek(SeekFrom::Start(start))?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail)?;
    let text = String::from_utf8_lossy(&tail);
    Ok(text.trim_end_matches('\n').rsplit('\n').next().map(str::to_owned))
}

fn sha256_hex(data: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn rfc3339_now() -> String {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    rfc3339(d.as_secs(), d.subsec_millis())
}

/// `2026-11-22T22:13:06.123Z` from unix seconds.
pub fn rfc3339(secs: u64, millis: u32) -> String {
    let (year, month, day) = civil_date(secs);
    let rem = secs % 86_400;
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z", rem / 3600, rem / 60 % 60, rem % 60)
}

/// (year, month, day) of unix seconds, proleptic Gregorian (Howard Hinnant's civil_from_days).
pub fn civil_date(secs: u64) -> (i64, u32, u32) {
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(rfc3339(1_795_385_586, 999), "2026-11-22T22:13:06.999Z");
    }

    fn record(i: usize) -> Record {
        Record { event: "request", request_id: format!("r{i}"), decision: "allow", status: 200, ..Record::default() }
    }

    #[test]
    fn chain_survives_reopen_and_detects_tampering() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit/log.jsonl");
        let audit = Audit::open(&path, b"k").unwrap();
        for i in 0..3 {
            audit.write(&record(i)).unwrap();
        }
        drop(audit);
        let audit = Audit::open(&path, b"k").unwrap();
        audit.write(&record(3)).unwrap();
        assert_eq!(verify(&path).unwrap(), Verdict::Intact { lines: 4 });

        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[3].contains("\"seq\":4"));

        let write = |ls: &[String]| std::fs::write(&path, ls.join("\n") + "\n").unwrap();
        let owned: Vec<String> = lines.iter().map(|s| s.to_string()).collect();

        let mut altered = owned.clone();
        altered[1] = altered[1].replace("\"decision\":\"allow\"", "\"decision\":\"deny\"");
        write(&altered);
        assert!(matches!(verify(&path).unwrap(), Verdict::Broken { line: 2, .. }));

        let mut removed = owned.clone();
        removed.remove(2);
        write(&removed);
        assert!(matches!(verify(&path).unwrap(), Verdict::Broken { line: 3, .. }));

        write(&owned[1..]);
        assert!(matches!(verify(&path).unwrap(), Verdict::Broken { line: 1, .. }));

        let mut truncated = owned.clone();
        truncated[3].truncate(20);
        write(&truncated);
        assert!(matches!(verify(&path).unwrap(), Verdict::Broken { line: 4, .. }));
    }

    #[test]
    fn ids_are_keyed() {
        let dir = tempfile::tempdir().unwrap();
        let a = Audit::open(&dir.path().join("a"), b"key-a").unwrap();
        let b = Audit::open(&dir.path().join("b"), b"key-b").unwrap();
        let d = TokenDigest([9; 32]);
        assert_eq!(a.token_id(&d), a.token_id(&d));
        assert_ne!(a.token_id(&d), b.token_id(&d));
        assert_eq!(a.token_id(&d).len(), 24);
        assert_ne!(a.token_id(&d), a.id_token_id(&d.0));
    }
}
