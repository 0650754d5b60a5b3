//! The CLI's side of the admin API: `phantom revoke`, `phantom freeze`, `phantom thaw`.
//! The admin URL and token come from the same `phantom.toml` the broker runs with.

use crate::config::Config;
use crate::credentials::read_secret;
use crate::net;
use http::{header, Method, Request, Uri};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

pub async fn call(
    config: &Config,
    ca_file: Option<&Path>,
    method: Method,
    path: &str,
    body: Option<Value>,
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
            Some(b) => net::full(b.to_string()),
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
