//! The messages actors exchange: one documented struct each, `rtype` explicit.

use actix::Message;
use tokio::sync::OwnedSemaphorePermit;

use super::host::ChannelLease;
use crate::ssh::SshError;

/// A job id arrived (from the queue, or from the database poll): try to claim and run it,
/// then acknowledge the delivery if it came with an acker.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Delivery(pub String, pub Option<crate::queue::Ack>);

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Delivery").field(&self.0).finish()
    }
}

/// Stop a job (sent to the dispatcher, which forwards it to the job's actor if it runs here).
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct CancelJob {
    /// The job.
    pub job_id: String,
    /// Why.
    pub reason: StopReason,
}

/// Why a running job is being stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// A user asked.
    Canceled,
    /// The worker is shutting down and the grace period ran out.
    Shutdown,
}

/// A job actor is done (sent by the job actor to the dispatcher).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct JobEnded(pub String);

/// Stop taking jobs; let running ones finish within `grace`, then cancel them.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Drain {
    /// How long running jobs may take to finish on their own.
    pub grace: std::time::Duration,
}

/// Wait for a run slot on the server (FIFO; bounded by `max_concurrent_jobs`, whose current
/// value the dispatcher passes along so a change of the setting takes effect).
#[derive(Debug, Message)]
#[rtype(result = "Result<OwnedSemaphorePermit, SshError>")]
pub struct AcquireSlot {
    /// The server's `max_concurrent_jobs` as stored now.
    pub max_jobs: usize,
    /// The job that wants it: free slots go to the oldest waiting job (ids are UUIDv7, so
    /// they sort by submission time), whatever order the requests arrived in.
    pub job_id: String,
}

/// Get a connection with room for one more channel.
#[derive(Debug, Message)]
#[rtype(result = "Result<ChannelLease, SshError>")]
pub struct Checkout;
