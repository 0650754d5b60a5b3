//! `phantom holds`, `phantom approve ID`, `phantom reject ID`: a person's side of held writes.
//! Each signs the person in (the device flow, as `phantom login --device`) and spends that ID
//! token on one call: the holds this person may approve, or an approval, or a rejection.

use super::device::{people_issuer, sign_in};
use http::{header, Method, Request, Uri};
use phantom_broker::support::net::{self, HttpsClient};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(60);

#[derive(clap::Args)]
pub(crate) struct PersonArgs {
    /// The broker's registry URL, e.g. https://npm-broker.example.com/
    #[arg(long)]
    pub(crate) broker: String,
    /// Which of the broker's issuers for people to sign in with.
    #[arg(long)]
    pub(crate) issuer: String,
    /// Extra CA certificates to trust for the broker and the identity provider.
    #[arg(long)]
    pub(crate) ca_file: Option<PathBuf>,
}

/// What the person asks.
pub(crate) enum Ask {
    List,
    Approve(String),
    Reject(String),
}

pub(crate) async fn run(ask: Ask, args: PersonArgs) -> Result<String, String> {
    let base = format!("{}/", args.broker.trim_end_matches('/'));
    let client: HttpsClient = net::https_client(net::client_config(args.ca_file.as_deref())?, TIMEOUT);
    let (method, path) = match &ask {
        Ask::List => (Method::GET, "-/phantom/v1/holds".to_owned()),
        Ask::Approve(id) => (Method::POST, format!("-/phantom/v1/holds/{}/approve", checked(id)?)),
        Ask::Reject(id) => (Method::POST, format!("-/phantom/v1/holds/{}/reject", checked(id)?)),
    };
    let issuer = people_issuer(&client, &base, &args.issuer).await?;
    let id_token = sign_in(&client, &issuer).await?;
    let uri: Uri = format!("{base}{path}").parse().map_err(|_| format!("--broker: `{}` is not a URL", args.broker))?;
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {}", id_token.expose()))
        .header(header::ACCEPT, "application/json")
        .body(net::empty())
        .map_err(|e| e.to_string())?;
    let (parts, bytes) =
        net::fetch(&client, req, TIMEOUT, 4 * 1024 * 1024).await.map_err(|e| format!("asking the broker: {e}"))?;
    let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if !parts.status.is_success() {
        let msg = answer.get("message").and_then(Value::as_str).unwrap_or("no message");
        return Err(format!("the broker refused ({}): {msg}", parts.status));
    }
    Ok(match ask {
        Ask::List => listing(&answer),
        Ask::Approve(id) | Ask::Reject(id) => {
            let state = answer.get("state").and_then(Value::as_str).unwrap_or("?");
            let n = |k: &str| answer.get(k).and_then(Value::as_u64).unwrap_or(0);
            let answered = match answer.get("upstream_status").and_then(Value::as_u64) {
                Some(status) => format!("; the registry answered {status}"),
                None => String::new(),
            };
            format!("hold {id}: {state} ({} of {} approvals{answered})", n("approvals"), n("required"))
        }
    })
}

fn checked(id: &str) -> Result<&str, String> {
    if phantom_broker::npm::is_hold_id(id) {
        Ok(id)
    } else {
        Err(format!("`{id}` is not a hold id (24 hex digits, as the held write's notice names it)"))
    }
}

/// One line per hold the person may approve.
fn listing(answer: &Value) -> String {
    let holds = answer.get("holds").and_then(Value::as_array).cloned().unwrap_or_default();
    if holds.is_empty() {
        return "no held writes wait for your approval".into();
    }
    let s = |h: &Value, k: &str| h.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    holds
        .iter()
        .map(|h| {
            let who = h.pointer("/requester/sub").and_then(Value::as_str).unwrap_or("?");
            format!(
                "{}  {} {}@{} by {who} ({} of {} approvals, expires {})",
                s(h, "id"),
                s(h, "action"),
                s(h, "package"),
                s(h, "version"),
                h.get("approvals").and_then(Value::as_u64).unwrap_or(0),
                h.get("required").and_then(Value::as_u64).unwrap_or(0),
                s(h, "expires")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}
