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
//! Folders are layers. Lowest first; a module uses only modules of its own layer and of the
//! layers below, and no two files import each other (the test `layers` in tests/e2e reads this
//! list and every path in `src/`):
//!
//! 1. `support`: plumbing that knows nothing of the broker: TLS and HTTP (`net`), strict JSON,
//!    secrets and where they come from, durations, the clock, hex, the write-body memory budget.
//! 2. `npm`, `policy`: pure concepts, no I/O. The registry protocol as types (routes, package
//!    names, body checks, the streaming publish scanner); grants and their evaluation, where
//!    `Authorized<T>` is the only way to a credential.
//! 3. `config`, `identity`, `phantom`: `phantom.toml` as validated types; OIDC ID-token
//!    verification and issuers' keys; the phantom token, what is known of a live one, and a
//!    write's fingerprint.
//! 4. `audit`, `credentials`, `proxy`: the hash-chained log and its labels; the real tokens and
//!    their rotation deadlines;
//!    which `CONNECT` targets open a tunnel and the leaf certificates tunnels are served with.
//! 5. `metrics`, `notify`, `state`, `upstream`: the Prometheus series; webhooks told of staged
//!    and held writes, rotation deadlines, burst freezes and incidents; what the broker remembers between requests, held writes included
//!    (memory, or Redis for every replica); the registries behind the broker, their connection pools and the scrubbing of
//!    every response that carried a credential.
//! 6. `app`: the state every request shares, built once from the config.
//! 7. `pipeline`: one registry request, top to bottom: classify, authenticate, authorize, pass
//!    the write gate, swap the credential, forward (or hold for approval), relay, audit;
//!    exchanges, people's approvals and refusals too.
//! 8. `ops`: what an operator does to a running broker: reload, rotate, follow, status, and
//!    held writes (list, reject, expire); rotation deadlines' notices.
//! 9. `console`: the admin console in the browser: sessions, people's sign-in, pages and forms.
//! 10. `server`: listeners, worker threads, connections (HTTP/1.1 and HTTP/2), drain, the admin
//!     face, the forward proxy's tunnels, the file watcher.
//!
//! The binary (`main.rs`, and `cli/` for the CLI's own commands: login and a person's device
//! sign-in, held writes, the admin client, `certs dev`, the demo) uses the library's public face.
#![forbid(unsafe_code)]

pub(crate) mod app;
pub mod audit;
pub mod config;
pub(crate) mod console;
pub mod credentials;
pub mod identity;
pub(crate) mod metrics;
pub(crate) mod notify;
pub mod npm;
pub mod ops;
pub mod phantom;
pub(crate) mod pipeline;
pub mod policy;
pub(crate) mod proxy;
pub mod server;
pub mod state;
pub mod support;
pub(crate) mod upstream;

/// For the fuzz targets (`fuzz/`): the tarball-URL rewrite over a body in chunks.
#[doc(hidden)]
pub use upstream::rebase_chunks;

/// For the fuzz targets (`fuzz/`): the write gate over a body in any framing.
#[doc(hidden)]
pub use pipeline::gate::StreamGate;
