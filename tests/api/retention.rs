//! Retention: a prune deletes exactly what `[retention]` says — old output (the job marked,
//! its logs saying so), old finished jobs beyond each server's newest N, failures kept
//! longer, whole runs, old audit records and settled deliveries — and never a queued or
//! running job or a pending delivery; `prune --dry-run` counts the same and changes nothing;
//! the lease keeps a second pass out; on SQLite the file shrinks; the background pass of a
//! running service prunes and counts it in `jobexec_pruned_rows_total`.
//!
//! Jobs run for real over the test sshd; their age is then set by updating their timestamps
//! in the database directly (the prune only reads the timestamps), which is what makes a
//! 40-day-old job in a test of seconds.

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use diesel::sql_types::BigInt;
use diesel::{Connection, PgConnection, QueryableByName, RunQueryDsl, SqliteConnection};
use serde_json::json;

use crate::db_test;
use crate::helpers::{Db, TestApp, TestDb, secret_key_env};
use crate::jobs::{submit, wait_done};
use crate::runs::wait_run;

const DAY: i64 = 86_400_000_000;

/// A direct connection to a test database, for ageing rows and counting them.
enum Sql {
    Pg(PgConnection),
    Lite(SqliteConnection),
}

#[derive(QueryableByName)]
struct N {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

impl Sql {
    fn open(db: &TestDb) -> Sql {
        match db.kind() {
            Db::Postgres => Sql::Pg(PgConnection::establish(&db.url).unwrap()),
            Db::Sqlite => {
                let mut c = SqliteConnection::establish(&db.url).unwrap();
                diesel::sql_query("PRAGMA busy_timeout = 5000")
                    .execute(&mut c)
                    .unwrap();
                Sql::Lite(c)
            }
        }
    }

    fn exec(&mut self, sql: &str) -> usize {
        let q = diesel::sql_query(sql);
        match self {
            Sql::Pg(c) => q.execute(c),
            Sql::Lite(c) => q.execute(c),
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// The one number of `sql` (`SELECT … AS n`).
    fn n(&mut self, sql: &str) -> i64 {
        let q = diesel::sql_query(sql);
        match self {
            Sql::Pg(c) => q.get_result::<N>(c),
            Sql::Lite(c) => q.get_result::<N>(c),
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .n
    }

    /// Make job `id` look as if it had finished `days` ago.
    fn age_job(&mut self, id: &str, days: i64) {
        let now = chrono::Utc::now().timestamp_micros();
        let at = now - days * DAY;
        self.exec(&format!(
            "UPDATE jobs SET finished_at = {at}, started_at = {}, created_at = {} WHERE id = '{id}'",
            at - 1_000_000,
            at - 2_000_000
        ));
    }

    fn exists(&mut self, table: &str, id: &str) -> bool {
        self.n(&format!(
            "SELECT COUNT(*) AS n FROM {table} WHERE id = '{id}'"
        )) == 1
    }

    fn chunks(&mut self, job: &str) -> i64 {
        self.n(&format!(
            "SELECT COUNT(*) AS n FROM job_output WHERE job_id = '{job}'"
        ))
    }

    fn pruned(&mut self, job: &str) -> bool {
        self.n(&format!(
            "SELECT COUNT(*) AS n FROM jobs WHERE id = '{job}' AND output_pruned_at IS NOT NULL"
        )) == 1
    }

    /// Rows of every table a prune touches, and the jobs marked pruned.
    fn census(&mut self) -> Vec<i64> {
        [
            "SELECT COUNT(*) AS n FROM job_output",
            "SELECT COUNT(*) AS n FROM jobs",
            "SELECT COUNT(*) AS n FROM jobs WHERE output_pruned_at IS NOT NULL",
            "SELECT COUNT(*) AS n FROM runs",
            "SELECT COUNT(*) AS n FROM run_hosts",
            "SELECT COUNT(*) AS n FROM audit_log",
            "SELECT COUNT(*) AS n FROM webhook_deliveries",
            "SELECT held_until AS n FROM retention_lease",
        ]
        .iter()
        .map(|q| self.n(q))
        .collect()
    }
}

/// `job-executor prune [--dry-run]` on `db` with `[retention]` from `policy`
/// (`("jobs", "10d")` sets `JOBEXEC__RETENTION__JOBS`): its exit status and output.
fn prune(db: &TestDb, policy: &[(&str, &str)], dry_run: bool) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_job-executor"));
    cmd.arg("prune")
        .env("JOBEXEC__DATABASE__URL", &db.url)
        .env("JOBEXEC__LOG__FILTER", "warn");
    if dry_run {
        cmd.arg("--dry-run");
    }
    if let Some((k, v)) = secret_key_env(&db.url) {
        cmd.env(k, v);
    }
    for (key, value) in policy {
        cmd.env(format!("JOBEXEC__RETENTION__{}", key.to_uppercase()), value);
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The counts a prune printed (`TABLE: N deleted` / `TABLE: N would be deleted`).
fn counts(out: &str) -> HashMap<String, i64> {
    out.lines()
        .filter_map(|l| {
            let (table, rest) = l.split_once(": ")?;
            let n = rest.split_whitespace().next()?.parse().ok()?;
            Some((table.to_string(), n))
        })
        .collect()
}

/// The policy of the main test.
const POLICY: &[(&str, &str)] = &[
    ("output", "1d"),
    ("jobs", "10d"),
    ("failed_jobs", "30d"),
    ("keep_last_per_server", "2"),
    ("audit", "5d"),
    ("deliveries", "5d"),
];

async fn run_job(app: &TestApp, server: &str, command: &str) -> String {
    let id = submit(
        app,
        json!({"command": command, "server_id": server, "timeout": 30}),
    )
    .await;
    wait_done(app, &id, Duration::from_secs(30)).await;
    id
}

db_test!(
    a_prune_deletes_exactly_what_the_policy_says_and_a_dry_run_nothing,
    |db: TestDb| async move {
        let (app, _host, server) = TestApp::with_host(&db, &[]).await;
        // A run of one host (its job the oldest of the server's), then seven jobs.
        let (status, run) = app
            .post(
                "/api/v1/runs",
                &json!({"command": "echo run-out", "targets": {"servers": ["h"]}}),
            )
            .await;
        assert_eq!(status, 201, "{run}");
        let run_id = run["id"].as_str().unwrap().to_string();
        let run = wait_run(&app, &run_id).await;
        let run_job_id = run["hosts"][0]["job_id"].as_str().unwrap().to_string();
        let mut j = Vec::new();
        for command in [
            "echo one",
            "echo two",
            "sh -c 'echo three; exit 1'",
            "sh -c 'echo four; exit 1'",
            "echo five",
            "echo six",
            "echo seven",
        ] {
            j.push(run_job(&app, &server, command).await);
        }
        let mut sql = Sql::open(&db);
        for id in j.iter().chain([&run_job_id]) {
            assert!(sql.chunks(id) > 0, "job {id} has no output");
        }
        // Ages: the run's job 20 days; one, two 20; three (failed) 20; four (failed) 40;
        // five 3; six 20 (but one of the server's newest two); seven now.
        sql.age_job(&run_job_id, 20);
        let now = chrono::Utc::now().timestamp_micros();
        sql.exec(&format!(
            "UPDATE runs SET finished_at = {}, created_at = {} WHERE id = '{run_id}'",
            now - 20 * DAY,
            now - 20 * DAY
        ));
        for (i, days) in [20, 20, 20, 40, 3, 20].into_iter().enumerate() {
            sql.age_job(&j[i], days);
        }
        // A run that never admitted a host, ended 20 days ago: it has no job.
        let empty_run = uuid::Uuid::now_v7().to_string();
        sql.exec(&format!(
            "INSERT INTO runs (id, spec, targets, status, actor, created_at, finished_at) \
             VALUES ('{empty_run}', '{{}}', '{{}}', 'canceled', 'test', {0}, {0})",
            now - 20 * DAY
        ));
        sql.exec(&format!(
            "INSERT INTO run_hosts (run_id, position, server_id, server_name, state) \
             VALUES ('{empty_run}', 0, '{server}', 'h', 'skipped')"
        ));
        // A queued and a running job, 50 days old, on a server of their own: never deleted.
        let (queued, running) = (
            uuid::Uuid::now_v7().to_string(),
            uuid::Uuid::now_v7().to_string(),
        );
        for (id, status) in [(&queued, "queued"), (&running, "running")] {
            sql.exec(&format!(
                "INSERT INTO jobs (id, kind, command, server_id, timeout_secs, env, status, \
                 created_at, started_at, worker, lease_expires_at) VALUES ('{id}', 'command', \
                 'true', '00000000-0000-7000-8000-000000000000', 30, '{{}}', '{status}', {0}, \
                 {0}, 'elsewhere', {1})",
                now - 50 * DAY,
                now + DAY
            ));
        }
        // Three audit records 6 days old (the others are recent).
        let audits = sql.n("SELECT COUNT(*) AS n FROM audit_log");
        assert!(audits > 3, "{audits}");
        sql.exec(&format!(
            "UPDATE audit_log SET at = {} WHERE id IN \
             (SELECT id FROM audit_log ORDER BY id LIMIT 3)",
            now - 6 * DAY
        ));
        // Deliveries of an inactive webhook: delivered and failed 10 days ago go; pending
        // 10 days ago and delivered yesterday stay.
        sql.exec(&format!(
            "INSERT INTO webhooks (id, name, url, events, active, created_at, updated_at) \
             VALUES ('w1', 'w', 'http://127.0.0.1:9/', '[\"job.failed\"]', FALSE, {now}, {now})"
        ));
        for (id, status, days) in [
            ("d1", "delivered", 10),
            ("d2", "failed", 10),
            ("d3", "pending", 10),
            ("d4", "delivered", 1),
        ] {
            sql.exec(&format!(
                "INSERT INTO webhook_deliveries (id, webhook_id, event, subject_id, at, status, \
                 next_attempt_at, created_at) VALUES ('{id}', 'w1', 'job.failed', 'x', {0}, \
                 '{status}', {1}, {0})",
                now - days * DAY,
                now + 10 * DAY
            ));
        }
        // A schedule whose fire launched the run: the fire stays, naming a run that is gone.
        let (status, body) = app
            .post(
                "/api/v1/templates",
                &json!({"name": "t", "targets": {"servers": ["h"]}, "command": "true"}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let (status, schedule) = app
            .post(
                "/api/v1/schedules",
                &json!({"name": "nightly", "template": "t", "cron": "30 2 * * *"}),
            )
            .await;
        assert_eq!(status, 201, "{schedule}");
        sql.exec(&format!(
            "INSERT INTO schedule_fires (schedule_id, fire_at, status, run_id, claimed_by, \
             claimed_at) VALUES ('{}', {1}, 'launched', '{run_id}', 'test', {1})",
            schedule["id"].as_str().unwrap(),
            now - 20 * DAY
        ));
        let output_gone: i64 = [&run_job_id, &j[0], &j[1], &j[2], &j[3], &j[4], &j[5]]
            .iter()
            .map(|id| sql.chunks(id))
            .sum();
        let expected = HashMap::from([
            ("job_output".to_string(), output_gone),
            ("jobs".to_string(), 4),
            ("runs".to_string(), 2),
            ("audit_log".to_string(), 3),
            ("webhook_deliveries".to_string(), 2),
        ]);

        // The dry run says exactly that, and changes nothing.
        let before = sql.census();
        let (ok, out) = prune(&db, POLICY, true);
        assert!(ok, "{out}");
        assert_eq!(counts(&out), expected, "{out}");
        assert!(
            out.contains("would be deleted") && out.contains("nothing was changed"),
            "{out}"
        );
        assert_eq!(sql.census(), before, "the dry run changed something: {out}");

        // The prune deletes exactly that.
        let audits = sql.n("SELECT COUNT(*) AS n FROM audit_log");
        let (ok, out) = prune(&db, POLICY, false);
        assert!(ok, "{out}");
        assert_eq!(counts(&out), expected, "{out}");
        for gone in [&run_job_id, &j[0], &j[1], &j[3]] {
            assert!(!sql.exists("jobs", gone), "{gone} should be gone");
            assert_eq!(sql.chunks(gone), 0);
        }
        for kept in [&j[2], &j[4], &j[5], &j[6], &queued, &running] {
            assert!(sql.exists("jobs", kept), "{kept} should be kept");
        }
        for pruned in [&j[2], &j[4], &j[5]] {
            assert!(
                sql.pruned(pruned),
                "{pruned}'s output should be marked pruned"
            );
            assert_eq!(sql.chunks(pruned), 0);
        }
        assert!(!sql.pruned(&j[6]) && sql.chunks(&j[6]) > 0);
        assert!(!sql.exists("runs", &run_id) && !sql.exists("runs", &empty_run));
        assert_eq!(
            sql.n(&format!(
                "SELECT COUNT(*) AS n FROM run_hosts WHERE run_id IN ('{run_id}', '{empty_run}')"
            )),
            0
        );
        for (id, kept) in [("d1", false), ("d2", false), ("d3", true), ("d4", true)] {
            assert_eq!(sql.exists("webhook_deliveries", id), kept, "{id}");
        }
        assert_eq!(sql.n("SELECT COUNT(*) AS n FROM audit_log"), audits - 3);
        // A second prune finds nothing more.
        let (ok, out) = prune(&db, POLICY, false);
        assert!(ok && counts(&out).values().all(|n| *n == 0), "{out}");

        // The logs of a pruned job say so; a kept job's do not; a deleted job is 404.
        let (status, logs) = app.get(&format!("/api/v1/jobs/{}/logs", j[2])).await;
        assert_eq!(status, 200, "{logs}");
        assert!(logs["output_pruned_at"].is_string(), "{logs}");
        assert_eq!(logs["output"], "", "{logs}");
        let (_, job) = app.get(&format!("/api/v1/jobs/{}", j[2])).await;
        assert_eq!(job["output_pruned_at"], logs["output_pruned_at"], "{job}");
        let range = app
            .client
            .get(app.url(&format!("/api/v1/jobs/{}/output", j[2])))
            .send()
            .await
            .unwrap();
        assert_eq!(range.status(), 200);
        assert!(range.headers().contains_key("x-output-pruned-at"));
        let (_, logs) = app.get(&format!("/api/v1/jobs/{}/logs", j[6])).await;
        assert!(logs["output_pruned_at"].is_null(), "{logs}");
        assert_eq!(logs["stdout"], "seven\n", "{logs}");
        let (status, _) = app.get(&format!("/api/v1/jobs/{}", j[0])).await;
        assert_eq!(status, 404);
        let (status, _) = app.get(&format!("/api/v1/runs/{run_id}")).await;
        assert_eq!(status, 404);
        let (status, runs) = app.get("/api/v1/runs").await;
        assert_eq!(status, 200, "{runs}");
        let (status, schedule) = app.get("/api/v1/schedules/nightly").await;
        assert_eq!(status, 200, "{schedule}");
        assert_eq!(
            schedule["last_fires"][0]["run_id"],
            run_id.as_str(),
            "{schedule}"
        );
        app.stop().await;
    }
);

db_test!(
    the_lease_keeps_a_second_pass_out_and_no_policy_is_refused,
    |db: TestDb| async move {
        // The database made (and migrated) by a dry run.
        let (ok, out) = prune(&db, &[("audit", "1d")], true);
        assert!(ok, "{out}");
        let mut sql = Sql::open(&db);
        let now = chrono::Utc::now().timestamp_micros();
        sql.exec(&format!(
            "INSERT INTO audit_log (id, at, actor, action, target_kind, detail) \
             VALUES ('a1', {}, 'test', 'job.submit', 'job', '{{}}')",
            now - 2 * DAY
        ));
        // Another process holds the lease: this pass does nothing.
        sql.exec(&format!(
            "UPDATE retention_lease SET holder = 'elsewhere', held_until = {}",
            now + 60_000_000
        ));
        let (ok, out) = prune(&db, &[("audit", "1d")], false);
        assert!(ok, "{out}");
        assert!(out.contains("another process is pruning"), "{out}");
        assert!(sql.exists("audit_log", "a1"));
        // Once it has expired, the pass takes it over, and gives it back after.
        sql.exec(&format!(
            "UPDATE retention_lease SET held_until = {}",
            now - 1
        ));
        let (ok, out) = prune(&db, &[("audit", "1d")], false);
        assert!(ok, "{out}");
        assert_eq!(counts(&out)["audit_log"], 1, "{out}");
        assert!(!sql.exists("audit_log", "a1"));
        assert_eq!(sql.n("SELECT held_until AS n FROM retention_lease"), 0);
        // No policy, or a bad one: refused, naming the setting, never quoting the value.
        let (ok, out) = prune(&db, &[], false);
        assert!(!ok && out.contains("no retention policy is set"), "{out}");
        let (ok, out) = prune(&db, &[("jobs", "hunter2")], true);
        assert!(
            !ok && out.contains("retention.jobs") && !out.contains("hunter2"),
            "{out}"
        );
    }
);

/// The bytes of an SQLite database and its write-ahead log.
fn file_bytes(path: &str) -> u64 {
    let size = |p: String| std::fs::metadata(p).map_or(0, |m| m.len());
    size(path.to_string()) + size(format!("{path}-wal"))
}

#[test]
fn an_sqlite_database_is_smaller_after_a_prune() {
    let db = TestDb::create(Db::Sqlite).unwrap();
    let (ok, out) = prune(&db, &[("output", "1d")], true);
    assert!(ok, "{out}");
    let mut sql = Sql::open(&db);
    assert_eq!(
        sql.n("SELECT auto_vacuum AS n FROM pragma_auto_vacuum()"),
        2,
        "a new database is incremental from the start"
    );
    // 20000 chunks of 1 KiB of a job that finished 2 days ago.
    let now = chrono::Utc::now().timestamp_micros();
    let job = uuid::Uuid::now_v7().to_string();
    sql.exec(&format!(
        "INSERT INTO jobs (id, kind, command, server_id, timeout_secs, env, status, created_at, \
         started_at, finished_at, output_bytes) VALUES ('{job}', 'command', 'true', 's', 30, \
         '{{}}', 'completed', {0}, {0}, {0}, 20480000)",
        now - 2 * DAY
    ));
    sql.exec(&format!(
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 19999) \
         INSERT INTO job_output (job_id, seq, stream, data, at, byte_offset) \
         SELECT '{job}', i, 0, randomblob(1024), {now}, i * 1024 FROM n"
    ));
    sql.exec("PRAGMA wal_checkpoint(TRUNCATE)");
    let full = file_bytes(&db.url);
    assert!(full > 20_000_000, "{full}");
    let (ok, out) = prune(&db, &[("output", "1d"), ("batch", "3000")], false);
    assert!(ok, "{out}");
    assert_eq!(counts(&out)["job_output"], 20_000, "{out}");
    let after = file_bytes(&db.url);
    assert!(
        after < full / 4,
        "the file did not shrink: {full} bytes before, {after} after"
    );
    assert!(sql.pruned(&job));
}

db_test!(
    the_background_prune_of_a_service_runs_and_is_counted,
    |db: TestDb| async move {
        let before = metric(None).await;
        let (app, _host, server) = TestApp::with_host(
            &db,
            &[
                ("JOBEXEC__RETENTION__OUTPUT", "1s"),
                ("JOBEXEC__RETENTION__EVERY", "1s"),
            ],
        )
        .await;
        let id = run_job(&app, &server, "echo soon-gone").await;
        let start = Instant::now();
        let logs = loop {
            let (_, logs) = app.get(&format!("/api/v1/jobs/{id}/logs")).await;
            if logs["output_pruned_at"].is_string() {
                break logs;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the output was not pruned: {logs}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(logs["stdout"], "", "{logs}");
        let after = metric(Some(&app)).await;
        assert!(
            after > before,
            "jobexec_pruned_rows_total: {before} then {after}"
        );
        app.stop().await;
    }
);

/// `jobexec_pruned_rows_total{table="job_output"}` of this process (0 before an app).
async fn metric(app: Option<&TestApp>) -> f64 {
    match app {
        None => job_executor::metrics::PRUNED_ROWS.get(["job_output"]) as f64,
        Some(app) => {
            app.metric("jobexec_pruned_rows_total{table=\"job_output\"}")
                .await
        }
    }
}
