//! The CLI's side of the admin API: `phantom revoke`, `phantom freeze`, `phantom thaw`,
//! `phantom credentials status` and `phantom credentials rotate`.
//! The admin URL and token come from the same `phantom.toml` the broker runs with.

use http::{header, Method, Request, Uri};
use phantom_broker::config::Config;
use phantom_broker::support::net;
use phantom_broker::support::secret::read_secret;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the admin API is: the broker's own config names it.
#[derive(clap::Args)]
pub(crate) struct AdminArgs {
    /// The broker's config: the admin address and token come from its [admin] section.
    #[arg(long, default_value = "phantom.toml")]
    pub(crate) config: PathBuf,
    /// Extra CA certificates to trust for the admin listener (e.g. certs/ca.pem).
    #[arg(long)]
    pub(crate) ca_file: Option<PathBuf>,
}

/// One admin API call, addressed by the config `admin` names.
pub(crate) async fn call_with(
    admin: &AdminArgs,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let config = Config::load(&admin.config)?;
    call(&config, admin.ca_file.as_deref(), method, path, body).await.map_err(anyhow::Error::msg)
}

/// What `phantom revoke` did: the phantoms revoked, their held writes rejected, the console
/// sessions ended. It fails when a part could not be done, so that a script sees it.
pub(crate) fn print_revoked(answer: &Value) -> anyhow::Result<()> {
    println!("revoked {} phantom(s)", answer["revoked"]);
    if let Some(held) = answer["holds_rejected"].as_array().filter(|h| !h.is_empty()) {
        println!("rejected {} held write(s)", held.len());
    }
    if answer["console_sessions_ended"] == true {
        println!("ended their console sessions");
    }
    for (what, key) in [("held writes", "holds_rejected_error"), ("console sessions", "console_sessions_error")] {
        if let Some(e) = answer[key].as_str() {
            anyhow::bail!(
                "the phantoms are revoked, but their {what} could not be ended: {e}; run the revocation again"
            );
        }
    }
    Ok(())
}

pub(crate) async fn call(
    config: &Config,
    ca_file: Option<&Path>,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Result<Value, String> {
    let body = body.map(|b| zeroize::Zeroizing::new(b.to_string().into_bytes()));
    send(config, ca_file, method, path, body).await
}

/// `phantom credentials rotate`: the new value goes from its file to the broker in the body of
/// one request over the admin listener's TLS, never on a command line; the copies this code
/// makes are zeroized (the HTTP stack's own buffers are not).
pub(crate) async fn rotate(
    config: &Config,
    ca_file: Option<&Path>,
    name: &str,
    token_file: &Path,
    overlap: Option<Duration>,
    incident: bool,
    account: Option<&str>,
) -> Result<Value, String> {
    let token = read_secret(&phantom_broker::config::SecretSource::File(token_file.to_owned()))
        .map_err(|e| format!("{}: {e}", token_file.display()))?;
    #[derive(serde::Serialize)]
    struct Body<'a> {
        token: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        overlap_seconds: Option<u64>,
        incident: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        account: Option<&'a str>,
    }
    let body = Body { token: token.expose(), overlap_seconds: overlap.map(|d| d.as_secs()), incident, account };
    let bytes = zeroize::Zeroizing::new(serde_json::to_vec(&body).map_err(|e| e.to_string())?);
    const NAME: &percent_encoding::AsciiSet =
        &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.');
    let path = format!("/admin/v1/credentials/{}/rotate", percent_encoding::utf8_percent_encode(name, NAME));
    send(config, ca_file, Method::POST, &path, Some(bytes)).await
}

async fn send(
    config: &Config,
    ca_file: Option<&Path>,
    method: Method,
    path: &str,
    body: Option<zeroize::Zeroizing<Vec<u8>>>,
) -> Result<Value, String> {
    let admin = config.admin.as_ref().ok_or("the config has no [admin] section")?;
    let token = read_secret(&admin.token).map_err(|e| format!("admin token: {e}"))?;
    let host = match admin.listen.ip() {
        ip if ip.is_unspecified() => "127.0.0.1".to_owned(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    let uri: Uri =
        format!("https://{host}:{}{path}", admin.listen.port()).parse().map_err(|_| "cannot build the admin URL")?;
    let client = net::https_client(net::client_config(ca_file)?, Duration::from_secs(10));
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {}", token.expose()))
        .header(header::CONTENT_TYPE, "application/json")
        .body(match body {
            Some(b) => net::full(b.to_vec()),
            None => net::empty(),
        })
        .map_err(|e| e.to_string())?;
    let (parts, bytes) = net::fetch(&client, req, Duration::from_secs(30), 16 * 1024 * 1024)
        .await
        .map_err(|e| format!("the admin API could not be reached: {e}"))?;
    let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if !parts.status.is_success() {
        let msg = answer.get("message").and_then(Value::as_str).unwrap_or("no message");
        return Err(format!("the admin API answered {}: {msg}", parts.status));
    }
    Ok(answer)
}
