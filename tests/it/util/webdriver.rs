//! A small W3C WebDriver client: headless Chromium driven through `chromedriver` on
//! 127.0.0.1, plain JSON over HTTP, for the tests that look at the gateway's pages in a
//! real browser.
//!
//! `chromedriver` and `chromium` come from Debian's `chromium-driver` and `chromium`
//! packages, which `.ci/run` installs; it exports their paths as
//! `OLLAMA_GATEWAY_CHROMEDRIVER` and `OLLAMA_GATEWAY_CHROMIUM`. Without them
//! [`Browser::start`] says why on the terminal and returns `None` (the test skips), unless
//! `CI`, `OLLAMA_GATEWAY_REQUIRE_BROWSER` or `OLLAMA_GATEWAY_CHROMEDRIVER` is set: then it
//! fails. Every call is bounded, and dropping the [`Browser`] ends the session and kills
//! chromedriver, whatever the test did.

use serde_json::{json, Value};
use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// The key under which WebDriver names an element (W3C WebDriver §12.1).
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// The longest one WebDriver command may take (starting Chromium is the slowest).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);

/// A found element, by its WebDriver id.
#[derive(Debug, Clone)]
pub struct Element(String);

/// A browser session and the chromedriver serving it.
pub struct Browser {
    driver: Child,
    base: String,
    session: Option<String>,
    agent: ureq::Agent,
}

impl Browser {
    /// Starts chromedriver on a free port and opens a headless Chromium session, or
    /// returns `None` when they are not installed and nothing requires them.
    pub fn start(test: &str) -> Option<Browser> {
        let configured = std::env::var_os("OLLAMA_GATEWAY_CHROMEDRIVER");
        let driver_path: PathBuf = configured.clone().map_or_else(|| "chromedriver".into(), PathBuf::from);
        let chromium: PathBuf = std::env::var_os("OLLAMA_GATEWAY_CHROMIUM")
            .map_or_else(|| "/usr/bin/chromium".into(), PathBuf::from);
        let missing = |why: String| -> Option<Browser> {
            let required = ["CI", "OLLAMA_GATEWAY_REQUIRE_BROWSER", "OLLAMA_GATEWAY_CHROMEDRIVER"]
                .into_iter()
                .find(|var| std::env::var_os(var).is_some_and(|v| !v.is_empty() && v != "0"));
            if let Some(var) = required {
                panic!(
                    "{why}\n{var} is set, so the page must be tested in a browser: .ci/run installs Debian's \
                     `chromium` and `chromium-driver` and sets OLLAMA_GATEWAY_CHROMIUM and OLLAMA_GATEWAY_CHROMEDRIVER"
                );
            }
            // Straight to the terminal: the harness hides the output of a test that passes,
            // and a skipped browser test must not pass unnoticed.
            let _ = writeln!(
                std::io::stderr(),
                "\nSKIPPED {test}: {why}\n(install them with `apt-get install chromium chromium-driver`, or point \
                 OLLAMA_GATEWAY_CHROMIUM and OLLAMA_GATEWAY_CHROMEDRIVER at them)\n"
            );
            None
        };
        if !chromium.exists() {
            return missing(format!("no Chromium at {}", chromium.display()));
        }
        // A free port, given back for chromedriver to take (it takes no port 0).
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port());
        let port = port.expect("a free port on 127.0.0.1");
        let mut command = Command::new(&driver_path);
        command
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for var in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"] {
            command.env_remove(var);
        }
        let driver = match command.spawn() {
            Ok(driver) => driver,
            Err(err) => return missing(format!("cannot run {}: {err}", driver_path.display())),
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .timeout_global(Some(COMMAND_TIMEOUT))
            .build()
            .into();
        // From here on, Drop kills chromedriver whatever fails.
        let mut browser = Browser { driver, base: format!("http://127.0.0.1:{port}"), session: None, agent };
        browser.wait(Duration::from_secs(15), "chromedriver is ready", |b| {
            b.call("GET", "/status", None).ok().filter(|v| v["ready"] == json!(true))
        });
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium.to_string_lossy(),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--no-proxy-server", "--window-size=1400,860", "--hide-scrollbars"],
            },
        }}});
        let created = browser.call("POST", "/session", Some(capabilities)).unwrap_or_else(|e| panic!("{e}"));
        let id = created["sessionId"].as_str().unwrap_or_else(|| panic!("no sessionId in {created}"));
        browser.session = Some(id.to_string());
        Some(browser)
    }

    /// One command: its `value`, or the WebDriver error as text.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let url = format!("{}{path}", self.base);
        let sent = match body {
            Some(body) => {
                self.agent.post(&url).header("content-type", "application/json").send(body.to_string())
            }
            None if method == "DELETE" => self.agent.delete(&url).call(),
            None => self.agent.get(&url).call(),
        };
        let mut response = sent.map_err(|err| format!("{method} {path}: {err}"))?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().map_err(|err| format!("{method} {path}: {err}"))?;
        let reply: Value =
            serde_json::from_str(&text).map_err(|err| format!("{method} {path}: {err}: {text}"))?;
        match status {
            200 => Ok(reply["value"].clone()),
            _ => Err(format!("{method} {path}: {status} {}", reply["value"])),
        }
    }

    /// A command of this session (`/session/{id}` + `path`).
    fn session_call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let id = self.session.as_deref().ok_or("no session")?;
        self.call(method, &format!("/session/{id}{path}"), body)
    }

    /// Calls `check` every 50 ms until it gives a value, panicking with `what` after
    /// `timeout`.
    #[track_caller]
    pub fn wait<T>(&self, timeout: Duration, what: &str, mut check: impl FnMut(&Browser) -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(value) = check(self) {
                return value;
            }
            if Instant::now() > deadline {
                panic!("timed out after {timeout:?} waiting until {what}");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Opens `url` and waits for it to load.
    pub fn goto(&self, url: &str) {
        self.session_call("POST", "/url", Some(json!({"url": url}))).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Every element `css` selects now.
    pub fn find_all(&self, css: &str) -> Result<Vec<Element>, String> {
        let found =
            self.session_call("POST", "/elements", Some(json!({"using": "css selector", "value": css})))?;
        let list = found.as_array().ok_or_else(|| format!("not a list: {found}"))?;
        list.iter()
            .map(|e| {
                e[ELEMENT]
                    .as_str()
                    .map(|id| Element(id.to_string()))
                    .ok_or_else(|| format!("no element in {e}"))
            })
            .collect()
    }

    /// The first element `css` selects now, if any.
    pub fn find(&self, css: &str) -> Option<Element> {
        self.find_all(css).ok()?.into_iter().next()
    }

    /// Its rendered text.
    pub fn text(&self, element: &Element) -> Result<String, String> {
        let text = self.session_call("GET", &format!("/element/{}/text", element.0), None)?;
        Ok(text.as_str().unwrap_or_default().to_string())
    }

    /// Whether it is shown.
    pub fn displayed(&self, element: &Element) -> Result<bool, String> {
        Ok(self.session_call("GET", &format!("/element/{}/displayed", element.0), None)? == json!(true))
    }

    /// Types `text` into it.
    pub fn type_into(&self, element: &Element, text: &str) -> Result<(), String> {
        self.session_call("POST", &format!("/element/{}/value", element.0), Some(json!({"text": text})))
            .map(drop)
    }

    /// Clicks it.
    pub fn click(&self, element: &Element) -> Result<(), String> {
        self.session_call("POST", &format!("/element/{}/click", element.0), Some(json!({}))).map(drop)
    }

    /// Runs `script` (a function body) in the page and returns what it returns.
    pub fn script(&self, script: &str) -> Result<Value, String> {
        self.session_call("POST", "/execute/sync", Some(json!({"script": script, "args": []})))
    }

    /// The viewport as a PNG.
    pub fn screenshot(&self) -> Vec<u8> {
        let shot = self.session_call("GET", "/screenshot", None).unwrap_or_else(|e| panic!("{e}"));
        base64_decode(shot.as_str().unwrap_or_default()).expect("the screenshot is base64")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if self.session.is_some() {
            let _ = self.session_call("DELETE", "", None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Standard base64 (RFC 4648 §4, padding optional), as WebDriver sends screenshots.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut word, mut bits) = (0u32, 0);
    for byte in text.bytes().filter(|b| !b.is_ascii_whitespace() && *b != b'=') {
        let value = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        word = word << 6 | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((word >> bits) as u8);
            word &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[test]
fn base64_decodes_rfc_4648() {
    for (text, want) in [
        ("", ""),
        ("Zg==", "f"),
        ("Zm8=", "fo"),
        ("Zm9v", "foo"),
        ("Zm9vYmE=", "fooba"),
        ("Zm9vYmFy", "foobar"),
    ] {
        assert_eq!(base64_decode(text).as_deref(), Some(want.as_bytes()), "{text}");
    }
    assert_eq!(base64_decode("+/+/"), Some(vec![0xfb, 0xff, 0xbf]));
    assert_eq!(base64_decode("Zm9v!"), None);
}
