//! A grant's `rate`: writes per (grant, package) in a sliding window, kept in the state store so
//! that every replica counts alike. Past it, 429, and with `server.freeze_on_burst` a freeze.

use super::refusal::Refusal;
use super::session::Session;
use crate::app::App;
use crate::notify::{BurstFreeze, Note};
use crate::npm::PackageName;
use crate::policy::Rate;
use crate::state::{PhantomStore, RateOutcome};

/// Whether one more write to `package` under the caller's grant fits the grant's `rate`; with
/// `take`, it is counted. The window is the grant's and the package's, shared by every identity
/// the grant admits: a GitHub `sub` changes with the ref and the environment, so a count per
/// identity would give a job that can run under several a fresh window for each. Past the rate:
/// 429, and with `server.freeze_on_burst` the package is frozen.
pub(super) async fn within_rate(
    app: &App,
    session: &Session,
    package: &PackageName,
    rate: Rate,
    take: bool,
    request_id: &str,
) -> Result<Option<RateSlot>, Refusal> {
    let key = format!("{}\0{package}", session.record.grant);
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis();
    let at_ms = u64::try_from(now_ms).unwrap_or(u64::MAX);
    match app.store.rate(&key, rate, at_ms, take).await? {
        RateOutcome::Allowed => Ok(take.then_some(RateSlot { key, at_ms })),
        RateOutcome::Limited { retry_after } => {
            // The write is refused either way; the refusal says whether the freeze took.
            let frozen = app.config.server.freeze_on_burst && app.freeze(package).await.is_ok();
            if frozen {
                app.metrics.burst_froze();
                let note = BurstFreeze {
                    package: package.to_string(),
                    grant: session.record.grant.as_str().into(),
                    identity: Some(session.record.summary.clone()),
                    request_id: request_id.to_owned(),
                    thaw: format!("phantom thaw {package}"),
                };
                app.notifier.send(Note::BurstFreeze(note), &app.audit);
            }
            Err(Refusal::RateLimited { retry_after, frozen })
        }
    }
}

/// A write counted against its grant's `rate`.
pub(super) struct RateSlot {
    key: String,
    at_ms: u64,
}

/// Gives back the rate slot of a write that did not go through (its resend is not another).
pub(super) async fn give_back(app: &App, slot: Option<&RateSlot>) {
    if let Some(slot) = slot {
        let _ = app.store.rate_give_back(&slot.key, slot.at_ms).await;
    }
}
