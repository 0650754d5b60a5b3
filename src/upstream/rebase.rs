//! Tarball URLs that name the upstream, rewritten to name the broker, in packuments relayed on
//! the registry face: npm downloads a tarball from the URL the packument gives, so without this
//! a private registry's tarballs would be fetched from the upstream directly, without the
//! caller's phantom and outside the audit log.
//!
//! Only the value of a `"tarball"` key is touched, and only its leading upstream URL: a
//! streaming pass that finds each `"tarball"` (memchr's SIMD search), checks that it is a key
//! (its quote is not escaped, a `:` follows), and replaces the value's prefix. Nothing else of
//! the document changes, readmes included. Upstream headers that would do the same
//! (`X-Forwarded-Host`) are not used: registries honour them unevenly, and one with a
//! configured public URL ignores them.

use super::filter::ChunkFilter;
use bytes::{Bytes, BytesMut};
use memchr::memmem;
use std::sync::OnceLock;

const KEY: &[u8] = b"\"tarball\"";
/// Whitespace allowed on either side of the `:`; a registry's JSON has at most a few bytes.
const MAX_SPACE: usize = 64;

fn key_finder() -> &'static memmem::Finder<'static> {
    static FINDER: OnceLock<memmem::Finder<'static>> = OnceLock::new();
    FINDER.get_or_init(|| memmem::Finder::new(KEY))
}

/// Makes a body's `"tarball": "<from>..."` values `"tarball": "<to>..."` (a [`ChunkFilter`]).
pub(crate) struct Rebase {
    from: Bytes,
    to: Bytes,
    /// Bytes held back: a key or value prefix may continue in the next chunk.
    held: BytesMut,
    /// Backslashes that ended the released output (they could escape a quote in the next chunk).
    backslashes: usize,
}

enum At {
    /// The value's prefix starts here and is `from`.
    Rewrite(usize),
    No,
    /// The chunk ends before it can be told.
    NeedMore,
}

impl Rebase {
    pub(crate) fn new(from: Bytes, to: Bytes) -> Rebase {
        Rebase { from, to, held: BytesMut::new(), backslashes: 0 }
    }

    /// What follows a `"tarball"` found at `i` of `buf`.
    fn value_at(&self, buf: &[u8], i: usize) -> At {
        let escapes = buf[..i].iter().rev().take_while(|&&b| b == b'\\').count();
        let escapes = if escapes == i { escapes + self.backslashes } else { escapes };
        if escapes % 2 == 1 {
            return At::No;
        }
        let space = |from: usize| {
            let n = buf[from..]
                .iter()
                .take(MAX_SPACE + 1)
                .take_while(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
                .count();
            (n <= MAX_SPACE).then_some(from + n)
        };
        let Some(j) = space(i + KEY.len()) else { return At::No };
        match buf.get(j) {
            None => return At::NeedMore,
            Some(b':') => {}
            Some(_) => return At::No,
        }
        let Some(j) = space(j + 1) else { return At::No };
        match buf.get(j) {
            None => return At::NeedMore,
            Some(b'"') => {}
            Some(_) => return At::No,
        }
        let start = j + 1;
        let have = &buf[start..buf.len().min(start + self.from.len())];
        if have != &self.from[..have.len()] {
            At::No
        } else if have.len() < self.from.len() {
            At::NeedMore
        } else {
            At::Rewrite(start)
        }
    }
}

impl ChunkFilter for Rebase {
    const KEEPS_LENGTH: bool = false;

    /// Rewrites what can be decided of `held` + `chunk` and returns it. A chunk with nothing to
    /// rewrite, and nothing held before it, goes out as it came, without a copy.
    fn push(&mut self, chunk: Bytes, last: bool) -> Bytes {
        let buf = if self.held.is_empty() {
            chunk
        } else {
            self.held.extend_from_slice(&chunk);
            self.held.split().freeze()
        };
        let mut values = Vec::new();
        let (mut search, mut keep) = (0, None);
        while let Some(found) = key_finder().find(&buf[search..]) {
            let i = search + found;
            match self.value_at(&buf, i) {
                At::Rewrite(start) => {
                    values.push(start);
                    search = start + self.from.len();
                }
                At::No => search = i + 1,
                At::NeedMore if last => search = i + 1,
                At::NeedMore => {
                    keep = Some(i);
                    break;
                }
            }
        }
        let end = match keep {
            Some(i) => i,
            None if last => buf.len(),
            // A key may begin in the last bytes: hold from the last quote that could start it.
            None => {
                let tail = buf.len().saturating_sub(KEY.len() - 1).max(search);
                memchr::memrchr(b'"', &buf[tail..]).map_or(buf.len(), |q| tail + q)
            }
        };
        if end < buf.len() {
            self.held.extend_from_slice(&buf[end..]);
        }
        let out = if values.is_empty() {
            buf.slice(..end)
        } else {
            let grown = values.len() * self.to.len().saturating_sub(self.from.len());
            let mut out = BytesMut::with_capacity(end + grown);
            let mut copied = 0;
            for start in values {
                out.extend_from_slice(&buf[copied..start]);
                out.extend_from_slice(&self.to);
                copied = start + self.from.len();
            }
            out.extend_from_slice(&buf[copied..end]);
            out.freeze()
        };
        let trailing = out.iter().rev().take_while(|&&b| b == b'\\').count();
        self.backslashes = if trailing == out.len() { self.backslashes + trailing } else { trailing };
        out
    }
}

/// A whole body, rewritten (itself, without a copy, when nothing in it names the upstream).
pub(crate) fn rebase_whole(body: Bytes, from: &Bytes, to: &Bytes) -> Bytes {
    Rebase::new(from.clone(), to.clone()).push(body, true)
}

/// `chunks`, as a relayed body in those chunks, through the rewrite: for the fuzz target.
pub fn rebase_chunks(chunks: &[&[u8]], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut r = Rebase::new(Bytes::copy_from_slice(from), Bytes::copy_from_slice(to));
    let mut out = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        out.extend_from_slice(&r.push(Bytes::copy_from_slice(c), i + 1 == chunks.len()));
    }
    out.extend_from_slice(&r.push(Bytes::new(), true));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::support::net::BoxError;
    use http_body::Frame;
    use http_body_util::BodyExt;
    use std::collections::VecDeque;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    struct Chunks(VecDeque<Bytes>);

    impl http_body::Body for Chunks {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
        }
    }

    const FROM: &str = "https://up.test:4873/";
    const TO: &str = "https://broker.test/";

    fn rebase_split(doc: &str, cuts: &[usize]) -> String {
        let mut chunks = VecDeque::new();
        let mut last = 0;
        for &c in cuts {
            chunks.push_back(Bytes::copy_from_slice(&doc.as_bytes()[last..c]));
            last = c;
        }
        chunks.push_back(Bytes::copy_from_slice(&doc.as_bytes()[last..]));
        let rebase = Rebase::new(Bytes::from_static(FROM.as_bytes()), Bytes::from_static(TO.as_bytes()));
        let body = super::super::filter::Filtered::new(Chunks(chunks), rebase);
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        String::from_utf8(rt.block_on(body.collect()).unwrap().to_bytes().to_vec()).unwrap()
    }

    /// The same answer however the document is cut into chunks: whole, at every single byte,
    /// and into single bytes.
    fn rebase(doc: &str) -> String {
        let whole = rebase_split(doc, &[]);
        for cut in 1..doc.len() {
            assert_eq!(rebase_split(doc, &[cut]), whole, "cut at {cut} of {doc}");
        }
        let every: Vec<usize> = (1..doc.len()).collect();
        assert_eq!(rebase_split(doc, &every), whole, "byte by byte: {doc}");
        whole
    }

    #[test]
    fn only_tarball_values_naming_the_upstream_are_rewritten() {
        let table = [
            (
                r#"{"dist":{"tarball":"https://up.test:4873/p/-/p-1.0.0.tgz"}}"#,
                r#"{"dist":{"tarball":"https://broker.test/p/-/p-1.0.0.tgz"}}"#,
            ),
            (
                "{\"dist\": {\n\t\"tarball\" :\n \"https://up.test:4873/@s/p/-/p-1.tgz\"}}",
                "{\"dist\": {\n\t\"tarball\" :\n \"https://broker.test/@s/p/-/p-1.tgz\"}}",
            ),
            // Two versions, two rewrites.
            (
                r#"{"a":{"tarball":"https://up.test:4873/a.tgz"},"b":{"tarball":"https://up.test:4873/b.tgz"}}"#,
                r#"{"a":{"tarball":"https://broker.test/a.tgz"},"b":{"tarball":"https://broker.test/b.tgz"}}"#,
            ),
            // Other hosts, other keys and other prefixes stay.
            (r#"{"tarball":"https://cdn.test/p.tgz"}"#, r#"{"tarball":"https://cdn.test/p.tgz"}"#),
            (r#"{"tarballs":"https://up.test:4873/p.tgz"}"#, r#"{"tarballs":"https://up.test:4873/p.tgz"}"#),
            (r#"{"tarball":"https://up.test:48731/p.tgz"}"#, r#"{"tarball":"https://up.test:48731/p.tgz"}"#),
            (r#"{"x":"https://up.test:4873/p.tgz"}"#, r#"{"x":"https://up.test:4873/p.tgz"}"#),
            // A "tarball" inside a string (a readme quoting JSON) is text, not a key.
            (
                r#"{"readme":"see \"tarball\":\"https://up.test:4873/x\" here"}"#,
                r#"{"readme":"see \"tarball\":\"https://up.test:4873/x\" here"}"#,
            ),
            (
                r#"{"readme":"a \\\"tarball\":\"https://up.test:4873/x\""}"#,
                r#"{"readme":"a \\\"tarball\":\"https://up.test:4873/x\""}"#,
            ),
            // An escaped backslash before the key's quote leaves the quote structural.
            (r#"{"r":"\\","tarball":"https://up.test:4873/x"}"#, r#"{"r":"\\","tarball":"https://broker.test/x"}"#),
            // A value that is the key's text, and a key without a value.
            (r#"{"k":"tarball"}"#, r#"{"k":"tarball"}"#),
            (r#"{"tarball""#, r#"{"tarball""#),
            (r#"{"tarball":"https://up.te"#, r#"{"tarball":"https://up.te"#),
            ("", ""),
        ];
        for (doc, want) in table {
            assert_eq!(rebase(doc), want, "{doc}");
        }
    }

    #[test]
    fn whitespace_is_bounded() {
        let doc = format!(r#"{{"tarball"{}:"https://up.test:4873/x"}}"#, " ".repeat(MAX_SPACE + 1));
        assert_eq!(rebase_split(&doc, &[]), doc);
    }
}
