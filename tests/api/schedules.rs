//! Schedules over real HTTP and a real sshd: the preview across both daylight-saving changes
//! in Europe/Berlin, refusals when saved, fires every 2 s each exactly once — in one process
//! and in two `serve` processes sharing one PostgreSQL database (counted from the jobs' own
//! records) —, `overlap: skip` with a job longer than the period, catch-up after a stop,
//! pause and resume, and a template in use.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::db_test;
use crate::helpers::procs::{Service, free_port};
use crate::helpers::{Db, TEST_SECRET_KEY, TestApp, TestDb, TestHost, shared_dir};

/// A server on `host` and a template `t` whose command appends its fire time (and `extra`)
/// to `ledger`.
async fn setup(app: &TestApp, host: &TestHost, ledger: &std::path::Path, extra: &str) {
    let (status, body) = app
        .post(
            "/api/v1/servers",
            &json!({"name": "s", "hostname": host.host, "port": host.port, "user": host.user,
                    "auth_type": "key", "private_key": host.keys.ed25519_openssh}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = app
        .post(
            "/api/v1/templates",
            &json!({"name": "t", "targets": {"servers": ["s"]},
                    "script": format!("{extra}echo \"$JOBEXEC_FIRE_AT\" >> '{}'", ledger.display()),
                    "parameters": [{"name": "who", "type": "string", "default": "x"}]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

/// The fire times the jobs wrote, and how often each.
fn ledger_counts(ledger: &std::path::Path) -> BTreeMap<String, usize> {
    let text = std::fs::read_to_string(ledger).unwrap_or_default();
    let mut counts = BTreeMap::new();
    for line in text.lines() {
        *counts.entry(line.to_string()).or_insert(0) += 1;
    }
    counts
}

fn micros(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .timestamp_micros()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_preview_fires_once_across_both_daylight_saving_changes() {
    let db = TestDb::create(Db::Sqlite).unwrap();
    let app = TestApp::start(&db, &[]).await;
    let preview = |from: &str| {
        format!(
            "/api/v1/schedules/preview?cron=30+2+*+*+*&timezone=Europe/Berlin&from={from}&count=2"
        )
    };
    // Spring forward: 02:30 does not exist on 2027-03-28; it fires at 03:00+02:00.
    let (status, body) = app.get(&preview("2027-03-27T12:00:00Z")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["fires"][0]["at"], "2027-03-28T01:00:00.000000Z",
        "{body}"
    );
    assert_eq!(
        body["fires"][0]["local"], "2027-03-28T03:00:00+02:00",
        "{body}"
    );
    assert_eq!(
        body["fires"][1]["at"], "2027-03-29T00:30:00.000000Z",
        "{body}"
    );
    // Fall back: 02:30 happens twice on 2027-10-31; it fires the first time only.
    let (_, body) = app.get(&preview("2027-10-30T12:00:00Z")).await;
    assert_eq!(
        body["fires"][0]["at"], "2027-10-31T00:30:00.000000Z",
        "{body}"
    );
    assert_eq!(
        body["fires"][0]["local"], "2027-10-31T02:30:00+02:00",
        "{body}"
    );
    assert_eq!(
        body["fires"][1]["at"], "2027-11-01T01:30:00.000000Z",
        "{body}"
    );
    // Refusals name the field.
    for (query, field) in [
        ("cron=61+*+*+*+*", "cron"),
        ("cron=*+*+*", "cron"),
        ("cron=*+*+*+*+*&timezone=Mars/Olympus", "timezone"),
        ("cron=*+*+*+*+*&from=yesterday", "from"),
        ("cron=*+*+*+*+*&count=0", "count"),
    ] {
        let (status, body) = app.get(&format!("/api/v1/schedules/preview?{query}")).await;
        assert_eq!(
            (status, body["field"].as_str()),
            (422, Some(field)),
            "{query}: {body}"
        );
    }
}

db_test!(
    a_schedule_is_checked_when_saved_and_holds_its_template,
    |db: TestDb| async move {
        let app = TestApp::start(&db, &[]).await;
        let host = TestHost::start().await;
        let dir = shared_dir();
        setup(&app, &host, &dir.path().join("ledger"), "").await;
        let (status, body) = app
            .post(
                "/api/v1/templates",
                &json!({"name": "typed", "targets": {"servers": ["s"]}, "command": "true",
                        "parameters": [{"name": "n", "type": "integer", "required": true}]}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let base = json!({"name": "x", "template": "t", "cron": "0 3 * * *"});
        let with = |k: &str, v: Value| {
            let mut b = base.clone();
            b[k] = v;
            b
        };
        for (body, field) in [
            (with("cron", json!("0 25 * * *")), "cron"),
            (with("cron", json!("0 3 * *")), "cron"),
            (with("timezone", json!("Europe/Nowhere")), "timezone"),
            (with("template", json!("missing")), "template"),
            (with("overlap", json!("sometimes")), "overlap"),
            (with("catch_up", json!("an hour")), "catch_up"),
            (with("parameters", json!({"nope": 1})), "parameters.nope"),
            (
                json!({"name": "y", "template": "typed", "cron": "0 3 * * *"}),
                "parameters.n",
            ),
            (
                json!({"name": "y", "template": "typed", "cron": "0 3 * * *", "parameters": {"n": "one"}}),
                "parameters.n",
            ),
        ] {
            let (status, err) = app.post("/api/v1/schedules", &body).await;
            assert_eq!(
                (status, err["field"].as_str()),
                (422, Some(field)),
                "{body}: {err}"
            );
        }
        let (_, list) = app.get("/api/v1/schedules").await;
        assert_eq!(list["schedules"], json!([]));
        let (status, s) = app
            .post(
                "/api/v1/schedules",
                &json!({"name": "nightly", "template": "t", "cron": "30 2 * * *",
                        "timezone": "Europe/Berlin", "catch_up": "1h"}),
            )
            .await;
        assert_eq!(status, 201, "{s}");
        assert_eq!(s["overlap"], "skip");
        assert_eq!(s["catch_up_secs"], 3600);
        assert!(
            s["next_fire_local"]
                .as_str()
                .unwrap()
                .contains("T02:30:00+0"),
            "{s}"
        );
        let (status, err) = app.delete("/api/v1/templates/t").await;
        assert_eq!(status, 409, "{err}");
        let (status, _) = app.delete("/api/v1/schedules/nightly").await;
        assert_eq!(status, 200);
        let (status, _) = app.delete("/api/v1/templates/t").await;
        assert_eq!(status, 200);
    }
);

db_test!(
    every_two_seconds_each_fire_once_and_pause_stops_it,
    |db: TestDb| async move {
        let app = TestApp::start(&db, &[]).await;
        let host = TestHost::start().await;
        let dir = shared_dir();
        let ledger = dir.path().join("ledger");
        setup(&app, &host, &ledger, "").await;
        let (status, s) = app
            .post(
                "/api/v1/schedules",
                &json!({"name": "fast", "template": "t", "cron": "*/2 * * * * *"}),
            )
            .await;
        assert_eq!(status, 201, "{s}");
        tokio::time::sleep(Duration::from_secs(7)).await;
        let (_, s) = app.post("/api/v1/schedules/fast/pause", &json!({})).await;
        assert_eq!(s["paused"], true);
        assert!(s["next_fire_at"].is_null());
        tokio::time::sleep(Duration::from_secs(2)).await;
        let counts = ledger_counts(&ledger);
        assert!((3..=4).contains(&counts.len()), "{counts:?}");
        assert!(
            counts.values().all(|n| *n == 1),
            "a fire ran twice: {counts:?}"
        );
        let times: Vec<i64> = counts.keys().map(|t| micros(t)).collect();
        assert!(
            times.windows(2).all(|w| w[1] - w[0] == 2_000_000),
            "{times:?}"
        );
        // Paused: nothing more.
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(ledger_counts(&ledger).len(), counts.len());
        // Resumed: it fires again, and the paused time is not made up.
        let resumed_at = chrono::Utc::now().timestamp_micros();
        let (_, s) = app.post("/api/v1/schedules/fast/resume", &json!({})).await;
        assert_eq!(s["paused"], false);
        tokio::time::sleep(Duration::from_secs(4)).await;
        let after = ledger_counts(&ledger);
        let new: Vec<i64> = (after.keys().map(|t| micros(t)))
            .filter(|t| !times.contains(t))
            .collect();
        assert!(!new.is_empty(), "{after:?}");
        assert!(
            new.iter().all(|t| *t >= resumed_at - 1_000_000),
            "made up: {new:?}"
        );
        let (_, s) = app.get("/api/v1/schedules/fast").await;
        let launched = (s["last_fires"].as_array().unwrap().iter())
            .filter(|f| f["status"] == "launched")
            .count();
        assert!(launched >= 1, "{s}");
    }
);

db_test!(
    overlap_skip_never_overlaps_a_long_job,
    |db: TestDb| async move {
        let app = TestApp::start(&db, &[]).await;
        let host = TestHost::start().await;
        let dir = shared_dir();
        let ledger = dir.path().join("ledger");
        setup(&app, &host, &ledger, "sleep 2.5; ").await;
        let (status, s) = app
            .post(
                "/api/v1/schedules",
                &json!({"name": "slow", "template": "t", "cron": "* * * * * *", "overlap": "skip"}),
            )
            .await;
        assert_eq!(status, 201, "{s}");
        tokio::time::sleep(Duration::from_secs(7)).await;
        app.post("/api/v1/schedules/slow/pause", &json!({})).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (_, runs) = app.get("/api/v1/runs?limit=100").await;
        let mut spans: Vec<(i64, i64)> = (runs["runs"].as_array().unwrap().iter())
            .map(|r| {
                let h = &r["hosts"][0];
                (
                    micros(h["started_at"].as_str().unwrap()),
                    micros(h["finished_at"].as_str().unwrap()),
                )
            })
            .collect();
        spans.sort();
        assert!(spans.len() >= 2, "{runs}");
        assert!(
            spans.windows(2).all(|w| w[0].1 <= w[1].0),
            "runs overlapped: {spans:?}"
        );
        let (_, s) = app.get("/api/v1/schedules/slow").await;
        let skipped = (s["last_fires"].as_array().unwrap().iter())
            .filter(|f| f["status"] == "skipped")
            .count();
        assert!(skipped >= 2, "{s}");
    }
);

db_test!(
    after_a_stop_only_the_fires_inside_catch_up_are_made_up,
    |db: TestDb| async move {
        let dir = shared_dir();
        let ledger = dir.path().join("ledger");
        let host = TestHost::start().await;
        let app = TestApp::start(&db, &[]).await;
        setup(&app, &host, &ledger, "").await;
        let (status, s) = app
            .post(
                "/api/v1/schedules",
                &json!({"name": "c", "template": "t", "cron": "*/2 * * * * *", "catch_up": "6s",
                        "overlap": "allow"}),
            )
            .await;
        assert_eq!(status, 201, "{s}");
        tokio::time::sleep(Duration::from_secs(3)).await;
        app.stop().await;
        let stopped = chrono::Utc::now().timestamp_micros();
        let before: Vec<i64> = ledger_counts(&ledger).keys().map(|t| micros(t)).collect();
        tokio::time::sleep(Duration::from_secs(13)).await;
        let restarted = chrono::Utc::now().timestamp_micros();
        let app = TestApp::start(&db, &[]).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let counts = ledger_counts(&ledger);
        assert!(counts.values().all(|n| *n == 1), "{counts:?}");
        let made_up: Vec<i64> = (counts.keys().map(|t| micros(t)))
            .filter(|t| *t > stopped && *t <= restarted)
            .collect();
        // Every 2 s for 13 s of downtime: 6 or 7 fires fell; those older than 6 s before the
        // restart are let go, the 3 inside it made up (the window's edges give 2 to 4;
        // `allow`, so that a made-up fire is not skipped for the one before it).
        assert!(
            (2..=4).contains(&made_up.len()),
            "{made_up:?} (before {before:?})"
        );
        assert!(
            made_up.iter().all(|t| *t >= restarted - 7_000_000),
            "a fire outside catch_up was made up: {made_up:?}"
        );
        drop(app);
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_serve_processes_on_one_database_fire_each_time_once() {
    let Some(db) = TestDb::create(Db::Postgres) else {
        return;
    };
    let host = TestHost::start().await;
    let dir = shared_dir();
    let ledger = dir.path().join("ledger");
    let env = [
        ("JOBEXEC__DATABASE__URL", db.url.as_str()),
        ("JOBEXEC__SECRETS__KEY", TEST_SECRET_KEY),
    ];
    let start = |name: &'static str| {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut env: Vec<(&str, String)> = env.iter().map(|(k, v)| (*k, v.to_string())).collect();
        env.push(("JOBEXEC__HTTP__ADDR", addr));
        env.push(("JOBEXEC__WORKER__ID", name.to_string()));
        async move {
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            Service::start(&["serve"], &env, port, None).await
        }
    };
    let a = start("serve-a").await;
    let b = start("serve-b").await;
    let call = |svc: &Service, path: &str, body: Value| {
        let req = svc.client.post(format!("{}{path}", svc.base)).json(&body);
        async move {
            let resp = req.send().await.unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };
    let (status, body) = call(
        &a,
        "/api/v1/servers",
        json!({"name": "s", "hostname": host.host, "port": host.port, "user": host.user,
               "auth_type": "key", "private_key": host.keys.ed25519_openssh,
               "max_concurrent_jobs": 20}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = call(
        &b,
        "/api/v1/templates",
        json!({"name": "t", "targets": {"servers": ["s"]},
               "script": format!("echo \"$JOBEXEC_FIRE_AT\" >> '{}'", ledger.display())}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = call(
        &a,
        "/api/v1/schedules",
        json!({"name": "both", "template": "t", "cron": "*/2 * * * * *", "overlap": "allow"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let began = Instant::now();
    tokio::time::sleep(Duration::from_secs(20)).await;
    let (status, _) = call(&b, "/api/v1/schedules/both/pause", json!({})).await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let counts = ledger_counts(&ledger);
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "fired more than once: {twice:?}");
    let times: Vec<i64> = counts.keys().map(|t| micros(t)).collect();
    assert!(
        times.windows(2).all(|w| w[1] - w[0] == 2_000_000),
        "a fire time is missing: {times:?}"
    );
    let expected = began.elapsed().as_secs() / 2;
    assert!(
        (times.len() as u64) + 3 >= expected.min(10),
        "{} fires in {:?}: {times:?}",
        times.len(),
        began.elapsed()
    );
}

db_test!(
    queue_one_waits_for_the_previous_run_and_cancel_previous_stops_it,
    |db: TestDb| async move {
        let app = TestApp::start(&db, &[("JOBEXEC__JOBS__KILL_GRACE_SECS", "1")]).await;
        let host = TestHost::start().await;
        let dir = shared_dir();
        setup(&app, &host, &dir.path().join("ledger"), "sleep 2.5; ").await;
        let (status, s) = app
            .post(
                "/api/v1/schedules",
                &json!({"name": "q", "template": "t", "cron": "* * * * * *", "overlap": "queue_one"}),
            )
            .await;
        assert_eq!(status, 201, "{s}");
        tokio::time::sleep(Duration::from_secs(6)).await;
        app.post("/api/v1/schedules/q/pause", &json!({})).await;
        let (_, s) = app.get("/api/v1/schedules/q").await;
        let fires = s["last_fires"].as_array().unwrap();
        // A fire that waited was launched later; the ones past it were skipped.
        assert!(fires.iter().any(|f| f["status"] == "skipped"), "{s}");
        let (_, runs) = app.get("/api/v1/runs?limit=100").await;
        let runs = runs["runs"].as_array().unwrap().clone();
        assert!(runs.len() >= 2, "{runs:?}");
        let mut spans: Vec<(i64, i64)> = Vec::new();
        for r in &runs {
            let r = crate::runs::wait_run(&app, r["id"].as_str().unwrap()).await;
            let h = &r["hosts"][0];
            spans.push((
                micros(h["started_at"].as_str().unwrap()),
                micros(h["finished_at"].as_str().unwrap()),
            ));
        }
        spans.sort();
        assert!(
            spans.windows(2).all(|w| w[0].1 <= w[1].0),
            "runs overlapped: {spans:?}"
        );
        // And one waited: its run started well after its fire time.
        let mut waited = false;
        for f in fires.iter().filter(|f| f["status"] == "launched") {
            let run = crate::runs::wait_run(&app, f["run_id"].as_str().unwrap()).await;
            let started = micros(run["hosts"][0]["started_at"].as_str().unwrap());
            waited |= started - micros(f["fire_at"].as_str().unwrap()) > 1_000_000;
        }
        assert!(waited, "no queued fire started later: {s}");

        let (status, s) = app
            .post(
                "/api/v1/schedules",
                &json!({"name": "c", "template": "t", "cron": "*/2 * * * * *",
                        "overlap": "cancel_previous"}),
            )
            .await;
        assert_eq!(status, 201, "{s}");
        tokio::time::sleep(Duration::from_secs(5)).await;
        app.post("/api/v1/schedules/c/pause", &json!({})).await;
        let (_, s) = app.get("/api/v1/schedules/c").await;
        let launched: Vec<&str> = (s["last_fires"].as_array().unwrap().iter())
            .filter(|f| f["status"] == "launched")
            .map(|f| f["run_id"].as_str().unwrap())
            .collect();
        assert!(launched.len() >= 2, "{s}");
        // Newest first: every run but the newest was canceled by the fire after it.
        for id in &launched[1..] {
            let run = crate::runs::wait_run(&app, id).await;
            assert_eq!(run["status"], "canceled", "{run}");
        }
    }
);

/// Run `sql` on the test database directly: how a test leaves behind what a process killed
/// mid-step would have (a fault no request can make at a chosen instant).
fn execute(db: &TestDb, sql: &str) {
    use diesel::{Connection, RunQueryDsl};
    match db.kind() {
        Db::Sqlite => {
            let mut c = diesel::SqliteConnection::establish(&db.url).unwrap();
            // The service writes meanwhile: wait for its lock as the service's own
            // connections do, instead of failing at once.
            diesel::sql_query("PRAGMA busy_timeout = 10000")
                .execute(&mut c)
                .unwrap();
            diesel::sql_query(sql).execute(&mut c).unwrap();
        }
        Db::Postgres => {
            let mut c = diesel::PgConnection::establish(&db.url).unwrap();
            diesel::sql_query(sql).execute(&mut c).unwrap();
        }
    }
}

db_test!(
    a_fire_whose_process_died_after_claiming_it_is_taken_over_once,
    |db: TestDb| async move {
        let app = TestApp::start(&db, &[]).await;
        let host = TestHost::start().await;
        let dir = shared_dir();
        let ledger = dir.path().join("ledger");
        setup(&app, &host, &ledger, "").await;
        // Once a year: nothing fires by itself while the test runs.
        let (status, s) = app
            .post(
                "/api/v1/schedules",
                &json!({"name": "yearly", "template": "t", "cron": "0 0 0 1 1 *",
                        "catch_up": "1h", "overlap": "allow"}),
            )
            .await;
        assert_eq!(status, 201, "{s}");
        let id = s["id"].as_str().unwrap();
        // A run a dead process made but never recorded in its fire.
        let (status, made) = app.post("/api/v1/templates/t/launch", &json!({})).await;
        assert_eq!(status, 201, "{made}");
        let made = made["id"].as_str().unwrap();
        // What three processes killed between claiming and settling a fire left: one fire
        // inside catch_up with no run, one that had named and made its run, one outside
        // catch_up. Claimed 60 s ago, so they are stale.
        let now = chrono::Utc::now().timestamp_micros() / 1_000_000 * 1_000_000;
        let (inside, named, outside) = (now - 40_000_000, now - 41_000_000, now - 7_200_000_000);
        let claimed = now - 60_000_000;
        for (at, run) in [
            (inside, "NULL".to_string()),
            (named, format!("'{made}'")),
            (outside, "NULL".into()),
        ] {
            execute(
                &db,
                &format!(
                    "INSERT INTO schedule_fires (schedule_id, fire_at, status, run_id, detail, \
                     claimed_by, claimed_at) VALUES ('{id}', {at}, 'claimed', {run}, NULL, \
                     'killed-worker', {claimed})"
                ),
            );
        }
        let status_of = |s: &Value, at: i64| {
            (s["last_fires"].as_array().unwrap().iter())
                .find(|f| micros(f["fire_at"].as_str().unwrap()) == at)
                .cloned()
                .unwrap_or(Value::Null)
        };
        let start = Instant::now();
        let s = loop {
            let (_, s) = app.get("/api/v1/schedules/yearly").await;
            if [inside, named, outside]
                .iter()
                .all(|at| status_of(&s, *at)["status"] != "claimed")
            {
                break s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(25),
                "not taken over: {s}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let fire = status_of(&s, inside);
        assert_eq!(fire["status"], "launched", "{s}");
        let run = fire["run_id"].as_str().unwrap().to_string();
        assert_ne!(run, made);
        assert_eq!(status_of(&s, named)["status"], "launched", "{s}");
        assert_eq!(
            status_of(&s, named)["run_id"],
            made,
            "a second run was made: {s}"
        );
        let late = status_of(&s, outside);
        assert_eq!(late["status"], "failed", "{s}");
        assert!(
            late["detail"].as_str().unwrap().contains("too late"),
            "{late}"
        );
        // The taken-over fire ran once, with its own fire time; nothing runs it again.
        crate::runs::wait_run(&app, &run).await;
        tokio::time::sleep(Duration::from_secs(11)).await;
        let counts = ledger_counts(&ledger);
        let fired: Vec<i64> = (counts.keys().filter(|t| !t.is_empty()))
            .map(|t| micros(t))
            .collect();
        assert_eq!(fired, [inside], "{counts:?}");
        assert!(counts.values().all(|n| *n == 1), "{counts:?}");
        let (_, runs) = app.get("/api/v1/runs?limit=100").await;
        assert_eq!(runs["runs"].as_array().unwrap().len(), 2, "{runs}");
    }
);
