//! Phantom tokens: their format and the store of live ones.

pub mod fingerprint;
pub mod store;
pub mod token;

pub use fingerprint::Fingerprinter;
pub use store::{
    Fingerprint, Listed, Lookup, MemoryStore, OpenWrite, PhantomRecord, PhantomStore, RateOutcome, Selector,
    StoreError, UseOutcome,
};
pub use token::{FormatError, PhantomToken, TokenDigest};
