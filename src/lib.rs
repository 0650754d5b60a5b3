//! phantom-broker: a short-lived credential broker for npm publishing.
//!
//! The broker holds the real registry credentials. A caller (a CI job, an agent) proves who it
//! is with an OIDC ID token and gets a *phantom*: minutes long, scoped to named packages and npm
//! actions, worthless anywhere but here. The broker swaps the phantom for the real credential
//! only inside the one upstream request it forwards, and audits everything.
//!
//! One invariant stands above the others: **the upstream acts on exactly what the broker
//! checked.** Every write body passes one gate (`pipeline::gate`) that lets nothing decisive
//! reach the upstream before the verdict, and the broker, not the caller, chooses the headers
//! and the framing that tell the upstream how to read it.
//!
//! # Layout
//!
//! In the order a request meets the code:
//!
//! - `server`: transport. TLS listeners, worker threads, connections (HTTP/1.1 and HTTP/2),
//!   graceful drain, the admin face, and the forward proxy's `CONNECT` tunnels.
//! - `proxy`: which `CONNECT` targets open a tunnel, the leaf certificates the tunnels are
//!   served with, and what a request inside a tunnel must name (`Host`, upstream).
//! - `pipeline`: one registry request, top to bottom: classify, authenticate, authorize,
//!   pass the write gate, swap the credential, forward, relay, audit. Exchanges (ID token in,
//!   phantom out) and every refusal's status and message live here too.
//! - `npm`: the registry protocol as plain types: routes, package names, body checks, the
//!   streaming publish scanner. No I/O.
//! - `identity`: OIDC ID-token verification, issuers' keys.
//! - `policy`: grants and their evaluation; `Authorized<T>` is the only way to a credential.
//!   No I/O.
//! - `phantom`: the phantom token format and the store of live phantoms (in memory).
//! - `state`: what the broker remembers between requests, in memory or in a Redis server
//!   every replica shares.
//! - `credentials`: the real tokens, reachable only with an `Authorized` request.
//! - `upstream`: the registries behind the broker, its own connection pool, and the scrubbing
//!   of every response that carried a credential.
//! - `audit`: the hash-chained JSON-lines log; `notify`: webhooks told of staged versions.
//! - `app`: the state every request shares, built once from `config`; `metrics`: the
//!   Prometheus series the admin face serves.
//! - Around them: `config`, `net` (TLS and HTTP plumbing), `json` (strict parsing), `secret`,
//!   `certs`, `login` and `admin_client` (the CLI's own commands), `units`.
//! - `demo`: `phantom demo`, the whole job on one machine (a local registry, a loopback
//!   identity provider that only the demo starts, the broker, npm publishing through it).
#![forbid(unsafe_code)]

pub(crate) mod app;
pub mod audit;
pub mod config;
pub mod credentials;
pub mod identity;
pub mod metrics;
pub(crate) mod notify;
pub mod npm;
pub mod ops;
pub mod phantom;
pub mod pipeline;
pub mod policy;
pub(crate) mod proxy;
pub mod server;
pub mod state;
pub mod support;
pub(crate) mod upstream;

/// For the fuzz targets (`fuzz/`): the tarball-URL rewrite over a body in chunks.
#[doc(hidden)]
pub use upstream::rebase_chunks;
