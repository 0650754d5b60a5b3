//! What a person's CLI asks the broker, besides an exchange: the issuers people may sign in
//! with (`GET /-/phantom/v1/issuers`: public, and nothing in it is a secret); the held writes
//! they may approve, and their approvals and rejections (each with the person's fresh ID token,
//! spent as an exchange spends one).

use super::refusal::{HoldRefusal, Refusal};
use super::{exchange, held};
use crate::app::App;
use crate::audit::{Decision, Event, HoldLine, HoldStep, Record};
use crate::identity::Audience;
use crate::state::holds::{party_key, Approval, Approve, Finish, HoldState, HoldStatus, Reject, RELEASE_LIMIT};
use crate::support::clock::{rfc3339, unix_now};
use crate::support::net::{self, Body};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Serialize;
use serde_json::value::RawValue;
use std::sync::Arc;

/// `{"issuers": [{"name", "issuer", "client_id", "scopes"}]}`: every issuer with a `device`
/// client, for `phantom login --device`.
pub(super) fn issuers(app: &App, rec: &mut Record) -> Response<Body> {
    rec.path = Some("/-/phantom/v1/issuers".into());
    #[derive(Serialize)]
    struct Listed<'a> {
        name: &'a str,
        issuer: &'a str,
        client_id: &'a str,
        scopes: &'a [String],
    }
    let issuers: Vec<Listed<'_>> = app
        .config
        .issuers
        .iter()
        .filter_map(|i| {
            let d = i.device.as_ref()?;
            Some(Listed { name: &i.name, issuer: &i.issuer, client_id: &d.client_id, scopes: &d.scopes })
        })
        .collect();
    let body = serde_json::json!({ "issuers": issuers });
    rec.decision = crate::audit::Decision::Allow;
    net::json_reply(StatusCode::OK, body.to_string())
}

/// `GET /-/phantom/v1/holds` (Bearer: the person's fresh ID token): the held writes this person
/// may approve, that they did not ask for themselves.
pub(super) async fn holds(app: &App, req: Request<Incoming>, rec: &mut Record) -> Result<Response<Body>, Refusal> {
    rec.path = Some("/-/phantom/v1/holds".into());
    let person = signed_in(app, &req, rec).await?;
    let now = unix_now();
    let policy = app.policy();
    let mine = |h: &HoldStatus| {
        h.state == HoldState::Held
            && h.write.requester != person.key
            && policy.approvers(&h.write.approvers).is_some_and(|a| a.admits(&person.issuer, &person.claims))
    };
    let list: Vec<serde_json::Value> =
        app.store.hold_list(now).await?.iter().filter(|h| mine(h)).map(HoldStatus::to_json).collect();
    rec.decision = Decision::Allow;
    Ok(net::json_reply(StatusCode::OK, serde_json::json!({ "holds": list }).to_string()))
}

/// `POST /-/phantom/v1/holds/<id>/approve` or `/reject` (Bearer: the person's fresh ID token).
/// The approval that makes them enough forwards the write, in this request.
pub(super) async fn decide(
    app: &App,
    id: &str,
    approve: bool,
    req: Request<Incoming>,
    rec: &mut Record,
) -> Result<Response<Body>, Refusal> {
    rec.event = Event::Hold;
    rec.path = Some(format!("/-/phantom/v1/holds/{id}/{}", if approve { "approve" } else { "reject" }));
    let person = signed_in(app, &req, rec).await?;
    Ok(decide_as(app, &person, id, approve, rec).await?.response())
}

/// What a person's decision did to a held write.
pub(crate) struct Decided {
    pub(crate) id: String,
    pub(crate) state: HoldState,
    pub(crate) approvals: u32,
    pub(crate) required: u32,
    /// The upstream's answer, when this approval forwarded the write.
    pub(crate) upstream_status: Option<u16>,
}

impl Decided {
    fn response(&self) -> Response<Body> {
        let mut body = serde_json::json!({
            "id": self.id, "state": self.state.as_str(), "approvals": self.approvals, "required": self.required,
        });
        if let Some(status) = self.upstream_status {
            body["upstream_status"] = status.into();
        }
        net::json_reply(StatusCode::OK, body.to_string())
    }
}

/// A person's approval or rejection of a held write, `rec.identity` being theirs: through the
/// CLI (`decide`, with a fresh ID token) or the console (a signed-in session). The approval
/// that makes them enough forwards the write, before this returns.
pub(crate) async fn decide_as(
    app: &App,
    person: &Person,
    id: &str,
    approve: bool,
    rec: &mut Record,
) -> Result<Decided, Refusal> {
    rec.event = Event::Hold;
    let now = unix_now();
    let held = app.store.hold_status(id, now).await?.ok_or(Refusal::Hold(HoldRefusal::Unknown))?;
    held.write.describe(rec);
    let step = if approve { HoldStep::Approve } else { HoldStep::Reject };
    rec.hold = Some(Box::new(HoldLine {
        requester: Some(held.write.requester_summary.clone().into()),
        ..held.write.line(step, held.approvals.len() as u32)
    }));
    let approvers = app.policy().approvers(&held.write.approvers).cloned();
    let approvers = approvers.ok_or(Refusal::Hold(HoldRefusal::ApproversGone))?;
    if !approvers.admits(&person.issuer, &person.claims) {
        return Err(Refusal::Hold(HoldRefusal::NotApprover));
    }
    let summary = rec.identity.as_ref().map_or_else(|| "{}".to_owned(), |s| s.get().to_owned());
    let mark =
        Approval { who: person.key.clone(), summary: RawValue::from_string(summary).map_err(json_err)?, at: now };
    if !approve {
        return match app.store.hold_reject(id, mark, now).await? {
            Reject::Rejected => {
                rec.decision = Decision::Allow;
                Ok(decided(id, HoldState::Rejected, &held, None))
            }
            Reject::Closed(state) => Err(Refusal::Hold(HoldRefusal::Closed(state))),
            Reject::Unknown => Err(Refusal::Hold(HoldRefusal::Unknown)),
        };
    }
    let lease = held::new_id(app);
    let count = match app.store.hold_approve(id, mark, now, &lease).await? {
        Approve::Counted(n) => {
            set_approvals(rec, n);
            rec.decision = Decision::Allow;
            return Ok(decided(id, HoldState::Held, &held, Some(n)));
        }
        Approve::Ready(n) => n,
        Approve::Twice(_) => return Err(Refusal::Hold(HoldRefusal::Twice)),
        Approve::Requester => return Err(Refusal::Hold(HoldRefusal::Requester)),
        Approve::Closed(state) => return Err(Refusal::Hold(HoldRefusal::Closed(state))),
        Approve::Expired => return Err(Refusal::Hold(HoldRefusal::Expired)),
        Approve::Unknown => return Err(Refusal::Hold(HoldRefusal::Unknown)),
    };
    set_approvals(rec, count);
    rec.decision = Decision::Allow;
    // This approval is on record before the forward it starts.
    app.audit.write_queued(Arc::new(rec.clone()));
    let status = forward(app, id, &held, rec, &lease).await?;
    rec.upstream_status = Some(status);
    rec.hold = None;
    Ok(Decided {
        id: id.to_owned(),
        state: HoldState::Forwarded,
        approvals: count,
        required: held.write.required,
        upstream_status: Some(status),
    })
}

/// Forwards a hold its last approval made ready (under `lease`), and ends it: answered, or held
/// again (its approvals kept) when the forward got no answer, took too long or was refused. On
/// record in every case, a store that cannot record the end included.
async fn forward(app: &App, id: &str, held: &HoldStatus, approval: &Record, lease: &str) -> Result<u16, Refusal> {
    let now = unix_now();
    // With every approval, as the store has them now (this one's included).
    let latest = app.store.hold_status(id, now).await.ok().flatten().unwrap_or_else(|| held.clone());
    let w = &latest.write;
    let mut rec = Record {
        event: Event::Hold,
        request_id: approval.request_id.clone(),
        method: Some(w.method.clone().into()),
        path: Some(w.path.split('?').next().unwrap_or_default().to_owned()),
        identity: Some(w.requester_summary.clone().into()),
        ..Record::default()
    };
    w.describe(&mut rec);
    let approved_by = latest
        .approvals
        .iter()
        .map(|a| {
            let identity: serde_json::Value = serde_json::from_str(a.summary.get()).unwrap_or_default();
            serde_json::json!({ "identity": identity, "at": rfc3339(a.at, 0) })
        })
        .collect();
    let line = |step| HoldLine { approved_by, ..w.line(step, latest.approvals.len() as u32) };
    let outcome = match tokio::time::timeout(RELEASE_LIMIT, held::release(app, &latest, &mut rec)).await {
        Ok(outcome) => outcome,
        Err(_) => Err(Refusal::Upstream(crate::upstream::UpstreamError::Timeout)),
    };
    let finish = match &outcome {
        Ok(status) => Finish::Answered(*status),
        Err(_) => Finish::Retry,
    };
    let unrecorded = app.store.hold_finish(id, finish, unix_now(), lease).await.err();
    match &outcome {
        Ok(status) => {
            rec.decision = if *status < 500 { Decision::Allow } else { Decision::Error };
            rec.status = *status;
            rec.hold = Some(Box::new(line(HoldStep::Forwarded)));
        }
        Err(refusal) => {
            rec.decision = refusal.decision();
            rec.reason = Some(format!("{}; held again, its approvals kept: approve again to retry", refusal.detail()));
            rec.status = refusal.status().as_u16();
            rec.hold = Some(Box::new(line(HoldStep::Retry)));
        }
    }
    if let Some(e) = unrecorded {
        let said = rec.reason.take().map(|r| format!("{r}; ")).unwrap_or_default();
        rec.reason = Some(format!(
            "{said}the state store did not record how the forward ended ({e}): the hold \
             stays marked as being forwarded until its lease ends"
        ));
    }
    app.audit.write_queued(Arc::new(rec));
    outcome
}

fn set_approvals(rec: &mut Record, n: u32) {
    if let Some(h) = rec.hold.as_mut() {
        h.approvals = n;
    }
}

/// A person signed in: their verified identity (the ID token spent), and their approval key.
pub(crate) struct Person {
    pub(crate) issuer: std::sync::Arc<str>,
    pub(crate) claims: serde_json::Map<String, serde_json::Value>,
    pub(crate) key: String,
}

impl Person {
    /// A person as their verified identity says; one without a subject cannot be told apart
    /// from another, and is refused.
    pub(crate) fn new(identity: crate::policy::Identity) -> Result<Person, Refusal> {
        let sub = identity.claim("sub").filter(|s| !s.is_empty());
        let sub = sub.ok_or(Refusal::Identity(crate::identity::IdentityError::MissingClaim("sub")))?;
        let key = party_key(&identity.issuer, sub);
        Ok(Person { issuer: identity.issuer, claims: identity.claims, key })
    }
}

async fn signed_in(app: &App, req: &Request<Incoming>, rec: &mut Record) -> Result<Person, Refusal> {
    let token = exchange::bearer_id_token(req)?;
    let verified = exchange::verify_once(app, &token, Audience::IssuerDefault, rec).await?;
    // Approvals are counted per person.
    Person::new(verified.identity)
}

fn decided(id: &str, state: HoldState, held: &HoldStatus, approvals: Option<u32>) -> Decided {
    Decided {
        id: id.to_owned(),
        state,
        approvals: approvals.unwrap_or(held.approvals.len() as u32),
        required: held.write.required,
        upstream_status: None,
    }
}

fn json_err(e: serde_json::Error) -> Refusal {
    Refusal::Internal(format!("an identity summary: {e}"))
}
