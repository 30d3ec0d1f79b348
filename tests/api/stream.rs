//! The SSE stream over real HTTP: order, replay, resume, split characters, a stalled reader.

use std::pin::Pin;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use serde_json::{Value, json};

use crate::db_test;
use crate::helpers::{TestApp, TestDb};

/// One parsed event.
#[derive(Debug, Clone)]
pub struct Event {
    /// The `id:` as a number (a job stream's), `i64::MIN` if it is not one.
    pub id: i64,
    /// The `id:` as sent (a run stream's is a cursor).
    pub cursor: String,
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
        Sse::open_at(&app.client, &app.base, id, last_event_id).await
    }

    /// Open the stream of job `id` on the API at `base` (an in-process app or an api process).
    pub async fn open_at(
        client: &reqwest::Client,
        base: &str,
        id: &str,
        last_event_id: Option<i64>,
    ) -> Sse {
        let url = format!("{base}/api/v1/jobs/{id}/stream");
        Sse::open_url(client, &url, last_event_id.map(|l| l.to_string())).await
    }

    /// Open the event stream at `url`, resuming after `last_event_id`.
    pub async fn open_url(
        client: &reqwest::Client,
        url: &str,
        last_event_id: Option<String>,
    ) -> Sse {
        let mut req = client.get(url);
        if let Some(last) = last_event_id {
            req = req.header("Last-Event-ID", last);
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
                        id = Some(v.to_string());
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        kind = Some(v.to_string());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data = Some(serde_json::from_str(v).unwrap());
                    }
                }
                if let (Some(cursor), Some(kind), Some(data)) = (id, kind, data) {
                    let id = cursor.parse::<i64>().unwrap_or(i64::MIN);
                    return Some(Event {
                        id,
                        cursor,
                        kind,
                        data,
                    });
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
pub fn text(events: &[Event], stream: &str) -> String {
    events
        .iter()
        .filter(|e| e.kind == "output" && e.data["stream"] == stream)
        .map(|e| e.data["output"].as_str().unwrap())
        .collect()
}

async fn submit(app: &TestApp, server: &str, command: &str) -> String {
    crate::jobs::submit(app, json!({"command": command, "server_id": server})).await
}

/// The API a stream test talks to — the in-process app (`serve`) or an `api` process whose
/// jobs a `worker` process runs — and the server its jobs run on. The scenarios below run
/// in both modes.
pub struct Target {
    pub client: reqwest::Client,
    pub base: String,
    pub server: String,
}

impl Target {
    pub fn of(app: &TestApp, server: &str) -> Target {
        Target {
            client: app.client.clone(),
            base: app.base.clone(),
            server: server.to_string(),
        }
    }

    pub async fn submit(&self, command: &str) -> String {
        let resp = self
            .client
            .post(format!("{}/api/v1/jobs", self.base))
            .json(&json!({"command": command, "server_id": self.server}))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let job: Value = resp.json().await.unwrap();
        assert_eq!(status, 201, "{job}");
        job["id"].as_str().unwrap().to_string()
    }

    pub async fn job(&self, id: &str) -> (u16, Value) {
        let resp = self
            .client
            .get(format!("{}/api/v1/jobs/{id}", self.base))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Wait until the job is neither queued nor running.
    pub async fn wait_done(&self, id: &str, bound: Duration) -> Value {
        let start = Instant::now();
        loop {
            let (status, job) = self.job(id).await;
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

    pub async fn open(&self, id: &str, last_event_id: Option<i64>) -> Sse {
        Sse::open_at(&self.client, &self.base, id, last_event_id).await
    }
}

/// A finished job replays whole and the stream ends; a resume gets exactly what follows
/// the id it names; a resume after the end gets only the status and the completion.
pub async fn replay_and_resume(t: &Target) {
    let id = t
        .submit("for i in 1 2 3 4 5; do echo line-$i; sleep 0.06; done")
        .await;
    let job = t.wait_done(&id, Duration::from_secs(30)).await;
    assert_eq!(job["status"], "completed", "{job}");
    let events = t.open(&id, None).await.collect().await;
    assert_eq!(events.first().unwrap().kind, "status");
    assert_eq!(events.first().unwrap().data["status"], "completed");
    assert_eq!(events.last().unwrap().kind, "complete");
    assert_eq!(
        text(&events, "stdout"),
        "line-1\nline-2\nline-3\nline-4\nline-5\n"
    );
    let outputs: Vec<&Event> = events.iter().filter(|e| e.kind == "output").collect();
    assert!(outputs.len() >= 2, "{outputs:?}");
    // Resume after each output event in turn: exactly the rest, nothing twice.
    for (i, cut) in outputs.iter().enumerate() {
        let resumed = t.open(&id, Some(cut.id)).await.collect().await;
        let expected: String = outputs[i + 1..]
            .iter()
            .map(|e| e.data["output"].as_str().unwrap())
            .collect();
        assert_eq!(
            text(&resumed, "stdout"),
            expected,
            "resumed after {}",
            cut.id
        );
        let seqs: Vec<i64> = resumed
            .iter()
            .filter(|e| e.kind == "output")
            .map(|e| e.id)
            .collect();
        let want: Vec<i64> = outputs[i + 1..].iter().map(|e| e.id).collect();
        assert_eq!(seqs, want);
        assert_eq!(resumed.first().unwrap().kind, "status");
        assert_eq!(resumed.first().unwrap().id, cut.id);
        assert_eq!(resumed.last().unwrap().kind, "complete");
    }
    // Resume after the end: only the status and the completion.
    let end = outputs.last().unwrap().id;
    let none = t.open(&id, Some(end)).await.collect().await;
    let kinds: Vec<&str> = none.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["status", "complete"]);
    let resp = t
        .client
        .get(format!(
            "{}/api/v1/jobs/0195f2a4-3b7c-7d8e-9f00-112233445566/stream",
            t.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}

/// A client that hangs up while the job runs and comes back with `Last-Event-ID` gets
/// exactly what it missed — from the database — and then the live events: over many
/// hang-ups, at varied points, the pieces join into the whole output, nothing twice,
/// nothing missing.
pub async fn resume_while_running(t: &Target) {
    let n = 60;
    let id = t
        .submit(&format!(
            "for i in $(seq 1 {n}); do echo line-$i; sleep 0.05; done"
        ))
        .await;
    // Output events to read before hanging up, and how long to stay away (output piles up
    // in the database meanwhile), in turn.
    let reads = [3, 8, 1, 5, 2];
    let pauses = [0, 200, 50, 120];
    let mut last: Option<i64> = None;
    let mut out = String::new();
    let mut seqs: Vec<i64> = Vec::new();
    let mut opened_running = 0;
    let mut complete = None;
    let mut round = 0;
    while complete.is_none() {
        assert!(round < 200, "too many rounds; read so far:\n{out}");
        let mut sse = t.open(&id, last).await;
        let first = sse.next().await.expect("the status comes first");
        assert_eq!(first.kind, "status", "{first:?}");
        assert_eq!(first.id, last.unwrap_or(-1), "{first:?}");
        if first.data["status"] == "running" {
            opened_running += 1;
        }
        let mut read = 0;
        while read < reads[round % reads.len()] {
            let e = sse
                .next()
                .await
                .unwrap_or_else(|| panic!("the stream ended before `complete`:\n{out}"));
            assert!(
                e.id >= last.unwrap_or(-1),
                "event id went back from {last:?}: {e:?}"
            );
            last = Some(e.id);
            match e.kind.as_str() {
                "output" => {
                    assert_eq!(e.data["stream"], "stdout", "{e:?}");
                    out.push_str(e.data["output"].as_str().unwrap());
                    seqs.push(e.id);
                    read += 1;
                }
                "complete" => {
                    assert!(sse.next().await.is_none(), "events after `complete`");
                    complete = Some(e);
                    break;
                }
                _ => {}
            }
        }
        drop(sse);
        tokio::time::sleep(Duration::from_millis(pauses[round % pauses.len()])).await;
        round += 1;
    }
    let want: String = (1..=n).map(|i| format!("line-{i}\n")).collect();
    assert_eq!(out, want, "over {round} connections");
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "output seqs not consecutive (twice or missing): {seqs:?}"
    );
    assert_eq!(complete.unwrap().data["status"], "completed");
    // Most reconnects happened while the job ran: replay then live, not just replay.
    assert!(
        opened_running >= 5,
        "only {opened_running} of {round} connections opened while the job ran"
    );
}

/// A stream opened and never read while a job prints 50 MB does not slow the job (against
/// the same job with nobody reading, in the same run), and read afterwards it still gets
/// all of it and the end.
pub async fn stalled_reader(t: &Target) {
    let command = "head -c 50000000 /dev/zero | tr '\\0' x";
    // A first job opens the SSH connection, so that neither run below pays for it.
    let warm = t.submit("true").await;
    t.wait_done(&warm, Duration::from_secs(30)).await;
    // Baseline: the same job with nobody reading.
    let started = Instant::now();
    let alone = t.submit(command).await;
    let job = t.wait_done(&alone, Duration::from_secs(60)).await;
    let baseline = started.elapsed();
    assert_eq!(job["status"], "completed", "{job}");
    // Now with a stream opened and never read while the job runs.
    let started = Instant::now();
    let id = t.submit(command).await;
    let mut stalled = t.open(&id, None).await;
    let job = t.wait_done(&id, Duration::from_secs(60)).await;
    let took = started.elapsed();
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["output_bytes"], 50_000_000);
    assert!(
        took < baseline * 2 + Duration::from_secs(1),
        "with a stalled reader the job took {took:?}, alone {baseline:?}"
    );
    // The stalled reader, read now, still gets all of it and the end (from the database).
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
        replay_and_resume(&Target::of(&app, &server)).await;
        app.stop().await;
    }
);

db_test!(
    a_resume_while_the_job_runs_joins_replay_and_live_exactly,
    |db: TestDb| async move {
        let (app, _host, server) = TestApp::with_host(&db, &[]).await;
        resume_while_running(&Target::of(&app, &server)).await;
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
        stalled_reader(&Target::of(&app, &server)).await;
        app.stop().await;
    }
);
