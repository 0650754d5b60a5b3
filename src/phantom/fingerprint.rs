//! What makes two writes "the same": a fingerprint of the method, the path and the body. A
//! client's retry of a write that failed upstream has the same fingerprint and is not a new use.

/// A digest of one request's method, path and body: what makes two writes "the same".
pub type Fingerprint = [u8; 32];

/// The fingerprint of a write (method, path and body), the identity of a retry.
///
/// BLAKE3, not ring's SHA-256: the fingerprint covers every byte of a publish, and on a 200 MB
/// tarball SHA-256 was a third of the broker's CPU time (BENCHMARKS.md). It is the broker's
/// own value, never compared with anything outside it. The body is hashed on its own, staged
/// into aligned 64 KiB blocks, the size at which BLAKE3 hashes 16 chunks per instruction
/// (network reads come in odd sizes); the fingerprint is the hash of the method, the path and
/// that hash.
pub struct Fingerprinter {
    prefix: Vec<u8>,
    body: blake3::Hasher,
    staged: Vec<u8>,
}

const FINGERPRINT_BLOCK: usize = 64 * 1024;

impl Fingerprinter {
    /// A fingerprint of a request with this method and (classified, rebuilt) path.
    pub fn of(method: &str, path: &str) -> Fingerprinter {
        // Method and path end in a zero byte, which neither can hold.
        let prefix = [method.as_bytes(), &[0], path.as_bytes(), &[0]].concat();
        Fingerprinter { prefix, body: blake3::Hasher::new(), staged: Vec::new() }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        if !self.staged.is_empty() {
            let take = data.len().min(FINGERPRINT_BLOCK - self.staged.len());
            self.staged.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.staged.len() < FINGERPRINT_BLOCK {
                return;
            }
            self.body.update(&self.staged);
            self.staged.clear();
        }
        let whole = data.len() - data.len() % FINGERPRINT_BLOCK;
        self.body.update(&data[..whole]);
        self.staged.extend_from_slice(&data[whole..]);
    }

    pub fn finish(mut self) -> Fingerprint {
        self.body.update(&self.staged);
        let mut all = blake3::Hasher::new();
        all.update(&self.prefix);
        all.update(self.body.finalize().as_bytes());
        *all.finalize().as_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::Fingerprinter;

    fn fingerprint(method: &str, path: &str, body: &[u8], chunk: usize) -> [u8; 32] {
        let mut f = Fingerprinter::of(method, path);
        body.chunks(chunk).for_each(|c| f.update(c));
        f.finish()
    }

    #[test]
    fn a_fingerprint_depends_on_the_bytes_not_on_how_they_arrived() {
        let body: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let whole = fingerprint("PUT", "/a", &body, body.len());
        assert_eq!(
            whole,
            *blake3::hash(&[b"PUT\0/a\0".as_slice(), blake3::hash(&body).as_bytes()].concat()).as_bytes()
        );
        for chunk in [1, 7, 1000, 16_384, 65_535, 65_536, 65_537, 200_000] {
            assert_eq!(fingerprint("PUT", "/a", &body, chunk), whole, "chunks of {chunk}");
        }
        let mut other = body.clone();
        other[250_000] ^= 1;
        assert_ne!(fingerprint("PUT", "/a", &other, 16_384), whole);
        assert_ne!(fingerprint("PUT", "/b", &body, 16_384), whole);
        assert_ne!(fingerprint("DELETE", "/a", &body, 16_384), whole);
        assert_ne!(fingerprint("PUT", "/a", &body[1..], 16_384), whole);
    }
}
