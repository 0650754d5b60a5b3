//! `phantom certs dev`: a local CA and a server certificate for localhost and 127.0.0.1, for
//! development and tests. ECDSA P-256 keys (fast handshakes), written with owner-only access.

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub(crate) struct Written {
    pub(crate) ca: PathBuf,
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
}

/// Writes `ca.pem`, `ca-key.pem`, `server.pem` and `server-key.pem` into `dir`.
pub(crate) fn write_dev_certs(dir: &Path, extra_names: &[String], force: bool) -> Result<Written, String> {
    let files = ["ca.pem", "ca-key.pem", "server.pem", "server-key.pem"].map(|f| dir.join(f));
    if !force {
        if let Some(existing) = files.iter().find(|f| f.exists()) {
            return Err(format!("{} exists; pass --force to replace the certificates", existing.display()));
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let err = |e: rcgen::Error| format!("certificate generation failed: {e}");

    // From the start of today (UTC), so that a clock a little behind still trusts them.
    let start = time::OffsetDateTime::now_utc().replace_time(time::Time::MIDNIGHT);
    let years = |n: i64| start + time::Duration::days(365 * n);
    let ca_key = KeyPair::generate().map_err(err)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name.push(DnType::CommonName, "phantom-broker development CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    ca.not_before = start;
    ca.not_after = years(5);
    let ca_cert = ca.self_signed(&ca_key).map_err(err)?;

    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    names.extend(extra_names.iter().cloned());
    let server_key = KeyPair::generate().map_err(err)?;
    let mut server = CertificateParams::new(names).map_err(err)?;
    server.distinguished_name.push(DnType::CommonName, "phantom-broker");
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.not_before = start;
    server.not_after = years(1);
    let server_cert = server.signed_by(&server_key, &ca_cert, &ca_key).map_err(err)?;

    let [ca_path, ca_key_path, cert_path, key_path] = files;
    write(&ca_path, &ca_cert.pem(), false)?;
    write(&ca_key_path, &ca_key.serialize_pem(), true)?;
    write(&cert_path, &server_cert.pem(), false)?;
    write(&key_path, &server_key.serialize_pem(), true)?;
    Ok(Written { ca: ca_path, cert: cert_path, key: key_path })
}

fn write(path: &Path, text: &str, private: bool) -> Result<(), String> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if private { 0o600 } else { 0o644 });
    }
    let mut f = opts.open(path).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    f.write_all(text.as_bytes()).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn dev_certs_load_into_rustls() {
        let dir = tempfile::tempdir().unwrap();
        let w = write_dev_certs(dir.path(), &["broker.test".into()], false).unwrap();
        phantom_broker::support::net::server_config(&w.cert, &w.key).unwrap();
        phantom_broker::support::net::client_config(Some(&w.ca)).unwrap();
        assert!(write_dev_certs(dir.path(), &[], false).unwrap_err().contains("--force"));
        write_dev_certs(dir.path(), &[], true).unwrap();
    }

    /// Runs a TLS handshake in memory and returns the suite the two sides agreed on.
    fn negotiate(server: Arc<rustls::ServerConfig>, client: rustls::ClientConfig) -> rustls::CipherSuite {
        let name = rustls::pki_types::ServerName::try_from("broker.test").unwrap();
        let mut c = rustls::Connection::from(rustls::ClientConnection::new(Arc::new(client), name).unwrap());
        let mut s = rustls::Connection::from(rustls::ServerConnection::new(server).unwrap());
        fn pass(from: &mut rustls::Connection, to: &mut rustls::Connection) {
            let mut wire = Vec::new();
            while from.wants_write() {
                from.write_tls(&mut wire).unwrap();
            }
            let mut rest = &wire[..];
            while !rest.is_empty() {
                to.read_tls(&mut rest).unwrap();
                to.process_new_packets().unwrap();
            }
        }
        for _ in 0..8 {
            pass(&mut c, &mut s);
            pass(&mut s, &mut c);
        }
        assert!(!c.is_handshaking() && !s.is_handshaking());
        let suite = s.negotiated_cipher_suite().unwrap().suite();
        assert_eq!(Some(suite), c.negotiated_cipher_suite().map(|s| s.suite()));
        suite
    }

    #[test]
    fn the_listener_chooses_aes_128_gcm_over_a_clients_order_and_still_serves_the_others() {
        use rustls::CipherSuite::*;
        let dir = tempfile::tempdir().unwrap();
        let w = write_dev_certs(dir.path(), &["broker.test".into()], false).unwrap();
        let server = phantom_broker::support::net::server_config(&w.cert, &w.key).unwrap();
        let client = |suites: Option<&[rustls::CipherSuite]>| {
            // ring's own order, AES-256-GCM first, as OpenSSL's (Node's, curl's) is.
            let mut provider = rustls::crypto::ring::default_provider();
            if let Some(only) = suites {
                provider.cipher_suites.retain(|s| only.contains(&s.suite()));
            }
            let mut roots = rustls::RootCertStore::empty();
            roots.add_parsable_certificates(phantom_broker::support::net::load_certs(&w.ca).unwrap());
            rustls::ClientConfig::builder_with_provider(Arc::new(provider))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth()
        };
        assert_eq!(negotiate(server.clone(), client(None)), TLS13_AES_128_GCM_SHA256);
        assert_eq!(negotiate(server.clone(), client(Some(&[TLS13_AES_256_GCM_SHA384]))), TLS13_AES_256_GCM_SHA384);
        assert_eq!(
            negotiate(server.clone(), client(Some(&[TLS13_CHACHA20_POLY1305_SHA256]))),
            TLS13_CHACHA20_POLY1305_SHA256
        );
        // The broker as a client offers AES-128-GCM first too.
        let ours = phantom_broker::support::net::client_config(Some(&w.ca)).unwrap();
        assert_eq!(ours.crypto_provider().cipher_suites[0].suite(), TLS13_AES_128_GCM_SHA256);
    }
}
