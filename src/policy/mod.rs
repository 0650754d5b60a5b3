//! Who may do what: grants loaded from `policies/*.toml`, and their evaluation.
//!
//! Evaluation is a pure function of the policy, the caller's identity and the request. Deny
//! unless a grant matches. A permitted request is returned as `Authorized<T>`, which only this
//! module can construct; the credential swap accepts nothing else.

mod approvers;
pub mod check;
mod claims;
mod glob;
mod grant;
pub mod presets;
pub mod trust;
mod versions;

pub use approvers::{Approvers, DEFAULT_HOLD_TTL};
pub(crate) use claims::claims_match;
pub use claims::ClaimMatcher;
pub use glob::Glob;
pub use grant::{Capability, CredentialLimits, Grant, PolicyContext, PublishMode, Rate};
pub use versions::VersionRange;

use crate::npm::{ActionKind, ActionSet, NpmRequest, PackageName};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// A verified caller: the configured issuer that vouched for it, and the token's claims.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub issuer: Arc<str>,
    pub claims: Map<String, Value>,
}

impl Identity {
    pub fn claim(&self, key: &str) -> Option<&str> {
        self.claims.get(key).and_then(Value::as_str)
    }
}

/// What a phantom was minted for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub packages: Vec<PackageName>,
    pub actions: ActionSet,
}

/// One request, as policy sees it.
#[derive(Debug, Clone, Copy)]
pub struct Requested<'a> {
    pub package: Option<&'a PackageName>,
    pub action: ActionKind,
    /// Dist-tags the request sets: the publish body's, or the dist-tag route's.
    pub tags: &'a [String],
    /// The version a publish adds (from its body).
    pub version: Option<&'a str>,
    /// The upstream does not have the package: a publish would create it.
    pub creates: bool,
}

/// Proof that policy permitted `T` under `grant`. Only this module can make one.
#[derive(Debug)]
pub struct Authorized<T> {
    inner: T,
    grant: Arc<Grant>,
}

impl<T> Authorized<T> {
    pub fn get(&self) -> &T {
        &self.inner
    }
    pub fn grant(&self) -> &Grant {
        &self.grant
    }
    /// The permitted value, for an authorization that must be made again (a write's exact
    /// action, once its body has been read).
    pub(crate) fn into_inner(self) -> T {
        self.inner
    }
}

impl Authorized<NpmRequest> {
    /// A publish under a grant that stages its publishes, as what it goes upstream as: the
    /// staged publish of the same package (`npm stage publish`).
    pub(crate) fn as_staged(&self) -> Option<Authorized<NpmRequest>> {
        if self.grant.publish != PublishMode::Stage {
            return None;
        }
        self.inner.as_staged().map(|inner| Authorized { inner, grant: self.grant.clone() })
    }
}

/// Why a request was denied. Shown in the audit log and by `policy explain`, never to callers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    #[error("no grant matches this identity, package and action")]
    NoGrant,
    #[error("grant `{0}` no longer exists")]
    GrantGone(String),
    #[error("grant `{0}` is for another issuer")]
    IssuerMismatch(String),
    #[error("claim `{0}` does not match")]
    ClaimMismatch(String),
    #[error("package is outside the token's scope")]
    PackageOutOfScope,
    #[error("action `{0}` is outside the token's scope")]
    ActionOutOfScope(&'static str),
    #[error("dist-tag `{0}` is not allowed by grant `{1}`")]
    TagNotAllowed(String, String),
    #[error("version not allowed by grant `{0}`: {1}")]
    VersionNotAllowed(String, String),
    #[error("package creation not allowed by grant `{0}`: the upstream has no such package (`create = true` allows a first publish)")]
    CreateNotAllowed(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {message}")]
pub struct PolicyError {
    pub file: String,
    pub message: String,
}

/// All grants, indexed by package so that evaluation does not scan them all.
#[derive(Debug, Default)]
pub struct Policy {
    grants: Vec<Arc<Grant>>,
    by_name: HashMap<String, usize>,
    /// Grants with a literal package name.
    exact: HashMap<Box<str>, Vec<usize>>,
    /// Grants with a pattern inside one literal scope, by scope (`@acme/web-*` under `acme`).
    scoped: HashMap<Box<str>, Vec<usize>>,
    /// Grants whose pattern has a `*` in the scope, or an unscoped `*`.
    wide: Vec<usize>,
    /// `[approvers.NAME]`, by name.
    approvers: HashMap<String, Arc<Approvers>>,
}

impl Policy {
    pub fn new(grants: Vec<Grant>) -> Result<Policy, String> {
        Policy::with_approvers(grants, Vec::new())
    }

    /// Grants and the `[approvers.NAME]` their `hold` keys name (each name once, across files).
    pub fn with_approvers(grants: Vec<Grant>, approvers: Vec<Approvers>) -> Result<Policy, String> {
        let mut p = Policy::default();
        for a in approvers {
            if p.approvers.insert(a.name.to_string(), Arc::new(a)).is_some() {
                return Err("an `[approvers.NAME]` name is used twice".into());
            }
        }
        if let Some(g) = grants.iter().find(|g| g.hold.as_ref().is_some_and(|h| !p.approvers.contains_key(h))) {
            let named = g.hold.as_deref().unwrap_or_default();
            return Err(format!("grant `{}`: `hold`: there is no `[approvers.{named}]` in the policy files", g.name));
        }
        for (i, g) in grants.into_iter().enumerate() {
            if p.by_name.insert(g.name.to_string(), i).is_some() {
                return Err(format!("grant name `{}` is used twice", g.name));
            }
            for pat in &g.packages {
                let s = pat.as_str();
                let list = if pat.is_literal() {
                    p.exact.entry(s.into()).or_default()
                } else {
                    match literal_scope(s) {
                        Some(scope) => p.scoped.entry(scope.into()).or_default(),
                        None => &mut p.wide,
                    }
                };
                if list.last() != Some(&i) {
                    list.push(i);
                }
            }
            p.grants.push(Arc::new(g));
        }
        Ok(p)
    }

    /// Loads every `*.toml` in `dir`, in file-name order.
    pub(crate) fn load_dir(dir: &Path, ctx: &PolicyContext<'_>) -> Result<Policy, PolicyError> {
        let err = |file: &Path, message: String| PolicyError { file: file.display().to_string(), message };
        let entries = std::fs::read_dir(dir).map_err(|e| err(dir, format!("cannot read the policy directory: {e}")))?;
        let mut files = Vec::new();
        for entry in entries {
            let path = entry.map_err(|e| err(dir, e.to_string()))?.path();
            if path.extension().is_some_and(|x| x == "toml") {
                files.push(path);
            }
        }
        files.sort();
        let (mut grants, mut approvers) = (Vec::new(), Vec::new());
        for file in &files {
            let text = std::fs::read_to_string(file).map_err(|e| err(file, format!("cannot read: {e}")))?;
            let (g, a) = grant::parse_file(file, &text, ctx).map_err(|m| err(file, m))?;
            grants.extend(g);
            approvers.extend(a);
        }
        Policy::with_approvers(grants, approvers).map_err(|m| err(dir, m))
    }

    /// Parses one policy file's text (as `load_dir` does for each file), e.g. for tools and fuzzing.
    pub fn from_toml(name: &Path, text: &str, ctx: &PolicyContext<'_>) -> Result<Policy, PolicyError> {
        let err = |message: String| PolicyError { file: name.display().to_string(), message };
        let (grants, approvers) = grant::parse_file(name, text, ctx).map_err(err)?;
        Policy::with_approvers(grants, approvers).map_err(err)
    }

    pub fn len(&self) -> usize {
        self.grants.len()
    }

    pub fn is_empty(&self) -> bool {
        self.grants.is_empty()
    }

    /// The grant of this name, if the policy in force has one.
    pub fn grant(&self, name: &str) -> Option<&Grant> {
        self.by_name.get(name).map(|&i| &*self.grants[i])
    }

    /// The `[approvers.NAME]` of this name.
    pub fn approvers(&self, name: &str) -> Option<&Arc<Approvers>> {
        self.approvers.get(name)
    }

    pub fn grants(&self) -> impl Iterator<Item = &Grant> {
        self.grants.iter().map(|g| &**g)
    }

    /// Indices of grants that may cover `package`, in policy order, without duplicates.
    fn candidates(&self, package: &PackageName) -> Vec<usize> {
        let mut out: Vec<usize> = Vec::new();
        if let Some(v) = self.exact.get(package.as_str()) {
            out.extend(v);
        }
        if let Some(v) = package.scope().and_then(|s| self.scoped.get(s)) {
            out.extend(v);
        }
        out.extend(&self.wide);
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The first grant that lets `identity` perform `action` on `package` (exchange time).
    pub fn grant_for(
        &self,
        identity: &Identity,
        package: &PackageName,
        action: ActionKind,
    ) -> Result<Arc<Grant>, Denial> {
        self.candidates(package)
            .into_iter()
            .map(|i| &self.grants[i])
            .find(|g| g.actions.contains(action) && g.covers_package(package) && matches_identity(g, identity).is_ok())
            .cloned()
            .ok_or(Denial::NoGrant)
    }

    /// For the generic exchange: the grant giving the largest part of what was asked, and that
    /// part (packages x actions). Ties go to the grant that comes first.
    pub(crate) fn best_grant(
        &self,
        identity: &Identity,
        packages: &[PackageName],
        actions: ActionSet,
    ) -> Option<(Arc<Grant>, Scope)> {
        let mut seen: Vec<usize> = packages.iter().flat_map(|p| self.candidates(p)).collect();
        seen.sort_unstable();
        seen.dedup();
        let mut best: Option<(Arc<Grant>, Scope, usize)> = None;
        for g in seen.into_iter().map(|i| &self.grants[i]) {
            if matches_identity(g, identity).is_err() {
                continue;
            }
            let acts = g.actions.intersect(actions);
            let pkgs: Vec<PackageName> = packages.iter().filter(|p| g.covers_package(p)).cloned().collect();
            let size = pkgs.len() * acts.iter().count();
            if size > 0 && best.as_ref().is_none_or(|b| size > b.2) {
                let scope = Scope { packages: pkgs, actions: acts };
                best = Some((g.clone(), scope, size));
            }
        }
        best.map(|(g, s, _)| (g, s))
    }

    /// The one grant lookup at the moment of use: the grant a phantom was minted under must
    /// still exist and still match the identity.
    fn live_grant(&self, identity: &Identity, grant: &str) -> Result<&Arc<Grant>, Denial> {
        let g = self.by_name.get(grant).map(|&i| &self.grants[i]).ok_or_else(|| Denial::GrantGone(grant.to_owned()))?;
        matches_identity(g, identity)?;
        Ok(g)
    }

    /// Re-evaluates, at the moment of use, the grant a phantom was minted under: the grant must
    /// still exist and match the identity, and the request must fit both it and the phantom.
    pub fn authorize<T>(
        &self,
        identity: &Identity,
        grant: &str,
        scope: &Scope,
        req: Requested<'_>,
        inner: T,
    ) -> Result<Authorized<T>, Denial> {
        let g = self.live_grant(identity, grant)?;
        evaluate(g, Some(scope), &req)?;
        Ok(Authorized { inner, grant: g.clone() })
    }

    /// `authorize` of what `inner` asks (`asked` reads it), giving `inner` back with the denial:
    /// a read that then goes anonymously, with no copy of the request made to keep it.
    pub(crate) fn authorize_or_return<T>(
        &self,
        identity: &Identity,
        grant: &str,
        scope: &Scope,
        inner: T,
        asked: impl for<'a> FnOnce(&'a T) -> Requested<'a>,
    ) -> Result<Authorized<T>, (Denial, T)> {
        let verdict =
            self.live_grant(identity, grant).and_then(|g| evaluate(g, Some(scope), &asked(&inner)).map(|()| g));
        match verdict {
            Ok(g) => Ok(Authorized { inner, grant: g.clone() }),
            Err(denial) => Err((denial, inner)),
        }
    }

    /// For a read whose package only the upstream knows (a staged version, asked for by its
    /// id): the grant must still exist and match the identity, which lets the broker look the
    /// item up with the grant's credential. Nothing is relayed before `authorize` allowed the
    /// package the item turns out to belong to.
    pub(crate) fn authorize_lookup<T>(
        &self,
        identity: &Identity,
        grant: &str,
        inner: T,
    ) -> Result<Authorized<T>, Denial> {
        let g = self.live_grant(identity, grant)?;
        Ok(Authorized { inner, grant: g.clone() })
    }

    /// For a write whose body has not been read yet (and may stream upstream while it is
    /// checked): the grant must still match, the package must be in scope, and one of
    /// `candidates` (the actions the body may turn out to be) must be allowed. The exact action
    /// and its tags are authorized with `authorize` before anything decisive is released.
    pub(crate) fn authorize_provisional<T>(
        &self,
        identity: &Identity,
        grant: &str,
        scope: &Scope,
        package: Option<&PackageName>,
        candidates: ActionSet,
        inner: T,
    ) -> Result<Authorized<T>, Denial> {
        let g = self.live_grant(identity, grant)?;
        covers(g, Some(scope), package)?;
        if scope.actions.intersect(g.actions).intersect(candidates).is_empty() {
            let first = candidates.iter().next().map_or("write", ActionKind::as_str);
            return Err(Denial::ActionOutOfScope(first));
        }
        Ok(Authorized { inner, grant: g.clone() })
    }

    /// Grant by grant, whether `identity` may do `req` and why not: the evaluator `authorize`
    /// runs, asked before any phantom exists.
    pub fn explain(&self, identity: &Identity, req: &Requested<'_>) -> Vec<(String, Result<(), Denial>)> {
        self.grants
            .iter()
            .map(|g| (g.name.to_string(), matches_identity(g, identity).and_then(|()| evaluate(g, None, req))))
            .collect()
    }
}

/// The evaluator: whether grant `g` allows `req`, within the phantom's `scope` when there is
/// one. Without one (`explain`, before any phantom exists), a version the question does not
/// name is not in question; with one, a publish that names no version is judged as such.
fn evaluate(g: &Grant, scope: Option<&Scope>, req: &Requested<'_>) -> Result<(), Denial> {
    covers(g, scope, req.package)?;
    // Any action on a package lets its phantom read that package (npm reads before it writes).
    let action_ok = match req.action {
        ActionKind::Read => req.package.is_some(),
        a => scope.is_none_or(|s| s.actions.contains(a)) && g.actions.contains(a),
    };
    if !action_ok {
        return Err(Denial::ActionOutOfScope(req.action.as_str()));
    }
    if let Some(tag) = req.tags.iter().find(|t| !g.allows_tag(t)) {
        return Err(Denial::TagNotAllowed(tag.clone(), g.name.to_string()));
    }
    if req.action.publishes() {
        if scope.is_some() || req.version.is_some() {
            g.allows_version(req.version).map_err(|why| Denial::VersionNotAllowed(g.name.to_string(), why))?;
        }
        if req.creates && !g.create {
            return Err(Denial::CreateNotAllowed(g.name.to_string()));
        }
    }
    Ok(())
}

/// Whether `package` is the grant's, and the phantom's when there is one.
fn covers(g: &Grant, scope: Option<&Scope>, package: Option<&PackageName>) -> Result<(), Denial> {
    match package {
        Some(p) if !g.covers_package(p) || scope.is_some_and(|s| !s.packages.contains(p)) => {
            Err(Denial::PackageOutOfScope)
        }
        _ => Ok(()),
    }
}

fn matches_identity(g: &Grant, identity: &Identity) -> Result<(), Denial> {
    if *g.issuer != *identity.issuer {
        return Err(Denial::IssuerMismatch(g.name.to_string()));
    }
    claims::claims_match(&g.claims, &identity.claims).map_err(|key| Denial::ClaimMismatch(key.to_owned()))
}

/// `@acme/web-*` -> `acme`; `@*/x` and `*` -> None.
fn literal_scope(pattern: &str) -> Option<&str> {
    let rest = pattern.strip_prefix('@')?;
    let scope = &rest[..rest.find('/')?];
    (!scope.contains('*')).then_some(scope)
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
