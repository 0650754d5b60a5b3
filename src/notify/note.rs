//! What a notification tells: a version staged upstream or held by the broker, a credential
//! due or overdue for rotation, a package frozen by a burst, an incident rotation. Each has a
//! one-line `text` (chat webhooks show it as is), and a ticket's summary, description, priority
//! and de-duplication key (`format = "ticket"`).

use crate::config::NotifyEvent;
use crate::support::clock::date;
use serde::Serialize;
use serde_json::value::RawValue;
use std::sync::Arc;

/// One notification.
#[derive(Debug, Clone)]
pub(crate) enum Note {
    Staged(Staged),
    Rotation(Rotation),
    BurstFreeze(BurstFreeze),
    Incident(Incident),
}

/// A version staged upstream, as the notification tells it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Staged {
    pub(crate) package: String,
    pub(crate) version: String,
    /// The registry's id of the staged version (if it gave a usable one).
    pub(crate) stage_id: Option<String>,
    /// Its status as the registry reported it: `validating` (its checks still run: not
    /// approvable yet) or `staged`; absent when it could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) status: Option<String>,
    /// The grant publishes directly, and the registry staged the publish all the same (silent
    /// staging).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub(crate) silent: bool,
    /// The caller's identity as audit lines show it (claims, never a token).
    pub(crate) identity: Option<Arc<RawValue>>,
    pub(crate) grant: Arc<str>,
    pub(crate) request_id: String,
    /// Not staged upstream but held by the broker for its grant's approvers (`event: "held"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) held: Option<Held>,
}

/// A write the broker holds until approvers approve it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Held {
    pub(crate) id: String,
    pub(crate) action: &'static str,
    pub(crate) approvers: String,
    pub(crate) required: u32,
}

/// A credential whose rotation deadline is near (`due`) or past (`overdue`).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Rotation {
    pub(crate) credential: String,
    pub(crate) upstream: String,
    pub(crate) class: char,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub(crate) top: bool,
    pub(crate) cadence_days: u64,
    /// Its last rotation and its deadline, as days (`2027-01-31`).
    pub(crate) last_rotated: String,
    pub(crate) due: String,
    /// Whole days past the deadline; absent while it is only due.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) days_overdue: Option<u64>,
    /// Writes through it are refused while it is overdue.
    pub(crate) refuses_writes: bool,
    /// The daily notice of an overdue credential, to the escalation targets too.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub(crate) escalation: bool,
    /// How to end it.
    pub(crate) rotate: String,
}

/// A package frozen because writes to it passed a grant's `rate` (`freeze_on_burst`).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct BurstFreeze {
    pub(crate) package: String,
    pub(crate) grant: Arc<str>,
    pub(crate) identity: Option<Arc<RawValue>>,
    pub(crate) request_id: String,
    /// How to lift it once the writes are understood.
    pub(crate) thaw: String,
}

/// An incident rotation: phantoms revoked and packages frozen before a credential was swapped.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Incident {
    pub(crate) credential: String,
    pub(crate) revoked: usize,
    pub(crate) frozen: Vec<String>,
    pub(crate) thaw: Option<String>,
}

impl Rotation {
    /// The notice of `credential` against `deadline` at `now`.
    pub(crate) fn new(
        cfg: &crate::config::CredentialConfig,
        d: &crate::credentials::deadline::Deadline,
        now: u64,
        escalation: bool,
    ) -> Rotation {
        Rotation {
            credential: cfg.name.clone(),
            upstream: cfg.upstream.clone(),
            class: d.class,
            top: cfg.top,
            cadence_days: d.cadence / 86_400,
            last_rotated: date(d.since),
            due: date(d.due),
            days_overdue: d.days_overdue(now),
            refuses_writes: d.refuses_writes,
            escalation,
            rotate: format!("phantom credentials rotate {} --from-file NEW_TOKEN_FILE", cfg.name),
        }
    }
}

impl Staged {
    /// How a maintainer makes it live.
    pub(crate) fn approve_hint(&self) -> String {
        if let Some(h) = &self.held {
            return format!(
                "{} of `{}` approve it with `phantom approve {}` (the requester does not count)",
                h.required, h.approvers, h.id
            );
        }
        match (&self.stage_id, self.status.as_deref()) {
            (Some(id), Some("validating")) => format!(
                "the registry is still validating it: once `npm stage view {id}` shows status staged, a maintainer \
                 approves it with `npm stage approve {id}` (2FA)"
            ),
            (Some(id), _) => format!("a maintainer approves it with `npm stage approve {id}` (2FA)"),
            (None, _) => format!("a maintainer finds it with `npm stage list {}` and approves it (2FA)", self.package),
        }
    }

    /// The `npm-notice` the publishing client prints.
    pub(crate) fn notice(&self) -> String {
        let how = if self.silent { " (the registry staged the direct publish)" } else { "" };
        let status = self.status.as_deref().map(|s| format!(", status {s}")).unwrap_or_default();
        let id = self.stage_id.as_deref().map(|id| format!(" (stage id {id}{status})")).unwrap_or_default();
        format!("{}@{} is staged, not published{how}{id}: {}", self.package, self.version, self.approve_hint())
    }
}

impl Note {
    pub(crate) fn event(&self) -> NotifyEvent {
        match self {
            Note::Staged(s) if s.held.is_some() => NotifyEvent::Held,
            Note::Staged(_) => NotifyEvent::Staged,
            Note::Rotation(r) if r.days_overdue.is_some() => NotifyEvent::RotationOverdue,
            Note::Rotation(_) => NotifyEvent::RotationDue,
            Note::BurstFreeze(_) => NotifyEvent::BurstFreeze,
            Note::Incident(_) => NotifyEvent::Incident,
        }
    }

    /// One line that says what happened and what to do.
    pub(crate) fn text(&self) -> String {
        match self {
            Note::Staged(s) => match &s.held {
                Some(h) => format!(
                    "a {} of {}@{} is held for approval (id {}, grant `{}`): {}",
                    h.action,
                    s.package,
                    s.version,
                    h.id,
                    s.grant,
                    s.approve_hint()
                ),
                None => {
                    let id = s.stage_id.as_deref().unwrap_or("unknown");
                    let status = s.status.as_deref().map(|x| format!(", {x}")).unwrap_or_default();
                    format!(
                        "{}@{} is staged (id {id}{status}, grant `{}`): {}",
                        s.package,
                        s.version,
                        s.grant,
                        s.approve_hint()
                    )
                }
            },
            Note::Rotation(r) => {
                let class = format!("class {}{}", r.class, if r.top { ", top" } else { "" });
                let stops = if r.refuses_writes { "; writes through it are refused until it is rotated" } else { "" };
                match r.days_overdue {
                    Some(days) => format!(
                        "credential `{}` ({class}) is OVERDUE for rotation: due {} ({days} days ago){stops}. Rotate it: {}",
                        r.credential, r.due, r.rotate
                    ),
                    None => format!(
                        "credential `{}` ({class}, every {} days) is due for rotation by {}. Rotate it: {}",
                        r.credential, r.cadence_days, r.due, r.rotate
                    ),
                }
            }
            Note::BurstFreeze(f) => format!(
                "writes to {} are frozen: they passed grant `{}`'s rate (request {}). Look at the audit log, then: {}",
                f.package, f.grant, f.request_id, f.thaw
            ),
            Note::Incident(i) => format!(
                "incident rotation of credential `{}`: {} phantoms revoked, froze {}{}",
                i.credential,
                i.revoked,
                if i.frozen.is_empty() { "nothing".to_owned() } else { i.frozen.join(", ") },
                i.thaw.as_deref().map(|t| format!("; once it is over: {t}")).unwrap_or_default()
            ),
        }
    }

    /// A ticket's priority: Jira's names, which ServiceNow's inbound rules map as easily.
    fn priority(&self) -> &'static str {
        match self {
            Note::Rotation(r) if r.days_overdue.is_some() => "High",
            Note::BurstFreeze(_) | Note::Incident(_) => "Highest",
            Note::Staged(_) | Note::Rotation(_) => "Medium",
        }
    }

    /// What a ticket system de-duplicates on: one ticket per credential and deadline, per
    /// staged or held version, per freeze.
    pub(crate) fn dedupe_key(&self) -> String {
        match self {
            Note::Staged(s) => match &s.held {
                Some(h) => format!("phantom:held:{}", h.id),
                None => format!("phantom:staged:{}@{}", s.package, s.version),
            },
            Note::Rotation(r) => format!("phantom:rotation:{}:{}", r.credential, r.due),
            Note::BurstFreeze(f) => format!("phantom:burst-freeze:{}", f.package),
            Note::Incident(i) => format!("phantom:incident:{}", i.credential),
        }
    }

    fn fields(&self) -> serde_json::Value {
        let value = match self {
            Note::Staged(s) => serde_json::to_value(s),
            Note::Rotation(r) => serde_json::to_value(r),
            Note::BurstFreeze(f) => serde_json::to_value(f),
            Note::Incident(i) => serde_json::to_value(i),
        };
        value.unwrap_or_default()
    }

    /// The body of the broker's own JSON shape: the event, when it was sent (inside the
    /// signature, so that a receiver can refuse an old notification sent again), its fields
    /// and the `text` line.
    pub(crate) fn json(&self, sent_at: u64) -> Vec<u8> {
        let mut doc = serde_json::json!({ "event": self.event().as_str(), "sent_at": sent_at });
        if let (Some(map), serde_json::Value::Object(fields)) = (doc.as_object_mut(), self.fields()) {
            map.extend(fields);
            if let Note::Staged(s) = self {
                map.insert("approve_hint".into(), s.approve_hint().into());
            }
            map.insert("text".into(), self.text().into());
        }
        serde_json::to_vec(&doc).unwrap_or_default()
    }

    /// The body for a ticket system's generic incoming webhook: `summary` (Jira) and
    /// `short_description` (ServiceNow), a `description`, a `priority`, `labels` and a
    /// `dedupe_key`, with the broker's fields under `details`.
    pub(crate) fn ticket(&self, sent_at: u64) -> Vec<u8> {
        let summary = match self {
            Note::Staged(s) if s.held.is_some() => format!("Held for approval: {}@{}", s.package, s.version),
            Note::Staged(s) => format!("Staged upstream: {}@{}", s.package, s.version),
            Note::Rotation(r) if r.days_overdue.is_some() => {
                format!("Rotate npm credential {} (overdue since {})", r.credential, r.due)
            }
            Note::Rotation(r) => format!("Rotate npm credential {} by {}", r.credential, r.due),
            Note::BurstFreeze(f) => format!("Writes frozen after a burst: {}", f.package),
            Note::Incident(i) => format!("Incident rotation of npm credential {}", i.credential),
        };
        let doc = serde_json::json!({
            "summary": summary,
            "short_description": summary,
            "description": self.text(),
            "priority": self.priority(),
            "labels": ["phantom-broker", self.event().as_str()],
            "dedupe_key": self.dedupe_key(),
            "event": self.event().as_str(),
            "sent_at": sent_at,
            "details": self.fields(),
        });
        serde_json::to_vec(&doc).unwrap_or_default()
    }

    /// The audit line's fields that say what the notification was about.
    pub(crate) fn about(&self, rec: &mut crate::audit::Record) {
        rec.notice = Some(self.event().as_str());
        match self {
            Note::Staged(s) => {
                rec.request_id.clone_from(&s.request_id);
                rec.identity.clone_from(&s.identity);
                rec.package = Some(s.package.clone());
                rec.version = Some(s.version.clone());
                rec.staged = s.held.is_none();
                rec.stage_id.clone_from(&s.stage_id);
                rec.grant = Some(s.grant.clone());
            }
            Note::Rotation(r) => rec.credential = Some(r.credential.clone()),
            Note::BurstFreeze(f) => {
                rec.request_id.clone_from(&f.request_id);
                rec.identity.clone_from(&f.identity);
                rec.package = Some(f.package.clone());
                rec.grant = Some(f.grant.clone());
            }
            Note::Incident(i) => {
                rec.credential = Some(i.credential.clone());
                rec.frozen.clone_from(&i.frozen);
            }
        }
    }
}
