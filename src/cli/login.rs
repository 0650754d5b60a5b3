//! `phantom login`: trade the CI job's OIDC ID token for a phantom and put it in `.npmrc`
//! under the broker's host key, so npm, pnpm and yarn use it unchanged. With `--proxy`, the
//! phantom goes under the upstream registry's own host key instead, for an agent that keeps its
//! registry URL and reaches it through the broker's forward proxy.

use http::{header, Method, Request, Uri};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use phantom_broker::support::net::{self, HttpsClient};
use phantom_broker::support::secret::{IdToken, Secret};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(clap::Args)]
pub(crate) struct LoginArgs {
    /// The broker's registry URL, e.g. https://npm-broker.example.com/
    #[arg(long)]
    pub(crate) broker: String,
    /// Packages to ask for (comma-separated or repeated).
    #[arg(long, value_delimiter = ',', required = true)]
    pub(crate) packages: Vec<String>,
    /// Actions to ask for: publish, dist-tag, deprecate, unpublish, ... (comma-separated or repeated).
    #[arg(long, value_delimiter = ',', required = true)]
    pub(crate) actions: Vec<String>,
    /// Ask for a shorter lifetime than the grant's, in seconds.
    #[arg(long, conflicts_with = "ttl")]
    pub(crate) ttl_seconds: Option<u64>,
    /// Ask for a shorter lifetime than the grant's, e.g. 15m.
    #[arg(long, value_parser = ttl)]
    pub(crate) ttl: Option<std::time::Duration>,
    /// Sign a person in first, with the organisation's OpenID Connect provider (the device
    /// authorization grant: open the URL printed, enter the code), instead of a CI ID token.
    #[arg(long, requires = "issuer", conflicts_with_all = ["id_token_file", "audience"])]
    pub(crate) device: bool,
    /// With --device: which of the broker's issuers for people to sign in with.
    #[arg(long, requires = "device")]
    pub(crate) issuer: Option<String>,
    /// The .npmrc to write (default: $NPM_CONFIG_USERCONFIG, else ~/.npmrc).
    #[arg(long)]
    pub(crate) npmrc: Option<PathBuf>,
    /// Read the ID token from this file instead of the CI environment.
    #[arg(long)]
    pub(crate) id_token_file: Option<PathBuf>,
    /// The audience to request from the CI (default npm:<broker host>).
    #[arg(long)]
    pub(crate) audience: Option<String>,
    /// Extra CA certificates to trust for the broker and the CI token endpoint.
    #[arg(long)]
    pub(crate) ca_file: Option<PathBuf>,
    /// For an agent behind the broker's forward proxy: the proxy's URL, e.g.
    /// http://npm-broker.example.com:3128. The phantom is written under --registry's host,
    /// and the lines the agent's .npmrc needs are printed.
    #[arg(long, requires = "registry")]
    pub(crate) proxy: Option<String>,
    /// With --proxy: the upstream registry URL the agent keeps using (a configured upstream).
    #[arg(long, requires = "proxy")]
    pub(crate) registry: Option<String>,
    /// With --proxy: the CA the proxy's certificates chain to, for the printed `cafile` line.
    #[arg(long, requires = "proxy")]
    pub(crate) proxy_ca: Option<PathBuf>,
}

pub(crate) async fn login(args: LoginArgs) -> Result<String, String> {
    let broker: Uri = args.broker.parse().map_err(|_| format!("--broker: `{}` is not a URL", args.broker))?;
    let host = broker.host().ok_or("--broker has no host")?.to_owned();
    match broker.scheme_str() {
        Some("https") => {}
        Some("http") if phantom_broker::support::net::is_loopback(&host) => {}
        _ => return Err("--broker must be an https:// URL".into()),
    }
    let authority = broker.authority().map(|a| a.as_str().to_owned()).unwrap_or(host.clone());
    let base_path = format!("{}/", broker.path().trim_end_matches('/'));
    let client = net::https_client(net::client_config(args.ca_file.as_deref())?, TIMEOUT);

    let id_token = match &args.issuer {
        Some(name) => {
            let issuer =
                super::device::people_issuer(&client, &format!("{}://{authority}{base_path}", scheme(&broker)), name)
                    .await?;
            super::device::sign_in(&client, &issuer).await?
        }
        None => {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let audience = args.audience.clone().unwrap_or_else(|| format!("npm:{host}"));
            id_token(&client, args.id_token_file.as_deref(), &audience).await?
        }
    };

    let base = format!("{}://{authority}{base_path}", scheme(&broker));
    let answer = exchange(&client, &base, &args, &id_token).await?;
    let token =
        Secret::new(answer.get("token").and_then(Value::as_str).ok_or("the broker's answer has no token")?.to_owned());
    let npmrc = args.npmrc.clone().unwrap_or_else(default_npmrc);
    let key = match &args.registry {
        None => format!("//{authority}{base_path}:_authToken"),
        Some(registry) => format!("{}:_authToken", nerf_dart(registry, "--registry")?),
    };
    // Behind the forward proxy, the agent's setup goes into the same file: its registry (the
    // upstream's own URL), the proxy, and the CA the proxy's certificates chain to.
    let mut setup: Vec<(&str, String)> = Vec::new();
    if let (Some(proxy), Some(registry)) = (&args.proxy, &args.registry) {
        setup.push(("registry", registry.clone()));
        setup.push(("https-proxy", proxy.clone()));
        if let Some(ca) = &args.proxy_ca {
            setup.push(("cafile", ca.display().to_string()));
        }
    }
    write_npmrc(&npmrc, &key, &token, &setup)?;
    Ok(summary(&args, &answer, &npmrc, &key))
}

/// `POST /-/phantom/v1/exchange` with the ID token: the broker's 201 answer, or why not.
async fn exchange(client: &HttpsClient, base: &str, args: &LoginArgs, id_token: &IdToken) -> Result<Value, String> {
    let exchange: Uri = format!("{base}-/phantom/v1/exchange").parse().map_err(|_| "cannot build the exchange URL")?;
    let mut body = serde_json::json!({ "packages": args.packages, "actions": args.actions });
    if let Some(ttl) = args.ttl_seconds.or(args.ttl.map(|t| t.as_secs())) {
        body["ttl_seconds"] = ttl.into();
    }
    let req = Request::builder()
        .method(Method::POST)
        .uri(exchange)
        .header(header::AUTHORIZATION, format!("Bearer {}", id_token.expose()))
        .header(header::CONTENT_TYPE, "application/json")
        .body(net::full(body.to_string()))
        .map_err(|e| e.to_string())?;
    let (parts, bytes) =
        net::fetch(client, req, TIMEOUT, 64 * 1024).await.map_err(|e| format!("the exchange failed: {e}"))?;
    let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if parts.status != http::StatusCode::CREATED {
        let msg = answer.get("message").and_then(Value::as_str).unwrap_or("no message");
        return Err(format!("the broker refused the exchange ({}): {msg}", parts.status));
    }
    Ok(answer)
}

/// What `phantom login` says it did (never the phantom).
fn summary(args: &LoginArgs, answer: &Value, npmrc: &Path, key: &str) -> String {
    let list = |k: &str| {
        answer
            .get(k)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "))
            .unwrap_or_default()
    };
    let mut summary = format!(
        "phantom login: a phantom for {} ({}) until {} is in {} under {}",
        list("packages"),
        list("actions"),
        answer.get("expires").and_then(Value::as_str).unwrap_or("?"),
        npmrc.display(),
        &key[..key.len() - ":_authToken".len()],
    );
    if let (Some(proxy), Some(registry)) = (&args.proxy, &args.registry) {
        summary.push_str(&format!(
            "\nthrough the broker's forward proxy: {} also has these lines for the agent",
            npmrc.display()
        ));
        summary.push_str(&format!("\n  registry={registry}"));
        summary.push_str(&format!("\n  https-proxy={proxy}"));
        match &args.proxy_ca {
            Some(ca) => summary.push_str(&format!("\n  cafile={}", ca.display())),
            None => summary.push_str("\n  cafile=<the broker proxy's CA certificate> (not written: give --proxy-ca)"),
        }
    }
    summary
}

fn scheme(broker: &Uri) -> &str {
    broker.scheme_str().unwrap_or("https")
}

fn ttl(text: &str) -> Result<std::time::Duration, String> {
    phantom_broker::support::units::parse_duration(text)
}

/// The `//host[:port]/path/` key npm files a registry's token under.
fn nerf_dart(url: &str, what: &str) -> Result<String, String> {
    let uri: Uri = url.parse().map_err(|_| format!("{what}: `{url}` is not a URL"))?;
    if uri.scheme_str() != Some("https") {
        return Err(format!("{what}: `{url}` must be an https:// URL (the proxy tunnels TLS only)"));
    }
    let authority = uri.authority().ok_or_else(|| format!("{what}: `{url}` has no host"))?;
    let authority = authority.as_str().strip_suffix(":443").unwrap_or(authority.as_str());
    Ok(format!("//{}{}/", authority.to_ascii_lowercase(), uri.path().trim_end_matches('/')))
}

/// The ID token: from a file, from `NPM_ID_TOKEN`, or from GitHub Actions' token endpoint.
async fn id_token(client: &HttpsClient, file: Option<&Path>, audience: &str) -> Result<IdToken, String> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        return Ok(IdToken::new(text.trim().to_owned()));
    }
    if let Ok(t) = std::env::var("NPM_ID_TOKEN") {
        if !t.trim().is_empty() {
            return Ok(IdToken::new(t.trim().to_owned()));
        }
    }
    let (Ok(url), Ok(bearer)) =
        (std::env::var("ACTIONS_ID_TOKEN_REQUEST_URL"), std::env::var("ACTIONS_ID_TOKEN_REQUEST_TOKEN"))
    else {
        return Err("no ID token: pass --id-token-file, set NPM_ID_TOKEN, or run in GitHub Actions with `permissions: id-token: write`".into());
    };
    let bearer = Secret::new(bearer);
    let sep = if url.contains('?') { '&' } else { '?' };
    let uri: Uri = format!("{url}{sep}audience={}", utf8_percent_encode(audience, NON_ALPHANUMERIC))
        .parse()
        .map_err(|_| "ACTIONS_ID_TOKEN_REQUEST_URL is not a URL")?;
    let req = Request::get(uri)
        .header(header::AUTHORIZATION, format!("Bearer {}", bearer.expose()))
        .header(header::ACCEPT, "application/json")
        .body(net::empty())
        .map_err(|e| e.to_string())?;
    let (parts, bytes) =
        net::fetch(client, req, TIMEOUT, 64 * 1024).await.map_err(|e| format!("the ID token request failed: {e}"))?;
    if !parts.status.is_success() {
        return Err(format!("the ID token request answered {}", parts.status));
    }
    let v: Value = serde_json::from_slice(&bytes).map_err(|_| "the ID token answer is not JSON")?;
    let token = v.get("value").and_then(Value::as_str).ok_or("the ID token answer has no `value`")?;
    Ok(IdToken::new(token.to_owned()))
}

fn default_npmrc() -> PathBuf {
    if let Ok(p) = std::env::var("NPM_CONFIG_USERCONFIG") {
        return PathBuf::from(p);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| ".".into());
    Path::new(&home).join(".npmrc")
}

/// Replaces (or adds) `key=token` and each of `setup`'s `name=value` lines in the file, keeping
/// every other line; owner-only access.
fn write_npmrc(path: &Path, key: &str, token: &Secret, setup: &[(&str, String)]) -> Result<(), String> {
    let existing = std::fs::read_to_string(path).unwrap_or_default();
    let prefix = format!("{key}=");
    let replaced = |line: &str| {
        let line = line.trim_start();
        line.starts_with(&prefix) || setup.iter().any(|(name, _)| line.split('=').next().map(str::trim) == Some(*name))
    };
    let mut out = zeroize::Zeroizing::new(String::new());
    for line in existing.lines().filter(|l| !replaced(l)) {
        out.push_str(line);
        out.push('\n');
    }
    for (name, value) in setup {
        out.push_str(&format!("{name}={value}\n"));
    }
    out.push_str(&prefix);
    out.push_str(token.expose());
    out.push('\n');
    let tmp = path.with_extension("phantom-tmp");
    {
        use std::io::Write;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
        f.write_all(out.as_bytes()).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_keys_are_npms_nerf_darts() {
        assert_eq!(nerf_dart("https://Registry.Test/", "r").unwrap(), "//registry.test/");
        assert_eq!(nerf_dart("https://registry.test:443/npm/", "r").unwrap(), "//registry.test/npm/");
        assert_eq!(nerf_dart("https://localhost:4873", "r").unwrap(), "//localhost:4873/");
        assert!(nerf_dart("http://localhost:4873/", "r").unwrap_err().contains("https://"));
    }

    #[test]
    fn npmrc_keeps_other_lines_and_replaces_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".npmrc");
        std::fs::write(&path, "registry=https://127.0.0.1:8443/\n//127.0.0.1:8443/:_authToken=old\ncafile=/x\n")
            .unwrap();
        write_npmrc(&path, "//127.0.0.1:8443/:_authToken", &Secret::new("phm_new".into()), &[]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "registry=https://127.0.0.1:8443/\ncafile=/x\n//127.0.0.1:8443/:_authToken=phm_new\n");
        // An agent's forward-proxy setup replaces the lines it names.
        let setup = [("registry", "https://up.test/".to_owned()), ("https-proxy", "http://127.0.0.1:3128".to_owned())];
        write_npmrc(&path, "//up.test/:_authToken", &Secret::new("phm_2".into()), &setup).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "cafile=/x\n//127.0.0.1:8443/:_authToken=phm_new\nregistry=https://up.test/\nhttps-proxy=http://127.0.0.1:3128\n\
             //up.test/:_authToken=phm_2\n"
        );
    }
}
