//! A real headless Chromium driven over WebDriver (`fantoccini` + `chromedriver`).
//!
//! [`Browser::start`] starts `/usr/bin/chromedriver` on a free port and opens a session of
//! `/usr/bin/chromium` (headless, 1280×900, precise memory info for heap readings). Without
//! them a test prints a skip note and gets `None`; under `CI=true` it panics instead.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::in_ci;
use super::procs::free_port;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A browser session and the chromedriver serving it (killed on drop).
pub struct Browser {
    pub client: fantoccini::Client,
    driver: Child,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Browser {
    /// None (after printing a skip note) when chromium/chromedriver are missing outside CI;
    /// panics under CI=true.
    pub async fn start() -> Option<Browser> {
        let missing: Vec<&str> = [CHROMIUM, CHROMEDRIVER]
            .into_iter()
            .filter(|p| !Path::new(p).exists())
            .collect();
        if !missing.is_empty() {
            if in_ci() {
                panic!(
                    "the browser tests need {missing:?} under CI (apt-get install chromium chromium-driver)"
                );
            }
            eprintln!(
                "skipping a browser test: {missing:?} missing (apt-get install chromium chromium-driver)"
            );
            return None;
        }
        let port = free_port();
        let mut driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let start = Instant::now();
        loop {
            let ready = http.get(format!("{base}/status")).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            if start.elapsed() > Duration::from_secs(20)
                || driver.try_wait().ok().flatten().is_some()
            {
                let _ = driver.kill();
                panic!("chromedriver on port {port} did not answer /status");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--enable-precise-memory-info",
                    "--window-size=1280,900",
                ],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = fantoccini::ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&base)
            .await;
        let client = match client {
            Ok(c) => c,
            Err(e) => {
                let _ = driver.kill();
                panic!("chromium session: {e}");
            }
        };
        Some(Browser { client, driver })
    }

    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("goto {url}: {e}"));
    }

    /// Run `js` in the page (it returns its value with `return`).
    pub async fn eval(&self, js: &str) -> serde_json::Value {
        self.client
            .execute(js, Vec::new())
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{js}"))
    }

    /// Poll the expression `js_condition` every 50 ms until it is truthy (an exception counts
    /// as false); panic naming it after `timeout`.
    pub async fn wait_until(&self, js_condition: &str, timeout: Duration) {
        let script = format!("try {{ return !!({js_condition}); }} catch (e) {{ return false; }}");
        let start = Instant::now();
        loop {
            if self.eval(&script).await == serde_json::Value::Bool(true) {
                return;
            }
            if start.elapsed() > timeout {
                let url = self
                    .client
                    .current_url()
                    .await
                    .map(|u| u.to_string())
                    .unwrap_or_default();
                let text = self
                    .eval("return document.body ? document.body.innerText.slice(0, 2000) : ''")
                    .await;
                panic!(
                    "not true after {timeout:?}: {js_condition}\nat {url}\npage text: {}",
                    text.as_str().unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A PNG of the window into $JOBEXEC_SCREENSHOT_DIR or
    /// <CARGO_TARGET_DIR or target>/screenshots/NAME.png; returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let dir = std::env::var_os("JOBEXEC_SCREENSHOT_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                std::env::var_os("CARGO_TARGET_DIR")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from("target"))
                    .join("screenshots")
            });
        std::fs::create_dir_all(&dir).expect("the screenshot directory");
        let png = self.client.screenshot().await.expect("a screenshot");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("the screenshot is written");
        eprintln!("screenshot: {}", path.display());
        path
    }

    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}
