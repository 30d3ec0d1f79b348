//! The queue: how "job X is ready" travels from the API to a worker.
//!
//! The database is the truth; the queue only carries job ids (and the server each goes to),
//! so losing a message delays a
//! job but never loses it (queued rows are re-published at start). [`JobQueue`] is the
//! seam where RabbitMQ slots in beside the in-memory queue of `serve`.

use std::sync::Mutex;

use futures::future::BoxFuture;
use tokio::sync::mpsc;

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
    /// Where it goes, when the publisher said (a job never changes server): a consumer
    /// that knows the server's cap need not read the job before it waits for a slot. The
    /// claim checks the row (and that it is on this server), so a stale or wrong route can
    /// never run a job twice, or anywhere else.
    pub route: Option<Route>,
    /// How to acknowledge it, for queues that want it.
    pub ack: Option<Ack>,
}

/// Where a queued job goes, as its publisher knew it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The job's server.
    pub server_id: String,
    /// That server's `max_concurrent_jobs`, as the submit read it: carried inside one
    /// process only (a broker message names the server, and each worker keeps the caps).
    pub cap: Option<usize>,
}

impl std::fmt::Debug for Delivered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivered")
            .field("job_id", &self.job_id)
            .field("route", &self.route)
            .finish()
    }
}

/// A queue of ready job ids.
pub trait JobQueue: Send + Sync + 'static {
    /// `memory` or `rabbitmq`, for `/health`.
    fn kind(&self) -> &'static str;
    /// Announce that a job is ready, with where it goes when the caller knows: an in-process
    /// queue carries the route whole, a broker names the server in the message.
    fn publish(
        &self,
        job_id: String,
        route: Option<Route>,
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
        route: Option<Route>,
    ) -> BoxFuture<'_, Result<(), QueueError>> {
        let sent = self
            .tx
            .send(Delivered {
                job_id,
                route,
                ack: None,
            })
            .map_err(|_| QueueError("the in-memory queue is closed".into()));
        Box::pin(async move { sent })
    }

    fn take_consumer(&self) -> Option<mpsc::UnboundedReceiver<Delivered>> {
        self.rx.lock().ok().and_then(|mut rx| rx.take())
    }
}
