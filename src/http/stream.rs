//! `GET /jobs/{id}/stream`: Server-Sent Events of a job — `status`, `output`, `complete`.
//!
//! Every event's `id:` is the last output sequence number delivered so far (`-1` before
//! any), so a client that reconnects with `Last-Event-ID: n` gets exactly the output after
//! `n`: nothing twice, nothing missed. The first event is always the current status.
//!
//! Each client has its own task and a small bounded buffer; the task is a
//! follow of the engine ([`crate::engine::Engine::follow`]: replay from the database, then live, back to the database on a
//! gap or a lag) feeding an SSE sink. A slow client therefore only ever slows itself; the
//! job and the other clients never wait for it.
//!
//! Output is text: each stream's bytes go through a UTF-8 decoder that carries an incomplete
//! character over to the stream's next chunk, so a character split across chunks arrives
//! whole; bytes that are not UTF-8 become U+FFFD.

use actix_web::get;
use std::convert::Infallible;
use std::time::Duration;

use actix_web::http::header;
use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse, web};
use tokio::sync::mpsc;

use super::jobs::JobView;
use super::{
    AppState, BadRequest, Errors, InvalidField, NotFound, TooManyRequests, Unauthorized,
    Unavailable, job_id,
};
use crate::domain::{Micros, OutputStream};
use crate::engine::Engine;
use crate::engine::follow::{Gone, Sink};
use crate::error::ApiError;
use crate::store::JobRow;

/// How often an idle stream gets a keep-alive comment.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Events buffered per client before its task waits for it.
const CLIENT_BUFFER: usize = 64;

/// UTF-8 decoding across chunk boundaries.
#[derive(Debug, Default)]
pub struct Utf8Carry {
    pending: Vec<u8>,
}

impl Utf8Carry {
    /// Decode `data` after what was carried; keep an incomplete trailing character for later.
    pub fn push(&mut self, data: &[u8]) -> String {
        let mut buf = std::mem::take(&mut self.pending);
        buf.extend_from_slice(data);
        let mut out = String::with_capacity(buf.len());
        let mut chunks = buf.utf8_chunks().peekable();
        while let Some(chunk) = chunks.next() {
            out.push_str(chunk.valid());
            let invalid = chunk.invalid();
            // Only the last chunk's invalid bytes can be a character still incomplete.
            let incomplete = chunks.peek().is_none()
                && std::str::from_utf8(invalid).is_err_and(|e| e.error_len().is_none());
            if incomplete {
                self.pending = invalid.to_vec();
            } else if !invalid.is_empty() {
                out.push(char::REPLACEMENT_CHARACTER);
            }
        }
        out
    }

    /// What is left at the end of the stream, replaced if it never completed.
    pub fn finish(&mut self) -> String {
        String::from_utf8_lossy(&std::mem::take(&mut self.pending)).into_owned()
    }
}

/// An SSE client: events as frames, each stream's bytes through its UTF-8 carry.
struct SseSink {
    job_id: String,
    stdout: Utf8Carry,
    stderr: Utf8Carry,
    tx: mpsc::Sender<Bytes>,
}

/// The headers of `GET /jobs/{id}/stream`.
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[expect(dead_code, reason = "describes the header the handler reads itself")]
pub struct StreamHeaders {
    /// Resume after this output sequence number (the `id:` of the last event received).
    #[param(rename = "Last-Event-ID", minimum = -1, nullable = false)]
    last_event_id: Option<i64>,
}

/// The query of `GET /jobs/{id}/stream`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// Start after this output sequence number, as `Last-Event-ID` does (which wins when
    /// both are sent): for a client that read the output so far another way (`EventSource`
    /// cannot send the header on its first request).
    #[param(minimum = -1)]
    after: Option<i64>,
}

/// One event of the stream, as an SSE client parses it.
#[derive(Debug, utoipa::ToSchema)]
#[expect(dead_code, reason = "describes the frames `frame` writes; never built")]
pub struct SseEvent {
    /// `status`, `output` or `complete`.
    #[schema(pattern = "^(status|output|complete)$")]
    event: String,
    /// The last output sequence number sent (`-1` before any): resume with `Last-Event-ID`.
    #[schema(pattern = "^-?[0-9]+$")]
    id: String,
    /// One line of JSON: the job object (`status`, `complete`) or an `OutputEvent`.
    data: String,
}

/// The `data:` of an `output` event of the stream.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct OutputEvent<'a> {
    /// The job's id.
    #[schema(value_type = String, format = Uuid)]
    job_id: &'a str,
    /// The chunk's sequence number (also the event's `id:`).
    seq: i64,
    /// Which stream it came from.
    stream: OutputStream,
    /// `stream` is `stderr` (the seed's flag).
    is_stderr: bool,
    /// The text; a character split across chunks arrives whole, bytes that are not UTF-8
    /// are replaced.
    output: String,
    /// When it arrived.
    timestamp: Micros,
}

/// One SSE frame: `id:`, `event:` and one line of JSON.
pub(super) fn frame(
    id: impl std::fmt::Display,
    event: &str,
    data: &impl serde::Serialize,
) -> Bytes {
    let data = serde_json::to_string(data).unwrap_or_default();
    Bytes::from(format!("id: {id}\nevent: {event}\ndata: {data}\n\n"))
}

impl SseSink {
    async fn send(&self, bytes: Bytes) -> Result<(), Gone> {
        self.tx.send(bytes).await.map_err(|_| Gone)
    }

    fn carry(&mut self, stream: OutputStream) -> &mut Utf8Carry {
        match stream {
            OutputStream::Stdout => &mut self.stdout,
            OutputStream::Stderr => &mut self.stderr,
        }
    }

    async fn output_text(
        &self,
        seq: i64,
        stream: OutputStream,
        text: String,
        at: i64,
    ) -> Result<(), Gone> {
        let data = OutputEvent {
            job_id: &self.job_id,
            seq,
            stream,
            is_stderr: stream == OutputStream::Stderr,
            output: text,
            timestamp: Micros(at),
        };
        self.send(frame(seq, "output", &data)).await
    }

    /// Rebuild the UTF-8 carries as they stood after `last` (a resumed stream).
    async fn prime(&mut self, engine: &Engine, last: i64) {
        if last < 0 {
            return;
        }
        let tail = engine
            .output_before(&self.job_id, last, 16)
            .await
            .unwrap_or_default();
        for c in tail {
            let _ = self.carry(c.stream()).push(&c.data);
        }
    }
}

impl Sink for SseSink {
    async fn status(&mut self, last: i64, row: &JobRow) -> Result<(), Gone> {
        self.send(frame(last, "status", &JobView::of(row))).await
    }

    async fn output(
        &mut self,
        seq: i64,
        stream: OutputStream,
        data: &[u8],
        at: i64,
    ) -> Result<(), Gone> {
        let text = self.carry(stream).push(data);
        if text.is_empty() {
            // All of it is carried into the stream's next chunk; a resume from an earlier id
            // rebuilds the carry from the database.
            return Ok(());
        }
        self.output_text(seq, stream, text, at).await
    }

    async fn complete(&mut self, last: i64, row: &JobRow) -> Result<(), Gone> {
        // Bytes still carried at the end never completed a character: send them replaced.
        for stream in [OutputStream::Stdout, OutputStream::Stderr] {
            let rest = self.carry(stream).finish();
            if !rest.is_empty() {
                self.output_text(last, stream, rest, Micros::now().0)
                    .await?;
            }
        }
        self.send(frame(last, "complete", &JobView::of(row))).await
    }

    async fn idle(&mut self) -> Result<(), Gone> {
        self.send(Bytes::from_static(b": keep-alive\n\n")).await
    }

    fn gone(&self) -> impl std::future::Future<Output = ()> + 'static {
        let tx = self.tx.clone();
        async move { tx.closed().await }
    }
}

/// Follow a job live (Server-Sent Events)
///
/// Events: `status` (data: the job object, on every status change; the first event is the
/// current status), `output` (data: an `OutputEvent`), `complete` (data: the final job
/// object; then the stream ends). Each `data:` is one line of JSON. Every event's `id:` is
/// the last output sequence number sent (`-1` before any): reconnecting with
/// `Last-Event-ID` resumes exactly after it. A stream opened on a finished job replays its
/// output and ends at once. Idle streams get a `: keep-alive` comment every 15 s.
/// `?after=n` starts the first connection after seq `n`, as `Last-Event-ID: n` would.
#[utoipa::path(
    operation_id = "stream_job",
    tag = "jobs",
    params(
        ("id" = uuid::Uuid, Path, description = "The job's id."),
        StreamHeaders,
        StreamQuery,
    ),
    responses(
        (status = 200, description = "`text/event-stream` of `status`, `output` (data: `OutputEvent`) and `complete` events.", body = SseEvent, content_type = "text/event-stream"),
        Errors<(BadRequest, Unauthorized, NotFound, InvalidField, TooManyRequests, Unavailable)>,
    )
)]
#[get("/jobs/{id}/stream")]
pub async fn follow_job(
    state: web::Data<AppState>,
    caller: web::ReqData<super::auth::Caller>,
    path: web::Path<String>,
    query: web::Query<StreamQuery>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let id = job_id(&path)?;
    let after = match query.after {
        None => -1,
        Some(n) if n >= -1 => n,
        Some(n) => {
            return Err(crate::domain::FieldError::new("after", format!("{n} is below -1")).into());
        }
    };
    // Counted until the client's task ends (the job ended, or the client went away).
    let slot = state
        .limits
        .open_stream(&caller.limit_key(state.tokens.enabled()))?;
    let last = match req.headers().get("last-event-id") {
        None => after,
        // Only ids this stream sent come back: anything else is a client's mistake.
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<i64>().ok())
            .filter(|n| *n >= -1)
            .ok_or_else(|| {
                ApiError::BadRequest(
                    "Last-Event-ID is not the id of an event of this stream (an integer from -1)"
                        .into(),
                )
            })?,
    };
    let (tx, rx) = mpsc::channel::<Bytes>(CLIENT_BUFFER);
    let sink = SseSink {
        job_id: id.to_string(),
        stdout: Utf8Carry::default(),
        stderr: Utf8Carry::default(),
        tx,
    };
    let mut task = state.engine.follow(&caller.actor(), id, last, sink).await?;
    let engine = state.engine.clone();
    actix_web::rt::spawn(async move {
        task.sink_mut().prime(&engine, last).await;
        task.keep_alive(KEEP_ALIVE).run().await;
        drop(slot);
    });
    Ok(sse_response(rx))
}

/// A `text/event-stream` response of the frames `rx` brings (uncached, unbuffered by
/// proxies); it ends when the sending task drops its end.
pub(super) fn sse_response(mut rx: mpsc::Receiver<Bytes>) -> HttpResponse {
    let body =
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|o| o.map(Ok::<_, Infallible>)));
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body)
}

#[cfg(test)]
mod tests {
    use super::Utf8Carry;

    #[test]
    fn a_split_character_arrives_whole() {
        let euro = "€".as_bytes(); // 3 bytes
        let mut c = Utf8Carry::default();
        assert_eq!(c.push(&[b'a', euro[0]]), "a");
        assert_eq!(c.push(&euro[1..2]), "");
        assert_eq!(c.push(&[euro[2], b'b']), "€b");
        assert_eq!(c.finish(), "");
    }

    #[test]
    fn invalid_bytes_are_replaced() {
        let mut c = Utf8Carry::default();
        assert_eq!(c.push(b"x\xffy"), "x\u{FFFD}y");
        assert_eq!(c.push(b"\xe2\x82"), "");
        assert_eq!(c.finish(), "\u{FFFD}");
    }
}
