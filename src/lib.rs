#![forbid(unsafe_code)]
pub mod npm;
pub mod policy;
pub mod secret;
pub mod units;
pub mod phantom;
pub mod config;
pub mod json;
pub mod net;
pub mod identity;
