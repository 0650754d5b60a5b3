//! Who is calling: OIDC ID tokens from configured issuers, verified.
//!
//! The unverified `iss` only selects which configured issuer verifies the token. The header's
//! `alg` must be on that issuer's allow-list and fit the key; `jku`, `x5u`, `jwk` and `crit`
//! headers are refused, never followed. Time and audience checks use one leeway, and the replay
//! window the caller gets back (`replay_until`) is derived from the same numbers, so a token
//! cannot outlive its replay-cache entry.

mod keys;

pub use keys::{parse_jwks, Family, Key, KeyCache, KeyError, KeySet, MAX_DOCUMENT};

use crate::config::IssuerConfig;
use crate::policy::Identity;
use crate::support::json::parse_object;
use crate::support::net::{self, HttpsClient};
use crate::support::secret::IdToken;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;

/// ID tokens larger than this are refused before any parsing.
pub(crate) const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Tokens that claim to live longer than this are refused: they would pin replay-cache entries.
const MAX_LIFETIME: u64 = 24 * 3600;

/// Which audience the token must carry.
#[derive(Debug, Clone, Copy)]
pub enum Audience<'a> {
    /// npm's own exchange: `npm:<host of public_url>`.
    Exactly(&'a str),
    /// The generic exchange: the issuer's configured audience.
    IssuerDefault,
}

/// A verified ID token.
#[derive(Debug)]
pub struct Verified {
    pub identity: Identity,
    /// The key under which the token is recorded as spent: issuer and `jti` (or, without a
    /// `jti`, the token's digest).
    pub replay_key: [u8; 32],
    /// Unix seconds until which the token could still verify.
    pub replay_until: u64,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum IdentityError {
    #[error("the ID token is larger than 16 KiB")]
    TooLarge,
    #[error("the ID token is not a well-formed JWT")]
    Malformed,
    #[error("the ID token's issuer is not configured")]
    UnknownIssuer,
    #[error("the ID token's algorithm is not allowed for its issuer")]
    AlgorithmNotAllowed,
    #[error("the ID token has a `{0}` header, which is never trusted")]
    ForbiddenHeader(&'static str),
    #[error("no key of the issuer matches the ID token")]
    UnknownKey,
    #[error("the issuer's keys are unavailable: {0}")]
    KeysUnavailable(String),
    #[error("the ID token's signature is invalid")]
    BadSignature,
    #[error("the ID token has expired")]
    Expired,
    #[error("the ID token is not valid yet")]
    NotYetValid,
    #[error("the ID token was issued in the future")]
    IssuedInFuture,
    #[error("the ID token's lifetime is too long")]
    TooLongLived,
    #[error("the ID token's audience is wrong")]
    WrongAudience,
    #[error("the ID token lacks the `{0}` claim")]
    MissingClaim(&'static str),
    #[error("the ID token's `{0}` claim has the wrong type")]
    BadClaimType(&'static str),
}

impl IdentityError {
    pub fn status(&self) -> u16 {
        match self {
            IdentityError::KeysUnavailable(_) => 503,
            _ => 401,
        }
    }
}

/// The configured issuers, by their exact `iss`.
pub struct Issuers {
    by_iss: HashMap<String, Arc<KeyCache>>,
}

impl Issuers {
    pub fn new(configs: &[IssuerConfig]) -> Result<Issuers, String> {
        let mut by_iss = HashMap::new();
        for cfg in configs {
            let tls = net::client_config(cfg.ca_file.as_deref()).map_err(|e| format!("issuer `{}`: {e}", cfg.name))?;
            let client: HttpsClient = net::https_client(tls, cfg.fetch_timeout);
            if by_iss.insert(cfg.issuer.clone(), Arc::new(KeyCache::new(cfg.clone(), client))).is_some() {
                return Err(format!("issuer `{}`: the same `issuer` URL is configured twice", cfg.name));
            }
        }
        Ok(Issuers { by_iss })
    }

    /// Fetches every issuer's keys in the background, so the first exchange does not wait.
    pub(crate) fn prefetch(&self) {
        for cache in self.by_iss.values() {
            let cache = cache.clone();
            tokio::spawn(async move {
                let _ = cache.keys(false).await;
            });
        }
    }

    /// Whether each issuer has keys to verify with now (fetching them if they are stale), by
    /// the issuer's configured name.
    pub(crate) async fn keys_usable(&self) -> Vec<(String, bool)> {
        let mut out = Vec::new();
        for cache in self.by_iss.values() {
            let usable = tokio::time::timeout(cache.config().fetch_timeout, cache.keys(false)).await;
            out.push((cache.config().name.clone(), matches!(usable, Ok(Ok(_)))));
        }
        out.sort();
        out
    }

    /// The key cache of the issuer whose `iss` is given.
    pub fn cache(&self, iss: &str) -> Option<&Arc<KeyCache>> {
        self.by_iss.get(iss)
    }

    /// Verifies `raw` at time `now` (unix seconds).
    pub async fn verify(&self, raw: &IdToken, audience: Audience<'_>, now: u64) -> Result<Verified, IdentityError> {
        let token = raw.expose();
        if token.len() > MAX_TOKEN_BYTES {
            return Err(IdentityError::TooLarge);
        }
        let (header, claims) = split(token)?;
        let alg_name = header.get("alg").and_then(Value::as_str).ok_or(IdentityError::Malformed)?;
        for forbidden in ["jku", "x5u", "jwk", "crit"] {
            if header.contains_key(forbidden) {
                return Err(IdentityError::ForbiddenHeader(forbidden));
            }
        }
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(k)) if k.len() <= 256 => Some(k.as_str()),
            Some(_) => return Err(IdentityError::Malformed),
        };
        let iss = claims.get("iss").and_then(Value::as_str).ok_or(IdentityError::MissingClaim("iss"))?;
        let cache = self.by_iss.get(iss).ok_or(IdentityError::UnknownIssuer)?;
        let cfg = cache.config();
        let alg = Algorithm::from_str(alg_name).map_err(|_| IdentityError::AlgorithmNotAllowed)?;
        if !cfg.algorithms.contains(&alg) || Family::for_alg(alg).is_none() {
            return Err(IdentityError::AlgorithmNotAllowed);
        }

        let keyset = cache.keys(false).await.map_err(|e| IdentityError::KeysUnavailable(e.to_string()))?;
        let keyset = match keyset.find(alg, alg_name, kid) {
            Some(_) => keyset,
            // An unknown kid may be a rotated key: refetch (rate limited), then look again.
            None => cache.keys(true).await.map_err(|_| IdentityError::UnknownKey)?,
        };
        let key = keyset.find(alg, alg_name, kid).ok_or(IdentityError::UnknownKey)?;

        // jsonwebtoken would refuse these with a vaguer error.
        for key in ["sub", "jti"] {
            match claims.get(key) {
                None => {}
                Some(Value::String(s)) if s.len() <= 1024 => {}
                Some(_) => return Err(IdentityError::BadClaimType(key)),
            }
        }

        // Only the signature is left to check: the header and claims were parsed (strictly)
        // above, and the claims are checked below against an injected clock.
        let (signing_input, signature) = token.rsplit_once('.').ok_or(IdentityError::Malformed)?;
        match jsonwebtoken::crypto::verify(signature, signing_input.as_bytes(), &key.decoding, alg) {
            Ok(true) => {}
            Ok(false) => return Err(IdentityError::BadSignature),
            Err(e) if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::InvalidSignature) => {
                return Err(IdentityError::BadSignature)
            }
            Err(_) => return Err(IdentityError::Malformed),
        }

        let leeway = cfg.leeway.as_secs();
        let exp = check_times(&claims, leeway, now)?;
        let expected = match audience {
            Audience::Exactly(a) => a,
            Audience::IssuerDefault => cfg.audience.as_str(),
        };
        check_audience(&claims, expected)?;
        let replay_key = replay_key(&cfg.issuer, &claims, token);
        Ok(Verified {
            identity: Identity { issuer: cfg.name.as_str().into(), claims },
            replay_key,
            replay_until: exp.saturating_add(leeway).saturating_add(1),
        })
    }
}

/// Splits a compact JWS into its header and claims, both strict JSON objects.
type Object = Map<String, Value>;

/// Splits a compact JWS into its header and claims (strict JSON objects), without verifying
/// anything: the first step of `Issuers::verify`.
pub fn decode_unverified(token: &str) -> Result<(Object, Object), IdentityError> {
    split(token)
}

fn split(token: &str) -> Result<(Object, Object), IdentityError> {
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(IdentityError::Malformed);
    };
    if h.is_empty() || c.is_empty() || s.is_empty() {
        return Err(IdentityError::Malformed);
    }
    let decode = |part: &str| -> Result<Object, IdentityError> {
        let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| IdentityError::Malformed)?;
        parse_object(&bytes).map_err(|_| IdentityError::Malformed)
    };
    Ok((decode(h)?, decode(c)?))
}

/// `exp`, `nbf` and `iat` against `now`, with one leeway; and no token that lives too long.
/// Returns `exp`.
fn check_times(claims: &Map<String, Value>, leeway: u64, now: u64) -> Result<u64, IdentityError> {
    let exp = number(claims, "exp")?.ok_or(IdentityError::MissingClaim("exp"))?;
    let iat = number(claims, "iat")?.ok_or(IdentityError::MissingClaim("iat"))?;
    if now > exp.saturating_add(leeway) {
        return Err(IdentityError::Expired);
    }
    if number(claims, "nbf")?.is_some_and(|nbf| nbf > now + leeway) {
        return Err(IdentityError::NotYetValid);
    }
    if iat > now + leeway {
        return Err(IdentityError::IssuedInFuture);
    }
    if exp > now + MAX_LIFETIME {
        return Err(IdentityError::TooLongLived);
    }
    Ok(exp)
}

/// The audience, exactly (a list must contain it).
fn check_audience(claims: &Map<String, Value>, expected: &str) -> Result<(), IdentityError> {
    let ok = match claims.get("aud") {
        Some(Value::String(a)) => a == expected,
        Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(expected)),
        Some(_) => return Err(IdentityError::BadClaimType("aud")),
        None => return Err(IdentityError::MissingClaim("aud")),
    };
    if ok {
        Ok(())
    } else {
        Err(IdentityError::WrongAudience)
    }
}

/// What makes a token spent once exchanged: its issuer and `jti`.
fn replay_key(issuer: &str, claims: &Map<String, Value>, token: &str) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(issuer.as_bytes());
    ctx.update(&[0]);
    match claims.get("jti").and_then(Value::as_str) {
        Some(jti) => ctx.update(jti.as_bytes()),
        // Without a jti, the signed part only: signatures can be malleable (ECDSA's s and n-s
        // both verify), so the same token must not yield two replay keys.
        None => ctx.update(&token.as_bytes()[..token.rfind('.').unwrap_or(token.len())]),
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// A NumericDate claim: a non-negative number (fractions are cut).
fn number(claims: &Map<String, Value>, key: &'static str) -> Result<Option<u64>, IdentityError> {
    match claims.get(key) {
        None => Ok(None),
        Some(Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
            (Some(u), _) => Ok(Some(u)),
            (None, Some(f)) if (0.0..1e15).contains(&f) => Ok(Some(f as u64)),
            _ => Err(IdentityError::BadClaimType(key)),
        },
        Some(_) => Err(IdentityError::BadClaimType(key)),
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
