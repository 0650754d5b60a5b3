//! Plumbing every layer may use, and that uses nothing of the broker's: TLS and HTTP helpers
//! (`net`), strict JSON (`json`), secrets and where they come from (`secret`), durations
//! (`units`), the wall clock (`clock`), hex, the memory budget of write bodies (`budget`), and
//! the `openidconnect` crate's calls over the broker's HTTPS client (`oidc`).

pub(crate) mod budget;
pub mod clock;
pub mod json;
pub mod net;
pub mod oidc;
pub mod secret;
pub mod units;

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    // Bytes, not `char`s: every audit line's hash goes through here.
    let mut out = vec![0u8; bytes.len() * 2];
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[(b >> 4) as usize];
        pair[1] = DIGITS[(b & 15) as usize];
    }
    String::from_utf8(out).expect("hex digits are ASCII")
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_is_lower_case() {
        assert_eq!(super::hex(&[0x00, 0x9f, 0xff, 0x1a]), "009fff1a");
        assert_eq!(super::hex(&[]), "");
    }
}
