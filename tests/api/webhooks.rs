//! Webhooks over real HTTP: a receiver on loopback checks every delivery's signature, a
//! receiver that answers 500 twice then 200 gets three attempts with one delivery id, a
//! job's end is recorded once per webhook and event, a recovery is its own event, a
//! receiver that never answers delays no job, and a redirect is not followed.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::db_test;
use crate::helpers::{TestApp, TestDb, TestHost};

/// One request the receiver got: its headers (lower-cased names) and body.
#[derive(Debug, Clone)]
pub struct Got {
    headers: Vec<(String, String)>,
    pub body: String,
}

impl Got {
    pub fn header(&self, name: &str) -> &str {
        (self.headers.iter())
            .find(|(n, _)| n == name)
            .map_or("", |(_, v)| v.as_str())
    }
}

/// A receiver on loopback answering the statuses of `answers` in turn (then 200); `0`
/// holds the connection open without ever answering. Its URL carries a query token that no
/// response may show.
pub async fn receiver(answers: Vec<u16>) -> (String, Arc<Mutex<Vec<Got>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    receiver_on(listener, answers)
}

/// [`receiver`] on a listener the test bound itself (to a port chosen earlier).
pub fn receiver_on(
    listener: tokio::net::TcpListener,
    answers: Vec<u16>,
) -> (String, Arc<Mutex<Vec<Got>>>) {
    let url = format!(
        "http://{}/hook?token=in-the-query",
        listener.local_addr().unwrap()
    );
    let got = Arc::new(Mutex::new(Vec::new()));
    let seen = got.clone();
    tokio::spawn(async move {
        let mut answers = answers.into_iter();
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            let status = answers.next().unwrap_or(200);
            tokio::spawn(answer(sock, status, seen.clone()));
        }
    });
    (url, got)
}

/// Read one request from `sock`, record it, answer `status` (`0`: never).
async fn answer(mut sock: tokio::net::TcpStream, status: u16, seen: Arc<Mutex<Vec<Got>>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let (head, body) = loop {
        let n = sock.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some((head, rest)) = text.split_once("\r\n\r\n") {
            let len: usize = (head.lines())
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            if rest.len() >= len {
                break (head.to_string(), rest[..len].to_string());
            }
        }
    };
    let headers = (head.lines().skip(1))
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    seen.lock().unwrap().push(Got { headers, body });
    if status == 0 {
        // Hold the connection until the client gives up.
        let _ = sock.read(&mut chunk).await;
        return;
    }
    // A redirect points elsewhere on this receiver: followed, it would be one more request.
    let location = if (300..400).contains(&status) {
        "location: /redirected\r\n"
    } else {
        ""
    };
    let reply =
        format!("HTTP/1.1 {status} X\r\n{location}content-length: 0\r\nconnection: close\r\n\r\n");
    let _ = sock.write_all(reply.as_bytes()).await;
}

/// Check a delivery's `X-JobExec-Signature` against `secret`: fresh, and over its body.
pub fn assert_signed(g: &Got, secret: &str) {
    let sig = g.header("x-jobexec-signature");
    let (t, v1) = sig
        .strip_prefix("t=")
        .and_then(|r| r.split_once(",v1="))
        .unwrap_or_else(|| panic!("{sig}"));
    let t: i64 = t.parse().unwrap();
    assert!((chrono::Utc::now().timestamp() - t).abs() < 60);
    assert_eq!(v1, job_executor::engine::signature(secret, t, &g.body));
}

pub async fn wait_for(got: &Arc<Mutex<Vec<Got>>>, n: usize, within: Duration) -> Vec<Got> {
    let start = Instant::now();
    loop {
        let all = got.lock().unwrap().clone();
        if all.len() >= n {
            return all;
        }
        assert!(
            start.elapsed() < within,
            "{} of {n} deliveries: {all:?}",
            all.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

db_test!(
    a_job_end_is_delivered_signed_and_retried_with_one_delivery_id,
    |db: TestDb| async move {
        let app = TestApp::start(&db, &[("JOBEXEC__WEBHOOK_DELIVERY__RETRY_BASE_MS", "200")]).await;
        let host = TestHost::start().await;
        let server = app.add_key_server("web", &host).await;
        let (url, got) = receiver(vec![500, 500]).await;
        let secret = "whsec-0123456789abcdef";
        let (status, hook) = app
            .post(
                "/api/v1/webhooks",
                &json!({"name": "ops", "url": url, "events": ["job.completed", "job.failed"],
                        "secret": secret}),
            )
            .await;
        assert_eq!(status, 201, "{hook}");
        assert_eq!(hook["has_secret"], true);
        assert!(!hook.to_string().contains(secret), "{hook}");
        assert!(!hook.to_string().contains("in-the-query"), "{hook}");
        for (body, field) in [
            (
                json!({"name": "x", "url": "ftp://h/", "events": ["job.failed"]}),
                "url",
            ),
            (
                json!({"name": "x", "url": url, "events": ["job.exploded"]}),
                "events",
            ),
            (json!({"name": "x", "url": url, "events": []}), "events"),
            (
                json!({"name": "x", "url": url, "events": ["job.failed"], "filter": {"template": "nope"}}),
                "filter.template",
            ),
            (
                json!({"name": "x", "url": url, "events": ["job.failed"], "filter": {"selector": "a b"}}),
                "filter.selector",
            ),
        ] {
            let (status, err) = app.post("/api/v1/webhooks", &body).await;
            assert_eq!((status, err["field"].as_str()), (422, Some(field)), "{err}");
        }

        let (status, job) = app
            .post(
                "/api/v1/jobs",
                &json!({"command": "echo hi", "server_id": server}),
            )
            .await;
        assert_eq!(status, 201, "{job}");
        let all = wait_for(&got, 3, Duration::from_secs(20)).await;
        let id = all[0].header("x-jobexec-delivery").to_string();
        assert!(!id.is_empty());
        for g in &all {
            assert_eq!(g.header("x-jobexec-event"), "job.completed");
            assert_eq!(g.header("x-jobexec-delivery"), id, "one id across attempts");
            assert_eq!(g.body, all[0].body, "the same body on every attempt");
            assert_signed(g, secret);
        }
        let payload: Value = serde_json::from_str(&all[0].body).unwrap();
        assert_eq!(payload["event"], "job.completed");
        assert_eq!(payload["delivery_id"], id.as_str());
        assert_eq!(payload["data"]["id"], job["id"]);
        assert_eq!(payload["data"]["status"], "completed");
        let start = Instant::now();
        let d = loop {
            let (_, list) = app.get("/api/v1/webhooks/ops/deliveries").await;
            let d = list["deliveries"][0].clone();
            if d["status"] != "pending" {
                break d;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "{list}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(
            (&d["status"], &d["attempts"], &d["last_status_code"]),
            (&json!("delivered"), &json!(3), &json!(200)),
            "{d}"
        );
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(
            got.lock().unwrap().len(),
            3,
            "delivered once, then no more attempts"
        );

        // Redelivered by hand: the same id once more.
        let (status, again) = app
            .post(
                &format!("/api/v1/webhooks/ops/deliveries/{id}/redeliver"),
                &json!({}),
            )
            .await;
        assert_eq!(
            (status, &again["status"]),
            (202, &json!("pending")),
            "{again}"
        );
        let all = wait_for(&got, 4, Duration::from_secs(10)).await;
        assert_eq!(all[3].header("x-jobexec-delivery"), id);
        let (status, _) = app
            .post("/api/v1/webhooks/ops/deliveries/nope/redeliver", &json!({}))
            .await;
        assert_eq!(status, 404);
    }
);

/// A job's id once it has ended with `status`.
async fn ended(app: &TestApp, body: Value, status: &str) -> String {
    let (code, job) = app.post("/api/v1/jobs", &body).await;
    assert_eq!(code, 201, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    let done = crate::jobs::wait_done(app, &id, Duration::from_secs(20)).await;
    assert_eq!(done["status"], status, "{done}");
    id
}

db_test!(
    a_recovery_is_its_own_event_and_a_receiver_that_never_answers_delays_no_job,
    |db: TestDb| async move {
        // One attempt may take 30 s: a receiver that never answers holds its slots that long.
        let app = TestApp::start(
            &db,
            &[
                ("JOBEXEC__WEBHOOK_DELIVERY__TIMEOUT_SECS", "30"),
                ("JOBEXEC__WEBHOOK_DELIVERY__PER_WEBHOOK", "1"),
                // No retry within the test: each receiver's count is its first attempts.
                ("JOBEXEC__WEBHOOK_DELIVERY__RETRY_BASE_MS", "60000"),
            ],
        )
        .await;
        let host = TestHost::start().await;
        let server = app.add_key_server("web", &host).await;
        let (silent_url, silent) = receiver(vec![0; 16]).await;
        let (url, got) = receiver(vec![]).await;
        let secret_dir = tempfile::tempdir().unwrap();
        let secret_file = secret_dir.path().join("secret");
        std::fs::write(&secret_file, "whsec-from-a-file\n").unwrap();
        let secret_arg = secret_file.display().to_string();

        // Both saved with jobctl: the secret from a file, shown nowhere.
        let all_events = "job.completed,job.failed,job.recovered";
        let add = |name: &'static str, url: String, events: &'static str| {
            let (base, secret_arg) = (app.base.clone(), secret_arg.clone());
            async move {
                let args = [
                    "webhooks",
                    "add",
                    name,
                    &url,
                    "-e",
                    events,
                    "--secret-file",
                    &secret_arg,
                ];
                crate::helpers::jobctl::jobctl_at(&base, &args, None).await
            }
        };
        let out = add("silent", silent_url, all_events).await;
        assert_eq!(out.code, 0, "{out:?}");
        out.assert_hides("whsec-from-a-file");
        let out = add("ops", url, "job.recovered,job.failed").await;
        assert_eq!(out.code, 0, "{out:?}");
        // A receiver that answers with a redirect: not followed, the attempt failed.
        let (moved_url, moved) = receiver(vec![301; 8]).await;
        let out = add("moved", moved_url, "job.failed").await;
        assert_eq!(out.code, 0, "{out:?}");
        let out = crate::helpers::jobctl::jobctl_at(&app.base, &["webhooks", "list"], None).await;
        assert_eq!(out.code, 0, "{out:?}");
        let ops = (out.stdout.lines().find(|l| l.starts_with("ops ")))
            .unwrap_or_else(|| panic!("{out:?}"));
        assert!(
            ops.contains("job.recovered,job.failed") && ops.contains("yes"),
            "{}",
            out.stdout
        );
        assert!(!out.stdout.contains("in-the-query"), "{}", out.stdout);

        // Fail, complete (a recovery), complete again (not one): the same command, told
        // apart by its environment. The silent receiver holds every attempt it gets, and
        // no job waits for it.
        let job = |code: &str| json!({"command": "exit \"$CODE\"", "env": {"CODE": code}, "server_id": server});
        let start = Instant::now();
        let failed = ended(&app, job("3"), "failed").await;
        let recovered = ended(&app, job("0"), "completed").await;
        ended(&app, job("0"), "completed").await;
        let took = start.elapsed();
        assert!(took < Duration::from_secs(10), "three jobs took {took:?}");

        let all = wait_for(&got, 2, Duration::from_secs(10)).await;
        let start = Instant::now();
        let redirected = loop {
            let (_, list) = app.get("/api/v1/webhooks/moved/deliveries").await;
            let d = list["deliveries"][0].clone();
            if d["attempts"].as_i64().unwrap_or(0) >= 1 {
                break d;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "{list}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(
            (&redirected["status"], &redirected["last_status_code"]),
            (&json!("pending"), &json!(301)),
            "{redirected}"
        );
        assert_eq!(moved.lock().unwrap().len(), 1, "the redirect was followed");
        let events: Vec<(&str, String)> = (all.iter())
            .map(|g| {
                let data: Value = serde_json::from_str(&g.body).unwrap();
                (
                    g.header("x-jobexec-event"),
                    data["data"]["id"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(
            events,
            [("job.failed", failed), ("job.recovered", recovered.clone())],
            "a failure, then its recovery (and not the completion after it)"
        );
        for g in &all {
            assert_signed(g, "whsec-from-a-file");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            got.lock().unwrap().len(),
            2,
            "no event for a second completion"
        );
        // The silent one got its first attempt (one in flight: per_webhook 1), still open.
        assert_eq!(silent.lock().unwrap().len(), 1);
        let out = crate::helpers::jobctl::jobctl_at(
            &app.base,
            &["webhooks", "deliveries", "silent", "-o", "json"],
            None,
        )
        .await;
        let list = out.json();
        let statuses: Vec<&str> = (list["deliveries"].as_array().unwrap().iter())
            .map(|d| d["status"].as_str().unwrap())
            .collect();
        assert_eq!(statuses, ["pending"; 4], "{list}");

        // Redelivered with jobctl: the same id reaches the receiver again.
        let first = all[0].header("x-jobexec-delivery").to_string();
        let out = crate::helpers::jobctl::jobctl_at(
            &app.base,
            &["webhooks", "redeliver", "ops", &first],
            None,
        )
        .await;
        assert_eq!(out.code, 0, "{out:?}");
        let all = wait_for(&got, 3, Duration::from_secs(10)).await;
        assert_eq!(all[2].header("x-jobexec-delivery"), first);
        let out =
            crate::helpers::jobctl::jobctl_at(&app.base, &["webhooks", "delete", "silent"], None)
                .await;
        assert_eq!(out.code, 0, "{out:?}");
        let (status, _) = app.get("/api/v1/webhooks/silent").await;
        assert_eq!(status, 404);
    }
);
