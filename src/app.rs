//! Builds the store and the HTTP server from settings, and runs them on a thread of their own.
//!
//! The actix system lives on its own thread, so the caller can be a plain tokio program (a
//! test, an embedding program) or the binary: [`App::start`] returns once the server is
//! listening, [`App::stop`] stops it gracefully, [`App::wait`] waits for it to end.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::Actor;
use actix_web::{App as ActixApp, HttpServer, web};
use tokio::sync::oneshot;

use crate::actors::Dispatcher;
use crate::actors::job::JobDeps;
use crate::actors::messages::Drain;
use crate::domain::ServerPatch;
use crate::events::EventBus;
use crate::http::{self, AppState};
use crate::queue::rabbit::{RabbitBroker, Roles};
use crate::queue::{JobQueue, MemoryQueue, bridge};
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

/// Why the application could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The database could not be opened or migrated.
    #[error("database: {0}")]
    Store(#[from] StoreError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: String,
        /// The OS's answer.
        source: std::io::Error,
    },
    /// A `[[servers]]` table is invalid or its secret file cannot be read.
    #[error("[[servers]]: {0}")]
    Servers(String),
    /// The default server from the seed's `SSH_*` variables is invalid.
    #[error("default server (SSH_HOST…): {0}")]
    DefaultServer(String),
    /// An `auth.tokens` entry is unusable.
    #[error("{0}")]
    Tokens(#[from] http::auth::TokenError),
    /// Asked to listen beyond loopback with no tokens configured.
    #[error(
        "refusing to listen on {addr} without authentication: with no API tokens the API \
         only listens on a loopback address (127.0.0.1, ::1). Set JOBEXEC_API_TOKENS (or \
         auth.tokens) to serve other addresses, or listen on 127.0.0.1"
    )]
    OpenWithoutTokens {
        /// The address asked for.
        addr: String,
    },
    /// The TLS certificate or key cannot be used.
    #[error("TLS: {0}")]
    Tls(String),
    /// The runtime thread died before the server was ready.
    #[error("the server thread failed to start: {0}")]
    Thread(String),
}

/// A running application.
pub struct App {
    addr: Option<SocketAddr>,
    store: Store,
    state: AppState,
    handle: Option<actix_web::dev::ServerHandle>,
    stop_tx: Option<oneshot::Sender<()>>,
    done: Option<oneshot::Receiver<()>>,
    grace: Duration,
}

impl App {
    /// Open the database (applying migrations), register the default server if the settings
    /// name one, and start the HTTP server (unless the role is `worker`).
    pub async fn start(settings: Settings, role: Role) -> Result<App, StartError> {
        let settings = Arc::new(settings);
        let tokens = Arc::new(http::auth::Tokens::from_settings(&settings.auth.tokens)?);
        if role != Role::Worker {
            require_tokens_beyond_loopback(&settings.http.addr, &tokens)?;
        }
        let store = Store::open(&settings).await?;
        tracing::info!(
            database = %settings.database.redacted_url(),
            backend = store.backend().as_str(),
            "database ready"
        );
        ensure_default_server(&store, &settings).await?;
        apply_servers(&store, &settings).await?;
        let (ready_tx, ready_rx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread_store = store.clone();
        let thread_settings = settings.clone();
        std::thread::Builder::new()
            .name("job-executor".into())
            .spawn(move || {
                let system = actix_rt::System::new();
                system.block_on(run(
                    thread_settings,
                    thread_store,
                    tokens,
                    role,
                    ready_tx,
                    stop_rx,
                ));
                let _ = done_tx.send(());
            })
            .map_err(|e| StartError::Thread(e.to_string()))?;
        let (addr, handle, state) = ready_rx
            .await
            .map_err(|_| StartError::Thread("it exited early".into()))??;
        if let Some(addr) = addr {
            tracing::info!(%addr, role = ?role, "listening");
        }
        Ok(App {
            addr,
            store,
            state,
            handle,
            stop_tx: Some(stop_tx),
            done: Some(done_rx),
            grace: Duration::from_secs(settings.http.shutdown_grace_secs),
        })
    }

    /// The address the HTTP server listens on (`None` for a worker).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// The database.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// A handle that applies reloaded settings (see [`Reloader::reload`]).
    pub fn reloader(&self) -> Reloader {
        Reloader {
            state: self.state.clone(),
            listens: self.addr.is_some(),
        }
    }

    /// The engine's handles (store, queue, events, dispatcher): what the HTTP handlers and
    /// the [`crate::Supervisor`] act through. Pass it as `web::Data` to mount
    /// [`crate::http::configure`] in an embedding program's own actix-web app.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Stop: finish in-flight requests up to the grace period, then close.
    pub async fn stop(mut self) {
        if let Some(handle) = self.handle.take() {
            let _ =
                tokio::time::timeout(self.grace + Duration::from_secs(1), handle.stop(true)).await;
        }
        if let Some(tx) = self.stop_tx.take() {
            let _ = tx.send(());
        }
        if let Some(done) = self.done.take() {
            let _ = done.await;
        }
    }

    /// Wait until the application stops by itself.
    pub async fn wait(&mut self) {
        if let Some(done) = self.done.as_mut() {
            let _ = done.await;
        }
    }
}

/// What the runtime thread hands back once it runs: the address, the server's handle, and
/// the handles of the engine (for the library API).
type Ready = Result<
    (
        Option<SocketAddr>,
        Option<actix_web::dev::ServerHandle>,
        AppState,
    ),
    StartError,
>;

/// The TLS server configuration when `http.tls_cert` and `http.tls_key` are set.
fn tls_config(
    http: &crate::settings::HttpSettings,
) -> Result<Option<rustls::ServerConfig>, StartError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let (cert, key) = (http.tls_cert.trim(), http.tls_key.trim());
    match (cert.is_empty(), key.is_empty()) {
        (true, true) => return Ok(None),
        (false, false) => {}
        _ => {
            return Err(StartError::Tls(
                "set both http.tls_cert and http.tls_key, or neither".into(),
            ));
        }
    }
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| StartError::Tls(format!("cannot read the certificate {cert}: {e}")))?;
    if certs.is_empty() {
        return Err(StartError::Tls(format!("{cert} holds no certificate")));
    }
    // The key file's error names the file, never its content.
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| StartError::Tls(format!("cannot read the private key {key}: {e}")))?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StartError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, private)
        .map_err(|e| StartError::Tls(format!("{cert} and {key} do not make a pair: {e}")))?;
    Ok(Some(config))
}

/// Whether every address `addr` names is a loopback address. An address that does not
/// resolve counts as loopback here: binding it fails with its own error.
pub(crate) fn loopback_only(addr: &str) -> bool {
    use std::net::ToSocketAddrs;
    match addr.to_socket_addrs() {
        Ok(addrs) => addrs.into_iter().all(|a| a.ip().is_loopback()),
        Err(_) => true,
    }
}

/// An API without tokens listens on loopback only.
fn require_tokens_beyond_loopback(
    addr: &str,
    tokens: &http::auth::Tokens,
) -> Result<(), StartError> {
    if tokens.is_empty() && !loopback_only(addr) {
        return Err(StartError::OpenWithoutTokens {
            addr: addr.to_string(),
        });
    }
    Ok(())
}

async fn run(
    settings: Arc<Settings>,
    store: Store,
    tokens: Arc<http::auth::Tokens>,
    role: Role,
    ready: oneshot::Sender<Ready>,
    stop: oneshot::Receiver<()>,
) {
    let events = EventBus::default();
    let broker = settings.rabbitmq.enabled().then(|| {
        let prefetch = u16::try_from(settings.worker.concurrency).unwrap_or(u16::MAX);
        let roles = match role {
            Role::Serve | Role::Worker => Roles {
                consume_jobs: Some(prefetch),
                control: true,
                events: false,
            },
            Role::Api => Roles {
                consume_jobs: None,
                control: false,
                events: true,
            },
        };
        let name = format!("job-executor {role:?} {}", settings.worker.worker_id());
        tracing::info!(broker = %settings.rabbitmq.redacted_url(), "using RabbitMQ");
        RabbitBroker::start(settings.rabbitmq.clone(), roles, name)
    });
    let queue: Arc<dyn JobQueue> = match &broker {
        Some(b) => b.clone(),
        None => Arc::new(MemoryQueue::default()),
    };
    if let Some(b) = &broker {
        bridge::spawn(
            role,
            b.clone(),
            store.clone(),
            events.clone(),
            settings.rabbitmq.poll_secs,
        );
    }
    let deps = JobDeps {
        store: store.clone(),
        events: events.clone(),
        jobs: Arc::new(settings.jobs.clone()),
    };
    let runs_jobs = role != Role::Api;
    let dispatcher = Dispatcher::new(deps, settings.clone(), queue.clone(), runs_jobs)
        .with_broker(broker.clone())
        .start();
    let drain = {
        let d = dispatcher.clone();
        let grace = Duration::from_secs(settings.worker.shutdown_grace_secs);
        move || async move {
            let _ = d.send(Drain { grace }).await;
        }
    };
    let state = AppState {
        store,
        settings: settings.clone(),
        queue,
        events,
        dispatcher: Some(dispatcher),
        broker,
        tokens,
        limits: Arc::new(http::limits::Limits::new(&settings.limits)),
    };
    if role == Role::Worker {
        let _ = ready.send(Ok((None, None, state)));
        let _ = stop.await;
        drain().await;
        return;
    }
    let data = web::Data::new(state.clone());
    let server = HttpServer::new(move || {
        ActixApp::new()
            .app_data(data.clone())
            .configure(http::configure)
            .default_service(web::to(http::not_found))
    })
    .disable_signals()
    // A client that closes its side is gone (no HTTP client half-closes and waits): end its
    // response at once, which ends an SSE stream's task and frees its place under the cap.
    .h1_allow_half_closed(false)
    .shutdown_timeout(settings.http.shutdown_grace_secs);
    let server = if settings.http.workers > 0 {
        server.workers(settings.http.workers)
    } else {
        server
    };
    let tls = match tls_config(&settings.http) {
        Ok(t) => t,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let bound = match tls {
        Some(config) => server.bind_rustls_0_23(&settings.http.addr, config),
        None => server.bind(&settings.http.addr),
    };
    let server = match bound {
        Ok(s) => s,
        Err(source) => {
            let _ = ready.send(Err(StartError::Bind {
                addr: settings.http.addr.clone(),
                source,
            }));
            return;
        }
    };
    let addr = server.addrs().first().copied();
    let server = server.run();
    let _ = ready.send(Ok((addr, Some(server.handle()), state)));
    let _ = server.await;
    let _ = stop.await;
    drain().await;
}

/// The seed's `SSH_HOST`/`SSH_USER`/… describe a default server: create or update it by name.
async fn ensure_default_server(store: &Store, settings: &Settings) -> Result<(), StartError> {
    use secrecy::{ExposeSecret, SecretString};
    let d = &settings.default_server;
    if d.host.trim().is_empty() {
        return Ok(());
    }
    let key = if d.private_key_path.is_empty() {
        None
    } else {
        let text = std::fs::read_to_string(&d.private_key_path).map_err(|e| {
            StartError::DefaultServer(format!("cannot read {}: {e}", d.private_key_path))
        })?;
        Some(SecretString::from(text))
    };
    let password = (!d.password.expose_secret().is_empty()).then(|| d.password.clone());
    let patch = ServerPatch {
        name: Some(d.name.clone()),
        hostname: Some(d.host.clone()),
        port: Some(i64::from(d.port)),
        user: Some(if d.user.is_empty() {
            "root".into()
        } else {
            d.user.clone()
        }),
        auth_type: Some(if key.is_some() { "key" } else { "password" }.into()),
        password,
        private_key: key,
        ..Default::default()
    };
    crate::supervisor::upsert_server_in(store, settings, patch)
        .await
        .map_err(|e| StartError::DefaultServer(e.to_string()))?;
    tracing::info!(name = %d.name, host = %d.host, "default server registered from SSH_* settings");
    Ok(())
}

/// Create or update, by name, every `[[servers]]` table of the settings. All are checked
/// before any is written, so a bad table changes nothing.
pub async fn apply_servers(store: &Store, settings: &Settings) -> Result<usize, StartError> {
    let mut patches = Vec::new();
    for server in &settings.servers {
        let patch = server
            .checked_patch(settings.ssh.default_max_concurrent_jobs)
            .map_err(StartError::Servers)?;
        patches.push(patch);
    }
    let n = patches.len();
    for patch in patches {
        let name = patch.name.clone().unwrap_or_default();
        crate::supervisor::upsert_server_in(store, settings, patch)
            .await
            .map_err(|e| StartError::Servers(e.to_string()))?;
        tracing::info!(name = %name, "server from the settings file applied");
    }
    Ok(n)
}

/// Applies new settings to a running application (SIGHUP). Cheap to clone.
#[derive(Clone)]
pub struct Reloader {
    state: AppState,
    /// Whether this process serves HTTP (a worker needs no tokens wherever it would listen).
    listens: bool,
}

impl Reloader {
    /// Apply what can change without a restart: `[[servers]]` (created or updated by name;
    /// servers no longer in the file are left as they are), `auth.tokens` and `[limits]`.
    /// Running jobs are not touched. Everything else needs a restart. Returns a summary.
    pub async fn reload(&self, settings: &Settings) -> Result<String, StartError> {
        let tokens = http::auth::Tokens::from_settings(&settings.auth.tokens)?;
        if self.listens {
            require_tokens_beyond_loopback(&self.state.settings.http.addr, &tokens)?;
        }
        let servers = apply_servers(&self.state.store, settings).await?;
        let n_tokens = tokens.len();
        self.state.tokens.replace(tokens);
        self.state.limits.reconfigure(&settings.limits);
        Ok(format!(
            "{servers} server(s) applied, {n_tokens} token(s), limits updated"
        ))
    }
}
