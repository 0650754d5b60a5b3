//! `phantom policy check | trust | explain`: the policy files read as the broker reads them.

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use phantom_broker::config::Config;
use phantom_broker::npm::{ActionKind, PackageName};
use phantom_broker::policy::{self, check, Grant, Policy, PublishMode};
use phantom_broker::{audit, support::json};
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum CheckFormat {
    Text,
    Json,
    Github,
}

#[derive(Subcommand)]
pub(crate) enum PolicyCommand {
    /// Parse and validate the config and every policy file.
    Check {
        #[arg(long, default_value = "phantom.toml")]
        config: PathBuf,
        /// `text` (file:line:col: severity[rule]: message), `json`, or `github` (workflow
        /// annotations on the policy pull request's lines).
        #[arg(long, value_enum, default_value = "text")]
        format: CheckFormat,
        /// Fail on warnings too.
        #[arg(long)]
        deny_warnings: bool,
    },
    /// The `npm trust ...` commands that would configure npm's own trusted publishing for the
    /// grants npm could serve (GitHub, GitLab, CircleCI), and why not for the others.
    Trust {
        #[arg(long, default_value = "phantom.toml")]
        config: PathBuf,
    },
    /// Show, grant by grant, why an identity may or may not do an action on a package.
    Explain(ExplainArgs),
}

#[derive(clap::Args)]
pub(crate) struct ExplainArgs {
    #[arg(long, default_value = "phantom.toml")]
    config: PathBuf,
    /// A refused (or allowed) request's id, as `npm notice phantom: ... (request ID)` and the
    /// audit log show it: its identity, package, action and version come from the audit log.
    #[arg(long, conflicts_with_all = ["claims", "package", "action"])]
    request: Option<String>,
    /// The audit log to look the request up in (default: the config's `audit.path`).
    #[arg(long, requires = "request")]
    audit: Option<PathBuf>,
    /// A JSON file with the ID token's claims.
    #[arg(long, required_unless_present = "request")]
    claims: Option<PathBuf>,
    #[arg(long, required_unless_present = "request")]
    package: Option<String>,
    #[arg(long, required_unless_present = "request")]
    action: Option<String>,
    /// The version a publish would add (checked against `versions` and `prerelease_only`).
    #[arg(long)]
    version: Option<String>,
    /// The upstream does not have the package yet: the publish would create it (`create`).
    #[arg(long)]
    new_package: bool,
}

pub(crate) fn run(command: PolicyCommand) -> Result<()> {
    match command {
        PolicyCommand::Check { config, format, deny_warnings } => check(&config, format, deny_warnings),
        PolicyCommand::Trust { config } => trust(&config),
        PolicyCommand::Explain(args) => explain(args),
    }
}

fn load(path: &Path) -> Result<(Config, Policy)> {
    let config = Config::load(path)?;
    let policy = config.load_policy()?;
    Ok((config, policy))
}

fn check(config: &Path, format: CheckFormat, deny_warnings: bool) -> Result<()> {
    use check::Severity;
    let config = Config::load(config)?;
    let findings = config.check_policy();
    match format {
        CheckFormat::Text => print!("{}", check::text(&findings)),
        CheckFormat::Json => println!("{}", serde_json::to_string_pretty(&findings)?),
        CheckFormat::Github => print!("{}", check::github(&findings)),
    }
    let count = |s: Severity| findings.iter().filter(|f| f.severity == s).count();
    let (errors, warnings, notes) = (count(Severity::Error), count(Severity::Warning), count(Severity::Note));
    if format == CheckFormat::Text {
        // The same load as `serve`: its count of grants when it would start.
        let grants = config.load_policy().map(|p| p.len()).unwrap_or(0);
        let n = |count: usize, what: &str| format!("{count} {what}{}", if count == 1 { "" } else { "s" });
        let notes = if notes > 0 { format!(", {}", n(notes, "note")) } else { String::new() };
        println!(
            "{}: {}, {}, {}{notes}",
            config.policy_dir.display(),
            n(grants, "grant"),
            n(errors, "error"),
            n(warnings, "warning")
        );
    }
    if errors > 0 || (deny_warnings && warnings > 0) {
        // The findings said it all: exit 1 without another line.
        std::process::exit(1);
    }
    Ok(())
}

fn trust(config: &Path) -> Result<()> {
    let (config, policy) = load(config)?;
    let mut grants: Vec<&Grant> = policy.grants().collect();
    grants.sort_by(|a, b| a.name.cmp(&b.name));
    let preset_of = |issuer: &str| config.issuers.iter().find(|i| i.name == issuer).and_then(|i| i.preset);
    print!("{}", policy::trust::trust_script(&grants, &preset_of));
    Ok(())
}

/// What `explain` is asked about: from the audit log (`--request`) or from the arguments.
struct Question {
    claims: serde_json::Map<String, serde_json::Value>,
    package: String,
    action: String,
    version: Option<String>,
    new_package: bool,
}

fn question(args: ExplainArgs, config: &Config) -> Result<Question> {
    let Some(id) = args.request else {
        let claims = args.claims.unwrap_or_default();
        let text = std::fs::read_to_string(&claims).with_context(|| format!("cannot read {}", claims.display()))?;
        let claims = json::parse_object(text.as_bytes()).map_err(|e| anyhow::anyhow!("claims: {e}"))?;
        return Ok(Question {
            claims,
            package: args.package.unwrap_or_default(),
            action: args.action.unwrap_or_default(),
            version: args.version,
            new_package: args.new_package,
        });
    };
    let path = args.audit.unwrap_or_else(|| config.audit.path.clone());
    let asked = audit::find_request(&path, &id)
        .with_context(|| format!("cannot read {}", path.display()))?
        .with_context(|| format!("request {id} is not in {}", path.display()))?;
    println!(
        "request {id}: {} {} by {}",
        asked.action,
        asked.package,
        asked.claims.get("sub").and_then(|s| s.as_str()).unwrap_or("an unnamed identity")
    );
    Ok(Question {
        claims: asked.claims,
        package: asked.package,
        action: asked.action,
        version: asked.version.or(args.version),
        new_package: asked.new_package || args.new_package,
    })
}

fn explain(args: ExplainArgs) -> Result<()> {
    let (config, policy) = load(&args.config)?;
    let Question { claims, package, action, version, new_package } = question(args, &config)?;
    let iss = claims.get("iss").and_then(|v| v.as_str()).unwrap_or_default();
    let issuer = config
        .issuers
        .iter()
        .find(|i| i.issuer == iss)
        .with_context(|| format!("the claims' iss `{iss}` is not a configured issuer"))?;
    let identity = policy::Identity { issuer: issuer.name.as_str().into(), claims };
    let package = PackageName::parse(&package)?;
    // Before its body decided, a write is recorded with both candidates: the first is the one
    // npm means (a publish, an unpublish).
    let action = action.split('|').next().unwrap_or_default().to_owned();
    let action = ActionKind::parse(&action).with_context(|| format!("unknown action `{action}`"))?;
    let mut allowed = false;
    let asked = policy::Requested {
        package: Some(&package),
        action,
        tags: &[],
        version: version.as_deref(),
        creates: new_package,
    };
    for (grant, verdict) in policy.explain(&identity, &asked) {
        match verdict {
            Ok(()) => {
                allowed = true;
                println!("allow  {grant}{}", how(&policy, policy.grant(&grant), action));
            }
            Err(why) => println!("deny   {grant}: {why}"),
        }
    }
    if !allowed {
        bail!("denied: no grant allows {} on {package}", action.as_str());
    }
    Ok(())
}

/// How an allowed action goes: held for approvers, a publish staged for approval, a rate,
/// notifications.
fn how(policy: &Policy, grant: Option<&Grant>, action: ActionKind) -> String {
    let Some(g) = grant else { return String::new() };
    let mut notes = Vec::new();
    if let (Some(name), true) = (&g.hold, action.is_write()) {
        let required = policy.approvers(name).map_or(0, |a| a.required);
        notes.push(format!(
            "held: checked, then kept until {required} of `[approvers.{name}]` approve it (never the requester)"
        ));
    }
    if action == ActionKind::Publish && g.publish == PublishMode::Stage {
        notes.push(
            "staged: `npm publish` goes upstream as `npm stage publish`, live once a maintainer approves it".to_owned(),
        );
    }
    if matches!(action, ActionKind::Publish | ActionKind::StagePublish) {
        notes.push(if g.create {
            "may create a package the upstream does not have yet (create = true)".to_owned()
        } else {
            "only packages the upstream already has: a first publish is refused (no create = true)".to_owned()
        });
    }
    if let Some(rate) = g.rate {
        notes.push(format!(
            "at most {} writes per package every {}s, shared by every identity the grant admits",
            rate.max,
            rate.window.as_secs()
        ));
    }
    if !g.notify.is_empty() {
        notes.push(format!("staged versions notify {}", g.notify.join(", ")));
    }
    if notes.is_empty() {
        String::new()
    } else {
        format!(" ({})", notes.join("; "))
    }
}
