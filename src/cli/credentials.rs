//! `phantom credentials status | rotate`: the real credentials, through the admin API.

use super::admin_client::{self, AdminArgs};
use anyhow::Result;
use clap::Subcommand;
use phantom_broker::config::Config;
use phantom_broker::support::units;
use serde_json::Value;
use std::path::PathBuf;

#[derive(Subcommand)]
pub(crate) enum CredentialsCommand {
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
    Rotate(RotateArgs),
}

#[derive(clap::Args)]
pub(crate) struct RotateArgs {
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
}

pub(crate) async fn run(command: CredentialsCommand) -> Result<()> {
    match command {
        CredentialsCommand::Status { json, admin } => status(json, &admin).await,
        CredentialsCommand::Rotate(args) => rotate(args).await,
    }
}

async fn status(json: bool, admin: &AdminArgs) -> Result<()> {
    let answer = admin_client::call_with(admin, http::Method::GET, "/admin/v1/credentials", None).await?;
    let rows = answer["credentials"].as_array().cloned().unwrap_or_default();
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let cell = |v: &Value| match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    println!(
        "{:<24} {:<12} {:<5} {:<10} {:>8} {:>10} {:<8} {:<10} {:<20} {:<22} PACKAGES",
        "CREDENTIAL", "UPSTREAM", "CLASS", "PUBLISH", "AGE (d)", "EXPIRY (d)", "ROTATION", "DUE", "ACCOUNT", "LAST USE"
    );
    for r in &rows {
        let packages: Vec<String> = r["packages"].as_array().into_iter().flatten().map(cell).collect();
        let class = match (cell(&r["class"]), r["rotation"]["top"].as_bool()) {
            (c, Some(true)) => format!("{c}*"),
            (c, _) => c,
        };
        println!(
            "{:<24} {:<12} {:<5} {:<10} {:>8} {:>10} {:<8} {:<10} {:<20} {:<22} {}",
            cell(&r["name"]),
            cell(&r["upstream"]),
            class,
            cell(&r["publish"]),
            cell(&r["age_days"]),
            cell(&r["days_to_expiry"]),
            cell(&r["rotation"]["state"]),
            cell(&r["rotation"]["due"]),
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

async fn rotate(args: RotateArgs) -> Result<()> {
    let RotateArgs { name, from_file, overlap, incident, account, admin } = args;
    let overlap =
        overlap.as_deref().map(units::parse_duration).transpose().map_err(|e| anyhow::anyhow!("--overlap: {e}"))?;
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
