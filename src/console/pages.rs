//! The console's pages: what each shows, gathered from the broker's state, and rendered by its
//! template (`templates/console/`, compiled in by askama, every value HTML-escaped). Each page
//! says plainly when it has nothing to show.

use super::session::Session;
use crate::app::App;
use crate::config::{Capability, Role};
use crate::credentials::UpstreamAuth;
use crate::npm::NpmRequest;
use crate::state::holds::{party_key, HoldState, HoldStatus};
use crate::state::PhantomStore;
use crate::support::clock::{rfc3339, unix_now};
use askama::Template;

/// The packages the staged page asks a credential about, at most.
const MAX_ASKS: usize = 5;
/// How long the staged page's answer from the registries is reused: a page load is not a
/// burst of requests with the organisation's tokens.
const STAGED_CACHE: std::time::Duration = std::time::Duration::from_secs(30);

/// The most of the audit log the pages read: its end.
const AUDIT_TAIL: u64 = 512 * 1024;
use serde_json::Value;

/// The pages, in the navigation's order: path and label.
const NAV: &[(&str, &str)] = &[
    ("/", "Overview"),
    ("/holds", "Held writes"),
    ("/staged", "Staged"),
    ("/phantoms", "Phantoms"),
    ("/freezes", "Freezes"),
    ("/credentials", "Credentials"),
    ("/refusals", "Refusals"),
    ("/policy", "Policy"),
];

/// What every page has: its title, who is signed in, the CSRF token its forms carry, and a
/// notice or an error.
pub(super) struct Frame {
    pub(super) title: String,
    pub(super) page: &'static str,
    pub(super) signed_in: bool,
    pub(super) who: String,
    pub(super) role: &'static str,
    pub(super) csrf: String,
    pub(super) admin: bool,
    pub(super) notice: Option<String>,
    pub(super) error: Option<String>,
}

impl Frame {
    pub(super) fn new(title: &str, page: &'static str, session: Option<&Session>) -> Frame {
        Frame {
            title: title.to_owned(),
            page,
            signed_in: session.is_some(),
            who: session.map(|s| s.who.clone()).unwrap_or_default(),
            role: session.map_or("", |s| s.role.as_str()),
            csrf: session.map(|s| s.csrf.clone()).unwrap_or_default(),
            admin: session.is_some_and(|s| s.may(Role::Admin)),
            notice: None,
            error: None,
        }
    }

    fn nav(&self) -> &'static [(&'static str, &'static str)] {
        NAV
    }
}

#[derive(Template)]
#[template(path = "console/signin.html")]
pub(super) struct SignIn {
    pub(super) frame: Frame,
    pub(super) issuer: Option<String>,
}

#[derive(Template)]
#[template(path = "console/problem.html")]
pub(super) struct Problem {
    pub(super) frame: Frame,
    pub(super) back: &'static str,
}

#[derive(Template)]
#[template(path = "console/overview.html")]
pub(super) struct Overview {
    frame: Frame,
    tiles: Vec<Tile>,
}

struct Tile {
    href: &'static str,
    label: &'static str,
    count: String,
    tone: &'static str,
}

/// A count, or `?` when the store could not say.
fn count<T, E>(r: Result<Vec<T>, E>, keep: impl Fn(&T) -> bool) -> Option<usize> {
    r.ok().map(|v| v.iter().filter(|x| keep(x)).count())
}

pub(super) async fn overview(app: &App, frame: Frame) -> Overview {
    let now = unix_now();
    let holds = count(app.store.hold_list(now).await, |h: &HoldStatus| h.state == HoldState::Held);
    let phantoms = count(app.store.list(now).await, |_| true);
    let deadlines: Vec<_> = app.credentials.slots().filter_map(|s| s.deadline(&app.config.rotation, now)).collect();
    let state = |s| deadlines.iter().filter(|d| d.state == s).count();
    use crate::credentials::deadline::RotationState::{Due, Overdue};
    let tile = |href, label, n: Option<usize>, alarm: &'static str| Tile {
        href,
        label,
        count: n.map_or("?".into(), |n| n.to_string()),
        tone: if n != Some(0) { alarm } else { "" },
    };
    let refusals = audit_tail(app).iter().filter(|l| is_refusal(l)).count();
    let tiles = vec![
        tile("/holds", "held writes waiting", holds, "warn"),
        tile("/phantoms", "live phantoms", phantoms, ""),
        tile("/freezes", "frozen patterns", Some(app.store.frozen_patterns().len()), "warn"),
        tile("/credentials", "credentials overdue", Some(state(Overdue)), "bad"),
        tile("/credentials", "credentials due", Some(state(Due)), "warn"),
        tile("/refusals", "recent refusals", Some(refusals), ""),
    ];
    Overview { frame, tiles }
}

#[derive(Template)]
#[template(path = "console/holds.html")]
pub(super) struct Holds {
    frame: Frame,
    rows: Vec<HoldRow>,
}

struct HoldRow {
    id: String,
    action: String,
    package: String,
    version: Option<String>,
    requester: String,
    grant: String,
    approvals: usize,
    required: u32,
    approvers: String,
    state: &'static str,
    expires: String,
    can_approve: bool,
    can_reject: bool,
}

/// Who a JSON identity summary names: its subject, or its repository.
fn named(summary: &str) -> String {
    let v: Value = serde_json::from_str(summary).unwrap_or_default();
    ["sub", "repository", "email"].iter().find_map(|k| v[k].as_str()).unwrap_or("an unnamed identity").to_owned()
}

/// Whether the signed-in person may approve this held write: an approver of its group, not
/// its requester, not one who approved it already.
pub(super) fn may_approve(app: &App, session: &Session, h: &HoldStatus) -> bool {
    let Some(p) = session.person.as_ref().filter(|_| session.may(Role::Approver)) else { return false };
    let Some(sub) = p.claims.get("sub").and_then(Value::as_str) else { return false };
    let me = party_key(&p.issuer, sub);
    let admitted = app.policy().approvers(&h.write.approvers).is_some_and(|a| a.admits(&p.issuer, &p.claims));
    h.state == HoldState::Held && admitted && h.write.requester != me && h.approvals.iter().all(|a| a.who != me)
}

pub(super) async fn holds(app: &App, mut frame: Frame, session: &Session) -> Holds {
    let now = unix_now();
    let mut list = app.store.hold_list(now).await.unwrap_or_else(|e| {
        frame.error = Some(format!("the state store did not answer: {e}"));
        Vec::new()
    });
    // Those waiting first, then the most recent.
    list.sort_by_key(|h| (h.state != HoldState::Held, std::cmp::Reverse(h.write.created)));
    let rows = list
        .iter()
        .take(100)
        .map(|h| {
            let w = &h.write;
            let can_approve = may_approve(app, session, h);
            HoldRow {
                id: w.id.clone(),
                action: w.action.clone(),
                package: w.package.clone(),
                version: w.version.clone(),
                requester: named(w.requester_summary.get()),
                grant: w.grant.clone(),
                approvals: h.approvals.len(),
                required: w.required,
                approvers: w.approvers.clone(),
                state: h.state.as_str(),
                expires: rfc3339(w.expires, 0),
                can_approve,
                can_reject: h.state == HoldState::Held && (can_approve || session.may(Role::Admin)),
            }
        })
        .collect();
    Holds { frame, rows }
}

#[derive(Template)]
#[template(path = "console/staged.html")]
pub(super) struct Staged {
    frame: Frame,
    upstream: Vec<UpstreamStaged>,
    recent: Vec<StagedRow>,
}

#[derive(Clone)]
struct UpstreamStaged {
    credential: String,
    upstream: String,
    unavailable: Option<String>,
    items: Vec<StagedRow>,
}

#[derive(Clone)]
struct StagedRow {
    id: String,
    package: String,
    version: String,
    status: String,
    created: String,
}

/// The versions waiting upstream, as each publishing credential may list them
/// (`GET /-/stage`: for each package staged through the broker with it lately, and each package
/// it names exactly, or else all), and those this broker staged, from its audit log.
pub(super) async fn staged(app: &App, frame: Frame) -> Staged {
    let tail = audit_tail(app);
    let staged_lines: Vec<&Value> =
        tail.iter().rev().filter(|l| l["event"] == "request" && l["staged"] == true).take(50).collect();
    let recent = staged_lines
        .iter()
        .map(|l| StagedRow {
            id: l["stage_id"].as_str().unwrap_or_default().to_owned(),
            package: l["package"].as_str().unwrap_or_default().to_owned(),
            version: l["version"].as_str().unwrap_or_default().to_owned(),
            status: l["grant"].as_str().unwrap_or_default().to_owned(),
            created: l["ts"].as_str().unwrap_or_default().to_owned(),
        })
        .collect();
    static CACHE: std::sync::Mutex<Option<(std::time::Instant, Vec<UpstreamStaged>)>> = std::sync::Mutex::new(None);
    let cached = CACHE
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .filter(|(at, _)| at.elapsed() < STAGED_CACHE)
        .map(|(_, u)| u.clone());
    if let Some(upstream) = cached {
        return Staged { frame, upstream, recent };
    }
    let upstream = ask_upstream(app, &staged_lines).await;
    *CACHE.lock().unwrap_or_else(|p| p.into_inner()) = Some((std::time::Instant::now(), upstream.clone()));
    Staged { frame, upstream, recent }
}

/// Each publishing credential's staged versions, as the registry lists them to it.
async fn ask_upstream(app: &App, staged_lines: &[&Value]) -> Vec<UpstreamStaged> {
    let mut upstream = Vec::new();
    let slots: Vec<_> = app.credentials.slots().filter(|s| s.config.publish != Capability::ReadOnly).collect();
    for slot in slots {
        let c = &slot.config;
        let packages = packages_to_ask(app, c, staged_lines);
        let mut entry = UpstreamStaged {
            credential: c.name.clone(),
            upstream: c.upstream.clone(),
            unavailable: None,
            items: Vec::new(),
        };
        let asks: Vec<Option<&crate::npm::PackageName>> =
            if packages.is_empty() { vec![None] } else { packages.iter().map(Some).collect() };
        for package in asks {
            match list_staged(app, &c.upstream, slot.current(), package).await {
                Ok(items) => {
                    for i in items {
                        if !entry.items.iter().any(|e| e.id == i.id) {
                            entry.items.push(i);
                        }
                    }
                }
                Err(why) => {
                    entry.unavailable = Some(why);
                    break;
                }
            }
        }
        upstream.push(entry);
    }
    upstream.sort_by(|a, b| a.credential.cmp(&b.credential));
    upstream
}

/// The packages whose staged versions a credential is asked for: those staged through the broker
/// with it lately, and those it names exactly (at most `MAX_ASKS`).
fn packages_to_ask(
    app: &App,
    c: &crate::config::CredentialConfig,
    staged_lines: &[&Value],
) -> Vec<crate::npm::PackageName> {
    let policy = app.policy();
    let through = staged_lines
        .iter()
        .filter(|l| l["grant"].as_str().and_then(|g| policy.grant(g)).is_some_and(|g| g.credential == c.name))
        .filter_map(|l| l["package"].as_str());
    let named = c.packages.iter().map(|g| g.as_str()).filter(|p| !p.contains('*'));
    let mut packages: Vec<crate::npm::PackageName> = Vec::new();
    for name in through.chain(named) {
        if let Ok(p) = crate::npm::PackageName::parse(name) {
            if !packages.contains(&p) && packages.len() < MAX_ASKS {
                packages.push(p);
            }
        }
    }
    packages
}

async fn list_staged(
    app: &App,
    upstream: &str,
    credential: std::sync::Arc<crate::credentials::Credential>,
    package: Option<&crate::npm::PackageName>,
) -> Result<Vec<StagedRow>, String> {
    let upstreams = app.upstreams();
    let u = upstreams.named(upstream).ok_or("no such upstream")?;
    let auth = UpstreamAuth::for_broker(credential, &NpmRequest::stage_list(package));
    let (status, body) =
        u.fetch_json(&auth, 1024 * 1024).await.map_err(|e| format!("the registry could not be asked: {e}"))?;
    if status != 200 {
        return Err(format!(
            "the registry does not list staged versions to this credential ({status}): a maintainer runs `npm stage list`"
        ));
    }
    // What the registry says is shown to every role: an answer that carries the credential is
    // not, and each field must be what it claims to be (an id a maintainer pastes into a shell).
    if auth.credential().is_some_and(|c| c.scrub_pattern().find(&body).is_some()) {
        return Err("the registry's answer carried the credential: it is not shown".into());
    }
    let doc: Value = serde_json::from_slice(&body).map_err(|_| "the registry's list is not JSON")?;
    fn token(v: &Value) -> Option<&str> {
        let ok = |s: &&str| {
            !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_:.+".contains(&b))
        };
        v.as_str().filter(ok)
    }
    Ok(doc["items"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|i| {
            let id = i["id"].as_str().filter(|id| crate::npm::is_stage_id(id))?;
            let package = crate::npm::PackageName::parse(i["packageName"].as_str()?).ok()?;
            Some(StagedRow {
                id: id.to_owned(),
                package: package.to_string(),
                version: token(&i["version"])?.to_owned(),
                status: token(&i["status"]).unwrap_or("unknown").to_owned(),
                created: token(&i["createdAt"]).unwrap_or_default().to_owned(),
            })
        })
        .collect())
}

#[derive(Template)]
#[template(path = "console/phantoms.html")]
pub(super) struct Phantoms {
    frame: Frame,
    rows: Vec<PhantomRow>,
}

struct PhantomRow {
    id: String,
    who: String,
    issuer: String,
    grant: String,
    packages: String,
    actions: String,
    expires: String,
    uses_left: String,
}

pub(super) async fn phantoms(app: &App, mut frame: Frame) -> Phantoms {
    let listed = app.store.list(unix_now()).await.unwrap_or_else(|e| {
        frame.error = Some(format!("the state store did not answer: {e}"));
        Vec::new()
    });
    let rows = listed
        .iter()
        .map(|l| {
            let r = &l.record;
            PhantomRow {
                id: r.id.to_string(),
                who: named(r.summary.get()),
                issuer: r.identity.issuer.to_string(),
                grant: r.grant.clone(),
                packages: r.scope.packages.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
                actions: r.scope.actions.names().join(", "),
                expires: rfc3339(r.expires_at, 0),
                uses_left: l.uses_left.map_or("unlimited".into(), |n| n.to_string()),
            }
        })
        .collect();
    Phantoms { frame, rows }
}

#[derive(Template)]
#[template(path = "console/freezes.html")]
pub(super) struct Freezes {
    pub(super) frame: Frame,
    pub(super) patterns: Vec<String>,
}

#[derive(Template)]
#[template(path = "console/credentials.html")]
pub(super) struct Credentials {
    frame: Frame,
    rows: Vec<CredentialRow>,
}

struct CredentialRow {
    name: String,
    upstream: String,
    packages: String,
    class: String,
    publish: &'static str,
    age: String,
    expires: String,
    state: &'static str,
    due: String,
    account: String,
    warnings: Vec<String>,
}

pub(super) async fn credentials(app: &App, frame: Frame) -> Credentials {
    let status = crate::ops::status(app).await;
    let days = |d: Option<i64>| d.map_or("-".to_owned(), |d| format!("{d} days"));
    let rows = status
        .into_iter()
        .map(|r| CredentialRow {
            packages: if r.packages.is_empty() { "(unscoped)".into() } else { r.packages.join(", ") },
            class: r.class.clone().unwrap_or_else(|| "-".into())
                + if r.rotation.as_ref().is_some_and(|x| x.top) { " (top)" } else { "" },
            publish: r.publish,
            age: days(r.age_days),
            expires: match (&r.expires, r.days_to_expiry) {
                (Some(date), Some(left)) => format!("{date} ({left} days)"),
                _ => "-".into(),
            },
            state: r.rotation.as_ref().map_or("", |x| x.state.as_str()),
            due: r.rotation.as_ref().map(|x| x.due.clone()).unwrap_or_default(),
            account: r.account.clone().unwrap_or_else(|| "unknown".into()),
            warnings: r.warnings,
            name: r.name,
            upstream: r.upstream,
        })
        .collect();
    Credentials { frame, rows }
}

#[derive(Template)]
#[template(path = "console/refusals.html")]
pub(super) struct Refusals {
    frame: Frame,
    rows: Vec<RefusalRow>,
}

struct RefusalRow {
    ts: String,
    request_id: String,
    explainable: bool,
    action: String,
    package: String,
    reason: String,
    status: String,
}

fn is_refusal(l: &Value) -> bool {
    matches!(l["event"].as_str(), Some("request" | "exchange")) && l["decision"] == "deny"
}

pub(super) fn refusals(app: &App, frame: Frame) -> Refusals {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    let rows = audit_tail(app)
        .iter()
        .rev()
        .filter(|l| is_refusal(l))
        .take(100)
        .map(|l| RefusalRow {
            ts: text(&l["ts"]),
            request_id: text(&l["request_id"]),
            explainable: l["identity"].is_object() && l["package"].is_string() && l["action"].is_string(),
            action: text(&l["action"]),
            package: text(&l["package"]),
            reason: text(&l["reason"]),
            status: text(&l["status"]),
        })
        .collect();
    Refusals { frame, rows }
}

#[derive(Template)]
#[template(path = "console/explain.html")]
pub(super) struct Explain {
    frame: Frame,
    question: String,
    verdicts: Vec<(String, String, bool)>,
}

/// What each grant says of a refused request, as `phantom policy explain --request` does.
pub(super) fn explain(app: &App, frame: Frame, request_id: &str) -> Explain {
    let (question, verdicts) = explained(app, request_id);
    Explain { frame, question, verdicts }
}

fn explained(app: &App, request_id: &str) -> (String, Vec<(String, String, bool)>) {
    // Only the end of the log is read (what the refusals page lists): a request id is never a
    // reason to read the whole log.
    let tail = audit_tail(app);
    let line = tail
        .iter()
        .rev()
        .find(|l| l["request_id"] == request_id && l["decision"] != "forwarding" && l["identity"].is_object());
    let Some(asked) = line.and_then(Asked::from_line) else {
        return (format!("Request {request_id} is not in the recent audit log of this replica."), Vec::new());
    };
    let iss = asked.claims.get("iss").and_then(Value::as_str).unwrap_or_default();
    let Some(issuer) = app.config.issuers.iter().find(|i| i.issuer == iss) else {
        return (format!("Request {request_id} came from an issuer this broker does not know."), Vec::new());
    };
    let identity = crate::policy::Identity { issuer: issuer.name.as_str().into(), claims: asked.claims.clone() };
    let action = asked.action.split('|').next().unwrap_or_default();
    let (Ok(package), Some(action)) =
        (crate::npm::PackageName::parse(&asked.package), crate::npm::ActionKind::parse(action))
    else {
        return (format!("Request {request_id} names no package and action to explain."), Vec::new());
    };
    let requested = crate::policy::Requested {
        package: Some(&package),
        action,
        tags: &[],
        version: asked.version.as_deref(),
        creates: asked.new_package,
    };
    let who = asked.claims.get("sub").and_then(Value::as_str).unwrap_or("an unnamed identity");
    let question = format!("Request {request_id}: {} {} by {who}.", action.as_str(), package);
    let verdicts = app
        .policy()
        .explain(&identity, &requested)
        .into_iter()
        .map(|(grant, v)| match v {
            Ok(()) => (grant, "allows it now".to_owned(), true),
            Err(why) => (grant, why.to_string(), false),
        })
        .collect();
    (question, verdicts)
}

/// What a refused request asked, from its audit line.
struct Asked {
    claims: serde_json::Map<String, Value>,
    package: String,
    action: String,
    version: Option<String>,
    new_package: bool,
}

impl Asked {
    fn from_line(l: &Value) -> Option<Asked> {
        let mut claims = l["identity"].as_object()?.clone();
        claims.remove("issuer");
        Some(Asked {
            claims,
            package: l["package"].as_str()?.to_owned(),
            action: l["action"].as_str()?.to_owned(),
            version: l["version"].as_str().map(str::to_owned),
            new_package: l["new_package"] == true,
        })
    }
}

#[derive(Template)]
#[template(path = "console/policy.html")]
pub(super) struct Policy {
    frame: Frame,
    grants: Vec<GrantRow>,
    findings: Vec<FindingRow>,
}

struct GrantRow {
    name: String,
    issuer: String,
    claims: String,
    packages: String,
    actions: String,
    credential: String,
    how: String,
}

struct FindingRow {
    place: String,
    severity: String,
    rule: &'static str,
    message: String,
    fix: &'static str,
}

pub(super) fn policy(app: &App, frame: Frame) -> Policy {
    let policy = app.policy();
    let grants = policy
        .grants()
        .map(|g| {
            let mut how = Vec::new();
            if let Some(h) = &g.hold {
                how.push(format!("held for `{h}`"));
            }
            if g.publish == crate::policy::PublishMode::Stage {
                how.push("staged".to_owned());
            }
            if g.create {
                how.push("may create packages".to_owned());
            }
            if let Some(r) = g.rate {
                how.push(format!("at most {} writes per {}s", r.max, r.window.as_secs()));
            }
            GrantRow {
                name: g.name.to_string(),
                issuer: g.issuer.to_string(),
                claims: g.claims.iter().map(|(k, m)| format!("{k} {m}")).collect::<Vec<_>>().join(", "),
                packages: g.packages.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(", "),
                actions: g.actions.names().join(", "),
                credential: g.credential.to_string(),
                how: if how.is_empty() { "-".into() } else { how.join("; ") },
            }
        })
        .collect();
    let findings = app
        .config
        .check_policy()
        .into_iter()
        .map(|f| FindingRow {
            place: format!(
                "{}:{}:{}",
                f.file.file_name().map(|n| n.to_string_lossy()).unwrap_or_default(),
                f.line,
                f.col
            ),
            severity: format!("{:?}", f.severity).to_lowercase(),
            rule: f.rule,
            message: f.message,
            fix: f.fix,
        })
        .collect();
    Policy { frame, grants, findings }
}

/// The last lines of this replica's audit log, parsed (what the refusals and staged pages show).
fn audit_tail(app: &App) -> Vec<serde_json::Value> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(&app.config.audit.path) else { return Vec::new() };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let from = len.saturating_sub(AUDIT_TAIL);
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(from)).is_err() || file.take(AUDIT_TAIL).read_to_end(&mut bytes).is_err() {
        return Vec::new();
    }
    // A line cut by the start of the tail is skipped (it may start inside a character).
    let start = if from > 0 { memchr::memchr(b'\n', &bytes).map_or(bytes.len(), |i| i + 1) } else { 0 };
    bytes[start..].split(|b| *b == b'\n').filter_map(|l| serde_json::from_slice(l).ok()).collect()
}
