//! The actors' protocol: every message they exchange, one documented struct each with its
//! `rtype` explicit (the queue's delivery and cancel travel as the queue made them), and the
//! values that travel in them ([`ChannelLease`], [`HostError`]).
//!
//! Owns the vocabulary only: it imports nothing from the actors themselves, so each actor
//! depends on its messages and never the other way round.

use crate::ssh::Client;
use actix::{Message, Recipient};
use tokio::sync::OwnedSemaphorePermit;

use crate::ssh::SshError;
use crate::store::StoreError;

// ── To the dispatcher ────────────────────────────────────────────────────────────────────

/// A job id arrived (from the queue, or from the database poll): try to claim and run it,
/// then acknowledge the delivery if it came with an acker. The queue's delivery as it is.
pub use crate::queue::Delivered as Delivery;

impl Message for Delivery {
    type Result = ();
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

/// A cancel another process asked for, through the broker's control exchange.
impl Message for crate::queue::rabbit::ControlMsg {
    type Result = ();
}

/// A job actor is done (sent by the job actor to the dispatcher).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct JobEnded {
    /// The job.
    pub job_id: String,
}

/// A delivery's wait for its slots and its claim are over (sent to the dispatcher by the
/// task that waited): start the job if this worker won it. Generic over what a claim wins,
/// which only the dispatcher knows. The waits are tasks of their own, not futures in the
/// dispatcher's context, which polls every future it holds on each wake: with a backlog of
/// thousands waiting for slots, that made each event cost thousands of polls.
#[derive(Debug)]
pub struct Admitted<C> {
    /// The job.
    pub job_id: String,
    /// The job as claimed and its slots; `None`: it was not claimed here.
    pub claimed: Option<C>,
}

impl<C: 'static> Message for Admitted<C> {
    type Result = ();
}

/// Stop taking jobs; let running ones finish within `grace`, then cancel them.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Drain {
    /// How long running jobs may take to finish on their own.
    pub grace: std::time::Duration,
}

// ── To a host actor ──────────────────────────────────────────────────────────────────────

/// Wait for a run slot on the server (FIFO; bounded by `max_concurrent_jobs`, whose current
/// value the dispatcher passes along so a change of the setting takes effect).
#[derive(Debug, Message)]
#[rtype(result = "Result<OwnedSemaphorePermit, HostError>")]
pub struct AcquireSlot {
    /// The server's `max_concurrent_jobs` as stored now.
    pub max_jobs: usize,
    /// The job that wants it: free slots go to the oldest waiting job (ids are UUIDv7, so
    /// they sort by submission time), whatever order the requests arrived in.
    pub job_id: String,
}

/// Get a connection with room for one more channel.
#[derive(Debug, Message)]
#[rtype(result = "Result<ChannelLease, HostError>")]
pub struct Checkout;

/// A channel lease was dropped: its connection has room again (sent by [`ChannelLease`]'s
/// `Drop` to the host actor that handed it out).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct LeaseReturned {
    /// The pooled connection the lease was on.
    pub conn: u64,
}

/// The right to run one channel on a pooled connection of a host actor; dropping it gives
/// the room back (a [`LeaseReturned`] to the host actor, which owns the count).
pub struct ChannelLease {
    /// The connection (a cheap clone).
    pub client: Client,
    /// The login shell runs the bootstrap as is (see `exec::build_for`).
    pub login_shell_posix: bool,
    /// Which of the host actor's connections it is on.
    pub conn: u64,
    /// Where the lease goes back.
    pub owner: Recipient<LeaseReturned>,
}

impl std::fmt::Debug for ChannelLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelLease")
            .field("conn", &self.conn)
            .finish_non_exhaustive()
    }
}

impl Drop for ChannelLease {
    fn drop(&mut self) {
        // A host actor that is gone has no room to give back: nothing is lost then.
        self.owner.do_send(LeaseReturned { conn: self.conn });
    }
}

/// Why a host actor could not give a slot or a channel.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// Connecting to the server failed.
    #[error(transparent)]
    Ssh(#[from] SshError),
    /// The server was deleted while its job waited or ran.
    #[error("server {0} no longer exists")]
    ServerGone(uuid::Uuid),
    /// The server's record could not be read.
    #[error("cannot read the server record: {0}")]
    ServerUnreadable(#[source] StoreError),
    /// The server's stored credentials cannot be opened (wrong secret key).
    #[error("cannot use the stored credentials: {0}")]
    Credentials(#[source] StoreError),
    /// `ssh.allowed_hosts` does not allow the server's host: nothing was sent to it.
    #[error("host {0:?} is not allowed by ssh.allowed_hosts; nothing was sent to it")]
    NotAllowed(String),
    /// The host actor stopped before it answered.
    #[error("host actor unavailable: {0}")]
    Unavailable(#[from] actix::MailboxError),
}

impl HostError {
    /// Whether trying again cannot help.
    pub fn is_permanent(&self) -> bool {
        match self {
            HostError::Ssh(e) => e.is_permanent(),
            HostError::ServerGone(_) | HostError::Credentials(_) | HostError::NotAllowed(_) => true,
            HostError::ServerUnreadable(_) | HostError::Unavailable(_) => false,
        }
    }
}
