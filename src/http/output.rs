//! A job's stored output: `GET /jobs/{id}/logs` (JSON), `/stdout` and `/stderr` (raw bytes),
//! and `/output?offset=&limit=`, a byte range of the combined output (see [`job_output`]).
//! A job whose output retention deleted says so: `output_pruned_at` in the logs, and the
//! header [`PRUNED_HEADER`] on every one of these responses.
//!
//! Streamed, never built whole: the output is read from the database [`PAGE`] chunks at a
//! time and sent as it is read, in frames of at most [`FRAME`] bytes through a channel of
//! [`IN_FLIGHT`] frames; a response therefore holds about one page and a few frames however
//! much the job printed, and the readers of many at once take their turns
//! ([`super::limits::Limits::heavy_read`]).
//!
//! The bytes are those a `serde_json` encoding of the whole would give: each of `stdout`,
//! `stderr` and `output` is decoded through one [`Utf8Carry`] (a character split across
//! chunks arrives whole; invalid bytes are replaced as in the whole text) and escaped piece
//! by piece, which JSON strings allow.

use std::io;

use actix_web::web::{Bytes, BytesMut};
use actix_web::{HttpResponse, get, web};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use utoipa::{IntoParams, ToSchema};

use super::stream::Utf8Carry;
use super::{
    AppState, BadRequest, Errors, InvalidField, NotFound, Unauthorized, Unavailable, job_id,
};
use crate::domain::{FieldError, JobStatus, Micros, OutputStream};
use crate::engine::{Engine, Error};
use crate::error::ApiError;
use crate::store::{ChunkRow, JobRow, OutputExtent};

/// Chunks per database read.
const PAGE: i64 = 16;
/// Most bytes in one frame of a response body.
const FRAME: usize = 64 * 1024;
/// Frames waiting for the client before the reader waits too.
const IN_FLIGHT: usize = 4;
/// Most bytes of output one range read returns.
pub const MAX_RANGE: i64 = 4 * 1024 * 1024;
/// Bytes of output a range read returns when it names no limit.
const DEFAULT_RANGE: i64 = 1024 * 1024;
/// A range record's header: the stream's code (1 byte) and the length (4 bytes, big-endian).
const RECORD_HEADER: usize = 5;

/// Query of `GET /jobs/{id}/logs`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// `json` (default): the seed's shape; `chunks`: the output as stored, chunk by chunk.
    #[param(value_type = Option<String>, pattern = "^(json|chunks)?$")]
    format: Option<String>,
}

/// `GET /api/v1/jobs/{id}/logs` (the seed's shape).
#[derive(Debug, Serialize, ToSchema)]
pub struct JobLogs {
    /// The job's id.
    #[schema(format = Uuid)]
    job_id: String,
    /// The job's status.
    status: JobStatus,
    /// The exit code, null until known.
    #[schema(required = true)]
    exit_code: Option<i32>,
    /// Everything written to stdout so far.
    stdout: String,
    /// Everything written to stderr so far.
    stderr: String,
    /// stdout and stderr interleaved in arrival order.
    output: String,
    /// When it started.
    #[schema(required = true)]
    started_at: Option<Micros>,
    /// When it ended.
    #[schema(required = true)]
    finished_at: Option<Micros>,
    /// Seconds from start to end, null until it ended.
    #[schema(required = true)]
    duration: Option<f64>,
    /// Whether the output was cut at the configured cap.
    truncated: bool,
    /// When retention deleted the job's output (`[retention] output`): the texts are then
    /// empty because the output is gone, not because the job printed nothing. Null: it was
    /// not pruned.
    #[schema(required = true)]
    output_pruned_at: Option<Micros>,
}

impl JobLogs {
    /// The job's fields, the three texts empty (they are streamed in their place).
    fn of(job: JobRow) -> Self {
        let duration = match (job.started_at, job.finished_at) {
            (Some(s), Some(f)) => Some((f - s) as f64 / 1_000_000.0),
            _ => None,
        };
        JobLogs {
            job_id: job.id,
            status: job.status,
            exit_code: job.exit_code,
            stdout: String::new(),
            stderr: String::new(),
            output: String::new(),
            started_at: job.started_at.map(Micros),
            finished_at: job.finished_at.map(Micros),
            duration,
            truncated: job.output_truncated,
            output_pruned_at: job.output_pruned_at.map(Micros),
        }
    }
}

/// One stored chunk of output (`GET /api/v1/jobs/{id}/logs?format=chunks`).
#[derive(Debug, Serialize, ToSchema)]
pub struct OutputChunk {
    /// Its sequence number in the job's output (the stream's event ids).
    seq: i64,
    /// Which stream it came from.
    stream: OutputStream,
    /// The bytes as text (bytes that are not UTF-8 are replaced).
    data: String,
    /// When it arrived.
    at: Micros,
}

/// `GET /api/v1/jobs/{id}/logs`: the seed's shape, or the chunks with `?format=chunks`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
#[expect(
    dead_code,
    reason = "describes the two shapes the parts write; never built"
)]
pub enum LogsResponse {
    /// Default (`?format=json`).
    Logs(JobLogs),
    /// `?format=chunks`.
    Chunks(Vec<OutputChunk>),
}

/// A piece of a response, in order.
#[derive(Debug, Clone)]
enum Part {
    /// Bytes as they are.
    Literal(String),
    /// The text of one stream (`None`: both, interleaved), escaped as the inside of a JSON
    /// string.
    Text(Option<OutputStream>),
    /// The bytes of one stream as stored.
    Raw(OutputStream),
    /// Every chunk as an [`OutputChunk`], comma-separated.
    Chunks,
}

/// The parts of the seed's shape: `JobLogs` with the three texts streamed in their place.
fn logs_parts(job: JobRow) -> Result<Vec<Part>, ApiError> {
    const EMPTY: &str = r#""stdout":"","stderr":"","output":"""#;
    let json = serde_json::to_string(&JobLogs::of(job))
        .map_err(|e| ApiError::Internal(format!("cannot encode the logs: {e}")))?;
    let Some((head, tail)) = json.split_once(EMPTY) else {
        return Err(ApiError::Internal("the logs' encoding has no texts".into()));
    };
    Ok(vec![
        Part::Literal(format!(r#"{head}"stdout":""#)),
        Part::Text(Some(OutputStream::Stdout)),
        Part::Literal(r#"","stderr":""#.into()),
        Part::Text(Some(OutputStream::Stderr)),
        Part::Literal(r#"","output":""#.into()),
        Part::Text(None),
        Part::Literal(format!(r#""{tail}"#)),
    ])
}

/// `text` escaped as the inside of a JSON string.
fn escaped(text: &str) -> String {
    let quoted = serde_json::Value::from(text).to_string();
    quoted[1..quoted.len() - 1].to_string()
}

/// What one part makes of the chunks given to it one by one.
#[derive(Debug)]
struct Render {
    part: Part,
    carry: Utf8Carry,
    first: bool,
}

impl Render {
    fn new(part: Part) -> Self {
        Render {
            part,
            carry: Utf8Carry::default(),
            first: true,
        }
    }

    /// Whether the part reads the chunks at all.
    fn reads(&self) -> bool {
        !matches!(self.part, Part::Literal(_))
    }

    /// What `chunk` adds to the part (nothing when it is another stream's).
    fn chunk(&mut self, chunk: &ChunkRow) -> Option<Vec<u8>> {
        match &self.part {
            Part::Text(stream) if stream.is_none_or(|s| s == chunk.stream()) => {
                Some(escaped(&self.carry.push(&chunk.data)).into_bytes())
            }
            Part::Raw(stream) if *stream == chunk.stream() => Some(chunk.data.clone()),
            Part::Chunks => {
                let view = OutputChunk {
                    seq: chunk.seq,
                    stream: chunk.stream(),
                    data: String::from_utf8_lossy(&chunk.data).into_owned(),
                    at: Micros(chunk.at),
                };
                let comma = if std::mem::take(&mut self.first) {
                    ""
                } else {
                    ","
                };
                Some(format!("{comma}{}", serde_json::to_string(&view).ok()?).into_bytes())
            }
            _ => None,
        }
    }

    /// What the part adds after the last chunk (or instead of any, for a literal).
    fn end(&mut self) -> Vec<u8> {
        match &self.part {
            Part::Literal(text) => text.clone().into_bytes(),
            Part::Text(_) => escaped(&self.carry.finish()).into_bytes(),
            Part::Raw(_) | Part::Chunks => Vec::new(),
        }
    }
}

/// Bytes cut into frames of [`FRAME`] bytes (the last one shorter).
#[derive(Debug, Default)]
struct Framer {
    buf: BytesMut,
}

impl Framer {
    /// Append `data`; the frames it filled.
    fn push(&mut self, mut data: &[u8]) -> Vec<Bytes> {
        let mut full = Vec::new();
        while !data.is_empty() {
            let n = (FRAME - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.buf.len() == FRAME {
                full.push(self.buf.split().freeze());
            }
        }
        full
    }

    /// What is left.
    fn finish(&mut self) -> Option<Bytes> {
        (!self.buf.is_empty()).then(|| self.buf.split().freeze())
    }
}

/// Why writing a response stopped early.
enum Stop {
    /// The client went away.
    Gone,
    /// The output could not be read.
    Failed(Error),
}

impl From<Error> for Stop {
    fn from(e: Error) -> Self {
        Stop::Failed(e)
    }
}

/// Writes the parts of one response into its channel.
struct Writer {
    engine: Engine,
    job_id: String,
    /// The last chunk stored when the request came: a running job's later output is not
    /// part of this response.
    upto: i64,
    framer: Framer,
    tx: mpsc::Sender<Result<Bytes, io::Error>>,
}

impl Writer {
    async fn send(&mut self, data: &[u8]) -> Result<(), Stop> {
        for frame in self.framer.push(data) {
            self.tx.send(Ok(frame)).await.map_err(|_| Stop::Gone)?;
        }
        Ok(())
    }

    /// One part: the chunks read page by page, each page's pieces sent before the next read.
    async fn part(&mut self, part: Part) -> Result<(), Stop> {
        let mut render = Render::new(part);
        let (mut after, upto) = (-1, self.upto);
        while render.reads() && after < upto {
            let page = self.engine.output_page(&self.job_id, after, PAGE).await?;
            for chunk in page.iter().filter(|c| c.seq <= upto) {
                if let Some(piece) = render.chunk(chunk) {
                    self.send(&piece).await?;
                }
            }
            match page.last() {
                Some(last) if page.len() == PAGE as usize => after = last.seq,
                _ => break,
            }
        }
        self.send(&render.end()).await
    }

    async fn run(mut self, parts: Vec<Part>) {
        for part in parts {
            match self.part(part).await {
                Ok(()) => {}
                Err(Stop::Gone) => return,
                Err(Stop::Failed(e)) => {
                    // The status is sent: all that is left is to cut the body short.
                    tracing::warn!(job_id = %self.job_id, error = %e, "cannot read a job's output");
                    let _ = self
                        .tx
                        .send(Err(io::Error::other("output unreadable")))
                        .await;
                    return;
                }
            }
        }
        if let Some(rest) = self.framer.finish() {
            let _ = self.tx.send(Ok(rest)).await;
        }
    }
}

/// The header that says a job's output was pruned, and when (RFC 3339).
pub const PRUNED_HEADER: &str = "X-Output-Pruned-At";

/// `response` with [`PRUNED_HEADER`] when retention deleted `job`'s output.
fn pruned(
    mut response: actix_web::HttpResponseBuilder,
    job: &JobRow,
) -> actix_web::HttpResponseBuilder {
    if let Some(at) = job.output_pruned_at {
        response.insert_header((PRUNED_HEADER, Micros(at).to_rfc3339()));
    }
    response
}

/// A 200 of `content_type` whose body is `parts` of job `id`'s output, streamed.
async fn respond(
    state: &AppState,
    job: &JobRow,
    parts: Vec<Part>,
    content_type: &str,
) -> Result<HttpResponse, ApiError> {
    let permit = state.limits.heavy_read().await?;
    let last = state.engine.output_before(&job.id, i64::MAX, 1).await?;
    let (tx, rx) = mpsc::channel(IN_FLIGHT);
    let writer = Writer {
        engine: state.engine.clone(),
        job_id: job.id.clone(),
        upto: last.last().map_or(-1, |c| c.seq),
        framer: Framer::default(),
        tx,
    };
    actix_web::rt::spawn(async move {
        writer.run(parts).await;
        drop(permit);
    });
    Ok(pruned(HttpResponse::Ok(), job)
        .content_type(content_type)
        .streaming(body_of(rx)))
}

/// A response body of the frames `rx` brings.
fn body_of(
    mut rx: mpsc::Receiver<Result<Bytes, io::Error>>,
) -> impl futures::Stream<Item = Result<Bytes, io::Error>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Query of `GET /jobs/{id}/output`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RangeQuery {
    /// The first byte to return, counted in the combined output (default 0). Past the end
    /// the body is empty.
    #[param(minimum = 0)]
    offset: Option<i64>,
    /// The most bytes of output to return (default 1048576, at most 4194304).
    #[param(minimum = 1, maximum = 4194304)]
    limit: Option<i64>,
}

/// The body of `GET /jobs/{id}/output`: records of `[stream: u8][length: u32 BE][bytes]`.
#[derive(Debug, ToSchema)]
#[schema(value_type = String, format = Binary)]
#[expect(
    dead_code,
    reason = "describes the bytes the range writer sends; never built"
)]
pub struct OutputRecords(Vec<u8>);

/// The header of one record of a range: the stream's code, then the length big-endian.
fn record_header(stream: OutputStream, len: usize) -> [u8; RECORD_HEADER] {
    let [a, b, c, d] = (len as u32).to_be_bytes();
    [stream.code() as u8, a, b, c, d]
}

/// Writes the bytes `[start, end)` of a job's combined output as records.
struct RangeWriter {
    engine: Engine,
    job_id: String,
    /// The stored output when the request came; later chunks are not read.
    extent: OutputExtent,
    start: i64,
    end: i64,
    framer: Framer,
    tx: mpsc::Sender<Result<Bytes, io::Error>>,
}

impl RangeWriter {
    async fn send(&mut self, data: &[u8]) -> Result<(), Stop> {
        for frame in self.framer.push(data) {
            self.tx.send(Ok(frame)).await.map_err(|_| Stop::Gone)?;
        }
        Ok(())
    }

    /// The records: from the chunk that holds `start`, page by page, up to `end`.
    async fn records(&mut self) -> Result<(), Stop> {
        if self.start >= self.end {
            return Ok(());
        }
        let Some(first) = self.engine.chunk_at(&self.job_id, self.start).await? else {
            return Ok(());
        };
        let (mut after, mut pos) = (first.seq - 1, first.byte_offset);
        let upto = self.extent.last_seq;
        loop {
            let page = self.engine.output_page(&self.job_id, after, PAGE).await?;
            for chunk in page.iter().filter(|c| c.seq <= upto) {
                let len = chunk.data.len() as i64;
                let (from, to) = (self.start.max(pos), self.end.min(pos + len));
                if from < to {
                    let piece = &chunk.data[(from - pos) as usize..(to - pos) as usize];
                    self.send(&record_header(chunk.stream(), piece.len()))
                        .await?;
                    self.send(piece).await?;
                }
                pos += len;
                if pos >= self.end {
                    return Ok(());
                }
            }
            match page.last() {
                Some(last) if page.len() == PAGE as usize && last.seq < upto => after = last.seq,
                _ => return Ok(()),
            }
        }
    }

    async fn run(mut self) {
        match self.records().await {
            Ok(()) => {
                if let Some(rest) = self.framer.finish() {
                    let _ = self.tx.send(Ok(rest)).await;
                }
            }
            Err(Stop::Gone) => {}
            Err(Stop::Failed(e)) => {
                tracing::warn!(job_id = %self.job_id, error = %e, "cannot read a job's output");
                let _ = self
                    .tx
                    .send(Err(io::Error::other("output unreadable")))
                    .await;
            }
        }
    }
}

/// A byte range of a job's output, stdout and stderr together
///
/// The bytes `[offset, offset + limit)` of the job's *combined* output — every chunk of
/// stdout and stderr in the order they came, as stored (not necessarily UTF-8) — cut at what
/// was stored when the request came. A client reads the whole output by asking again from
/// `offset + ` the bytes it got, until `X-Output-Total`; a running job's output grows.
///
/// The body is a run of records, one per stored chunk (or the part of it in the range):
/// one byte for the stream (`0` stdout, `1` stderr), the piece's length in bytes as a
/// 32-bit big-endian number, then the piece. A range may start or end inside a UTF-8
/// character: a client decoding pieces carries the incomplete bytes over.
#[utoipa::path(
    operation_id = "get_job_output_range",
    tag = "jobs",
    params(("id" = uuid::Uuid, Path, description = "The job's id."), RangeQuery),
    responses(
        (status = 200, description = "Records of `[stream: u8][length: u32 big-endian][bytes]`, at most `limit` bytes of output in all.",
            body = OutputRecords, content_type = "application/octet-stream",
            headers(
                ("X-Output-Offset" = i64, description = "The `offset` asked for: where the first record's bytes start."),
                ("X-Output-Total" = i64, description = "The combined output's length in bytes when the request came."),
                ("X-Output-Last-Seq" = i64, description = "The sequence number of the last chunk stored when the request came (-1: none); the stream's `Last-Event-ID` to follow what comes after."),
                ("X-Output-Pruned-At" = String, description = "Only when retention deleted the job's output: when (RFC 3339). The output is then empty, or shorter than it was."),
            )),
        Errors<(BadRequest, Unauthorized, NotFound, InvalidField, Unavailable)>,
    )
)]
#[get("/jobs/{id}/output")]
pub async fn job_output(
    state: web::Data<AppState>,
    caller: web::ReqData<super::auth::Caller>,
    path: web::Path<String>,
    query: web::Query<RangeQuery>,
) -> Result<HttpResponse, ApiError> {
    let offset = query.offset.unwrap_or(0);
    if offset < 0 {
        return Err(FieldError::new("offset", format!("{offset} is below 0")).into());
    }
    let limit = query.limit.unwrap_or(DEFAULT_RANGE);
    if !(1..=MAX_RANGE).contains(&limit) {
        return Err(
            FieldError::new("limit", format!("{limit} is not from 1 to {MAX_RANGE}")).into(),
        );
    }
    let job = state.engine.job(&caller.actor(), job_id(&path)?).await?;
    let permit = state.limits.heavy_read().await?;
    let extent = state.engine.output_extent(&job.id).await?;
    let mut response = pruned(HttpResponse::Ok(), &job);
    let (tx, rx) = mpsc::channel(IN_FLIGHT);
    let writer = RangeWriter {
        engine: state.engine.clone(),
        job_id: job.id.clone(),
        extent,
        start: offset,
        end: offset.saturating_add(limit).min(extent.end),
        framer: Framer::default(),
        tx,
    };
    actix_web::rt::spawn(async move {
        writer.run().await;
        drop(permit);
    });
    Ok(response
        .content_type("application/octet-stream")
        .insert_header(("X-Output-Offset", offset.to_string()))
        .insert_header(("X-Output-Total", extent.end.to_string()))
        .insert_header(("X-Output-Last-Seq", extent.last_seq.to_string()))
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .streaming(body_of(rx)))
}

/// A job's output as JSON
///
/// The seed's shape (stdout, stderr and both interleaved in arrival order), or with
/// `?format=chunks` the chunks as stored. Bytes that are not UTF-8 are replaced.
#[utoipa::path(
    operation_id = "get_job_logs",
    tag = "jobs",
    params(("id" = uuid::Uuid, Path, description = "The job's id."), LogsQuery),
    responses(
        (status = 200, description = "`JobLogs`, or with `?format=chunks` an array of `OutputChunk`. A job whose output retention deleted has `output_pruned_at` set (and, in both shapes, the header `X-Output-Pruned-At`).", body = LogsResponse,
            headers(
                ("X-Output-Pruned-At" = String, description = "Only when retention deleted the job's output: when (RFC 3339)."),
            )),
        Errors<(BadRequest, Unauthorized, NotFound, InvalidField, Unavailable)>,
    )
)]
#[get("/jobs/{id}/logs")]
pub async fn job_logs(
    state: web::Data<AppState>,
    caller: web::ReqData<super::auth::Caller>,
    path: web::Path<String>,
    query: web::Query<LogsQuery>,
) -> Result<HttpResponse, ApiError> {
    let chunked = match query.format.as_deref() {
        Some("chunks") => true,
        None | Some("") | Some("json") => false,
        Some(other) => {
            return Err(FieldError::new(
                "format",
                format!("{other:?} is not \"json\" or \"chunks\""),
            )
            .into());
        }
    };
    let job = state.engine.job(&caller.actor(), job_id(&path)?).await?;
    let parts = if chunked {
        let bracket = |text: &str| Part::Literal(text.into());
        vec![bracket("["), Part::Chunks, bracket("]")]
    } else {
        logs_parts(job.clone())?
    };
    respond(&state, &job, parts, "application/json").await
}

/// The raw bytes of one stream of a job.
async fn raw(
    state: &AppState,
    caller: &super::auth::Caller,
    id: &str,
    stream: OutputStream,
) -> Result<HttpResponse, ApiError> {
    let job = state.engine.job(&caller.actor(), job_id(id)?).await?;
    let parts = vec![Part::Raw(stream)];
    respond(state, &job, parts, "text/plain; charset=utf-8").await
}

/// A job's raw stdout
#[utoipa::path(
    operation_id = "get_job_stdout",
    tag = "jobs",
    params(("id" = uuid::Uuid, Path, description = "The job's id.")),
    responses(
        (status = 200, description = "The stdout bytes stored so far, as the command wrote them (not necessarily UTF-8).", body = String, content_type = "text/plain"),
        Errors<(Unauthorized, NotFound, Unavailable)>,
    )
)]
#[get("/jobs/{id}/stdout")]
pub async fn job_stdout(
    state: web::Data<AppState>,
    caller: web::ReqData<super::auth::Caller>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    raw(&state, &caller, &path, OutputStream::Stdout).await
}

/// A job's raw stderr
#[utoipa::path(
    operation_id = "get_job_stderr",
    tag = "jobs",
    params(("id" = uuid::Uuid, Path, description = "The job's id.")),
    responses(
        (status = 200, description = "The stderr bytes stored so far, as the command wrote them (not necessarily UTF-8).", body = String, content_type = "text/plain"),
        Errors<(Unauthorized, NotFound, Unavailable)>,
    )
)]
#[get("/jobs/{id}/stderr")]
pub async fn job_stderr(
    state: web::Data<AppState>,
    caller: web::ReqData<super::auth::Caller>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    raw(&state, &caller, &path, OutputStream::Stderr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(seq: i64, stream: OutputStream, data: &[u8]) -> ChunkRow {
        ChunkRow {
            job_id: "j".into(),
            seq,
            stream: match stream {
                OutputStream::Stdout => 0,
                OutputStream::Stderr => 1,
            },
            data: data.to_vec(),
            at: 1_700_000_000_000_000 + seq,
        }
    }

    /// The bytes `parts` make of `chunks`, through the framer; and the longest frame.
    fn render(parts: Vec<Part>, chunks: &[ChunkRow]) -> (Vec<u8>, usize) {
        let (mut framer, mut frames) = (Framer::default(), Vec::new());
        for part in parts {
            let mut r = Render::new(part);
            let reads = r.reads();
            for c in chunks.iter().filter(|_| reads) {
                if let Some(piece) = r.chunk(c) {
                    frames.extend(framer.push(&piece));
                }
            }
            frames.extend(framer.push(&r.end()));
        }
        frames.extend(framer.finish());
        let longest = frames.iter().map(Bytes::len).max().unwrap_or(0);
        (frames.concat(), longest)
    }

    #[test]
    fn frames_are_bounded_and_lose_nothing() {
        let mut framer = Framer::default();
        let mut out = Vec::new();
        let data: Vec<u8> = (0..FRAME * 5 / 2).map(|i| i as u8).collect();
        for piece in data.chunks(FRAME / 3 + 7) {
            for frame in framer.push(piece) {
                assert_eq!(frame.len(), FRAME);
                out.extend_from_slice(&frame);
            }
        }
        out.extend_from_slice(&framer.finish().expect("a rest"));
        assert_eq!(out, data);
        assert!(framer.finish().is_none());
    }

    #[test]
    fn the_streamed_logs_are_the_whole_encoding() {
        let euro = "€".as_bytes();
        let chunks = vec![
            chunk(0, OutputStream::Stdout, &[b'a', euro[0]]),
            chunk(1, OutputStream::Stderr, b"e\"rr\n\x01"),
            chunk(2, OutputStream::Stdout, &[euro[1], euro[2], 0xff, b'b']),
            chunk(3, OutputStream::Stderr, &[0xe2, 0x82]),
            chunk(4, OutputStream::Stdout, &vec![1u8; 3 * FRAME]),
        ];
        let job = JobRow {
            id: "0195f2a4-3b7c-7d8e-9f00-112233445566".into(),
            kind: crate::domain::JobKind::Command,
            command: Some("true".into()),
            args: None,
            script: None,
            shell: None,
            server_id: "0195f2a4-3b7c-7d8e-9f00-000000000000".into(),
            timeout_secs: 60,
            env: "{}".into(),
            cwd: None,
            idempotency_key: None,
            retry_safe: false,
            status: JobStatus::Completed,
            exit_code: Some(0),
            error: None,
            created_at: 0,
            started_at: Some(1_000_000),
            finished_at: Some(3_500_000),
            duplicated_from: None,
            worker: None,
            lease_expires_at: None,
            attempts: 1,
            cancel_requested: false,
            published: true,
            remote_pgid: None,
            output_bytes: 0,
            output_truncated: true,
            next_seq: 5,
            run_id: None,
            sealed_env: None,
            output_pruned_at: None,
        };
        // What the route sent when it built the whole response.
        let all = |keep: &dyn Fn(&ChunkRow) -> bool| {
            let bytes: Vec<u8> = (chunks.iter().filter(|c| keep(c)))
                .flat_map(|c| c.data.clone())
                .collect();
            String::from_utf8_lossy(&bytes).into_owned()
        };
        let mut whole = JobLogs::of(job.clone());
        whole.stdout = all(&|c: &ChunkRow| c.stream() == OutputStream::Stdout);
        whole.stderr = all(&|c: &ChunkRow| c.stream() == OutputStream::Stderr);
        whole.output = all(&|_| true);
        let expected = serde_json::to_string(&whole).unwrap();
        let (got, longest) = render(logs_parts(job).unwrap(), &chunks);
        assert_eq!(String::from_utf8(got).unwrap(), expected);
        assert!(longest <= FRAME, "{longest}");

        let views: Vec<OutputChunk> = chunks
            .iter()
            .map(|c| OutputChunk {
                seq: c.seq,
                stream: c.stream(),
                data: String::from_utf8_lossy(&c.data).into_owned(),
                at: Micros(c.at),
            })
            .collect();
        let parts = vec![
            Part::Literal("[".into()),
            Part::Chunks,
            Part::Literal("]".into()),
        ];
        let (got, _) = render(parts, &chunks);
        assert_eq!(got, serde_json::to_vec(&views).unwrap());
        let (got, _) = render(vec![Part::Raw(OutputStream::Stderr)], &chunks);
        assert_eq!(got, b"e\"rr\n\x01\xe2\x82");
    }
}
