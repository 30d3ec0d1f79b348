//! Following a run: every admitted host's job followed as a job is ([`Engine::follow`]:
//! replay from the database, then live), their events tagged with the host's position and
//! merged into one channel, hosts admitted meanwhile picked up as the run advances (heard
//! on the event bus, and looked up every second), until the run has ended and every host's
//! end was sent. One mechanism under two consumers: the SSE stream of a run
//! (`http::run_stream`) and the library's run output (`supervisor::RunHandle::output`).

use std::collections::HashSet;
use std::time::Duration;

use tokio::sync::mpsc;

use super::Engine;
use super::follow::{Gone, Sink};
use crate::domain::{JobId, OutputStream, RunId};
use crate::events::JobEvent;
use crate::store::{ChunkRow, JobRow, Run};

/// How often the run is read again for hosts admitted meanwhile.
const LOOK: Duration = Duration::from_secs(1);

/// Something that happened in a followed run. `position` is the host's place in the run.
#[derive(Debug)]
pub enum RunEvent {
    /// A host's job, on each status change (first: as it was when its follow began).
    Status {
        /// The host.
        position: usize,
        /// Its job.
        job: JobRow,
    },
    /// A host's next output chunk (each seq of its job once, in order).
    Output {
        /// The host.
        position: usize,
        /// The chunk.
        chunk: ChunkRow,
    },
    /// A host's job ended, after its last chunk.
    HostComplete {
        /// The host.
        position: usize,
        /// Its final job.
        job: JobRow,
    },
    /// The run as read again (a host was admitted, or the run changed).
    Run(Run),
    /// The run ended and every host's end was sent: the last event.
    Complete(Run),
}

/// A host's follow: its events, tagged, into the run's channel.
struct HostSink {
    position: usize,
    job_id: String,
    tx: mpsc::Sender<RunEvent>,
}

impl Sink for HostSink {
    async fn status(&mut self, _last: i64, job: &JobRow) -> Result<(), Gone> {
        let event = RunEvent::Status {
            position: self.position,
            job: job.clone(),
        };
        self.tx.send(event).await.map_err(|_| Gone)
    }

    async fn output(
        &mut self,
        seq: i64,
        stream: OutputStream,
        data: &[u8],
        at: i64,
    ) -> Result<(), Gone> {
        let chunk = ChunkRow {
            job_id: self.job_id.clone(),
            seq,
            stream: stream.code(),
            data: data.to_vec(),
            at,
        };
        let event = RunEvent::Output {
            position: self.position,
            chunk,
        };
        self.tx.send(event).await.map_err(|_| Gone)
    }

    async fn complete(&mut self, _last: i64, job: &JobRow) -> Result<(), Gone> {
        let event = RunEvent::HostComplete {
            position: self.position,
            job: job.clone(),
        };
        self.tx.send(event).await.map_err(|_| Gone)
    }

    fn gone(&self) -> impl std::future::Future<Output = ()> + 'static {
        let tx = self.tx.clone();
        async move { tx.closed().await }
    }
}

/// A run follow ready to run (made by [`Engine::follow_run`]).
pub struct RunFollow {
    engine: Engine,
    id: RunId,
    run: Run,
    /// Per host: follow its output after this seq.
    cursor: Vec<i64>,
    followed: HashSet<usize>,
    ended: HashSet<usize>,
    /// The merged events of the hosts' follows; this end tells the consumer.
    hosts_tx: mpsc::Sender<RunEvent>,
    hosts_rx: mpsc::Receiver<RunEvent>,
    out: mpsc::Sender<RunEvent>,
}

impl Engine {
    /// Follow `run` into `out`: each host from after its seq in `cursor` (one per host, -1:
    /// from the start), its events as [`RunEvent`]s, until the run has ended (then
    /// [`RunEvent::Complete`]) or `out` is closed.
    pub fn follow_run(&self, run: Run, cursor: Vec<i64>, out: mpsc::Sender<RunEvent>) -> RunFollow {
        let (hosts_tx, hosts_rx) = mpsc::channel(64);
        let id = run
            .row
            .id
            .parse()
            .map(RunId)
            .unwrap_or(RunId(uuid::Uuid::nil()));
        let mut cursor = cursor;
        cursor.resize(run.hosts.len(), -1);
        RunFollow {
            engine: self.clone(),
            id,
            run,
            cursor,
            followed: HashSet::new(),
            ended: HashSet::new(),
            hosts_tx,
            hosts_rx,
            out,
        }
    }
}

impl RunFollow {
    /// Follow every admitted host not followed yet.
    async fn follow_new_hosts(&mut self) {
        for (i, host) in self.run.hosts.iter().enumerate() {
            let Some(job) = &host.job else { continue };
            if !self.followed.insert(i) {
                continue;
            }
            let Ok(job_id) = job.id.parse::<JobId>() else {
                continue;
            };
            let sink = HostSink {
                position: i,
                job_id: job.id.clone(),
                tx: self.hosts_tx.clone(),
            };
            match self.engine.follow_seen(job_id, self.cursor[i], sink).await {
                // A job another process runs is heard of only in the database: look there too.
                Ok(task) => {
                    tokio::spawn(
                        task.keep_alive(Duration::from_secs(3600))
                            .polling(LOOK)
                            .run(),
                    );
                }
                Err(e) => tracing::warn!(job_id = %job.id, error = %e, "cannot follow a host"),
            }
        }
    }

    /// The run has ended, and every admitted host has sent its end.
    fn over(&self) -> bool {
        self.run.row.status.is_terminal()
            && (self.run.hosts.iter().enumerate())
                .all(|(i, h)| h.job.is_none() || self.ended.contains(&i))
    }

    async fn send(&self, event: RunEvent) -> Result<(), Gone> {
        self.out.send(event).await.map_err(|_| Gone)
    }

    /// Follow until the run ends or the consumer goes.
    pub async fn run(mut self) {
        let _ = self.follow().await;
    }

    async fn follow(&mut self) -> Result<(), Gone> {
        let mut bus = self.engine.events().subscribe();
        let mut look = tokio::time::interval(LOOK);
        loop {
            self.follow_new_hosts().await;
            if self.over() {
                return self.send(RunEvent::Complete(self.run.clone())).await;
            }
            let reread = tokio::select! {
                Some(event) = self.hosts_rx.recv() => {
                    if let RunEvent::HostComplete { position, .. } = &event {
                        self.ended.insert(*position);
                    }
                    self.send(event).await?;
                    false
                }
                ev = bus.recv() => match ev {
                    Ok(JobEvent::Status(row)) => row.run_id.as_deref() == Some(&self.run.row.id),
                    Ok(_) => false,
                    Err(_) => true,
                },
                _ = look.tick() => true,
                _ = self.out.closed() => return Err(Gone),
            };
            if reread && let Ok(run) = self.engine.load_run(self.id).await {
                let admitted = |r: &Run| r.hosts.iter().filter(|h| h.job.is_some()).count();
                let changed =
                    admitted(&run) != admitted(&self.run) || run.row.status != self.run.row.status;
                self.run = run;
                if changed {
                    self.send(RunEvent::Run(self.run.clone())).await?;
                }
            }
        }
    }
}
