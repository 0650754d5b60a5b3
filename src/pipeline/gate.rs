//! The write gate. Every write body passes through it, and it owns one guarantee: nothing
//! decisive reaches the upstream before the broker's verdict.
//!
//! There are two ways through, chosen by the route:
//!
//! - **Whole** (dist-tags, version removals, owner and access changes, bodiless writes): the
//!   body is read in full and checked; only then is the request sent, with a `Content-Length`
//!   the broker counted itself.
//! - **Streamed** (publishes, which can be 200 MB): the upstream request starts at once and the
//!   body goes up as it arrives, chunked, so that the request is complete only when the broker
//!   ends it. A scanner keeps the body's skeleton (everything but the tarball data) for the
//!   checks. Bytes, not frames, are held back: always the last byte read, and from the byte that
//!   closes the body's top-level JSON value to the end. After the verdict the held bytes and the
//!   end of the request are released; on a refusal the request is aborted (its connection is
//!   closed mid-body), so the upstream never has the whole request, nor a whole document.
//!
//! A third way serves grants that stage their publishes: **on publish**, a `PUT /<name>` is read
//! as a streamed body, but its upstream request starts only once the body shows it is a publish
//! (its tarball data begins), as a staged publish; a body that ends before that (a deprecate)
//! is sent whole, as itself.
//!
//! Only data counts: empty frames change nothing, and trailers are never forwarded. The caller's
//! own framing (`Content-Length`, chunked, HTTP/2 frames) never reaches the upstream.
//!
//! Memory held for a write (a whole body; a skeleton, the held bytes and what is in flight to
//! the upstream) is its share of `server.max_buffered_bytes`, taken as it grows. A write whose
//! share cannot grow is refused with 503; reads never take a share.

use super::refusal::Refusal;
use crate::npm::scan::{PublishScanner, ScanError, Scanned};
use crate::npm::BodyError;
use crate::phantom::{Fingerprint, Fingerprinter};
use crate::support::budget::{MemoryBudget, Share, STEP_KIB};
use crate::support::net::{self, Body, BodySender};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::collections::VecDeque;
use std::time::Duration;

/// Which bytes of a streamed body may go upstream before the verdict. Pure: no I/O, so that it
/// can be tested and fuzzed over every framing of a body.
pub struct StreamGate {
    scanner: PublishScanner,
    /// Bytes read and not released yet, oldest first.
    held: VecDeque<Bytes>,
    held_len: usize,
    read: u64,
    released: u64,
}

impl StreamGate {
    pub fn new(max_skeleton: usize) -> StreamGate {
        StreamGate {
            scanner: PublishScanner::new(max_skeleton),
            held: VecDeque::new(),
            held_len: 0,
            read: 0,
            released: 0,
        }
    }

    /// Takes the next bytes of the body and appends to `out` those that may go upstream now.
    pub fn push(&mut self, data: Bytes, out: &mut Vec<Bytes>) -> Result<(), ScanError> {
        if data.is_empty() {
            return Ok(());
        }
        self.scanner.feed(&data)?;
        self.read += data.len() as u64;
        self.held_len += data.len();
        self.held.push_back(data);
        // Up to (not including) the byte that closes the document, and never the last byte.
        let until = self.scanner.closed_at().unwrap_or(u64::MAX).min(self.read - 1);
        let mut n = until.saturating_sub(self.released) as usize;
        while n > 0 {
            let Some(front) = self.held.front_mut() else { break };
            let piece = if front.len() <= n { self.held.pop_front().unwrap_or_default() } else { front.split_to(n) };
            n -= piece.len();
            self.held_len -= piece.len();
            self.released += piece.len() as u64;
            out.push(piece);
        }
        Ok(())
    }

    /// Memory the gate holds: the skeleton and the held bytes.
    pub(crate) fn held_bytes(&self) -> usize {
        self.scanner.held_bytes() + self.held_len
    }

    /// Whether the body has shown tarball data (it is shaped as a publish).
    pub(crate) fn has_tarball_data(&self) -> bool {
        self.scanner.tarball_bytes() > 0
    }

    /// The end of the body: what the checks read, and the bytes still held, to be released
    /// only after the verdict.
    pub fn finish(self) -> Result<(Scanned, Vec<Bytes>), ScanError> {
        let scanned = self.scanner.finish()?;
        Ok((scanned, self.held.into()))
    }
}

/// How a route's body goes through the gate.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Intake {
    /// Read in full, at most `limit` bytes (0: the route takes no body), sent after the verdict.
    Whole { limit: u64 },
    /// Streamed upstream as it arrives, at most `limit` bytes, the skeleton at most `max_skeleton`.
    Streamed { limit: u64, max_skeleton: usize },
    /// Streamed once it shows tarball data; sent whole if it never does.
    OnPublish { limit: u64, max_skeleton: usize },
}

/// When a write's upstream request starts.
pub(crate) enum UpstreamStart {
    /// After the verdict, with the whole body.
    AfterVerdict,
    /// Now: its body streams from the gate.
    Now(Body),
    /// When the body shows it is a publish, streaming from the gate from then on; if it never
    /// does (the sender is dropped), after the verdict, with the whole body.
    OnPublish(tokio::sync::oneshot::Receiver<Body>),
}

/// Memory a streamed write has in flight besides its skeleton and held bytes: the caller's
/// frames being read and the channel to the upstream connection (4 chunks of at most 64 KiB).
const IN_FLIGHT: usize = 256 * 1024;

/// Why reading or releasing a body stopped.
pub(crate) enum Stop {
    Refused(Refusal),
    /// The upstream ended the request before the broker released it (it answered, or its
    /// connection failed): its answer says why.
    UpstreamGone,
}

impl From<Refusal> for Stop {
    fn from(r: Refusal) -> Stop {
        Stop::Refused(r)
    }
}

/// What the checks read: the whole body, or a streamed body's skeleton.
pub(crate) struct Checked {
    pub(crate) bytes: Bytes,
    pub(crate) fingerprint: Fingerprint,
}

enum Way {
    Whole(Vec<u8>),
    Streaming {
        gate: StreamGate,
        upstream: BodySender,
    },
    /// Read to its end, the verdict pending: the bytes held back.
    Held {
        tail: Vec<Bytes>,
        upstream: BodySender,
    },
    /// Not yet sent: the released bytes wait in `pending` until the body shows tarball data.
    Deferred {
        gate: StreamGate,
        pending: Vec<Bytes>,
        pending_len: usize,
        start: tokio::sync::oneshot::Sender<Body>,
    },
    /// A whole body, read and waiting for the verdict.
    Read(Bytes),
    Done,
}

/// A write body on its way through the gate.
pub(crate) struct WriteBody {
    way: Way,
    /// The body streams: its upstream request started before the verdict.
    streamed: bool,
    /// It streams because it showed tarball data (`Intake::OnPublish`).
    started_on_publish: bool,
    limit: u64,
    share: Share,
    fingerprint: Option<Fingerprinter>,
    /// Bytes handed to the upstream request so far.
    sent: u64,
    /// Bytes read from the caller.
    read: u64,
}

/// How a write's request to the upstream goes, once the verdict allows it.
pub(crate) enum Released {
    /// Send it now: the whole checked body, with its length.
    Whole(Body),
    /// Its held bytes and its end went up the request that was already streaming.
    Streamed,
}

impl WriteBody {
    /// Opens a write body with its first share of the memory budget (503 past it). A streamed
    /// body also gives the body of the upstream request it feeds, to be sent at once.
    pub(crate) fn open(
        budget: &MemoryBudget,
        intake: Intake,
        fingerprint: Fingerprinter,
    ) -> Result<(WriteBody, UpstreamStart), Refusal> {
        let (first, limit) = match intake {
            Intake::Whole { limit } => (usize::try_from(limit).unwrap_or(usize::MAX).min(STEP_KIB * 1024), limit),
            Intake::Streamed { limit, .. } | Intake::OnPublish { limit, .. } => (IN_FLIGHT, limit),
        };
        let share = budget.share(first).ok_or(Refusal::Busy)?;
        let (way, start) = match intake {
            Intake::Whole { .. } => (Way::Whole(Vec::new()), UpstreamStart::AfterVerdict),
            Intake::Streamed { max_skeleton, .. } => {
                let (tx, body) = net::ChannelBody::new();
                let gate = StreamGate::new(max_skeleton);
                (Way::Streaming { gate, upstream: tx }, UpstreamStart::Now(body.boxed_unsync()))
            }
            Intake::OnPublish { max_skeleton, .. } => {
                let (start, later) = tokio::sync::oneshot::channel();
                let gate = StreamGate::new(max_skeleton);
                (Way::Deferred { gate, pending: Vec::new(), pending_len: 0, start }, UpstreamStart::OnPublish(later))
            }
        };
        let body = WriteBody {
            way,
            streamed: false,
            started_on_publish: false,
            limit,
            share,
            fingerprint: Some(fingerprint),
            sent: 0,
            read: 0,
        };
        Ok((body, start))
    }

    /// Reads the caller's body to its end through the gate, forwarding what a streamed body may
    /// release. Returns what the checks read.
    pub(crate) async fn read(&mut self, incoming: Incoming, idle: Duration) -> Result<Checked, Stop> {
        let mut fingerprint = self.fingerprint.take().ok_or(Refusal::Internal("a body read twice".into()))?;
        let mut body = net::IdleTimeout::new(incoming, idle);
        let mut out = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                if e.is::<net::BodyTimeout>() {
                    Refusal::ClientTimeout
                } else {
                    Refusal::ClientBody(net::error_chain(&*e))
                }
            })?;
            // Trailers are never forwarded, and change nothing.
            let Ok(data) = frame.into_data() else { continue };
            if data.is_empty() {
                continue;
            }
            self.read += data.len() as u64;
            if self.read > self.limit {
                return Err(
                    if self.limit == 0 { Refusal::Body(BodyError::UnexpectedBody) } else { Refusal::TooLarge }.into()
                );
            }
            fingerprint.update(&data);
            self.take(data, &mut out).await?;
        }
        let checked = self.finish_read()?;
        Ok(Checked { bytes: checked, fingerprint: fingerprint.finish() })
    }

    /// One frame of the body: kept whole, scanned and streamed, or scanned and held until the
    /// tarball shows, each within the write's share of memory.
    async fn take(&mut self, data: Bytes, out: &mut Vec<Bytes>) -> Result<(), Stop> {
        match &mut self.way {
            Way::Whole(buf) => {
                if buf.len() + data.len() > buf.capacity() {
                    buf.reserve_exact(data.len().max(buf.len() / 4));
                }
                buf.extend_from_slice(&data);
                let held = buf.capacity();
                if !self.share.cover(held) {
                    return Err(Refusal::Busy.into());
                }
            }
            Way::Streaming { gate, upstream } => {
                self.streamed = true;
                gate.push(data, out).map_err(scan_refusal)?;
                if !self.share.cover(IN_FLIGHT + gate.held_bytes()) {
                    return Err(Refusal::Busy.into());
                }
                for piece in out.drain(..) {
                    self.sent += piece.len() as u64;
                    upstream.send(piece).await.map_err(|_| Stop::UpstreamGone)?;
                }
            }
            Way::Deferred { gate, pending, pending_len, .. } => {
                gate.push(data, out).map_err(scan_refusal)?;
                *pending_len += out.iter().map(Bytes::len).sum::<usize>();
                pending.append(out);
                if !self.share.cover(IN_FLIGHT + gate.held_bytes() + *pending_len) {
                    return Err(Refusal::Busy.into());
                }
                if gate.has_tarball_data() {
                    self.start_upstream().await?;
                }
            }
            Way::Held { .. } | Way::Read(_) | Way::Done => {
                return Err(Refusal::Internal("a body read twice".into()).into());
            }
        }
        Ok(())
    }

    /// The body ended: what the checks read, and what is left to send after the verdict.
    fn finish_read(&mut self) -> Result<Bytes, Stop> {
        Ok(match std::mem::replace(&mut self.way, Way::Done) {
            Way::Whole(buf) => {
                let bytes = Bytes::from(buf);
                self.way = Way::Read(bytes.clone());
                bytes
            }
            Way::Streaming { gate, upstream } => {
                let (scanned, tail) = gate.finish().map_err(scan_refusal)?;
                self.way = Way::Held { tail, upstream };
                Bytes::from(scanned.skeleton)
            }
            // It never showed tarball data: it is whole, sent after the verdict.
            Way::Deferred { gate, pending, pending_len, .. } => {
                let (_, tail) = gate.finish().map_err(scan_refusal)?;
                // Gathered into one piece for the checks: that copy is the write's memory too.
                let len = pending_len + tail.iter().map(Bytes::len).sum::<usize>();
                if !self.share.grow(len) {
                    return Err(Refusal::Busy.into());
                }
                let whole = Bytes::from([pending, tail].concat().concat());
                self.way = Way::Read(whole.clone());
                whole
            }
            _ => return Err(Refusal::Internal("a body read twice".into()).into()),
        })
    }

    /// Memory the write holds besides its body (the parsed checks, a packument fetched to compare
    /// with), for as long as the write lasts.
    pub(crate) fn hold(&mut self, bytes: usize) -> Result<(), Refusal> {
        if self.share.grow(bytes) {
            Ok(())
        } else {
            Err(Refusal::Busy)
        }
    }

    /// Starts a deferred body's upstream request: what waited goes first, the rest streams.
    async fn start_upstream(&mut self) -> Result<(), Stop> {
        let Way::Deferred { gate, pending, start, .. } = std::mem::replace(&mut self.way, Way::Done) else {
            return Ok(());
        };
        let (upstream, body) = net::ChannelBody::new();
        start.send(body.boxed_unsync()).map_err(|_| Stop::UpstreamGone)?;
        self.streamed = true;
        self.started_on_publish = true;
        for piece in pending {
            self.sent += piece.len() as u64;
            upstream.send(piece).await.map_err(|_| Stop::UpstreamGone)?;
        }
        self.way = Way::Streaming { gate, upstream };
        Ok(())
    }

    /// The verdict allowed the write: a whole body is handed over to be sent; a streamed body's
    /// held bytes and its end go upstream.
    pub(crate) async fn release(&mut self) -> Result<Released, Stop> {
        match std::mem::replace(&mut self.way, Way::Done) {
            Way::Read(bytes) => {
                self.sent = bytes.len() as u64;
                Ok(Released::Whole(if bytes.is_empty() { net::empty() } else { net::full(bytes) }))
            }
            Way::Held { tail, upstream } => {
                for piece in tail {
                    self.sent += piece.len() as u64;
                    upstream.send(piece).await.map_err(|_| Stop::UpstreamGone)?;
                }
                // Only now is the upstream request complete.
                upstream.finish().await.map_err(|_| Stop::UpstreamGone)?;
                Ok(Released::Streamed)
            }
            _ => Err(Refusal::Internal("a body released before it was read".into()).into()),
        }
    }

    /// The write was refused: a streamed request is cut off mid-body, never completed. (So is
    /// one whose `WriteBody` is dropped for any other reason: its sender goes with it.)
    pub(crate) fn abort(&mut self) {
        self.way = Way::Done;
    }

    /// Whether it streams because it showed tarball data (`Intake::OnPublish`).
    pub(crate) fn started_on_publish(&self) -> bool {
        self.started_on_publish
    }

    /// Whether the upstream request started before the verdict (a streamed body).
    pub(crate) fn streamed(&self) -> bool {
        self.streamed
    }

    /// Body bytes handed to the upstream request so far.
    pub(crate) fn sent(&self) -> u64 {
        self.sent
    }
}

fn scan_refusal(e: ScanError) -> Refusal {
    match e {
        ScanError::SkeletonTooLarge => Refusal::TooLarge,
        ScanError::BadTarballData | ScanError::Malformed => Refusal::Body(BodyError::InvalidJson),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a gate lets out before the verdict, holds for after it, and keeps for the checks.
    struct Through {
        before: Vec<u8>,
        tail: Vec<u8>,
        skeleton: Vec<u8>,
    }

    /// `body` through a gate, in frames of these sizes (cycled).
    fn through(body: &[u8], frames: &[usize]) -> Result<Through, ScanError> {
        let mut gate = StreamGate::new(1 << 20);
        let (mut before, mut out) = (Vec::new(), Vec::new());
        let mut rest = body;
        for &size in frames.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let n = size.min(rest.len());
            gate.push(Bytes::copy_from_slice(&rest[..n]), &mut out)?;
            rest = &rest[n..];
            before.extend(out.drain(..).flat_map(|b| b.to_vec()));
        }
        let (scanned, tail) = gate.finish()?;
        Ok(Through { before, tail: tail.concat(), skeleton: scanned.skeleton })
    }

    #[test]
    fn the_gate_holds_the_end_of_the_document_at_every_framing() {
        let body = br#" {"_attachments": {"a.tgz": {"data": "QUJDREVG"}}, "b": "}", "c": [1, 2]}  "#;
        let close = body.iter().rposition(|&b| b == b'}').unwrap();
        let whole = through(body, &[body.len()]).unwrap();
        for frames in [vec![1], vec![0, 1], vec![2, 0, 7], vec![13], vec![64], vec![close], vec![close + 1]] {
            let Through { before, tail, skeleton } = through(body, &frames).unwrap();
            assert_eq!(before.len(), close, "{frames:?}");
            assert_eq!([before.as_slice(), tail.as_slice()].concat(), body, "{frames:?}");
            assert_eq!((&before, &skeleton), (&whole.before, &whole.skeleton), "{frames:?}");
        }
        // Without a closing byte, the last byte is held.
        let open = br#"{"a": "b""#;
        let mut gate = StreamGate::new(1 << 20);
        let mut out = Vec::new();
        gate.push(Bytes::from_static(open), &mut out).unwrap();
        assert_eq!(out.concat(), &open[..open.len() - 1]);
        gate.push(Bytes::new(), &mut out).unwrap();
        assert_eq!(out.concat(), &open[..open.len() - 1], "an empty frame released something");
    }
}
