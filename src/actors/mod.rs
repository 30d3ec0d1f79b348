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

pub mod dispatcher;
pub mod host;
pub mod job;
pub mod messages;
pub mod output;

pub use dispatcher::Dispatcher;
pub use host::HostActor;
pub use job::JobActor;
