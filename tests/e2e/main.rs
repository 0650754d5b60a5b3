//! The end-to-end suites, built as one test binary (one link instead of one per suite).
//!
//! Each module starts real processes on 127.0.0.1 (the broker binary, Verdaccio, a loopback
//! OIDC issuer, the npm CLI, recording and hostile upstreams) and stops them when it is done.
// Scenarios read whole, top to bottom: the 80-line bound is for production code.
#![allow(clippy::too_many_lines)]

mod support;

mod adversarial_callers;
mod adversarial_network;
mod cli;
mod clients;
mod console;
mod credentials;
mod demo;
mod docs;
mod forward_proxy;
mod json_differential;
mod layers;
mod metrics;
mod npm_actions;
mod npm_oidc;
mod people;
mod phantom_scope;
mod policy_check;
mod policy_reload;
mod policy_rules;
mod presets;
mod public_registry;
mod rotation;
mod secrets_debug;
mod shared_state;
mod staging;
mod write_integrity;
