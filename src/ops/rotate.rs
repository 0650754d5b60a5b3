//! Rotating a real credential: a person mints the new token upstream, the broker does the rest.
//!
//! 1. Canary: the new value must authenticate as the same upstream account as the current one
//!    (`GET /-/whoami`), then read one of the credential's packages. A failed canary changes
//!    nothing and says why.
//! 2. With `incident`, revoke first: every live phantom of a grant that uses the credential is
//!    revoked and the grants' packages frozen, before anything else, and no overlap is kept.
//! 3. A `file` source is rewritten atomically (a new file, mode 0600, renamed over the old), so
//!    a restart, a reload and the other replicas read the new value; an `env` source cannot be.
//! 4. The new value is swapped in for new requests; requests in flight finish with the old one,
//!    which is kept for the overlap window when one is asked for.
//!
//! Every step is audited. The new value never reaches a log line, an audit line, an answer or
//! the state store (other replicas read it from their own copy of the source: see docs/operations.md).

use super::status::{cached_account, last_known_account, whoami};
use super::steps::{line, step, write_step};
use crate::app::App;
use crate::audit::{AdminAction, Decision, Record};
use crate::config::SecretSource;
use crate::credentials::{Credential, Slot, UpstreamAuth};
use crate::notify::{Incident, Note};
use crate::npm::{NpmRequest, PackageName};
use crate::policy::Glob;
use crate::state::{PhantomStore, Selector, StoreError};
use crate::support::clock::{rfc3339, unix_now};
use crate::support::secret::read_secret;
use crate::support::secret::Secret;
use serde::Serialize;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// A rotation as asked for.
pub struct Rotation {
    pub token: Secret,
    pub overlap: Option<Duration>,
    pub incident: bool,
    /// The account the new value must authenticate as, for when the current value can no
    /// longer say (revoked upstream in an incident) and the broker has not learnt it before.
    pub account: Option<String>,
}

/// What a rotation did.
#[derive(Debug, Serialize)]
pub struct Rotated {
    pub credential: String,
    pub account: String,
    /// The package the canary read, if the credential names one.
    pub canary_read: Option<String>,
    /// The source file rewritten.
    pub file: Option<String>,
    pub overlap_until: Option<String>,
    /// Phantoms revoked and package patterns frozen (an incident rotation).
    pub revoked: usize,
    pub frozen: Vec<String>,
    /// How the other replicas learn of the new value.
    pub replicas: String,
    /// How to lift the freeze, once the incident is over.
    pub thaw: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error("no credential `{0}` is configured")]
    Unknown(String),
    #[error("the new value is not a token: {0}")]
    BadToken(String),
    #[error("the new value is the one in use")]
    Unchanged,
    #[error("the new value was in use before and was rotated out: a rotation needs a new token")]
    Reused,
    #[error("credential `{0}` comes from the environment variable {1}, which the broker cannot rewrite: set the new value there, then reload (SIGHUP or POST /admin/v1/reload)")]
    EnvSource(String, String),
    #[error("canary failed, nothing changed: {0}")]
    Canary(String),
    #[error("{0}")]
    State(#[from] StoreError),
    #[error("could not write the new value to {0}; phantoms revoked and packages frozen before stay so")]
    Write(String),
}

impl RotateError {
    pub fn status(&self) -> u16 {
        match self {
            RotateError::Unknown(_) => 404,
            RotateError::BadToken(_) => 400,
            RotateError::Unchanged | RotateError::Reused | RotateError::EnvSource(..) => 409,
            RotateError::Canary(_) => 422,
            RotateError::State(_) => 503,
            RotateError::Write(_) => 500,
        }
    }
}

pub async fn rotate(app: &App, name: &str, r: Rotation) -> Result<Rotated, RotateError> {
    let slot = app.credentials.slot(name).ok_or_else(|| RotateError::Unknown(name.to_owned()))?;
    let _changing = slot.changing.lock().await;
    let file = match &slot.config.source {
        SecretSource::File(path) => path.clone(),
        SecretSource::Env(var) => return Err(RotateError::EnvSource(name.to_owned(), var.clone())),
    };
    let next = Arc::new(new_value(slot, r.token)?);
    let (account, canary_read) = match canary(app, slot, &next, r.account.as_deref()).await {
        Ok(passed) => passed,
        Err(why) => {
            step(
                app,
                AdminAction::CredentialRotate,
                name,
                Decision::Deny,
                format!("canary failed, nothing changed: {why}"),
            )
            .await;
            return Err(RotateError::Canary(why));
        }
    };
    let read = canary_read.as_ref().map(|p| format!(", and read {p}")).unwrap_or_default();
    step(
        app,
        AdminAction::CredentialRotate,
        name,
        Decision::Allow,
        format!("canary: the new value authenticates as `{account}`{read}"),
    )
    .await;

    let (mut revoked, mut frozen) = (0, Vec::new());
    if r.incident {
        (revoked, frozen) = revoke_first(app, name).await?;
    }

    write_private_atomically(&file, next.secret().expose()).map_err(|e| {
        tracing::error!(credential = %name, error = %e, "could not write a rotated credential");
        RotateError::Write(file.display().to_string())
    })?;
    step(
        app,
        AdminAction::CredentialRotate,
        name,
        Decision::Allow,
        format!("wrote the new value to {} (mode 0600)", file.display()),
    )
    .await;

    let now = unix_now();
    let overlap_until = r.overlap.filter(|_| !r.incident).map(|d| now + d.as_secs());
    let counted =
        slot.swap(Arc::try_unwrap(next).unwrap_or_else(|arc| clone_credential(&slot.config, &arc)), overlap_until, now);
    *slot.account.lock().unwrap_or_else(|p| p.into_inner()) = Some((account.clone(), std::time::Instant::now()));
    let overlap = overlap_until.map(|t| format!(", the old one kept until {}", rfc3339(t, 0))).unwrap_or_default();
    step(app, AdminAction::CredentialRotate, name, Decision::Allow, format!("swapped in for new requests{overlap}"))
        .await;
    let fingerprint = crate::support::hex(slot.current().fingerprint());
    let replicas = match app.store.announce_credential(name, &fingerprint, overlap_until.unwrap_or(0), counted).await {
        Ok(()) if app.store.is_shared() => {
            "announced: the other replicas swap it in from their copy of the source".to_owned()
        }
        Ok(()) => "one replica (memory state)".to_owned(),
        Err(e) => format!("not announced ({e}): reload the other replicas once their source has the new value"),
    };
    Ok(Rotated {
        credential: name.to_owned(),
        account,
        canary_read,
        file: Some(file.display().to_string()),
        overlap_until: overlap_until.map(|t| rfc3339(t, 0)),
        revoked,
        replicas,
        thaw: (!frozen.is_empty()).then(|| format!("phantom thaw {}", frozen.join(" "))),
        frozen,
    })
}

/// The new value as given: a plausible token, not the one in use.
fn new_value(slot: &Slot, token: Secret) -> Result<Credential, RotateError> {
    let value = token.expose();
    if value.is_empty() || value.len() > 8192 || value.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(RotateError::BadToken("empty, too long, or with whitespace or control characters".into()));
    }
    let next = Credential::from_secret(&slot.config, token).map_err(RotateError::BadToken)?;
    if next.fingerprint() == slot.current().fingerprint() {
        return Err(RotateError::Unchanged);
    }
    if slot.retired_since(next.fingerprint()).is_some() {
        return Err(RotateError::Reused);
    }
    Ok(next)
}

/// `Arc::try_unwrap` fails only while another holder exists; none does here, but the value is
/// rebuilt from its secret rather than panicking if it ever did.
pub(super) fn clone_credential(cfg: &crate::config::CredentialConfig, c: &Credential) -> Credential {
    Credential::from_secret(cfg, Secret::new(c.secret().expose().to_owned())).expect("it was built from the same value")
}

/// The new value must be the same account's, and able to read what the credential covers.
pub(super) async fn canary(
    app: &App,
    slot: &Slot,
    next: &Arc<Credential>,
    stated: Option<&str>,
) -> Result<(String, Option<String>), String> {
    let expected = match cached_account(app, slot, true).await {
        Ok(a) if stated.is_some_and(|s| s != a) => {
            return Err(format!("the current value authenticates as `{a}`, not `{}`", stated.unwrap_or_default()))
        }
        Ok(a) => a,
        Err(e) => match (last_known_account(slot), stated) {
            (Some(known), Some(s)) if known != s => {
                return Err(format!("the current value last authenticated as `{known}`, not `{s}`"))
            }
            (Some(known), _) => known,
            (None, Some(s)) => s.to_owned(),
            (None, None) => {
                return Err(format!(
                    "the current value's account is unknown (GET /-/whoami: {e}), so the new one cannot be compared \
                     with it: give the account it must be (--account)"
                ))
            }
        },
    };
    let got = whoami(app, &slot.config.upstream, next.clone()).await.map_err(|e| format!("the new value: {e}"))?;
    if got != expected {
        return Err(format!("the new value authenticates as `{got}`, the current one as `{expected}`"));
    }
    let Some(package) = slot.config.packages.iter().find(|g| g.is_literal()).map(Glob::as_str) else {
        return Ok((got, None));
    };
    let upstreams = app.upstreams();
    let upstream = upstreams.named(&slot.config.upstream).ok_or("the credential's upstream is gone")?;
    let name = PackageName::parse(package).map_err(|e| format!("the canary {package}: {e}"))?;
    let auth = UpstreamAuth::for_broker(next.clone(), &NpmRequest::packument(&name, false));
    let (status, _) = upstream.fetch_json(&auth, 16 << 20).await.map_err(|e| format!("reading {package}: {e}"))?;
    // Not there yet is fine; refused is not.
    if status >= 400 && status != 404 {
        return Err(format!("the new value cannot read {package} (the upstream answered {status})"));
    }
    Ok((got, Some(package.to_owned())))
}

/// Revokes every live phantom of the grants that use credential `name` and freezes their
/// packages: before the new value is deployed, with no overlap. Each step has its own audit
/// line: the phantoms revoked (their ids), then the patterns frozen.
async fn revoke_first(app: &App, name: &str) -> Result<(usize, Vec<String>), StoreError> {
    let (names, patterns) = {
        let policy = app.policy();
        let grants: Vec<&crate::policy::Grant> = policy.grants().filter(|g| g.credential == name).collect();
        let mut patterns: Vec<Glob> = Vec::new();
        for p in grants.iter().flat_map(|g| &g.packages) {
            if !patterns.contains(p) {
                patterns.push(p.clone());
            }
        }
        (grants.iter().map(|g| g.name.to_string()).collect::<Vec<_>>(), patterns)
    };
    let of = if names.is_empty() { "no grant uses it".to_owned() } else { format!("grants {}", names.join(", ")) };
    let selector = Selector::Grants(names.clone());
    let revoked = if names.is_empty() { Vec::new() } else { app.store.revoke(&selector).await? };
    if !names.is_empty() {
        // The revocation and the freeze go on whatever becomes of the held writes.
        if let Err(e) = super::holds::reject_revoked(app, &selector, &revoked).await {
            tracing::error!(error = %e, "an incident rotation could not reject the held writes of what it revoked");
        }
    }
    let count = revoked.len();
    let what = format!("incident: revoked {count} live phantoms ({of})");
    write_step(app, Record { revoked, ..line(AdminAction::CredentialRotate, name, Decision::Allow, what) }).await;
    if !patterns.is_empty() {
        app.store.set_frozen(&patterns, true).await?;
    }
    let frozen: Vec<String> = patterns.iter().map(|g| g.as_str().to_owned()).collect();
    let what = if frozen.is_empty() {
        "nothing to freeze".to_owned()
    } else {
        format!("froze writes to {}", frozen.join(", "))
    };
    let what = format!("incident: {what}");
    write_step(
        app,
        Record { frozen: frozen.clone(), ..line(AdminAction::CredentialRotate, name, Decision::Allow, what) },
    )
    .await;
    // The people on call hear of it before the swap.
    let thaw = (!frozen.is_empty()).then(|| format!("phantom thaw {}", frozen.join(" ")));
    let note = Incident { credential: name.to_owned(), revoked: count, frozen: frozen.clone(), thaw };
    app.notifier.send(Note::Incident(note), &app.audit);
    Ok((count, frozen))
}

/// Writes `value` to `path` as a new file only its owner can read, then renames it over the
/// old one: a reader sees the old value or the new, never a part.
fn write_private_atomically(path: &Path, value: &str) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| std::io::Error::other("not a file path"))?;
    let tmp = dir.join(format!(".{}.rotating-{}", name.to_string_lossy(), std::process::id()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let written = (|| {
        let mut f = opts.open(&tmp)?;
        f.write_all(value.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// A replica on the shared store follows rotations made on the others: when a credential's
/// announced fingerprint is not its own value's, it re-reads the source and swaps the value in
/// if it is the announced one (the rotating replica canaried it). A source that does not hold
/// it yet (a secret store still syncing) is read again at the next poll.
pub async fn follow(app: &App) {
    let Ok(announced) = app.store.announced_credentials().await else { return };
    for (name, fingerprint, overlap_until, rotated) in announced {
        // A rotation announced for the future (a clock far ahead, or a forged entry) would make
        // an overdue credential look fresh: it counts from no later than now.
        let rotated = rotated.min(unix_now());
        let Some(slot) = app.credentials.slot(&name) else { continue };
        if crate::support::hex(slot.current().fingerprint()) == fingerprint {
            // The value in use: when it was rotated in counts for its deadline (after a restart).
            slot.rotated_at(rotated);
            continue;
        }
        let read = read_secret(&slot.config.source).and_then(|s| Credential::from_secret(&slot.config, s));
        match read {
            Ok(next) if crate::support::hex(next.fingerprint()) == fingerprint => {
                let overlap = Some(overlap_until).filter(|t| *t > unix_now());
                // A value this replica used before keeps the deadline it had (`swap`).
                slot.swap(next, overlap, if rotated > 0 { rotated } else { unix_now() });
                step(
                    app,
                    AdminAction::CredentialFollow,
                    &name,
                    Decision::Allow,
                    "swapped in the value another replica rotated to".into(),
                )
                .await;
            }
            Ok(_) | Err(_) => {
                tracing::debug!(credential = %name, "the source does not hold the value another replica rotated to yet");
            }
        }
    }
}
