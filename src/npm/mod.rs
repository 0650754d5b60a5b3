//! The npm registry protocol, as plain types: package names, routes and body checks.
//!
//! Free of hyper and tokio, so it can be read, tested by tables, fuzzed and benchmarked alone.

mod action;
pub mod body;
mod classify;
mod name;
mod route;
pub mod scan;

pub use action::{ActionKind, ActionSet, RouteAction};
pub use body::{BodyError, PublishManifest, PutPackument, PutRevision};
pub use classify::classify;
pub use name::{NameError, PackageName};
pub use route::{is_hold_id, is_stage_id, NpmRequest, Op, Route, RouteError};
