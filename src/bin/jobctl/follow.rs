//! Following a job to its end: the event stream (`GET /jobs/:id/stream`), reconnecting with
//! `Last-Event-ID` when the connection drops; polling `GET /jobs/:id` when the service has
//! no stream (404/405 on the route). Output is written through as it arrives.

use std::time::{Duration, Instant};

use anyhow::anyhow;
use eventsource_stream::{EventStreamError, Eventsource};
use futures::{Stream, StreamExt};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::client::{Api, error_of};
use crate::output;

/// What to do with the job's output while following.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    /// Nothing (`wait`).
    Nothing,
    /// The output as text: stdout to stdout, stderr to stderr.
    Text,
    /// Every event as one JSON line `{"event", "id", "data"}` on stdout.
    JsonEvents,
}

/// Consecutive failed reconnections before giving up.
const MAX_RECONNECTS: u32 = 10;
/// A stream silent this long is presumed dead and reconnected.
const IDLE: Duration = Duration::from_secs(60);
/// Poll period without a stream.
const POLL: Duration = Duration::from_millis(200);

/// Whether a status is terminal.
pub fn is_terminal(status: &str) -> bool {
    !matches!(status, "queued" | "running")
}

/// The exit status `jobctl` mirrors for a finished job: the job's exit code; 124 timed
/// out; 130 canceled; 1 failed without a code.
pub fn exit_status(job: &Value) -> u8 {
    let code = job["exit_code"].as_i64();
    match job["status"].as_str() {
        Some("completed") => code.and_then(|c| u8::try_from(c).ok()).unwrap_or(0),
        Some("timed_out") => 124,
        Some("canceled") => 130,
        _ => match code {
            Some(c) if c != 0 => u8::try_from(c).ok().filter(|c| *c != 0).unwrap_or(1),
            _ => 1,
        },
    }
}

/// A sentence on stderr when a job ended without running to its own exit code.
pub fn report_abnormal_end(job: &Value) {
    let status = job["status"].as_str().unwrap_or("?");
    let ran = job["exit_code"].is_i64();
    if status == "completed" || (status == "failed" && ran) {
        return;
    }
    let id = job["id"].as_str().unwrap_or("?");
    let why = job["error"]
        .as_str()
        .map(|e| format!(": {e}"))
        .unwrap_or_default();
    output::write_stderr(format!("jobctl: job {id} {status}{why}\n").as_bytes());
}

/// Follows one job, remembering what it has shown.
struct Follower<'a> {
    api: &'a Api,
    id: &'a str,
    show: Show,
    /// The last output sequence number shown.
    shown: i64,
}

impl Follower<'_> {
    fn output(&mut self, seq: i64, stream: &str, text: &str, event: &Value) {
        if seq <= self.shown {
            return;
        }
        self.shown = seq;
        match self.show {
            Show::Nothing => {}
            Show::Text if stream == "stderr" => output::write_stderr(text.as_bytes()),
            Show::Text => output::write_stdout(text.as_bytes()),
            Show::JsonEvents => output::print_json_line(event),
        }
    }

    fn event(&self, kind: &str, id: Option<&str>, data: &Value) {
        if self.show == Show::JsonEvents {
            output::print_json_line(&json!({"event": kind, "id": id, "data": data}));
        }
    }

    /// Follow the stream; fall back to polling when the service has none.
    async fn run(mut self) -> anyhow::Result<Value> {
        let path = format!("/jobs/{}/stream", crate::client::escape(self.id));
        let mut last_id: Option<String> = None;
        let mut connected_once = false;
        let mut failures: u32 = 0;
        let mut last_error = String::new();
        loop {
            if failures > 0 {
                if failures > MAX_RECONNECTS {
                    return Err(anyhow!(
                        "lost the event stream of job {} ({last_error}); `jobctl logs --follow {}` resumes",
                        self.id,
                        self.id
                    ));
                }
                let backoff = Duration::from_millis(200 * u64::from(failures.min(10)));
                tokio::time::sleep(backoff).await;
            }
            let mut req = self.api.stream_request(&path);
            if let Some(l) = &last_id {
                req = req.header("Last-Event-ID", l);
            }
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) if connected_once => {
                    last_error = self.api.transport_error(&e).to_string();
                    failures += 1;
                    continue;
                }
                Err(e) => return Err(self.api.transport_error(&e)),
            };
            let status = resp.status();
            if !status.is_success() {
                if !connected_once
                    && matches!(
                        status,
                        StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED
                    )
                {
                    // An unknown job is an error; a service without the stream is polled.
                    self.api
                        .get(&format!("/jobs/{}", crate::client::escape(self.id)))
                        .await?;
                    return self.poll().await;
                }
                let err = error_of(resp).await;
                if connected_once
                    && (status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS)
                {
                    last_error = err.to_string();
                    failures += 1;
                    continue;
                }
                return Err(err.into());
            }
            connected_once = true;
            let opened = Instant::now();
            let mut events = std::pin::pin!(chunks(resp).eventsource());
            loop {
                let ev = match events.next().await {
                    Some(Ok(ev)) => ev,
                    None => {
                        last_error = "the service closed the stream before the job ended".into();
                        break;
                    }
                    Some(Err(EventStreamError::Transport(Dropped::Idle))) => {
                        last_error = format!("no event for {}s", IDLE.as_secs());
                        break;
                    }
                    Some(Err(EventStreamError::Transport(Dropped::Connection(e)))) => {
                        last_error = format!("the connection dropped: {e}");
                        break;
                    }
                    Some(Err(EventStreamError::Utf8(e))) => {
                        last_error = format!("the event stream is not UTF-8: {e}");
                        break;
                    }
                    Some(Err(EventStreamError::Parser(e))) => {
                        last_error = format!("the event stream does not parse ({:?})", e.code);
                        break;
                    }
                };
                // Every event of the service has an `id:` (the last one is carried over).
                let id = Some(ev.id.as_str()).filter(|id| !id.is_empty());
                if let Some(id) = id {
                    last_id = Some(id.to_string());
                }
                let data: Value = match serde_json::from_str(&ev.data) {
                    Ok(v) => v,
                    Err(_) => continue,
                };
                match ev.event.as_str() {
                    "output" => {
                        let seq = data["seq"].as_i64().unwrap_or(self.shown + 1);
                        let stream = match data["stream"].as_str() {
                            Some(s) => s,
                            None if data["is_stderr"] == true => "stderr",
                            None => "stdout",
                        };
                        let text = data["output"].as_str().unwrap_or("");
                        let event = json!({"event": "output", "id": id, "data": data});
                        self.output(seq, stream, text, &event);
                    }
                    "complete" => {
                        self.event("complete", id, &data);
                        return Ok(data);
                    }
                    other => self.event(other, id, &data),
                }
            }
            // Dropped: a connection that lived a while resets the count of failures.
            if opened.elapsed() > Duration::from_secs(5) {
                failures = 0;
            }
            failures += 1;
        }
    }

    /// Without a stream: poll the job, and its output chunks when it has grown.
    async fn poll(mut self) -> anyhow::Result<Value> {
        let job_path = format!("/jobs/{}", crate::client::escape(self.id));
        let chunks_path = format!(
            "/jobs/{}/logs?format=chunks",
            crate::client::escape(self.id)
        );
        let mut seen_bytes: i64 = -1;
        let mut first = true;
        loop {
            let job = self.api.get(&job_path).await?;
            if first {
                self.event("status", None, &job);
                first = false;
            }
            let done = is_terminal(job["status"].as_str().unwrap_or(""));
            let bytes = job["output_bytes"].as_i64().unwrap_or(0);
            if self.show != Show::Nothing && (bytes != seen_bytes || done) {
                let chunks = self.api.get(&chunks_path).await?;
                for c in chunks.as_array().into_iter().flatten() {
                    let seq = c["seq"].as_i64().unwrap_or(-1);
                    let stream = c["stream"].as_str().unwrap_or("stdout");
                    let text = c["data"].as_str().unwrap_or("");
                    let event = json!({"event": "output", "id": seq.to_string(), "data": {
                        "job_id": self.id, "seq": seq, "stream": stream,
                        "is_stderr": stream == "stderr", "output": text, "timestamp": c["at"],
                    }});
                    self.output(seq, stream, text, &event);
                }
                seen_bytes = bytes;
            }
            if done {
                self.event("complete", None, &job);
                return Ok(job);
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Why an event stream's body ended early.
#[derive(Debug)]
enum Dropped {
    /// Nothing (not even a keep-alive) for [`IDLE`].
    Idle,
    /// The connection failed.
    Connection(reqwest::Error),
}

/// The body of `resp` as it arrives, ending in [`Dropped::Idle`] when no bytes come for
/// [`IDLE`] (keep-alive comments count: they are bytes, though not events).
fn chunks(resp: reqwest::Response) -> impl Stream<Item = Result<impl AsRef<[u8]>, Dropped>> {
    futures::stream::unfold(resp.bytes_stream(), |mut body| async move {
        let item = match tokio::time::timeout(IDLE, body.next()).await {
            Err(_) => Err(Dropped::Idle),
            Ok(None) => return None,
            Ok(Some(chunk)) => chunk.map_err(Dropped::Connection),
        };
        Some((item, body))
    })
}

/// Follow job `id` until it ends, showing its output as asked; returns the final job.
pub async fn follow(api: &Api, id: &str, show: Show) -> anyhow::Result<Value> {
    Follower {
        api,
        id,
        show,
        shown: -1,
    }
    .run()
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The service's events, split anywhere across chunks, come out whole with their ids.
    #[tokio::test]
    async fn events_split_anywhere_across_chunks() {
        let text = ": keep-alive\n\nid: 3\nevent: output\ndata: {\"output\":\"h\u{e9}llo\"}\n\n\
                    id: 4\nevent: complete\ndata: {}\n\n";
        let bytes = text.as_bytes();
        for split in 0..bytes.len() {
            let chunks = [&bytes[..split], &bytes[split..]].map(Ok::<_, std::convert::Infallible>);
            let got: Vec<_> = futures::stream::iter(chunks)
                .eventsource()
                .map(|e| {
                    let e = e.unwrap();
                    (e.id, e.event, e.data)
                })
                .collect()
                .await;
            let want = [
                ("3", "output", "{\"output\":\"h\u{e9}llo\"}"),
                ("4", "complete", "{}"),
            ]
            .map(|(i, e, d)| (i.to_string(), e.to_string(), d.to_string()));
            assert_eq!(got, want, "split at {split}");
        }
    }

    #[test]
    fn exit_status_mirrors_the_job() {
        let st = |s: &str, c: Value| exit_status(&json!({"status": s, "exit_code": c}));
        assert_eq!(st("completed", json!(0)), 0);
        assert_eq!(st("failed", json!(3)), 3);
        assert_eq!(st("failed", Value::Null), 1);
        assert_eq!(st("failed", json!(300)), 1);
        assert_eq!(st("timed_out", Value::Null), 124);
        assert_eq!(st("canceled", Value::Null), 130);
    }
}
