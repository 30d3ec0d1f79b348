//! Webhooks over real HTTP: a receiver on loopback checks every delivery's signature, a
//! receiver that answers 500 twice then 200 gets three attempts with one delivery id, a
//! job's end is recorded once per webhook and event.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::db_test;
use crate::helpers::{TestApp, TestDb, TestHost};

/// One request the receiver got: its headers (lower-cased names) and body.
#[derive(Debug, Clone)]
struct Got {
    headers: Vec<(String, String)>,
    body: String,
}

impl Got {
    fn header(&self, name: &str) -> &str {
        (self.headers.iter())
            .find(|(n, _)| n == name)
            .map_or("", |(_, v)| v.as_str())
    }
}

/// A receiver on loopback answering the statuses of `answers` in turn (then 200).
async fn receiver(answers: Vec<u16>) -> (String, Arc<Mutex<Vec<Got>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/hook?token=in-the-query",
        listener.local_addr().unwrap()
    );
    let got = Arc::new(Mutex::new(Vec::new()));
    let seen = got.clone();
    tokio::spawn(async move {
        let mut answers = answers.into_iter();
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 8192];
            let (head, body) = loop {
                let n = sock.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    break (String::new(), String::new());
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
            let status = answers.next().unwrap_or(200);
            let reply =
                format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            let _ = sock.write_all(reply.as_bytes()).await;
        }
    });
    (url, got)
}

async fn wait_for(got: &Arc<Mutex<Vec<Got>>>, n: usize, within: Duration) -> Vec<Got> {
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
        let app = TestApp::start(&db, &[("webhook_delivery.retry_base_ms", "200")]).await;
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
            let sig = g.header("x-jobexec-signature");
            let (t, v1) = sig
                .strip_prefix("t=")
                .and_then(|r| r.split_once(",v1="))
                .unwrap_or_else(|| panic!("{sig}"));
            let t: i64 = t.parse().unwrap();
            assert!((chrono::Utc::now().timestamp() - t).abs() < 60);
            assert_eq!(v1, job_executor::engine::signature(secret, t, &g.body));
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
