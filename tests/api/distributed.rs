//! api and worker processes over a real RabbitMQ (a fresh vhost per test) and a real
//! PostgreSQL (a fresh database per test): exactly once, spread, cancels, lost workers, a
//! broker restart. The processes are the real binary.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::procs::{Proc, Vhost, free_port, rabbitmqctl};
use crate::helpers::{Db, TestDb, TestHost, shared_dir};
use crate::stream::{self, Target};

/// Tests here stop and start the shared broker: one at a time.
pub(crate) static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The api process and an HTTP client for it.
struct Api {
    base: String,
    client: reqwest::Client,
    proc: Proc,
}

impl Api {
    async fn start(db: &TestDb, vhost: &Vhost) -> Api {
        let port = free_port();
        let proc = Proc::spawn("api", "api", db, vhost, port);
        let api = Api {
            base: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::new(),
            proc,
        };
        let start = Instant::now();
        loop {
            if let Ok(r) = api.client.get(format!("{}/health", api.base)).send().await
                && r.status() == 200
            {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "api did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        api
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn submit(&self, server: &str, command: &str) -> String {
        let (status, job) = self
            .call(
                reqwest::Method::POST,
                "/api/v1/jobs",
                Some(json!({"command": command, "server_id": server})),
            )
            .await;
        assert_eq!(status, 201, "{job}");
        job["id"].as_str().unwrap().to_string()
    }

    async fn job(&self, id: &str) -> Value {
        self.call(reqwest::Method::GET, &format!("/api/v1/jobs/{id}"), None)
            .await
            .1
    }

    async fn wait_status(&self, id: &str, want: &[&str], bound: Duration) -> Value {
        let start = Instant::now();
        loop {
            let job = self.job(id).await;
            if want.contains(&job["status"].as_str().unwrap_or_default()) {
                return job;
            }
            assert!(
                start.elapsed() < bound,
                "job {id} not {want:?} after {bound:?}: {job}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until the api is connected to the broker again.
    async fn wait_broker(&self) {
        let start = Instant::now();
        loop {
            let (_, health) = self.call(reqwest::Method::GET, "/health", None).await;
            if health["queue_connected"] == true {
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "{health}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Wait until the job runs and has printed something (its remote group exists).
    async fn wait_running(&self, id: &str) -> Value {
        let start = Instant::now();
        loop {
            let job = self.job(id).await;
            if job["status"] == "running" && job["output_bytes"].as_i64().unwrap_or(0) > 0 {
                return job;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "{job}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn add_server(&self, host: &TestHost) -> String {
        let (status, server) = self
            .call(
                reqwest::Method::POST,
                "/api/v1/servers",
                Some(
                    json!({"name": "h", "hostname": host.host, "port": host.port, "user": host.user,
                             "auth_type": "key", "private_key": host.keys.ed25519_openssh,
                             "max_concurrent_jobs": 40}),
                ),
            )
            .await;
        assert_eq!(status, 201, "{server}");
        server["id"].as_str().unwrap().to_string()
    }

    /// This api, for the stream scenarios shared with `serve` mode.
    fn target(&self, server: &str) -> Target {
        Target {
            client: self.client.clone(),
            base: self.base.clone(),
            server: server.to_string(),
        }
    }
}

/// What every test here starts from: its turn (they run one at a time: they share the
/// broker, which some of them stop), a fresh PostgreSQL database and vhost, a test host.
struct Setup {
    _serial: tokio::sync::MutexGuard<'static, ()>,
    db: TestDb,
    vhost: Vhost,
    host: TestHost,
}

async fn setup() -> Option<Setup> {
    let serial = SERIAL.lock().await;
    let db = TestDb::create(Db::Postgres)?;
    let vhost = Vhost::create()?;
    Some(Setup {
        _serial: serial,
        db,
        vhost,
        host: TestHost::start().await,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_spread_over_workers_and_each_runs_exactly_once() {
    let Some(Setup {
        _serial,
        db,
        vhost,
        host,
    }) = setup().await
    else {
        return;
    };
    let api = Api::start(&db, &vhost).await;
    let _w1 = Proc::spawn("worker", "w1", &db, &vhost, free_port());
    let _w2 = Proc::spawn("worker", "w2", &db, &vhost, free_port());
    vhost.wait_consumers(2).await;
    let server = api.add_server(&host).await;
    let dir = shared_dir();
    let ledger = dir.path().join("ledger");
    let mut ids = Vec::new();
    for i in 0..40 {
        ids.push(
            api.submit(
                &server,
                &format!("sleep 0.1; echo job-{i} >> '{}'", ledger.display()),
            )
            .await,
        );
    }
    let mut workers = std::collections::HashSet::new();
    for id in &ids {
        let job = api
            .wait_status(id, &["completed", "failed"], Duration::from_secs(60))
            .await;
        assert_eq!(job["status"], "completed", "{job}");
        workers.insert(job["worker"].as_str().unwrap().to_string());
    }
    let text = std::fs::read_to_string(&ledger).unwrap();
    for i in 0..40 {
        let n = text.lines().filter(|l| *l == format!("job-{i}")).count();
        assert_eq!(n, 1, "job-{i} ran {n} times:\n{text}");
    }
    assert_eq!(workers.len(), 2, "all jobs ran on {workers:?}");
    let (_, health) = api.call(reqwest::Method::GET, "/health", None).await;
    assert_eq!(health["queue"], "rabbitmq");
    assert_eq!(health["queue_connected"], true);
}

/// The status of run `id` and how many jobs it has, read from the database itself.
fn run_in_db(db: &TestDb, id: &str) -> (String, i64) {
    use diesel::prelude::*;
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        status: String,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        jobs: i64,
    }
    let mut c = diesel::PgConnection::establish(&db.url).unwrap();
    let row: Row = diesel::sql_query(format!(
        "SELECT status, (SELECT count(*) FROM jobs WHERE run_id = '{id}') AS jobs \
         FROM runs WHERE id = '{id}'"
    ))
    .get_result(&mut c)
    .unwrap();
    (row.status, row.jobs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_started_through_an_api_keeps_advancing_after_the_api_is_killed() {
    let Some(Setup {
        _serial,
        db,
        vhost,
        host,
    }) = setup().await
    else {
        return;
    };
    let mut api = Api::start(&db, &vhost).await;
    let _w1 = Proc::spawn("worker", "w1", &db, &vhost, free_port());
    vhost.wait_consumers(1).await;
    let mut names = Vec::new();
    for i in 0..4 {
        let name = format!("d-{i}");
        let (status, body) = api
            .call(
                reqwest::Method::POST,
                "/api/v1/servers",
                Some(
                    json!({"name": name, "hostname": host.host, "port": host.port,
                            "user": host.user, "auth_type": "key",
                            "private_key": host.keys.ed25519_openssh}),
                ),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        names.push(name);
    }
    let dir = shared_dir();
    let ledger = dir.path().join("ledger");
    let (status, run) = api
        .call(
            reqwest::Method::POST,
            "/api/v1/runs",
            Some(json!({
                "script": format!("echo up; sleep 0.5; echo \"$JOBEXEC_JOB_ID\" >> '{}'", ledger.display()),
                "targets": {"servers": names}, "strategy": {"batch": 1},
            })),
        )
        .await;
    assert_eq!(status, 201, "{run}");
    let id = run["id"].as_str().unwrap().to_string();
    // The api dies while the first host runs: nothing that knows of the run is left but the
    // database and the worker.
    api.wait_running(run["hosts"][0]["job_id"].as_str().unwrap())
        .await;
    api.proc.kill9();
    let start = Instant::now();
    loop {
        let (status, jobs) = run_in_db(&db, &id);
        if status == "completed" {
            assert_eq!(jobs, 4);
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the run stopped advancing: {status}, {jobs} jobs"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Each host ran exactly once.
    let text = std::fs::read_to_string(&ledger).unwrap();
    let lines: std::collections::HashSet<&str> = text.lines().collect();
    assert_eq!((text.lines().count(), lines.len()), (4, 4), "{text}");
    // A new api reads it as the worker left it.
    let api = Api::start(&db, &vhost).await;
    let (_, run) = api
        .call(reqwest::Method::GET, &format!("/api/v1/runs/{id}"), None)
        .await;
    assert_eq!(run["counts"]["completed"], 4, "{run}");
}

fn group_alive(pgid: i64) -> bool {
    let out = Command::new("ps")
        .args(["-eo", "pgid=,stat="])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().any(|l| {
        let mut f = l.split_whitespace();
        f.next().and_then(|p| p.parse::<i64>().ok()) == Some(pgid)
            && !f.next().unwrap_or("Z").starts_with('Z')
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancels_reach_every_worker_and_leave_no_process() {
    let Some(Setup {
        _serial,
        db,
        vhost,
        host,
    }) = setup().await
    else {
        return;
    };
    let api = Api::start(&db, &vhost).await;
    let _w1 = Proc::spawn("worker", "w1", &db, &vhost, free_port());
    let _w2 = Proc::spawn("worker", "w2", &db, &vhost, free_port());
    vhost.wait_consumers(2).await;
    let server = api.add_server(&host).await;
    let mut ids = Vec::new();
    for _ in 0..8 {
        ids.push(
            api.submit(&server, "trap '' TERM; echo up; sleep 300")
                .await,
        );
    }
    let mut workers = std::collections::HashSet::new();
    for id in &ids {
        let job = api.wait_running(id).await;
        workers.insert(job["worker"].as_str().unwrap().to_string());
    }
    assert_eq!(workers.len(), 2, "{workers:?}");
    let started = Instant::now();
    for id in &ids {
        let (status, body) = api
            .call(
                reqwest::Method::POST,
                &format!("/api/v1/jobs/{id}/cancel"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    for id in &ids {
        let job = api
            .wait_status(id, &["canceled"], Duration::from_secs(20))
            .await;
        assert_eq!(job["status"], "canceled");
    }
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    // No process of any canceled job is left on the host (this machine).
    let pgids = pgids(&db, &ids);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for pgid in pgids {
        assert!(!group_alive(pgid), "group {pgid} survived");
    }
}

fn pgids(db: &TestDb, ids: &[String]) -> Vec<i64> {
    use diesel::prelude::*;
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
        remote_pgid: Option<i64>,
    }
    let mut c = diesel::PgConnection::establish(&db.url).unwrap();
    let list = ids
        .iter()
        .map(|i| format!("'{i}'"))
        .collect::<Vec<_>>()
        .join(",");
    let rows: Vec<Row> =
        diesel::sql_query(format!("SELECT remote_pgid FROM jobs WHERE id IN ({list})"))
            .load(&mut c)
            .unwrap();
    rows.into_iter().filter_map(|r| r.remote_pgid).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_fails_its_jobs_and_a_new_worker_takes_the_queue() {
    let Some(Setup {
        _serial,
        db,
        vhost,
        host,
    }) = setup().await
    else {
        return;
    };
    let api = Api::start(&db, &vhost).await;
    let mut w1 = Proc::spawn("worker", "w1", &db, &vhost, free_port());
    let server = api.add_server(&host).await;
    let doomed = api.submit(&server, "echo up; sleep 120").await;
    let (status, safe) = api
        .call(
            reqwest::Method::POST,
            "/api/v1/jobs",
            Some(json!({"command": "echo up; sleep 1; echo done-safe", "server_id": server, "retry_safe": true})),
        )
        .await;
    assert_eq!(status, 201, "{safe}");
    let safe = safe["id"].as_str().unwrap().to_string();
    for id in [&doomed, &safe] {
        api.wait_running(id).await;
    }
    w1.kill9();
    let killed = Instant::now();
    // Submitted while no worker runs: they wait, queued.
    let later: Vec<String> = {
        let mut v = Vec::new();
        for i in 0..3 {
            v.push(api.submit(&server, &format!("echo later-{i}")).await);
        }
        v
    };
    let job = api
        .wait_status(&doomed, &["failed"], Duration::from_secs(30))
        .await;
    assert!(
        job["error"].as_str().unwrap().contains("worker lost"),
        "{job}"
    );
    assert!(
        killed.elapsed() < Duration::from_secs(15),
        "{:?}",
        killed.elapsed()
    );
    for id in &later {
        assert_eq!(api.job(id).await["status"], "queued");
    }
    let _w2 = Proc::spawn("worker", "w2", &db, &vhost, free_port());
    for id in &later {
        let job = api
            .wait_status(id, &["completed"], Duration::from_secs(30))
            .await;
        assert_eq!(job["worker"], "w2");
    }
    // The job submitted as safe to retry ran again, on the new worker.
    let job = api
        .wait_status(&safe, &["completed"], Duration::from_secs(30))
        .await;
    assert_eq!(job["worker"], "w2", "{job}");
    assert_eq!(job["attempts"], 2, "{job}");
    // The lost worker's remote processes (`sleep 20`, on this machine) were stopped by the
    // process that reaped the job.
    let pgid = pgids(&db, std::slice::from_ref(&doomed))[0];
    assert!(pgid > 1, "{pgid}");
    let start = Instant::now();
    while group_alive(pgid) && start.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let left = group_alive(pgid);
    if left {
        // `--` matters: procps' kill reads "-<pgid>" as an option, and kills everything (-1).
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pgid}")])
            .status();
    }
    assert!(!left, "the lost worker's process group {pgid} still runs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_mid_stream_loses_no_submission() {
    let Some(Setup {
        _serial,
        db,
        vhost,
        host,
    }) = setup().await
    else {
        return;
    };
    let api = Api::start(&db, &vhost).await;
    let _w1 = Proc::spawn("worker", "w1", &db, &vhost, free_port());
    let server = api.add_server(&host).await;
    let mut ids = Vec::new();
    for i in 0..30 {
        if i == 10 {
            assert!(rabbitmqctl(&["stop_app"]), "rabbitmqctl stop_app");
        }
        if i == 20 {
            assert!(rabbitmqctl(&["start_app"]), "rabbitmqctl start_app");
        }
        ids.push(api.submit(&server, &format!("echo n-{i}")).await);
    }
    let result = async {
        for id in &ids {
            let job = api
                .wait_status(id, &["completed", "failed"], Duration::from_secs(60))
                .await;
            assert_eq!(job["status"], "completed", "{job}");
        }
    };
    result.await;
    // Back on the broker.
    api.wait_broker().await;
    let after = api.submit(&server, "echo after").await;
    api.wait_status(&after, &["completed"], Duration::from_secs(30))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_started_before_the_broker_works_once_it_comes_up() {
    let Some(Setup {
        _serial,
        db,
        vhost,
        host,
    }) = setup().await
    else {
        return;
    };
    assert!(rabbitmqctl(&["stop_app"]), "rabbitmqctl stop_app");
    let restart = OnDrop(Some(|| {
        rabbitmqctl(&["start_app"]);
    }));
    let api = Api::start(&db, &vhost).await;
    let _w1 = Proc::spawn("worker", "w1", &db, &vhost, free_port());
    let (_, health) = api.call(reqwest::Method::GET, "/health", None).await;
    assert_eq!(health["queue"], "rabbitmq");
    assert_eq!(health["queue_connected"], false, "{health}");
    // Alive, but not ready: the broker it is configured with is away.
    let (status, ready) = api.call(reqwest::Method::GET, "/health/ready", None).await;
    assert_eq!(
        (status, &ready),
        (
            503,
            &json!({"status": "not ready", "database": true, "broker": false})
        )
    );
    let server = api.add_server(&host).await;
    // Accepted while the broker is away, and run: workers poll the database meanwhile.
    let early = api.submit(&server, "echo early").await;
    let job = api
        .wait_status(&early, &["completed"], Duration::from_secs(30))
        .await;
    assert_eq!(job["worker"], "w1");
    drop(restart);
    api.wait_broker().await;
    let (status, ready) = api.call(reqwest::Method::GET, "/health/ready", None).await;
    assert_eq!(
        (status, &ready),
        (
            200,
            &json!({"status": "ready", "database": true, "broker": true})
        )
    );
    let late = api.submit(&server, "echo late").await;
    api.wait_status(&late, &["completed"], Duration::from_secs(30))
        .await;
    // Submitted with the broker up: published (confirmed) at once.
    use diesel::prelude::*;
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        published: bool,
    }
    let mut c = diesel::PgConnection::establish(&db.url).unwrap();
    let r: Row = diesel::sql_query(format!("SELECT published FROM jobs WHERE id = '{late}'"))
        .get_result(&mut c)
        .unwrap();
    assert!(r.published);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_streams_a_job_that_a_worker_runs() {
    let Some(Setup {
        _serial,
        db,
        vhost,
        host,
    }) = setup().await
    else {
        return;
    };
    let api = Api::start(&db, &vhost).await;
    let _w1 = Proc::spawn("worker", "w1", &db, &vhost, free_port());
    let server = api.add_server(&host).await;
    let id = api
        .submit(
            &server,
            "for i in 1 2 3; do echo tick-$i; sleep 0.2; done; printf '\\342\\202'; sleep 0.2; printf '\\254\\n'",
        )
        .await;
    let events = api.target(&server).open(&id, None).await.collect().await;
    assert_eq!(
        stream::text(&events, "stdout"),
        "tick-1\ntick-2\ntick-3\n€\n"
    );
    let last = events.last().unwrap();
    assert_eq!(last.kind, "complete");
    assert_eq!(last.data["status"], "completed");
}

/// An api process and a worker process, ready to stream: the api's view of them.
async fn streaming(db: &TestDb, vhost: &Vhost, host: &TestHost) -> (Api, Proc, Target) {
    let api = Api::start(db, vhost).await;
    let worker = Proc::spawn("worker", "w1", db, vhost, free_port());
    let server = api.add_server(host).await;
    let target = api.target(&server);
    (api, worker, target)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_replays_a_job_a_worker_ran_and_resumes_after_any_event() {
    let Some(Setup {
        _serial,
        db,
        vhost,
        host,
    }) = setup().await
    else {
        return;
    };
    let (_api, _w1, target) = streaming(&db, &vhost, &host).await;
    stream::replay_and_resume(&target).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_resumes_a_running_job_across_replay_and_live_exactly() {
    let Some(Setup {
        _serial,
        db,
        vhost,
        host,
    }) = setup().await
    else {
        return;
    };
    let (_api, _w1, target) = streaming(&db, &vhost, &host).await;
    stream::resume_while_running(&target).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_on_an_api_does_not_slow_a_50_mb_job_on_a_worker() {
    let Some(Setup {
        _serial,
        db,
        vhost,
        host,
    }) = setup().await
    else {
        return;
    };
    let (_api, _w1, target) = streaming(&db, &vhost, &host).await;
    stream::stalled_reader(&target).await;
}

/// Runs its closure when dropped (also when the test panics): the broker must come back.
struct OnDrop<F: FnOnce()>(Option<F>);

impl<F: FnOnce()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_a_worker_and_leaves_nothing_running() {
    let Some(Setup {
        _serial,
        db,
        vhost,
        host,
    }) = setup().await
    else {
        return;
    };
    let api = Api::start(&db, &vhost).await;
    let mut w1 = Proc::spawn("worker", "w1", &db, &vhost, free_port());
    let server = api.add_server(&host).await;
    let quick = api.submit(&server, "echo up; sleep 0.5; echo quick").await;
    let slow = api.submit(&server, "echo up; sleep 30").await;
    for id in [&quick, &slow] {
        api.wait_running(id).await;
    }
    // Grace 1 s (the test's settings): the quick job finishes, the slow one is canceled.
    let status = tokio::task::spawn_blocking(move || {
        let s = w1.terminate(Duration::from_secs(15));
        (s, w1)
    })
    .await
    .unwrap();
    assert!(
        status.0.is_some_and(|s| s.success()),
        "the worker did not exit cleanly: {:?}",
        status.0
    );
    let q = api.job(&quick).await;
    assert_eq!(q["status"], "completed", "{q}");
    let s = api.job(&slow).await;
    assert_eq!(s["status"], "canceled", "{s}");
    assert!(s["error"].as_str().unwrap().contains("shut down"), "{s}");
    for pgid in pgids(&db, std::slice::from_ref(&slow)) {
        assert!(!group_alive(pgid), "group {pgid} survived the drain");
    }
}

/// A broker message names its job's server, and a worker keeps that server's cap instead of
/// reading the job: a change of `max_concurrent_jobs` still reaches the worker within a
/// heartbeat (1 s here), down as well as up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_servers_cap_change_reaches_a_worker_that_keeps_it() {
    let Some(Setup {
        _serial,
        db,
        vhost,
        host,
    }) = setup().await
    else {
        return;
    };
    let api = Api::start(&db, &vhost).await;
    let _w1 = Proc::spawn("worker", "w1", &db, &vhost, free_port());
    vhost.wait_consumers(1).await;
    let server = api.add_server(&host).await;
    // The worker learns the cap (40) with its first job there.
    let first = api.submit(&server, "true").await;
    let done = api.wait_status(&first, &["completed"], Duration::from_secs(30));
    done.await;

    let set_cap = |cap: i64| {
        let path = format!("/api/v1/servers/{server}");
        let body = json!({"max_concurrent_jobs": cap});
        let api = &api;
        async move {
            let (status, row) = api.call(reqwest::Method::PUT, &path, Some(body)).await;
            assert_eq!(status, 200, "{row}");
        }
    };
    let running = || async {
        let path = format!("/api/v1/jobs?status=running&server_id={server}");
        let (_, list) = api.call(reqwest::Method::GET, &path, None).await;
        list["jobs"].as_array().map_or(0, Vec::len)
    };

    set_cap(1).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(api.submit(&server, "sleep 0.5").await);
    }
    let (start, mut most) = (Instant::now(), 0);
    loop {
        most = most.max(running().await);
        let mut ended = 0;
        for id in &ids {
            ended += usize::from(api.job(id).await["status"] == "completed");
        }
        if ended == ids.len() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "jobs did not end"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(most, 1, "a cap lowered to 1 let {most} jobs run at once");

    set_cap(3).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(api.submit(&server, "sleep 3").await);
    }
    let start = Instant::now();
    while running().await < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "a cap raised to 3 did not let 3 jobs run at once"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for id in &ids {
        api.wait_status(id, &["completed"], Duration::from_secs(30))
            .await;
    }
}
