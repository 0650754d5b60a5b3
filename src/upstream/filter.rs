//! What a relayed body passes through on its way to the caller: the scrubbing of the real
//! credential out of every byte, and (`rebase.rs`) the tarball-URL rewrite.

use crate::credentials::{ScrubPattern, UpstreamAuth};
use crate::support::net::BoxError;
use bytes::{Bytes, BytesMut};
use http_body::Frame;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// `bytes` fetched with `auth`'s credential, with every occurrence of it overwritten.
pub(crate) fn scrubbed(bytes: Bytes, auth: &UpstreamAuth) -> Bytes {
    let Some(credential) = auth.credential() else { return bytes };
    let secret = credential.scrub_pattern();
    if secret.find(&bytes).is_none() {
        return bytes;
    }
    let mut out = BytesMut::from(&bytes[..]);
    overwrite(secret, &mut out);
    out.freeze()
}

/// Overwrites every occurrence of the secret in `buf` with `*`.
fn overwrite(secret: &ScrubPattern, buf: &mut [u8]) {
    let n = secret.bytes().len();
    let mut from = 0;
    while let Some(i) = secret.find(&buf[from..]) {
        buf[from + i..from + i + n].fill(b'*');
        from += i + n;
    }
}

/// What a relayed body's bytes pass through on their way to the caller: it may hold bytes back
/// from one chunk to the next (`last`: nothing follows).
pub(crate) trait ChunkFilter {
    fn push(&mut self, chunk: Bytes, last: bool) -> Bytes;
    /// Whether what comes out is as long as what went in (the body's size hint then stays).
    const KEEPS_LENGTH: bool;
}

/// A body through a [`ChunkFilter`]. Trailers are dropped: they could carry a secret, and npm
/// does not use them.
pub(crate) struct Filtered<B, F> {
    inner: B,
    filter: F,
    done: bool,
}

impl<B, F> Filtered<B, F> {
    pub(crate) fn new(inner: B, filter: F) -> Filtered<B, F> {
        Filtered { inner, filter, done: false }
    }
}

impl<B, F> http_body::Body for Filtered<B, F>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
    F: ChunkFilter + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            let out = match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else { continue };
                    let last = self.inner.is_end_stream();
                    self.done = last;
                    self.filter.push(data, last)
                }
                Poll::Ready(None) => {
                    self.done = true;
                    self.filter.push(Bytes::new(), true)
                }
            };
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(out))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> http_body::SizeHint {
        if F::KEEPS_LENGTH {
            self.inner.size_hint()
        } else {
            http_body::SizeHint::default()
        }
    }
}

/// Overwrites every occurrence of a secret with `*`, across chunk boundaries. Lengths are kept,
/// so `Content-Length` stays right.
pub(crate) struct Scrub {
    secret: Arc<ScrubPattern>,
    /// Bytes held back because a secret could start in them and end in the next chunk.
    held: BytesMut,
}

impl Scrub {
    pub(crate) fn new(secret: Arc<ScrubPattern>) -> Scrub {
        Scrub { secret, held: BytesMut::new() }
    }
}

impl ChunkFilter for Scrub {
    const KEEPS_LENGTH: bool = true;

    /// Most chunks neither contain the secret nor end with a possible start of it: those pass
    /// through without a copy.
    fn push(&mut self, chunk: Bytes, last: bool) -> Bytes {
        let secret = self.secret.bytes();
        let n = secret.len();
        if self.held.is_empty() && self.secret.find(&chunk).is_none() {
            let tail = &chunk[chunk.len().saturating_sub(n - 1)..];
            if last || memchr::memchr(secret[0], tail).is_none() {
                return chunk;
            }
        }
        self.held.extend_from_slice(&chunk);
        overwrite(&self.secret, &mut self.held);
        let keep = if last { 0 } else { (n - 1).min(self.held.len()) };
        let release = self.held.len() - keep;
        self.held.split_to(release).freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::collections::VecDeque;

    /// A body that yields the given chunks, one frame each; `knows_end` says whether it
    /// reports its end before the last poll (as a body with a Content-Length does).
    struct Chunks(VecDeque<Bytes>, bool);

    impl http_body::Body for Chunks {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
        }
        fn is_end_stream(&self) -> bool {
            self.1 && self.0.is_empty()
        }
    }

    async fn scrub_chunks(chunks: &[&str], secret: &str) -> String {
        let a = scrub_with(chunks, secret, false).await;
        assert_eq!(a, scrub_with(chunks, secret, true).await, "{chunks:?}");
        a
    }

    async fn scrub_with(chunks: &[&str], secret: &str, knows_end: bool) -> String {
        let body = Chunks(chunks.iter().map(|c| Bytes::from(c.to_string())).collect(), knows_end);
        let scrub = Filtered::new(body, Scrub::new(Arc::new(ScrubPattern::new(secret.as_bytes().to_vec()))));
        let bytes = scrub.collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn secret_is_scrubbed_across_chunks() {
        let s = "SECRET123";
        let table: &[(&[&str], &str)] = &[
            (&["no secret here"], "no secret here"),
            (&["a SECRET123 b"], "a ********* b"),
            (&["a SEC", "RET123 b"], "a ********* b"),
            (&["S", "E", "C", "R", "E", "T", "1", "2", "3"], "*********"),
            (&["SECRET123SECRET123"], "******************"),
            (&["xSECRET12", "4 SECRET1", "23"], "xSECRET124 *********"),
            (&["SECRET12"], "SECRET12"),
            (&["no s", "ecret ", "here S", "ECRET12", "3"], "no secret here *********"),
            (
                &["xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", "SECRET123"],
                "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx*********",
            ),
            (&[], ""),
        ];
        for (chunks, want) in table {
            assert_eq!(scrub_chunks(chunks, s).await, *want, "{chunks:?}");
        }
    }
}
