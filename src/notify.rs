//! Notifications of staged versions: one JSON POST per staged version to each `[notify.NAME]`
//! webhook its grant names, so that a maintainer hears that a version waits for approval.
//!
//! A notification never fails or delays the publish that caused it: it is queued without
//! waiting (a full queue drops it, on record) and delivered by a task of its own, with retries
//! and backoff. Every outcome is audited. The body is signed with HMAC-SHA256 when the target
//! has a `secret` (`X-Phantom-Signature: sha256=<hex>`), and carries a `text` line, so a Slack
//! incoming webhook shows it as is.

use crate::audit::{Audit, Decision, Event, Record};
use crate::config::NotifyConfig;
use crate::support::net::{self, HttpsClient};
use crate::support::secret::read_secret;
use crate::support::secret::Secret;
use http::{header, Request, Uri};
use ring::hmac;
use serde::Serialize;
use serde_json::value::RawValue;
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

struct Target {
    name: Arc<str>,
    webhook: Uri,
    /// The HMAC key of the signature header.
    key: Option<hmac::Key>,
    client: HttpsClient,
}

struct Delivery {
    target: Arc<Target>,
    staged: Staged,
}

pub(crate) struct Notifier {
    targets: HashMap<String, Arc<Target>>,
    /// Taken by `close`, at shutdown.
    queue: Mutex<Option<mpsc::Sender<Delivery>>>,
    /// Taken by `deliver_queued`.
    waiting: Mutex<Option<mpsc::Receiver<Delivery>>>,
}

/// How long deliveries still under way at shutdown may take to end.
const DRAIN: Duration = Duration::from_secs(5);

impl Notifier {
    /// Reads each target's secret and prepares its client (system roots plus its `ca_file`).
    pub(crate) fn new(configs: &[NotifyConfig]) -> Result<Notifier, String> {
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
            };
            targets.insert(c.name.clone(), Arc::new(target));
        }
        let (queue, waiting) = mpsc::channel(QUEUE);
        Ok(Notifier { targets, queue: Mutex::new(Some(queue)), waiting: Mutex::new(Some(waiting)) })
    }

    /// Queues a staged version for each of `targets`, without waiting. A notification that does
    /// not fit in the queue is dropped, and that is on record.
    pub(crate) fn staged(&self, targets: &[String], staged: &Staged, audit: &Audit) {
        let queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        for name in targets {
            let Some(target) = self.targets.get(name) else { continue };
            let delivery = Delivery { target: target.clone(), staged: staged.clone() };
            let queued = queue.as_ref().is_some_and(|q| q.try_send(delivery).is_ok());
            if !queued {
                let why = "dropped: the notification queue is full (or the broker is stopping)";
                audit.write_queued(Arc::new(outcome(target, staged, Decision::Error, why.into())));
            }
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
    let mut under_way: HashMap<tokio::task::Id, (Arc<Target>, Staged)> = HashMap::new();
    while let Some(delivery) = waiting.recv().await {
        while running.len() >= IN_FLIGHT {
            if let Some(Ok((id, ()))) = running.join_next_with_id().await {
                under_way.remove(&id);
            }
        }
        let (target, staged) = (delivery.target.clone(), delivery.staged.clone());
        let line_audit = audit.clone();
        let handle = running.spawn(async move {
            let line = deliver(&delivery).await;
            line_audit.write_queued(Arc::new(line));
        });
        under_way.insert(handle.id(), (target, staged));
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
    for (target, staged) in under_way.values() {
        let why = "abandoned: the broker stopped while the delivery was under way".to_owned();
        audit.write_queued(Arc::new(outcome(target, staged, Decision::Error, why)));
    }
}

/// The notification's body.
#[derive(Serialize)]
struct Body<'a> {
    event: &'static str,
    /// When it was first sent (unix seconds): inside the signature, so a receiver can refuse an
    /// old notification sent again.
    sent_at: u64,
    #[serde(flatten)]
    staged: &'a Staged,
    approve_hint: String,
    /// One line for chat webhooks (Slack shows `text`).
    text: String,
}

fn body(staged: &Staged) -> Vec<u8> {
    let approve_hint = staged.approve_hint();
    let (event, text) = match &staged.held {
        Some(h) => (
            "held",
            format!(
                "a {} of {}@{} is held for approval (id {}, grant `{}`): {approve_hint}",
                h.action, staged.package, staged.version, h.id, staged.grant
            ),
        ),
        None => {
            let id = staged.stage_id.as_deref().unwrap_or("unknown");
            let status = staged.status.as_deref().map(|s| format!(", {s}")).unwrap_or_default();
            let text = format!(
                "{}@{} is staged (id {id}{status}, grant `{}`): {approve_hint}",
                staged.package, staged.version, staged.grant
            );
            ("staged", text)
        }
    };
    // Strings and a raw JSON value always serialise.
    let sent_at = crate::support::clock::unix_now();
    serde_json::to_vec(&Body { event, sent_at, staged, approve_hint, text }).unwrap_or_default()
}

/// `sha256=<hex>` of the body under the target's key.
pub(crate) fn signature(key: &hmac::Key, body: &[u8]) -> String {
    format!("sha256={}", crate::support::hex(hmac::sign(key, body).as_ref()))
}

/// Tries a delivery up to `ATTEMPTS` times, backing off between tries; returns its audit line.
async fn deliver(d: &Delivery) -> Record {
    let body = body(&d.staged);
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
            return outcome(&d.target, &d.staged, Decision::Error, "the request could not be built".into());
        };
        match net::fetch(&d.target.client, req, ATTEMPT_TIMEOUT, 64 * 1024).await {
            Ok((parts, _)) if parts.status.is_success() => {
                let why = format!("delivered to `{}` ({}) on attempt {attempt}", d.target.name, parts.status.as_u16());
                return outcome(&d.target, &d.staged, Decision::Allow, why);
            }
            // A refusal other than "later" will not change by asking again; nor is a redirect
            // followed.
            Ok((parts, _))
                if (parts.status.is_client_error() && parts.status.as_u16() != 429)
                    || parts.status.is_redirection() =>
            {
                let why = format!("`{}` refused the notification ({})", d.target.name, parts.status.as_u16());
                return outcome(&d.target, &d.staged, Decision::Error, why);
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
    outcome(&d.target, &d.staged, Decision::Error, why)
}

/// The audit line of a notification. The webhook's URL is not recorded (chat webhooks carry
/// their secret in it): the target's name is.
fn outcome(target: &Target, staged: &Staged, decision: Decision, reason: String) -> Record {
    Record {
        event: Event::Notify,
        request_id: staged.request_id.clone(),
        identity: staged.identity.clone(),
        package: Some(staged.package.clone()),
        version: Some(staged.version.clone()),
        staged: staged.held.is_none(),
        stage_id: staged.stage_id.clone(),
        grant: Some(staged.grant.clone()),
        upstream: Some(target.name.clone()),
        decision,
        reason: Some(reason),
        ..Record::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        // RFC 4231, test case 2.
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"Jefe");
        assert_eq!(
            signature(&key, b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
