//! # job-executor
//!
//! Takes shell jobs over a REST API, queues them, runs them on remote machines over SSH, and
//! tracks their status and output.
//!
//! ## Layout
//!
//! - [`settings`]: the settings tree, loaded in layers (defaults, file, environment).
//! - [`domain`]: ids, statuses and their allowed transitions, validation. No I/O.
//! - [`store`]: diesel over SQLite or PostgreSQL, chosen at run time; migrations embedded.
//! - [`ssh`]: connect, verify host keys, authenticate, classify failures.
//! - [`secrets`]: the keyring that seals stored passwords and keys (ChaCha20-Poly1305).
//! - [`http`]: the actix-web routes and the JSON error contract ([`error`]).
//! - [`app`]: builds all of it from settings and runs it ([`App`]).
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let settings = job_executor::Settings::load(None)?;
//! let app = job_executor::App::start(settings, job_executor::Role::Serve).await?;
//! println!("listening on {:?}", app.local_addr());
//! app.stop().await;
//! # Ok(()) }
//! ```

pub mod actors;
pub mod app;
pub mod check;
pub mod domain;
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

pub use app::{App, Role, StartError};
pub use settings::Settings;
pub use supervisor::Supervisor;
