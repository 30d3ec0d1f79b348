//! End-to-end benchmark of the engine against a local OpenSSH sshd, with baselines measured
//! in the same run. `cargo bench --bench engine` (add `-- --quick` for a short run).
//!
//! Figures:
//! 1. trivial jobs per second through the HTTP API of a `job-executor serve` process, and
//!    that process's CPU per job, beside OpenSSH ControlMaster running `true` at 10-way
//!    parallelism, one fresh connection per job (what the seed does), and a raw pool of
//!    channels on the service's own SSH client with the service's pool shape; then the same
//!    through `api` and two `worker` processes over RabbitMQ and PostgreSQL;
//! 2. submit → running latency, p50 and p99;
//! 3. MB/s of one job printing 200 MB;
//! 4. memory per running job, over 1000 concurrent `sleep` jobs;
//! 5. 1000 SSE clients on one job printing for a few seconds: the job's wall time beside the
//!    same job with no client, memory per client (the clients run in a child process, so the
//!    figure is the server's alone), and that every client got every byte and the end;
//! 6. runs: `true` on 50 server entries (all on the test sshd) as one run with `batch` 10,
//!    beside the same 50 jobs submitted one by one and beside pssh-style OpenSSH (50 fresh
//!    `ssh` connections, 10 at a time), warm (medians of several passes) and cold (the first
//!    connection to each entry), with the hosts' timeline from their clocks and the
//!    connections sshd dropped past its `MaxStartups`;
//! 7. retention: a prune of 1,000,000 output chunks (1000 old finished jobs of 1000 chunks
//!    of 100 bytes, seeded straight into the database): its duration and rows/s, and the
//!    submit → running p50/p99 of trivial jobs submitted one at a time while it runs, beside
//!    the same with no prune, in the same run;
//! 8. over a 50 ms round trip (a delaying TCP proxy in front of the same sshd): one warm job
//!    submit → completed, and 50 jobs on 10 slots, beside a fresh `ssh host true` and
//!    ControlMaster's `ssh -S`, in milliseconds and in round trips.
//!
//! `JOBEXEC_BENCH_ONLY=rate cargo bench --bench engine` runs phase 1 alone,
//! `JOBEXEC_BENCH_ONLY=sse` phase 5, `JOBEXEC_BENCH_ONLY=runs` phase 6,
//! `JOBEXEC_BENCH_ONLY=prune` phase 7, `JOBEXEC_BENCH_ONLY=link` phase 8,
//! `JOBEXEC_BENCH_ONLY=latency`, `output` and `memory` phases 2, 3 and 4. Phase 4 runs
//! before phase 3, so that the RSS it reads is not the heap a 200 MB job left behind.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark fails loudly

#[path = "../tests/api/helpers/mod.rs"]
mod helpers;
#[path = "engine/link.rs"]
mod link;
#[path = "engine/rate.rs"]
mod rate;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use helpers::{Db, TestApp, TestDb, TestHost};
use serde_json::json;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn ssh_args(host: &TestHost, control: &str) -> Vec<String> {
    ssh_args_on(host, host.port, control)
}

/// The `ssh` arguments to reach `host`'s sshd at `port` (itself, or a proxy in front of it).
fn ssh_args_on(host: &TestHost, port: u16, control: &str) -> Vec<String> {
    vec![
        "-q".into(),
        "-o".into(),
        "StrictHostKeyChecking=no".into(),
        "-o".into(),
        "UserKnownHostsFile=/dev/null".into(),
        "-o".into(),
        "BatchMode=yes".into(),
        "-o".into(),
        format!("ControlPath={control}"),
        "-i".into(),
        host.dir.path().join("id_ed25519").display().to_string(),
        "-p".into(),
        port.to_string(),
        format!("{}@{}", host.user, host.host),
    ]
}

/// An OpenSSH ControlMaster connection to `host`'s sshd (or a proxy in front of it) at
/// `port`, on the socket `name` in the host's directory; stopped (`ssh -O exit`) when dropped.
struct ControlMaster {
    /// The `ssh` arguments that go through it.
    args: Vec<String>,
}

impl ControlMaster {
    /// Start the master with `extra` options (`-c cipher`, say) and wait until it is up.
    fn start(host: &TestHost, port: u16, name: &str, extra: &[&str]) -> Self {
        let control = host.dir.path().join(name).display().to_string();
        let args = ssh_args_on(host, port, &control);
        let mut master: Vec<String> = ["-o", "ControlMaster=yes", "-o", "ControlPersist=120"]
            .iter()
            .chain(extra)
            .map(|a| a.to_string())
            .collect();
        master.extend(args.iter().cloned());
        let ok = Command::new("ssh")
            .args(&master)
            .arg("true")
            .status()
            .unwrap();
        assert!(ok.success(), "ControlMaster could not start");
        ControlMaster { args }
    }
}

impl Drop for ControlMaster {
    fn drop(&mut self) {
        let _ = Command::new("ssh")
            .args(&self.args)
            .args(["-O", "exit"])
            .stderr(Stdio::null())
            .status();
    }
}

/// `n` runs of `true` over a ControlMaster connection, 10 at a time: runs per second.
fn control_master_rate(host: &TestHost, n: usize) -> f64 {
    let master = ControlMaster::start(host, host.port, "cm.sock", &[]);
    let args = Arc::new(master.args.clone());
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let threads: Vec<_> = (0..10)
        .map(|_| {
            let args = args.clone();
            let next = next.clone();
            std::thread::spawn(move || {
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                    let st = Command::new("ssh")
                        .args(args.iter())
                        .arg("true")
                        .stdout(Stdio::null())
                        .status()
                        .unwrap();
                    assert!(st.success());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn host_key_line(host: &TestHost) -> String {
    let dir = host.dir.path();
    let entry = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .find(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with("host_ed25519") && name.ends_with(".pub")
        })
        .expect("host key");
    std::fs::read_to_string(entry.path())
        .unwrap()
        .trim()
        .to_string()
}

/// `n` jobs each on a fresh SSH connection (connect, authenticate, `true`, disconnect),
/// 10 at a time, with the same Rust client the service uses: runs per second.
async fn fresh_connection_rate(host: &TestHost, n: usize) -> f64 {
    use job_executor::domain::{ServerDraft, ServerPatch};
    use job_executor::ssh::{self, SshOptions, SshTarget};
    let draft = ServerDraft::create(
        ServerPatch {
            name: Some("b".into()),
            hostname: Some(host.host.clone()),
            port: Some(i64::from(host.port)),
            user: Some(host.user.clone()),
            private_key: Some(host.keys.ed25519_openssh.clone().into()),
            // Pinned up front, so each job costs one handshake (no key probe).
            host_key: Some(host_key_line(host)),
            ..Default::default()
        },
        10,
    )
    .unwrap();
    let target = Arc::new(SshTarget::from_server(&draft).unwrap());
    let opts = Arc::new(SshOptions {
        connect_timeout: Duration::from_secs(10),
        keepalive_interval: Duration::from_secs(15),
        keepalive_max: 3,
        known_hosts: None,
    });
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let (target, opts, next) = (target.clone(), opts.clone(), next.clone());
            tokio::spawn(async move {
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                    let conn = ssh::connect(&target, &opts).await.unwrap();
                    let r = conn.client.execute("true").await.unwrap();
                    assert_eq!(r.exit_status, 0);
                    let _ = conn.client.disconnect().await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// An HTTP API to drive: the in-process app or a separate api process.
struct Http {
    client: reqwest::Client,
    base: String,
}

impl Http {
    fn of(app: &TestApp) -> Http {
        Http {
            client: app.client.clone(),
            base: app.base.clone(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let r = self.client.get(self.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or_default())
    }
}

async fn wait_idle(app: &TestApp, bound: Duration) {
    wait_idle_on(&Http::of(app), bound).await
}

async fn wait_idle_on(app: &Http, bound: Duration) {
    let start = Instant::now();
    loop {
        let (_, q) = app.get("/api/v1/jobs?status=queued&limit=1").await;
        let (_, r) = app.get("/api/v1/jobs?status=running&limit=1").await;
        if q["jobs"].as_array().unwrap().is_empty() && r["jobs"].as_array().unwrap().is_empty() {
            return;
        }
        assert!(
            start.elapsed() < bound,
            "jobs still pending after {bound:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `n` trivial jobs submitted over HTTP by 16 clients; jobs per second until all are done.
async fn api_rate_on(app: &Http, server: &str, n: usize) -> f64 {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (client, url, next) = (app.client.clone(), app.url("/api/v1/jobs"), next.clone());
            let body = json!({"command": "true", "server_id": server});
            tokio::spawn(async move {
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                    let r = client.post(&url).json(&body).send().await.unwrap();
                    assert_eq!(r.status(), 201);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    wait_idle_on(app, Duration::from_secs(600)).await;
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let (_, failed) = app.get("/api/v1/jobs?status=failed&limit=5").await;
    assert!(
        failed["jobs"].as_array().unwrap().is_empty(),
        "jobs failed: {failed}"
    );
    rate
}

fn micros(ts: &serde_json::Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(ts.as_str().unwrap())
        .unwrap()
        .timestamp_micros()
}

/// Submit → running, one job at a time: (p50, p99) in milliseconds.
async fn latency(app: &TestApp, server: &str, n: usize) -> (f64, f64) {
    let samples = latency_samples(app, server, n, || true).await;
    (quantile(&samples, 0.50), quantile(&samples, 0.99))
}

/// The `q` quantile of `samples` (sorted here).
fn quantile(samples: &[f64], q: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

/// Submit → running of up to `n` jobs, one at a time, while `more()` says so: the samples
/// in milliseconds.
async fn latency_samples(
    app: &TestApp,
    server: &str,
    n: usize,
    more: impl Fn() -> bool,
) -> Vec<f64> {
    let mut samples = Vec::new();
    for _ in 0..n {
        if !more() {
            break;
        }
        let t0 = chrono::Utc::now().timestamp_micros();
        let (_, job) = app
            .post(
                "/api/v1/jobs",
                &json!({"command": "true", "server_id": server}),
            )
            .await;
        let id = job["id"].as_str().unwrap().to_string();
        let job = loop {
            let (_, job) = app.get(&format!("/api/v1/jobs/{id}")).await;
            if !job["started_at"].is_null() {
                break job;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        };
        samples.push((micros(&job["started_at"]) - t0) as f64 / 1000.0);
        wait_idle(app, Duration::from_secs(30)).await;
    }
    samples
}

/// Phase 7: 1000 jobs that finished 60 days ago, 1000 chunks of 100 bytes each, seeded with
/// two statements; then `n` trivial jobs' submit → running with no prune, and up to `n` while
/// a prune (`[retention] output = "30d"`, the default batch) deletes the million chunks.
async fn prune_phase(app: &TestApp, db: &TestDb, server: &str, n: usize) {
    use diesel::{Connection, RunQueryDsl, SqliteConnection};
    const JOBS: i64 = 1000;
    const CHUNKS: i64 = 1000;
    let mut conn = SqliteConnection::establish(&db.url).unwrap();
    let exec = |conn: &mut SqliteConnection, sql: &str| {
        diesel::sql_query(sql)
            .execute(conn)
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    };
    exec(&mut conn, "PRAGMA busy_timeout = 10000");
    let old = chrono::Utc::now().timestamp_micros() - 60 * 86_400_000_000;
    let seeding = Instant::now();
    exec(
        &mut conn,
        &format!(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {}) \
             INSERT INTO jobs (id, kind, command, server_id, timeout_secs, env, status, \
             created_at, started_at, finished_at, output_bytes, published, next_seq) \
             SELECT printf('00000000-0000-7000-8000-%012d', i), 'command', 'true', '{server}', \
             30, '{{}}', 'completed', {old}, {old}, {old} + i, {}, TRUE, {CHUNKS} FROM n",
            JOBS - 1,
            CHUNKS * 100
        ),
    );
    exec(
        &mut conn,
        &format!(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {}) \
             INSERT INTO job_output (job_id, seq, stream, data, at, byte_offset) \
             SELECT j.id, n.i, 0, randomblob(100), {old}, n.i * 100 FROM jobs j, n \
             WHERE j.id LIKE '00000000-0000-7000-8000-%'",
            CHUNKS - 1
        ),
    );
    exec(&mut conn, "PRAGMA wal_checkpoint(TRUNCATE)");
    let rows = JOBS * CHUNKS;
    let bytes = std::fs::metadata(&db.url).map_or(0, |m| m.len());
    println!(
        "retention seeded {rows} output chunks in {:.1} s ({:.0} MB database)",
        seeding.elapsed().as_secs_f64(),
        bytes as f64 / 1e6
    );
    let _ = latency(app, server, 20).await; // warm
    let quiet = latency_samples(app, server, n, || true).await;

    let settings = helpers::test_settings(&db.url, &[("JOBEXEC__RETENTION__OUTPUT", "30d")]);
    let store = job_executor::store::Store::open(&settings).await.unwrap();
    let pruner = job_executor::engine::Pruner::new(store, &settings).unwrap();
    let batch = pruner.policy().batch;
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = done.clone();
    let prune = tokio::spawn(async move {
        let report = pruner.prune(false).await.unwrap();
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
        report
    });
    let busy = latency_samples(app, server, n, || {
        !done.load(std::sync::atomic::Ordering::SeqCst)
    })
    .await;
    let report = prune.await.unwrap();
    let deleted = report.counts.get(job_executor::domain::PruneTable::Output);
    assert_eq!(
        deleted as i64, rows,
        "the prune deleted {deleted} of {rows} chunks"
    );
    let secs = report.took.as_secs_f64();
    let after = std::fs::metadata(&db.url).map_or(0, |m| m.len());
    println!(
        "ours      prune of {rows} output chunks (batch {batch})   {secs:>9.1} s  ({:.0} rows/s; \
         database {:.0} MB -> {:.0} MB)",
        rows as f64 / secs,
        bytes as f64 / 1e6,
        after as f64 / 1e6
    );
    println!(
        "ours      submit -> running, no prune ({} jobs)      p50 {:.2} ms, p99 {:.2} ms",
        quiet.len(),
        quantile(&quiet, 0.5),
        quantile(&quiet, 0.99)
    );
    println!(
        "ours      submit -> running, during it ({} jobs)    p50 {:.2} ms, p99 {:.2} ms",
        busy.len(),
        quantile(&busy, 0.5),
        quantile(&busy, 0.99)
    );
}

/// One job printing `mb` MB: MB/s between its start and its end.
async fn output_rate(app: &TestApp, server: &str, mb: usize) -> f64 {
    // A warm pool, as for the other jobs: the figure is the output's, not a handshake's.
    let (_, warm) = app
        .post(
            "/api/v1/jobs",
            &json!({"command": "true", "server_id": server}),
        )
        .await;
    assert_eq!(warm["status"], "queued", "{warm}");
    wait_idle(app, Duration::from_secs(60)).await;
    let mut rates = Vec::new();
    for _ in 0..3 {
        let (_, job) = app
            .post("/api/v1/jobs", &json!({"command": format!("head -c {} /dev/zero", mb * 1_000_000), "server_id": server}))
            .await;
        let id = job["id"].as_str().unwrap().to_string();
        wait_idle(app, Duration::from_secs(600)).await;
        let (_, job) = app.get(&format!("/api/v1/jobs/{id}")).await;
        assert_eq!(job["status"], "completed", "{job}");
        let secs = (micros(&job["finished_at"]) - micros(&job["started_at"])) as f64 / 1e6;
        rates.push(mb as f64 / secs);
    }
    quantile(&rates, 0.5)
}

/// OpenSSH printing `mb` MB over a ControlMaster connection into `/dev/null`, with its own
/// cipher choice or `cipher`: MB/s, the median of three.
fn control_master_output_rate(host: &TestHost, mb: usize, cipher: Option<&str>) -> f64 {
    let extra: Vec<&str> = cipher.map(|c| vec!["-c", c]).unwrap_or_default();
    let master = ControlMaster::start(host, host.port, "cm-out.sock", &extra);
    let args = &master.args;
    let mut rates = Vec::new();
    for _ in 0..3 {
        let start = Instant::now();
        let st = Command::new("ssh")
            .args(args)
            .arg(format!("head -c {} /dev/zero", mb * 1_000_000))
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success());
        rates.push(mb as f64 / start.elapsed().as_secs_f64());
    }
    quantile(&rates, 0.5)
}

/// RSS growth per running job with `n` concurrent `sleep` jobs, in KiB.
async fn memory_per_job(app: &TestApp, server: &str, n: usize) -> f64 {
    let before = rss_kib();
    let mut ids = Vec::new();
    for _ in 0..n {
        let (_, job) = app
            .post(
                "/api/v1/jobs",
                &json!({"command": "sleep 60", "server_id": server}),
            )
            .await;
        ids.push(job["id"].as_str().unwrap().to_string());
    }
    let start = Instant::now();
    loop {
        let (_, r) = app.get("/api/v1/jobs?status=running&limit=1000").await;
        let running = r["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|j| j["remote_pgid"].is_null())
            .count();
        let _ = running;
        let (_, q) = app.get("/api/v1/jobs?status=queued&limit=1").await;
        if q["jobs"].as_array().unwrap().is_empty()
            && r["jobs"].as_array().unwrap().len() >= n.min(1000)
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "not all running"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib();
    for id in &ids {
        let _ = app
            .post(&format!("/api/v1/jobs/{id}/cancel"), &json!({}))
            .await;
    }
    wait_idle(app, Duration::from_secs(120)).await;
    after.saturating_sub(before) as f64 / n as f64
}

/// Trivial jobs per second through `job-executor api` and two `job-executor worker`
/// processes over RabbitMQ (a fresh vhost) and PostgreSQL (a fresh database).
async fn distributed_rate(host: &TestHost, n: usize, cm: f64, single: f64) {
    use helpers::procs::{Proc, Vhost, free_port};
    let (Some(db), Some(vhost)) = (TestDb::create(Db::Postgres), Vhost::create()) else {
        println!("(skipped api + 2 workers: PostgreSQL or RabbitMQ is not available)");
        return;
    };
    let port = free_port();
    let tuned: &[(&str, &str)] = &[
        ("JOBEXEC__HTTP__WORKERS", "2"),
        ("JOBEXEC__WORKER__MAX_CONNECTIONS_PER_HOST", "220"),
        ("JOBEXEC__WORKER__HEARTBEAT_SECS", "5"),
        ("JOBEXEC__WORKER__LEASE_SECS", "30"),
        ("JOBEXEC__LIMITS__SUBMISSIONS_PER_MINUTE", "0"),
    ];
    let _api = Proc::spawn_with("api", "bench-api", &db, &vhost, port, tuned);
    let _w1 = Proc::spawn_with("worker", "bench-w1", &db, &vhost, free_port(), tuned);
    let _w2 = Proc::spawn_with("worker", "bench-w2", &db, &vhost, free_port(), tuned);
    let http = Http {
        client: reqwest::Client::new(),
        base: format!("http://127.0.0.1:{port}"),
    };
    let start = Instant::now();
    while !http
        .client
        .get(http.url("/health"))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "api did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = http
        .client
        .post(http.url("/api/v1/servers"))
        .json(
            &json!({"name": "bench", "hostname": host.host, "port": host.port, "user": host.user,
                      "auth_type": "key", "private_key": host.keys.ed25519_openssh,
                      "max_concurrent_jobs": 40}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let server: serde_json::Value = r.json().await.unwrap();
    let server = server["id"].as_str().unwrap().to_string();
    let _ = api_rate_on(&http, &server, 100).await; // warm the pools
    let pids = [_api.pid(), _w1.pid(), _w2.pid()];
    let cpu = || pids.iter().map(|&p| rate::cpu_secs(p)).sum::<f64>();
    let before = cpu();
    let rate = api_rate_on(&http, &server, n).await;
    let cpu_ms = (cpu() - before) * 1000.0 / n as f64;
    println!(
        "ours      api + 2 workers (RabbitMQ, PostgreSQL)  {rate:>9.1} jobs/s  ({:.2}x ControlMaster, {:.2}x single process; target >= 1.5x ControlMaster)",
        rate / cm,
        rate / single
    );
    println!("ours        CPU of the three processes per job      {cpu_ms:>9.3} ms");
}

/// The soft limit on open files of this process (`Max open files` in /proc/self/limits).
fn open_files_limit() -> Option<u64> {
    std::fs::read_to_string("/proc/self/limits")
        .ok()?
        .lines()
        .find(|l| l.starts_with("Max open files"))?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()
}

/// The client side of the SSE phase, run in a child process (this benchmark's binary with
/// `JOBEXEC_BENCH_SSE_CLIENTS="N URL"`) so that the server's memory is measured alone: N
/// streams of one URL, each counting the output bytes it gets. Prints `ready` once every
/// stream has its first event, then, when all have ended,
/// `done <streams that saw complete> <fewest bytes> <most bytes> <µs of the last end>`.
async fn sse_clients(spec: &str) {
    let (n, url) = spec.split_once(' ').expect("N URL");
    let n: usize = n.parse().unwrap();
    let client = reqwest::Client::new();
    let ready = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (client, url, ready) = (client.clone(), url.to_string(), ready.clone());
            tokio::spawn(async move {
                let resp = client.get(&url).send().await.unwrap();
                assert_eq!(resp.status(), 200);
                let mut body = resp.bytes_stream();
                let (mut buf, mut first, mut bytes, mut complete) =
                    (Vec::new(), true, 0usize, false);
                while let Some(chunk) = body.next().await {
                    buf.extend_from_slice(&chunk.unwrap());
                    while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
                        let block: Vec<u8> = buf.drain(..end + 2).collect();
                        let block = std::str::from_utf8(&block).unwrap();
                        let field = |name: &str| {
                            block
                                .lines()
                                .find_map(|l| l.strip_prefix(name).map(str::to_string))
                        };
                        let Some(kind) = field("event: ") else {
                            continue; // a keep-alive
                        };
                        if first {
                            first = false;
                            if ready.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 == n {
                                println!("ready");
                            }
                        }
                        match kind.as_str() {
                            "output" => {
                                let data: serde_json::Value =
                                    serde_json::from_str(&field("data: ").unwrap()).unwrap();
                                bytes += data["output"].as_str().unwrap().len();
                            }
                            "complete" => complete = true,
                            _ => {}
                        }
                    }
                }
                (complete, bytes, chrono::Utc::now().timestamp_micros())
            })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    let complete = results.iter().filter(|r| r.0).count();
    let fewest = results.iter().map(|r| r.1).min().unwrap_or(0);
    let most = results.iter().map(|r| r.1).max().unwrap_or(0);
    let last = results.iter().map(|r| r.2).max().unwrap_or(0);
    println!("done {complete} {fewest} {most} {last}");
}

/// Submit `command` on `server`; its id.
async fn submit_on(app: &TestApp, server: &str, command: &str) -> String {
    let (status, job) = app
        .post(
            "/api/v1/jobs",
            &json!({"command": command, "server_id": server}),
        )
        .await;
    assert_eq!(status, 201, "{job}");
    job["id"].as_str().unwrap().to_string()
}

/// Wait until job `id` is neither queued nor running; the job.
async fn wait_job(app: &TestApp, id: &str, bound: Duration) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let (_, job) = app.get(&format!("/api/v1/jobs/{id}")).await;
        if !matches!(job["status"].as_str(), Some("queued" | "running")) {
            return job;
        }
        assert!(start.elapsed() < bound, "job {id} not done: {job}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `n` SSE clients on one job that prints a line every 10 ms for a few seconds: the job's
/// wall time beside the same job with no client, the server's memory per client (idle, and
/// at its peak while the job prints), and every client's bytes. The clients run in a child
/// process on the same cores, so a slowdown of the job is partly theirs.
async fn sse_fan_out(app: &TestApp, host: &TestHost, n: usize) {
    // Open files: the server's end of each stream, and the clients' (a child process, with
    // the same limit).
    let limit = open_files_limit().unwrap_or(1024);
    let n = if (n as u64) + 256 > limit {
        let fewer = limit.saturating_sub(256) as usize;
        println!("(open files are limited to {limit}: {fewer} SSE clients instead of {n})");
        fewer
    } else {
        n
    };
    // A server of its own with one slot: the job waits behind a blocker while the clients
    // connect, and starts when the blocker is canceled.
    let server = app.add_key_server("sse", host).await;
    let (status, _) = app
        .put(
            &format!("/api/v1/servers/{server}"),
            &json!({"max_concurrent_jobs": 1}),
        )
        .await;
    assert_eq!(status, 200);
    let lines = 300;
    let command = format!(
        "for i in $(seq 1 {lines}); do echo \"line $i of {lines}: the quick brown fox jumps over the lazy dog 0123456789\"; sleep 0.01; done"
    );
    let wall = |job: &serde_json::Value| {
        (micros(&job["finished_at"]) - micros(&job["started_at"])) as f64 / 1e6
    };
    let warm = submit_on(app, &server, "true").await;
    wait_job(app, &warm, Duration::from_secs(30)).await;
    let alone = submit_on(app, &server, &command).await;
    let alone = wait_job(app, &alone, Duration::from_secs(120)).await;
    assert_eq!(alone["status"], "completed", "{alone}");
    let baseline = wall(&alone);
    println!(
        "baseline  {:<39}{baseline:>9.2} s",
        format!("a {lines}-line job, no SSE client")
    );

    let blocker = submit_on(app, &server, "sleep 600").await;
    let start = Instant::now();
    while app.get(&format!("/api/v1/jobs/{blocker}")).await.1["status"] != "running" {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "blocker not running"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let id = submit_on(app, &server, &command).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(
            "JOBEXEC_BENCH_SSE_CLIENTS",
            format!("{n} {}", app.url(&format!("/api/v1/jobs/{id}/stream"))),
        )
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let line = async |bound: Duration| {
        let start = Instant::now();
        loop {
            match rx.try_recv() {
                Ok(l) => return l,
                Err(std::sync::mpsc::TryRecvError::Empty) => {
                    assert!(start.elapsed() < bound, "the SSE clients said nothing");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => panic!("the SSE clients' process ended: {e}"),
            }
        }
    };
    let opening = Instant::now();
    assert_eq!(line(Duration::from_secs(120)).await, "ready");
    let opened = opening.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let connected = rss_kib();
    let (status, _) = app
        .post(&format!("/api/v1/jobs/{blocker}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 200);
    let mut peak = connected;
    let job = loop {
        peak = peak.max(rss_kib());
        let (_, job) = app.get(&format!("/api/v1/jobs/{id}")).await;
        if !matches!(job["status"].as_str(), Some("queued" | "running")) {
            break job;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(job["status"], "completed", "{job}");
    // The clients may still be reading the end: the peak is watched until they are done.
    let start = Instant::now();
    let done = loop {
        peak = peak.max(rss_kib());
        match rx.try_recv() {
            Ok(l) => break l,
            Err(std::sync::mpsc::TryRecvError::Empty) => {
                assert!(
                    start.elapsed() < Duration::from_secs(120),
                    "the SSE clients did not end"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("the SSE clients' process ended: {e}"),
        }
    };
    assert!(child.wait().unwrap().success());
    let f: Vec<i64> = done
        .strip_prefix("done ")
        .unwrap_or_else(|| panic!("{done}"))
        .split(' ')
        .map(|v| v.parse().unwrap())
        .collect();
    let (complete, fewest, most, last) = (f[0] as usize, f[1], f[2], f[3]);
    let took = wall(&job);
    let bytes = job["output_bytes"].as_i64().unwrap();
    let per_client = |kib: u64| kib.saturating_sub(before) as f64 / n as f64;
    println!(
        "ours      {:<39}{took:>9.2} s  ({:.2}x the baseline; the {n} opened in {:.2} s)",
        format!("the same job, {n} SSE clients"),
        took / baseline,
        opened.as_secs_f64()
    );
    println!(
        "ours      memory per SSE client, idle / streaming{:>9.1} / {:.1} KiB  (server side: RSS {before} -> {connected} -> peak {peak} KiB)",
        per_client(connected),
        per_client(peak),
    );
    println!(
        "ours      {:<39}{:>9}  (fewest {fewest} B, most {most} B; the last ended {:.0} ms after the job)",
        format!("SSE clients with all {bytes} B, the end"),
        format!("{complete}/{n}"),
        (last - micros(&job["finished_at"])) as f64 / 1000.0
    );
    assert_eq!(complete, n, "not every client saw the end");
    assert!(
        fewest == bytes && most == bytes,
        "clients got {fewest}..{most} bytes of {bytes}"
    );
}

/// Register `n` servers `{prefix}-00`.. on the test sshd, key login as the other phases'
/// server, labeled `bench={prefix}`, with slots that are never the limit (each gets one job
/// at a time here), and the host key pinned up front when `pin` (else the first connection
/// learns it): their (name, id).
async fn add_run_servers(
    app: &TestApp,
    host: &TestHost,
    prefix: &str,
    n: usize,
    pin: bool,
) -> Vec<(String, String)> {
    let mut servers = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("{prefix}-{i:02}");
        let mut body = json!({"name": name, "hostname": host.host, "port": host.port,
                              "user": host.user, "auth_type": "key",
                              "private_key": host.keys.ed25519_openssh,
                              "max_concurrent_jobs": 10, "labels": {"bench": prefix}});
        if pin {
            body["host_key"] = json!(host_key_line(host));
        }
        let (status, body) = app.post("/api/v1/servers", &body).await;
        assert_eq!(status, 201, "{body}");
        servers.push((name, body["id"].as_str().unwrap().to_string()));
    }
    servers
}

/// What `pssh -p par` does: `n` runs of the system `ssh` client running `true`, each on a
/// fresh connection (no ControlMaster), `par` at a time, with `extra` options first: (wall
/// seconds, failed runs).
fn pssh_style(host: &TestHost, n: usize, par: usize, extra: &[&str]) -> (f64, usize) {
    let mut args: Vec<String> = extra.iter().map(|a| a.to_string()).collect();
    args.extend(ssh_args(host, "none"));
    let args = Arc::new(args);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let failed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let threads: Vec<_> = (0..par)
        .map(|_| {
            let (args, next, failed) = (args.clone(), next.clone(), failed.clone());
            std::thread::spawn(move || {
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                    let st = Command::new("ssh")
                        .args(args.iter())
                        .arg("true")
                        .stdout(Stdio::null())
                        .status()
                        .unwrap();
                    if !st.success() {
                        failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let wall = start.elapsed().as_secs_f64();
    (wall, failed.load(std::sync::atomic::Ordering::Relaxed))
}

/// One run of `true` over `servers` (names), `batch` at a time, polled every 10 ms: the wall
/// time from the POST to the poll that saw it end, and the run as that poll read it.
async fn timed_run(app: &TestApp, servers: &[String], batch: usize) -> (f64, serde_json::Value) {
    let start = Instant::now();
    let (status, run) = app
        .post(
            "/api/v1/runs",
            &json!({"command": "true", "targets": {"servers": servers},
                    "strategy": {"batch": batch}}),
        )
        .await;
    assert_eq!(status, 201, "{run}");
    let id = run["id"].as_str().unwrap().to_string();
    loop {
        let (_, run) = app.get(&format!("/api/v1/runs/{id}")).await;
        if !matches!(run["status"].as_str(), Some("queued" | "running")) {
            return (start.elapsed().as_secs_f64(), run);
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "run {id} not done: {}",
            run["counts"]
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `true` on each of `servers` (ids), submitted one by one with `POST /jobs`, then awaited
/// (no job queued or running, polled every 10 ms): the wall time from the first submit to
/// that poll, and the jobs.
async fn timed_jobs(app: &TestApp, servers: &[String]) -> (f64, Vec<serde_json::Value>) {
    let start = Instant::now();
    let mut ids = Vec::with_capacity(servers.len());
    for server in servers {
        ids.push(submit_on(app, server, "true").await);
    }
    loop {
        let (_, q) = app.get("/api/v1/jobs?status=queued&limit=1").await;
        let (_, r) = app.get("/api/v1/jobs?status=running&limit=1").await;
        if q["jobs"].as_array().unwrap().is_empty() && r["jobs"].as_array().unwrap().is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "jobs still pending"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let wall = start.elapsed().as_secs_f64();
    let mut jobs = Vec::with_capacity(ids.len());
    for id in &ids {
        jobs.push(app.get(&format!("/api/v1/jobs/{id}")).await.1);
    }
    (wall, jobs)
}

/// From the hosts' clocks (`started_at`, `finished_at` of each run host or job): the span
/// from the first start to the last end in seconds, the most running at once, and, with a
/// window of `batch`, the idle time of a slot between a host's end and the next host's start
/// (p50 and max, ms). `None` when some host never started.
fn timeline(items: &[serde_json::Value], batch: usize) -> Option<(f64, usize, f64, f64)> {
    let mut spans: Vec<(i64, i64)> = Vec::with_capacity(items.len());
    for item in items {
        if item["started_at"].is_null() || item["finished_at"].is_null() {
            return None;
        }
        spans.push((micros(&item["started_at"]), micros(&item["finished_at"])));
    }
    let first = spans.iter().map(|s| s.0).min()?;
    let last = spans.iter().map(|s| s.1).max()?;
    let mut edges: Vec<(i64, i32)> = spans.iter().flat_map(|s| [(s.0, 1), (s.1, -1)]).collect();
    edges.sort(); // an end (-1) before a start (+1) at the same instant
    let (mut now, mut most) = (0i32, 0i32);
    for (_, d) in edges {
        now += d;
        most = most.max(now);
    }
    let mut starts: Vec<i64> = spans.iter().map(|s| s.0).collect();
    let mut ends: Vec<i64> = spans.iter().map(|s| s.1).collect();
    starts.sort_unstable();
    ends.sort_unstable();
    let mut gaps: Vec<f64> = (batch..starts.len())
        .map(|k| (starts[k] - ends[k - batch]) as f64 / 1000.0)
        .collect();
    gaps.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let (p50, max) = if gaps.is_empty() {
        (0.0, 0.0)
    } else {
        (gaps[gaps.len() / 2], gaps[gaps.len() - 1])
    };
    Some((
        (last - first) as f64 / 1e6,
        usize::try_from(most).unwrap_or(0),
        p50,
        max,
    ))
}

/// Where a slot's idle time goes, from the jobs' clocks (`created_at`, `started_at`,
/// `finished_at`): for each job after the first `batch`, in the order they were created,
/// from the end that freed its slot to its creation (a run: the driver admitting it), and for
/// every job from its creation to its start (the dispatch, the same for any job): p50 and max
/// of each, ms.
fn slot_idle(jobs: &[serde_json::Value], batch: usize) -> ((f64, f64), (f64, f64)) {
    let at = |j: &serde_json::Value, f: &str| micros(&j[f]);
    let mut created: Vec<i64> = jobs.iter().map(|j| at(j, "created_at")).collect();
    let mut ends: Vec<i64> = jobs.iter().map(|j| at(j, "finished_at")).collect();
    created.sort_unstable();
    ends.sort_unstable();
    let react: Vec<f64> = (batch..created.len())
        .map(|k| (created[k] - ends[k - batch]) as f64 / 1000.0)
        .collect();
    let dispatch: Vec<f64> = (jobs.iter())
        .map(|j| (at(j, "started_at") - at(j, "created_at")) as f64 / 1000.0)
        .collect();
    let p50_max = |mut v: Vec<f64>| {
        if v.is_empty() {
            return (0.0, 0.0);
        }
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        (v[v.len() / 2], v[v.len() - 1])
    };
    (p50_max(react), p50_max(dispatch))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// The hosts of a run that did not complete, as `name: status (error)`, at most five.
fn run_failures(run: &serde_json::Value) -> Vec<String> {
    let hosts = run["hosts"].as_array().unwrap();
    (hosts.iter())
        .filter(|h| h["status"] != "completed")
        .take(5)
        .map(|h| format!("{}: {} ({})", h["server_name"], h["status"], h["error"]))
        .collect()
}

/// Phase 6: one command on 50 servers as a run (`batch` 10) beside the same 50 jobs submitted
/// one by one and beside pssh-style OpenSSH (10-way, a fresh connection each). The 50 server
/// entries all point at the one test sshd, so a cold pass opens 50 connections to it: its
/// `MaxStartups` (default 10:30:100, unauthenticated connections) is reported, and the
/// connections it dropped are counted from its log.
async fn runs_phase(app: &TestApp, host: &TestHost, reps: usize) {
    let (n, batch) = (50, 10);
    let config = std::fs::read_to_string(host.dir.path().join("sshd_config")).unwrap_or_default();
    let setting = |key: &str, default: &str| {
        (config.lines())
            .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
            .unwrap_or_else(|| format!("{default} (default)"))
    };
    let drops = || host.log().matches("past MaxStartups").count();
    let dropped_before = drops();
    println!(
        "(runs: {n} server entries on the one test sshd; its MaxStartups {}, MaxSessions {}; a \
         job's first connection to an entry also pins its host key and probes the login shell)",
        setting("MaxStartups ", "10:30:100"),
        setting("MaxSessions ", "10"),
    );
    let servers = add_run_servers(app, host, "run", n, false).await;
    let names: Vec<String> = servers.iter().map(|s| s.0.clone()).collect();
    let ids: Vec<String> = servers.iter().map(|s| s.1.clone()).collect();
    let hosts_of = |run: &serde_json::Value| run["hosts"].as_array().unwrap().clone();

    // Cold: the run opens the first connection to each of the 50 entries.
    let (cold, run) = timed_run(app, &names, batch).await;
    let dropped_cold_run = drops() - dropped_before;
    let cold_line = match timeline(&hosts_of(&run), batch) {
        Some((span, most, p50, max)) => format!(
            "hosts' span {span:.2} s, at most {most} at once; slot idle between a host's end and the next start p50 {p50:.1} ms, max {max:.1} ms"
        ),
        None => "some host never started".into(),
    };
    let cold_failures = run_failures(&run);
    // Warm-up of the one-by-one path on the same entries (their pools are warm now).
    let (_, warmup) = timed_jobs(app, &ids).await;
    let warmup_failed = warmup.iter().filter(|j| j["status"] != "completed").count();

    // OpenSSH 9.2's client offers sntrup761x25519-sha512 first and this sshd takes it; russh
    // offers mlkem768x25519 (which OpenSSH 9.2 lacks), then curve25519-sha256: the second
    // baseline pins that, to tell the key exchange's cost from the rest.
    let curve = ["-o", "KexAlgorithms=curve25519-sha256"];
    let (mut pssh, mut pssh_curve, mut ours_run, mut ours_jobs) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut pssh_failed, mut last_run, mut last_jobs) = ([0, 0], json!(null), Vec::new());
    let (mut dropped_pssh, mut dropped_ours) = (0, 0);
    for _ in 0..reps {
        let before = drops();
        let (wall, failed) = pssh_style(host, n, batch, &[]);
        pssh.push(wall);
        pssh_failed[0] += failed;
        let (wall, failed) = pssh_style(host, n, batch, &curve);
        pssh_curve.push(wall);
        pssh_failed[1] += failed;
        let between = drops();
        dropped_pssh += between - before;
        let (wall, run) = timed_run(app, &names, batch).await;
        assert_eq!(run["status"], "completed", "{:?}", run_failures(&run));
        assert!(
            (run["hosts"].as_array().unwrap().iter()).all(|h| h["status"] == "completed"),
            "{:?}",
            run_failures(&run)
        );
        ours_run.push(wall);
        last_run = run;
        let (wall, jobs) = timed_jobs(app, &ids).await;
        let failed: Vec<_> = (jobs.iter())
            .filter(|j| j["status"] != "completed")
            .map(|j| format!("{}: {} ({})", j["server_id"], j["status"], j["error"]))
            .collect();
        assert!(failed.is_empty(), "jobs failed: {failed:?}");
        ours_jobs.push(wall);
        last_jobs = jobs;
        dropped_ours += drops() - between;
    }
    let range = |v: &[f64]| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(0.0, f64::max);
        format!("{lo:.2}..{hi:.2}")
    };
    let (pssh_m, curve_m, run_m, jobs_m) = (
        median(pssh.clone()),
        median(pssh_curve.clone()),
        median(ours_run.clone()),
        median(ours_jobs.clone()),
    );
    let failed = |f: usize| {
        if f > 0 {
            format!("  ({f} ssh runs FAILED: dropped by sshd?)")
        } else {
            String::new()
        }
    };
    println!(
        "(runs: medians of {reps} passes, range in brackets; the server-side figures are of the last pass)"
    );
    println!(
        "baseline  {:<55}{pssh_m:>7.2} s  [{}]{}",
        format!("pssh-style: {n} x ssh true, {batch}-way, fresh connections"),
        range(&pssh),
        failed(pssh_failed[0])
    );
    println!(
        "baseline  {:<55}{curve_m:>7.2} s  [{}]{}",
        "  the same, -o KexAlgorithms=curve25519-sha256 (russh's)",
        range(&pssh_curve),
        failed(pssh_failed[1])
    );
    let run_timeline = timeline(&hosts_of(&last_run), batch);
    println!(
        "ours      {:<55}{run_m:>7.2} s  [{}]  ({:.2}x pssh-style)",
        format!("run over {n} servers, batch {batch} (warm)"),
        range(&ours_run),
        run_m / pssh_m
    );
    if let Some((span, most, p50, max)) = run_timeline {
        println!(
            "ours        the run, server side: hosts' span {span:.2} s, at most {most} at once; slot idle between a host's end and the next start p50 {p50:.1} ms, max {max:.1} ms"
        );
    }
    let mut run_jobs = Vec::new();
    for h in last_run["hosts"].as_array().unwrap() {
        let id = h["job_id"].as_str().unwrap();
        run_jobs.push(app.get(&format!("/api/v1/jobs/{id}")).await.1);
    }
    let ((react, react_max), (dispatch, dispatch_max)) = slot_idle(&run_jobs, batch);
    println!(
        "ours        of that idle time: a host's end -> the next host's job created (the run driver) p50 {react:.1} ms, max {react_max:.1} ms; job created -> started p50 {dispatch:.1} ms, max {dispatch_max:.1} ms"
    );
    println!(
        "ours      {:<55}{jobs_m:>7.2} s  [{}]  ({:.2}x pssh-style; the run is {:.2}x this)",
        format!("{n} jobs submitted one by one (warm)"),
        range(&ours_jobs),
        jobs_m / pssh_m,
        run_m / jobs_m
    );
    if let Some((span, most, ..)) = timeline(&last_jobs, batch) {
        let (_, (dispatch, dispatch_max)) = slot_idle(&last_jobs, batch);
        println!(
            "ours        the jobs, server side: first start to last end {span:.2} s, at most {most} at once; job created -> started p50 {dispatch:.1} ms, max {dispatch_max:.1} ms"
        );
    }
    println!(
        "ours      {:<55}{cold:>7.2} s  ({:.2}x pssh-style, {:.2}x curve25519; status {}, counts {}; sshd dropped {dropped_cold_run})",
        format!("run over {n} servers, batch {batch} (cold: first connections)"),
        cold / pssh_m,
        cold / curve_m,
        run["status"],
        run["counts"]
    );
    println!("ours        the cold run, server side: {cold_line}");
    if !cold_failures.is_empty() {
        println!("ours        the cold run's hosts not completed: {cold_failures:?}");
    }
    if warmup_failed > 0 {
        println!("(runs: {warmup_failed} jobs of the one-by-one warm-up did not complete)");
    }

    // Cold again, on 50 fresh entries with the host key pinned at registration: the first
    // connection to each is then one handshake, as each of pssh's is (without a pin, a first
    // connection is a handshake that learns the key, then the one that logs in).
    let pinned = add_run_servers(app, host, "pin", n, true).await;
    let pinned: Vec<String> = pinned.into_iter().map(|s| s.0).collect();
    let before = drops();
    let (cold_pinned, run) = timed_run(app, &pinned, batch).await;
    println!(
        "ours      {:<55}{cold_pinned:>7.2} s  ({:.2}x pssh-style, {:.2}x curve25519; status {}, {}/{n} hosts completed; sshd dropped {})",
        format!("run over {n} servers, batch {batch} (cold, host keys pinned)"),
        cold_pinned / pssh_m,
        cold_pinned / curve_m,
        run["status"],
        (run["hosts"].as_array().unwrap().iter())
            .filter(|h| h["status"] == "completed")
            .count(),
        drops() - before,
    );
    let dropped_pinned = drops() - before;

    // Cold one by one, on 50 fresh entries: 50 first connections to the one sshd at once.
    let fresh = add_run_servers(app, host, "job", n, false).await;
    let fresh: Vec<String> = fresh.into_iter().map(|s| s.1).collect();
    let dropped_mid = drops();
    let (cold_jobs, jobs) = timed_jobs(app, &fresh).await;
    let not_completed: Vec<String> = (jobs.iter())
        .filter(|j| j["status"] != "completed")
        .map(|j| format!("{} ({})", j["status"], j["error"]))
        .collect();
    println!(
        "ours      {:<55}{cold_jobs:>7.2} s  ({}/{n} completed; sshd dropped {} connections past MaxStartups)",
        format!("{n} jobs submitted one by one (cold: fresh entries)"),
        n - not_completed.len(),
        drops() - dropped_mid,
    );
    if !not_completed.is_empty() {
        println!(
            "ours        not completed: {:?}",
            &not_completed[..not_completed.len().min(5)]
        );
    }
    println!(
        "(runs: connections sshd dropped past MaxStartups: {dropped_cold_run} in the cold run, {} in the warm-up, {dropped_pssh} in the ssh baselines, {dropped_ours} in our warm passes, {dropped_pinned} in the pinned cold run, {} in the cold one-by-one pass)",
        dropped_mid
            - dropped_before
            - dropped_cold_run
            - dropped_pssh
            - dropped_ours
            - dropped_pinned,
        drops() - dropped_mid,
    );
}

/// The login the benchmark runs as: `JOBEXEC_TEST_SSH_USER`, or (as root) an account
/// `jobexec-bench` made with `/bin/sh` as its shell, so that no rc file of an interactive
/// user (root's `.bashrc` here runs pyenv's init, tens of milliseconds or more) is timed
/// before every command — in the baselines and in ours alike.
fn bench_user() -> String {
    if let Ok(u) = std::env::var("JOBEXEC_TEST_SSH_USER")
        && !u.is_empty()
    {
        return u;
    }
    let exists = Command::new("id")
        .arg("jobexec-bench")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !exists {
        let made = Command::new("useradd")
            .args([
                "--no-create-home",
                "--home-dir",
                "/tmp",
                "--shell",
                "/bin/sh",
                "jobexec-bench",
            ])
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            made,
            "cannot create the jobexec-bench account (run as root, or set JOBEXEC_TEST_SSH_USER)"
        );
    }
    // A new account is locked ("!"), and sshd without PAM refuses locked accounts even for
    // key logins: "*" means no password login, but not locked.
    let _ = Command::new("usermod")
        .args(["-p", "*", "jobexec-bench"])
        .status();
    "jobexec-bench".into()
}

/// The phases `JOBEXEC_BENCH_ONLY` can name.
const PHASES: [&str; 8] = [
    "rate", "latency", "memory", "output", "link", "sse", "runs", "prune",
];

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if let Ok(spec) = std::env::var("JOBEXEC_BENCH_SSE_CLIENTS") {
        return sse_clients(&spec).await;
    }
    let only = std::env::var("JOBEXEC_BENCH_ONLY")
        .ok()
        .filter(|o| !o.is_empty());
    assert!(
        only.as_deref().is_none_or(|o| PHASES.contains(&o)),
        "JOBEXEC_BENCH_ONLY={only:?}: the phases that run alone are {PHASES:?}"
    );
    let quick = std::env::args().any(|a| a == "--quick");
    let scale = if quick { 5 } else { 1 };
    assert!(
        std::path::Path::new("/usr/sbin/sshd").exists(),
        "the benchmark needs OpenSSH's sshd"
    );
    let host = TestHost::start_as(&bench_user()).await;
    let db = TestDb::create(Db::Sqlite).unwrap();
    let app = TestApp::start(
        &db,
        &[
            ("JOBEXEC__HTTP__WORKERS", "2"),
            ("JOBEXEC__WORKER__MAX_CONNECTIONS_PER_HOST", "220"),
            ("JOBEXEC__WORKER__CONCURRENCY", "2000"),
            ("JOBEXEC__DATABASE__POOL_SIZE", "8"),
            // Thousands of submissions and a thousand streams from one address: no limits.
            ("JOBEXEC__LIMITS__SUBMISSIONS_PER_MINUTE", "0"),
            ("JOBEXEC__LIMITS__MAX_STREAMS_PER_CLIENT", "0"),
        ],
    )
    .await;
    let server = app.add_key_server("bench", &host).await;
    let (status, _) = app
        .put(
            &format!("/api/v1/servers/{server}"),
            &json!({"max_concurrent_jobs": 40}),
        )
        .await;
    assert_eq!(status, 200);

    println!(
        "job-executor engine benchmark (sshd on 127.0.0.1:{} as {}, SQLite)",
        host.port, host.user
    );
    if only.as_deref().is_none_or(|o| o == "rate") {
        let cm = control_master_rate(&host, 1000 / scale);
        println!("baseline  ControlMaster `true`, 10-way           {cm:>9.1} runs/s");
        let fresh = fresh_connection_rate(&host, 300 / scale).await;
        println!("baseline  fresh connection per job, 10-way       {fresh:>9.1} runs/s");
        let conns = rate::SLOTS / rate::CHANNELS_PER_CONNECTION;
        let per = rate::CHANNELS_PER_CONNECTION;
        let raw = rate::raw_pool_rate(&host, 4000 / scale, conns, per).await;
        println!(
            "baseline  raw pool, {conns} connections x {per} channels    {raw:>9.1} runs/s  (the service's SSH client, no HTTP or database)"
        );
        let serve = rate::Serve::start(&host).await;
        let _ = serve.rate(200).await; // warm the pool
        let (ours, cpu_ms) = serve.rate(4000 / scale).await;
        println!(
            "ours      trivial jobs through the HTTP API       {ours:>9.1} jobs/s  ({:.2}x ControlMaster, target >= 3x; {:.2} of the raw pool)",
            ours / cm,
            ours / raw
        );
        println!(
            "ours        CPU of the serve process per job       {cpu_ms:>9.3} ms  (target <= 0.4 ms)"
        );
        drop(serve);
        distributed_rate(&host, 2000 / scale, cm, ours).await;
    }
    if only.as_deref().is_none_or(|o| o == "latency") {
        let (p50, p99) = latency(&app, &server, 300 / scale).await;
        println!(
            "ours      submit -> running latency              p50 {p50:.2} ms, p99 {p99:.2} ms  (target p50 < 1 ms, p99 < 5 ms)"
        );
    }
    if only.as_deref().is_none_or(|o| o == "memory") {
        let (status, _) = app
            .put(
                &format!("/api/v1/servers/{server}"),
                &json!({"max_concurrent_jobs": 1000}),
            )
            .await;
        assert_eq!(status, 200);
        let n = 1000 / scale;
        let per_job = memory_per_job(&app, &server, n).await;
        println!(
            "ours      memory per running job ({n} x sleep)    {per_job:>9.1} KiB  (target <= 24 KiB)"
        );
    }
    if only.as_deref().is_none_or(|o| o == "output") {
        let cm = control_master_output_rate(&host, 200, None);
        println!(
            "baseline  ControlMaster printing 200 MB          {cm:>9.1} MB/s  (OpenSSH's own cipher choice)"
        );
        let cm_gcm = control_master_output_rate(&host, 200, Some("aes256-gcm@openssh.com"));
        println!(
            "baseline  the same with aes256-gcm               {cm_gcm:>9.1} MB/s  (the cipher ours picks on this CPU)"
        );
        let mbps = output_rate(&app, &server, 200).await;
        println!(
            "ours      one job printing 200 MB                {mbps:>9.1} MB/s  ({:.2}x ControlMaster; target >= 400 MB/s; median of 3)",
            mbps / cm
        );
    }
    if only.as_deref().is_none_or(|o| o == "link") {
        link::link_phase(&app, &host, if quick { 5 } else { 15 }).await;
    }
    if only.as_deref().is_none_or(|o| o == "sse") {
        sse_fan_out(&app, &host, 1000 / scale).await;
    }
    if only.as_deref().is_none_or(|o| o == "runs") {
        runs_phase(&app, &host, if quick { 3 } else { 10 }).await;
    }
    if only.as_deref().is_none_or(|o| o == "prune") {
        prune_phase(&app, &db, &server, 200 / scale).await;
    }
    app.stop().await;
}
