//! The queue: how "job X is ready" travels from the API to a worker.
//!
//! The database is the truth; the queue only carries job ids, so losing a message delays a
//! job but never loses it (queued rows are re-published at start). [`JobQueue`] is the
//! seam where RabbitMQ slots in beside the in-memory queue of `serve`.

use std::sync::Mutex;

use futures::future::BoxFuture;
use tokio::sync::mpsc;

use crate::store::JobRow;

/// Why a publish failed.
#[derive(Debug, thiserror::Error)]
#[error("queue unavailable: {0}")]
pub struct QueueError(pub String);

pub mod bridge;
pub mod rabbit;

/// Acknowledge a delivery (after the claim attempt).
pub type Ack = Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send>;

/// A job id as a consumer receives it.
pub struct Delivered {
    /// The job.
    pub job_id: String,
    /// The job as it was stored queued, and its server's `max_concurrent_jobs`, when the
    /// publisher is this process and carried them: the consumer need not read them back.
    /// The claim still checks the row, so a stale copy can never run a job twice.
    pub known: Option<Known>,
    /// How to acknowledge it, for queues that want it.
    pub ack: Option<Ack>,
}

/// A queued job's row and its server's cap, carried with a delivery inside one process.
pub type Known = Box<(JobRow, usize)>;

impl std::fmt::Debug for Delivered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivered")
            .field("job_id", &self.job_id)
            .finish()
    }
}

/// A queue of ready job ids.
pub trait JobQueue: Send + Sync + 'static {
    /// `memory` or `rabbitmq`, for `/health`.
    fn kind(&self) -> &'static str;
    /// Announce that a job is ready. `known` is the row just stored and its server's cap:
    /// an in-process queue carries it to the consumer, a broker drops it (the worker reads
    /// the row).
    fn publish(
        &self,
        job_id: String,
        known: Option<Known>,
    ) -> BoxFuture<'_, Result<(), QueueError>>;
    /// The consumer side: job ids as they become ready. Taken once, by the dispatcher.
    fn take_consumer(&self) -> Option<mpsc::UnboundedReceiver<Delivered>>;
    /// Whether the queue can take messages now.
    fn is_up(&self) -> bool {
        true
    }
}

/// The in-process queue of `serve`.
#[derive(Debug)]
pub struct MemoryQueue {
    tx: mpsc::UnboundedSender<Delivered>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<Delivered>>>,
}

impl Default for MemoryQueue {
    fn default() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            tx,
            rx: Mutex::new(Some(rx)),
        }
    }
}

impl JobQueue for MemoryQueue {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn publish(
        &self,
        job_id: String,
        known: Option<Known>,
    ) -> BoxFuture<'_, Result<(), QueueError>> {
        let sent = self
            .tx
            .send(Delivered {
                job_id,
                known,
                ack: None,
            })
            .map_err(|_| QueueError("the in-memory queue is closed".into()));
        Box::pin(async move { sent })
    }

    fn take_consumer(&self) -> Option<mpsc::UnboundedReceiver<Delivered>> {
        self.rx.lock().ok().and_then(|mut rx| rx.take())
    }
}
