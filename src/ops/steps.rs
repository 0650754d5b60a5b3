//! The audit line of each step an operator's action takes (a rotation, a reload).

use crate::app::App;
use crate::audit::{Action, AdminAction, Decision, Event, Record};
use std::sync::Arc;

/// One audit line for one step of a rotation or a reload.
pub(super) async fn step(app: &App, action: AdminAction, credential: &str, decision: Decision, what: String) {
    write_step(app, line(action, credential, decision, what)).await;
}

pub(super) fn line(action: AdminAction, credential: &str, decision: Decision, what: String) -> Record {
    Record {
        event: Event::Admin,
        action: Some(Action::Admin(action)),
        credential: Some(credential.to_owned()),
        decision,
        reason: Some(what),
        ..Record::default()
    }
}

pub(super) async fn write_step(app: &App, rec: Record) {
    if let Err(e) = app.audit.write_confirmed(Arc::new(rec)).await {
        tracing::error!(error = %e, "could not audit a credential step");
    }
}
