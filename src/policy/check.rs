//! `phantom policy check`: every error the broker would refuse a policy for, and the lints that
//! catch the policy mistakes comparable systems were broken through (an identity pinned by a
//! recyclable name, a pull-request workflow allowed to write, a glob that matched more than
//! meant, a self-hosted runner treated like a hosted one), each at its `file:line:col` with a
//! stable rule id and a one-line fix.

use super::grant::{self, GrantFile, PolicyContext};
use super::presets::{Preset, IDENTITY_CLAIMS};
use super::{ClaimMatcher, Grant};
use crate::npm::ActionKind;
use crate::support::units::parse_duration;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
    /// Information (what the check recognised); never fails the check.
    Note,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    pub severity: Severity,
    pub rule: &'static str,
    pub message: String,
    pub fix: &'static str,
}

/// Every rule, with its severity and fix: the list `policy check` can report.
pub(crate) const RULES: &[(&str, Severity, &str)] = &[
    ("toml-syntax", Severity::Error, "fix the TOML syntax at this position"),
    ("unknown-key", Severity::Error, "remove the key, or correct its spelling (see docs/policy.md)"),
    ("invalid-value", Severity::Error, "give the key a value of the kind docs/policy.md shows"),
    ("unknown-issuer", Severity::Error, "name an `[issuer.NAME]` of phantom.toml"),
    ("unknown-credential", Severity::Error, "name a `[credential.NAME]` of phantom.toml"),
    (
        "beyond-credential",
        Severity::Error,
        "narrow `packages` to the credential's, or give the grant a credential that covers them",
    ),
    ("stage-only-credential", Severity::Error, "set publish = \"stage\" on the grant: its credential may only stage"),
    ("read-only-credential", Severity::Error, "grant only `read`, or use a credential that can publish"),
    ("empty-claims", Severity::Error, "pin the caller in [grant.claims] (repository_id, repository_owner_id, ...)"),
    ("duplicate-grant", Severity::Error, "give each grant a name of its own"),
    ("unknown-approvers", Severity::Error, "name an `[approvers.NAME]` of the policy files in `hold`"),
    ("duplicate-approvers", Severity::Error, "give each [approvers.NAME] a name of its own, in one file"),
    (
        "mutable-identity",
        Severity::Warning,
        "pin the identity by an id the vendor never reuses (e.g. repository_id, repository_owner_id)",
    ),
    ("pull-request-writes", Severity::Warning, "remove pull_request events: code from a pull request must not write"),
    (
        "unpinned-event",
        Severity::Warning,
        "pin event_name (e.g. [\"push\", \"workflow_dispatch\"]) so that pull-request runs cannot write",
    ),
    ("self-hosted-publish", Severity::Warning, "pin runner_environment = \"github-hosted\" (or \"gitlab-hosted\")"),
    ("unpinned-workflow", Severity::Warning, "pin job_workflow_ref to the workflow file (and ref) that publishes"),
    ("unprotected-ref", Severity::Warning, "pin ref_protected = \"true\": only protected branches and tags may write"),
    ("wildcard-package", Severity::Warning, "name the packages, or a scope such as \"@acme/*\""),
    ("long-ttl", Severity::Warning, "keep ttl at 1h or less: a phantom should outlive one job only"),
    ("no-max-uses", Severity::Warning, "set max_uses to the writes one job makes (e.g. 3)"),
    ("no-rate", Severity::Warning, "set rate (e.g. \"5/1h\") so that a stolen phantom publishes once, not 84 times"),
    (
        "glob-identity-claim",
        Severity::Warning,
        "match identity claims exactly; globs there admit whoever takes a matching name",
    ),
    (
        "unknown-claim",
        Severity::Warning,
        "remove the claim or correct its name: this issuer never sends it, so the grant never matches",
    ),
    (
        "unsatisfiable-versions",
        Severity::Warning,
        "write an npm range some version satisfies (a space is AND, `||` is OR; a prerelease needs a range that names one)",
    ),
    (
        "create-under-glob",
        Severity::Warning,
        "name the packages the grant may create exactly, or create them by hand and drop `create`",
    ),
    (
        "recognised-issuer",
        Severity::Note,
        "nothing to fix; `preset = \"...\"` in the issuer's table says the same in the file",
    ),
];

fn rule(id: &str) -> (&'static str, Severity, &'static str) {
    *RULES.iter().find(|(r, ..)| *r == id).expect("every rule used is listed")
}

/// Checks every `*.toml` file in `dir` (in name order) against `ctx`; `presets` says which
/// configured issuers have a preset, for the vendor-specific lints.
pub fn check(dir: &Path, ctx: &PolicyContext<'_>, presets: &[(&str, Option<Preset>)]) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => {
            entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "toml")).collect()
        }
        Err(e) => {
            out.push(finding(dir, 1, 1, "invalid-value", format!("cannot read the policy directory: {e}")));
            return out;
        }
    };
    files.sort();
    let mut seen = Seen::default();
    for file in files {
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) => {
                out.push(finding(&file, 1, 1, "invalid-value", format!("cannot read: {e}")));
                continue;
            }
        };
        check_file(&file, &text, ctx, presets, &mut seen, &mut out);
    }
    // A grant's `hold` may name approvers of any file.
    for (name, missing) in seen.holds {
        if !seen.approvers.contains(&name) {
            out.push(missing);
        }
    }
    // In reading order: by file, line and column (then rule, for findings at one place).
    out.sort_by(|a, b| (&a.file, a.line, a.col, a.rule).cmp(&(&b.file, b.line, b.col, b.rule)));
    out
}

/// The note that an issuer was recognised by its URL as a vendor's: at its `[issuer.NAME]`
/// table in the config file (`config_text`).
pub(crate) fn recognised_issuer(config: &Path, config_text: &str, name: &str, url: &str, preset: Preset) -> Finding {
    let header = [format!("[issuer.{name}]"), format!("[issuer.\"{name}\"]")];
    let line = config_text.lines().position(|l| header.iter().any(|h| l.trim() == h)).map_or(1, |n| n + 1);
    let message = format!(
        "issuer `{name}`: {url} is the issuer of {}: its grants get the `{}` preset's claims, lints and `policy trust`",
        preset.vendor(),
        preset.name()
    );
    finding(config, line, 1, "recognised-issuer", message)
}

fn finding(file: &Path, line: usize, col: usize, id: &str, message: String) -> Finding {
    let (rule, severity, fix) = rule(id);
    Finding { file: file.to_owned(), line, col, severity, rule, message, fix }
}

/// What the files read so far define, for the checks across files.
#[derive(Default)]
struct Seen {
    grants: Vec<(String, PathBuf)>,
    approvers: Vec<String>,
    /// Each grant's `hold`, and the finding if no file defines those approvers.
    holds: Vec<(String, Finding)>,
}

fn check_file(
    file: &Path,
    text: &str,
    ctx: &PolicyContext<'_>,
    presets: &[(&str, Option<Preset>)],
    seen: &mut Seen,
    out: &mut Vec<Finding>,
) {
    let doc: toml::Table = match toml::from_str(text) {
        Ok(d) => d,
        Err(e) => {
            let (line, col) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
            out.push(finding(file, line, col, "toml-syntax", e.message().trim().to_owned()));
            return;
        }
    };
    for key in doc.keys().filter(|k| *k != "grant" && *k != "approvers") {
        let (line, col) = top_level(text, key);
        out.push(finding(
            file,
            line,
            col,
            "unknown-key",
            format!("unknown key `{key}`: a policy file holds [[grant]] and [approvers.NAME] tables"),
        ));
    }
    if let Some(approvers) = doc.get("approvers") {
        check_approvers(file, text, approvers, ctx, seen, out);
    }
    let grants = match doc.get("grant") {
        None => return,
        Some(toml::Value::Array(a)) => a.clone(),
        Some(_) => {
            let (line, col) = top_level(text, "grant");
            out.push(finding(file, line, col, "invalid-value", "`grant` must be [[grant]] tables".into()));
            return;
        }
    };
    for (i, value) in grants.into_iter().enumerate() {
        let at = |key: Option<&str>, claim: Option<&str>| locate(text, i, key, claim);
        let label = match value.get("name").and_then(toml::Value::as_str) {
            Some(name) => format!("grant `{name}`"),
            None => format!("grant {}", i + 1),
        };
        let raw = match GrantFile::deserialize(value) {
            Ok(g) => g,
            Err(e) => {
                let message = e.message().to_owned();
                let key = between_backticks(&message);
                let id = if message.starts_with("unknown field") { "unknown-key" } else { "invalid-value" };
                let (line, col) = at(key.as_deref(), None);
                out.push(finding(file, line, col, id, format!("{label}: {message}")));
                continue;
            }
        };
        let name = raw.name.clone();
        let checked = match grant::validate(raw.clone(), file, ctx) {
            Ok(g) => g,
            Err(message) => {
                let key = between_backticks(&message);
                let id = error_rule(&message, key.as_deref());
                let (line, col) = at(key.as_deref().filter(|k| *k != "claims"), None);
                out.push(finding(file, line, col, id, format!("grant `{name}`: {message}")));
                continue;
            }
        };
        if let Some(hold) = &checked.hold {
            let (line, col) = at(Some("hold"), None);
            let message = format!("grant `{name}`: `hold`: no policy file has `[approvers.{hold}]`");
            seen.holds.push((hold.clone(), finding(file, line, col, "unknown-approvers", message)));
        }
        if let Some((_, first)) = seen.grants.iter().find(|(n, _)| *n == name) {
            let (line, col) = at(Some("name"), None);
            let message = format!("grant `{name}` is also defined in {}", first.display());
            out.push(finding(file, line, col, "duplicate-grant", message));
            continue;
        }
        seen.grants.push((name, file.to_owned()));
        let preset = presets.iter().find(|(n, _)| *n == checked.issuer).and_then(|(_, p)| *p);
        for (id, key, claim, message) in lints(&raw, &checked, preset) {
            let (line, col) = at(key, claim.as_deref());
            out.push(finding(file, line, col, id, format!("grant `{}`: {message}", checked.name)));
        }
    }
}

/// Each `[approvers.NAME]`: valid, and defined once across the files.
fn check_approvers(
    file: &Path,
    text: &str,
    approvers: &toml::Value,
    ctx: &PolicyContext<'_>,
    seen: &mut Seen,
    out: &mut Vec<Finding>,
) {
    let Some(table) = approvers.as_table() else {
        let (line, col) = top_level(text, "approvers");
        out.push(finding(file, line, col, "invalid-value", "`approvers` must be [approvers.NAME] tables".into()));
        return;
    };
    for (name, value) in table {
        let header = [format!("[approvers.{name}]"), format!("[approvers.\"{name}\"]")];
        let line = text.lines().position(|l| header.iter().any(|h| l.trim() == h)).map_or(1, |n| n + 1);
        let checked = super::approvers::ApproversFile::deserialize(value.clone())
            .map_err(|e| format!("approvers `{name}`: {}", e.message()))
            .and_then(|raw| super::approvers::validate(name.clone(), raw, file, ctx.issuers));
        match checked {
            Err(message) => {
                let id = if message.contains("unknown field") { "unknown-key" } else { "invalid-value" };
                out.push(finding(file, line, 1, id, message));
            }
            Ok(_) if seen.approvers.contains(name) => {
                let message = format!("`[approvers.{name}]` is defined in more than one file");
                out.push(finding(file, line, 1, "duplicate-approvers", message));
            }
            Ok(_) => seen.approvers.push(name.clone()),
        }
    }
}

fn error_rule(message: &str, key: Option<&str>) -> &'static str {
    if message.contains("reaches beyond credential") {
        "beyond-credential"
    } else if message.contains("may only stage") {
        "stage-only-credential"
    } else if message.contains("is read-only") {
        "read-only-credential"
    } else {
        match key {
            Some("issuer") => "unknown-issuer",
            Some("credential") => "unknown-credential",
            Some("claims") => "empty-claims",
            _ => "invalid-value",
        }
    }
}

type Lint = (&'static str, Option<&'static str>, Option<String>, String);

/// The lints of one valid grant: `(rule, key, claim, message)`; `key` and `claim` say where.
fn lints(raw: &GrantFile, g: &Grant, preset: Option<Preset>) -> Vec<Lint> {
    let mut out: Vec<Lint> = Vec::new();
    if let Some(p) = preset {
        identity_lints(g, p, &mut out);
        if writes(g) {
            match p {
                Preset::Github => github_write_lints(g, &mut out),
                Preset::Gitlab => gitlab_write_lints(g, &mut out),
                _ => {}
            }
        }
        hosted_lint(g, p, &mut out);
    }
    scope_lints(raw, g, &mut out);
    version_lints(g, &mut out);
    for (name, m) in &g.claims {
        if matches!(m, ClaimMatcher::Glob(_)) && IDENTITY_CLAIMS.contains(&name.as_str()) {
            let message = format!("identity claim `{name}` is matched by a glob");
            out.push(("glob-identity-claim", None, Some(name.clone()), message));
        }
    }
    out
}

fn writes(g: &Grant) -> bool {
    g.actions.iter().any(|a| a != ActionKind::Read)
}

fn publishes(g: &Grant) -> bool {
    g.actions.contains(ActionKind::Publish) || g.actions.contains(ActionKind::StagePublish)
}

fn claim<'g>(g: &'g Grant, name: &str) -> Option<&'g ClaimMatcher> {
    g.claims.iter().find(|(k, _)| k == name).map(|(_, m)| m)
}

/// The values a grant allows for a claim (a glob as its pattern).
fn values(g: &Grant, name: &str) -> Vec<String> {
    match claim(g, name) {
        Some(ClaimMatcher::Exact(v)) => vec![v.clone()],
        Some(ClaimMatcher::AnyOf(vs)) => vs.clone(),
        Some(ClaimMatcher::Glob(glob)) => vec![glob.as_str().to_owned()],
        None => Vec::new(),
    }
}

/// An identity pinned by no immutable id, and claims the vendor never sends.
fn identity_lints(g: &Grant, p: Preset, out: &mut Vec<Lint>) {
    if !p.id_claims().iter().any(|c| claim(g, c).is_some()) {
        let named: Vec<&str> = p.name_claims().iter().copied().filter(|c| claim(g, c).is_some()).collect();
        let by = if named.is_empty() {
            "nothing that names it".to_owned()
        } else {
            format!("names only ({})", named.join(", "))
        };
        let message = format!("the identity is pinned by {by}, no immutable id ({})", p.id_claims().join(", "));
        out.push(("mutable-identity", None, None, message));
    }
    for (name, _) in g.claims.iter().filter(|(name, _)| !p.sends(name)) {
        out.push(("unknown-claim", None, Some(name.clone()), format!("{} tokens never carry `{name}`", p.name())));
    }
}

fn github_write_lints(g: &Grant, out: &mut Vec<Lint>) {
    let events = values(g, "event_name");
    if let Some(e) = events.iter().find(|e| e.starts_with("pull_request")) {
        out.push(("pull-request-writes", None, Some("event_name".into()), format!("`{e}` runs may write")));
    } else if events.is_empty() {
        out.push(("unpinned-event", None, None, "any event may write, pull requests included".into()));
    }
    if claim(g, "job_workflow_ref").is_none() {
        let message = "any workflow of the repository may write (reusable ones included)".to_owned();
        out.push(("unpinned-workflow", None, None, message));
    }
}

fn gitlab_write_lints(g: &Grant, out: &mut Vec<Lint>) {
    if let Some(e) = values(g, "pipeline_source").iter().find(|e| e.contains("merge_request")) {
        let message = format!("`{e}` pipelines (forks' too) may write");
        out.push(("pull-request-writes", None, Some("pipeline_source".into()), message));
    }
    if values(g, "ref_protected") != ["true"] {
        out.push(("unprotected-ref", None, None, "unprotected branches (and fork pipelines) may write".into()));
    }
}

/// A publishing grant that admits self-hosted runners (GitHub and GitLab say which ran a job).
fn hosted_lint(g: &Grant, p: Preset, out: &mut Vec<Lint>) {
    let hosted = match p {
        Preset::Github => "github-hosted",
        Preset::Gitlab => "gitlab-hosted",
        _ => return,
    };
    if publishes(g) && values(g, "runner_environment") != [hosted] {
        let message = format!("jobs on self-hosted runners may publish (runner_environment is not \"{hosted}\")");
        out.push(("self-hosted-publish", None, None, message));
    }
}

/// How much a grant covers and for how long: every package, long phantoms, unbounded writes,
/// new packages under a glob.
fn scope_lints(raw: &GrantFile, g: &Grant, out: &mut Vec<Lint>) {
    if g.packages.iter().any(|p| p.as_str() == "*") {
        out.push(("wildcard-package", Some("packages"), None, "it covers every package (`*`)".into()));
    }
    if raw.ttl.as_deref().and_then(|t| parse_duration(t).ok()).is_some_and(|t| t > Duration::from_secs(3600)) {
        let message = format!("its phantoms live {} (over 1h)", raw.ttl.as_deref().unwrap_or_default());
        out.push(("long-ttl", Some("ttl"), None, message));
    }
    if writes(g) && g.max_uses.is_none() {
        out.push(("no-max-uses", None, None, "its phantoms write without a limit until they expire".into()));
    }
    if publishes(g) && g.rate.is_none() {
        out.push(("no-rate", None, None, "no rate bounds how often an identity publishes a package".into()));
    }
    if let Some(glob) = g.packages.iter().find(|p| !p.is_literal()).filter(|_| g.create) {
        let message =
            format!("it may create any package `{}` matches: a hijacked job could claim new names", glob.as_str());
        out.push(("create-under-glob", Some("create"), None, message));
    }
}

/// A `versions` range no version satisfies, or none a `prerelease_only` grant could publish.
fn version_lints(g: &Grant, out: &mut Vec<Lint>) {
    let Some(range) = &g.versions else { return };
    let why = if !range.is_satisfiable() {
        format!("no version satisfies `{}` as npm reads it (its comparators have nothing in common)", range.as_str())
    } else if g.prerelease_only && !range.admits_prereleases() {
        format!(
            "with prerelease_only, no version can be published: npm matches no prerelease against `{}`, which \
             names none (e.g. `>=1.2.0-0 <1.3.0` takes 1.2.0-beta.1)",
            range.as_str()
        )
    } else {
        return;
    };
    out.push(("unsatisfiable-versions", Some("versions"), None, why));
}

fn between_backticks(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    let inner = &message[start..start + len];
    Some(inner.split([' ', '=']).next().unwrap_or(inner).to_owned())
}

/// 1-based line and column of byte `offset`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}

/// A key's position among the lines that hold no table header (before the first `[[grant]]`).
fn top_level(text: &str, key: &str) -> (usize, usize) {
    for (n, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("[[grant]]") {
            break;
        }
        if key_of(line).is_some_and(|k| k == key) {
            return (n + 1, line.len() - line.trim_start().len() + 1);
        }
    }
    (1, 1)
}

/// Where grant number `index` (0-based) sets `key` (or, with `claim`, where its
/// `[grant.claims]` sets that claim); its `[[grant]]` header when neither is found.
fn locate(text: &str, index: usize, key: Option<&str>, claim: Option<&str>) -> (usize, usize) {
    let lines: Vec<&str> = text.lines().collect();
    let headers: Vec<usize> = (0..lines.len()).filter(|&n| lines[n].trim_start().starts_with("[[grant]]")).collect();
    let Some(&start) = headers.get(index) else { return (1, 1) };
    let end = headers.get(index + 1).copied().unwrap_or(lines.len());
    let mut in_claims = false;
    let mut fallback = (start + 1, lines[start].len() - lines[start].trim_start().len() + 1);
    for (n, line) in lines.iter().enumerate().take(end).skip(start + 1) {
        let trimmed = line.trim_start();
        let col = line.len() - trimmed.len() + 1;
        if trimmed.starts_with('[') {
            if !trimmed.starts_with("[grant.") {
                break;
            }
            in_claims = trimmed.starts_with("[grant.claims]");
            if in_claims && claim.is_some() {
                fallback = (n + 1, col);
            }
            continue;
        }
        let Some(k) = key_of(line) else { continue };
        let wanted = if in_claims { claim } else { key.filter(|_| claim.is_none()) };
        if wanted == Some(k.as_str()) {
            return (n + 1, col);
        }
        if !in_claims && claim.is_some() && k == "claims" {
            fallback = (n + 1, col);
        }
    }
    fallback
}

/// The key a `key = value` line sets (bare or quoted).
fn key_of(line: &str) -> Option<String> {
    let t = line.trim_start();
    if t.starts_with('#') || t.is_empty() {
        return None;
    }
    let (k, _) = t.split_once('=')?;
    Some(k.trim().trim_matches('"').to_owned())
}

/// `--format text`: `file:line:col: severity[rule]: message`, then the fix.
pub fn text(findings: &[Finding]) -> String {
    findings
        .iter()
        .map(|f| {
            let sev = match f.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
                Severity::Note => "note",
            };
            format!("{}:{}:{}: {sev}[{}]: {}\n  fix: {}\n", f.file.display(), f.line, f.col, f.rule, f.message, f.fix)
        })
        .collect()
}

/// `--format github`: workflow commands that annotate the policy pull request's lines.
pub fn github(findings: &[Finding]) -> String {
    // The data and the properties are escaped as the runner expects.
    let data = |s: &str| s.replace('%', "%25").replace('\r', "%0D").replace('\n', "%0A");
    let prop = |s: &str| data(s).replace(':', "%3A").replace(',', "%2C");
    findings
        .iter()
        .map(|f| {
            let level = match f.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
                Severity::Note => "notice",
            };
            format!(
                "::{level} file={},line={},col={},title={}::{} (fix: {})\n",
                prop(&f.file.display().to_string()),
                f.line,
                f.col,
                prop(f.rule),
                data(&f.message),
                data(f.fix)
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_point_at_the_key_or_the_claim() {
        let text = "# a policy\n[[grant]]\nname = \"a\"\n\n[[grant]]\nname = \"b\"\n  ttl = \"2h\"\n[grant.claims]\n\"oidc.circleci.com/project-id\" = \"x\"\nref = \"main\"\n";
        assert_eq!(locate(text, 0, Some("name"), None), (3, 1));
        assert_eq!(locate(text, 1, Some("ttl"), None), (7, 3));
        assert_eq!(locate(text, 1, None, Some("ref")), (10, 1));
        assert_eq!(locate(text, 1, None, Some("oidc.circleci.com/project-id")), (9, 1));
        assert_eq!(locate(text, 1, Some("versions"), None), (5, 1), "an absent key points at its grant");
        assert_eq!(locate(text, 1, None, Some("sub")), (8, 1), "an absent claim points at the claims table");
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(between_backticks("`publish = \"stage\"` applies"), Some("publish".into()));
    }

    #[test]
    fn github_annotations_escape_what_the_runner_reads() {
        let f = Finding {
            file: "p/a,b:c.toml".into(),
            line: 3,
            col: 1,
            severity: Severity::Warning,
            rule: "no-rate",
            message: "100% sure\nnext".into(),
            fix: "set rate",
        };
        assert_eq!(
            github(&[f]),
            "::warning file=p/a%2Cb%3Ac.toml,line=3,col=1,title=no-rate::100%25 sure%0Anext (fix: set rate)\n"
        );
    }
}
