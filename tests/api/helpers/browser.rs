//! A real headless Chromium driven over WebDriver (chromedriver + `fantoccini`), for the
//! dashboard's browser tests.
//!
//! [`Browser::start`] starts `/usr/bin/chromedriver` on a free port and opens a session of
//! `/usr/bin/chromium --headless=new`; the driver (and so the browser) is killed when the
//! [`Browser`] is dropped. Missing binaries skip the test with a note outside CI and fail it
//! under `CI=true`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::in_ci;
use super::procs::free_port;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A browser session and the chromedriver serving it.
pub struct Browser {
    pub client: fantoccini::Client,
    driver: Child,
}

impl Browser {
    /// None (after printing a skip note) when chromium/chromedriver are missing outside CI;
    /// panics under CI=true.
    pub async fn start() -> Option<Browser> {
        for bin in [CHROMIUM, CHROMEDRIVER] {
            if !std::path::Path::new(bin).exists() {
                assert!(!in_ci(), "{bin} is required under CI but is missing");
                eprintln!("skipping a browser test: {bin} is missing");
                return None;
            }
        }
        let port = free_port();
        let mut driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let start = Instant::now();
        loop {
            if let Ok(resp) = http.get(format!("{base}/status")).send().await
                && resp.status().is_success()
            {
                break;
            }
            if start.elapsed() > Duration::from_secs(20) {
                let _ = driver.kill();
                panic!("chromedriver did not answer on {base}/status in 20 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let caps = serde_json::json!({
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--enable-precise-memory-info",
                    "--window-size=1280,900",
                    "--disable-dev-shm-usage",
                ],
            }
        });
        let serde_json::Value::Object(caps) = caps else {
            unreachable!()
        };
        // hyper-rustls turns on aws-lc beside our ring: name the provider (once per process).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = fantoccini::ClientBuilder::rustls()
            .expect("a rustls connector")
            .capabilities(caps)
            .connect(&base)
            .await;
        match client {
            Ok(client) => Some(Browser { client, driver }),
            Err(e) => {
                let _ = driver.kill();
                panic!("cannot open a chromium session: {e}");
            }
        }
    }

    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("goto {url}: {e}"));
    }

    /// Run `js` in the page (a function body: it uses `return`); its JSON result.
    pub async fn eval(&self, js: &str) -> serde_json::Value {
        self.client
            .execute(js, Vec::new())
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{js}"))
    }

    /// Poll the expression `js_condition` every 50 ms until it is truthy; panic with it after
    /// `timeout`.
    pub async fn wait_until(&self, js_condition: &str, timeout: Duration) {
        let js = format!("try {{ return !!({js_condition}); }} catch (e) {{ return false; }}");
        let start = Instant::now();
        loop {
            if self.eval(&js).await == serde_json::Value::Bool(true) {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "still false after {timeout:?}: {js_condition}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A PNG of the window into `$JOBEXEC_SCREENSHOT_DIR` (or `<target>/screenshots`) as
    /// `name.png`; its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let dir = std::env::var_os("JOBEXEC_SCREENSHOT_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                std::env::var_os("CARGO_TARGET_DIR")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
                    .join("screenshots")
            });
        std::fs::create_dir_all(&dir).expect("the screenshot directory");
        let png = self.client.screenshot().await.expect("a screenshot");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("the screenshot is written");
        path
    }

    pub async fn close(mut self) {
        let client = self.client.clone();
        let _ = client.close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
