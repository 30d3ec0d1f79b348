//! Following a job or a run to its end: the event stream (`GET /jobs/:id/stream`,
//! `GET /runs/:id/stream`), reconnecting with `Last-Event-ID` when the connection drops
//! ([`follow_events`]); for a job, polling `GET /jobs/:id` when the service has no stream
//! (404/405 on the route). A job's output is written through as it arrives; a run's goes
//! through [`crate::prefixed`].

use std::time::{Duration, Instant};

use anyhow::anyhow;
use eventsource_stream::{EventStreamError, Eventsource};
use futures::{Stream, StreamExt};
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};

use crate::client::{Api, error_of, job_path};
use crate::{Output, output};

/// Consecutive failed reconnections before giving up.
const MAX_RECONNECTS: u32 = 10;
/// A stream silent this long is presumed dead and reconnected.
const IDLE: Duration = Duration::from_secs(60);
/// Poll period without a stream.
const POLL: Duration = Duration::from_millis(200);

/// The exit status `jobctl` mirrors for a finished job: the job's exit code; 124 timed
/// out; 130 canceled; 1 failed without a code.
pub fn exit_status(job: &Value) -> u8 {
    let code = job["exit_code"].as_i64();
    match job["status"].as_str() {
        Some("completed") => code.and_then(|c| u8::try_from(c).ok()).unwrap_or(0),
        Some("timed_out") => 124,
        Some("canceled") => 130,
        _ => code
            .and_then(|c| u8::try_from(c).ok())
            .filter(|c| *c != 0)
            .unwrap_or(1),
    }
}

/// The end of a followed job as `jobctl` shows it: for people, a sentence on stderr when the
/// job ended without running to its own exit code; then the exit status it mirrors.
pub fn finish(output: Output, job: &Value) -> u8 {
    let status = job["status"].as_str().unwrap_or("?");
    let ran = status == "completed" || (status == "failed" && job["exit_code"].is_i64());
    if output == Output::Table && !ran {
        let id = job["id"].as_str().unwrap_or("?");
        let why = job["error"].as_str().map(|e| format!(": {e}"));
        let line = format!("jobctl: job {id} {status}{}\n", why.unwrap_or_default());
        output::write_stderr(line.as_bytes());
    }
    exit_status(job)
}

/// What a followed stream is about, for its messages: `job 3f…`, and the command that
/// resumes following it.
pub struct Subject<'a> {
    /// `job` or `run`.
    pub kind: &'a str,
    /// Its id.
    pub id: &'a str,
    /// The command that resumes following it, for the message when the stream is lost.
    pub resume: String,
}

/// Follow the event stream at API path `path` to its `complete` event, reconnecting with
/// `Last-Event-ID` when the connection drops; every event goes to `on_event(kind, id, data)`
/// (its data parsed as JSON). Returns the `complete` event's data, or `Ok(None)` when the
/// first connection answers 404 or 405 (no such thing, or a service without the stream).
pub async fn follow_events(
    api: &Api,
    path: &str,
    subject: &Subject<'_>,
    mut on_event: impl FnMut(&str, Option<&str>, &Value),
) -> anyhow::Result<Option<Value>> {
    // The id of the last event received, sent as `Last-Event-ID` when reconnecting.
    let mut last_id: Option<String> = None;
    let mut connected_once = false;
    let mut failures: u32 = 0;
    loop {
        let mut req = api.stream_request(path);
        if let Some(l) = &last_id {
            req = req.header("Last-Event-ID", l);
        }
        // Why this connection failed or ended before the stream's subject did.
        let lost = match req.send().await {
            Err(e) if !connected_once => return Err(api.transport_error(&e)),
            Err(e) => api.transport_error(&e).to_string(),
            Ok(resp) if resp.status().is_success() => {
                connected_once = true;
                let opened = Instant::now();
                let lost = match read(resp, subject, &mut last_id, &mut on_event).await {
                    Ok(last) => return Ok(Some(last)),
                    Err(lost) => lost,
                };
                // A connection that lived a while resets the count of failures.
                if opened.elapsed() > Duration::from_secs(5) {
                    failures = 0;
                }
                lost
            }
            Ok(resp) => {
                let status = resp.status();
                let no_stream = [StatusCode::NOT_FOUND, StatusCode::METHOD_NOT_ALLOWED];
                if !connected_once && no_stream.contains(&status) {
                    return Ok(None);
                }
                let err = error_of(resp).await;
                let transient = status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS;
                if !(connected_once && transient) {
                    return Err(err.into());
                }
                err.to_string()
            }
        };
        failures += 1;
        if failures > MAX_RECONNECTS {
            let Subject { kind, id, resume } = subject;
            return Err(anyhow!(
                "lost the event stream of {kind} {id} ({lost}); `{resume}` resumes"
            ));
        }
        tokio::time::sleep(Duration::from_millis(200 * u64::from(failures))).await;
    }
}

/// Pass on the events of one connection: the `complete` event's data, or why the stream
/// ended before it.
async fn read(
    resp: Response,
    subject: &Subject<'_>,
    last_id: &mut Option<String>,
    on_event: &mut impl FnMut(&str, Option<&str>, &Value),
) -> Result<Value, String> {
    let mut events = std::pin::pin!(chunks(resp).eventsource());
    while let Some(ev) = events.next().await {
        let ev = ev.map_err(|e| match e {
            EventStreamError::Transport(dropped) => dropped,
            other => format!("the event stream does not parse ({other})"),
        })?;
        // Every event of the service has an `id:` (the last one is carried over).
        let id = Some(ev.id.as_str()).filter(|id| !id.is_empty());
        if let Some(id) = id {
            *last_id = Some(id.to_string());
        }
        let Ok(data) = serde_json::from_str::<Value>(&ev.data) else {
            continue;
        };
        on_event(&ev.event, id, &data);
        if ev.event == "complete" {
            return Ok(data);
        }
    }
    Err(format!(
        "the service closed the stream before the {} ended",
        subject.kind
    ))
}

/// Shows one job's events, remembering what it has shown.
struct JobShow {
    /// What to show: nothing (`wait`); for `Table` the output as text, stdout to stdout and
    /// stderr to stderr; for `Json` every event as one JSON line `{"event", "id", "data"}`.
    show: Option<Output>,
    /// The last output sequence number shown.
    shown: i64,
}

impl JobShow {
    /// Show one event as asked: an `output` event's text (`output` of `seq` on `stream`,
    /// skipped when that sequence number was shown already), or any event as a JSON line.
    fn show(&mut self, kind: &str, id: Option<&str>, data: &Value) {
        if kind == "output" {
            let seq = data["seq"].as_i64().unwrap_or(self.shown + 1);
            if seq <= self.shown {
                return;
            }
            self.shown = seq;
        }
        match self.show {
            Some(Output::Json) => {
                let line = json!({"event": kind, "id": id, "data": data});
                output::write_stdout(format!("{line}\n").as_bytes());
            }
            Some(Output::Table) if kind == "output" => {
                let text = data["output"].as_str().unwrap_or("").as_bytes();
                match data["stream"].as_str() {
                    Some("stderr") => output::write_stderr(text),
                    None if data["is_stderr"] == true => output::write_stderr(text),
                    _ => output::write_stdout(text),
                }
            }
            _ => {}
        }
    }

    /// Without a stream: poll the job, and its output chunks when it has grown.
    async fn poll(mut self, api: &Api, id: &str) -> anyhow::Result<Value> {
        let chunks_path = job_path(id, "/logs?format=chunks");
        let mut seen_bytes: i64 = -1;
        let mut first = true;
        loop {
            let job = api.get(&job_path(id, "")).await?;
            if first {
                self.show("status", None, &job);
                first = false;
            }
            let done = !matches!(job["status"].as_str(), Some("queued" | "running"));
            let bytes = job["output_bytes"].as_i64().unwrap_or(0);
            if self.show.is_some() && (bytes != seen_bytes || done) {
                let chunks = api.get(&chunks_path).await?;
                for c in chunks.as_array().into_iter().flatten() {
                    // As the stream's `output` event would carry it.
                    let seq = c["seq"].as_i64().unwrap_or(-1);
                    let stream = c["stream"].as_str().unwrap_or("stdout");
                    let text = c["data"].as_str().unwrap_or("");
                    let data = json!({
                        "job_id": id, "seq": seq, "stream": stream,
                        "is_stderr": stream == "stderr", "output": text, "timestamp": c["at"],
                    });
                    self.show("output", Some(&seq.to_string()), &data);
                }
                seen_bytes = bytes;
            }
            if done {
                self.show("complete", None, &job);
                return Ok(job);
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// The body of `resp` as it arrives, ending in an error when no bytes come for [`IDLE`]
/// (keep-alive comments count: they are bytes, though not events) or the connection fails.
fn chunks(resp: Response) -> impl Stream<Item = Result<impl AsRef<[u8]>, String>> {
    futures::stream::unfold(resp.bytes_stream(), |mut body| async move {
        let item = match tokio::time::timeout(IDLE, body.next()).await {
            Err(_) => Err(format!("no event for {}s", IDLE.as_secs())),
            Ok(None) => return None,
            Ok(Some(chunk)) => chunk.map_err(|e| format!("the connection dropped: {e}")),
        };
        Some((item, body))
    })
}

/// Follow job `id` until it ends, showing its output as asked; returns the final job.
pub async fn follow(api: &Api, id: &str, show: Option<Output>) -> anyhow::Result<Value> {
    let mut shown = JobShow { show, shown: -1 };
    let subject = Subject {
        kind: "job",
        id,
        resume: format!("jobctl logs --follow {id}"),
    };
    let path = job_path(id, "/stream");
    match follow_events(api, &path, &subject, |k, i, d| shown.show(k, i, d)).await? {
        Some(job) => Ok(job),
        None => {
            // An unknown job is an error; a service without the stream is polled.
            api.get(&job_path(id, "")).await?;
            shown.poll(api, id).await
        }
    }
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
