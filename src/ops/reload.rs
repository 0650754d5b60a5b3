//! Reloading a running broker: the policy and every credential's source, on `SIGHUP`, on a
//! change the file watcher saw, or on `POST /admin/v1/reload`. A bad policy keeps the one in
//! force; a credential value that fails the canary is not swapped in. Each outcome is audited.

use super::rotate::{canary, clone_credential};
use super::steps::step;
use crate::app::App;
use crate::audit::{Action, AdminAction, Decision, Event, Record};
use crate::credentials::Credential;
use crate::support::clock::rfc3339;
use crate::support::secret::read_secret;
use serde::Serialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// Re-reads the policy and every credential's source (also on SIGHUP): a bad policy keeps the
/// one in force, a credential value that fails the canary is not swapped in.
/// `trigger` says what asked (`admin API`, `SIGHUP`, `file change`): the audit line and the
/// log say it.
pub async fn reload(app: &App, trigger: &str) -> Value {
    let (policy, decision, reason) = match app.reload_policy() {
        Ok(grants) => {
            app.metrics.policy_reloaded(true);
            (json!({ "grants": grants }), Decision::Allow, format!("{trigger}: {grants} grants in force"))
        }
        Err(e) => {
            app.metrics.policy_reloaded(false);
            tracing::error!(trigger, error = %e, "the policy did not reload: the last good one stays in force");
            (json!({ "error": e }), Decision::Deny, format!("{trigger}: kept the last good policy: {e}"))
        }
    };
    let rec = Record {
        event: Event::Admin,
        action: Some(Action::Admin(AdminAction::PolicyReload)),
        decision,
        reason: Some(reason),
        ..Record::default()
    };
    if let Err(e) = app.audit.write_confirmed(Arc::new(rec)).await {
        tracing::error!(error = %e, "could not audit a policy reload");
    }
    json!({ "policy": policy, "credentials": credentials(app).await })
}

/// What a reload did to one credential.
#[derive(Debug, Serialize)]
pub struct ReloadOutcome {
    pub credential: String,
    /// `unchanged`, `swapped` or `kept`.
    pub result: &'static str,
    pub detail: Option<String>,
}

/// Re-reads every credential's source; a changed value goes through the same canary as a
/// rotation and is swapped in (no overlap), a failing one is not.
async fn credentials(app: &App) -> Vec<ReloadOutcome> {
    let mut out = Vec::new();
    let mut names: Vec<&str> = app.credentials.slots().map(|s| s.config.name.as_str()).collect();
    names.sort_unstable();
    for name in names {
        let Some(slot) = app.credentials.slot(name) else { continue };
        let _changing = slot.changing.lock().await;
        let outcome = |result, detail: Option<String>| ReloadOutcome { credential: name.to_owned(), result, detail };
        let next = match read_secret(&slot.config.source).and_then(|s| Credential::from_secret(&slot.config, s)) {
            Ok(c) => Arc::new(c),
            Err(e) => {
                step(app, AdminAction::CredentialReload, name, Decision::Deny, format!("kept: {e}")).await;
                out.push(outcome("kept", Some(e)));
                continue;
            }
        };
        if next.fingerprint() == slot.current().fingerprint() {
            out.push(outcome("unchanged", None));
            continue;
        }
        match canary(app, slot, &next, None).await {
            Ok((account, _)) => {
                let now = crate::support::clock::unix_now();
                let counted = slot.swap(
                    Arc::try_unwrap(next).unwrap_or_else(|arc| clone_credential(&slot.config, &arc)),
                    None,
                    now,
                );
                *slot.account.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((account.clone(), std::time::Instant::now()));
                // A new value in the source is a rotation: its deadline counts from now, on every
                // replica and after a restart. A value used before is not: its deadline counts
                // from when it first came in (or from `created`).
                let fingerprint = crate::support::hex(slot.current().fingerprint());
                let announced = counted.max(slot.config.created.unwrap_or(0));
                let _ = app.store.announce_credential(name, &fingerprint, 0, announced).await;
                let what = if counted == now {
                    format!("swapped in the source's new value (account `{account}`)")
                } else {
                    let since = if counted > 0 { rfc3339(counted, 0) } else { "its `created` date".into() };
                    format!(
                        "swapped in the source's value (account `{account}`), a value in use before: not a rotation, its deadline counts from {since}"
                    )
                };
                step(app, AdminAction::CredentialReload, name, Decision::Allow, what.clone()).await;
                out.push(outcome("swapped", Some(what)));
            }
            Err(why) => {
                let what = format!("kept the value in use: the source's new value failed the canary: {why}");
                step(app, AdminAction::CredentialReload, name, Decision::Deny, what.clone()).await;
                out.push(outcome("kept", Some(what)));
            }
        }
    }
    out
}
