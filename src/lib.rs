#![forbid(unsafe_code)]
pub mod admin_client;
pub mod audit;
pub mod certs;
pub mod config;
pub mod credentials;
pub mod identity;
pub mod json;
pub mod login;
pub mod net;
pub mod npm;
pub mod phantom;
pub mod policy;
pub mod secret;
pub mod server;
pub mod units;
pub mod upstream;
