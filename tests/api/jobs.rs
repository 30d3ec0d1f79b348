//! The engine over real HTTP and a real sshd: run, output, exit codes, cancel, timeout,
//! failures, duplicate, list, idempotency.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::db_test;
use crate::helpers::{TestApp, TestDb, TestHost};

/// Poll a job until it ends (or panic after `bound`).
pub async fn wait_done(app: &TestApp, id: &str, bound: Duration) -> Value {
    let start = Instant::now();
    loop {
        let (status, job) = app.get(&format!("/api/v1/jobs/{id}")).await;
        assert_eq!(status, 200, "{job}");
        let st = job["status"].as_str().unwrap();
        if !matches!(st, "queued" | "running") {
            return job;
        }
        assert!(
            start.elapsed() < bound,
            "job {id} still {st} after {bound:?}: {job}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn wait_running(app: &TestApp, id: &str) -> Value {
    let start = Instant::now();
    loop {
        let (_, job) = app.get(&format!("/api/v1/jobs/{id}")).await;
        if job["status"] == "running" && job["output_bytes"].as_i64().unwrap_or(0) > 0 {
            return job;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "never started: {job}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn submit(app: &TestApp, body: Value) -> String {
    let (status, job) = app.post("/api/v1/jobs", &body).await;
    assert_eq!(status, 201, "{job}");
    assert_eq!(job["status"], "queued");
    job["id"].as_str().unwrap().to_string()
}

async fn raw(app: &TestApp, path: &str) -> Vec<u8> {
    let resp = app.client.get(app.url(path)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.bytes().await.unwrap().to_vec()
}

db_test!(
    command_job_output_exit_code_and_logs,
    |db: TestDb| async move {
        let (app, _host, server) = TestApp::with_host(&db, &[]).await;
        let id = submit(
            &app,
            json!({"command": "echo", "args": "hello; echo oops >&2; printf '\\377\\376'; exit 3",
               "server_id": server, "timeout": 30}),
        )
        .await;
        let job = wait_done(&app, &id, Duration::from_secs(20)).await;
        assert_eq!(job["status"], "failed", "{job}");
        assert_eq!(job["exit_code"], 3);
        assert!(job["error"].as_str().unwrap().contains("status 3"));
        assert!(job["worker"].is_string());
        assert!(job["started_at"].is_string() && job["finished_at"].is_string());
        let out = raw(&app, &format!("/api/v1/jobs/{id}/stdout")).await;
        assert_eq!(out, b"hello\n\xff\xfe");
        let err = raw(&app, &format!("/api/v1/jobs/{id}/stderr")).await;
        assert_eq!(err, b"oops\n");
        let (status, logs) = app.get(&format!("/api/v1/jobs/{id}/logs")).await;
        assert_eq!(status, 200);
        assert_eq!(logs["job_id"], id.as_str());
        assert_eq!(logs["exit_code"], 3);
        assert_eq!(logs["stderr"], "oops\n");
        assert!(logs["output"].as_str().unwrap().contains("hello"));
        assert_eq!(logs["truncated"], false);
        let (_, chunks) = app
            .get(&format!("/api/v1/jobs/{id}/logs?format=chunks"))
            .await;
        let seqs: Vec<i64> = chunks
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["seq"].as_i64().unwrap())
            .collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        app.stop().await;
    }
);

db_test!(script_job_with_args_env_and_cwd, |db: TestDb| async move {
    let (app, _host, server) = TestApp::with_host(&db, &[]).await;
    let (status, job) = app
        .post(
            "/api/v1/jobs/script",
            &json!({"script": "#!/bin/bash\necho \"a=$1 b=$2 greet=$GREET\"\npwd\nexit 7\n",
                    "args": "one two", "server_id": server, "shell": "/bin/bash",
                    "env": {"GREET": "it's $ok"}, "cwd": "/tmp"}),
        )
        .await;
    assert_eq!(status, 201, "{job}");
    assert_eq!(job["kind"], "script");
    let id = job["id"].as_str().unwrap();
    let job = wait_done(&app, id, Duration::from_secs(20)).await;
    assert_eq!(job["exit_code"], 7, "{job}");
    let out = raw(&app, &format!("/api/v1/jobs/{id}/stdout")).await;
    assert_eq!(
        String::from_utf8_lossy(&out),
        "a=one b=two greet=it's $ok\n/tmp\n"
    );
    app.stop().await;
});

db_test!(
    cancel_kills_the_whole_remote_group,
    |db: TestDb| async move {
        let (app, _host, server) =
            TestApp::with_host(&db, &[("JOBEXEC__JOBS__KILL_GRACE_SECS", "1")]).await;
        let id = submit(
        &app,
        json!({"command": "trap '' TERM; (sleep 300 & sleep 301 & wait) & echo started; sleep 302",
               "server_id": server}),
    )
    .await;
        let job = wait_running(&app, &id).await;
        let _ = job;
        let started = Instant::now();
        let (status, body) = app
            .post(&format!("/api/v1/jobs/{id}/cancel"), &json!({}))
            .await;
        assert_eq!(status, 200, "{body}");
        let job = wait_done(&app, &id, Duration::from_secs(15)).await;
        assert_eq!(job["status"], "canceled", "{job}");
        assert!(job["error"].as_str().unwrap().contains("canceled"));
        assert!(started.elapsed() < Duration::from_secs(10));
        // The test host is this machine: no process of the job's group may be left.
        let pgid = job_pgid(&db, &id);
        assert!(
            no_group_left(pgid).await,
            "processes of group {pgid} survive"
        );
        let (status, err) = app
            .post(&format!("/api/v1/jobs/{id}/cancel"), &json!({}))
            .await;
        assert_eq!(status, 409, "{err}");
        app.stop().await;
    }
);

db_test!(
    a_cancel_at_any_moment_of_the_start_leaves_no_process_of_the_job,
    |db: TestDb| async move {
        // The job's stdin goes with its exec request, so its command may start before the
        // worker has seen the process group: a cancel that comes in that window must still
        // reach the group. Cancels sent 0..8 ms after the submission land before the lease,
        // in the window, and after the start; in every case a command that ran leaves no
        // process behind, and one that did not run is said to have been canceled before it
        // started.
        let (app, _host, server) =
            TestApp::with_host(&db, &[("JOBEXEC__JOBS__KILL_GRACE_SECS", "1")]).await;
        let dir = crate::helpers::shared_dir();
        for i in 0..16u64 {
            let flag = dir.path().join(format!("ran-{i}"));
            let id = submit(
                &app,
                json!({"command": format!("trap '' TERM; touch '{}'; sleep 300", flag.display()),
                       "server_id": server}),
            )
            .await;
            tokio::time::sleep(Duration::from_micros(500 * (i % 16))).await;
            let (status, body) = app
                .post(&format!("/api/v1/jobs/{id}/cancel"), &json!({}))
                .await;
            assert!(status == 200 || status == 409, "{body}");
            let job = wait_done(&app, &id, Duration::from_secs(15)).await;
            assert_eq!(job["status"], "canceled", "{job}");
            let error = job["error"].as_str().unwrap();
            if error.contains("before it started") {
                assert!(!flag.exists(), "the command ran, yet: {job}");
                continue;
            }
            // The group is recorded: a moment after the worker learns it, or with the end.
            let pgid = wait_recorded_pgid(&db, &id).await;
            assert!(
                no_group_left(pgid).await,
                "processes of group {pgid} survive the cancel ({error})"
            );
        }
        app.stop().await;
    }
);

db_test!(timeout_ends_timed_out_and_kills, |db: TestDb| async move {
    let (app, _host, server) =
        TestApp::with_host(&db, &[("JOBEXEC__JOBS__KILL_GRACE_SECS", "1")]).await;
    let id = submit(
        &app,
        json!({"command": "trap '' TERM; echo going; sleep 303", "server_id": server, "timeout": 1}),
    )
    .await;
    let job = wait_done(&app, &id, Duration::from_secs(15)).await;
    assert_eq!(job["status"], "timed_out", "{job}");
    assert!(job["error"].as_str().unwrap().contains("timed out"));
    let pgid = job_pgid(&db, &id);
    assert!(no_group_left(pgid).await);
    app.stop().await;
});

db_test!(
    unreachable_host_fails_fast_with_a_clear_error,
    |db: TestDb| async move {
        let app = TestApp::start(&db, &[("JOBEXEC__JOBS__CONNECT_ATTEMPTS", "2")]).await;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let (_, server) = app
            .post(
                "/api/v1/servers",
                &json!({"name": "gone", "hostname": "127.0.0.1", "port": port, "user": "u",
                    "auth_type": "password", "password": "p"}),
            )
            .await;
        let started = Instant::now();
        let id = submit(&app, json!({"command": "true", "server_id": server["id"]})).await;
        let job = wait_done(&app, &id, Duration::from_secs(10)).await;
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(job["status"], "failed");
        assert!(
            job["error"]
                .as_str()
                .unwrap()
                .contains("connection refused"),
            "{job}"
        );
        assert_eq!(job["exit_code"], Value::Null);
        app.stop().await;
    }
);

db_test!(
    forty_concurrent_jobs_on_one_host_all_complete,
    |db: TestDb| async move {
        let (app, _host, server) = TestApp::with_host(&db, &[]).await;
        let (status, _) = app
            .put(
                &format!("/api/v1/servers/{server}"),
                &json!({"max_concurrent_jobs": 40}),
            )
            .await;
        assert_eq!(status, 200);
        let mut ids = Vec::new();
        for i in 0..40 {
            ids.push(
                submit(
                    &app,
                    json!({"command": format!("sleep 0.2; echo job-{i}"), "server_id": server}),
                )
                .await,
            );
        }
        for (i, id) in ids.iter().enumerate() {
            let job = wait_done(&app, id, Duration::from_secs(60)).await;
            assert_eq!(job["status"], "completed", "{job}");
            let out = raw(&app, &format!("/api/v1/jobs/{id}/stdout")).await;
            assert_eq!(String::from_utf8_lossy(&out), format!("job-{i}\n"));
        }
        app.stop().await;
    }
);

db_test!(submit_validation_and_404s, |db: TestDb| async move {
    let (app, _host, server) = TestApp::with_host(&db, &[]).await;
    let cases = [
        (json!({"server_id": server}), "command"),
        (json!({"command": "", "server_id": server}), "command"),
        (
            json!({"command": "ls", "server_id": server, "timeout": -1}),
            "timeout",
        ),
        (
            json!({"command": "ls", "server_id": server, "timeout": "x"}),
            "timeout",
        ),
        (
            json!({"command": "ls", "server_id": server, "env": {"1X": "v"}}),
            "env",
        ),
        (json!({"command": "ls", "server_id": "nope"}), "server_id"),
        (
            json!({"command": "ls", "server_id": "0195f2a4-3b7c-7d8e-9f00-112233445566"}),
            "server_id",
        ),
        (json!({"command": "ls"}), "server_id"),
    ];
    for (body, field) in cases {
        let (status, err) = app.post("/api/v1/jobs", &body).await;
        assert_eq!(status, 422, "{body} -> {err}");
        assert_eq!(err["field"], field, "{err}");
    }
    let (status, _) = app
        .post("/api/v1/jobs/script", &json!({"server_id": server}))
        .await;
    assert_eq!(status, 422);
    let (status, _) = app
        .raw(reqwest::Method::POST, "/api/v1/jobs", b"{".to_vec())
        .await;
    assert_eq!(status, 400);
    let (_, list) = app.get("/api/v1/jobs").await;
    assert_eq!(
        list["jobs"].as_array().unwrap().len(),
        0,
        "bad input created a job"
    );
    let missing = "0195f2a4-3b7c-7d8e-9f00-112233445566";
    for path in ["", "/logs", "/stdout", "/stderr"] {
        let (status, err) = app.get(&format!("/api/v1/jobs/{missing}{path}")).await;
        assert_eq!(status, 404, "{path}: {err}");
    }
    let (status, _) = app
        .post(&format!("/api/v1/jobs/{missing}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 404);
    let (status, _) = app.get("/api/v1/jobs?status=done").await;
    assert_eq!(status, 422);
    app.stop().await;
});

db_test!(
    duplicate_list_paging_and_idempotency,
    |db: TestDb| async move {
        let (app, _host, server) = TestApp::with_host(&db, &[]).await;
        let first = submit(
            &app,
            json!({"command": "echo", "args": "one", "server_id": server, "timeout": 30}),
        )
        .await;
        wait_done(&app, &first, Duration::from_secs(20)).await;
        let (status, dup) = app
            .post(
                &format!("/api/v1/jobs/{first}/duplicate"),
                &json!({"timeout": 60}),
            )
            .await;
        assert_eq!(status, 201, "{dup}");
        assert_eq!(dup["original_job"], first.as_str());
        assert_eq!(dup["new_job"]["duplicated_from"], first.as_str());
        assert_eq!(dup["new_job"]["timeout"], 60);
        assert_eq!(dup["new_job"]["command"], "echo");
        let dup_id = dup["new_job"]["id"].as_str().unwrap().to_string();
        let done = wait_done(&app, &dup_id, Duration::from_secs(20)).await;
        assert_eq!(done["status"], "completed");
        // Duplicate with an empty body keeps everything.
        let (status, _) = app
            .raw(
                reqwest::Method::POST,
                &format!("/api/v1/jobs/{first}/duplicate"),
                Vec::new(),
            )
            .await;
        assert_eq!(status, 201);

        // Idempotency: the same key returns the first job, 200, and queues nothing.
        let body = json!({"command": "true", "server_id": server, "idempotency_key": "k-1"});
        let (s1, j1) = app.post("/api/v1/jobs", &body).await;
        let (s2, j2) = app.post("/api/v1/jobs", &body).await;
        assert_eq!((s1, s2), (201, 200));
        assert_eq!(j1["id"], j2["id"]);

        // Paging through everything with the cursor, newest first.
        let (_, all) = app.get("/api/v1/jobs?limit=1000").await;
        let total = all["jobs"].as_array().unwrap().len();
        assert_eq!(total, 4);
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/api/v1/jobs?limit=3&cursor={c}"),
                None => "/api/v1/jobs?limit=3".into(),
            };
            let (_, page) = app.get(&path).await;
            assert_eq!(page["limit"], 3);
            for j in page["jobs"].as_array().unwrap() {
                seen.push(j["id"].as_str().unwrap().to_string());
            }
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => break,
            }
        }
        let expected: Vec<String> = all["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(seen, expected);
        let mut sorted = seen.clone();
        sorted.sort();
        sorted.reverse();
        assert_eq!(seen, sorted, "newest first");
        let (_, completed) = app
            .get(&format!("/api/v1/jobs?status=completed&server_id={server}"))
            .await;
        assert!(
            completed["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .all(|j| j["status"] == "completed")
        );
        app.stop().await;
    }
);

fn job_pgid(db: &TestDb, id: &str) -> i64 {
    recorded_pgid(db, id).expect("the job's process group was recorded")
}

/// The process group recorded for job `id`, if one was.
fn recorded_pgid(db: &TestDb, id: &str) -> Option<i64> {
    use diesel::prelude::*;
    #[derive(QueryableByName)]
    struct Pg {
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
        remote_pgid: Option<i64>,
    }
    let q = format!("SELECT remote_pgid FROM jobs WHERE id = '{id}'");
    let row: Pg = match db.kind() {
        crate::helpers::Db::Sqlite => {
            let mut c = diesel::SqliteConnection::establish(&db.url).unwrap();
            diesel::sql_query(q).get_result(&mut c).unwrap()
        }
        crate::helpers::Db::Postgres => {
            let mut c = diesel::PgConnection::establish(&db.url).unwrap();
            diesel::sql_query(q).get_result(&mut c).unwrap()
        }
    };
    row.remote_pgid
}

/// The process group recorded for job `id`, waited for (up to 5 s).
async fn wait_recorded_pgid(db: &TestDb, id: &str) -> i64 {
    let start = Instant::now();
    loop {
        if let Some(pgid) = recorded_pgid(db, id) {
            return pgid;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no group recorded for {id}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// True once no process is left in group `pgid` (waits up to 3 s).
/// Whether every process of the group is gone within a few seconds. A zombie counts as gone:
/// it is dead, only not yet reaped by its parent (under load, or under a PID 1 that is slow
/// to reap orphans).
async fn no_group_left(pgid: i64) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        let out = std::process::Command::new("ps")
            .args(["-eo", "pgid=,stat="])
            .output()
            .unwrap();
        let alive = String::from_utf8_lossy(&out.stdout).lines().any(|l| {
            let mut f = l.split_whitespace();
            f.next().and_then(|p| p.parse::<i64>().ok()) == Some(pgid)
                && !f.next().unwrap_or("Z").starts_with('Z')
        });
        if !alive {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

db_test!(
    a_jobs_process_group_is_recorded_with_its_output_its_end_or_a_moment_after_it_starts,
    |db: TestDb| async move {
        // What a lost worker's reaper kills. A job that prints has it with its first
        // output; a short silent one with its end; a silent one that goes on, within a
        // moment of its start (not at once: that would be one write more per short job).
        let (app, _host, server) = TestApp::with_host(&db, &[]).await;
        let printing = submit(
            &app,
            json!({"command": "echo up; sleep 30", "server_id": server}),
        )
        .await;
        wait_running(&app, &printing).await;
        assert!(job_pgid(&db, &printing) > 1);
        let short = submit(&app, json!({"command": "true", "server_id": server})).await;
        let job = wait_done(&app, &short, Duration::from_secs(15)).await;
        assert_eq!(job["status"], "completed", "{job}");
        assert!(job_pgid(&db, &short) > 1);
        let silent = submit(&app, json!({"command": "sleep 30", "server_id": server})).await;
        assert!(wait_recorded_pgid(&db, &silent).await > 1);
        // Recorded while it runs (it sleeps for 30 s), not by its end.
        let (_, job) = app.get(&format!("/api/v1/jobs/{silent}")).await;
        assert_eq!(job["status"], "running", "{job}");
        for id in [&printing, &silent] {
            let (status, body) = app
                .post(&format!("/api/v1/jobs/{id}/cancel"), &json!({}))
                .await;
            assert_eq!(status, 200, "{body}");
            wait_done(&app, id, Duration::from_secs(15)).await;
        }
        app.stop().await;
    }
);

db_test!(
    output_over_the_cap_keeps_head_and_tail,
    |db: TestDb| async move {
        let (app, _host, server) =
            TestApp::with_host(&db, &[("JOBEXEC__JOBS__OUTPUT_CAP_BYTES", "65536")]).await;
        let id = submit(
            &app,
            json!({"command": "seq 1 100000", "server_id": server}),
        )
        .await;
        let job = wait_done(&app, &id, Duration::from_secs(30)).await;
        assert_eq!(job["status"], "completed", "{job}");
        assert_eq!(job["output_truncated"], true);
        let stored = job["output_bytes"].as_i64().unwrap();
        assert!(stored <= 65536 + 200, "{stored}");
        let out = String::from_utf8(raw(&app, &format!("/api/v1/jobs/{id}/stdout")).await).unwrap();
        assert!(out.starts_with("1\n2\n3\n"), "{}", &out[..20]);
        assert!(out.ends_with("99999\n100000\n"));
        let err = String::from_utf8(raw(&app, &format!("/api/v1/jobs/{id}/stderr")).await).unwrap();
        assert!(err.contains("bytes omitted"), "{err}");
        let (_, logs) = app.get(&format!("/api/v1/jobs/{id}/logs")).await;
        assert_eq!(logs["truncated"], true);
        app.stop().await;
    }
);

db_test!(
    shutdown_cancels_running_jobs_so_none_stays_running,
    |db: TestDb| async move {
        let settings: &[(&str, &str)] = &[
            ("JOBEXEC__WORKER__SHUTDOWN_GRACE_SECS", "1"),
            ("JOBEXEC__JOBS__KILL_GRACE_SECS", "1"),
        ];
        let (app, _host, server) = TestApp::with_host(&db, settings).await;
        let quick = submit(
            &app,
            json!({"command": "sleep 0.3; echo quick", "server_id": server}),
        )
        .await;
        let slow = submit(
            &app,
            json!({"command": "echo slow; sleep 304", "server_id": server}),
        )
        .await;
        wait_running(&app, &slow).await;
        let started = Instant::now();
        app.stop().await;
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{:?}",
            started.elapsed()
        );
        let app = TestApp::start(&db, settings).await;
        let (_, q) = app.get(&format!("/api/v1/jobs/{quick}")).await;
        assert_eq!(q["status"], "completed", "{q}");
        let (_, s) = app.get(&format!("/api/v1/jobs/{slow}")).await;
        assert_eq!(s["status"], "canceled", "{s}");
        assert!(s["error"].as_str().unwrap().contains("shut down"), "{s}");
        assert!(no_group_left(job_pgid(&db, &slow)).await);
        app.stop().await;
    }
);

db_test!(
    connection_lost_mid_job_fails_never_completes,
    |db: TestDb| async move {
        let app = TestApp::start(&db, &[]).await;
        let host = TestHost::start().await;
        if host.kind != crate::helpers::sshd::HostKind::OpenSsh {
            return; // cutting connections needs the real sshd (CI always has it)
        }
        let server = app.add_key_server("h", &host).await;
        let id = submit(
            &app,
            json!({"command": "echo up; sleep 4; echo never", "server_id": server}),
        )
        .await;
        wait_running(&app, &id).await;
        host.kill_connections();
        let job = wait_done(&app, &id, Duration::from_secs(20)).await;
        assert_eq!(job["status"], "failed", "{job}");
        let error = job["error"].as_str().unwrap();
        assert!(
            error.contains("lost") || error.contains("closed"),
            "{error}"
        );
        let out = raw(&app, &format!("/api/v1/jobs/{id}/stdout")).await;
        assert_eq!(out, b"up\n");
        // The pool notices and reconnects: the next job runs.
        let next = submit(&app, json!({"command": "echo again", "server_id": server})).await;
        let job = wait_done(&app, &next, Duration::from_secs(20)).await;
        assert_eq!(job["status"], "completed", "{job}");
        app.stop().await;
    }
);

db_test!(
    one_slot_runs_a_servers_jobs_one_at_a_time_in_submission_order,
    |db: TestDb| async move {
        let (app, _host, server) = TestApp::with_host(&db, &[]).await;
        let (status, _) = app
            .put(
                &format!("/api/v1/servers/{server}"),
                &json!({"max_concurrent_jobs": 1}),
            )
            .await;
        assert_eq!(status, 200);
        // The jobs run as the test host's user: a directory anyone may write to.
        let dir = tempfile::tempdir().unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        }
        let file = dir.path().join("order");
        let mut ids = Vec::new();
        for i in 0..12 {
            let command = format!("echo {i} >> {}; sleep 0.05", file.display());
            ids.push(submit(&app, json!({"command": command, "server_id": server})).await);
        }
        let mut jobs = Vec::new();
        for id in &ids {
            let job = wait_done(&app, id, Duration::from_secs(30)).await;
            assert_eq!(job["status"], "completed", "{job}");
            jobs.push(job);
        }
        let order = std::fs::read_to_string(&file).unwrap();
        let expected: String = (0..12).map(|i| format!("{i}\n")).collect();
        assert_eq!(order, expected);
        // One at a time: each started after the one before it finished.
        for pair in jobs.windows(2) {
            let finished = pair[0]["finished_at"].as_str().unwrap();
            let started = pair[1]["started_at"].as_str().unwrap();
            assert!(started >= finished, "{started} < {finished}");
        }
        app.stop().await;
    }
);

/// `jobexec_ssh_connections_open` of one server, from `/metrics`.
async fn open_connections(app: &TestApp, server: &str) -> f64 {
    (app.metric(&format!(
        "jobexec_ssh_connections_open{{server_id=\"{server}\"}}"
    )))
    .await
}

db_test!(idle_connections_are_closed, |db: TestDb| async move {
    let (app, _host, server) =
        TestApp::with_host(&db, &[("JOBEXEC__WORKER__IDLE_CONNECTION_SECS", "1")]).await;
    let id = submit(&app, json!({"command": "true", "server_id": server})).await;
    wait_done(&app, &id, Duration::from_secs(20)).await;
    // Open right after the job (kept for the next one)…
    let after_job = open_connections(&app, &server).await;
    assert!(after_job >= 1.0, "{after_job}");
    // …and closed once idle.
    let start = Instant::now();
    while open_connections(&app, &server).await > 0.0 {
        assert!(
            start.elapsed() < Duration::from_secs(6),
            "an idle connection stayed open"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A new job opens a new one.
    let id = submit(&app, json!({"command": "echo again", "server_id": server})).await;
    let job = wait_done(&app, &id, Duration::from_secs(20)).await;
    assert_eq!(job["status"], "completed");
    app.stop().await;
});
