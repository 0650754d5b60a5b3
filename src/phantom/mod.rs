//! Phantom tokens: their format, what the broker knows of a live one, and the fingerprint that
//! tells a retry from a new write. (Where live phantoms are kept is `state`.)

mod fingerprint;
mod record;
pub(crate) mod token;

pub use fingerprint::{Fingerprint, Fingerprinter};
pub use record::PhantomRecord;
pub use token::{FormatError, PhantomToken, TokenDigest};
