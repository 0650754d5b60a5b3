//! Grant files (`policies/*.toml`): parsing and validation into `Grant`s.

use super::approvers::Approvers;
use super::claims::ClaimMatcher;
use super::glob::Glob;
use super::versions::{self, VersionRange};
use crate::npm::{ActionKind, ActionSet, PackageName};
use crate::support::units::parse_duration;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One validated grant.
#[derive(Debug, Clone)]
pub struct Grant {
    pub name: std::sync::Arc<str>,
    /// The configured issuer's name (`[issuer.NAME]`).
    pub issuer: String,
    pub packages: Vec<Glob>,
    pub actions: ActionSet,
    /// Allowed dist-tags for publish, stage-publish and dist-tag; `None` allows any.
    pub dist_tags: Option<Vec<Glob>>,
    pub credential: String,
    pub ttl: Duration,
    /// Write operations a phantom from this grant may make; `None` means no limit within its TTL.
    pub max_uses: Option<u32>,
    /// Every claim must match (AND).
    pub claims: Vec<(String, ClaimMatcher)>,
    /// How an `npm publish` under this grant reaches the registry.
    pub publish: PublishMode,
    /// At most this many writes per (grant, package) in a sliding window: every identity the
    /// grant admits shares it (a GitHub `sub` changes with the ref and the environment).
    pub rate: Option<Rate>,
    /// `[notify.NAME]` targets told about each version staged under this grant.
    pub notify: Vec<String>,
    /// The versions a publish may be: an npm range (`versions = ">=1.0.0 <2.0.0"`), as
    /// node-semver reads it.
    pub versions: Option<VersionRange>,
    /// Only prereleases (`1.2.0-beta.1`) may be published: agents publish them, humans promote.
    pub prerelease_only: bool,
    /// A publish (direct or staged) may create a package the upstream does not have yet.
    pub create: bool,
    /// `hold = "NAME"`: every write under this grant is checked and then held until the
    /// `[approvers.NAME]` approve it.
    pub hold: Option<String>,
    pub file: PathBuf,
}

/// How a publish under a grant goes upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PublishMode {
    /// As sent: `PUT /<name>`.
    #[default]
    Direct,
    /// Staged (`POST /-/stage/package/<name>`): it goes live when a maintainer approves it
    /// with 2FA upstream. An `npm publish` is staged as if it were `npm stage publish`.
    Stage,
}

/// `rate = "N/window"`: at most `max` writes in any `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub max: u32,
    pub window: Duration,
}

impl Rate {
    pub fn parse(s: &str) -> Result<Rate, String> {
        let bad = || format!("`{s}` is not a rate like \"5/1h\" (writes per window)");
        let (max, window) = s.split_once('/').ok_or_else(bad)?;
        let max: u32 = max.trim().parse().map_err(|_| bad())?;
        let window = parse_duration(window.trim()).map_err(|_| bad())?;
        if max == 0 || window.is_zero() || window > Duration::from_secs(31 * 24 * 3600) {
            return Err(format!("`{s}`: the count must be at least 1 and the window between 1s and 31d"));
        }
        Ok(Rate { max, window })
    }
}

impl Grant {
    pub fn covers_package(&self, package: &PackageName) -> bool {
        self.packages.iter().any(|g| g.matches(package.as_str()))
    }

    pub(crate) fn allows_tag(&self, tag: &str) -> bool {
        self.dist_tags.as_ref().is_none_or(|tags| tags.iter().any(|g| g.matches(tag)))
    }

    /// Whether a publish of `version` fits the grant's version rules; the refusal says which.
    pub(crate) fn allows_version(&self, version: Option<&str>) -> Result<(), String> {
        if self.versions.is_none() && !self.prerelease_only {
            return Ok(());
        }
        let text = version.ok_or("the publish names no version")?;
        // The caller's text is not repeated unless it parsed as a version.
        let v = versions::parse_version(text).ok_or("the version is not a semver version")?;
        if self.prerelease_only && !v.is_prerelease() {
            return Err(format!("`{text}` is not a prerelease (prerelease_only)"));
        }
        match &self.versions {
            Some(range) if !range.satisfies(&v) => {
                let why = if v.is_prerelease() && range.satisfies_ignoring_prerelease_rule(&v) {
                    format!(
                        " (npm matches a prerelease only against a range that names a prerelease of {}.{}.{}, \
                         e.g. `>={}.{}.{}-0`)",
                        v.major(),
                        v.minor(),
                        v.patch(),
                        v.major(),
                        v.minor(),
                        v.patch()
                    )
                } else {
                    String::new()
                };
                Err(format!("`{text}` is outside `{}`{why}", range.as_str()))
            }
            _ => Ok(()),
        }
    }
}

/// What grants may refer to, taken from the broker's config.
pub struct PolicyContext<'a> {
    pub issuers: &'a [&'a str],
    pub credentials: &'a [&'a str],
    /// What each credential's real token can touch and do (from `phantom.toml`): a grant may not
    /// go beyond its credential's.
    pub credential_limits: &'a [CredentialLimits<'a>],
    /// `[notify.NAME]` targets.
    pub notify: &'a [&'a str],
    pub default_ttl: Duration,
    pub max_ttl: Duration,
}

/// A credential as policy validation sees it (its name and limits, never its value).
#[derive(Clone, Copy)]
pub struct CredentialLimits<'a> {
    pub name: &'a str,
    /// Empty: the token is not scoped to packages (anything it can reach).
    pub packages: &'a [Glob],
    pub publish: Capability,
}

/// What a real token may do upstream (`publish = ...` on a credential).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    Direct,
    StageOnly,
    ReadOnly,
}

impl Capability {
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Direct => "direct",
            Capability::StageOnly => "stage-only",
            Capability::ReadOnly => "read-only",
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    grant: Vec<GrantFile>,
    #[serde(default)]
    approvers: BTreeMap<String, super::approvers::ApproversFile>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct GrantFile {
    pub(super) name: String,
    issuer: String,
    packages: Vec<String>,
    actions: Vec<String>,
    dist_tags: Option<Vec<String>>,
    credential: String,
    pub(super) ttl: Option<String>,
    max_uses: Option<u32>,
    publish: Option<String>,
    rate: Option<String>,
    #[serde(default)]
    notify: Vec<String>,
    versions: Option<String>,
    prerelease_only: Option<bool>,
    pub(super) create: Option<bool>,
    hold: Option<String>,
    #[serde(default)]
    claims: BTreeMap<String, ClaimMatcher>,
}

/// Parses and validates one policy file: its grants and its `[approvers.NAME]`. Errors name the
/// grant (or approvers) and the key.
pub(super) fn parse_file(
    path: &Path,
    text: &str,
    ctx: &PolicyContext<'_>,
) -> Result<(Vec<Grant>, Vec<Approvers>), String> {
    let file: PolicyFile = toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())?;
    let grants = file
        .grant
        .into_iter()
        .map(|g| {
            let name = g.name.clone();
            validate(g, path, ctx).map_err(|e| format!("grant `{name}`: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let approvers = file
        .approvers
        .into_iter()
        .map(|(name, raw)| super::approvers::validate(name, raw, path, ctx.issuers))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((grants, approvers))
}

pub(super) fn validate(g: GrantFile, path: &Path, ctx: &PolicyContext<'_>) -> Result<Grant, String> {
    check_references(&g, ctx)?;
    let (packages, actions) = packages_and_actions(&g)?;
    let dist_tags = dist_tags(g.dist_tags.as_deref(), actions)?;
    let ttl = match &g.ttl {
        Some(t) => parse_duration(t).map_err(|e| format!("`ttl`: {e}"))?,
        None => ctx.default_ttl,
    };
    if ttl.is_zero() {
        return Err("`ttl` must be more than zero".into());
    }
    if g.max_uses == Some(0) {
        return Err("`max_uses` must be at least 1".into());
    }
    let publish = publish_mode(g.publish.as_deref(), actions)?;
    let rate = g.rate.as_deref().map(Rate::parse).transpose().map_err(|e| format!("`rate`: {e}"))?;
    if let Some(n) = g.notify.iter().find(|n| !ctx.notify.contains(&n.as_str())) {
        let configured = ctx.notify.join(", ");
        return Err(format!("`notify`: `{n}` is not a configured `[notify.NAME]` (configured: {configured})"));
    }
    let (versions, prerelease_only, create) = publish_rules(&g, actions)?;
    if let Some(limits) = ctx.credential_limits.iter().find(|c| c.name == g.credential) {
        within_credential(&packages, actions, publish, limits)?;
    }
    if g.claims.is_empty() {
        return Err("`claims` may not be empty: a grant without claims admits every identity the issuer signs \
             (on a public CI, every repository)"
            .into());
    }
    if g.hold.is_some() && !actions.iter().any(ActionKind::is_write) {
        return Err("`hold` applies to writes, which `actions` does not list".into());
    }
    Ok(Grant {
        name: g.name.into(),
        issuer: g.issuer,
        packages,
        actions,
        dist_tags,
        credential: g.credential,
        ttl: ttl.min(ctx.max_ttl),
        max_uses: g.max_uses,
        claims: g.claims.into_iter().collect(),
        publish,
        rate,
        notify: g.notify,
        versions,
        prerelease_only,
        create,
        hold: g.hold,
        file: path.to_owned(),
    })
}

/// The grant's name, and the issuer and credential it names, which the config must define.
fn check_references(g: &GrantFile, ctx: &PolicyContext<'_>) -> Result<(), String> {
    if g.name.is_empty() || g.name.len() > 128 || g.name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("`name` must be 1-128 characters without spaces".into());
    }
    if !ctx.issuers.contains(&g.issuer.as_str()) {
        let configured = ctx.issuers.join(", ");
        return Err(format!("`issuer`: `{}` is not a configured issuer (configured: {configured})", g.issuer));
    }
    if !ctx.credentials.contains(&g.credential.as_str()) {
        let configured = ctx.credentials.join(", ");
        return Err(format!(
            "`credential`: `{}` is not a configured credential (configured: {configured})",
            g.credential
        ));
    }
    Ok(())
}

fn packages_and_actions(g: &GrantFile) -> Result<(Vec<Glob>, ActionSet), String> {
    if g.packages.is_empty() {
        return Err("`packages` may not be empty".into());
    }
    let packages = g
        .packages
        .iter()
        .map(|p| package_pattern(p).map_err(|e| format!("`packages`: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    if g.actions.is_empty() {
        return Err("`actions` may not be empty".into());
    }
    let mut actions = ActionSet::default();
    for a in &g.actions {
        let kind = ActionKind::parse(a).ok_or_else(|| {
            let known: Vec<_> = ActionKind::ALL.iter().map(|a| a.as_str()).collect();
            format!("`actions`: unknown action `{a}` (expected one of {})", known.join(", "))
        })?;
        actions.insert(kind);
    }
    Ok((packages, actions))
}

fn dist_tags(tags: Option<&[String]>, actions: ActionSet) -> Result<Option<Vec<Glob>>, String> {
    let Some(tags) = tags else { return Ok(None) };
    let tagged = [ActionKind::Publish, ActionKind::StagePublish, ActionKind::DistTag];
    if !tagged.iter().any(|a| actions.contains(*a)) {
        return Err("`dist_tags` applies only to publish, stage-publish and dist-tag".into());
    }
    tags.iter().map(|t| Glob::new(t).map_err(|e| format!("`dist_tags`: {e}"))).collect::<Result<Vec<_>, _>>().map(Some)
}

fn publish_mode(publish: Option<&str>, actions: ActionSet) -> Result<PublishMode, String> {
    let mode = match publish {
        None | Some("direct") => PublishMode::Direct,
        Some("stage") => PublishMode::Stage,
        Some(other) => return Err(format!("`publish`: `{other}` must be \"direct\" or \"stage\"")),
    };
    if mode == PublishMode::Stage && !actions.contains(ActionKind::Publish) {
        return Err("`publish = \"stage\"` applies to the publish action, which `actions` does not list".into());
    }
    Ok(mode)
}

/// `versions`, `prerelease_only` and `create`, which apply to a grant that publishes.
fn publish_rules(g: &GrantFile, actions: ActionSet) -> Result<(Option<VersionRange>, bool, bool), String> {
    let publishes = actions.contains(ActionKind::Publish) || actions.contains(ActionKind::StagePublish);
    let only_publishes =
        |key: &str| format!("`{key}` applies to publish and stage-publish, which `actions` does not list");
    let versions = match &g.versions {
        None => None,
        Some(_) if !publishes => return Err(only_publishes("versions")),
        Some(text) => Some(VersionRange::parse(text).map_err(|e| format!("`versions`: {e}"))?),
    };
    let prerelease_only = g.prerelease_only.unwrap_or(false);
    if prerelease_only && !publishes {
        return Err(only_publishes("prerelease_only"));
    }
    let create = g.create.unwrap_or(false);
    if create && !publishes {
        return Err(only_publishes("create"));
    }
    Ok((versions, prerelease_only, create))
}

/// A grant may not reach packages its credential's token cannot (when the credential names its
/// `packages`), publish directly with a token that may only stage, or write with a read-only one.
fn within_credential(
    packages: &[Glob],
    actions: ActionSet,
    publish: PublishMode,
    cred: &CredentialLimits<'_>,
) -> Result<(), String> {
    if !cred.packages.is_empty() {
        if let Some(wider) = packages.iter().find(|p| !cred.packages.iter().any(|c| c.covers(p))) {
            let theirs: Vec<&str> = cred.packages.iter().map(Glob::as_str).collect();
            return Err(format!(
                "`packages`: `{}` reaches beyond credential `{}`'s packages ({})",
                wider.as_str(),
                cred.name,
                theirs.join(", ")
            ));
        }
    }
    let writes = actions.iter().any(|a| a != ActionKind::Read);
    match cred.publish {
        Capability::ReadOnly if writes => Err(format!(
            "`actions`: credential `{}` is read-only (`publish = \"read-only\"`): grant only `read`",
            cred.name
        )),
        Capability::StageOnly if actions.contains(ActionKind::Publish) && publish == PublishMode::Direct => Err(format!(
            "`publish`: credential `{}` may only stage (`publish = \"stage-only\"`): set `publish = \"stage\"` on the grant",
            cred.name
        )),
        _ => Ok(()),
    }
}

/// A package pattern must be a valid, non-legacy package name once `*` stands for a letter.
fn package_pattern(p: &str) -> Result<Glob, String> {
    let glob = Glob::new(p)?;
    match PackageName::parse(&p.replace('*', "x")) {
        Ok(name) if !name.is_legacy() => Ok(glob),
        Ok(_) => Err(format!("`{p}` has upper case or legacy characters")),
        Err(e) => Err(format!("`{p}` is not a package name or pattern: {e}")),
    }
}
