//! Phase 1: trivial jobs per second through `job-executor serve`, run as a process of its own
//! so that the CPU it spends per job is its own (the HTTP clients that drive it are this
//! benchmark's), beside a raw pool of SSH channels on the same client the service uses, with
//! the same pool shape and no HTTP, database or actors.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use super::helpers::procs::{Service, free_port};
use super::helpers::{TestDb, TestHost, secret_key_env};
use super::{Http, api_rate_on, host_key_line};

/// Jobs a server runs at once in this phase (`max_concurrent_jobs`).
pub const SLOTS: usize = 40;
/// Channels the service runs on one connection (its default pool shape).
pub const CHANNELS_PER_CONNECTION: usize = 5;

/// Clock ticks per second of `/proc/<pid>/stat` (`getconf CLK_TCK`).
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// CPU seconds (user + system) process `pid` has used so far.
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / clock_ticks()
}

/// `n` runs of `true` on a raw pool: `conns` connections made up front with the service's
/// SSH client (key login, host key pinned), `per_conn` tasks on each, every task opening a
/// channel, running `true` and waiting for its end, again and again: runs per second.
pub async fn raw_pool_rate(host: &TestHost, n: usize, conns: usize, per_conn: usize) -> f64 {
    use job_executor::domain::{ServerDraft, ServerPatch};
    use job_executor::ssh::{self, SshOptions, SshTarget};
    let draft = ServerDraft::create(
        ServerPatch {
            name: Some("raw".into()),
            hostname: Some(host.host.clone()),
            port: Some(i64::from(host.port)),
            user: Some(host.user.clone()),
            private_key: Some(host.keys.ed25519_openssh.clone().into()),
            host_key: Some(host_key_line(host)),
            ..Default::default()
        },
        10,
    )
    .unwrap();
    let target = SshTarget::from_server(&draft).unwrap();
    let opts = SshOptions {
        connect_timeout: Duration::from_secs(10),
        keepalive_interval: Duration::from_secs(15),
        keepalive_max: 3,
        known_hosts: None,
    };
    let mut pool = Vec::new();
    for _ in 0..conns {
        pool.push(Arc::new(ssh::connect(&target, &opts).await.unwrap()));
    }
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for conn in &pool {
        for _ in 0..per_conn {
            let (conn, next) = (conn.clone(), next.clone());
            tasks.push(tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < n {
                    let r = conn.client.execute("true").await.unwrap();
                    assert_eq!(r.exit_status, 0);
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    for conn in pool {
        let _ = conn.client.disconnect().await;
    }
    rate
}

/// `job-executor serve` on a fresh SQLite database with the benchmark's tuning, the test
/// sshd registered as `bench` with [`SLOTS`] slots.
pub struct Serve {
    pub svc: Service,
    pub http: Http,
    pub server: String,
    _db: TestDb,
}

impl Serve {
    pub async fn start(host: &TestHost) -> Serve {
        let db = TestDb::create(super::helpers::Db::Sqlite).unwrap();
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut env: Vec<(&str, &str)> = vec![
            ("JOBEXEC__DATABASE__URL", &db.url),
            ("JOBEXEC__HTTP__ADDR", &addr),
            ("JOBEXEC__HTTP__WORKERS", "2"),
            ("JOBEXEC__WORKER__MAX_CONNECTIONS_PER_HOST", "220"),
            ("JOBEXEC__WORKER__CONCURRENCY", "2000"),
            ("JOBEXEC__DATABASE__POOL_SIZE", "8"),
            ("JOBEXEC__LIMITS__SUBMISSIONS_PER_MINUTE", "0"),
            ("JOBEXEC__LIMITS__MAX_STREAMS_PER_CLIENT", "0"),
            // What an operator runs with: the default log level, to a file.
            ("RUST_LOG", "info"),
        ];
        env.extend(secret_key_env(&db.url));
        let log = db.url.replace("jobs.db", "serve.log");
        let svc = Service::start(&["serve"], &env, port, Some(std::path::Path::new(&log))).await;
        let http = Http {
            client: reqwest::Client::new(),
            base: svc.base.clone(),
        };
        let r = http
            .client
            .post(http.url("/api/v1/servers"))
            .json(
                &json!({"name": "bench", "hostname": host.host, "port": host.port,
                          "user": host.user, "auth_type": "key",
                          "private_key": host.keys.ed25519_openssh,
                          "max_concurrent_jobs": SLOTS}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let server: serde_json::Value = r.json().await.unwrap();
        let server = server["id"].as_str().unwrap().to_string();
        Serve {
            svc,
            http,
            server,
            _db: db,
        }
    }

    /// `n` trivial jobs through the API (16 clients): jobs per second, and the service's CPU
    /// milliseconds per job over the whole phase (submissions, runs and the idle wait).
    pub async fn rate(&self, n: usize) -> (f64, f64) {
        let pid = self.svc.pid();
        let before = cpu_secs(pid);
        let rate = api_rate_on(&self.http, &self.server, n).await;
        let cpu_ms = (cpu_secs(pid) - before) * 1000.0 / n as f64;
        (rate, cpu_ms)
    }
}
