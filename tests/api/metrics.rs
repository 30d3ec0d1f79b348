//! `GET /metrics`: Prometheus text (format 0.0.4) whose series move when jobs run.
//!
//! The job counts come from the test's own database, so they are exact. The process-wide
//! series are shared with every test running beside this one in the binary: those labelled
//! by this test's server id are exact, the rest (output bytes, HTTP requests) are asserted to
//! have moved by at least what this test did.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::db_test;
use crate::helpers::{TestApp, TestDb};
use crate::jobs::{submit, wait_done};

/// One sample line.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed exposition.
#[derive(Debug)]
struct Scrape {
    samples: Vec<Sample>,
    text: String,
}

impl Scrape {
    /// The value of the series `name` with exactly `labels` (0 when absent: a labelled
    /// series appears on first use).
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let found: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| s.name == name && s.labels == want)
            .collect();
        assert!(found.len() <= 1, "series {name}{want:?} appears twice");
        found.first().map_or(0.0, |s| s.value)
    }

    /// Whether the series `name` with exactly `labels` is present.
    fn has(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.samples.iter().any(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }
}

/// Parse the text format: `# HELP`/`# TYPE` lines, then `name{k="v",...} value` lines with
/// `\\`, `\"` and `\n` escapes in label values. Every sample must belong to a family whose
/// `# TYPE` came before it.
fn parse(text: &str) -> Scrape {
    let mut typed: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kw, name, tail) = (
                parts.next().unwrap(),
                parts.next().unwrap(),
                parts.next().unwrap_or(""),
            );
            match kw {
                "TYPE" => {
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&tail),
                        "bad TYPE line {line:?}"
                    );
                    assert!(
                        typed.insert(name.to_string(), tail.to_string()).is_none(),
                        "family {name} typed twice"
                    );
                }
                "HELP" => {}
                _ => panic!("bad comment line {line:?}"),
            }
            continue;
        }
        let name_end = line
            .find(['{', ' '])
            .unwrap_or_else(|| panic!("no value on {line:?}"));
        let name = &line[..name_end];
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        let mut labels = BTreeMap::new();
        let mut rest = &line[name_end..];
        if let Some(body) = rest.strip_prefix('{') {
            let mut chars = body.char_indices().peekable();
            let end;
            loop {
                // key
                let (start, c) = chars.next().expect("label or }");
                if c == '}' {
                    end = start + 1;
                    break;
                }
                let mut key = String::from(c);
                for (_, c) in chars.by_ref() {
                    if c == '=' {
                        break;
                    }
                    key.push(c);
                }
                assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{line:?}");
                let mut value = String::new();
                loop {
                    match chars.next().expect("unterminated label value").1 {
                        '\\' => match chars.next().expect("escape").1 {
                            '\\' => value.push('\\'),
                            '"' => value.push('"'),
                            'n' => value.push('\n'),
                            other => panic!("bad escape \\{other} in {line:?}"),
                        },
                        '"' => break,
                        c => value.push(c),
                    }
                }
                assert!(
                    labels.insert(key.clone(), value).is_none(),
                    "label {key} twice in {line:?}"
                );
                if let Some((_, ',')) = chars.peek() {
                    chars.next();
                }
            }
            rest = &body[end..];
        }
        let value = rest.trim();
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v
                .parse::<f64>()
                .unwrap_or_else(|e| panic!("bad value {v:?} in {line:?}: {e}")),
        };
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix)
                    .filter(|base| typed.get(*base).map(String::as_str) == Some("histogram"))
            })
            .unwrap_or(name);
        assert!(
            typed.contains_key(family),
            "sample {name} has no # TYPE before it"
        );
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    Scrape {
        samples,
        text: text.to_string(),
    }
}

async fn scrape_with(client: &reqwest::Client, app: &TestApp) -> Scrape {
    let resp = client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let ctype = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        ctype.starts_with("text/plain; version=0.0.4"),
        "content-type {ctype:?}"
    );
    parse(&resp.text().await.unwrap())
}

async fn scrape(app: &TestApp) -> Scrape {
    scrape_with(&app.client, app).await
}

#[test]
fn the_parser_reads_escapes_and_checks_types() {
    let s = parse(
        "# HELP a_total Some \\\\ help.\n# TYPE a_total counter\n\
         a_total{x=\"q\\\"\\\\\\n\",y=\"\"} 3\na_total 1.5\n\
         # TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.5\nh_count 2\n",
    );
    assert_eq!(s.get("a_total", &[("x", "q\"\\\n"), ("y", "")]), 3.0);
    assert_eq!(s.get("a_total", &[]), 1.5);
    assert_eq!(s.get("h_count", &[]), 2.0);
    assert_eq!(s.get("h_bucket", &[("le", "+Inf")]), 2.0);
    assert!(std::panic::catch_unwind(|| parse("untyped_sample 1\n")).is_err());
}

db_test!(metrics_move_when_jobs_run, |db: TestDb| async move {
    let (app, host, server) = TestApp::with_host(&db, &[]).await;
    let before = scrape(&app).await;
    for st in [
        "queued",
        "running",
        "completed",
        "failed",
        "canceled",
        "timed_out",
    ] {
        assert_eq!(before.get("jobexec_jobs", &[("status", st)]), 0.0, "{st}");
    }
    assert!(before.has("jobexec_jobs", &[("status", "timed_out")]));
    assert_eq!(before.get("jobexec_queue_depth", &[]), 0.0);
    assert_eq!(before.get("jobexec_store_up", &[]), 1.0);
    let sid = [("server_id", server.as_str())];
    assert!(!before.has("jobexec_ssh_channel_opens_total", &sid));

    // One completed, one failed with exit 3 (each writes to one stream).
    let ok = submit(
        &app,
        json!({"command": "echo", "args": "hello", "server_id": server, "timeout": 30}),
    )
    .await;
    let bad = submit(
        &app,
        json!({"command": "echo", "args": "oops >&2; exit 3", "server_id": server,
                   "timeout": 30}),
    )
    .await;
    assert_eq!(
        wait_done(&app, &ok, Duration::from_secs(20)).await["status"],
        "completed"
    );
    let job = wait_done(&app, &bad, Duration::from_secs(20)).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["exit_code"], 3);

    // A job caught running: the database says one is running, and so does this process.
    let slow = submit(
        &app,
        json!({"command": "sleep", "args": "1.5", "server_id": server, "timeout": 30}),
    )
    .await;
    let start = Instant::now();
    let during = loop {
        let s = scrape(&app).await;
        // The claim (database) comes just before the job's actor starts (this process).
        if s.get("jobexec_jobs", &[("status", "running")]) == 1.0
            && s.get("jobexec_running_jobs", &[]) >= 1.0
        {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the job never showed running"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        wait_done(&app, &slow, Duration::from_secs(20)).await["status"],
        "completed"
    );

    // Requests no route matches are counted under "unmatched", inside /api/v1 or not.
    assert_eq!(app.get("/api/v1/no-such-route").await.0, 404);
    let resp = app
        .client
        .get(app.url("/no-such-page"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);

    let after = scrape(&app).await;
    let delta =
        |name: &str, labels: &[(&str, &str)]| after.get(name, labels) - before.get(name, labels);

    // Jobs by status and the queue: exact (this test's database).
    assert_eq!(after.get("jobexec_jobs", &[("status", "completed")]), 2.0);
    assert_eq!(after.get("jobexec_jobs", &[("status", "failed")]), 1.0);
    assert_eq!(after.get("jobexec_jobs", &[("status", "running")]), 0.0);
    assert_eq!(after.get("jobexec_jobs", &[("status", "queued")]), 0.0);
    assert_eq!(after.get("jobexec_queue_depth", &[]), 0.0);

    // Durations by final status (shared with other tests: at least ours).
    let completed = [("status", "completed")];
    let failed = [("status", "failed")];
    assert!(delta("jobexec_job_duration_seconds_count", &completed) >= 2.0);
    assert!(delta("jobexec_job_duration_seconds_count", &failed) >= 1.0);
    assert!(delta("jobexec_job_duration_seconds_sum", &completed) >= 1.5);
    assert_eq!(
        after.get(
            "jobexec_job_duration_seconds_bucket",
            &[("status", "completed"), ("le", "+Inf")]
        ),
        after.get("jobexec_job_duration_seconds_count", &completed)
    );

    // SSH, by this test's server id: exact.
    assert_eq!(after.get("jobexec_ssh_channel_opens_total", &sid), 3.0);
    let connects = after.get("jobexec_ssh_connects_total", &sid);
    assert!((1.0..=3.0).contains(&connects), "connects {connects}");
    let open = after.get("jobexec_ssh_connections_open", &sid);
    assert!((1.0..=connects).contains(&open), "open {open}");
    assert!(
        !after
            .samples
            .iter()
            .any(|s| s.name == "jobexec_ssh_connect_failures_total"
                && s.labels.get("server_id") == Some(&server)),
        "no connect failed"
    );

    // Output: "hello\n" on stdout and "oops\n" on stderr, at least.
    assert!(delta("jobexec_output_bytes_total", &[("stream", "stdout")]) >= 6.0);
    assert!(delta("jobexec_output_bytes_total", &[("stream", "stderr")]) >= 5.0);

    // HTTP by route pattern, never by raw path.
    let post_jobs = [
        ("route", "/api/v1/jobs"),
        ("method", "POST"),
        ("status", "201"),
    ];
    assert!(delta("jobexec_http_requests_total", &post_jobs) >= 3.0);
    let get_job = [
        ("route", "/api/v1/jobs/{id}"),
        ("method", "GET"),
        ("status", "200"),
    ];
    assert!(delta("jobexec_http_requests_total", &get_job) >= 3.0);
    let unmatched = [("route", "unmatched"), ("method", "GET"), ("status", "404")];
    assert!(delta("jobexec_http_requests_total", &unmatched) >= 2.0);
    let scrapes = [("route", "/metrics"), ("method", "GET"), ("status", "200")];
    assert!(delta("jobexec_http_requests_total", &scrapes) >= 2.0);
    assert!(
        delta(
            "jobexec_http_request_duration_seconds_count",
            &[("route", "/api/v1/jobs"), ("method", "POST")]
        ) >= 3.0
    );
    assert!(
        !after.text.contains(&ok) && !after.text.contains("no-such"),
        "a raw path or a job id became a label"
    );

    // Nothing secret, no host details.
    assert!(!after.text.contains("PRIVATE KEY"));
    assert!(!after.text.contains(&format!("{}:{}", host.host, host.port)));
    assert!(!after.text.contains(&format!("\"{}\"", host.user)));

    println!(
        "metrics seen ({:?}): jobs completed={} failed={} running(mid)={} running_jobs(mid)={}; \
             channel_opens={} connects={} connections_open={}; \
             job_duration_count completed={} failed={}; output_bytes stdout+{} stderr+{}; \
             POST /api/v1/jobs 201 +{}",
        db.kind(),
        after.get("jobexec_jobs", &completed),
        after.get("jobexec_jobs", &failed),
        during.get("jobexec_jobs", &[("status", "running")]),
        during.get("jobexec_running_jobs", &[]),
        after.get("jobexec_ssh_channel_opens_total", &sid),
        connects,
        open,
        after.get("jobexec_job_duration_seconds_count", &completed),
        after.get("jobexec_job_duration_seconds_count", &failed),
        delta("jobexec_output_bytes_total", &[("stream", "stdout")]),
        delta("jobexec_output_bytes_total", &[("stream", "stderr")]),
        delta("jobexec_http_requests_total", &post_jobs),
    );
    app.stop().await;
});

db_test!(
    a_failed_connect_is_counted_by_server_and_reason,
    |db: TestDb| async move {
        let app = TestApp::start(&db, &[("JOBEXEC__JOBS__CONNECT_ATTEMPTS", "1")]).await;
        // A port nothing listens on.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let (status, body) = app
            .post(
                "/api/v1/servers",
                &json!({"name": "nobody", "hostname": "127.0.0.1", "port": port,
                        "user": "nobody", "auth_type": "password", "password": "pw-123-secret"}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let server = body["id"].as_str().unwrap().to_string();
        let id = submit(
            &app,
            json!({"command": "true", "server_id": server, "timeout": 30}),
        )
        .await;
        let job = wait_done(&app, &id, Duration::from_secs(20)).await;
        assert_eq!(job["status"], "failed", "{job}");
        let after = scrape(&app).await;
        let refused = after.get(
            "jobexec_ssh_connect_failures_total",
            &[("server_id", server.as_str()), ("reason", "refused")],
        );
        assert!(refused >= 1.0, "{}", after.text);
        assert_eq!(
            after.get("jobexec_ssh_connections_open", &[("server_id", &server)]),
            0.0
        );
        assert_eq!(after.get("jobexec_jobs", &[("status", "failed")]), 1.0);
        assert!(!after.text.contains("pw-123-secret"));
        println!("connect failures (refused) for the server: {refused}");
        app.stop().await;
    }
);

db_test!(
    metrics_need_no_token_and_refusals_are_counted,
    |db: TestDb| async move {
        const TOKEN: &str = "metrics-test-token-5c4b3a29";
        let app = TestApp::start(&db, &[("JOBEXEC_API_TOKENS", &format!("ops:{TOKEN}"))]).await;
        let anon = reqwest::Client::new();
        let before = scrape_with(&anon, &app).await;
        let resp = anon.get(app.url("/api/v1/jobs")).send().await.unwrap();
        assert_eq!(resp.status(), 401);
        let after = scrape_with(&anon, &app).await;
        let refused = [
            ("route", "/api/v1/jobs"),
            ("method", "GET"),
            ("status", "401"),
        ];
        assert!(
            after.get("jobexec_http_requests_total", &refused)
                - before.get("jobexec_http_requests_total", &refused)
                >= 1.0
        );
        assert!(!after.text.contains(TOKEN));
        assert!(
            !after.text.contains("\"ops\""),
            "a token name became a label"
        );
        app.stop().await;
    }
);
