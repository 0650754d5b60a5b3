//! Forward-proxy mode for agents behind `HTTPS_PROXY`: which `CONNECT` targets open a tunnel
//! (the configured upstreams' hosts, nothing else), the leaf certificate each tunnel is served
//! with, and the checks a request inside a tunnel passes before the pipeline takes it (its
//! `Host`, and the upstream its path belongs to). The sockets are `server::tunnel`'s.

use crate::config::{Config, ProxyConfig};
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::ServerConfig;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// A leaf is valid for this long, and minted again after [`LEAF_REFRESH`], so a broker that
/// runs for months never serves an expired one.
const LEAF_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);
const LEAF_REFRESH: Duration = Duration::from_secs(24 * 3600);

/// The CA that signs the leaves. Only its subject, key identifier and key are used.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// Every host the proxy tunnels to: one per distinct `host:port` of the https upstreams.
pub(crate) struct Tunnels {
    ca: Ca,
    by_authority: HashMap<String, Arc<Tunnel>>,
}

/// One host the proxy tunnels to.
pub(crate) struct Tunnel {
    /// `host:port`, lower case (IPv6 in brackets): what `CONNECT` must name.
    pub(crate) authority: String,
    /// The host alone, lower case, without brackets: what SNI and `Host` must name.
    pub(crate) host: String,
    pub(crate) port: u16,
    /// The upstreams on this host, by their URL's path prefix, longest first.
    upstreams: Vec<(String, Arc<str>)>,
    /// The leaf certificate's TLS config and when it was minted (the cache is one entry per
    /// configured host, so it is bounded by the config).
    tls: Mutex<Option<(Instant, Arc<ServerConfig>)>>,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel").field("authority", &self.authority).finish_non_exhaustive()
    }
}

/// Why a `CONNECT` is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("the proxy accepts only CONNECT (no plain-HTTP forwarding)")]
    NotConnect,
    #[error("the CONNECT target is not host:port")]
    BadTarget,
    #[error("the proxy tunnels only to the configured registry hosts")]
    NotAnUpstream,
}

impl ConnectError {
    pub(crate) fn status(self) -> u16 {
        match self {
            ConnectError::BadTarget => 400,
            ConnectError::NotConnect | ConnectError::NotAnUpstream => 403,
        }
    }
}

impl Tunnels {
    pub(crate) fn new(config: &Config, proxy: &ProxyConfig) -> Result<Tunnels, String> {
        let ca = load_ca(proxy)?;
        let mut by_authority: HashMap<String, Arc<Tunnel>> = HashMap::new();
        for u in config.upstreams.iter().filter(|u| u.url.scheme_str() == Some("https")) {
            let Some(host) = u.url.host() else { continue };
            let host = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
            let port = u.url.port_u16().unwrap_or(443);
            let authority = authority(&host, port);
            let prefix = u.url.path().trim_end_matches('/').to_owned();
            let tunnel = by_authority.entry(authority.clone()).or_insert_with(|| {
                Arc::new(Tunnel { authority, host, port, upstreams: Vec::new(), tls: Mutex::new(None) })
            });
            let t = Arc::get_mut(tunnel).expect("built here, not shared yet");
            t.upstreams.push((prefix, u.name.as_str().into()));
            t.upstreams.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        }
        let tunnels = Tunnels { ca, by_authority };
        // Minted once at start, so a CA that cannot sign stops the start, not a request.
        for t in tunnels.by_authority.values() {
            tunnels.tls(t)?;
        }
        Ok(tunnels)
    }

    /// The tunnel a `CONNECT` request opens, from its method and request target.
    pub(crate) fn connect(&self, method: &str, target: &str) -> Result<Arc<Tunnel>, ConnectError> {
        if method != "CONNECT" {
            return Err(ConnectError::NotConnect);
        }
        let (host, port) = split_authority(target).ok_or(ConnectError::BadTarget)?;
        self.by_authority.get(&authority(&host, port)).cloned().ok_or(ConnectError::NotAnUpstream)
    }

    /// The TLS config of `tunnel`'s leaf, minted on first use and again once a day.
    pub(crate) fn tls(&self, tunnel: &Tunnel) -> Result<Arc<ServerConfig>, String> {
        let mut slot = tunnel.tls.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((minted, tls)) = slot.as_ref() {
            if minted.elapsed() < LEAF_REFRESH {
                return Ok(tls.clone());
            }
        }
        let tls = self.mint(&tunnel.host)?;
        *slot = Some((Instant::now(), tls.clone()));
        Ok(tls)
    }

    fn mint(&self, host: &str) -> Result<Arc<ServerConfig>, String> {
        let err = |e: rcgen::Error| format!("cannot mint the proxy's certificate for {host}: {e}");
        let key = KeyPair::generate().map_err(err)?;
        let mut params = CertificateParams::new(vec![host.to_owned()]).map_err(err)?;
        params.distinguished_name.push(DnType::CommonName, host);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = SystemTime::now();
        // An hour's slack for clocks behind the broker's.
        params.not_before = (now - Duration::from_secs(3600)).into();
        params.not_after = (now + LEAF_VALIDITY).into();
        let cert = params.signed_by(&key, &self.ca.cert, &self.ca.key).map_err(err)?;
        let chain = vec![CertificateDer::from(cert.der().to_vec())];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        crate::support::net::server_config_from(chain, key)
            .map_err(|e| format!("the proxy's certificate for {host}: {e}"))
    }

    #[cfg(test)]
    fn authorities(&self) -> impl Iterator<Item = &str> {
        self.by_authority.keys().map(String::as_str)
    }
}

impl Tunnel {
    /// Whether a `Host` header (or HTTP/2 `:authority`) names this tunnel's host and port
    /// (the port may be left out when it is 443).
    pub(crate) fn is_host(&self, value: &str) -> bool {
        if let Some((host, port)) = split_authority(value) {
            return host == self.host && port == self.port;
        }
        let bare = value.strip_prefix('[').and_then(|v| v.strip_suffix(']')).unwrap_or(value);
        self.port == 443 && bare.eq_ignore_ascii_case(&self.host) && (value.starts_with('[') || !value.contains(':'))
    }

    /// Whether the TLS client's SNI fits: it must name the host, and may be absent only for an
    /// IP address (SNI cannot carry one).
    pub(crate) fn is_sni(&self, sni: Option<&str>) -> bool {
        match sni {
            Some(name) => name.eq_ignore_ascii_case(&self.host),
            None => self.host.parse::<std::net::IpAddr>().is_ok(),
        }
    }

    /// The upstream a path inside the tunnel belongs to, and the path below its prefix.
    pub(crate) fn upstream_for<'p>(&self, path: &'p str) -> Option<(&Arc<str>, &'p str)> {
        self.upstreams.iter().find_map(|(prefix, name)| {
            let rest = path.strip_prefix(prefix.as_str())?;
            if rest.is_empty() {
                Some((name, "/"))
            } else if rest.starts_with('/') {
                Some((name, rest))
            } else {
                None
            }
        })
    }
}

fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// `host:port` (or `[v6]:port`) into the lower-case host without brackets and the port.
fn split_authority(s: &str) -> Option<(String, u16)> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest.split_once("]:")?;
        h.parse::<std::net::Ipv6Addr>().ok()?;
        (h, p)
    } else {
        let (h, p) = s.rsplit_once(':')?;
        if h.contains(':') {
            return None;
        }
        (h, p)
    };
    let ok = !host.is_empty()
        && host.len() <= 253
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':'));
    let port: u16 = port.parse().ok().filter(|p| *p != 0 && !port.starts_with('+'))?;
    ok.then(|| (host.to_ascii_lowercase(), port))
}

fn load_ca(proxy: &ProxyConfig) -> Result<Ca, String> {
    let read = |p: &std::path::Path| std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()));
    let key = KeyPair::from_pem(&read(&proxy.ca_key)?).map_err(|e| format!("{}: {e}", proxy.ca_key.display()))?;
    let params = CertificateParams::from_ca_cert_pem(&read(&proxy.ca_cert)?)
        .map_err(|e| format!("{}: {e}", proxy.ca_cert.display()))?;
    // Re-signed with its own key only to serve as the issuer: rcgen takes the subject and the
    // key identifier from it; the leaves chain to the CA file the agents trust.
    let cert = params.self_signed(&key).map_err(|e| format!("{}: {e}", proxy.ca_cert.display()))?;
    Ok(Ca { cert, key })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Written {
        ca: std::path::PathBuf,
        cert: std::path::PathBuf,
        key: std::path::PathBuf,
    }

    /// A CA (`ca.pem`, `ca-key.pem`) and a server certificate for `localhost` it signed.
    fn dev_certs(dir: &std::path::Path) -> Written {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name.push(rcgen::DnType::CommonName, "proxy test CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let server_key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        let server_cert = server.signed_by(&server_key, &ca_cert, &ca_key).unwrap();
        let w = Written { ca: dir.join("ca.pem"), cert: dir.join("server.pem"), key: dir.join("server-key.pem") };
        std::fs::write(&w.ca, ca_cert.pem()).unwrap();
        std::fs::write(dir.join("ca-key.pem"), ca_key.serialize_pem()).unwrap();
        std::fs::write(&w.cert, server_cert.pem()).unwrap();
        std::fs::write(&w.key, server_key.serialize_pem()).unwrap();
        w
    }

    fn tunnels(urls: &[&str]) -> (tempfile::TempDir, Tunnels) {
        let dir = tempfile::tempdir().unwrap();
        let w = dev_certs(dir.path());
        let mut toml = format!(
            "[server]\npublic_url = \"https://broker.test/\"\ntls_cert = \"{c}\"\ntls_key = \"{k}\"\n\
             [audit]\npath = \"a.jsonl\"\n[proxy]\nca_cert = \"{ca}\"\nca_key = \"{cak}\"\n",
            c = w.cert.display(),
            k = w.key.display(),
            ca = w.ca.display(),
            cak = dir.path().join("ca-key.pem").display()
        );
        for (i, u) in urls.iter().enumerate() {
            let scope = if i == 0 { "*".to_owned() } else { format!("@s{i}") };
            toml.push_str(&format!("[upstream.u{i}]\nurl = \"{u}\"\nscopes = [\"{scope}\"]\n"));
        }
        let config = Config::parse(&dir.path().join("phantom.toml"), &toml).unwrap();
        let t = Tunnels::new(&config, config.proxy.as_ref().unwrap()).unwrap();
        (dir, t)
    }

    #[test]
    fn only_upstream_hosts_and_ports_open_a_tunnel() {
        let (_d, t) = tunnels(&["https://Registry.Test/", "https://127.0.0.1:4873/", "http://localhost:9/"]);
        let mut names: Vec<_> = t.authorities().collect();
        names.sort_unstable();
        assert_eq!(names, ["127.0.0.1:4873", "registry.test:443"]);
        assert_eq!(t.connect("CONNECT", "registry.test:443").unwrap().host, "registry.test");
        assert_eq!(t.connect("CONNECT", "REGISTRY.test:443").unwrap().port, 443);
        assert_eq!(t.connect("CONNECT", "127.0.0.1:4873").unwrap().authority, "127.0.0.1:4873");
        for (method, target, want) in [
            ("GET", "registry.test:443", ConnectError::NotConnect),
            ("connect", "registry.test:443", ConnectError::NotConnect),
            ("CONNECT", "registry.test:444", ConnectError::NotAnUpstream),
            ("CONNECT", "registry.test.evil:443", ConnectError::NotAnUpstream),
            ("CONNECT", "localhost:9", ConnectError::NotAnUpstream),
            ("CONNECT", "registry.test", ConnectError::BadTarget),
            ("CONNECT", "registry.test:", ConnectError::BadTarget),
            ("CONNECT", "registry.test:+443", ConnectError::BadTarget),
            ("CONNECT", "registry.test:0", ConnectError::BadTarget),
            ("CONNECT", "user@registry.test:443", ConnectError::BadTarget),
            ("CONNECT", "registry.test/x:443", ConnectError::BadTarget),
            ("CONNECT", "[::1:443", ConnectError::BadTarget),
            ("CONNECT", "http://registry.test:443", ConnectError::BadTarget),
        ] {
            assert_eq!(t.connect(method, target).unwrap_err(), want, "{method} {target}");
        }
    }

    #[test]
    fn host_and_sni_must_name_the_connect_host() {
        let (_d, t) = tunnels(&["https://registry.test/", "https://127.0.0.1:4873/"]);
        let named = t.connect("CONNECT", "registry.test:443").unwrap();
        assert!(named.is_host("registry.test") && named.is_host("Registry.Test:443"));
        assert!(!named.is_host("registry.test:4873") && !named.is_host("other.test") && !named.is_host(""));
        assert!(named.is_sni(Some("REGISTRY.test")) && !named.is_sni(Some("other.test")) && !named.is_sni(None));
        let ip = t.connect("CONNECT", "127.0.0.1:4873").unwrap();
        assert!(ip.is_host("127.0.0.1:4873") && !ip.is_host("127.0.0.1") && !ip.is_host("localhost:4873"));
        assert!(ip.is_sni(None) && !ip.is_sni(Some("localhost")));
    }

    #[test]
    fn paths_go_to_the_upstream_whose_prefix_they_are_under() {
        let (_d, t) = tunnels(&["https://r.test/npm/a/", "https://r.test/npm/ab"]);
        let tunnel = t.connect("CONNECT", "r.test:443").unwrap();
        assert_eq!(tunnel.upstream_for("/npm/a/pkg").map(|(n, p)| (&**n, p)), Some(("u0", "/pkg")));
        assert_eq!(tunnel.upstream_for("/npm/ab/-/ping").map(|(n, p)| (&**n, p)), Some(("u1", "/-/ping")));
        assert_eq!(tunnel.upstream_for("/npm/ab").map(|(n, p)| (&**n, p)), Some(("u1", "/")));
        assert_eq!(tunnel.upstream_for("/npm/abc/x").map(|(n, _)| &**n), None);
        assert_eq!(tunnel.upstream_for("/pkg").map(|(n, _)| &**n), None);
    }

    #[test]
    fn the_leaf_is_signed_by_the_configured_ca_for_the_host() {
        let (dir, t) = tunnels(&["https://registry.test/"]);
        let tunnel = t.connect("CONNECT", "registry.test:443").unwrap();
        let tls = t.tls(&tunnel).unwrap();
        assert!(Arc::ptr_eq(&tls, &t.tls(&tunnel).unwrap()), "the leaf is cached");
        // A client that trusts only the CA file accepts the leaf for the host, and only for it.
        let client = crate::support::net::client_config(Some(&dir.path().join("ca.pem"))).unwrap();
        for (name, ok) in [("registry.test", true), ("other.test", false)] {
            let server_name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
            let mut c = rustls::ClientConnection::new(Arc::new(client.clone()), server_name).unwrap();
            let mut s = rustls::ServerConnection::new(tls.clone()).unwrap();
            let mut failed = false;
            for _ in 0..6 {
                let mut wire = Vec::new();
                while c.wants_write() {
                    c.write_tls(&mut wire).unwrap();
                }
                s.read_tls(&mut &wire[..]).unwrap();
                s.process_new_packets().unwrap();
                let mut back = Vec::new();
                while s.wants_write() {
                    s.write_tls(&mut back).unwrap();
                }
                c.read_tls(&mut &back[..]).unwrap();
                if c.process_new_packets().is_err() {
                    failed = true;
                    break;
                }
            }
            assert_eq!(!failed && !c.is_handshaking(), ok, "{name}");
        }
    }
}
