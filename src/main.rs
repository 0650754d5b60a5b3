//! `phantom`: the command line. It parses arguments and calls into the library; nothing else.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
mod cli;

use cli::admin_client::{self, AdminArgs};
use cli::credentials::CredentialsCommand;
use cli::policy::PolicyCommand;
use cli::{certs, demo, login};
use phantom_broker::{audit, config::Config, server};
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
    /// Exchange this CI job's OIDC ID token (or, with --device, a person's) for a phantom and
    /// write it into .npmrc.
    Login(login::LoginArgs),
    /// The held writes you may approve (signs you in with the organisation's provider).
    Holds {
        #[command(flatten)]
        person: cli::holds::PersonArgs,
    },
    /// Approve a held write (signs you in); the last approval it needs forwards it.
    Approve {
        id: String,
        #[command(flatten)]
        person: cli::holds::PersonArgs,
    },
    /// Reject a held write (signs you in): its bytes are dropped.
    Reject {
        id: String,
        #[command(flatten)]
        person: cli::holds::PersonArgs,
    },
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
        Command::Policy { command } => cli::policy::run(command),
        Command::Revoke { which, admin } => {
            let body = match which {
                RevokeWhich { id: Some(id), .. } => serde_json::json!({ "id": id }),
                RevokeWhich { subject: Some(s), .. } => serde_json::json!({ "subject": s }),
                RevokeWhich { repository: Some(r), .. } => serde_json::json!({ "repository": r }),
                _ => serde_json::json!({ "all": true }),
            };
            let answer =
                rt.block_on(admin_client::call_with(&admin, http::Method::POST, "/admin/v1/revoke", Some(body)))?;
            admin_client::print_revoked(&answer)
        }
        Command::Phantoms { admin } => {
            let answer = rt.block_on(admin_client::call_with(&admin, http::Method::GET, "/admin/v1/phantoms", None))?;
            println!("{}", serde_json::to_string_pretty(&answer["phantoms"])?);
            Ok(())
        }
        Command::Freeze { pattern, admin } | Command::Thaw { pattern, admin } if pattern.is_empty() => {
            let _ = admin;
            bail!("give at least one package pattern")
        }
        Command::Freeze { pattern, admin } => {
            let body = serde_json::json!({ "packages": pattern });
            let answer =
                rt.block_on(admin_client::call_with(&admin, http::Method::POST, "/admin/v1/freeze", Some(body)))?;
            println!("frozen: {}", answer["frozen"]);
            Ok(())
        }
        Command::Thaw { pattern, admin } => {
            let body = serde_json::json!({ "packages": pattern });
            let answer =
                rt.block_on(admin_client::call_with(&admin, http::Method::POST, "/admin/v1/thaw", Some(body)))?;
            println!("frozen: {}", answer["frozen"]);
            Ok(())
        }
        Command::Login(args) => {
            let summary = rt.block_on(login::login(args)).map_err(anyhow::Error::msg)?;
            println!("{summary}");
            Ok(())
        }
        Command::Demo(args) => rt.block_on(demo::run(args, shutdown_signal())).map_err(anyhow::Error::msg),
        Command::Holds { person } => people(&rt, cli::holds::Ask::List, person),
        Command::Approve { id, person } => people(&rt, cli::holds::Ask::Approve(id), person),
        Command::Reject { id, person } => people(&rt, cli::holds::Ask::Reject(id), person),
        Command::Credentials { command } => rt.block_on(cli::credentials::run(command)),
        Command::Reload { admin } => {
            let answer = rt.block_on(admin_client::call_with(&admin, http::Method::POST, "/admin/v1/reload", None))?;
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

fn people(rt: &tokio::runtime::Runtime, ask: cli::holds::Ask, person: cli::holds::PersonArgs) -> anyhow::Result<()> {
    let out = rt.block_on(cli::holds::run(ask, person)).map_err(anyhow::Error::msg)?;
    println!("{out}");
    Ok(())
}
