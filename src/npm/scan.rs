//! An incremental scanner for publish bodies, so that a 200 MB tarball streams through the
//! checks with bounded memory.
//!
//! It tracks just enough JSON structure to find the base64 `data` of `.tgz` attachments
//! (`_attachments.<name>.tgz.data`), counts and validates those bytes without keeping them, and
//! keeps everything else as a "skeleton": the same document with each such string replaced by
//! `"x"` (or left `""` if it was empty). The skeleton then goes through the ordinary strict checks
//! (`body::check_put_packument` and friends), which decide everything; the scanner never does.
//! If the scanner misreads the structure (escaped keys, say), a data string merely stays in the
//! skeleton, which is capped, so the worst case is a refusal, never a skipped check.
//!
//! It refuses early only what cannot be a publish body (anything but one JSON object: bytes
//! before or after it, brackets that do not match), and it records where the object closes, so
//! that the write gate can hold that byte back until the verdict.

/// Deeper nesting than this is refused while scanning (the strict parser allows less anyway).
const MAX_DEPTH: usize = 128;
/// Keys longer than this are not remembered for matching (they still go into the skeleton).
const MAX_KEY: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    #[error("the body, without its tarball data, is larger than the limit")]
    SkeletonTooLarge,
    #[error("tarball data must be plain base64")]
    BadTarballData,
    #[error("the body nests too deeply or is not JSON")]
    Malformed,
}

#[derive(Debug)]
enum Frame {
    Object { expect_key: bool, key: Option<Vec<u8>> },
    Array,
}

/// What a scan leaves: the skeleton and the number of tarball data bytes left out of it.
#[derive(Debug)]
pub struct Scanned {
    pub skeleton: Vec<u8>,
    pub data_bytes: u64,
}

#[derive(Debug)]
pub struct PublishScanner {
    skeleton: Vec<u8>,
    max_skeleton: usize,
    /// Bytes fed so far.
    offset: u64,
    /// The offset of the byte that closed the top-level object or array, once one has.
    closed_at: Option<u64>,
    stack: Vec<Frame>,
    in_string: bool,
    escaped: bool,
    /// The string being read is a key; its bytes are collected here (up to MAX_KEY).
    key: Option<Vec<u8>>,
    /// The string being read is tarball data: not copied, only counted.
    data: bool,
    data_in_this_string: u64,
    data_bytes: u64,
}

impl PublishScanner {
    pub fn new(max_skeleton: usize) -> PublishScanner {
        PublishScanner {
            skeleton: Vec::with_capacity(4096),
            max_skeleton,
            offset: 0,
            closed_at: None,
            stack: Vec::new(),
            in_string: false,
            escaped: false,
            key: None,
            data: false,
            data_in_this_string: 0,
            data_bytes: 0,
        }
    }

    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), ScanError> {
        let start = self.offset;
        self.offset += chunk.len() as u64;
        let mut i = 0;
        while i < chunk.len() {
            if self.data {
                i += self.tarball_data(&chunk[i..])?;
                continue;
            }
            let b = chunk[i];
            i += 1;
            if self.in_string {
                self.string_byte(b)?;
            } else {
                self.structural(b, start + i as u64 - 1)?;
            }
        }
        Ok(())
    }

    /// Fast path: the tarball's base64 up to its closing quote, never copied. Returns how many
    /// of `rest`'s bytes it took.
    fn tarball_data(&mut self, rest: &[u8]) -> Result<usize, ScanError> {
        let end = base64_run(rest);
        if end < rest.len() && rest[end] != b'"' {
            return Err(ScanError::BadTarballData);
        }
        self.data_in_this_string += end as u64;
        if end == rest.len() {
            return Ok(end);
        }
        // The closing quote.
        self.data = false;
        self.in_string = false;
        self.data_bytes += self.data_in_this_string;
        if self.data_in_this_string > 0 {
            self.push(b"x")?;
        }
        self.push(b"\"")?;
        self.after_value();
        Ok(end + 1)
    }

    /// A byte inside a string (a key, or a value other than tarball data).
    fn string_byte(&mut self, b: u8) -> Result<(), ScanError> {
        self.push(&[b])?;
        if self.escaped {
            self.escaped = false;
            self.key_byte(b);
        } else if b == b'\\' {
            self.escaped = true;
            self.key_byte(b);
        } else if b == b'"' {
            self.in_string = false;
            match self.key.take() {
                Some(key) => {
                    if let Some(Frame::Object { key: slot, .. }) = self.stack.last_mut() {
                        *slot = Some(key);
                    }
                }
                None => self.after_value(),
            }
        } else {
            self.key_byte(b);
        }
        Ok(())
    }

    /// A byte outside strings, at offset `at` of the body.
    fn structural(&mut self, b: u8, at: u64) -> Result<(), ScanError> {
        match b {
            // A publish body is one object: nothing but whitespace may come before or after.
            b' ' | b'\t' | b'\n' | b'\r' if self.stack.is_empty() => self.push(&[b])?,
            _ if self.stack.is_empty() && (self.closed_at.is_some() || b != b'{') => {
                return Err(ScanError::Malformed);
            }
            b'"' => {
                self.push(&[b])?;
                self.in_string = true;
                let is_key = matches!(self.stack.last(), Some(Frame::Object { expect_key: true, .. }));
                if is_key {
                    self.key = Some(Vec::new());
                    if let Some(Frame::Object { expect_key, .. }) = self.stack.last_mut() {
                        *expect_key = false;
                    }
                } else if self.at_tarball_data() {
                    self.data = true;
                    self.data_in_this_string = 0;
                }
            }
            b'{' | b'[' => {
                if self.stack.len() >= MAX_DEPTH {
                    return Err(ScanError::Malformed);
                }
                self.push(&[b])?;
                self.stack.push(if b == b'{' { Frame::Object { expect_key: true, key: None } } else { Frame::Array });
            }
            b'}' | b']' => {
                // A close must match what is open (the strict parse would refuse it anyway).
                match (self.stack.pop(), b) {
                    (Some(Frame::Object { .. }), b'}') | (Some(Frame::Array), b']') => {}
                    _ => return Err(ScanError::Malformed),
                }
                self.push(&[b])?;
                if self.stack.is_empty() {
                    self.closed_at = Some(at);
                }
                self.after_value();
            }
            b',' => {
                self.push(&[b])?;
                if let Some(Frame::Object { expect_key, .. }) = self.stack.last_mut() {
                    *expect_key = true;
                }
            }
            _ => self.push(&[b])?,
        }
        Ok(())
    }

    /// The offset of the byte that closed the body's top-level object (or array), if one has:
    /// a document that the upstream could parse ends there.
    pub(crate) fn closed_at(&self) -> Option<u64> {
        self.closed_at
    }

    /// Tarball data bytes seen so far (the string being read included): a body with any is
    /// shaped as a publish.
    pub(crate) fn tarball_bytes(&self) -> u64 {
        self.data_bytes + if self.data { self.data_in_this_string } else { 0 }
    }

    /// Memory the skeleton holds (its capacity).
    pub(crate) fn held_bytes(&self) -> usize {
        self.skeleton.capacity()
    }

    pub fn finish(self) -> Result<Scanned, ScanError> {
        if self.in_string || !self.stack.is_empty() {
            return Err(ScanError::Malformed);
        }
        Ok(Scanned { skeleton: self.skeleton, data_bytes: self.data_bytes })
    }

    fn push(&mut self, bytes: &[u8]) -> Result<(), ScanError> {
        let len = self.skeleton.len();
        if len + bytes.len() > self.max_skeleton {
            return Err(ScanError::SkeletonTooLarge);
        }
        if len + bytes.len() > self.skeleton.capacity() {
            // Growth by a quarter (not doubled): the capacity is what the memory budget is
            // charged, so it stays close to what is held.
            self.skeleton.reserve_exact(bytes.len().max(len / 4).max(4096));
        }
        self.skeleton.extend_from_slice(bytes);
        Ok(())
    }

    fn key_byte(&mut self, b: u8) {
        if let Some(k) = self.key.as_mut() {
            if k.len() <= MAX_KEY {
                k.push(b);
            }
        }
    }

    /// A value ended: an object's key is spent.
    fn after_value(&mut self) {
        if let Some(Frame::Object { key, .. }) = self.stack.last_mut() {
            *key = None;
        }
    }

    /// Whether a string value starting now is `_attachments.<*.tgz>.data`.
    fn at_tarball_data(&self) -> bool {
        fn key(f: &Frame) -> Option<&[u8]> {
            match f {
                Frame::Object { key: Some(k), .. } => Some(k.as_slice()),
                _ => None,
            }
        }
        match self.stack.as_slice() {
            [root, attachments, attachment] => {
                key(root) == Some(b"_attachments")
                    && key(attachments).is_some_and(|k| k.ends_with(b".tgz"))
                    && key(attachment) == Some(b"data")
            }
            _ => false,
        }
    }
}

/// The length of the run of base64 characters that `bytes` starts with. One pass, in blocks
/// checked with range tests and no early exit, so that the compiler checks 16 or more bytes per
/// instruction: this runs over every byte of a tarball.
fn base64_run(bytes: &[u8]) -> usize {
    fn bad(b: u8) -> u8 {
        let letter = (b | 0x20).wrapping_sub(b'a') < 26;
        let digit = b.wrapping_sub(b'0') < 10;
        !(letter | digit | (b == b'+') | (b == b'/') | (b == b'=')) as u8
    }
    let mut run = 0;
    for block in bytes.chunks(4096) {
        if block.iter().fold(0u8, |acc, &b| acc | bad(b)) != 0 {
            return run + block.iter().position(|&b| bad(b) != 0).unwrap_or(block.len());
        }
        run += block.len();
    }
    run
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scan_in(body: &[u8], chunk: usize) -> Result<Scanned, ScanError> {
        let mut s = PublishScanner::new(1 << 20);
        for c in body.chunks(chunk.max(1)) {
            s.feed(c)?;
        }
        s.finish()
    }

    #[test]
    fn a_base64_run_is_exactly_the_base64_alphabet() {
        for b in 0..=255u8 {
            let base64 = b.is_ascii_alphanumeric() || b"+/=".contains(&b);
            assert_eq!(base64_run(&[b]), base64 as usize, "byte {b:#04x}");
            // The same byte deep inside a long run, past the first block.
            for at in [0, 4095, 4096, 8191, 8999] {
                let mut run = vec![b'A'; 9000];
                run[at] = b;
                assert_eq!(base64_run(&run), if base64 { 9000 } else { at }, "byte {b:#04x} at {at}");
            }
        }
        assert_eq!(base64_run(b""), 0);
    }

    #[test]
    fn skeleton_leaves_out_only_tarball_data_at_any_chunking() {
        let data = "QUJD".repeat(1000);
        let body = json!({
            "_id": "web", "name": "web", "dist-tags": {"latest": "1.0.0"},
            "versions": {"1.0.0": {"name": "web", "version": "1.0.0", "data": "kept \" \\u0041 \\\\"}},
            "_attachments": {
                "web-1.0.0.tgz": {"content_type": "application/octet-stream", "data": data, "length": 3000},
                "web-1.0.0.sigstore": {"data": "{\"kept\": true}"}
            }
        })
        .to_string();
        let mut want: serde_json::Value = serde_json::from_str(&body).unwrap();
        want["_attachments"]["web-1.0.0.tgz"]["data"] = json!("x");
        for chunk in [1, 2, 3, 7, 64, 4096, body.len()] {
            let s = scan_in(body.as_bytes(), chunk).unwrap();
            assert_eq!(s.data_bytes, 4000, "chunk {chunk}");
            let got: serde_json::Value = serde_json::from_slice(&s.skeleton).unwrap();
            assert_eq!(got, want, "chunk {chunk}");
        }
    }

    #[test]
    fn data_elsewhere_and_escaped_keys_stay_in_the_skeleton() {
        for body in [
            json!({"data": "QUJD", "x": {"y.tgz": {"data": "QUJD"}}}).to_string(),
            r#"{"_attachm\u0065nts": {"a.tgz": {"data": "QUJD"}}}"#.to_owned(),
            json!({"_attachments": {"a.tar": {"data": "QUJD"}}}).to_string(),
            json!({"_attachments": {"a.tgz": {"data": ["QUJD"]}}}).to_string(),
        ] {
            let s = scan_in(body.as_bytes(), 5).unwrap();
            assert_eq!(s.data_bytes, 0, "{body}");
            assert_eq!(s.skeleton, body.as_bytes());
        }
    }

    #[test]
    fn the_top_level_close_is_found_at_any_chunking() {
        let body = br#" {"a": "}", "b": [1, {"c": "\"}"}], "_attachments": {"a.tgz": {"data": "QUJD"}}} "#;
        let at = body.len() as u64 - 2;
        for chunk in 1..body.len() {
            let mut s = PublishScanner::new(1 << 20);
            for (i, c) in body.chunks(chunk).enumerate() {
                s.feed(c).unwrap();
                let seen = (i * chunk + c.len()) as u64;
                assert_eq!(s.closed_at(), (seen > at).then_some(at), "chunk {chunk}");
            }
        }
        for not_an_object in [&b"\"a string\""[..], b" 12", b"[{}]", b"null"] {
            let mut s = PublishScanner::new(1 << 20);
            assert_eq!(s.feed(not_an_object), Err(ScanError::Malformed), "{not_an_object:?}");
        }
    }

    #[test]
    fn refusals() {
        let bad_data = br#"{"_attachments": {"a.tgz": {"data": "QU\"JD"}}}"#;
        // The quote ends the data string early; what follows is not JSON, which the strict
        // parse of the skeleton refuses.
        let s = scan_in(bad_data, 4);
        assert!(s.is_err() || crate::support::json::parse_strict(&s.unwrap().skeleton).is_err());
        let escape = br#"{"_attachments": {"a.tgz": {"data": "QU\\nJD"}}}"#;
        assert_eq!(scan_in(escape, 4).unwrap_err(), ScanError::BadTarballData);
        let deep = "[".repeat(200);
        assert_eq!(scan_in(deep.as_bytes(), 16).unwrap_err(), ScanError::Malformed);
        for unbalanced in [&b"}"[..], b"{]", b"{[}", b"{} {}", b"{}x", b"{}}"] {
            assert_eq!(scan_in(unbalanced, 1).unwrap_err(), ScanError::Malformed, "{unbalanced:?}");
        }
        assert!(scan_in(b"{} \r\n\t", 1).is_ok());
        assert_eq!(scan_in(b"{\"a\": \"b", 3).unwrap_err(), ScanError::Malformed);
        let mut small = PublishScanner::new(10);
        assert_eq!(small.feed(br#"{"name": "web-too-long"}"#).unwrap_err(), ScanError::SkeletonTooLarge);
        let empty = br#"{"_attachments": {"a.tgz": {"data": ""}}}"#;
        let s = scan_in(empty, 3).unwrap();
        assert_eq!(s.skeleton, empty, "an empty data string stays empty, so the checks see it");
    }
}
