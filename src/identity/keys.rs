//! An issuer's signing keys: OIDC discovery and JWKS, fetched over HTTPS and cached.
//!
//! Keys are used until their cache lifetime ends. Past half of it, a verification triggers a
//! refresh; if that fails the old keys keep working until the lifetime ends, then verification
//! fails closed. An unknown `kid` triggers a refetch, at most once per `KID_REFETCH_INTERVAL`.
//! Only the configured issuer URL is ever fetched: nothing in a token chooses a URL.

use crate::config::IssuerConfig;
use crate::support::json::parse_object;
use crate::support::net::is_loopback;
use crate::support::net::{self, HttpsClient};
use http::Uri;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// Discovery documents and JWKS larger than this are refused.
pub const MAX_DOCUMENT: usize = 1024 * 1024;
/// Refetches triggered by an unknown `kid` happen at most this often.
const KID_REFETCH_INTERVAL: Duration = Duration::from_secs(30);
/// After a failed fetch, no new fetch is tried for this long (requests do not queue on a dead issuer).
const FAILURE_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Default)]
struct FetchState {
    last_kid_refetch: Option<Instant>,
    last_failure: Option<Instant>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
}

impl Family {
    pub(crate) fn for_alg(alg: Algorithm) -> Option<Family> {
        use Algorithm::*;
        match alg {
            RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => Some(Family::Rsa),
            ES256 => Some(Family::EcP256),
            ES384 => Some(Family::EcP384),
            EdDSA => Some(Family::Ed25519),
            HS256 | HS384 | HS512 => None,
        }
    }
}

pub struct Key {
    pub kid: Option<String>,
    /// The JWK's own `alg`, when it names one.
    pub alg: Option<String>,
    pub family: Family,
    pub decoding: DecodingKey,
}

pub struct KeySet {
    pub keys: Vec<Key>,
    fetched_at: Instant,
}

impl KeySet {
    /// The key for `alg` and `kid`: the family must fit the algorithm, and the JWK's `alg`
    /// (if any) must equal it. Without a `kid`, only a set with a single fitting key matches.
    pub fn find(&self, alg: Algorithm, alg_name: &str, kid: Option<&str>) -> Option<&Key> {
        let family = Family::for_alg(alg)?;
        let mut fitting =
            self.keys.iter().filter(|k| k.family == family && k.alg.as_deref().is_none_or(|a| a == alg_name));
        match kid {
            Some(kid) => fitting.find(|k| k.kid.as_deref() == Some(kid)),
            None => {
                let first = fitting.next()?;
                fitting.next().is_none().then_some(first)
            }
        }
    }

    pub fn from_keys(keys: Vec<Key>) -> KeySet {
        KeySet { keys, fetched_at: Instant::now() }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum KeyError {
    #[error("fetching {what} failed: {detail}")]
    Fetch { what: &'static str, detail: String },
    #[error("the discovery document is invalid: {0}")]
    BadDiscovery(String),
    #[error("the JWKS is invalid")]
    BadJwks,
}

/// The key cache of one issuer.
pub struct KeyCache {
    cfg: IssuerConfig,
    client: HttpsClient,
    current: RwLock<Option<Arc<KeySet>>>,
    /// Serialises fetches (single flight) and remembers the last attempt, for rate limiting.
    fetching: tokio::sync::Mutex<FetchState>,
}

impl KeyCache {
    pub fn new(cfg: IssuerConfig, client: HttpsClient) -> KeyCache {
        KeyCache { cfg, client, current: RwLock::new(None), fetching: tokio::sync::Mutex::new(FetchState::default()) }
    }

    pub fn config(&self) -> &IssuerConfig {
        &self.cfg
    }

    /// Installs keys without fetching them: for tests, benchmarks and fuzzing. In production
    /// keys come only from the configured issuer's JWKS.
    pub fn preload(&self, set: KeySet) {
        *self.current.write().expect("key cache lock") = Some(Arc::new(set));
    }

    fn current(&self) -> Option<Arc<KeySet>> {
        self.current.read().expect("key cache lock").clone()
    }

    /// Usable keys: cached ones while they are fresh, else a (single-flight) fetch.
    /// `want_refetch` asks for a fetch because a `kid` was not found; such refetches are rate
    /// limited, and after a failed fetch no new one is tried for a short while.
    pub async fn keys(&self, want_refetch: bool) -> Result<Arc<KeySet>, KeyError> {
        let lifetime = self.cfg.jwks_cache;
        let fresh = |set: &KeySet| set.fetched_at.elapsed() < lifetime / 2;
        let cached = self.current();
        if let Some(set) = &cached {
            if !want_refetch && fresh(set) {
                return Ok(set.clone());
            }
        }
        let mut state = self.fetching.lock().await;
        // Another task may have fetched while this one waited.
        if let Some(set) = self.current() {
            let newer = cached.as_ref().is_none_or(|c| !Arc::ptr_eq(c, &set));
            if newer || (!want_refetch && fresh(&set)) {
                return Ok(set);
            }
        }
        let usable = self.current().filter(|s| s.fetched_at.elapsed() < lifetime);
        let backing_off = state.last_failure.is_some_and(|t| t.elapsed() < FAILURE_BACKOFF);
        let kid_limited = want_refetch
            && usable.is_some()
            && state.last_kid_refetch.is_some_and(|t| t.elapsed() < KID_REFETCH_INTERVAL);
        if backing_off || kid_limited {
            return usable.ok_or_else(|| KeyError::Fetch {
                what: "the JWKS",
                detail: "a recent fetch failed; retrying shortly".into(),
            });
        }
        if want_refetch {
            state.last_kid_refetch = Some(Instant::now());
        }
        match self.fetch().await {
            Ok(set) => {
                state.last_failure = None;
                let set = Arc::new(set);
                *self.current.write().expect("key cache lock") = Some(set.clone());
                Ok(set)
            }
            Err(e) => {
                state.last_failure = Some(Instant::now());
                tracing::warn!(issuer = %self.cfg.name, error = %e, "could not refresh the issuer's keys");
                usable.ok_or(e)
            }
        }
    }

    async fn fetch(&self) -> Result<KeySet, KeyError> {
        let timeout = self.cfg.fetch_timeout;
        let discovery_url: Uri = format!("{}/.well-known/openid-configuration", self.cfg.issuer.trim_end_matches('/'))
            .parse()
            .map_err(|_| KeyError::BadDiscovery("the issuer URL is invalid".into()))?;
        let body = net::get_json(&self.client, &discovery_url, timeout, MAX_DOCUMENT)
            .await
            .map_err(|e| KeyError::Fetch { what: "the discovery document", detail: e.to_string() })?;
        let doc = parse_object(&body).map_err(|e| KeyError::BadDiscovery(e.to_string()))?;
        if doc.get("issuer").and_then(Value::as_str) != Some(self.cfg.issuer.as_str()) {
            return Err(KeyError::BadDiscovery("its `issuer` is not the configured issuer".into()));
        }
        let jwks_uri: Uri = doc
            .get("jwks_uri")
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| KeyError::BadDiscovery("`jwks_uri` is missing or invalid".into()))?;
        let secure = match jwks_uri.scheme_str() {
            Some("https") => true,
            Some("http") => jwks_uri.host().is_some_and(is_loopback),
            _ => false,
        };
        if !secure {
            return Err(KeyError::BadDiscovery("`jwks_uri` must be https".into()));
        }
        let body = net::get_json(&self.client, &jwks_uri, timeout, MAX_DOCUMENT)
            .await
            .map_err(|e| KeyError::Fetch { what: "the JWKS", detail: e.to_string() })?;
        let keys = parse_jwks(&body)?;
        tracing::info!(issuer = %self.cfg.name, keys = keys.len(), "fetched the issuer's signing keys");
        Ok(KeySet::from_keys(keys))
    }
}

/// Parses a JWKS, keeping the signature keys it can use. Symmetric keys are never used.
pub fn parse_jwks(body: &[u8]) -> Result<Vec<Key>, KeyError> {
    let doc = parse_object(body).map_err(|_| KeyError::BadJwks)?;
    let list = doc.get("keys").and_then(Value::as_array).ok_or(KeyError::BadJwks)?;
    let mut keys = Vec::new();
    for v in list {
        let Ok(jwk) = serde_json::from_value::<Jwk>(v.clone()) else {
            continue;
        };
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let family = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Family::Rsa,
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Family::EcP256,
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P384 => Family::EcP384,
            AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => Family::Ed25519,
            _ => continue,
        };
        let Ok(decoding) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        keys.push(Key {
            kid: jwk.common.key_id.clone(),
            alg: v.get("alg").and_then(Value::as_str).map(str::to_owned),
            family,
            decoding,
        });
    }
    Ok(keys)
}
