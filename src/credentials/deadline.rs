//! A credential's rotation deadline: its class's cadence (`[rotation]`), counted from its last
//! rotation (the later of its `created` date and the last rotation the broker saw), and the
//! state that follows: `ok`, `due` within `warn_days` of the deadline, `overdue` past it.

use crate::config::{CredentialConfig, RotationConfig};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RotationState {
    Ok,
    Due,
    Overdue,
}

impl RotationState {
    pub const ALL: [RotationState; 3] = [RotationState::Ok, RotationState::Due, RotationState::Overdue];

    pub fn as_str(self) -> &'static str {
        match self {
            RotationState::Ok => "ok",
            RotationState::Due => "due",
            RotationState::Overdue => "overdue",
        }
    }
}

/// Where a credential stands against its deadline. Unix seconds throughout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    pub class: char,
    /// The time between rotations its class (and `top`) gives it.
    pub cadence: u64,
    /// Its last rotation: `created`, or a later rotation the broker saw.
    pub since: u64,
    pub due: u64,
    pub state: RotationState,
    /// Writes through it are refused while it is overdue (`[rotation] overdue`).
    pub refuses_writes: bool,
}

impl Deadline {
    /// Whole days past the deadline (0 on its first day overdue); `None` before it.
    pub fn days_overdue(&self, now: u64) -> Option<u64> {
        (now >= self.due).then(|| (now - self.due) / 86_400)
    }

    /// Whether a write through it is refused now.
    pub fn stops_writes(&self) -> bool {
        self.refuses_writes && self.state == RotationState::Overdue
    }
}

/// The deadline of a credential rotated last at `rotated` (if the broker saw it), or `None`
/// when it has no class or no date to count from.
pub fn deadline(cfg: &CredentialConfig, rotated: Option<u64>, rotation: &RotationConfig, now: u64) -> Option<Deadline> {
    let class = cfg.class?;
    let cadence = rotation.cadence_of(class, cfg.top)?;
    let since = match (cfg.created, rotated) {
        (Some(c), Some(r)) => c.max(r),
        (c, r) => c.or(r)?,
    };
    let due = since.saturating_add(cadence);
    let state = if now >= due {
        RotationState::Overdue
    } else if due - now <= rotation.warn {
        RotationState::Due
    } else {
        RotationState::Ok
    };
    Some(Deadline { class, cadence, since, due, state, refuses_writes: rotation.refuses_writes(class) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Capability, SecretSource};

    const DAY: u64 = 86_400;

    fn credential(class: Option<char>, top: bool, created: Option<u64>) -> CredentialConfig {
        CredentialConfig {
            name: "c".into(),
            upstream: "u".into(),
            source: SecretSource::Env("T".into()),
            packages: vec![],
            class,
            publish: Capability::StageOnly,
            created,
            expires: None,
            top,
        }
    }

    #[test]
    fn states_follow_the_class_cadence_from_the_last_rotation() {
        let r = RotationConfig { refuse_writes: [true, false, false, false], ..RotationConfig::default() };
        let created = 100 * DAY;
        let at = |class, top, rotated, now| deadline(&credential(class, top, Some(created)), rotated, &r, now).unwrap();
        // Class A: 30 days, due from day 23 (warn 7 days), overdue from day 30.
        assert_eq!(at(Some('A'), false, None, created + 22 * DAY).state, RotationState::Ok);
        assert_eq!(at(Some('A'), false, None, created + 23 * DAY).state, RotationState::Due);
        let over = at(Some('A'), false, None, created + 32 * DAY + 5);
        assert_eq!(
            (over.state, over.due, over.days_overdue(created + 32 * DAY)),
            (RotationState::Overdue, created + 30 * DAY, Some(2))
        );
        assert!(over.stops_writes());
        // The most-downloaded: 7 days, so due from the start (warn 7 days).
        assert_eq!(at(Some('A'), true, None, created + DAY).state, RotationState::Due);
        // Class B: 90 days; refuse-writes is class A's only here.
        let b = at(Some('B'), false, None, created + 95 * DAY);
        assert_eq!((b.state, b.stops_writes()), (RotationState::Overdue, false));
        // A rotation the broker saw restarts the count; an older one does not.
        assert_eq!(at(Some('A'), false, Some(created + 31 * DAY), created + 32 * DAY).state, RotationState::Ok);
        assert_eq!(at(Some('A'), false, Some(created - DAY), created + 32 * DAY).state, RotationState::Overdue);
        // No class, or nothing to count from: no deadline.
        assert!(deadline(&credential(None, false, Some(created)), None, &r, created).is_none());
        assert!(deadline(&credential(Some('A'), false, None), None, &r, created).is_none());
        assert!(deadline(&credential(Some('A'), false, None), Some(created), &r, created).is_some());
    }
}
