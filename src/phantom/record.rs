//! What the broker knows about a live phantom: who it was minted for, under which grant, for
//! which packages and actions, until when. The token itself is never kept.

use crate::policy::{Identity, Scope};
use std::sync::Arc;

/// Everything the broker knows about a live phantom. The token itself is never stored.
#[derive(Debug, Clone)]
pub struct PhantomRecord {
    /// A keyed hash of the token: safe to log, list and revoke by.
    pub id: Arc<str>,
    pub identity: Identity,
    /// The identity as audit lines show it, computed once at minting.
    pub summary: Arc<serde_json::value::RawValue>,
    pub scope: Scope,
    pub grant: String,
    /// Unix seconds.
    pub issued_at: u64,
    pub expires_at: u64,
    pub max_uses: Option<u32>,
}
