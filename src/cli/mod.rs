//! The command line's own commands, on the binary side: they call the library's public face
//! and are not part of it.
//!
//! - `admin_client`: the admin API from the CLI (`phantom phantoms`, `revoke`, `freeze`,
//!   `credentials`, `reload`).
//! - `credentials`: `phantom credentials status | rotate`.
//! - `policy`: `phantom policy check | trust | explain`.
//! - `login`: `phantom login`, an ID token in, a phantom into `.npmrc` out; `device`: a
//!   person's sign-in for it (the device authorization grant).
//! - `holds`: `phantom holds | approve | reject`, a person's side of held writes.
//! - `certs`: `phantom certs dev`, a development CA and server certificate.
//! - `demo`: `phantom demo`, the whole job on one machine.

pub(crate) mod admin_client;
pub(crate) mod certs;
pub(crate) mod credentials;
pub(crate) mod demo;
pub(crate) mod device;
pub(crate) mod holds;
pub(crate) mod login;
pub(crate) mod policy;
