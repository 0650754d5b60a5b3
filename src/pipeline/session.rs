//! Who the caller is: the phantom in `Authorization`, looked up in the state store, or nobody
//! (an anonymous read). A phantom anywhere else (the query string, `Proxy-Authorization`, a
//! cookie) is refused, so it is never forwarded or logged from there.

use super::refusal::Refusal;
use crate::app::App;
use crate::audit::Record;
use crate::phantom::{PhantomRecord, PhantomToken, TokenDigest};
use crate::state::{Lookup, PhantomStore};
use crate::support::net::{self, Bearer};
use http::header;
use http::Request;
use hyper::body::Incoming;
use std::sync::Arc;

/// A caller that presented a live phantom.
pub(crate) struct Session {
    pub(crate) digest: TokenDigest,
    pub(crate) record: Arc<PhantomRecord>,
}

/// Looks up the phantom in `Authorization`, if any. Anything else there is refused: other
/// credentials are never forwarded.
pub(super) async fn authenticate(
    app: &App,
    headers: &http::HeaderMap,
    rec: &mut Record,
) -> Result<Option<Session>, Refusal> {
    let token = match net::bearer(headers) {
        Bearer::Absent => return Ok(None),
        Bearer::Token(token) => token,
        Bearer::Repeated => return Err(Refusal::BadRequest("more than one Authorization header")),
        Bearer::NotBearer => return Err(Refusal::NotAPhantom),
    };
    let digest = match PhantomToken::digest_of(token) {
        Ok(digest) => digest,
        Err(crate::phantom::FormatError::NotPhantom) => return Err(Refusal::NotAPhantom),
        Err(e) => return Err(Refusal::BadPhantom(e)),
    };
    let state = match app.store.lookup(&digest, crate::support::clock::unix_now()).await? {
        Lookup::Live(record) => {
            // The keyed id was computed when the phantom was minted.
            rec.token_id = Some(record.id.clone());
            rec.identity = Some(record.summary.clone());
            return Ok(Some(Session { digest, record }));
        }
        Lookup::Expired => "expired",
        Lookup::Revoked => "revoked",
        Lookup::Unknown => "unknown",
    };
    rec.token_id = Some(app.audit.token_id(&digest).into());
    Err(Refusal::PhantomNotLive(state))
}

/// Phantoms are accepted only in `Authorization`. One in the query string, `Proxy-Authorization`
/// or a cookie is refused, so it is never forwarded or logged from there.
pub(super) fn refuse_misplaced_phantoms(req: &Request<Incoming>) -> Result<(), Refusal> {
    static PREFIX: std::sync::OnceLock<memchr::memmem::Finder<'static>> = std::sync::OnceLock::new();
    let prefix = PREFIX.get_or_init(|| memchr::memmem::Finder::new(crate::phantom::token::PREFIX));
    let has = |v: &[u8]| prefix.find(v).is_some();
    let in_query = req.uri().query().is_some_and(|q| has(q.as_bytes()));
    let in_headers = [header::PROXY_AUTHORIZATION, header::COOKIE]
        .iter()
        .any(|h| req.headers().get_all(h).iter().any(|v| has(v.as_bytes())));
    if in_query || in_headers {
        return Err(Refusal::BadRequest("phantom tokens are accepted only in the Authorization header"));
    }
    Ok(())
}
