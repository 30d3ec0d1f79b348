//! The output writer of one job: takes chunks as they come off the SSH channel, numbers them
//! (stdout and stderr share one sequence), publishes each at once on the event bus, and
//! stores them in batches — one database round trip per batch, never one per chunk, and
//! never inline: a flush runs beside the reader, so a slow database cannot stall the SSH
//! connection (whose channels would all block behind an undrained one).
//!
//! Past the job's output cap the head is kept as stored, the newest chunks are kept in a
//! bounded tail, and at the end a marker chunk stands where the middle was dropped. Memory
//! stays bounded by the tail (half the cap) plus one batch.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::domain::{Micros, OutputStream};
use crate::events::{EventBus, JobEvent};
use crate::ssh::exec::ExecEvent;
use crate::store::{NewChunk, Store};

/// Where the remote job runs, once known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteGroup {
    /// Process group id.
    pub pgid: i64,
    /// Temporary script file, for script jobs.
    pub tmpfile: Option<String>,
}

/// What the writer saw, when it is done.
#[derive(Debug, Clone, Default)]
pub struct WriterReport {
    /// Bytes received.
    pub bytes: u64,
    /// The cap cut the output.
    pub truncated: bool,
    /// A database write failed (the job's output is incomplete).
    pub store_error: Option<String>,
    /// The remote process group, if the bootstrap reported it.
    pub pgid: Option<i64>,
}

const FLUSH_EVERY: Duration = Duration::from_millis(50);

/// How long a job must have been running before its process group is written on its own.
/// What needs it there is a lost worker's reaper (to kill a group the worker left behind).
/// It goes with the job's first output, if that comes sooner (so a job whose output can be
/// seen has it recorded), or with its end (see [`WriterReport::pgid`]): a short job costs
/// no write for it.
const PGID_HOLD: Duration = Duration::from_millis(50);
const FLUSH_BYTES: usize = 256 * 1024;

/// Start the writer of `job_id`, numbering from `first_seq` (the job's `next_seq`: a job
/// run again after a lost worker keeps the first attempt's output before its own). Returns
/// the sender to give to the SSH reader, a watch that gets the remote group as soon as it is
/// known, and the task to await for the report.
pub fn spawn(
    job_id: String,
    first_seq: i64,
    store: Store,
    events: EventBus,
    cap_bytes: u64,
) -> (
    mpsc::Sender<ExecEvent>,
    watch::Receiver<Option<RemoteGroup>>,
    JoinHandle<WriterReport>,
) {
    let (tx, rx) = mpsc::channel(1024);
    let (group_tx, group_rx) = watch::channel(None);
    let head_limit = cap_bytes / 2;
    let state = State {
        job_key: Arc::from(job_id.as_str()),
        job_id,
        store,
        seq: first_seq.max(0),
        batch: Vec::new(),
        batch_bytes: 0,
        stored_bytes: 0,
        head_limit,
        tail_limit: cap_bytes - head_limit,
        tail: VecDeque::new(),
        tail_bytes: 0,
        first_dropped_seq: None,
        in_flight: None,
        report: WriterReport::default(),
        pgid_due: None,
    };
    let task = tokio::spawn(state.run(events, rx, group_tx));
    (tx, group_rx, task)
}

struct State {
    job_id: String,
    job_key: Arc<str>,
    store: Store,
    seq: i64,
    batch: Vec<NewChunk>,
    batch_bytes: usize,
    stored_bytes: u64,
    head_limit: u64,
    tail_limit: u64,
    tail: VecDeque<NewChunk>,
    tail_bytes: u64,
    first_dropped_seq: Option<i64>,
    in_flight: Option<JoinHandle<Result<(), String>>>,
    report: WriterReport,
    /// When the process group, known and not yet written, is written on its own (at the
    /// first flush tick [`PGID_HOLD`] after it was learnt, unless output carried it first).
    pgid_due: Option<tokio::time::Instant>,
}

impl State {
    /// Number, publish and keep one chunk; flush when the batch is large.
    fn take(&mut self, stream: OutputStream, data: Arc<[u8]>, events: &EventBus) {
        let seq = self.seq;
        self.seq += 1;
        let at = Micros::now().0;
        let len = data.len() as u64;
        self.report.bytes += len;
        let name = match stream {
            OutputStream::Stdout => "stdout",
            OutputStream::Stderr => "stderr",
        };
        crate::metrics::OUTPUT_BYTES.inc_by([name], len);
        events.publish(JobEvent::Output {
            job_id: self.job_key.clone(),
            seq,
            stream,
            data: Arc::clone(&data),
            at,
        });
        let row = NewChunk {
            seq,
            stream: stream.code(),
            data,
            at,
        };
        if self.first_dropped_seq.is_none() && self.stored_bytes + len <= self.head_limit {
            self.stored_bytes += len;
            self.batch_bytes += row.data.len();
            self.batch.push(row);
        } else {
            // Past the head: keep a bounded tail, drop from the middle.
            self.first_dropped_seq.get_or_insert(seq);
            self.tail_bytes += len;
            self.tail.push_back(row);
            while self.tail_bytes > self.tail_limit {
                match self.tail.pop_front() {
                    Some(old) => self.tail_bytes -= old.data.len() as u64,
                    None => break,
                }
            }
        }
        if self.batch_bytes >= FLUSH_BYTES {
            self.maybe_flush();
        }
    }

    fn reap_flush(&mut self) {
        if let Some(handle) = &self.in_flight
            && handle.is_finished()
            && let Some(Some(done)) = self.in_flight.take().map(futures::FutureExt::now_or_never)
        {
            self.flushed(done);
        }
    }

    /// Note the error of a flush that ended.
    fn flushed(&mut self, done: Result<Result<(), String>, tokio::task::JoinError>) {
        match done {
            Ok(Err(e)) => self.report.store_error = Some(e),
            Err(e) => self.report.store_error = Some(e.to_string()),
            Ok(Ok(())) => {}
        }
    }

    /// Start a flush if there is something to write and none is in flight.
    fn maybe_flush(&mut self) {
        self.reap_flush();
        if self.batch.is_empty() || self.in_flight.is_some() {
            return;
        }
        let batch = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        let store = self.store.clone();
        let id = self.job_id.clone();
        let pgid = self.take_pgid();
        self.in_flight = Some(tokio::spawn(async move {
            store
                .append_output(id, batch, false, pgid)
                .await
                .map_err(|e| e.to_string())
        }));
    }

    /// The process group, if it is known and not yet written (then it is, by the caller).
    fn take_pgid(&mut self) -> Option<i64> {
        self.pgid_due.take()?;
        self.report.pgid
    }

    /// Write the process group on its own once it is due (no output carried it).
    fn write_pgid_when_due(&mut self) {
        if self
            .pgid_due
            .is_some_and(|due| due <= tokio::time::Instant::now())
            && let Some(pgid) = self.take_pgid()
        {
            let (store, id) = (self.store.clone(), self.job_id.clone());
            tokio::spawn(async move {
                let _ = store.set_remote_pgid(id, pgid).await;
            });
        }
    }

    async fn finish(mut self) -> WriterReport {
        // The end records the group (see `WriterReport::pgid`).
        self.pgid_due = None;
        if let Some(handle) = self.in_flight.take() {
            self.flushed(handle.await);
        }
        let mut rows = std::mem::take(&mut self.batch);
        if let Some(first) = self.first_dropped_seq {
            // The head is stored; what is not in the tail was dropped from the middle.
            let omitted = self.report.bytes - self.stored_bytes - self.tail_bytes;
            if omitted > 0 {
                self.report.truncated = true;
                let marker = format!(
                    "\n[job-executor: output over the cap; {omitted} bytes omitted here]\n"
                );
                // The marker takes the number of the first dropped chunk (never in the tail).
                rows.push(NewChunk {
                    seq: first,
                    stream: OutputStream::Stderr.code(),
                    data: marker.into_bytes().into(),
                    at: Micros::now().0,
                });
            }
            rows.extend(self.tail.drain(..));
        }
        if (!rows.is_empty() || self.report.truncated)
            && let Err(e) = self
                .store
                .append_output(self.job_id.clone(), rows, self.report.truncated, None)
                .await
        {
            self.report.store_error = Some(e.to_string());
        }
        if let Some(e) = &self.report.store_error {
            tracing::error!(job_id = %self.job_id, error = %e, "output could not be stored in full");
        }
        self.report
    }

    /// Take the chunks until the reader is done, then store the rest.
    async fn run(
        mut self,
        events: EventBus,
        mut rx: mpsc::Receiver<ExecEvent>,
        group: watch::Sender<Option<RemoteGroup>>,
    ) -> WriterReport {
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ev = rx.recv() => match ev {
                    None => break,
                    Some(ExecEvent::Started { pgid, tmpfile }) => {
                        let _ = group.send(Some(RemoteGroup { pgid, tmpfile }));
                        self.report.pgid = Some(pgid);
                        self.pgid_due = Some(tokio::time::Instant::now() + PGID_HOLD);
                    }
                    Some(ExecEvent::Stdout(data)) => self.take(OutputStream::Stdout, data, &events),
                    Some(ExecEvent::Stderr(data)) => self.take(OutputStream::Stderr, data, &events),
                },
                _ = tick.tick() => {
                    self.maybe_flush();
                    self.write_pgid_when_due();
                }
            }
        }
        self.finish().await
    }
}
