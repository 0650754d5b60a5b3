//! Rotation deadlines as a workflow: every `[rotation] check`, each credential's deadline is
//! looked at, and its notices sent. A credential `due` (within `warn_days`) is announced once
//! per deadline (`rotation-due`); an `overdue` one once per day past its deadline
//! (`rotation-overdue`, to the subscribed targets and their `escalate` targets), until it is
//! rotated. Which notices went out is claimed in the state store, so that replicas (and, on a
//! shared store, restarts) send each one once.

use crate::app::App;
use crate::config::NotifyEvent;
use crate::credentials::deadline::RotationState;
use crate::notify::{Note, Rotation};
use crate::state::PhantomStore;
use crate::support::clock::unix_now;

/// How long a notice's claim is kept: past the day it is for.
const CLAIM: u64 = 2 * 86_400;

/// Checks the deadlines every `[rotation] check`, until the process ends.
pub async fn watch(app: &App) {
    if !app.notifier.wants(NotifyEvent::RotationDue) && !app.notifier.wants(NotifyEvent::RotationOverdue) {
        return;
    }
    let mut tick = tokio::time::interval(app.config.rotation.check);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        check(app, unix_now()).await;
    }
}

/// Sends the notices due at `now`; returns how many were queued.
pub(crate) async fn check(app: &App, now: u64) -> usize {
    let mut sent = 0;
    let mut slots: Vec<_> = app.credentials.slots().collect();
    slots.sort_by(|a, b| a.config.name.cmp(&b.config.name));
    for slot in slots {
        let Some(d) = slot.deadline(&app.config.rotation, now) else { continue };
        let key = match (d.state, d.days_overdue(now)) {
            (RotationState::Ok, _) => continue,
            (RotationState::Due, _) => format!("due\0{}\0{}", slot.config.name, d.due),
            (RotationState::Overdue, day) => {
                format!("overdue\0{}\0{}\0{}", slot.config.name, d.due, day.unwrap_or(0))
            }
        };
        // One notice per key, whichever replica claims it first.
        let claim = ring::digest::digest(&ring::digest::SHA256, format!("phantom rotation notice\0{key}").as_bytes());
        let mut id = [0u8; 32];
        id.copy_from_slice(claim.as_ref());
        match app.store.claim_id_token(id, now + CLAIM, now).await {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                tracing::warn!(credential = %slot.config.name, error = %e, "rotation notices wait for the state store");
                return sent;
            }
        }
        let escalation = d.state == RotationState::Overdue;
        app.notifier.send(Note::Rotation(Rotation::new(&slot.config, &d, now, escalation)), &app.audit);
        sent += 1;
    }
    sent
}
