//! A minimal WebDriver client: Debian's chromedriver driving headless Chromium, for the tests that
//! look at pages. Blocking: one HTTP/1.1 request per loopback connection (`Connection: close`),
//! JSON in and out. Any WebDriver error panics with its `value.error` and `value.message`.
//! Drop ends the session (Chromium quits with it) and kills chromedriver.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The W3C key of an element reference in a command's JSON.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub(crate) struct Browser {
    driver: Child,
    port: u16,
    session: String,
    shots: PathBuf,
    /// Chromium's `--user-data-dir`, removed after the driver is gone (fields drop after `drop`).
    profile: tempfile::TempDir,
}

pub(crate) struct Element<'a> {
    browser: &'a Browser,
    id: String,
}

impl Browser {
    /// Starts chromedriver on a free loopback port and a headless Chromium session that accepts
    /// the test CA's certificates. Screenshots go to `screenshots_dir`.
    pub(crate) fn start(screenshots_dir: &Path) -> Browser {
        let port = super::free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start chromedriver (apt install chromium-driver): {e}"));
        let profile = tempfile::tempdir().unwrap();
        let mut b = Browser { driver, port, session: String::new(), shots: screenshots_dir.to_path_buf(), profile };
        // From here on a panic drops `b`, which kills chromedriver.
        let start = Instant::now();
        loop {
            if let Ok((_, v)) = request(port, "GET", "/status", None, Duration::from_secs(2)) {
                if v["value"]["ready"] == true {
                    break;
                }
            }
            if let Some(status) = b.driver.try_wait().unwrap() {
                panic!("chromedriver exited before it was ready: {status}");
            }
            assert!(start.elapsed() < Duration::from_secs(10), "chromedriver not ready on port {port} after 10 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--window-size=1366,900",
            &format!("--user-data-dir={}", b.profile.path().display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "acceptInsecureCerts": true,
            "timeouts": {"implicit": 0, "pageLoad": 30_000, "script": 30_000},
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args},
        }}});
        let value = b.cmd("POST", "/session", Some(caps));
        b.session = value["sessionId"].as_str().expect("session id").to_string();
        b
    }

    /// Sends one command; panics on a transport failure or a WebDriver error. Returns `value`.
    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.try_cmd(method, path, body).unwrap_or_else(|(_, message)| panic!("WebDriver {method} {path}: {message}"))
    }

    /// A command's `value`, or its WebDriver error as `(error, message)`.
    fn try_cmd(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, (String, String)> {
        let (status, mut v) = request(self.port, method, path, body.as_ref(), Duration::from_secs(90))
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        let value = v["value"].take();
        if status == 200 {
            return Ok(value);
        }
        let text = |k: &str| value[k].as_str().unwrap_or_default().to_string();
        Err((text("error"), format!("HTTP {status}: {}: {}", text("error"), text("message"))))
    }

    fn session_cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.cmd(method, &format!("/session/{}{path}", self.session), body)
    }

    pub(crate) fn goto(&self, url: &str) {
        self.session_cmd("POST", "/url", Some(json!({"url": url})));
    }

    pub(crate) fn url(&self) -> String {
        self.session_cmd("GET", "/url", None).as_str().unwrap().to_string()
    }

    pub(crate) fn title(&self) -> String {
        self.session_cmd("GET", "/title", None).as_str().unwrap().to_string()
    }

    /// The page's HTML as the browser serializes it now (not the bytes the server sent).
    pub(crate) fn source(&self) -> String {
        self.session_cmd("GET", "/source", None).as_str().unwrap().to_string()
    }

    /// The first element matching the CSS selector, now (no implicit wait), if any.
    pub(crate) fn find(&self, css: &str) -> Option<Element<'_>> {
        let path = format!("/session/{}/element", self.session);
        match self.try_cmd("POST", &path, Some(json!({"using": "css selector", "value": css}))) {
            Ok(v) => Some(self.element(&v)),
            Err((kind, _)) if kind == "no such element" => None,
            Err((_, message)) => panic!("WebDriver find {css:?}: {message}"),
        }
    }

    pub(crate) fn find_all(&self, css: &str) -> Vec<Element<'_>> {
        let v = self.session_cmd("POST", "/elements", Some(json!({"using": "css selector", "value": css})));
        v.as_array().unwrap().iter().map(|e| self.element(e)).collect()
    }

    fn element(&self, v: &Value) -> Element<'_> {
        let id = v[ELEMENT].as_str().unwrap_or_else(|| panic!("not an element reference: {v}"));
        Element { browser: self, id: id.to_string() }
    }

    /// Writes the viewport as `<screenshots_dir>/<name>.png` and returns its path.
    pub(crate) fn screenshot(&self, name: &str) -> PathBuf {
        let png = STANDARD.decode(self.session_cmd("GET", "/screenshot", None).as_str().unwrap()).unwrap();
        std::fs::create_dir_all(&self.shots).unwrap();
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }

    /// The current page's cookies, as WebDriver serializes them (`name`, `value`, `domain`,
    /// `path`, `secure`, `httpOnly`, `sameSite`, `expiry`).
    pub(crate) fn cookies(&self) -> Vec<Value> {
        match self.session_cmd("GET", "/cookie", None) {
            Value::Array(cookies) => cookies,
            other => panic!("cookies: not an array: {other}"),
        }
    }

    /// Adds a cookie (at least `name` and `value`) for the current page's domain.
    pub(crate) fn add_cookie(&self, cookie: Value) {
        self.session_cmd("POST", "/cookie", Some(json!({"cookie": cookie})));
    }

    pub(crate) fn delete_cookies(&self) {
        self.session_cmd("DELETE", "/cookie", None);
    }

    /// Runs `script` as a function body with `arguments` = `args` (an `Element::reference()`
    /// passes an element); its `return` value.
    pub(crate) fn execute(&self, script: &str, args: Vec<Value>) -> Value {
        self.session_cmd("POST", "/execute/sync", Some(json!({"script": script, "args": args})))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let path = format!("/session/{}", self.session);
            let _ = request(self.port, "DELETE", &path, None, Duration::from_secs(10));
        }
        // Chromium outlives chromedriver when the session was not ended (a hung page): its main
        // process, chromedriver's child, goes too (and takes its own children with it).
        let browsers = children(self.driver.id());
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        if !browsers.is_empty() {
            let _ = Command::new("kill").arg("-KILL").args(&browsers).stderr(Stdio::null()).status();
        }
    }
}

impl Element<'_> {
    fn cmd(&self, method: &str, what: &str, body: Option<Value>) -> Value {
        self.browser.session_cmd(method, &format!("/element/{}{what}", self.id), body)
    }

    pub(crate) fn click(&self) {
        self.cmd("POST", "/click", Some(json!({})));
    }

    /// The rendered (visible) text.
    pub(crate) fn text(&self) -> String {
        self.cmd("GET", "/text", None).as_str().unwrap().to_string()
    }

    /// The HTML attribute as WebDriver's getAttribute reads it (booleans as "true"); None when
    /// absent. What was typed into a field is `prop("value")`, not `attr("value")`.
    pub(crate) fn attr(&self, name: &str) -> Option<String> {
        match self.cmd("GET", &format!("/attribute/{name}"), None) {
            Value::Null => None,
            Value::String(s) => Some(s),
            other => Some(other.to_string()),
        }
    }

    /// The DOM property (`value`, `checked`, `href` resolved), as JSON; Null when undefined.
    pub(crate) fn prop(&self, name: &str) -> Value {
        self.cmd("GET", &format!("/property/{name}"), None)
    }

    /// Types `text` into the element (focusing it first).
    pub(crate) fn send_keys(&self, text: &str) {
        self.cmd("POST", "/value", Some(json!({"text": text})));
    }

    /// The element as a script argument for `Browser::execute`.
    pub(crate) fn reference(&self) -> Value {
        json!({ ELEMENT: self.id })
    }
}

/// One HTTP/1.1 exchange with chromedriver: the status and the JSON body (Content-Length framed).
fn request(port: u16, method: &str, path: &str, body: Option<&Value>, limit: Duration) -> Result<(u16, Value), String> {
    let io = |e: std::io::Error| format!("{method} {path} on 127.0.0.1:{port}: {e}");
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(io)?;
    s.set_read_timeout(Some(limit)).map_err(io)?;
    let body = body.map(Value::to_string).unwrap_or_default();
    let len = body.len();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n").map_err(io)?;
    write!(s, "Content-Type: application/json; charset=utf-8\r\nContent-Length: {len}\r\n\r\n{body}").map_err(io)?;
    let mut r = BufReader::new(s);
    let (mut line, mut status, mut len) = (String::new(), None, None);
    while r.read_line(&mut line).map_err(io)? > 2 {
        let (name, value) = line.split_once([' ', ':']).unwrap_or_default();
        if status.is_none() {
            status = value.split(' ').next().and_then(|c| c.parse::<u16>().ok());
        } else if name.eq_ignore_ascii_case("content-length") {
            len = value.trim().parse::<usize>().ok();
        }
        line.clear();
    }
    let (status, len) = (status.ok_or("no status line")?, len.ok_or("no Content-Length")?);
    let mut bytes = vec![0; len];
    r.read_exact(&mut bytes).map_err(io)?;
    let json = serde_json::from_slice(&bytes).map_err(|e| format!("HTTP {status}, not JSON: {e}"))?;
    Ok((status, json))
}

/// The pids of `pid`'s child processes (/proc/*/stat reads `pid (comm) state ppid ...`).
fn children(pid: u32) -> Vec<String> {
    let ppid = |name: &str| {
        let stat = std::fs::read_to_string(format!("/proc/{name}/stat")).ok()?;
        stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse::<u32>().ok()
    };
    let Ok(procs) = std::fs::read_dir("/proc") else { return Vec::new() };
    procs.filter_map(|e| e.ok()?.file_name().into_string().ok()).filter(|name| ppid(name) == Some(pid)).collect()
}
