//! Real processes for the distributed tests and the benchmark: a RabbitMQ vhost made per
//! test, and `job-executor` api/worker processes started from the built binary.

use std::process::{Child, Command, Stdio};

use super::{TestDb, in_ci};

pub fn rabbitmqctl(args: &[&str]) -> bool {
    Command::new("rabbitmqctl")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A vhost made for one test.
pub struct Vhost {
    name: String,
}

impl Vhost {
    pub fn create() -> Option<Vhost> {
        let name = format!("jobexec_test_{}", uuid::Uuid::new_v4().simple());
        if !rabbitmqctl(&["add_vhost", &name]) {
            if in_ci() {
                panic!("RabbitMQ is required under CI but rabbitmqctl add_vhost failed");
            }
            eprintln!("skipping: RabbitMQ (rabbitmqctl) is not available");
            return None;
        }
        assert!(rabbitmqctl(&[
            "set_permissions",
            "-p",
            &name,
            "guest",
            ".*",
            ".*",
            ".*"
        ]));
        Some(Vhost { name })
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:5672/{}", self.name)
    }

    /// Wait until `n` consumers listen on the jobs queue (workers ready to take work), so a
    /// test that needs work spread over them does not hand everything to the first one up.
    pub async fn wait_consumers(&self, n: usize) {
        let start = std::time::Instant::now();
        loop {
            let out = Command::new("rabbitmqctl")
                .args(["list_queues", "-q", "-p", &self.name, "name", "consumers"])
                .output();
            let consumers = out
                .ok()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .and_then(|text| {
                    text.lines()
                        .filter(|l| l.starts_with("job-executor.jobs"))
                        .find_map(|l| l.split_whitespace().nth(1)?.parse::<usize>().ok())
                })
                .unwrap_or(0);
            if consumers >= n {
                return;
            }
            assert!(
                start.elapsed() < std::time::Duration::from_secs(30),
                "{consumers} of {n} workers consume the jobs queue"
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        rabbitmqctl(&["delete_vhost", &self.name]);
    }
}

/// A running `job-executor` process.
pub struct Proc {
    child: Child,
}

impl Proc {
    pub fn spawn(role: &str, name: &str, db: &TestDb, vhost: &Vhost, port: u16) -> Proc {
        Self::spawn_with(role, name, db, vhost, port, &[])
    }

    /// Like [`Proc::spawn`], with extra environment.
    pub fn spawn_with(
        role: &str,
        name: &str,
        db: &TestDb,
        vhost: &Vhost,
        port: u16,
        extra: &[(&str, &str)],
    ) -> Proc {
        let child = Command::new(env!("CARGO_BIN_EXE_job-executor"))
            .arg(role)
            .env("JOBEXEC__DATABASE__URL", &db.url)
            .env("RABBITMQ_URL", vhost.url())
            .env("JOBEXEC__HTTP__ADDR", format!("127.0.0.1:{port}"))
            .env("JOBEXEC__HTTP__WORKERS", "1")
            .env("JOBEXEC__WORKER__ID", name)
            .env("JOBEXEC__WORKER__HEARTBEAT_SECS", "1")
            .env("JOBEXEC__WORKER__LEASE_SECS", "3")
            .env("JOBEXEC__WORKER__SHUTDOWN_GRACE_SECS", "1")
            .env("JOBEXEC__JOBS__KILL_GRACE_SECS", "1")
            .env("JOBEXEC__RABBITMQ__POLL_SECS", "1")
            .env("JOBEXEC__RABBITMQ__RECONNECT_MAX_SECS", "1")
            .envs(super::secret_key_env(&db.url))
            .envs(extra.iter().copied())
            .env(
                "RUST_LOG",
                if std::env::var("TEST_LOG").is_ok() {
                    "info"
                } else {
                    "error"
                },
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(if std::env::var("TEST_LOG").is_ok() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .expect("spawn job-executor");
        Proc { child }
    }

    /// Send SIGTERM (a polite stop) and wait up to `bound` for the process to exit.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn terminate(&mut self, bound: std::time::Duration) -> Option<std::process::ExitStatus> {
        let pid = self.child.id().to_string();
        // A plain positive pid: no `--` needed.
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let start = std::time::Instant::now();
        while start.elapsed() < bound {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        None
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `job-executor` process given only what the test says (arguments, environment), on its
/// own port, with an HTTP client for it. The seed's and our variables that the test runner's
/// own environment may hold are removed first.
pub struct Service {
    /// `None` for a process started otherwise ([`Service::attach`]).
    child: Option<Child>,
    pub base: String,
    pub client: reqwest::Client,
}

impl Service {
    /// Start `job-executor ARGS` listening on 127.0.0.1:`port`; its output goes to `log` (or
    /// nowhere).
    /// Returns once `/health` answers.
    pub async fn start(
        args: &[&str],
        env: &[(&str, &str)],
        port: u16,
        log: Option<&std::path::Path>,
    ) -> Service {
        let (stdout, stderr) = match log {
            Some(path) => {
                let file = std::fs::File::create(path).expect("log file");
                (
                    Stdio::from(file.try_clone().expect("log file")),
                    Stdio::from(file),
                )
            }
            None => (Stdio::null(), Stdio::null()),
        };
        let child = Command::new(env!("CARGO_BIN_EXE_job-executor"))
            .args(args)
            .env_remove("DATABASE_URL")
            .env_remove("RABBITMQ_URL")
            .env_remove("SERVER_ADDR")
            .env_remove("JOBEXEC_API_TOKENS")
            .env_remove("JOBEXEC_SECRET_KEY")
            .env("RUST_LOG", "error")
            // Where the caller waits for it (`env` may say the same).
            .env("JOBEXEC__HTTP__ADDR", format!("127.0.0.1:{port}"))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("spawn job-executor");
        Service {
            child: Some(child),
            base: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::new(),
        }
        .answering(args)
        .await
    }

    /// A client for a `job-executor` started otherwise (a [`Proc`]) on `port`, once its
    /// `/health` answers.
    pub async fn attach(port: u16) -> Service {
        Service {
            child: None,
            base: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::new(),
        }
        .answering(&[])
        .await
    }

    /// This, once `/health` answers (whatever it says).
    async fn answering(self, args: &[&str]) -> Service {
        let svc = self;
        let start = std::time::Instant::now();
        while svc
            .client
            .get(format!("{}/health", svc.base))
            .send()
            .await
            .is_err()
        {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(20),
                "job-executor {args:?} did not start"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        svc
    }

    pub fn pid(&self) -> u32 {
        // Never 0 (a signal to pid 0 goes to the whole process group).
        self.child
            .as_ref()
            .map(Child::id)
            .expect("a Service started here has a pid")
    }

    /// Send a request (with a bearer token and a JSON body when given): status and body text.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> (u16, String) {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        (resp.status().as_u16(), resp.text().await.expect("body"))
    }

    /// Like [`Service::call`], the body parsed as JSON (`null` when it is not).
    pub async fn call_json(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let (status, text) = self.call(method, path, token, body).await;
        (status, serde_json::from_str(&text).unwrap_or_default())
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
