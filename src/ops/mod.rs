//! What an operator does to a running broker: reload it, rotate a real credential (and follow a
//! rotation another replica made), and read the credentials' inventory. The admin API, `SIGHUP`
//! and the file watcher call these; each step is an audit line.

mod reload;
mod rotate;
mod status;

pub use reload::{reload, ReloadOutcome};
pub use rotate::{follow, rotate, RotateError, Rotated, Rotation};
pub use status::{status, StatusRow};

use crate::app::App;
use crate::audit::{Action, AdminAction, Decision, Event, Record};
use std::sync::Arc;

/// One audit line for one step of a rotation or a reload.
pub(crate) async fn step(app: &App, action: AdminAction, credential: &str, decision: Decision, what: String) {
    write_step(app, line(action, credential, decision, what)).await;
}

pub(crate) fn line(action: AdminAction, credential: &str, decision: Decision, what: String) -> Record {
    Record {
        event: Event::Admin,
        action: Some(Action::Admin(action)),
        credential: Some(credential.to_owned()),
        decision,
        reason: Some(what),
        ..Record::default()
    }
}

pub(crate) async fn write_step(app: &App, rec: Record) {
    if let Err(e) = app.audit.write_confirmed(Arc::new(rec)).await {
        tracing::error!(error = %e, "could not audit a credential step");
    }
}
