//! Runs over real HTTP and a real sshd: labels and selectors, batches shown from the hosts'
//! own clocks, canaries, failure thresholds with an unreachable host (a closed port),
//! keep_going, cancel, rerun, the grouped summary, the run stream, and bad input that
//! creates nothing. Several named servers stand for one sshd.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::db_test;
use crate::helpers::procs::free_port;
use crate::helpers::{TestApp, TestDb, TestHost};
use crate::stream::Sse;

/// Register `names` as servers on `host`, with `labels`; returns their ids.
async fn add_servers(app: &TestApp, host: &TestHost, names: &[&str], labels: Value) -> Vec<String> {
    let mut ids = Vec::new();
    for name in names {
        let (status, body) = app
            .post(
                "/api/v1/servers",
                &json!({
                    "name": name, "hostname": host.host, "port": host.port, "user": host.user,
                    "auth_type": "key", "private_key": host.keys.ed25519_openssh,
                    "labels": labels,
                }),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        ids.push(body["id"].as_str().unwrap().to_string());
    }
    ids
}

/// A server on a loopback port nothing listens on: unreachable.
async fn add_unreachable(app: &TestApp, host: &TestHost, name: &str, labels: Value) -> String {
    let (status, body) = app
        .post(
            "/api/v1/servers",
            &json!({
                "name": name, "hostname": "127.0.0.1", "port": free_port(), "user": host.user,
                "auth_type": "key", "private_key": host.keys.ed25519_openssh, "labels": labels,
            }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().unwrap().to_string()
}

async fn start_run(app: &TestApp, body: Value) -> Value {
    let (status, run) = app.post("/api/v1/runs", &body).await;
    assert_eq!(status, 201, "{run}");
    run
}

/// Poll a run until it ends.
pub async fn wait_run(app: &TestApp, id: &str) -> Value {
    let start = Instant::now();
    loop {
        let (status, run) = app.get(&format!("/api/v1/runs/{id}")).await;
        assert_eq!(status, 200, "{run}");
        if !matches!(run["status"].as_str(), Some("queued" | "running")) {
            return run;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "run still going: {run}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn stdout(app: &TestApp, job_id: &str) -> String {
    let url = app.url(&format!("/api/v1/jobs/{job_id}/stdout"));
    let resp = app.client.get(url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.text().await.unwrap()
}

/// Each host's (start, end) as its own clock printed them (`date +%s%N` before and after).
async fn host_times(app: &TestApp, run: &Value) -> Vec<(i128, i128)> {
    let mut times = Vec::new();
    for host in run["hosts"].as_array().unwrap() {
        let out = stdout(app, host["job_id"].as_str().unwrap()).await;
        let n: Vec<i128> = out.lines().map(|l| l.trim().parse().unwrap()).collect();
        assert_eq!(n.len(), 2, "{out:?}");
        times.push((n[0], n[1]));
    }
    times
}

/// The most intervals that overlap at one instant.
fn most_at_once(times: &[(i128, i128)]) -> usize {
    times
        .iter()
        .map(|(t, _)| times.iter().filter(|(s, e)| s <= t && t < e).count())
        .max()
        .unwrap_or(0)
}

const CLOCKED: &str = "date +%s%N; sleep 0.4; date +%s%N";

fn statuses(run: &Value) -> Vec<String> {
    (run["hosts"].as_array().unwrap().iter())
        .map(|h| h["status"].as_str().unwrap().to_string())
        .collect()
}

db_test!(
    a_batch_of_2_over_6_hosts_never_runs_more_than_2,
    |db: TestDb| async move {
        let app = TestApp::start(&db, &[]).await;
        let host = TestHost::start().await;
        let names = ["w1", "w2", "w3", "w4", "w5", "w6"];
        add_servers(&app, &host, &names, json!({"role": "web"})).await;
        let run = start_run(
            &app,
            json!({"command": CLOCKED, "targets": {"selector": "role=web"},
                   "strategy": {"batch": 2}}),
        )
        .await;
        assert_eq!(run["hosts"].as_array().unwrap().len(), 6, "{run}");
        assert_eq!(run["strategy"]["batch"], 2);
        let started = run["hosts"].as_array().unwrap().iter();
        assert_eq!(
            started.filter(|h| !h["job_id"].is_null()).count(),
            2,
            "{run}"
        );
        let run = wait_run(&app, run["id"].as_str().unwrap()).await;
        assert_eq!(run["status"], "completed", "{run}");
        assert_eq!(run["counts"]["completed"], 6, "{run}");
        let times = host_times(&app, &run).await;
        assert_eq!(most_at_once(&times), 2, "{times:?}");
        // Every host's job is an ordinary job naming its run.
        let job = run["hosts"][0]["job_id"].as_str().unwrap();
        let (_, job) = app.get(&format!("/api/v1/jobs/{job}")).await;
        assert_eq!(job["run_id"], run["id"]);
    }
);

db_test!(
    a_canary_runs_alone_before_the_rest,
    |db: TestDb| async move {
        let app = TestApp::start(&db, &[]).await;
        let host = TestHost::start().await;
        let ids = add_servers(&app, &host, &["c1", "c2", "c3", "c4"], json!({})).await;
        let run = start_run(
            &app,
            json!({"command": CLOCKED, "targets": {"servers": ["c1", ids[1], "c3", "c4"]},
               "strategy": {"batch": 3, "canary": 1}}),
        )
        .await;
        let run = wait_run(&app, run["id"].as_str().unwrap()).await;
        assert_eq!(run["status"], "completed", "{run}");
        let names: Vec<&str> = (run["hosts"].as_array().unwrap().iter())
            .map(|h| h["server_name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["c1", "c2", "c3", "c4"]);
        let times = host_times(&app, &run).await;
        let canary_end = times[0].1;
        for (start, _) in &times[1..] {
            assert!(
                *start >= canary_end,
                "a host started before the canary ended: {times:?}"
            );
        }
        // After the canary, the other three ran together (the batch).
        assert_eq!(most_at_once(&times[1..]), 3, "{times:?}");
    }
);

db_test!(
    past_max_failures_nothing_starts_and_a_rerun_takes_exactly_the_rest,
    |db: TestDb| async move {
        let app = TestApp::start(&db, &[]).await;
        let host = TestHost::start().await;
        add_servers(&app, &host, &["r0"], json!({"tier": "a"})).await;
        add_unreachable(&app, &host, "r1", json!({"tier": "a"})).await;
        add_servers(&app, &host, &["r2", "r3", "r4"], json!({"tier": "a"})).await;
        let run = start_run(
            &app,
            json!({"command": "echo ok", "targets": {"servers": ["r0", "r1", "r2", "r3", "r4"]},
                   "strategy": {"batch": 1, "max_failures": 0}}),
        )
        .await;
        let id = run["id"].as_str().unwrap().to_string();
        let run = wait_run(&app, &id).await;
        assert_eq!(run["status"], "failed", "{run}");
        assert_eq!(
            statuses(&run),
            ["completed", "failed", "skipped", "skipped", "skipped"],
            "{run}"
        );
        assert_eq!(run["hosts"][1]["failure"], "unreachable", "{run}");
        assert!(run["hosts"][2]["job_id"].is_null(), "{run}");
        assert_eq!(run["counts"]["skipped"], 3);
        // The rerun covers the failed host and the skipped ones, not the one that completed.
        let (status, rerun) = app
            .post(&format!("/api/v1/runs/{id}/rerun"), &json!({}))
            .await;
        assert_eq!(status, 201, "{rerun}");
        assert_eq!(rerun["rerun_of"], json!(id));
        let names: Vec<&str> = (rerun["hosts"].as_array().unwrap().iter())
            .map(|h| h["server_name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["r1", "r2", "r3", "r4"], "{rerun}");
        let rerun = wait_run(&app, rerun["id"].as_str().unwrap()).await;
        // Same strategy: r1 fails first again, the rest are skipped again.
        assert_eq!(
            statuses(&rerun),
            ["failed", "skipped", "skipped", "skipped"]
        );
        let (status, all) = app
            .post(&format!("/api/v1/runs/{id}/rerun"), &json!({"only": "all"}))
            .await;
        assert_eq!(status, 201, "{all}");
        assert_eq!(all["hosts"].as_array().unwrap().len(), 5);
        wait_run(&app, all["id"].as_str().unwrap()).await;
        // A rerun of a run that completed everywhere has nothing to take.
        let done = start_run(
            &app,
            json!({"command": "true", "targets": {"servers": ["r0"]}}),
        )
        .await;
        let done_id = done["id"].as_str().unwrap();
        wait_run(&app, done_id).await;
        let (status, body) = app
            .post(&format!("/api/v1/runs/{done_id}/rerun"), &json!({}))
            .await;
        assert_eq!(
            (status, body["field"].as_str()),
            (422, Some("only")),
            "{body}"
        );
    }
);

db_test!(keep_going_runs_every_host, |db: TestDb| async move {
    let app = TestApp::start(&db, &[]).await;
    let host = TestHost::start().await;
    add_unreachable(&app, &host, "k0", json!({"env": "prod"})).await;
    add_servers(&app, &host, &["k1", "k2", "k3"], json!({"env": "prod"})).await;
    let run = start_run(
        &app,
        json!({"script": "echo fine", "targets": {"selector": "env=prod"},
               "strategy": {"batch": 1, "keep_going": true}}),
    )
    .await;
    let run = wait_run(&app, run["id"].as_str().unwrap()).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(
        statuses(&run),
        ["failed", "completed", "completed", "completed"]
    );
    assert_eq!(run["hosts"][0]["failure"], "unreachable");
    assert_eq!(run["counts"]["failed"], 1);
    assert_eq!(run["counts"]["completed"], 3);
});

db_test!(
    a_failing_command_is_a_failure_not_an_unreachable_host,
    |db: TestDb| async move {
        let app = TestApp::start(&db, &[]).await;
        let host = TestHost::start().await;
        add_servers(&app, &host, &["f1", "f2"], json!({})).await;
        let run = start_run(
            &app,
            json!({"command": "exit 3", "targets": {"servers": ["f1", "f2"]},
                   "strategy": {"max_failures": "50%"}}),
        )
        .await;
        let run = wait_run(&app, run["id"].as_str().unwrap()).await;
        assert_eq!(statuses(&run), ["failed", "failed"], "{run}");
        assert_eq!(run["hosts"][0]["failure"], "failed");
        assert_eq!(run["hosts"][0]["exit_code"], 3);
        assert_eq!(run["strategy"]["max_failures"], "50%");
    }
);

db_test!(
    cancel_stops_the_running_hosts_and_skips_the_rest,
    |db: TestDb| async move {
        let app = TestApp::start(&db, &[("JOBEXEC__JOBS__KILL_GRACE_SECS", "1")]).await;
        let host = TestHost::start().await;
        add_servers(&app, &host, &["x1", "x2", "x3"], json!({"role": "x"})).await;
        let run = start_run(
            &app,
            json!({"command": "echo up; sleep 30", "targets": {"selector": "role=x"},
                   "strategy": {"batch": 1}}),
        )
        .await;
        let id = run["id"].as_str().unwrap();
        let job = run["hosts"][0]["job_id"].as_str().unwrap();
        crate::jobs::wait_running(&app, job).await;
        let (status, canceled) = app
            .post(&format!("/api/v1/runs/{id}/cancel"), &json!({}))
            .await;
        assert_eq!(status, 200, "{canceled}");
        assert_eq!(canceled["cancel_requested"], true);
        let run = wait_run(&app, id).await;
        assert_eq!(run["status"], "canceled", "{run}");
        assert_eq!(statuses(&run), ["canceled", "skipped", "skipped"]);
        let (status, again) = app
            .post(&format!("/api/v1/runs/{id}/cancel"), &json!({}))
            .await;
        assert_eq!(status, 409, "{again}");
        // A rerun takes the canceled host and the skipped ones.
        let (status, rerun) = app
            .post(&format!("/api/v1/runs/{id}/rerun"), &json!({}))
            .await;
        assert_eq!(status, 201, "{rerun}");
        assert_eq!(rerun["hosts"].as_array().unwrap().len(), 3);
        let rid = rerun["id"].as_str().unwrap();
        app.post(&format!("/api/v1/runs/{rid}/cancel"), &json!({}))
            .await;
        wait_run(&app, rid).await;
    }
);

db_test!(
    the_summary_groups_five_identical_hosts_and_one_different,
    |db: TestDb| async move {
        let app = TestApp::start(&db, &[]).await;
        let host = TestHost::start().await;
        let names = ["s1", "s2", "s3", "s4", "s5", "s6"];
        add_servers(&app, &host, &names, json!({"role": "s"})).await;
        // mkdir is atomic: exactly one host makes the directory and says so.
        let dir = format!("/tmp/jobexec-summary-{}", uuid::Uuid::new_v4().simple());
        let run = start_run(
            &app,
            json!({"command": format!("mkdir {dir} 2>/dev/null && echo first || echo later"),
                   "targets": {"selector": "role=s"}, "strategy": {"keep_going": true}}),
        )
        .await;
        let id = run["id"].as_str().unwrap();
        wait_run(&app, id).await;
        let _ = std::fs::remove_dir(&dir);
        let (status, groups) = app.get(&format!("/api/v1/runs/{id}/summary")).await;
        assert_eq!(status, 200, "{groups}");
        let groups = groups.as_array().unwrap();
        assert_eq!(groups.len(), 2, "{groups:?}");
        let mut sizes: Vec<usize> = (groups.iter())
            .map(|g| g["servers"].as_array().unwrap().len())
            .collect();
        sizes.sort();
        assert_eq!(sizes, [1, 5], "{groups:?}");
        let five = groups
            .iter()
            .find(|g| g["servers"].as_array().unwrap().len() == 5)
            .unwrap();
        assert_eq!(five["sample"], "later\n");
        assert_eq!(five["exit_code"], 0);
        assert_eq!(five["status"], "completed");
        assert_eq!(five["output_bytes"], 6);
        assert_eq!(five["output_sha256"].as_str().unwrap().len(), 64);
        let one = groups
            .iter()
            .find(|g| g["servers"].as_array().unwrap().len() == 1)
            .unwrap();
        assert_eq!(one["sample"], "first\n");
    }
);

db_test!(
    the_stream_names_each_host_and_resumes_from_its_cursor,
    |db: TestDb| async move {
        let app = TestApp::start(&db, &[]).await;
        let host = TestHost::start().await;
        add_servers(&app, &host, &["e1", "e2", "e3"], json!({"role": "e"})).await;
        let run = start_run(
            &app,
            json!({"script": "echo one; sleep 0.3; echo two >&2; sleep 0.3; echo three",
                   "targets": {"selector": "role=e"}, "strategy": {"batch": 2}}),
        )
        .await;
        let url = app.url(&format!(
            "/api/v1/runs/{}/stream",
            run["id"].as_str().unwrap()
        ));
        let events = Sse::open_url(&app.client, &url, None).await.collect().await;
        assert_eq!(events.first().map(|e| e.kind.as_str()), Some("run"));
        let last = events.last().unwrap();
        assert_eq!(last.kind, "complete");
        assert_eq!(last.data["status"], "completed", "{:?}", last.data);
        for name in ["e1", "e2", "e3"] {
            let mine = |kind: &str| {
                (events.iter())
                    .filter(|e| e.kind == kind && e.data["server_name"] == name)
                    .collect::<Vec<_>>()
            };
            let text: String = (mine("output").iter())
                .map(|e| e.data["output"].as_str().unwrap())
                .collect();
            assert_eq!(text, "one\ntwo\nthree\n", "{name}: {events:?}");
            let err: Vec<_> = mine("output")
                .into_iter()
                .filter(|e| e.data["is_stderr"] == true)
                .collect();
            assert_eq!(err.len(), 1, "{name}");
            assert_eq!(mine("host_complete").len(), 1, "{name}");
        }
        // Resume after the first output event: every host's output after its own number,
        // nothing twice, nothing missed.
        let first = events.iter().find(|e| e.kind == "output").unwrap();
        let resumed = (Sse::open_url(&app.client, &url, Some(first.cursor.clone())).await)
            .collect()
            .await;
        for name in ["e1", "e2", "e3"] {
            let text: String = (resumed.iter())
                .filter(|e| e.kind == "output" && e.data["server_name"] == name)
                .map(|e| e.data["output"].as_str().unwrap())
                .collect();
            let want = if first.data["server_name"] == name {
                "one\ntwo\nthree\n"
                    .strip_prefix(first.data["output"].as_str().unwrap())
                    .unwrap()
            } else {
                "one\ntwo\nthree\n"
            };
            assert_eq!(text, want, "{name}: {resumed:?}");
        }
        assert_eq!(resumed.last().unwrap().kind, "complete");
        // A cursor that does not fit the run is refused.
        let resp = (app.client.get(&url))
            .header("Last-Event-ID", "1.2")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400);
    }
);

db_test!(
    bad_input_names_the_field_and_creates_nothing,
    |db: TestDb| async move {
        let app = TestApp::start(&db, &[]).await;
        let host = TestHost::start().await;
        add_servers(&app, &host, &["b1", "b2"], json!({"role": "b"})).await;
        let cases = [
            (
                json!({"command": "true", "targets": {"selector": "role=nothing"}}),
                "targets.selector",
            ),
            (
                json!({"command": "true", "targets": {"selector": "Bad Key"}}),
                "targets.selector",
            ),
            (
                json!({"command": "true", "targets": {"servers": ["b1", "nope"]}}),
                "targets.servers",
            ),
            (
                json!({"command": "true", "targets": {"servers": ["b1", "b1"]}}),
                "targets.servers",
            ),
            (
                json!({"command": "true", "targets": {"servers": []}}),
                "targets.servers",
            ),
            (json!({"command": "true"}), "targets"),
            (
                json!({"command": "true", "targets": {"selector": "role=b", "servers": ["b1"]}}),
                "targets",
            ),
            (
                json!({"command": "true", "targets": {"selector": "role=b"}, "strategy": {"batch": 0}}),
                "strategy.batch",
            ),
            (
                json!({"command": "true", "targets": {"selector": "role=b"}, "strategy": {"batch": "150%"}}),
                "strategy.batch",
            ),
            (
                json!({"command": "true", "targets": {"selector": "role=b"}, "strategy": {"max_failures": "101%"}}),
                "strategy.max_failures",
            ),
            (
                json!({"command": "true", "targets": {"selector": "role=b"}, "strategy": {"canary": 3}}),
                "strategy.canary",
            ),
            (json!({"targets": {"selector": "role=b"}}), "command"),
            (
                json!({"command": "true", "server_id": "x", "targets": {"selector": "role=b"}}),
                "server_id",
            ),
        ];
        for (body, field) in cases {
            let (status, err) = app.post("/api/v1/runs", &body).await;
            assert_eq!(status, 422, "{body} -> {err}");
            assert_eq!(err["field"], field, "{body} -> {err}");
            assert_eq!(err["code"], "invalid_field");
        }
        let (_, runs) = app.get("/api/v1/runs").await;
        assert_eq!(runs["runs"], json!([]), "{runs}");
        let (_, jobs) = app.get("/api/v1/jobs").await;
        assert_eq!(jobs["jobs"], json!([]), "{jobs}");
        let (status, _) = app
            .get(&format!("/api/v1/runs/{}", uuid::Uuid::now_v7()))
            .await;
        assert_eq!(status, 404);
        let (status, _) = app.get("/api/v1/runs?status=done").await;
        assert_eq!(status, 422);
    }
);

db_test!(labels_select_servers, |db: TestDb| async move {
    let app = TestApp::start(&db, &[]).await;
    let host = TestHost::start().await;
    let web = add_servers(
        &app,
        &host,
        &["l-web"],
        json!({"role": "web", "env": "prod"}),
    )
    .await;
    add_servers(&app, &host, &["l-db"], json!({"role": "db", "env": "prod"})).await;
    add_servers(&app, &host, &["l-bare"], json!({})).await;
    let names = |body: &Value| -> Vec<String> {
        (body["servers"].as_array().unwrap().iter())
            .map(|s| s["name"].as_str().unwrap().to_string())
            .collect()
    };
    for (selector, want) in [
        ("role=web,env=prod", vec!["l-web"]),
        ("env=prod", vec!["l-db", "l-web"]),
        ("role!=web", vec!["l-bare", "l-db"]),
        ("!env", vec!["l-bare"]),
        ("env", vec!["l-db", "l-web"]),
    ] {
        let (status, body) = app.get(&format!("/api/v1/servers?labels={selector}")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(names(&body), want, "{selector}");
    }
    let (status, body) = app.get("/api/v1/servers?labels=Role=web").await;
    assert_eq!(
        (status, body["field"].as_str()),
        (422, Some("labels")),
        "{body}"
    );
    // An update replaces the labels; a bad one is refused and changes nothing.
    let (status, body) = app
        .put(
            &format!("/api/v1/servers/{}", web[0]),
            &json!({"labels": {"role": "api"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["labels"], json!({"role": "api"}));
    let (status, body) = app
        .put(
            &format!("/api/v1/servers/{}", web[0]),
            &json!({"labels": {"role": "a,b"}}),
        )
        .await;
    assert_eq!(
        (status, body["field"].as_str()),
        (422, Some("labels")),
        "{body}"
    );
    let (_, body) = app.get(&format!("/api/v1/servers/{}", web[0])).await;
    assert_eq!(body["labels"], json!({"role": "api"}));
});

db_test!(
    max_concurrent_jobs_holds_across_runs,
    |db: TestDb| async move {
        let app = TestApp::start(&db, &[]).await;
        let host = TestHost::start().await;
        let (status, body) = app
            .post(
                "/api/v1/servers",
                &json!({"name": "one", "hostname": host.host, "port": host.port,
                        "user": host.user, "auth_type": "key",
                        "private_key": host.keys.ed25519_openssh, "max_concurrent_jobs": 1}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let body = json!({"command": CLOCKED, "targets": {"servers": ["one"]}});
        let a = start_run(&app, body.clone()).await;
        let b = start_run(&app, body).await;
        let mut times = Vec::new();
        for run in [a, b] {
            let run = wait_run(&app, run["id"].as_str().unwrap()).await;
            assert_eq!(run["status"], "completed", "{run}");
            times.extend(host_times(&app, &run).await);
        }
        assert_eq!(most_at_once(&times), 1, "{times:?}");
    }
);
