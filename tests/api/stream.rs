//! The SSE stream over real HTTP: order, replay, resume, split characters, a stalled reader.

use std::pin::Pin;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use serde_json::{Value, json};

use crate::db_test;
use crate::helpers::{TestApp, TestDb};
use crate::jobs::wait_done;

/// One parsed event.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: i64,
    pub kind: String,
    pub data: Value,
}

type Body = Pin<Box<dyn Stream<Item = reqwest::Result<Vec<u8>>> + Send>>;

/// An open stream, parsed as it is read.
pub struct Sse {
    body: Body,
    buf: Vec<u8>,
    pub comments: usize,
}

impl Sse {
    pub async fn open(app: &TestApp, id: &str, last_event_id: Option<i64>) -> Sse {
        let mut req = app
            .client
            .get(app.url(&format!("/api/v1/jobs/{id}/stream")));
        if let Some(last) = last_event_id {
            req = req.header("Last-Event-ID", last.to_string());
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let ctype = resp.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ctype.starts_with("text/event-stream"), "{ctype}");
        Sse {
            body: Box::pin(resp.bytes_stream().map(|r| r.map(|b| b.to_vec()))),
            buf: Vec::new(),
            comments: 0,
        }
    }

    /// The next event, or `None` when the server closed the stream.
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                let text = String::from_utf8(block).unwrap();
                let (mut id, mut kind, mut data) = (None, None, None);
                for line in text.lines() {
                    if line.starts_with(':') {
                        self.comments += 1;
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        id = Some(v.parse::<i64>().unwrap());
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        kind = Some(v.to_string());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data = Some(serde_json::from_str(v).unwrap());
                    }
                }
                if let (Some(id), Some(kind), Some(data)) = (id, kind, data) {
                    return Some(Event { id, kind, data });
                }
                continue;
            }
            match tokio::time::timeout(Duration::from_secs(30), self.body.next()).await {
                Ok(Some(Ok(chunk))) => self.buf.extend_from_slice(&chunk),
                Ok(Some(Err(e))) => panic!("stream broke: {e}"),
                Ok(None) => return None,
                Err(_) => panic!("no event for 30 s"),
            }
        }
    }

    /// Every event up to the end of the stream.
    pub async fn collect(&mut self) -> Vec<Event> {
        let mut all = Vec::new();
        while let Some(e) = self.next().await {
            all.push(e);
        }
        all
    }
}

/// The output text of `stream` in a list of events.
fn text(events: &[Event], stream: &str) -> String {
    events
        .iter()
        .filter(|e| e.kind == "output" && e.data["stream"] == stream)
        .map(|e| e.data["output"].as_str().unwrap())
        .collect()
}

async fn submit(app: &TestApp, server: &str, command: &str) -> String {
    crate::jobs::submit(app, json!({"command": command, "server_id": server})).await
}

db_test!(
    opened_before_the_job_runs_it_waits_then_follows,
    |db: TestDb| async move {
        let (app, _host, server) =
            TestApp::with_host(&db, &[("JOBEXEC__JOBS__KILL_GRACE_SECS", "1")]).await;
        app.put(
            &format!("/api/v1/servers/{server}"),
            &json!({"max_concurrent_jobs": 1}),
        )
        .await;
        // The only slot is taken, so the next job waits, queued.
        let blocker = submit(&app, &server, "echo block; sleep 30").await;
        let id = submit(
            &app,
            &server,
            "echo one; echo two >&2; sleep 0.2; echo three; exit 4",
        )
        .await;
        let mut sse = Sse::open(&app, &id, None).await;
        let first = sse.next().await.unwrap();
        assert_eq!(first.kind, "status");
        assert_eq!(first.data["status"], "queued");
        assert_eq!(first.id, -1);
        app.post(&format!("/api/v1/jobs/{blocker}/cancel"), &json!({}))
            .await;
        let events = sse.collect().await;
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds.first(), Some(&"status"), "{kinds:?}");
        assert_eq!(events[0].data["status"], "running");
        assert_eq!(kinds.last(), Some(&"complete"), "{kinds:?}");
        let last = events.last().unwrap();
        assert_eq!(last.data["status"], "failed");
        assert_eq!(last.data["exit_code"], 4);
        assert_eq!(text(&events, "stdout"), "one\nthree\n");
        assert_eq!(text(&events, "stderr"), "two\n");
        let seqs: Vec<i64> = events
            .iter()
            .filter(|e| e.kind == "output")
            .map(|e| e.data["seq"].as_i64().unwrap())
            .collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        for e in events.iter().filter(|e| e.kind == "output") {
            assert_eq!(e.id, e.data["seq"].as_i64().unwrap());
            assert_eq!(e.data["job_id"], id.as_str());
            assert_eq!(e.data["is_stderr"], e.data["stream"] == "stderr");
            assert!(e.data["timestamp"].is_string());
        }
        app.stop().await;
    }
);

db_test!(
    a_finished_job_replays_and_ends_and_resume_skips_what_was_seen,
    |db: TestDb| async move {
        let (app, _host, server) = TestApp::with_host(&db, &[]).await;
        let id = submit(
            &app,
            &server,
            "for i in 1 2 3 4 5; do echo line-$i; sleep 0.06; done",
        )
        .await;
        wait_done(&app, &id, Duration::from_secs(20)).await;
        let events = Sse::open(&app, &id, None).await.collect().await;
        assert_eq!(events.first().unwrap().kind, "status");
        assert_eq!(events.first().unwrap().data["status"], "completed");
        assert_eq!(events.last().unwrap().kind, "complete");
        assert_eq!(
            text(&events, "stdout"),
            "line-1\nline-2\nline-3\nline-4\nline-5\n"
        );
        let outputs: Vec<&Event> = events.iter().filter(|e| e.kind == "output").collect();
        assert!(outputs.len() >= 2, "{outputs:?}");
        // Resume after the first output event: exactly the rest.
        let cut = outputs[0].id;
        let resumed = Sse::open(&app, &id, Some(cut)).await.collect().await;
        let expected: String = outputs[1..]
            .iter()
            .map(|e| e.data["output"].as_str().unwrap())
            .collect();
        assert_eq!(text(&resumed, "stdout"), expected);
        assert!(
            resumed
                .iter()
                .filter(|e| e.kind == "output")
                .all(|e| e.id > cut)
        );
        // Resume after the end: only the status and the completion.
        let end = outputs.last().unwrap().id;
        let none = Sse::open(&app, &id, Some(end)).await.collect().await;
        let kinds: Vec<&str> = none.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, ["status", "complete"]);
        let (status, _) = app
            .get("/api/v1/jobs/0195f2a4-3b7c-7d8e-9f00-112233445566/stream")
            .await;
        assert_eq!(status, 404);
        app.stop().await;
    }
);

db_test!(
    a_character_split_across_chunks_arrives_whole,
    |db: TestDb| async move {
        let (app, _host, server) = TestApp::with_host(&db, &[]).await;
        // "€" is E2 82 AC: its bytes leave the host in two writes 300 ms apart.
        let id = submit(
            &app,
            &server,
            "printf 'a\\342\\202'; sleep 0.3; printf '\\254b\\n'; printf '\\377\\n' >&2",
        )
        .await;
        let mut sse = Sse::open(&app, &id, None).await;
        let live = sse.collect().await;
        assert_eq!(text(&live, "stdout"), "a€b\n");
        assert_eq!(text(&live, "stderr"), "\u{FFFD}\n");
        let (_, chunks) = app
            .get(&format!("/api/v1/jobs/{id}/logs?format=chunks"))
            .await;
        assert!(
            chunks.as_array().unwrap().len() >= 2,
            "the split was not kept: {chunks}"
        );
        // Replayed, and resumed right after the first half: still whole.
        let replayed = Sse::open(&app, &id, None).await.collect().await;
        assert_eq!(text(&replayed, "stdout"), "a€b\n");
        let first_seq = chunks[0]["seq"].as_i64().unwrap();
        let resumed = Sse::open(&app, &id, Some(first_seq)).await.collect().await;
        assert_eq!(text(&resumed, "stdout"), "€b\n");
        app.stop().await;
    }
);

db_test!(
    a_stalled_reader_does_not_slow_a_50_mb_job,
    |db: TestDb| async move {
        let (app, _host, server) = TestApp::with_host(&db, &[]).await;
        app.put(
            &format!("/api/v1/servers/{server}"),
            &json!({"max_concurrent_jobs": 2}),
        )
        .await;
        let command = "head -c 50000000 /dev/zero | tr '\\0' x";
        // Baseline: the same job with nobody reading.
        let started = Instant::now();
        let alone = submit(&app, &server, command).await;
        wait_done(&app, &alone, Duration::from_secs(60)).await;
        let baseline = started.elapsed();
        // Now with a stream opened and never read while the job runs.
        let blocker = submit(&app, &server, "sleep 0.3").await;
        let _ = blocker;
        let id = submit(&app, &server, command).await;
        let stalled = Sse::open(&app, &id, None).await;
        let started = Instant::now();
        let job = wait_done(&app, &id, Duration::from_secs(60)).await;
        let took = started.elapsed();
        assert_eq!(job["status"], "completed", "{job}");
        assert_eq!(job["output_bytes"], 50_000_000);
        assert!(
            took < baseline * 2 + Duration::from_secs(1),
            "with a stalled reader the job took {took:?}, alone {baseline:?}"
        );
        // The stalled reader, read now, still gets all of it and the end (from the database).
        let mut stalled = stalled;
        let mut bytes = 0usize;
        let mut complete = false;
        while let Some(e) = stalled.next().await {
            match e.kind.as_str() {
                "output" => bytes += e.data["output"].as_str().unwrap().len(),
                "complete" => complete = true,
                _ => {}
            }
        }
        assert!(complete);
        assert_eq!(bytes, 50_000_000);
        app.stop().await;
    }
);
