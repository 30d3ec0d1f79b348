//! Following a job: its output from a point on, replayed from the database and then live,
//! with no gap and nothing twice, until it ends. One mechanism under two consumers: the SSE
//! stream (`http::stream`, frames with a UTF-8 carry and keep-alives) and the library's
//! output stream (`Supervisor::output`, raw chunks), both through [`super::Engine::follow`].
//!
//! The follower subscribes to the event bus *before* it reads the database (the caller hands
//! it the subscription), replays what is stored after `last`, then follows live events; a
//! live event ahead of what it has sent (the writer had not flushed yet) or a lag of the bus
//! (the consumer was slow) sends it back to the database to catch up. A slow consumer only
//! ever slows itself.

use std::future::Future;
use std::time::Duration;

use tokio::sync::broadcast;

use crate::domain::{OutputStream, parse_id};
use crate::events::JobEvent;
use crate::store::{JobRow, Store};

/// Chunks read per database page while replaying.
const PAGE: i64 = 1000;

/// The consumer went away: stop following.
#[derive(Debug)]
pub struct Gone;

/// Where a followed job's events go (what a sink does not want it need not implement).
pub trait Sink {
    /// The job's status (first, and on each change); `last` is the last output seq sent.
    fn status(&mut self, _last: i64, _row: &JobRow) -> impl Future<Output = Result<(), Gone>> {
        async { Ok(()) }
    }
    /// The next chunk (each seq once, in order).
    fn output(
        &mut self,
        seq: i64,
        stream: OutputStream,
        data: &[u8],
        at: i64,
    ) -> impl Future<Output = Result<(), Gone>>;
    /// The end, after the last chunk.
    fn complete(&mut self, _last: i64, _row: &JobRow) -> impl Future<Output = Result<(), Gone>> {
        async { Ok(()) }
    }
    /// Nothing happened for the keep-alive period ([`FollowTask::keep_alive`]).
    fn idle(&mut self) -> impl Future<Output = Result<(), Gone>> {
        async { Ok(()) }
    }
    /// Resolves once the consumer has gone (so a quiet job does not keep its task alive).
    fn gone(&self) -> impl Future<Output = ()> + 'static;
}

/// A follow ready to run (made by [`super::Engine::follow`]): [`FollowTask::run`] drives it
/// to its end.
pub struct FollowTask<S> {
    store: Store,
    /// The events, subscribed to before `job` was read (so nothing falls in between).
    bus: broadcast::Receiver<JobEvent>,
    /// The job as read after subscribing: where the follow starts.
    job: JobRow,
    last: i64,
    sink: S,
    idle_every: Duration,
    poll: Option<Duration>,
}

impl<S: Sink> FollowTask<S> {
    /// Follow `job` from after output seq `last` (-1: from the start); `bus` was subscribed
    /// before `job` was read.
    pub(crate) fn new(
        store: Store,
        bus: broadcast::Receiver<JobEvent>,
        job: JobRow,
        last: i64,
        sink: S,
    ) -> Self {
        Self {
            store,
            bus,
            job,
            last,
            sink,
            idle_every: Duration::from_secs(15),
            poll: None,
        }
    }

    /// The sink, to prepare it before the follow starts (a resumed SSE stream rebuilds its
    /// UTF-8 carries).
    pub fn sink_mut(&mut self) -> &mut S {
        &mut self.sink
    }

    /// Call [`Sink::idle`] (a keep-alive) after this long without an event.
    pub fn keep_alive(mut self, every: Duration) -> Self {
        self.idle_every = every;
        self
    }

    /// Also look at the database this often: for a process that does not hear the events of
    /// jobs other processes run (they come only through the broker).
    pub fn polling(mut self, every: Duration) -> Self {
        self.poll = Some(every);
        self
    }

    /// Follow until the job ends or the sink is gone.
    pub async fn run(self) {
        let _ = self.follow().await;
    }

    /// Send one chunk (skipping what was already sent).
    async fn output(
        &mut self,
        seq: i64,
        stream: OutputStream,
        data: &[u8],
        at: i64,
    ) -> Result<(), Gone> {
        if seq <= self.last {
            return Ok(());
        }
        self.last = seq;
        self.sink.output(seq, stream, data, at).await
    }

    /// Send everything stored after `last`.
    async fn replay(&mut self) -> Result<(), Gone> {
        loop {
            let page = match self
                .store
                .read_output(self.job.id.clone(), self.last, PAGE)
                .await
            {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(job_id = %self.job.id, error = %e, "cannot read output to follow");
                    return Ok(());
                }
            };
            let n = page.len();
            for c in page {
                self.output(c.seq, c.stream(), &c.data, c.at).await?;
            }
            if (n as i64) < PAGE {
                return Ok(());
            }
        }
    }

    /// Catch up to just before `seq` from the database, waiting briefly for the writer's
    /// flush (it writes at least every 50 ms).
    async fn fill_gap(&mut self, seq: i64) -> Result<(), Gone> {
        for _ in 0..40 {
            self.replay().await?;
            if self.last >= seq - 1 {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        tracing::warn!(job_id = %self.job.id, from = self.last, to = seq, "skipped output that could not be found");
        Ok(())
    }

    /// Replay what is left and send the end.
    async fn finish(&mut self, row: &JobRow) -> Result<(), Gone> {
        // The end is recorded after the last output is stored.
        self.replay().await?;
        self.sink.complete(self.last, row).await
    }

    /// Run until the job ends or the consumer goes.
    async fn follow(mut self) -> Result<(), Gone> {
        let uuid = parse_id("id", &self.job.id).map_err(|_| Gone)?;
        let row = self.job.clone();
        self.sink.status(self.last, &row).await?;
        self.replay().await?;
        if row.status().is_terminal() {
            return self.sink.complete(self.last, &row).await;
        }
        let mut idle = tokio::time::interval(self.idle_every);
        idle.tick().await;
        let mut poll = tokio::time::interval(self.poll.unwrap_or(Duration::from_secs(3600)));
        poll.tick().await;
        let gone = self.sink.gone();
        tokio::pin!(gone);
        loop {
            let catch_up = tokio::select! {
                _ = &mut gone => return Err(Gone),
                ev = self.bus.recv() => match ev {
                    Ok(JobEvent::Output { job_id, seq, stream, data, at }) if *job_id == *self.job.id => {
                        if seq > self.last + 1 {
                            self.fill_gap(seq).await?;
                        }
                        self.output(seq, stream, &data, at).await?;
                        false
                    }
                    Ok(JobEvent::Status(row)) if row.id == self.job.id => {
                        if row.status().is_terminal() {
                            return self.finish(&row).await;
                        }
                        self.sink.status(self.last, &row).await?;
                        false
                    }
                    Ok(_) => false,
                    // Events were lost: what they said is in the database.
                    Err(broadcast::error::RecvError::Lagged(_)) => true,
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                },
                _ = poll.tick(), if self.poll.is_some() => true,
                _ = idle.tick() => {
                    self.sink.idle().await?;
                    false
                }
            };
            if !catch_up {
                continue;
            }
            // Lagged, or the poll: catch up from the database.
            self.replay().await?;
            let row = self.store.get_job(uuid).await.map_err(|_| Gone)?;
            if row.status().is_terminal() {
                return self.finish(&row).await;
            }
        }
    }
}
