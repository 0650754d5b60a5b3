//! How often anyone may start a console sign-in or try a token: a sliding window in the state
//! store, for every replica together, so that no one fills the store with sign-ins under way or
//! guesses the admin token at speed.

use crate::app::App;
use crate::policy::Rate;
use crate::state::{PhantomStore, RateOutcome};
use std::time::Duration;

/// Whether one more `what` fits `per_minute`; counted if it does. A store that cannot say
/// refuses.
pub(super) async fn allow(app: &App, what: &str, per_minute: u32) -> bool {
    let now_ms = u64::try_from(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis(),
    )
    .unwrap_or(u64::MAX);
    let rate = Rate { max: per_minute, window: Duration::from_secs(60) };
    matches!(app.store.rate(&format!("console\0{what}"), rate, now_ms, true).await, Ok(RateOutcome::Allowed))
}
