//! The phantom token format: `phm_` + 43 base62 characters (256 random bits) + a 6-character
//! base62 CRC32 of the random part. The prefix lets secret scanners find leaked phantoms; the
//! checksum rejects mistyped or truncated tokens before any lookup.

use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};
use std::fmt;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

pub(crate) const PREFIX: &str = "phm_";
const RANDOM_LEN: usize = 43;
const CHECK_LEN: usize = 6;
pub(crate) const TOKEN_LEN: usize = PREFIX.len() + RANDOM_LEN + CHECK_LEN;
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A phantom token. Redacted in `Debug`, zeroized on drop.
pub struct PhantomToken(Zeroizing<String>);

/// The SHA-256 of a phantom: the only form the store keeps.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenDigest(pub [u8; 32]);

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("not a phantom token")]
    NotPhantom,
    #[error("malformed phantom token")]
    Malformed,
    #[error("phantom token checksum does not match")]
    Checksum,
}

impl PhantomToken {
    /// A new token from the system's secure random source.
    pub fn generate(rng: &SystemRandom) -> PhantomToken {
        let mut s = Zeroizing::new(String::with_capacity(TOKEN_LEN));
        s.push_str(PREFIX);
        let mut buf = Zeroizing::new([0u8; 64]);
        while s.len() < PREFIX.len() + RANDOM_LEN {
            rng.fill(&mut buf[..]).expect("the system random source failed");
            // Rejection sampling keeps every character uniform: 248 = 4 * 62.
            for &b in buf.iter().filter(|&&b| b < 248) {
                if s.len() == PREFIX.len() + RANDOM_LEN {
                    break;
                }
                s.push(BASE62[(b % 62) as usize] as char);
            }
        }
        let check = checksum(&s.as_bytes()[PREFIX.len()..]);
        s.push_str(std::str::from_utf8(&check).expect("base62 is ASCII"));
        PhantomToken(s)
    }

    /// Checks the shape and checksum, in time that does not depend on where a mismatch is.
    pub fn parse(s: &str) -> Result<PhantomToken, FormatError> {
        PhantomToken::check(s)?;
        Ok(PhantomToken(Zeroizing::new(s.to_owned())))
    }

    /// The digest of a token a caller presented, checked as `parse` checks it, without a copy
    /// of the token.
    pub fn digest_of(s: &str) -> Result<TokenDigest, FormatError> {
        PhantomToken::check(s)?;
        Ok(digest_bytes(s.as_bytes()))
    }

    fn check(s: &str) -> Result<(), FormatError> {
        if !s.starts_with(PREFIX) {
            return Err(FormatError::NotPhantom);
        }
        let b = s.as_bytes();
        if b.len() != TOKEN_LEN || !b[PREFIX.len()..].iter().all(u8::is_ascii_alphanumeric) {
            return Err(FormatError::Malformed);
        }
        let (random, check) = b[PREFIX.len()..].split_at(RANDOM_LEN);
        let want = checksum(random);
        if !bool::from(want[..].ct_eq(check)) {
            return Err(FormatError::Checksum);
        }
        Ok(())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn digest(&self) -> TokenDigest {
        digest_bytes(self.0.as_bytes())
    }
}

fn checksum(random: &[u8]) -> [u8; CHECK_LEN] {
    let mut n = crc32fast::hash(random) as u64;
    let mut out = [b'0'; CHECK_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    out
}

fn digest_bytes(token: &[u8]) -> TokenDigest {
    let d = digest::digest(&digest::SHA256, token);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    TokenDigest(out)
}

impl fmt::Debug for PhantomToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PhantomToken(<redacted>)")
    }
}

impl fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenDigest(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_parse_and_differ() {
        let rng = SystemRandom::new();
        let a = PhantomToken::generate(&rng);
        let b = PhantomToken::generate(&rng);
        assert_eq!(a.expose().len(), TOKEN_LEN);
        assert!(a.expose().starts_with("phm_"));
        assert_ne!(a.expose(), b.expose());
        assert_eq!(PhantomToken::parse(a.expose()).unwrap().digest(), a.digest());
        assert_ne!(a.digest(), b.digest());
        assert!(!format!("{a:?} {:?}", a.digest()).contains(&a.expose()[4..10]));
    }

    #[test]
    fn format_table() {
        let rng = SystemRandom::new();
        let good = PhantomToken::generate(&rng).expose().to_owned();
        let flip = |i: usize| {
            let mut b = good.clone().into_bytes();
            b[i] = if b[i] == b'a' { b'b' } else { b'a' };
            String::from_utf8(b).unwrap()
        };
        let table: Vec<(String, FormatError)> = vec![
            ("npm_abc".into(), FormatError::NotPhantom),
            (String::new(), FormatError::NotPhantom),
            (good[1..].to_owned(), FormatError::NotPhantom),
            (format!("PHM_{}", &good[4..]), FormatError::NotPhantom),
            (good[..good.len() - 1].to_owned(), FormatError::Malformed),
            (format!("{good}0"), FormatError::Malformed),
            (format!("x{good}"), FormatError::NotPhantom),
            (format!("phm_{}-{}", &good[4..20], &good[21..]), FormatError::Malformed),
            (flip(10), FormatError::Checksum),
            (flip(TOKEN_LEN - 1), FormatError::Checksum),
            (format!("phm_{}", "0".repeat(RANDOM_LEN + CHECK_LEN)), FormatError::Checksum),
        ];
        for (input, want) in table {
            assert_eq!(PhantomToken::parse(&input).err(), Some(want), "{input}");
        }
    }

    #[test]
    fn checksum_is_stable() {
        // CRC32("hello") = 0x3610a686, in this base62 alphabet (computed independently).
        assert_eq!(&checksum(b"hello"), b"0zNvy2");
    }
}
