//! `GET /runs/{id}/stream`: Server-Sent Events of every host of a run — `run` first, then
//! each host's `status`, `output` and `host_complete`, each naming its server, and
//! `complete` (the final run) at the end.
//!
//! The run is followed by the engine ([`crate::engine::Engine::follow_run`]: each admitted
//! host replayed from the database, then live, hosts admitted meanwhile picked up); one task
//! per client writes its events as frames. Every event's `id:` is the run's cursor: the last output sequence number sent
//! of each host, in host order, joined by `.` (`4.-1.12`). A client that reconnects with
//! `Last-Event-ID` set to it gets, for each host, exactly the output after its number.

use std::time::Duration;

use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse, get, web};
use serde::Serialize;
use tokio::sync::mpsc;

use super::jobs::JobView;
use super::runs::{RunView, run_id};
use super::stream::{Utf8Carry, frame, sse_response};
use super::{AppState, BadRequest, Errors, NotFound, TooManyRequests, Unauthorized, Unavailable};
use crate::domain::{Micros, OutputStream};
use crate::engine::follow::Gone;
use crate::engine::{Engine, RunEvent};
use crate::error::ApiError;
use crate::store::{JobRow, Run};

/// How often an idle stream gets a keep-alive comment.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Events buffered per client before its task waits for it.
const CLIENT_BUFFER: usize = 64;

/// The headers of `GET /runs/{id}/stream`.
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[expect(dead_code, reason = "describes the header the handler reads itself")]
pub struct RunStreamHeaders {
    /// Resume after this cursor (the `id:` of the last event received).
    #[param(
        rename = "Last-Event-ID",
        nullable = false,
        pattern = "^-?[0-9]+(\\.-?[0-9]+)*$"
    )]
    last_event_id: Option<String>,
}

/// One event of a run's stream, as an SSE client parses it.
#[derive(Debug, utoipa::ToSchema)]
#[expect(
    dead_code,
    reason = "describes the frames the stream writes; never built"
)]
pub struct RunSseEvent {
    /// `run`, `status`, `output`, `host_complete` or `complete`.
    #[schema(pattern = "^(run|status|output|host_complete|complete)$")]
    event: String,
    /// The run's cursor (each host's last output sequence number, joined by `.`): resume
    /// with `Last-Event-ID`.
    #[schema(pattern = "^-?[0-9]+(\\.-?[0-9]+)*$")]
    id: String,
    /// One line of JSON: the run object (`run`, `complete`), a `HostEvent` (`status`,
    /// `host_complete`) or a `HostOutputEvent` (`output`).
    data: String,
}

/// The `data:` of a `status` or `host_complete` event: a host's job.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HostEvent {
    /// The host's place in the run.
    position: usize,
    /// Its server.
    #[schema(format = Uuid)]
    server_id: String,
    /// Its server's name.
    server_name: String,
    /// Its job, as it is now.
    job: JobView,
}

/// The `data:` of an `output` event.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HostOutputEvent {
    /// The host's place in the run.
    position: usize,
    /// Its server.
    #[schema(format = Uuid)]
    server_id: String,
    /// Its server's name.
    server_name: String,
    /// Its job.
    #[schema(format = Uuid)]
    job_id: String,
    /// The chunk's sequence number in its job.
    seq: i64,
    /// Which stream it came from.
    stream: OutputStream,
    /// `stream` is `stderr`.
    is_stderr: bool,
    /// The text (a character split across chunks arrives whole).
    output: String,
    /// When it arrived.
    timestamp: Micros,
}

/// Parse a cursor this stream sent: one number from -1 per host.
fn parse_cursor(raw: &str, hosts: usize) -> Option<Vec<i64>> {
    let cursor: Vec<i64> = raw
        .trim()
        .split('.')
        .map(|n| n.parse::<i64>().ok().filter(|n| *n >= -1))
        .collect::<Option<_>>()?;
    (cursor.len() == hosts).then_some(cursor)
}

fn cursor_id(cursor: &[i64]) -> String {
    cursor
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

/// The frame writer of one client: the cursor, each host's UTF-8 carries.
struct Writer {
    run: Run,
    cursor: Vec<i64>,
    carries: Vec<[Utf8Carry; 2]>,
    out: mpsc::Sender<Bytes>,
}

impl Writer {
    async fn send(&self, event: &str, data: &impl Serialize) -> Result<(), Gone> {
        let bytes = frame(cursor_id(&self.cursor), event, data);
        self.out.send(bytes).await.map_err(|_| Gone)
    }

    fn host_event(&self, position: usize, row: &JobRow) -> HostEvent {
        let host = &self.run.hosts[position].host;
        HostEvent {
            position,
            server_id: host.server_id.clone(),
            server_name: host.server_name.clone(),
            job: JobView::of(row),
        }
    }

    async fn output_text(
        &self,
        position: usize,
        seq: i64,
        stream: OutputStream,
        output: String,
        at: i64,
    ) -> Result<(), Gone> {
        let host = &self.run.hosts[position];
        let data = HostOutputEvent {
            position,
            server_id: host.host.server_id.clone(),
            server_name: host.host.server_name.clone(),
            job_id: host.host.job_id.clone().unwrap_or_default(),
            seq,
            stream,
            is_stderr: stream == OutputStream::Stderr,
            output,
            timestamp: Micros(at),
        };
        self.send("output", &data).await
    }

    /// Rebuild the UTF-8 carries of the hosts resumed mid-way, as they stood at the cursor.
    async fn prime(&mut self, engine: &Engine) {
        for (i, host) in self.run.hosts.iter().enumerate() {
            let (Some(job), last) = (&host.job, self.cursor[i]) else {
                continue;
            };
            if last < 0 {
                continue;
            }
            let tail = (engine.output_before(&job.id, last, 16).await).unwrap_or_default();
            for c in tail {
                let _ = self.carries[i][c.stream().code() as usize & 1].push(&c.data);
            }
        }
    }

    /// Write one event of the run; `false` after the last.
    async fn event(&mut self, event: RunEvent) -> Result<bool, Gone> {
        match event {
            RunEvent::Run(run) => self.run = run,
            RunEvent::Status { position, job } => {
                self.send("status", &self.host_event(position, &job))
                    .await?;
            }
            RunEvent::Output { position, chunk } => {
                self.cursor[position] = self.cursor[position].max(chunk.seq);
                let stream = chunk.stream();
                let text = self.carries[position][stream.code() as usize & 1].push(&chunk.data);
                if !text.is_empty() {
                    self.output_text(position, chunk.seq, stream, text, chunk.at)
                        .await?;
                }
            }
            RunEvent::HostComplete { position, job } => {
                for stream in [OutputStream::Stdout, OutputStream::Stderr] {
                    let rest = self.carries[position][stream.code() as usize & 1].finish();
                    if !rest.is_empty() {
                        let seq = self.cursor[position];
                        self.output_text(position, seq, stream, rest, Micros::now().0)
                            .await?;
                    }
                }
                self.send("host_complete", &self.host_event(position, &job))
                    .await?;
            }
            RunEvent::Complete(run) => {
                self.run = run;
                self.send("complete", &RunView::of(&self.run)).await?;
                return Ok(false);
            }
        }
        Ok(true)
    }

    async fn run(
        mut self,
        engine: Engine,
        mut events: mpsc::Receiver<RunEvent>,
    ) -> Result<(), Gone> {
        self.prime(&engine).await;
        self.send("run", &RunView::of(&self.run)).await?;
        let mut idle = tokio::time::interval(KEEP_ALIVE);
        idle.tick().await;
        loop {
            tokio::select! {
                ev = events.recv() => {
                    let Some(ev) = ev else { return Ok(()) };
                    if !self.event(ev).await? {
                        return Ok(());
                    }
                    idle.reset();
                }
                _ = idle.tick() => {
                    self.out.send(Bytes::from_static(b": keep-alive\n\n")).await.map_err(|_| Gone)?;
                }
            }
        }
    }
}

/// Follow a run live (Server-Sent Events)
///
/// Events: `run` (data: the run object; first), `status` (data: a `HostEvent`, on each
/// status change of a host's job), `output` (data: a `HostOutputEvent`), `host_complete`
/// (data: a `HostEvent` with the host's final job), `complete` (data: the final run
/// object; then the stream ends). Every event names its host's server. Every `id:` is the
/// run's cursor: reconnecting with `Last-Event-ID` resumes each host exactly after what was
/// sent. A stream opened on a finished run replays it and ends. Idle streams get a
/// `: keep-alive` comment every 15 s.
#[utoipa::path(
    operation_id = "stream_run",
    tag = "runs",
    params(
        ("id" = uuid::Uuid, Path, description = "The run's id."),
        RunStreamHeaders,
    ),
    responses(
        (status = 200, description = "`text/event-stream` of `run`, `status`, `output`, `host_complete` and `complete` events.", body = RunSseEvent, content_type = "text/event-stream"),
        Errors<(BadRequest, Unauthorized, NotFound, TooManyRequests, Unavailable)>,
    )
)]
#[get("/runs/{id}/stream")]
pub async fn follow_run(
    state: web::Data<AppState>,
    caller: web::ReqData<super::auth::Caller>,
    path: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let id = run_id(&path)?;
    let run = state.engine.run(&caller.actor(), id).await?;
    let hosts = run.hosts.len();
    let cursor = match req.headers().get("last-event-id") {
        None => vec![-1; hosts],
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| parse_cursor(v, hosts))
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "Last-Event-ID is not the id of an event of this stream \
                     ({hosts} numbers from -1, joined by '.')"
                ))
            })?,
    };
    let slot = state
        .limits
        .open_stream(&caller.limit_key(state.tokens.enabled()))?;
    let (out, rx) = mpsc::channel::<Bytes>(CLIENT_BUFFER);
    let (events_tx, events) = mpsc::channel(CLIENT_BUFFER);
    let follow = state
        .engine
        .follow_run(run.clone(), cursor.clone(), events_tx);
    let writer = Writer {
        run,
        cursor,
        carries: (0..hosts).map(|_| Default::default()).collect(),
        out,
    };
    let engine = state.engine.clone();
    actix_web::rt::spawn(follow.run());
    actix_web::rt::spawn(async move {
        let _ = writer.run(engine, events).await;
        drop(slot);
    });
    Ok(sse_response(rx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips_and_must_fit_the_run() {
        assert_eq!(cursor_id(&[4, -1, 12]), "4.-1.12");
        assert_eq!(parse_cursor("4.-1.12", 3), Some(vec![4, -1, 12]));
        assert_eq!(parse_cursor("4.-1", 3), None);
        assert_eq!(parse_cursor("4.-2.1", 3), None);
        assert_eq!(parse_cursor("x", 1), None);
    }
}
