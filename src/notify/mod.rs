//! Notifications: staged and held versions (to the `[notify.NAME]` webhooks their grant names),
//! and the events targets subscribe to with `events = [...]`: `staged`, `held`, `rotation-due`,
//! `rotation-overdue` (daily, to the `escalate` targets too), `burst-freeze` and `incident`.
//!
//! A notification never fails or delays the request that caused it: it is queued without
//! waiting (a full queue drops it, on record) and delivered by a task of its own, with retries
//! and backoff. Every outcome is audited and counted. The body is signed with HMAC-SHA256 when
//! the target has a `secret` (`X-Phantom-Signature: sha256=<hex>`); it is the broker's JSON
//! with a `text` line (a Slack incoming webhook shows it as is), or, with `format = "ticket"`,
//! a ticket for a ticket system's generic webhook (`note.rs`).

mod note;

pub(crate) use note::{BurstFreeze, Held, Incident, Note, Rotation, Staged};

use crate::audit::{Audit, Decision, Event, Record};
use crate::config::{NotifyConfig, NotifyEvent, NotifyFormat};
use crate::support::net::{self, HttpsClient};
use crate::support::secret::read_secret;
use crate::support::secret::Secret;
use http::{header, Request, Uri};
use prometheus_client::metrics::counter::Counter;
use ring::hmac;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// Notifications waiting for delivery; more are dropped (and audited).
const QUEUE: usize = 256;
/// Deliveries in flight at once, retries included.
const IN_FLIGHT: usize = 16;
/// Attempts per delivery, and the wait before the second one (doubled for each next one).
const ATTEMPTS: u32 = 5;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// How a delivery ended: the `result` label of `phantom_notifications_total`.
pub(crate) const RESULTS: [&str; 3] = ["delivered", "failed", "dropped"];

struct Target {
    name: Arc<str>,
    webhook: Uri,
    /// The HMAC key of the signature header.
    key: Option<hmac::Key>,
    client: HttpsClient,
    events: Vec<NotifyEvent>,
    escalate: Vec<String>,
    format: NotifyFormat,
}

struct Delivery {
    target: Arc<Target>,
    note: Arc<Note>,
}

pub(crate) struct Notifier {
    targets: HashMap<String, Arc<Target>>,
    /// `phantom_notifications_total`: per event of `NotifyEvent::ALL`, one per `RESULTS`.
    counts: Vec<Counter>,
    /// Taken by `close`, at shutdown.
    queue: Mutex<Option<mpsc::Sender<Delivery>>>,
    /// Taken by `deliver_queued`.
    waiting: Mutex<Option<mpsc::Receiver<Delivery>>>,
}

/// How long deliveries still under way at shutdown may take to end.
const DRAIN: Duration = Duration::from_secs(5);

impl Notifier {
    /// Reads each target's secret and prepares its client (system roots plus its `ca_file`).
    /// `counts` are the metrics' counters, event-major (see `counter`).
    pub(crate) fn new(configs: &[NotifyConfig], counts: Vec<Counter>) -> Result<Notifier, String> {
        let mut targets = HashMap::new();
        for c in configs {
            let secret: Option<Secret> = match &c.secret {
                Some(source) => Some(read_secret(source).map_err(|e| format!("notify `{}` secret: {e}", c.name))?),
                None => None,
            };
            let tls = net::client_config(c.ca_file.as_deref()).map_err(|e| format!("notify `{}`: {e}", c.name))?;
            let target = Target {
                name: c.name.as_str().into(),
                webhook: c.webhook.clone(),
                key: secret.map(|s| hmac::Key::new(hmac::HMAC_SHA256, s.expose().as_bytes())),
                client: net::https_client(tls, Duration::from_secs(5)),
                events: c.events.clone(),
                escalate: c.escalate.clone(),
                format: c.format,
            };
            targets.insert(c.name.clone(), Arc::new(target));
        }
        let (queue, waiting) = mpsc::channel(QUEUE);
        Ok(Notifier { targets, counts, queue: Mutex::new(Some(queue)), waiting: Mutex::new(Some(waiting)) })
    }

    /// Queues a staged (or held) version for the targets its grant names (`named`) and those
    /// subscribed to its event, without waiting.
    pub(crate) fn staged(&self, named: &[String], staged: &Staged, audit: &Audit) {
        let note = Note::Staged(staged.clone());
        let mut to: Vec<&str> = named.iter().map(String::as_str).collect();
        to.extend(self.subscribed(note.event()));
        self.queue(&to, note, audit);
    }

    /// Queues `note` for the targets subscribed to its event; a rotation's escalation also
    /// goes to the `escalate` targets of those told of rotations.
    pub(crate) fn send(&self, note: Note, audit: &Audit) {
        let mut to: Vec<&str> = self.subscribed(note.event()).collect();
        if matches!(&note, Note::Rotation(r) if r.escalation) {
            let rotations = [NotifyEvent::RotationDue, NotifyEvent::RotationOverdue];
            for t in self.targets.values().filter(|t| t.events.iter().any(|e| rotations.contains(e))) {
                to.extend(t.escalate.iter().map(String::as_str));
            }
        }
        self.queue(&to, note, audit);
    }

    /// Whether any target would be told of `event`.
    pub(crate) fn wants(&self, event: NotifyEvent) -> bool {
        self.subscribed(event).next().is_some()
    }

    fn subscribed(&self, event: NotifyEvent) -> impl Iterator<Item = &str> {
        self.targets.values().filter(move |t| t.events.contains(&event)).map(|t| &*t.name)
    }

    /// Queues `note` once for each of `to` (a name given twice is told once). A notification
    /// that does not fit in the queue is dropped, and that is on record.
    fn queue(&self, to: &[&str], note: Note, audit: &Audit) {
        let note = Arc::new(note);
        let queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let mut told: Vec<&str> = Vec::new();
        for name in to {
            if told.contains(name) {
                continue;
            }
            told.push(name);
            let Some(target) = self.targets.get(*name) else { continue };
            let delivery = Delivery { target: target.clone(), note: note.clone() };
            let queued = queue.as_ref().is_some_and(|q| q.try_send(delivery).is_ok());
            if !queued {
                let why = "dropped: the notification queue is full (or the broker is stopping)";
                self.count(&note, 2);
                audit.write_queued(Arc::new(outcome(target, &note, Decision::Error, why.into())));
            }
        }
    }

    /// Counts one delivery's end (an index of `RESULTS`).
    fn count(&self, note: &Note, result: usize) {
        let event = NotifyEvent::ALL.iter().position(|e| *e == note.event()).unwrap_or(0);
        if let Some(c) = self.counts.get(event * RESULTS.len() + result) {
            c.inc();
        }
    }

    /// Takes no more notifications: `deliver_queued` delivers what is queued, then ends.
    pub(crate) fn close(&self) {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

/// Delivers queued notifications, on the runtime it runs on (the admin face's, never a
/// request's). After `Notifier::close` it delivers what is queued, waits `DRAIN` for deliveries
/// under way, and puts each one it abandons on record.
pub(crate) async fn deliver_queued(notifier: Arc<Notifier>, audit: Arc<Audit>) {
    let Some(mut waiting) = notifier.waiting.lock().unwrap_or_else(|p| p.into_inner()).take() else { return };
    let mut running = tokio::task::JoinSet::new();
    let mut under_way: HashMap<tokio::task::Id, (Arc<Target>, Arc<Note>)> = HashMap::new();
    while let Some(delivery) = waiting.recv().await {
        while running.len() >= IN_FLIGHT {
            if let Some(Ok((id, ()))) = running.join_next_with_id().await {
                under_way.remove(&id);
            }
        }
        let (target, note) = (delivery.target.clone(), delivery.note.clone());
        let (line_audit, counting) = (audit.clone(), notifier.clone());
        let handle = running.spawn(async move {
            let line = deliver(&delivery).await;
            counting.count(&delivery.note, usize::from(line.decision != Decision::Allow));
            line_audit.write_queued(Arc::new(line));
        });
        under_way.insert(handle.id(), (target, note));
        while let Some(Ok((id, ()))) = running.try_join_next_with_id() {
            under_way.remove(&id);
        }
    }
    let _ = tokio::time::timeout(DRAIN, async {
        while let Some(ended) = running.join_next_with_id().await {
            if let Ok((id, ())) = ended {
                under_way.remove(&id);
            }
        }
    })
    .await;
    running.abort_all();
    for (target, note) in under_way.values() {
        let why = "abandoned: the broker stopped while the delivery was under way".to_owned();
        notifier.count(note, 1);
        audit.write_queued(Arc::new(outcome(target, note, Decision::Error, why)));
    }
}

/// The body `target` is sent, in its format.
fn body(target: &Target, note: &Note) -> Vec<u8> {
    let sent_at = crate::support::clock::unix_now();
    match target.format {
        NotifyFormat::Json => note.json(sent_at),
        NotifyFormat::Ticket => note.ticket(sent_at),
    }
}

/// `sha256=<hex>` of the body under the target's key.
pub(crate) fn signature(key: &hmac::Key, body: &[u8]) -> String {
    format!("sha256={}", crate::support::hex(hmac::sign(key, body).as_ref()))
}

/// Tries a delivery up to `ATTEMPTS` times, backing off between tries; returns its audit line.
async fn deliver(d: &Delivery) -> Record {
    let body = body(&d.target, &d.note);
    let mut wait = FIRST_BACKOFF;
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        let mut req = Request::post(d.target.webhook.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::USER_AGENT, concat!("phantom-broker/", env!("CARGO_PKG_VERSION")));
        if let Some(key) = &d.target.key {
            req = req.header("x-phantom-signature", signature(key, &body));
        }
        let Ok(req) = req.body(net::full(body.clone())) else {
            return outcome(&d.target, &d.note, Decision::Error, "the request could not be built".into());
        };
        match net::fetch(&d.target.client, req, ATTEMPT_TIMEOUT, 64 * 1024).await {
            Ok((parts, _)) if parts.status.is_success() => {
                let why = format!("delivered to `{}` ({}) on attempt {attempt}", d.target.name, parts.status.as_u16());
                return outcome(&d.target, &d.note, Decision::Allow, why);
            }
            // A refusal other than "later" will not change by asking again; nor is a redirect
            // followed.
            Ok((parts, _))
                if (parts.status.is_client_error() && parts.status.as_u16() != 429)
                    || parts.status.is_redirection() =>
            {
                let why = format!("`{}` refused the notification ({})", d.target.name, parts.status.as_u16());
                return outcome(&d.target, &d.note, Decision::Error, why);
            }
            Ok((parts, _)) => last = format!("answered {}", parts.status.as_u16()),
            Err(e) => last = e.to_string(),
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(wait).await;
            wait *= 2;
        }
    }
    let why = format!("gave up on `{}` after {ATTEMPTS} attempts: {last}", d.target.name);
    outcome(&d.target, &d.note, Decision::Error, why)
}

/// The audit line of a notification. The webhook's URL is not recorded (chat webhooks carry
/// their secret in it): the target's name is.
fn outcome(target: &Target, note: &Note, decision: Decision, reason: String) -> Record {
    let mut rec = Record {
        event: Event::Notify,
        upstream: Some(target.name.clone()),
        decision,
        reason: Some(reason),
        ..Record::default()
    };
    note.about(&mut rec);
    rec
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    fn body(staged: &Staged) -> Vec<u8> {
        Note::Staged(staged.clone()).json(1)
    }

    #[test]
    fn bodies_say_what_to_approve_and_signatures_are_hmac_sha256() {
        let staged = Staged {
            package: "@acme/web".into(),
            version: "1.2.3".into(),
            stage_id: Some("4c00c615-1e36-4201-a75c-47b46b8fd83f".into()),
            status: None,
            silent: false,
            identity: Some(RawValue::from_string(r#"{"sub":"repo:acme/web"}"#.into()).unwrap().into()),
            grant: "release".into(),
            request_id: "r1".into(),
            held: None,
        };
        let held = Held { id: "h1".into(), action: "dist-tag", approvers: "rm".into(), required: 2 };
        let doc: serde_json::Value =
            serde_json::from_slice(&body(&Staged { held: Some(held), ..staged.clone() })).unwrap();
        assert_eq!((doc["event"].as_str(), doc["held"]["id"].as_str()), (Some("held"), Some("h1")));
        assert!(doc["text"].as_str().unwrap().starts_with("a dist-tag of @acme/web@1.2.3 is held"), "{doc}");
        assert!(doc["approve_hint"].as_str().unwrap().contains("phantom approve h1"), "{doc}");
        let doc: serde_json::Value = serde_json::from_slice(&body(&staged)).unwrap();
        assert_eq!(doc["event"], "staged");
        assert_eq!(doc["package"], "@acme/web");
        assert_eq!(doc["identity"]["sub"], "repo:acme/web");
        assert!(doc["approve_hint"].as_str().unwrap().contains("npm stage approve 4c00c615"));
        assert!(doc["text"].as_str().unwrap().starts_with("@acme/web@1.2.3 is staged"));
        assert!(doc.get("status").is_none() && doc.get("silent").is_none(), "{doc}");
        let validating = Staged { status: Some("validating".into()), silent: true, ..staged.clone() };
        let doc: serde_json::Value = serde_json::from_slice(&body(&validating)).unwrap();
        assert_eq!((doc["status"].as_str(), doc["silent"].as_bool()), (Some("validating"), Some(true)));
        assert!(doc["approve_hint"].as_str().unwrap().contains("still validating"), "{doc}");
        assert!(
            validating.notice().contains("status validating")
                && validating.notice().contains("staged the direct publish")
        );
        assert!(
            staged.notice().contains("a maintainer approves it with `npm stage approve 4c00c615"),
            "{}",
            staged.notice()
        );
        // A ticket for the same version: one per version, what to do in its description.
        let doc: serde_json::Value = serde_json::from_slice(&Note::Staged(staged.clone()).ticket(1)).unwrap();
        assert_eq!(doc["summary"], "Staged upstream: @acme/web@1.2.3");
        assert_eq!(
            (doc["short_description"].as_str(), doc["priority"].as_str()),
            (doc["summary"].as_str(), Some("Medium"))
        );
        assert_eq!(doc["dedupe_key"], "phantom:staged:@acme/web@1.2.3");
        assert_eq!(doc["labels"], serde_json::json!(["phantom-broker", "staged"]));
        assert_eq!(doc["details"]["grant"], "release");
        assert!(doc["description"].as_str().unwrap().contains("npm stage approve"), "{doc}");
        // RFC 4231, test case 2.
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"Jefe");
        assert_eq!(
            signature(&key, b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
