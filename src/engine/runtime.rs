//! Starting and stopping the engine: the database, the queue, the dispatcher and its actors,
//! on an actix system that lives on a thread of its own, so the caller can be a plain tokio
//! program (a test, an embedding program) or the binary.
//!
//! ```text
//!  start: open + migrate the database ─▶ settings' servers ─▶ thread: actix system
//!           ─▶ broker, queue, bridge, dispatcher ─▶ `extra` (the HTTP server, for app) ─▶ ready
//!  stop:  stop signal ─▶ Drain (running jobs get worker.shutdown_grace_secs, then are
//!           canceled) ─▶ the thread ends
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use actix::Actor;
use tokio::sync::oneshot;

use super::{Engine, apply_servers, ensure_default_server};
use crate::actors::Dispatcher;
use crate::actors::job::JobDeps;
use crate::actors::messages::Drain;
use crate::events::EventBus;
use crate::queue::bridge::{self, Duties};
use crate::queue::rabbit::{self, RabbitBroker, Roles};
use crate::queue::{JobQueue, MemoryQueue};
use crate::settings::Settings;
use crate::store::{Store, StoreError};

/// What a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// API and worker in one process (the embedded default).
    Serve,
    /// The HTTP API only.
    Api,
    /// The worker only (no HTTP listener).
    Worker,
}

impl Role {
    /// Whether this role runs jobs.
    pub fn runs_jobs(self) -> bool {
        self != Role::Api
    }
}

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The database could not be opened or migrated.
    #[error("database: {0}")]
    Store(#[from] StoreError),
    /// A `[[servers]]` table is invalid or its secret file cannot be read.
    #[error("[[servers]]: {0}")]
    Servers(String),
    /// A `[[templates]]` or `[[schedules]]` table is invalid, or could not be saved.
    #[error("{0}")]
    Declared(String),
    /// The default server from the seed's `SSH_*` variables is invalid.
    #[error("default server (SSH_HOST…): {0}")]
    DefaultServer(String),
    /// A `[retention]` value is invalid.
    #[error("[retention] {0}")]
    Retention(crate::domain::FieldError),
    /// The broker's settings cannot be used (`rabbitmq.ca_file`, the URL's scheme).
    #[error("[rabbitmq] {0}")]
    Broker(rabbit::TlsError),
    /// The runtime thread died before the engine was ready.
    #[error("the engine thread failed to start: {0}")]
    Thread(String),
}

/// A running engine. [`Runtime::stop`] drains it.
pub struct Runtime {
    engine: Engine,
    stop_tx: Option<oneshot::Sender<()>>,
    done: Option<oneshot::Receiver<()>>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("engine", &self.engine)
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// Start the engine for `role`.
    pub async fn start(settings: Arc<Settings>, role: Role) -> Result<Runtime, StartError> {
        let store = Store::open(&settings).await?;
        let (runtime, ()) =
            Self::start_on(settings, store, role, |_| async { Ok::<_, StartError>(()) }).await?;
        Ok(runtime)
    }

    /// Start the engine for `role` on a store the caller opened ([`Store::open`], or
    /// [`open_store_waiting`]), then run `extra` on its actix system with the engine (the
    /// HTTP server is started there); returns what `extra` made. If `extra` fails the
    /// engine stops and its error is returned.
    pub async fn start_on<T, E, F, Fut>(
        settings: Arc<Settings>,
        store: Store,
        role: Role,
        extra: F,
    ) -> Result<(Runtime, T), E>
    where
        T: Send + 'static,
        E: From<StartError> + Send + 'static,
        F: FnOnce(Engine) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + 'static,
    {
        settings.retention.policy().map_err(StartError::Retention)?;
        let broker_tls = rabbit::tls_config(&settings.rabbitmq).map_err(StartError::Broker)?;
        tracing::info!(
            database = %settings.database.redacted_url(),
            backend = store.backend().as_str(),
            "database ready"
        );
        ensure_default_server(&store, &settings).await?;
        apply_servers(&store, &settings).await?;
        let (ready_tx, ready_rx) = oneshot::channel::<Result<(Engine, T), E>>();
        let (done_tx, done_rx) = oneshot::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("job-executor".into())
            .spawn(move || {
                let system = actix_rt::System::new();
                system.block_on(async move {
                    let engine = assemble(settings, store, role, broker_tls);
                    if let Err(e) = engine.apply_declared(&engine.settings).await {
                        let _ = ready_tx.send(Err(E::from(e)));
                        return;
                    }
                    engine.spawn_run_driver();
                    engine.spawn_deliverer();
                    engine.spawn_pruner();
                    if role.runs_jobs() {
                        engine.spawn_scheduler();
                    }
                    match extra(engine.clone()).await {
                        Ok(made) => {
                            let _ = ready_tx.send(Ok((engine.clone(), made)));
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    }
                    let _ = stop_rx.await;
                    engine.drain().await;
                });
                let _ = done_tx.send(());
            })
            .map_err(|e| StartError::Thread(e.to_string()))?;
        let (engine, made) = ready_rx
            .await
            .map_err(|_| StartError::Thread("it exited early".into()))??;
        let runtime = Runtime {
            engine,
            stop_tx: Some(stop_tx),
            done: Some(done_rx),
        };
        Ok((runtime, made))
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Stop: running jobs get `worker.shutdown_grace_secs` to finish, then are canceled
    /// (their remote process groups killed); nothing is left `running`.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop_tx.take() {
            let _ = tx.send(());
        }
        self.wait().await;
    }

    /// Wait until the engine has stopped.
    pub async fn wait(&mut self) {
        if let Some(done) = self.done.as_mut() {
            let _ = done.await;
        }
    }
}

/// Open the database, waiting while it cannot be reached (down, starting up, its host not
/// answering yet): a process started before its database listens, answers
/// `/health/ready` with 503 meanwhile (see `app`) and goes on once it is up. What waiting
/// cannot mend (a certificate, TLS, authentication; [`StoreError::Refused`]) ends the wait
/// at once with the reason. Each new reason is logged; the wait doubles from 0.25 s to 5 s.
pub async fn open_store_waiting(settings: &Settings) -> Result<Store, StartError> {
    let mut wait = Duration::from_millis(250);
    let mut said = String::new();
    loop {
        match Store::open(settings).await {
            Ok(store) => return Ok(store),
            Err(StoreError::Unavailable(reason)) => {
                if reason != said {
                    tracing::warn!(
                        database = %settings.database.redacted_url(),
                        error = %reason,
                        "waiting for the database"
                    );
                    said = reason;
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The broker, the queue, the bridge and the dispatcher of `role` (on the actix system).
fn assemble(settings: Arc<Settings>, store: Store, role: Role, broker_tls: rabbit::Tls) -> Engine {
    let events = EventBus::default();
    let broker = settings.rabbitmq.enabled().then(|| {
        let prefetch = u16::try_from(settings.worker.concurrency).unwrap_or(u16::MAX);
        let roles = Roles {
            consume_jobs: role.runs_jobs().then_some(prefetch),
            control: role.runs_jobs(),
            events: !role.runs_jobs(),
        };
        let name = format!("job-executor {role:?} {}", settings.worker.worker_id());
        tracing::info!(broker = %settings.rabbitmq.redacted_url(), "using RabbitMQ");
        RabbitBroker::start(settings.rabbitmq.clone(), broker_tls, roles, name)
    });
    let queue: Arc<dyn JobQueue> = match &broker {
        Some(b) => b.clone(),
        None => Arc::new(MemoryQueue::default()),
    };
    let published = broker.as_ref().and_then(|b| {
        let duties = Duties {
            forward_events: role.runs_jobs(),
            receive_events: role == Role::Api,
            outbox: role != Role::Worker,
        };
        bridge::spawn(
            duties,
            b.clone(),
            store.clone(),
            events.clone(),
            settings.rabbitmq.poll_secs,
        )
    });
    let deps = JobDeps {
        store: store.clone(),
        events: events.clone(),
        jobs: Arc::new(settings.jobs.clone()),
    };
    let dispatcher = Dispatcher::new(deps, settings.clone(), queue.clone(), role.runs_jobs())
        .with_broker(broker.clone())
        .start();
    Engine {
        store,
        settings,
        queue,
        events,
        dispatcher,
        broker,
        published,
    }
}

impl Engine {
    /// Stop taking jobs; let running ones finish within `worker.shutdown_grace_secs`, then
    /// cancel them.
    async fn drain(&self) {
        let grace = Duration::from_secs(self.settings.worker.shutdown_grace_secs);
        let _ = self.dispatcher.send(Drain { grace }).await;
    }
}
