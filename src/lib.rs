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
//! Every use case lives once, in [`engine`]; the edges call it. Nothing imports upward and
//! no two modules import each other (`shared/tools/layers.py` checks it):
//!
//! ```text
//!   main (binary) ──▶ app ──▶ http ────────┐   supervisor (library) ──┐
//!                      │    (extract → engine → typed view)          │
//!                      └──────────────────▶ engine ◀─────────────────┘
//!                           (use cases: Engine; start / drain: Runtime; follow)
//!                                │                         │
//!                 actors (Dispatcher, HostActor,      queue (memory, RabbitMQ,
//!                  JobActor, output writer)            bridge), events
//!                                │                         │
//!                       store (diesel) · ssh · secrets · settings · metrics
//!                                │
//!                             domain (ids, statuses, validation; no I/O)
//! ```
//!
//! - [`engine`]: submit, cancel, duplicate, output and follow; servers: create, update,
//!   delete, test, pin; the audit record of each; [`engine::Runtime`] starts the rest for a
//!   [`Role`] and drains it.
//! - [`http`]: actix-web handlers that parse, call the engine and return a view type; the
//!   OpenAPI document is collected from the same registration; auth, limits, metrics
//!   middleware; [`error`] maps engine errors to statuses and JSON.
//! - [`supervisor`]: the library API ([`Supervisor`]): a builder and one-line delegations.
//! - [`app`]: wires a role (engine, HTTP server) and reloads settings ([`App`]); the API
//!   listens before the database is up and answers 503 until it is.
//! - [`actors`]: the dispatcher, a pool actor per host, an actor per job, the output writer.
//! - [`queue`]: the in-process queue and RabbitMQ (jobs, cancels, events; `amqps://` on
//!   rustls), [`events`] the in-process event bus.
//! - [`store`]: diesel over SQLite or PostgreSQL, chosen at run time; migrations embedded;
//!   libpq with TLS (`sslmode`, `sslrootcert` in the URL); SQLite's writes committed in
//!   groups by one writer thread, its WAL checkpointed by another.
//! - [`ssh`]: connect, verify host keys, authenticate, classify failures; remote process
//!   groups in [`ssh::exec`]. [`secrets`]: the keyring that seals stored credentials.
//! - [`settings`]: the settings tree, loaded in layers (defaults, file, environment);
//!   [`check`] validates a settings file with line context. [`metrics`]: the registry.
//! - [`domain`]: ids, statuses and their allowed transitions, validation. No I/O.

pub mod actors;
pub mod app;
pub mod check;
pub mod domain;
pub mod engine;
pub mod error;
pub mod events;
pub mod http;
pub mod metrics;
pub mod queue;
pub mod secrets;
pub mod settings;
pub mod ssh;
pub mod store;
pub mod supervisor;
pub mod telemetry;

pub use app::{App, StartError};
pub use engine::{Engine, Role};
pub use settings::Settings;
pub use supervisor::Supervisor;
