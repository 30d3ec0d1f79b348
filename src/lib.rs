//! # job-executor
//!
//! Takes shell jobs over a REST API, queues them, runs them on remote machines over SSH, and
//! tracks their status and output.
//!
//! Four ways to use it: the REST API (`job-executor serve`, or `api` + `worker` processes),
//! its SSE log streams, a daemon driven by a settings file (`--config`, `[[servers]]`, SIGHUP
//! reloads), and this library, which runs the same supervisor inside your program.
//!
//! ## Embedding
//!
//! [`Supervisor`] runs jobs without HTTP from a plain tokio program; the actix system it
//! uses lives on a thread of its own. See `examples/embedded.rs`, and
//! `examples/http_service.rs` for the HTTP API mounted in your own actix-web app.
//!
//! ```no_run
//! use futures::StreamExt;
//! use job_executor::supervisor::{NewJob, NewServer, Supervisor};
//!
//! # async fn demo() -> Result<(), job_executor::supervisor::Error> {
//! let sup = Supervisor::builder().database("./jobs.db").build().await?;
//! let key = std::fs::read_to_string("/home/me/.ssh/id_ed25519").unwrap_or_default();
//! sup.upsert_server(NewServer::with_key("web-1", "10.0.0.5", "deploy", &key)).await?;
//! let job = sup.submit(NewJob::command("web-1", "uname -a")).await?;
//! let mut output = sup.output(&job);
//! while let Some(chunk) = output.next().await {
//!     print!("{}", String::from_utf8_lossy(&chunk.data));
//! }
//! let end = sup.wait(&job).await?;
//! println!("{} (exit code {:?})", end.status, end.exit_code);
//! sup.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! ## Layout
//!
//! - [`supervisor`]: the library API ([`Supervisor`]).
//! - [`settings`]: the settings tree, loaded in layers (defaults, file, environment);
//!   [`check`] validates a settings file with line context.
//! - [`domain`]: ids, statuses and their allowed transitions, validation. No I/O.
//! - [`store`]: diesel over SQLite or PostgreSQL, chosen at run time; migrations embedded.
//! - [`actors`]: the dispatcher, a pool actor per host, an actor per job, the output writer.
//! - [`queue`]: the in-process queue and RabbitMQ (jobs, cancels, events), [`events`] the
//!   in-process event bus.
//! - [`ssh`]: connect, verify host keys, authenticate, classify failures; remote process
//!   groups in [`ssh::exec`].
//! - [`secrets`]: the keyring that seals stored passwords and keys (ChaCha20-Poly1305).
//! - [`http`]: the actix-web routes, auth, limits, OpenAPI, and the JSON error contract
//!   ([`error`]); [`metrics`] the Prometheus registry.
//! - [`app`]: builds all of it from settings and runs it ([`App`]).

pub mod actors;
pub mod app;
pub mod check;
pub mod domain;
pub mod error;
pub mod events;
mod follow;
pub mod http;
pub mod metrics;
pub mod queue;
pub mod secrets;
pub mod settings;
pub mod ssh;
pub mod store;
pub mod supervisor;
pub mod telemetry;

pub use app::{App, Role, StartError};
pub use settings::Settings;
pub use supervisor::Supervisor;
