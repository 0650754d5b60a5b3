//! Phantom tokens: their format and the store of live ones.

pub mod store;
pub mod token;

pub use store::{Fingerprint, Lookup, MemoryStore, PhantomRecord, PhantomStore, StoreError, UseOutcome};
pub use token::{FormatError, PhantomToken, TokenDigest};
