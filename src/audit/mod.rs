//! The audit log: one JSON object per line, hash-chained, never holding a secret.
//!
//! Each line ends with `"prev"` (the previous line's hash) and `"hash"`: the SHA-256 of the line
//! up to and excluding `,"hash":...`, closed with `}`. Removing or editing a line breaks the
//! chain at that line; `phantom audit verify` names it. Token ids and ID-token ids are HMACs
//! under a key, so they correlate lines without revealing anything.

use crate::phantom::TokenDigest;
use crate::support::clock::rfc3339;
use crate::support::hex;
use line::{sha256_hex, split_line, GENESIS, HASH_KEY};
use ring::hmac;
use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

mod line;
mod record;
mod verify;

pub use line::AuditError;
pub use record::{
    identity_summary, method, Action, AdminAction, Decision, Event, HoldLine, HoldStep, Record, RefusalKind,
    UpstreamRequest, Via,
};
pub use verify::{find_request, verify, Asked, Verdict};

#[derive(Serialize)]
struct Chained<'a> {
    ts: &'a str,
    seq: u64,
    #[serde(flatten)]
    record: &'a Record,
    prev: &'a str,
}

/// The chain's state, owned by the writer thread.
struct Chain {
    file: File,
    seq: u64,
    prev: String,
    /// The file's length after the last complete line: a failed write is cut back to it.
    len: u64,
}

/// How a submitter hears that its line is on disk.
enum Reply {
    None,
    Blocking(std::sync::mpsc::Sender<Result<(), AuditError>>),
    Async(tokio::sync::oneshot::Sender<Result<(), AuditError>>),
}

struct Job {
    record: Arc<Record>,
    /// When the event happened (not when it was written).
    at: Duration,
    reply: Reply,
}

/// The audit log. Lines are chained and written by one writer thread, which writes whatever is
/// queued with one system call: under load many lines share a `write`. Callers whose outcome
/// depends on the line being on disk (a write about to be forwarded, a phantom about to be
/// handed out, an admin action) wait for it; other lines are queued without waiting.
pub struct Audit {
    /// Read-locked by every submitter, across its `send` (which waits while the queue is full);
    /// write-locked by `close` (at shutdown and on drop), which so waits for those sends.
    jobs: RwLock<Option<std::sync::mpsc::SyncSender<Job>>>,
    key: hmac::Key,
    /// Whether the last write succeeded. While it did not, the broker refuses writes.
    healthy: Arc<AtomicBool>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Lines queued beyond this make submitters wait (back-pressure rather than unbounded memory).
const QUEUE: usize = 64 * 1024;
/// At most this many lines go into one write.
const BATCH: usize = 1024;
/// How long the writer gathers queued lines before writing them.
const GATHER: Duration = Duration::from_millis(2);
/// How long the writer waits for more lines, after writing lines that someone waited for, before
/// it blocks on the queue. Under load more arrive within moments, and a writer that is not
/// blocked is not woken: each submitter is spared a futex call (a system call and a wake-up of
/// this thread per line). A waited-for line that arrives during that pause waits up to this
/// much longer.
const LINGER: Duration = Duration::from_micros(200);

impl Audit {
    /// Opens (or creates) the log, continues its chain, and starts the writer thread.
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
        let healthy = Arc::new(AtomicBool::new(true));
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let chain = Chain { file, seq, prev, len };
        let flag = healthy.clone();
        let writer = std::thread::Builder::new()
            .name("phantom-audit".into())
            .spawn(move || write_loop(chain, rx, flag))
            .map_err(|e| AuditError(format!("cannot start the audit writer: {e}")))?;
        Ok(Audit {
            jobs: RwLock::new(Some(tx)),
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
            healthy,
            writer: Mutex::new(Some(writer)),
        })
    }

    /// A keyed hash of a phantom's digest: its id in logs and listings.
    pub fn token_id(&self, digest: &TokenDigest) -> String {
        self.keyed(b"phantom", &digest.0)
    }

    /// A keyed hash of an ID token's replay key.
    pub(crate) fn id_token_id(&self, replay_key: &[u8; 32]) -> String {
        self.keyed(b"id-token", replay_key)
    }

    fn keyed(&self, domain: &[u8], data: &[u8]) -> String {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(domain);
        ctx.update(&[0]);
        ctx.update(data);
        hex(&ctx.sign().as_ref()[..12])
    }

    fn submit(&self, record: Arc<Record>, reply: Reply) -> Result<(), AuditError> {
        let at = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let jobs = self.jobs.read().unwrap_or_else(|p| p.into_inner());
        let sender = jobs.as_ref().ok_or_else(|| AuditError("the audit log is closed".into()))?;
        sender.send(Job { record, at, reply }).map_err(|_| AuditError("the audit writer stopped".into()))
    }

    /// Appends one line and waits until it is written (blocking the thread).
    pub fn write(&self, record: &Record) -> Result<(), AuditError> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.submit(Arc::new(record.clone()), Reply::Blocking(tx))?;
        rx.recv().map_err(|_| AuditError("the audit writer stopped".into()))?
    }

    /// Appends one line and waits (asynchronously) until it is written.
    pub(crate) async fn write_confirmed(&self, record: Arc<Record>) -> Result<(), AuditError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(record, Reply::Async(tx))?;
        rx.await.map_err(|_| AuditError("the audit writer stopped".into()))?
    }

    /// Queues one line without waiting; a failure shows in `is_healthy` and the log.
    pub fn write_queued(&self, record: Arc<Record>) {
        if let Err(e) = self.submit(record, Reply::None) {
            tracing::error!(error = %e, "could not queue an audit line");
        }
    }

    /// Writes out everything queued and stops the writer: call at shutdown.
    pub fn close(&self) {
        self.jobs.write().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(writer) = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = writer.join();
        }
    }

    /// Whether the last write succeeded.
    pub(crate) fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }
}

impl Drop for Audit {
    fn drop(&mut self) {
        self.close();
    }
}

impl Chain {
    /// Chains `batch` onto the log and writes it with one call. On failure a partial write is
    /// cut off, so that the chain stays verifiable once writes work again.
    fn append(&mut self, batch: &[Job], buf: &mut Vec<u8>, stamp: &mut Stamp) -> Result<(), AuditError> {
        buf.clear();
        let (mut seq, mut prev) = (self.seq, self.prev.clone());
        for job in batch {
            seq += 1;
            let ts = stamp.at(job.at);
            let start = buf.len();
            serde_json::to_writer(&mut *buf, &Chained { ts, seq, record: &job.record, prev: &prev })
                .map_err(|e| AuditError(e.to_string()))?;
            let hash = sha256_hex(&buf[start..]);
            buf.pop(); // the closing '}'
            buf.extend_from_slice(HASH_KEY.as_bytes());
            buf.extend_from_slice(hash.as_bytes());
            buf.extend_from_slice(b"\"}\n");
            prev = hash;
        }
        if let Err(e) = self.file.write_all(buf) {
            let _ = self.file.set_len(self.len);
            return Err(AuditError(format!("write failed: {e}")));
        }
        self.seq = seq;
        self.prev = prev;
        self.len += buf.len() as u64;
        Ok(())
    }
}

/// The writer thread: takes whatever is queued, chains it, writes it with one call.
fn write_loop(mut chain: Chain, rx: std::sync::mpsc::Receiver<Job>, healthy: Arc<AtomicBool>) {
    let mut buf: Vec<u8> = Vec::with_capacity(256 * 1024);
    let mut batch: Vec<Job> = Vec::with_capacity(BATCH);
    let mut stamp = Stamp::default();
    // Whether to linger before blocking: only after a batch that someone waited for (lines
    // that nobody waits for are gathered for `GATHER` anyway).
    let mut linger = false;
    loop {
        let first = match rx.try_recv() {
            Ok(job) => job,
            Err(std::sync::mpsc::TryRecvError::Disconnected) => break,
            Err(std::sync::mpsc::TryRecvError::Empty) if linger => {
                std::thread::sleep(LINGER);
                linger = false;
                continue;
            }
            Err(std::sync::mpsc::TryRecvError::Empty) => match rx.recv() {
                Ok(job) => job,
                Err(_) => break,
            },
        };
        batch.push(first);
        // Gather for a moment before writing: one write then carries many lines, and senders
        // do not have to wake this thread for each (it sleeps, not waiting on the channel).
        // A line someone waits for is written at once (the writer does not gather for it).
        let gather_until = std::time::Instant::now() + GATHER;
        loop {
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            let waited_for = batch.iter().any(|j| !matches!(j.reply, Reply::None));
            if waited_for || batch.len() >= BATCH || std::time::Instant::now() >= gather_until {
                break;
            }
            std::thread::sleep(GATHER / 4);
        }
        let outcome = chain.append(&batch, &mut buf, &mut stamp);
        match &outcome {
            Ok(()) => healthy.store(true, Ordering::Relaxed),
            Err(e) => {
                healthy.store(false, Ordering::Relaxed);
                tracing::error!(error = %e, lines = batch.len(), "could not write the audit log");
            }
        }
        linger = false;
        for job in batch.drain(..) {
            match job.reply {
                Reply::None => continue,
                Reply::Blocking(tx) => {
                    let _ = tx.send(outcome.clone());
                }
                Reply::Async(tx) => {
                    let _ = tx.send(outcome.clone());
                }
            }
            linger = true;
        }
    }
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

/// Timestamps for consecutive lines: the date and time of day are formatted once per second,
/// and only the milliseconds are written for each line.
#[derive(Default)]
struct Stamp {
    secs: Option<u64>,
    text: String,
}

impl Stamp {
    fn at(&mut self, at: Duration) -> &str {
        let secs = at.as_secs();
        if self.secs != Some(secs) {
            self.text = rfc3339(secs, 0);
            self.secs = Some(secs);
        }
        let ms = at.subsec_millis().min(999);
        let digits = [b'0' + (ms / 100) as u8, b'0' + (ms / 10 % 10) as u8, b'0' + (ms % 10) as u8];
        // `...:SS.mmmZ`: the three digits before the `Z`.
        let end = self.text.len() - 1;
        self.text.replace_range(end - 3..end, std::str::from_utf8(&digits).unwrap_or("000"));
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_within_a_second_change_only_their_milliseconds() {
        let mut stamp = Stamp::default();
        let at = |s: u64, ms: u64| Duration::from_millis(s * 1000 + ms);
        assert_eq!(stamp.at(at(1_795_385_586, 7)), "2026-11-22T22:13:06.007Z");
        assert_eq!(stamp.at(at(1_795_385_586, 999)), "2026-11-22T22:13:06.999Z");
        assert_eq!(stamp.at(at(1_795_385_586, 40)), "2026-11-22T22:13:06.040Z");
        assert_eq!(stamp.at(at(1_795_385_587, 0)), "2026-11-22T22:13:07.000Z");
        assert_eq!(stamp.at(at(0, 123)), "1970-01-01T00:00:00.123Z");
        assert_eq!(stamp.at(at(951_782_400, 5)), rfc3339(951_782_400, 5));
    }

    fn record(i: usize) -> Record {
        Record { request_id: format!("r{i}"), decision: Decision::Allow, status: 200, ..Record::default() }
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
    fn hashes_are_lowercase_hex() {
        // FIPS 180-2, appendix B.1.
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
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
