//! Test harness: an app on port 0 with a fresh database, test SSH hosts, an HTTP client.
//!
//! Every test that talks to the database runs twice, against SQLite (a file of its own) and
//! PostgreSQL (a database of its own, dropped at the end) — see [`db_test!`]. A missing
//! PostgreSQL skips the PostgreSQL half with a note, except under `CI=true`, where it fails.

#![allow(dead_code)]

pub mod browser;
pub mod jobctl;
pub mod procs;
pub mod sshd;
pub mod standin;

use std::collections::HashMap;
use std::net::SocketAddr;

use diesel::{Connection, RunQueryDsl, pg::PgConnection};
use job_executor::{App, Role, Settings};

pub use sshd::TestHost;

/// True under CI: a missing service is a failure there, never a skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// A temporary directory every account may write to (jobs run as the test account write
/// their ledgers there).
pub fn shared_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

/// Which database a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// Where the test PostgreSQL server is (any database on it; tests create their own).
pub fn postgres_admin_url() -> String {
    std::env::var("JOBEXEC_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A database made for one test.
pub struct TestDb {
    pub url: String,
    kind: Db,
    pg_name: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    /// A fresh database; `None` when PostgreSQL is wanted but absent outside CI.
    pub fn create(kind: Db) -> Option<TestDb> {
        match kind {
            Db::Sqlite => {
                let dir = tempfile::tempdir().expect("tempdir");
                let url = dir.path().join("jobs.db").display().to_string();
                Some(TestDb {
                    url,
                    kind,
                    pg_name: None,
                    _dir: Some(dir),
                })
            }
            Db::Postgres => {
                let admin = postgres_admin_url();
                let mut conn = match PgConnection::establish(&admin) {
                    Ok(c) => c,
                    Err(e) if in_ci() => {
                        panic!("PostgreSQL is required under CI but {admin} does not answer: {e}")
                    }
                    Err(e) => {
                        eprintln!("skipping the PostgreSQL half: {admin} does not answer: {e}");
                        return None;
                    }
                };
                let name = format!("jobexec_test_{}", uuid::Uuid::new_v4().simple());
                diesel::sql_query(format!("CREATE DATABASE {name}"))
                    .execute(&mut conn)
                    .expect("create test database");
                let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
                Some(TestDb {
                    url: format!("{base}/{name}"),
                    kind,
                    pg_name: Some(name),
                    _dir: None,
                })
            }
        }
    }

    pub fn kind(&self) -> Db {
        self.kind
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(name) = &self.pg_name
            && let Ok(mut conn) = PgConnection::establish(&postgres_admin_url())
        {
            let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut conn);
        }
    }
}

/// The secret key of test processes on PostgreSQL (SQLite tests use the key file the service
/// makes beside the database).
pub const TEST_SECRET_KEY: &str = "1:am9iLWV4ZWN1dG9yLXRlc3Qtc2VjcmV0LWtleS0zMmI=";

/// The environment that gives a test process its secret key, if the database needs one.
pub fn secret_key_env(db_url: &str) -> Option<(&'static str, &'static str)> {
    db_url
        .starts_with("postgres")
        .then_some(("JOBEXEC__SECRETS__KEY", TEST_SECRET_KEY))
}

/// Settings for a test app: port 0, one HTTP worker, the test database, short SSH bounds.
pub fn test_settings(db_url: &str, extra: &[(&str, &str)]) -> Settings {
    test_settings_with_file(db_url, None, extra)
}

/// [`test_settings`] over a settings file holding `file` (TOML), as `--config` would.
pub fn test_settings_with_file(
    db_url: &str,
    file: Option<&str>,
    extra: &[(&str, &str)],
) -> Settings {
    let mut env: HashMap<String, String> = HashMap::from([
        ("JOBEXEC__HTTP__ADDR".into(), "127.0.0.1:0".into()),
        ("JOBEXEC__HTTP__WORKERS".into(), "1".into()),
        ("JOBEXEC__HTTP__SHUTDOWN_GRACE_SECS".into(), "1".into()),
        ("JOBEXEC__DATABASE__URL".into(), db_url.into()),
        ("JOBEXEC__DATABASE__POOL_SIZE".into(), "4".into()),
        ("JOBEXEC__SSH__CONNECT_TIMEOUT_SECS".into(), "5".into()),
        ("JOBEXEC__SSH__TEST_TIMEOUT_SECS".into(), "8".into()),
    ]);
    for (k, v) in secret_key_env(db_url).iter().chain(extra) {
        // Environment variables (`JOBEXEC__SECTION__KEY`), not key paths: the loader would
        // ignore `section.key` and the test would run on the defaults.
        let variable = |c: char| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_';
        assert!(
            k.chars().all(variable),
            "{k:?} is not an environment variable"
        );
        env.insert((*k).into(), (*v).into());
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("job-executor.toml");
    if let Some(text) = file {
        std::fs::write(&path, text).expect("settings file");
    }
    let path = file.map(|_| path.as_path());
    Settings::load_from(path, &env).expect("test settings")
}

fn init_logs() {
    if std::env::var("TEST_LOG").is_ok() {
        let settings = test_settings("unused.db", &[]);
        job_executor::telemetry::init(&settings.log);
    }
}

/// A running app and a client for it.
pub struct TestApp {
    pub addr: SocketAddr,
    pub base: String,
    pub client: reqwest::Client,
    app: Option<App>,
}

impl TestApp {
    /// Start an app on `db` with extra `JOBEXEC__…` settings.
    pub async fn start(db: &TestDb, extra: &[(&str, &str)]) -> TestApp {
        Self::from_settings(test_settings(&db.url, extra)).await
    }

    /// An app on `db` whose settings file holds `file` (TOML), beneath `extra`.
    pub async fn start_with_file(db: &TestDb, file: &str, extra: &[(&str, &str)]) -> TestApp {
        Self::from_settings(test_settings_with_file(&db.url, Some(file), extra)).await
    }

    async fn from_settings(settings: Settings) -> TestApp {
        init_logs();
        let app = App::start(settings, Role::Serve).await.expect("app starts");
        let addr = app.local_addr().expect("listening");
        TestApp {
            addr,
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
            app: Some(app),
        }
    }

    /// An app, a test host, and a server `h` registered for it (key auth).
    pub async fn with_host(db: &TestDb, extra: &[(&str, &str)]) -> (TestApp, TestHost, String) {
        let app = Self::start(db, extra).await;
        let host = TestHost::start().await;
        let server = app.add_key_server("h", &host).await;
        (app, host, server)
    }

    /// From now on send `token` as `Authorization: Bearer …` on every request.
    pub fn with_token(mut self, token: &str) -> TestApp {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {token}").parse().expect("header"),
        );
        self.client = reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .expect("client");
        self
    }

    /// Reload the app with `settings`, as SIGHUP would with a changed file.
    pub async fn reload(&self, settings: &Settings) {
        let app = self.app.as_ref().expect("running");
        app.reloader()
            .reload(settings)
            .await
            .expect("the reload is taken");
    }

    /// The value of one series on `/metrics` (`name{labels}` exactly), 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = (self.client.get(self.url("/metrics")).send().await)
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics body");
        let prefix = format!("{series} ");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .map(|v| v.trim().parse().expect("a number"))
            .unwrap_or(0.0)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Stop the app gracefully (its database stays).
    pub async fn stop(mut self) {
        if let Some(app) = self.app.take() {
            app.stop().await;
        }
    }

    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let resp = self.client.get(self.url(path)).send().await.expect("GET");
        split(resp).await
    }

    pub async fn delete(&self, path: &str) -> (u16, serde_json::Value) {
        let resp = self
            .client
            .delete(self.url(path))
            .send()
            .await
            .expect("DELETE");
        split(resp).await
    }

    pub async fn post(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        let resp = self
            .client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("POST");
        split(resp).await
    }

    pub async fn put(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        let resp = self
            .client
            .put(self.url(path))
            .json(body)
            .send()
            .await
            .expect("PUT");
        split(resp).await
    }

    /// Send raw bytes as a body with `method`.
    pub async fn raw(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Vec<u8>,
    ) -> (u16, serde_json::Value) {
        let resp = self
            .client
            .request(method, self.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request");
        split(resp).await
    }

    /// Register a server pointing at a test host with key auth; returns its id.
    pub async fn add_key_server(&self, name: &str, host: &TestHost) -> String {
        let (status, body) = self
            .post(
                "/api/v1/servers",
                &serde_json::json!({
                    "name": name,
                    "hostname": host.host,
                    "port": host.port,
                    "user": host.user,
                    "auth_type": "key",
                    "private_key": host.keys.ed25519_openssh,
                }),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_str().expect("id").to_string()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // A test that panicked leaves its app running on its own thread; the process ends soon.
        self.app.take();
    }
}

async fn split(resp: reqwest::Response) -> (u16, serde_json::Value) {
    let status = resp.status().as_u16();
    let ctype = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let text = resp.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or_else(|_| {
        panic!("status {status}: body is not JSON (content-type {ctype:?}): {text:?}")
    });
    (status, body)
}

/// Run a test body against SQLite and PostgreSQL: `db_test!(name, |db| async move { … })`
/// makes `name::sqlite` and `name::postgres`.
#[macro_export]
macro_rules! db_test {
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let db =
                    $crate::helpers::TestDb::create($crate::helpers::Db::Sqlite).expect("sqlite");
                ($body)(db).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(db) = $crate::helpers::TestDb::create($crate::helpers::Db::Postgres)
                else {
                    return;
                };
                ($body)(db).await;
            }
        }
    };
}
