//! `phantom policy trust`: the `npm trust ...` commands that would configure npm's own trusted
//! publishing for the grants npm could serve itself, and, as comments, why it cannot serve the
//! others. The commands are the npm CLI's own (`npm trust github|gitlab|circleci`, npm 11):
//! one package per command, `--allow-stage-publish` where the grant stages.

use super::presets::Preset;
use super::{ClaimMatcher, Grant, PublishMode};
use crate::npm::ActionKind;

/// A shell script: commands, and `#` comments for what npm cannot take over.
pub fn trust_script(grants: &[&Grant], preset_of: &dyn Fn(&str) -> Option<Preset>) -> String {
    let mut out = String::from(
        "# npm's own trusted publishing for the grants it could serve (review, then run; each asks to confirm).\n\
         # The broker keeps serving everything else: dist-tags, deprecations, agents, other CI vendors.\n",
    );
    for g in grants {
        out.push('\n');
        out.push_str(&format!("# grant `{}`\n", g.name));
        out.push_str(&for_grant(g, preset_of(&g.issuer)));
    }
    out
}

fn exact<'g>(g: &'g Grant, claim: &str) -> Option<&'g str> {
    match g.claims.iter().find(|(k, _)| k == claim).map(|(_, m)| m) {
        Some(ClaimMatcher::Exact(v)) => Some(v),
        _ => None,
    }
}

fn for_grant(g: &Grant, preset: Option<Preset>) -> String {
    let publishes = g.actions.contains(ActionKind::Publish) || g.actions.contains(ActionKind::StagePublish);
    if !publishes {
        return "# not for npm: it grants no publish (npm's trusted publishing covers npm publish only)\n".into();
    }
    let Some(preset) = preset else {
        return "# not for npm: its issuer has no preset, and npm trusts only GitHub Actions, GitLab CI/CD and CircleCI\n".into();
    };
    let flags: Result<Vec<String>, String> = match preset {
        Preset::Github => github(g),
        Preset::Gitlab => gitlab(g),
        Preset::Circleci => circleci(g),
        Preset::Buildkite | Preset::Kubernetes => {
            Err(format!("npm trusts only GitHub Actions, GitLab CI/CD and CircleCI, not {}", preset.name()))
        }
    };
    let flags = match flags {
        Ok(f) => f,
        Err(why) => return format!("# not for npm: {why}\n"),
    };
    let allow = if g.publish == PublishMode::Stage { "--allow-stage-publish" } else { "--allow-publish" };
    let mut out = String::new();
    let others: Vec<&str> = g
        .actions
        .iter()
        .filter(|a| *a != ActionKind::Publish && *a != ActionKind::Read)
        .map(ActionKind::as_str)
        .collect();
    if !others.is_empty() {
        out.push_str(&format!(
            "# (its other actions stay with the broker: {}; npm's trusted publishing covers publish only)\n",
            others.join(", ")
        ));
    }
    for p in &g.packages {
        if p.is_literal() {
            out.push_str(&format!("npm trust {} {} {} {allow}\n", preset.name(), p.as_str(), flags.join(" ")));
        } else {
            out.push_str(&format!(
                "# {}: npm trusts one package per command: run the line above for each package it covers\n",
                p.as_str()
            ));
        }
    }
    out
}

fn github(g: &Grant) -> Result<Vec<String>, String> {
    if exact(g, "runner_environment") != Some("github-hosted") {
        return Err("npm trusts only GitHub-hosted runners: pin runner_environment = \"github-hosted\" first".into());
    }
    let repository =
        exact(g, "repository").ok_or("npm names the repository: pin `repository` (owner/repo) as well as its id")?;
    let workflow = exact(g, "job_workflow_ref").ok_or("npm names the workflow file: pin `job_workflow_ref` exactly")?;
    // `owner/repo/.github/workflows/release.yml@refs/heads/main` -> `release.yml`.
    let file = workflow
        .split('@')
        .next()
        .and_then(|p| p.rsplit('/').next())
        .filter(|f| !f.is_empty())
        .ok_or("`job_workflow_ref` names no file")?;
    let mut flags = vec![format!("--repository {repository}"), format!("--file {file}")];
    if let Some(env) = exact(g, "environment") {
        flags.push(format!("--environment {env}"));
    }
    Ok(flags)
}

fn gitlab(g: &Grant) -> Result<Vec<String>, String> {
    if exact(g, "runner_environment") != Some("gitlab-hosted") {
        return Err("npm trusts only GitLab-hosted runners: pin runner_environment = \"gitlab-hosted\" first".into());
    }
    let project = exact(g, "project_path")
        .ok_or("npm names the project: pin `project_path` (group/project) as well as its id")?;
    // `gitlab.example.com/group/project//.gitlab-ci.yml@refs/heads/main` -> `.gitlab-ci.yml`.
    let file = exact(g, "ci_config_ref_uri")
        .and_then(|u| u.split_once("//").map(|(_, f)| f.split('@').next().unwrap_or(f)))
        .unwrap_or(".gitlab-ci.yml");
    let mut flags = vec![format!("--project {project}"), format!("--file {file}")];
    if let Some(env) = exact(g, "environment") {
        flags.push(format!("--environment {env}"));
    }
    Ok(flags)
}

fn circleci(g: &Grant) -> Result<Vec<String>, String> {
    let need = |claim: &str| exact(g, claim).ok_or(format!("npm names it: pin `{claim}` exactly"));
    let project = need("oidc.circleci.com/project-id")?;
    let definition = need("oidc.circleci.com/pipeline-definition-id")?;
    let origin = need("oidc.circleci.com/vcs-origin")?;
    // `sub` is `org/<org id>/project/<project id>/user/<user id>`.
    let org = exact(g, "oidc.circleci.com/org-id")
        .or_else(|| exact(g, "sub").and_then(|s| s.strip_prefix("org/")))
        .and_then(|s| s.split('/').next())
        .or_else(|| exact(g, "aud"))
        .ok_or("npm names the organisation: pin `oidc.circleci.com/org-id`, `sub` (org/<id>/...) or `aud`")?;
    Ok(vec![
        format!("--org-id {org}"),
        format!("--project-id {project}"),
        format!("--pipeline-definition-id {definition}"),
        format!("--vcs-origin {origin}"),
    ])
}
