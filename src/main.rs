//! `phantom`: the command line. It parses arguments and calls into the library; nothing else.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
mod cli;

use cli::{admin_client, certs, demo, login};
use phantom_broker::{audit, config::Config, policy, server};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser)]
#[command(name = "phantom", version, about = "A short-lived credential broker for npm publishing")]
struct Cli {
    /// Log lines on stderr: `text` for a person, `json` (one object per line) for a log shipper.
    /// Default: text on a terminal, json otherwise.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum CheckFormat {
    Text,
    Json,
    Github,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Start the registry-facing HTTPS listener.
    Serve {
        #[arg(long, default_value = "phantom.toml")]
        config: PathBuf,
    },
    /// Development certificates.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// The audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Policy files.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Revoke live phantoms (through the admin API).
    Revoke {
        #[command(flatten)]
        which: RevokeWhich,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List live phantoms: ids, identities, packages, expiry (never the tokens).
    Phantoms {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Freeze writes to packages matching PATTERN (incident response).
    Freeze {
        pattern: Vec<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Lift a freeze.
    Thaw {
        pattern: Vec<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Exchange this CI job's OIDC ID token for a phantom and write it into .npmrc.
    Login(login::LoginArgs),
    /// The real credentials: inventory and rotation (through the admin API).
    Credentials {
        #[command(subcommand)]
        command: CredentialsCommand,
    },
    /// Re-read the policy and every credential's source (as SIGHUP does).
    Reload {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// The whole job on this machine: a local registry, a loopback identity provider and the
    /// broker; npm publishes through it with no token. Stays up until Ctrl-C.
    Demo(demo::DemoArgs),
}

#[derive(clap::Args)]
struct AdminArgs {
    /// The broker's config: the admin address and token come from its [admin] section.
    #[arg(long, default_value = "phantom.toml")]
    config: PathBuf,
    /// Extra CA certificates to trust for the admin listener (e.g. certs/ca.pem).
    #[arg(long)]
    ca_file: Option<PathBuf>,
}

#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct RevokeWhich {
    /// A token id, as the audit log and `phantom phantoms` show it.
    #[arg(long)]
    id: Option<String>,
    /// Every phantom whose ID token had this `sub`.
    #[arg(long)]
    subject: Option<String>,
    /// Every phantom of this repository (GitHub `repository`, GitLab `project_path`).
    #[arg(long)]
    repository: Option<String>,
    /// Every live phantom.
    #[arg(long)]
    all: bool,
}

#[derive(Subcommand)]
enum CredentialsCommand {
    /// One row per credential: upstream, class, packages, what it can publish, age, days to
    /// expiry, last use, the upstream account, and warnings.
    Status {
        /// The rows as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Swap in a new value, minted upstream by a person: canaried, written to the credential's
    /// file, audited.
    Rotate {
        name: String,
        /// A file holding the new token (never give it on the command line).
        #[arg(long)]
        from_file: PathBuf,
        /// Keep the old value for this long (e.g. 24h): reads the upstream refuses with the new
        /// one are tried again with it.
        #[arg(long)]
        overlap: Option<String>,
        /// Revoke first: every live phantom of the credential's grants is revoked and their
        /// packages frozen before the swap; no overlap.
        #[arg(long, conflicts_with = "overlap")]
        incident: bool,
        /// The upstream account the new value must authenticate as, when the current value can
        /// no longer say (already revoked upstream) and the broker has not asked it before.
        #[arg(long)]
        account: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Write a development CA and a server certificate for localhost and 127.0.0.1.
    Dev {
        #[arg(long, default_value = "certs")]
        out: PathBuf,
        /// Extra DNS names or IP addresses for the server certificate.
        #[arg(long)]
        san: Vec<String>,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chain and name the first altered or removed line.
    Verify { path: PathBuf },
}

#[derive(Subcommand)]
enum PolicyCommand {
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
    Explain {
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
    },
}

/// Set once logging is set up: in JSON mode every line on stderr is a JSON object, errors too.
static JSON_LOGS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if JSON_LOGS.get() == Some(&true) => {
            tracing::error!(error = %format!("{e:#}"), "phantom stopped");
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("phantom: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    // The demo's terminal tells its own story; the broker's log lines go to a file in its run folder.
    let log_file = match &cli.command {
        Command::Demo(args) => Some(demo::start_run(args).map_err(anyhow::Error::msg)?),
        _ => None,
    };
    let serving = matches!(cli.command, Command::Serve { .. });
    init_logging(cli.log_format, log_file, serving);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    match cli.command {
        Command::Serve { config } => rt.block_on(serve(config)),
        Command::Certs { command: CertsCommand::Dev { out, san, force } } => {
            let w = certs::write_dev_certs(&out, &san, force).map_err(anyhow::Error::msg)?;
            println!("wrote {} (trust this CA), {} and {}", w.ca.display(), w.cert.display(), w.key.display());
            Ok(())
        }
        Command::Audit { command: AuditCommand::Verify { path } } => match audit::verify(&path)? {
            audit::Verdict::Intact { lines } => {
                println!("{}: intact, {lines} lines", path.display());
                Ok(())
            }
            audit::Verdict::Broken { line, reason } => {
                bail!("{}: line {line}: {reason}", path.display())
            }
        },
        Command::Policy { command } => policy_command(command),
        Command::Revoke { which, admin } => {
            let body = match which {
                RevokeWhich { id: Some(id), .. } => serde_json::json!({ "id": id }),
                RevokeWhich { subject: Some(s), .. } => serde_json::json!({ "subject": s }),
                RevokeWhich { repository: Some(r), .. } => serde_json::json!({ "repository": r }),
                _ => serde_json::json!({ "all": true }),
            };
            let answer = rt.block_on(admin_call(&admin, http::Method::POST, "/admin/v1/revoke", Some(body)))?;
            println!("revoked {} phantom(s)", answer["revoked"]);
            Ok(())
        }
        Command::Phantoms { admin } => {
            let answer = rt.block_on(admin_call(&admin, http::Method::GET, "/admin/v1/phantoms", None))?;
            println!("{}", serde_json::to_string_pretty(&answer["phantoms"])?);
            Ok(())
        }
        Command::Freeze { pattern, admin } | Command::Thaw { pattern, admin } if pattern.is_empty() => {
            let _ = admin;
            bail!("give at least one package pattern")
        }
        Command::Freeze { pattern, admin } => {
            let body = serde_json::json!({ "packages": pattern });
            let answer = rt.block_on(admin_call(&admin, http::Method::POST, "/admin/v1/freeze", Some(body)))?;
            println!("frozen: {}", answer["frozen"]);
            Ok(())
        }
        Command::Thaw { pattern, admin } => {
            let body = serde_json::json!({ "packages": pattern });
            let answer = rt.block_on(admin_call(&admin, http::Method::POST, "/admin/v1/thaw", Some(body)))?;
            println!("frozen: {}", answer["frozen"]);
            Ok(())
        }
        Command::Login(args) => {
            let summary = rt.block_on(login::login(args)).map_err(anyhow::Error::msg)?;
            println!("{summary}");
            Ok(())
        }
        Command::Demo(args) => rt.block_on(demo::run(args, shutdown_signal())).map_err(anyhow::Error::msg),
        Command::Credentials { command } => rt.block_on(credentials_command(command)),
        Command::Reload { admin } => {
            let answer = rt.block_on(admin_call(&admin, http::Method::POST, "/admin/v1/reload", None))?;
            println!("{}", serde_json::to_string_pretty(&answer)?);
            Ok(())
        }
    }
}

/// Log lines go to stderr (or `file`), filtered by `PHANTOM_LOG` (default `info`): human text on
/// a terminal, JSON lines (timestamp, level, target, fields) when stderr is a file, a pipe or a
/// journal.
fn init_logging(format: Option<LogFormat>, file: Option<std::fs::File>, serving: bool) {
    use std::io::IsTerminal;
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    let terminal = file.is_none() && std::io::stderr().is_terminal();
    let explicit = format == Some(LogFormat::Json);
    let format = format.unwrap_or(if terminal { LogFormat::Text } else { LogFormat::Json });
    let filter = tracing_subscriber::EnvFilter::try_from_env("PHANTOM_LOG").unwrap_or_else(|_| "info".into());
    // In JSON mode every line `serve` writes to stderr is JSON, its last error and a panic too;
    // a one-shot command's error is for a person unless JSON was asked for. (The demo logs to a
    // file and talks to its person on the terminal.)
    let json_on_stderr = format == LogFormat::Json && file.is_none() && (serving || explicit);
    let writer = match file {
        Some(file) => BoxMakeWriter::new(std::sync::Mutex::new(file)),
        None => BoxMakeWriter::new(std::io::stderr),
    };
    let builder = tracing_subscriber::fmt().with_writer(writer).with_ansi(terminal).with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).with_span_list(false).init(),
    }
    if json_on_stderr {
        // A panic's message is a log line like the others.
        std::panic::set_hook(Box::new(|info| {
            let at = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
            let payload = info.payload();
            let message =
                payload.downcast_ref::<&str>().copied().or(payload.downcast_ref::<String>().map(String::as_str));
            tracing::error!(panic = message.unwrap_or("(no message)"), at, "a thread panicked");
        }));
    }
    let _ = JSON_LOGS.set(json_on_stderr);
}

async fn admin_call(
    admin: &AdminArgs,
    method: http::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<serde_json::Value> {
    let config = Config::load(&admin.config)?;
    admin_client::call(&config, admin.ca_file.as_deref(), method, path, body).await.map_err(anyhow::Error::msg)
}

async fn credentials_command(command: CredentialsCommand) -> Result<()> {
    match command {
        CredentialsCommand::Status { json, admin } => {
            let answer = admin_call(&admin, http::Method::GET, "/admin/v1/credentials", None).await?;
            let rows = answer["credentials"].as_array().cloned().unwrap_or_default();
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(());
            }
            let cell = |v: &serde_json::Value| match v {
                serde_json::Value::Null => "-".to_owned(),
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            println!(
                "{:<24} {:<12} {:<5} {:<10} {:>8} {:>10} {:<20} {:<22} PACKAGES",
                "CREDENTIAL", "UPSTREAM", "CLASS", "PUBLISH", "AGE (d)", "EXPIRY (d)", "ACCOUNT", "LAST USE"
            );
            for r in &rows {
                let packages: Vec<String> = r["packages"].as_array().into_iter().flatten().map(cell).collect();
                println!(
                    "{:<24} {:<12} {:<5} {:<10} {:>8} {:>10} {:<20} {:<22} {}",
                    cell(&r["name"]),
                    cell(&r["upstream"]),
                    cell(&r["class"]),
                    cell(&r["publish"]),
                    cell(&r["age_days"]),
                    cell(&r["days_to_expiry"]),
                    cell(&r["account"]),
                    cell(&r["last_used"]),
                    if packages.is_empty() { "(unscoped)".to_owned() } else { packages.join(", ") }
                );
            }
            for r in &rows {
                for w in r["warnings"].as_array().into_iter().flatten() {
                    println!("warning: {}: {}", cell(&r["name"]), cell(w));
                }
            }
            Ok(())
        }
        CredentialsCommand::Rotate { name, from_file, overlap, incident, account, admin } => {
            let overlap = overlap
                .as_deref()
                .map(phantom_broker::support::units::parse_duration)
                .transpose()
                .map_err(|e| anyhow::anyhow!("--overlap: {e}"))?;
            let config = Config::load(&admin.config)?;
            let done = admin_client::rotate(
                &config,
                admin.ca_file.as_deref(),
                &name,
                &from_file,
                overlap,
                incident,
                account.as_deref(),
            )
            .await
            .map_err(anyhow::Error::msg)?;
            println!("rotated {name}: the new value authenticates as {}", done["account"]);
            if let Some(p) = done["canary_read"].as_str() {
                println!("  canary: it reads {p}");
            }
            if let Some(f) = done["file"].as_str() {
                println!("  written to {f} (mode 0600)");
            }
            if let Some(replicas) = done["replicas"].as_str() {
                println!("  replicas: {replicas}");
            }
            match done["overlap_until"].as_str() {
                Some(t) => println!("  the old value stays for reads the upstream refuses with the new one until {t}"),
                None => println!("  the old value is dropped once requests in flight finish"),
            }
            if incident {
                println!("  incident: revoked {} phantoms; froze {}", done["revoked"], done["frozen"]);
                if let Some(t) = done["thaw"].as_str() {
                    println!("  once the incident is over: {t} --config {}", admin.config.display());
                }
            }
            Ok(())
        }
    }
}

async fn serve(config: PathBuf) -> Result<()> {
    let config = Config::load(&config)?;
    let listen = config.server.listen;
    let app = Arc::new(server::App::new(config).map_err(anyhow::Error::msg)?);
    app.store.prime().await;
    let listener = server::bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    let admin = match &app.config.admin {
        Some(a) => Some(
            tokio::net::TcpListener::bind(a.listen).await.with_context(|| format!("cannot listen on {}", a.listen))?,
        ),
        None => None,
    };
    if let Some(admin) = &admin {
        tracing::info!(addr = %admin.local_addr()?, "admin listener");
    }
    let proxy = match &app.config.proxy {
        Some(p) => Some(server::bind(p.listen).with_context(|| format!("cannot listen on {}", p.listen))?),
        None => None,
    };
    let url = format!("https://{addr}/");
    let proxy_url = proxy.as_ref().map(|p| p.local_addr().map(|a| format!("http://{a}"))).transpose()?;
    // For a person at a terminal, a line on stdout; in JSON mode the log line below says it all,
    // and stdout stays for command output.
    if JSON_LOGS.get() != Some(&true) {
        match &proxy_url {
            Some(p) => println!("phantom: listening on {url} (forward proxy on {p})"),
            None => println!("phantom: listening on {url}"),
        }
    }
    tracing::info!(%addr, url, proxy = proxy_url, grants = app.policy().len(), "listening");
    #[cfg(unix)]
    {
        // SIGHUP re-reads the policy and the credentials' sources, as POST /admin/v1/reload does.
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        let app = app.clone();
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                let outcome = phantom_broker::ops::reload(&app, "SIGHUP").await;
                tracing::info!(outcome = %outcome, "reloaded on SIGHUP");
            }
        });
    }
    server::serve(app, listener, proxy, admin, shutdown_signal()).await.map_err(anyhow::Error::msg)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}

/// How an allowed action goes: a publish staged for approval, a rate, notifications.
fn how(grant: Option<&policy::Grant>, action: phantom_broker::npm::ActionKind) -> String {
    let Some(g) = grant else { return String::new() };
    let mut notes = Vec::new();
    if action == phantom_broker::npm::ActionKind::Publish && g.publish == policy::PublishMode::Stage {
        notes.push(
            "staged: `npm publish` goes upstream as `npm stage publish`, live once a maintainer approves it".to_owned(),
        );
    }
    if matches!(action, phantom_broker::npm::ActionKind::Publish | phantom_broker::npm::ActionKind::StagePublish) {
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

fn policy_command(command: PolicyCommand) -> Result<()> {
    let load = |path: &PathBuf| -> Result<(Config, policy::Policy)> {
        let config = Config::load(path)?;
        let policy = config.load_policy()?;
        Ok((config, policy))
    };
    match command {
        PolicyCommand::Check { config, format, deny_warnings } => {
            use phantom_broker::policy::check::{self, Severity};
            let config = Config::load(&config)?;
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
        PolicyCommand::Trust { config } => {
            let (config, policy) = load(&config)?;
            let mut grants: Vec<&policy::Grant> = policy.grants().collect();
            grants.sort_by(|a, b| a.name.cmp(&b.name));
            let preset_of = |issuer: &str| config.issuers.iter().find(|i| i.name == issuer).and_then(|i| i.preset);
            print!("{}", policy::trust::trust_script(&grants, &preset_of));
            Ok(())
        }
        PolicyCommand::Explain { config, request, audit, claims, package, action, version, new_package } => {
            let (config, policy) = load(&config)?;
            let (claims, package, action, version, new_package) = match request {
                Some(id) => {
                    let path = audit.unwrap_or_else(|| config.audit.path.clone());
                    let asked = audit::find_request(&path, &id)
                        .with_context(|| format!("cannot read {}", path.display()))?
                        .with_context(|| format!("request {id} is not in {}", path.display()))?;
                    println!(
                        "request {id}: {} {} by {}",
                        asked.action,
                        asked.package,
                        asked.claims.get("sub").and_then(|s| s.as_str()).unwrap_or("an unnamed identity")
                    );
                    let new_package = asked.new_package || new_package;
                    (asked.claims, asked.package, asked.action, asked.version.or(version), new_package)
                }
                None => {
                    let claims = claims.unwrap_or_default();
                    let text = std::fs::read_to_string(&claims)
                        .with_context(|| format!("cannot read {}", claims.display()))?;
                    let claims = phantom_broker::support::json::parse_object(text.as_bytes())
                        .map_err(|e| anyhow::anyhow!("{}: {e}", "claims"))?;
                    (claims, package.unwrap_or_default(), action.unwrap_or_default(), version, new_package)
                }
            };
            let iss = claims.get("iss").and_then(|v| v.as_str()).unwrap_or_default();
            let issuer = config
                .issuers
                .iter()
                .find(|i| i.issuer == iss)
                .with_context(|| format!("the claims' iss `{iss}` is not a configured issuer"))?;
            let identity = policy::Identity { issuer: issuer.name.as_str().into(), claims };
            let package = phantom_broker::npm::PackageName::parse(&package)?;
            // Before its body decided, a write is recorded with both candidates: the first is
            // the one npm means (a publish, an unpublish).
            let action = action.split('|').next().unwrap_or_default().to_owned();
            let action = phantom_broker::npm::ActionKind::parse(&action)
                .with_context(|| format!("unknown action `{action}`"))?;
            let mut allowed = false;
            for (grant, verdict) in policy.explain(&identity, &package, action, version.as_deref(), new_package) {
                match verdict {
                    Ok(()) => {
                        allowed = true;
                        println!("allow  {grant}{}", how(policy.grant(&grant), action));
                    }
                    Err(why) => println!("deny   {grant}: {why}"),
                }
            }
            if !allowed {
                bail!("denied: no grant allows {} on {package}", action.as_str());
            }
            Ok(())
        }
    }
}
