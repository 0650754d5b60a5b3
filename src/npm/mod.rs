//! The npm registry protocol, as plain types: package names, routes and body checks.
//!
//! Free of hyper and tokio, so it can be read, tested by tables, fuzzed and benchmarked alone.

pub mod body;
pub mod name;
pub mod route;
pub mod scan;

pub use body::{BodyError, PublishManifest, PutPackument, PutRevision};
pub use name::{NameError, PackageName};
pub use route::{classify, ActionKind, ActionSet, NpmRequest, Op, Route, RouteAction, RouteError};
