//! A real redis-server (Debian's), over TLS with the dev certificate, on a free loopback port,
//! persistence off. It can be stopped and started again on the same port (an outage).
//!
//! The broker signs in as an ACL user with the rights `deploy/compose.yaml` documents (the
//! commands the broker runs, and its keys only); the default user is off.

use super::{free_port, wait_until, Certs, Proc};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The broker's ACL user, as `deploy/compose.yaml` documents it (with the tests' key prefix).
const BROKER_RIGHTS: &str = "~pbtest:* resetchannels -@all +@read +@write +@scripting +@transaction +@connection";

pub(crate) struct Redis {
    proc: Option<Proc>,
    /// The broker user's password, in a file (`state.password`), and the test's own admin's.
    password_file: PathBuf,
    admin_password: String,
    pub port: u16,
    dir: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    pub ca: PathBuf,
}

impl Redis {
    pub(crate) fn start(dir: &Path, certs: &Certs) -> Redis {
        assert!(
            Command::new("redis-server").arg("--version").output().is_ok_and(|o| o.status.success()),
            "redis-server is missing: run `bash .ci/run` (it installs Debian's redis-server)"
        );
        std::fs::create_dir_all(dir).unwrap();
        let (password, admin_password) = (super::random_hex(16), super::random_hex(16));
        std::fs::write(
            dir.join("users.acl"),
            format!("user default off\nuser phantom on >{password} {BROKER_RIGHTS}\nuser admin on >{admin_password} ~* &* +@all\n"),
        )
        .unwrap();
        let password_file = dir.join("password");
        std::fs::write(&password_file, format!("{password}\n")).unwrap();
        let mut r = Redis {
            proc: None,
            password_file,
            admin_password,
            port: free_port(),
            dir: dir.to_owned(),
            cert: certs.cert.clone(),
            key: certs.key.clone(),
            ca: certs.ca.clone(),
        };
        r.resume();
        r
    }

    /// `rediss://127.0.0.1:PORT/0`
    pub(crate) fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}/0", self.port)
    }

    /// The `[state]` table of a broker using it.
    pub(crate) fn state_table(&self) -> String {
        format!(
            "[state]\nbackend = \"{}\"\nca_file = \"{}\"\nkey_prefix = \"pbtest:\"\nusername = \"phantom\"\npassword = {{ file = \"{}\" }}\n",
            self.url(),
            self.ca.display(),
            self.password_file.display()
        )
    }

    /// Starts the server (again) on its port.
    pub(crate) fn resume(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("redis.log")).unwrap();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", "0", "--tls-port", &self.port.to_string()])
            .arg("--tls-cert-file")
            .arg(&self.cert)
            .arg("--tls-key-file")
            .arg(&self.key)
            .arg("--tls-ca-cert-file")
            .arg(&self.ca)
            .args(["--tls-auth-clients", "no", "--save", "", "--appendonly", "no"])
            .arg("--aclfile")
            .arg(self.dir.join("users.acl"))
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.proc = Some(Proc::new(child));
        let port = self.port;
        wait_until("redis-server", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }

    /// Stops the server (SIGKILL: an outage, not a shutdown) and waits until its port is closed.
    pub(crate) fn stop(&mut self) {
        self.proc = None;
        let port = self.port;
        wait_until("redis-server to stop", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
        });
    }

    /// Every key under `prefix` with everything it holds, as text: to look for secrets in it.
    pub(crate) fn dump(&self, prefix: &str) -> String {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let root = std::fs::read(&self.ca).unwrap();
            let url = format!("rediss://admin:{}@127.0.0.1:{}/0", self.admin_password, self.port);
            let client = redis::Client::build_with_tls(
                url.as_str(),
                redis::TlsCertificates { client_tls: None, root_cert: Some(root) },
            )
            .unwrap();
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut conn).await.unwrap();
            let mut out = String::new();
            for key in keys {
                let kind: String = redis::cmd("TYPE").arg(&key).query_async(&mut conn).await.unwrap();
                let value: Vec<String> = match kind.as_str() {
                    "string" => vec![redis::cmd("GET").arg(&key).query_async(&mut conn).await.unwrap()],
                    "hash" => redis::cmd("HGETALL").arg(&key).query_async(&mut conn).await.unwrap(),
                    "set" => redis::cmd("SMEMBERS").arg(&key).query_async(&mut conn).await.unwrap(),
                    "zset" => redis::cmd("ZRANGE").arg(&key).arg(0).arg(-1).query_async(&mut conn).await.unwrap(),
                    other => vec![format!("<{other}>")],
                };
                out.push_str(&format!("{key} {kind} {}\n", value.join(" ")));
            }
            out
        })
    }
}
