//! What each CI vendor's ID tokens carry, for `[issuer.NAME] preset = "..."`: the issuer URL
//! where it is fixed, the claims the vendor sends, which of them are immutable ids and which
//! mutable names, and the claims the vendor-specific lints read.
//!
//! The claim lists come from each vendor's documentation:
//! - GitHub Actions: "OpenID Connect reference", docs.github.com/en/actions/reference/security/oidc
//! - GitLab CI/CD: "OpenID Connect (OIDC) Authentication Using ID Tokens", token payload,
//!   docs.gitlab.com/ci/secrets/id_token_authentication (and the `job_project_*` claims of
//!   gitlab-org/gitlab!202241, added after fork merge-request pipelines got the fork's ids)
//! - CircleCI: "Using OpenID Connect tokens in jobs", circleci.com/docs/openid-connect-tokens (the
//!   pipeline definition id is also what `npm trust circleci --pipeline-definition-id` pins)
//! - Buildkite: "OIDC with Buildkite", buildkite.com/docs/pipelines/security/oidc, and the agent's
//!   `oidc request-token` reference, buildkite.com/docs/agent/v3/cli-oidc
//! - Kubernetes: projected service account tokens (`sub` = `system:serviceaccount:NS:NAME`, the
//!   rest nested under `kubernetes.io`), kubernetes.io/docs/reference/access-authn-authz/service-accounts-admin

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    Github,
    Gitlab,
    Circleci,
    Buildkite,
    Kubernetes,
}

/// The registered claims every vendor sends.
const JWT: &[&str] = &["iss", "sub", "aud", "exp", "iat", "nbf", "jti"];

impl Preset {
    pub const ALL: [Preset; 5] =
        [Preset::Github, Preset::Gitlab, Preset::Circleci, Preset::Buildkite, Preset::Kubernetes];

    pub fn parse(s: &str) -> Option<Preset> {
        Preset::ALL.into_iter().find(|p| p.name() == s)
    }

    pub fn name(self) -> &'static str {
        match self {
            Preset::Github => "github",
            Preset::Gitlab => "gitlab",
            Preset::Circleci => "circleci",
            Preset::Buildkite => "buildkite",
            Preset::Kubernetes => "kubernetes",
        }
    }

    /// The vendor, as people name it.
    pub fn vendor(self) -> &'static str {
        match self {
            Preset::Github => "GitHub Actions",
            Preset::Gitlab => "GitLab.com",
            Preset::Circleci => "CircleCI",
            Preset::Buildkite => "Buildkite",
            Preset::Kubernetes => "Kubernetes",
        }
    }

    /// The vendor whose own fixed issuer `url` is: GitHub Actions', GitLab.com's, Buildkite's,
    /// or CircleCI's `https://oidc.circleci.com/org/<organisation id>`. An issuer written as
    /// that URL is that vendor's, whether or not its config says `preset`. (A self-managed
    /// GitLab, GitHub Enterprise Server or a cluster has a URL of its own: it needs `preset`.)
    pub(crate) fn recognise(url: &str) -> Option<Preset> {
        let url = url.trim_end_matches('/');
        let (scheme, rest) = url.split_once("://")?;
        if !scheme.eq_ignore_ascii_case("https") {
            return None;
        }
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        let host = host.strip_suffix(":443").unwrap_or(host).to_ascii_lowercase();
        match (host.as_str(), path) {
            ("token.actions.githubusercontent.com", "") => Some(Preset::Github),
            ("gitlab.com", "") => Some(Preset::Gitlab),
            ("agent.buildkite.com", "") => Some(Preset::Buildkite),
            ("oidc.circleci.com", org) => {
                let id = org.strip_prefix("org/")?;
                let ok = !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
                ok.then_some(Preset::Circleci)
            }
            _ => None,
        }
    }

    /// The issuer URL, where the vendor has one for everybody. (GitLab's is its instance's,
    /// CircleCI's carries the organisation's id, a cluster's is its own.)
    pub fn issuer(self) -> Option<&'static str> {
        match self {
            Preset::Github => Some("https://token.actions.githubusercontent.com"),
            Preset::Buildkite => Some("https://agent.buildkite.com"),
            Preset::Gitlab | Preset::Circleci | Preset::Kubernetes => None,
        }
    }

    /// The claims the vendor's tokens carry, besides the registered ones.
    fn own_claims(self) -> &'static [&'static str] {
        match self {
            Preset::Github => GITHUB_CLAIMS,
            Preset::Gitlab => GITLAB_CLAIMS,
            Preset::Circleci => CIRCLECI_CLAIMS,
            Preset::Buildkite => BUILDKITE_CLAIMS,
            Preset::Kubernetes => KUBERNETES_CLAIMS,
        }
    }

    pub fn sends(self, claim: &str) -> bool {
        JWT.contains(&claim) || self.own_claims().contains(&claim)
    }

    /// Claims that name the identity by an id that is never reused: a grant should pin one.
    pub(crate) fn id_claims(self) -> &'static [&'static str] {
        match self {
            Preset::Github => &["repository_id", "repository_owner_id"],
            Preset::Gitlab => &["project_id", "namespace_id", "job_project_id", "job_namespace_id"],
            Preset::Circleci => &["oidc.circleci.com/project-id"],
            Preset::Buildkite => &["organization_id", "pipeline_id"],
            // A service account is named by `sub`; its uid is nested, where grants cannot reach.
            Preset::Kubernetes => &["sub"],
        }
    }

    /// Claims that name the identity by a name someone else can take once it is freed.
    pub(crate) fn name_claims(self) -> &'static [&'static str] {
        match self {
            Preset::Github => &["repository", "repository_owner", "sub", "actor"],
            Preset::Gitlab => {
                &["project_path", "namespace_path", "sub", "user_login", "job_project_path", "job_namespace_path"]
            }
            Preset::Circleci => &["sub"],
            Preset::Buildkite => &["organization_slug", "pipeline_slug", "sub"],
            Preset::Kubernetes => &[],
        }
    }
}

// Each vendor's own claims, from its documentation (see the top of this file).
const GITHUB_CLAIMS: &[&str] = &[
    "actor",
    "actor_id",
    "base_ref",
    "check_run_id",
    "enterprise",
    "enterprise_id",
    "environment",
    "event_name",
    "head_ref",
    "job_workflow_ref",
    "job_workflow_sha",
    "ref",
    "ref_protected",
    "ref_type",
    "repository",
    "repository_id",
    "repository_owner",
    "repository_owner_id",
    "repository_visibility",
    "run_attempt",
    "run_id",
    "run_number",
    "runner_environment",
    "sha",
    "workflow",
    "workflow_ref",
    "workflow_sha",
];

const GITLAB_CLAIMS: &[&str] = &[
    "namespace_id",
    "namespace_path",
    "project_id",
    "project_path",
    "user_id",
    "user_login",
    "user_email",
    "user_access_level",
    "user_identities",
    "pipeline_id",
    "pipeline_source",
    "job_id",
    "ref",
    "ref_type",
    "ref_path",
    "ref_protected",
    "groups_direct",
    "environment",
    "environment_protected",
    "deployment_tier",
    "environment_action",
    "runner_id",
    "runner_environment",
    "sha",
    "project_visibility",
    "ci_config_ref_uri",
    "ci_config_sha",
    "job_project_id",
    "job_project_path",
    "job_namespace_id",
    "job_namespace_path",
];

const CIRCLECI_CLAIMS: &[&str] = &[
    "oidc.circleci.com/project-id",
    "oidc.circleci.com/context-ids",
    "oidc.circleci.com/vcs-origin",
    "oidc.circleci.com/vcs-ref",
    "oidc.circleci.com/ssh-rerun",
    // Newer tokens; npm's trusted publishing matches these two.
    "oidc.circleci.com/org-id",
    "oidc.circleci.com/pipeline-definition-id",
];

const BUILDKITE_CLAIMS: &[&str] = &[
    "organization_slug",
    "organization_id",
    "pipeline_slug",
    "pipeline_id",
    "build_number",
    "build_branch",
    "build_tag",
    "build_commit",
    "build_source",
    "step_key",
    "job_id",
    "agent_id",
    "cluster_id",
    "cluster_name",
    "queue_id",
    "queue_key",
];

const KUBERNETES_CLAIMS: &[&str] = &["kubernetes.io"];

/// Claims that say who the caller is, on any issuer: a glob on one of them admits whoever can
/// get a matching name. (Not `job_workflow_ref`: a tag-triggered workflow's ends in the tag,
/// which a glob after a literal repository and file rightly matches.)
pub(crate) const IDENTITY_CLAIMS: &[&str] = &[
    "sub",
    "repository",
    "repository_id",
    "repository_owner",
    "repository_owner_id",
    "project_path",
    "project_id",
    "namespace_path",
    "namespace_id",
    "organization_slug",
    "organization_id",
    "pipeline_slug",
    "pipeline_id",
    "oidc.circleci.com/project-id",
    "actor",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vendors_fixed_issuers_are_recognised() {
        for (url, want) in [
            ("https://token.actions.githubusercontent.com", Some(Preset::Github)),
            ("https://Token.Actions.GitHubUserContent.com/", Some(Preset::Github)),
            ("https://gitlab.com", Some(Preset::Gitlab)),
            ("https://agent.buildkite.com:443", Some(Preset::Buildkite)),
            ("https://oidc.circleci.com/org/6f1a2b3c-0000-4000-8000-123456789abc", Some(Preset::Circleci)),
            ("https://oidc.circleci.com", None),
            ("https://oidc.circleci.com/org/", None),
            ("http://token.actions.githubusercontent.com", None),
            ("https://token.actions.githubusercontent.com/enterprise", None),
            ("https://gitlab.example.com", None),
            ("https://ghes.example.com/_services/token", None),
        ] {
            assert_eq!(Preset::recognise(url), want, "{url}");
        }
        for p in Preset::ALL {
            if let Some(url) = p.issuer() {
                assert_eq!(Preset::recognise(url), Some(p), "a preset's own URL is not recognised as its");
            }
        }
    }
}
