//! Job events: every status change and output chunk, published as it happens.
//!
//! In one process the bus is a tokio broadcast channel: publishing never waits, and a
//! subscriber that falls behind loses events (it is told how many) and must catch up from
//! the database, so a slow reader never holds up a job.

use std::sync::Arc;

use tokio::sync::broadcast;

use crate::domain::OutputStream;
use crate::store::JobRow;

/// Something that happened to a job.
#[derive(Debug, Clone)]
pub enum JobEvent {
    /// The job's row after a status change.
    Status(Arc<JobRow>),
    /// An output chunk.
    Output {
        /// The job.
        job_id: Arc<str>,
        /// Sequence number (stdout and stderr share it).
        seq: i64,
        /// Which stream.
        stream: OutputStream,
        /// The bytes.
        data: Arc<[u8]>,
        /// When it arrived (µs since the epoch).
        at: i64,
    },
}

/// The process's event bus. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EventBus {
    tx: broadcast::Sender<JobEvent>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new(4096)
    }
}

impl EventBus {
    /// A bus keeping up to `capacity` events for slow subscribers.
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(16));
        Self { tx }
    }

    /// Publish; never waits.
    pub fn publish(&self, event: JobEvent) {
        let _ = self.tx.send(event);
    }

    /// Follow every event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<JobEvent> {
        self.tx.subscribe()
    }
}
