//! The actor system that runs jobs.
//!
//! ```text
//!  HTTP ──submit──▶ queue ──delivery──▶ Dispatcher ──slot──▶ HostActor (per server)
//!                                          │  claim (DB)         │ pooled SSH connections
//!                                          ▼                     ▼
//!                                       JobActor (per job) ◀── channel lease
//!                                          │ output
//!                                          ▼
//!                                     output writer ──▶ DB (batched) + EventBus
//! ```
//!
//! - [`Dispatcher`]: one per process; the only bridge between the queue and the rest.
//! - [`HostActor`]: one per server; caps concurrent jobs, pools connections, verifies keys.
//! - [`JobActor`]: one per running job; owns its channel, cancel token, timeout and lease,
//!   and turns every failure (its own panic included) into a terminal status.
//! - [`output`]: batches chunks to the database, publishes them as events.
//! - [`messages`]: their protocol, in one place; it imports nothing from the actors.
//!
//! Each actor owns its state: what another needs from it goes by message (a lease and a slot
//! come back on drop). Shared primitives remain only where they are the right tool: a
//! semaphore's permit that travels with a job, the cancellation tokens, the dispatcher's
//! task tracker that `Drain` waits on.

pub mod dispatcher;
pub mod host;
pub mod job;
pub mod messages;
pub mod output;

pub use dispatcher::Dispatcher;
pub use host::HostActor;
pub use job::JobActor;
