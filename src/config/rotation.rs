//! `[rotation]`: how long each class of real credential may live between rotations, when a
//! deadline is near (`warn_days`), and what an overdue credential may still do.
//!
//! ```toml
//! [rotation]
//! A = "30d"        # class A: the publish tokens of high-download packages
//! A_top = "7d"     # class A credentials with `top = true` (the most-downloaded)
//! B = "90d"
//! C = "90d"
//! D = "365d"
//! warn_days = 7    # `due` this many days before the deadline
//! overdue = "refuse-writes"          # every class; or per class: { A = "refuse-writes" }
//! check = "1h"     # how often deadlines are checked and notices sent
//! ```

use crate::support::units::parse_duration;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

const DAY: u64 = 86_400;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRotation {
    #[serde(rename = "A")]
    a: Option<String>,
    #[serde(rename = "A_top")]
    a_top: Option<String>,
    #[serde(rename = "B")]
    b: Option<String>,
    #[serde(rename = "C")]
    c: Option<String>,
    #[serde(rename = "D")]
    d: Option<String>,
    warn_days: Option<u32>,
    overdue: Option<RawOverdue>,
    check: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawOverdue {
    All(String),
    PerClass(BTreeMap<String, String>),
}

/// The rotation deadlines, as the broker applies them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationConfig {
    /// Seconds between rotations for classes A, B, C and D.
    pub cadence: [u64; 4],
    /// Class A's, for a credential with `top = true`.
    pub top: u64,
    /// Seconds before a deadline when a credential is `due`.
    pub warn: u64,
    /// Per class A to D: writes through an overdue credential are refused.
    pub refuse_writes: [bool; 4],
    /// How often deadlines are checked (and notices sent).
    pub check: Duration,
}

impl Default for RotationConfig {
    fn default() -> RotationConfig {
        RotationConfig {
            cadence: [30 * DAY, 90 * DAY, 90 * DAY, 365 * DAY],
            top: 7 * DAY,
            warn: 7 * DAY,
            refuse_writes: [false; 4],
            check: Duration::from_secs(3600),
        }
    }
}

pub(crate) const CLASSES: [char; 4] = ['A', 'B', 'C', 'D'];

impl RotationConfig {
    /// The cadence of a credential of `class` (`top` for class A's most-downloaded).
    pub fn cadence_of(&self, class: char, top: bool) -> Option<u64> {
        let i = CLASSES.iter().position(|c| *c == class)?;
        Some(if top && class == 'A' { self.top } else { self.cadence[i] })
    }

    /// Whether writes through an overdue credential of `class` are refused.
    pub fn refuses_writes(&self, class: char) -> bool {
        CLASSES.iter().position(|c| *c == class).is_some_and(|i| self.refuse_writes[i])
    }
}

pub(super) fn rotation(raw: Option<RawRotation>) -> Result<RotationConfig, String> {
    let mut r = RotationConfig::default();
    let Some(raw) = raw else { return Ok(r) };
    let cadence = |key: &str, v: &Option<String>, default: u64| -> Result<u64, String> {
        let Some(text) = v else { return Ok(default) };
        let secs = parse_duration(text).map_err(|e| format!("`rotation.{key}`: {e}"))?.as_secs();
        if !(DAY..=3 * 365 * DAY).contains(&secs) {
            return Err(format!("`rotation.{key}`: `{text}` must be between 1d and 1095d"));
        }
        Ok(secs)
    };
    r.cadence = [
        cadence("A", &raw.a, r.cadence[0])?,
        cadence("B", &raw.b, r.cadence[1])?,
        cadence("C", &raw.c, r.cadence[2])?,
        cadence("D", &raw.d, r.cadence[3])?,
    ];
    r.top = cadence("A_top", &raw.a_top, r.top)?;
    if r.top > r.cadence[0] {
        return Err("`rotation.A_top` is longer than `rotation.A`: the most-downloaded rotate at least as often".into());
    }
    if let Some(days) = raw.warn_days {
        r.warn = u64::from(days) * DAY;
        if r.warn >= r.top {
            return Err(format!("`rotation.warn_days` ({days}) must be shorter than the shortest cadence (`A_top`)"));
        }
    }
    let action = |key: &str, v: &str| match v {
        "refuse-writes" => Ok(true),
        "notify" => Ok(false),
        other => Err(format!("`{key}`: `{other}` must be \"notify\" (the default) or \"refuse-writes\"")),
    };
    match raw.overdue {
        None => {}
        Some(RawOverdue::All(v)) => r.refuse_writes = [action("rotation.overdue", &v)?; 4],
        Some(RawOverdue::PerClass(per)) => {
            for (class, v) in per {
                let i = CLASSES
                    .iter()
                    .position(|c| class.len() == 1 && class.starts_with(*c))
                    .ok_or_else(|| format!("`rotation.overdue.{class}`: not one of the classes A, B, C, D"))?;
                r.refuse_writes[i] = action(&format!("rotation.overdue.{class}"), &v)?;
            }
        }
    }
    if let Some(text) = &raw.check {
        r.check = parse_duration(text).map_err(|e| format!("`rotation.check`: {e}"))?;
        if r.check.is_zero() || r.check > Duration::from_secs(DAY) {
            return Err(format!("`rotation.check`: `{text}` must be more than 0s and at most 1d"));
        }
    }
    Ok(r)
}

/// What a `[notify.NAME]` target is told of (`events = [...]`), besides the staged and held
/// versions of the grants that name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NotifyEvent {
    Staged,
    Held,
    RotationDue,
    RotationOverdue,
    BurstFreeze,
    Incident,
}

impl NotifyEvent {
    pub const ALL: [NotifyEvent; 6] = [
        NotifyEvent::Staged,
        NotifyEvent::Held,
        NotifyEvent::RotationDue,
        NotifyEvent::RotationOverdue,
        NotifyEvent::BurstFreeze,
        NotifyEvent::Incident,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NotifyEvent::Staged => "staged",
            NotifyEvent::Held => "held",
            NotifyEvent::RotationDue => "rotation-due",
            NotifyEvent::RotationOverdue => "rotation-overdue",
            NotifyEvent::BurstFreeze => "burst-freeze",
            NotifyEvent::Incident => "incident",
        }
    }

    pub(super) fn parse(key: &str, s: &str) -> Result<NotifyEvent, String> {
        NotifyEvent::ALL.into_iter().find(|e| e.as_str() == s).ok_or_else(|| {
            let all: Vec<&str> = NotifyEvent::ALL.iter().map(|e| e.as_str()).collect();
            format!("`{key}`: `{s}` is not one of {}", all.join(", "))
        })
    }
}

/// The shape of a notification's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NotifyFormat {
    /// The broker's JSON, with a `text` line chat webhooks show as is.
    #[default]
    Json,
    /// A ticket: `summary`, `description`, `priority`, `labels` and a `dedupe_key`, for the
    /// generic incoming webhooks of ticket systems (Jira Automation, ServiceNow).
    Ticket,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RotationConfig, String> {
        rotation(Some(toml::from_str(text).map_err(|e| e.to_string())?))
    }

    #[test]
    fn cadences_default_and_validate() {
        let d = rotation(None).unwrap();
        assert_eq!(d.cadence_of('A', false), Some(30 * DAY));
        assert_eq!(d.cadence_of('A', true), Some(7 * DAY));
        assert_eq!(d.cadence_of('B', true), Some(90 * DAY), "top is class A's only");
        assert_eq!((d.cadence_of('D', false), d.cadence_of('E', false)), (Some(365 * DAY), None));
        assert!(!d.refuses_writes('A'));
        let r = parse("A = \"14d\"\nwarn_days = 3\noverdue = { A = \"refuse-writes\" }\ncheck = \"5m\"").unwrap();
        assert_eq!((r.cadence[0], r.warn, r.check), (14 * DAY, 3 * DAY, Duration::from_secs(300)));
        assert!(r.refuses_writes('A') && !r.refuses_writes('B'));
        assert!(parse("overdue = \"refuse-writes\"").unwrap().refuse_writes.iter().all(|x| *x));
        for (bad, says) in [
            ("A = \"2h\"", "between 1d"),
            ("A = \"5d\"", "A_top` is longer"),
            ("warn_days = 7\nA_top = \"7d\"", "shorter than"),
            ("overdue = \"stop\"", "\"refuse-writes\""),
            ("overdue = { E = \"notify\" }", "not one of the classes"),
            ("check = \"0s\"", "more than 0s"),
            ("a = \"30d\"", "unknown field"),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
