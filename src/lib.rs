#![forbid(unsafe_code)]
pub mod npm;
pub mod policy;
pub mod secret;
pub mod units;
