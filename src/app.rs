//! Wires a role: the engine ([`Runtime`]) and, unless the role is `worker`, the HTTP server
//! on the engine's actix system; applies reloaded settings (SIGHUP).
//!
//! [`App::start`] returns once the server is listening, [`App::stop`] stops it gracefully
//! (in-flight requests, then the engine's drain), [`App::wait`] waits for it to end.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{App as ActixApp, HttpServer, web};

use crate::engine::{self, Engine, Role, Runtime, apply_servers};
use crate::http::{self, AppState};
use crate::settings::{Settings, loopback_only};
use crate::store::{Store, StoreError};

/// Why the application could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The engine could not start (database, settings' servers).
    #[error(transparent)]
    Engine(#[from] engine::StartError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: String,
        /// The OS's answer.
        source: std::io::Error,
    },
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
}

/// A running application: the engine, and the HTTP server unless the role is `worker`.
pub struct App {
    addr: Option<SocketAddr>,
    runtime: Runtime,
    state: AppState,
    handle: Option<actix_web::dev::ServerHandle>,
    grace: Duration,
}

impl App {
    /// Listen (unless the role is `worker`), open the database (applying migrations),
    /// register the servers the settings name, and start the engine and the HTTP API.
    ///
    /// The address is bound first. A database that cannot be reached yet (down, starting
    /// up) is waited for, with the API answering meanwhile: `/health` and `/health/ready`
    /// 503, every other path 503 `unavailable`; once it is up the full API takes over the
    /// same socket. What waiting cannot mend (a certificate, TLS, authentication) ends the
    /// start with the reason. Returns once the full API serves.
    pub async fn start(settings: Settings, role: Role) -> Result<App, StartError> {
        let settings = Arc::new(settings);
        let tokens = http::auth::Tokens::from_settings(&settings.auth.tokens)?;
        let listens = role != Role::Worker;
        let (listener, tls) = if listens {
            require_tokens_beyond_loopback(&settings.http.addr, &tokens)?;
            let tls = tls_config(&settings.http)?;
            (Some(bind(&settings.http.addr).await?), tls)
        } else {
            (None, None)
        };
        let store = match Store::open(&settings).await {
            // Not reachable yet: answer 503 on the socket while waiting for it.
            Err(StoreError::Unavailable(_)) => {
                let waiting = match &listener {
                    Some(listener) => Some(Waiting::start(listener, tls.clone(), &settings)?),
                    None => None,
                };
                let store = engine::open_store_waiting(&settings).await;
                if let Some(waiting) = waiting {
                    waiting.stop().await;
                }
                store?
            }
            opened => opened.map_err(engine::StartError::from)?,
        };
        let grace = Duration::from_secs(settings.http.shutdown_grace_secs);
        let (runtime, (addr, handle, state)) =
            Runtime::start_on(settings, store, role, move |engine| async move {
                let state = AppState::with_tokens(engine, tokens);
                let Some(listener) = listener else {
                    return Ok::<_, StartError>((None, None, state));
                };
                let (addr, handle) = serve(&state, listener, tls)?;
                Ok((Some(addr), Some(handle), state))
            })
            .await?;
        if let Some(addr) = addr {
            tracing::info!(%addr, role = ?role, "listening");
        }
        Ok(App {
            addr,
            runtime,
            state,
            handle,
            grace,
        })
    }

    /// The address the HTTP server listens on (`None` for a worker).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        self.runtime.engine()
    }

    /// A handle that applies reloaded settings (see [`Reloader::reload`]).
    pub fn reloader(&self) -> Reloader {
        Reloader {
            state: self.state.clone(),
            listens: self.addr.is_some(),
        }
    }

    /// Stop: finish in-flight requests up to the grace period, then drain the engine.
    pub async fn stop(mut self) {
        if let Some(handle) = self.handle.take() {
            let _ =
                tokio::time::timeout(self.grace + Duration::from_secs(1), handle.stop(true)).await;
        }
        self.runtime.stop().await;
    }

    /// Wait until the application stops by itself.
    pub async fn wait(&mut self) {
        self.runtime.wait().await;
    }
}

/// Bind the API's address (a backlog of 2048, as actix binds).
async fn bind(addr: &str) -> Result<std::net::TcpListener, StartError> {
    let failed = |source| StartError::Bind {
        addr: addr.to_string(),
        source,
    };
    let mut last = std::io::Error::other("the address resolves to nothing");
    for a in tokio::net::lookup_host(addr).await.map_err(failed)? {
        let socket = if a.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        };
        let bound = socket.and_then(|s| {
            s.set_reuseaddr(true)?;
            s.bind(a)?;
            s.listen(2048)
        });
        match bound.and_then(|l| l.into_std()) {
            Ok(listener) => return Ok(listener),
            Err(e) => last = e,
        }
    }
    Err(failed(last))
}

/// Start the HTTP API of `state` on `listener` (on the engine's actix system).
fn serve(
    state: &AppState,
    listener: std::net::TcpListener,
    tls: Option<rustls::ServerConfig>,
) -> Result<(SocketAddr, actix_web::dev::ServerHandle), StartError> {
    let settings = state.engine.settings().clone();
    let data = web::Data::new(state.clone());
    let server = HttpServer::new(move || {
        ActixApp::new()
            .app_data(data.clone())
            .configure(http::configure)
            // The dashboard at `/` (not part of the OpenAPI document).
            .configure(http::dashboard::configure)
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
    let bind_error = |source| StartError::Bind {
        addr: settings.http.addr.clone(),
        source,
    };
    let addr = listener.local_addr().map_err(bind_error)?;
    let server = match tls {
        Some(config) => server.listen_rustls_0_23(listener, config),
        None => server.listen(listener),
    }
    .map_err(bind_error)?
    .run();
    let handle = server.handle();
    actix_web::rt::spawn(server);
    Ok((addr, handle))
}

/// The API of a process waiting for its database ([`http::configure_waiting`]), on
/// an actix system of its own thread, until [`Waiting::stop`].
struct Waiting {
    handle: actix_web::dev::ServerHandle,
    thread: std::thread::JoinHandle<()>,
}

impl Waiting {
    fn start(
        listener: &std::net::TcpListener,
        tls: Option<rustls::ServerConfig>,
        settings: &Settings,
    ) -> Result<Waiting, StartError> {
        let addr = settings.http.addr.clone();
        let failed = |source| StartError::Bind {
            addr: addr.clone(),
            source,
        };
        let listener = listener.try_clone().map_err(failed)?;
        let waiting = http::Waiting {
            backend: match settings.database.kind() {
                crate::settings::DatabaseKind::Sqlite(_) => "sqlite",
                crate::settings::DatabaseKind::Postgres(_) => "postgres",
            },
            broker: settings.rabbitmq.enabled(),
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("job-executor-waiting".into())
            .spawn(move || {
                actix_rt::System::new().block_on(async move {
                    let server = HttpServer::new(move || {
                        ActixApp::new().configure(|cfg| http::configure_waiting(cfg, waiting))
                    })
                    .disable_signals()
                    .workers(1)
                    .shutdown_timeout(1);
                    let server = match tls {
                        Some(config) => server.listen_rustls_0_23(listener, config),
                        None => server.listen(listener),
                    };
                    match server {
                        Ok(server) => {
                            let server = server.run();
                            let _ = tx.send(Ok(server.handle()));
                            let _ = server.await;
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                        }
                    }
                });
            })
            .map_err(failed)?;
        let handle = rx
            .recv()
            .map_err(|_| std::io::Error::other("the waiting API's thread died"))
            .and_then(|r| r)
            .map_err(failed)?;
        Ok(Waiting { handle, thread })
    }

    /// Stop answering (requests in flight finish first); the socket stays open and
    /// connections wait in its backlog for the full API.
    async fn stop(self) {
        self.handle.stop(true).await;
        let _ = tokio::task::spawn_blocking(move || self.thread.join()).await;
    }
}

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

/// Applies new settings to a running application (SIGHUP). Cheap to clone.
#[derive(Clone)]
pub struct Reloader {
    state: AppState,
    /// Whether this process serves HTTP (a worker needs no tokens wherever it would listen).
    listens: bool,
}

impl Reloader {
    /// Apply what can change without a restart: `[[servers]]`, `[[templates]]` and
    /// `[[schedules]]` (created or updated by name; those no longer in the file are left as
    /// they are), `auth.tokens` and `[limits]`.
    /// Running jobs are not touched. Everything else needs a restart. Returns a summary.
    pub async fn reload(&self, settings: &Settings) -> Result<String, StartError> {
        let engine = &self.state.engine;
        let tokens = http::auth::Tokens::from_settings(&settings.auth.tokens)?;
        if self.listens {
            require_tokens_beyond_loopback(&engine.settings().http.addr, &tokens)?;
        }
        let servers = apply_servers(engine.store(), settings)
            .await
            .map_err(StartError::from)?;
        let declared = engine.apply_declared(settings).await?;
        let n_tokens = tokens.len();
        self.state.tokens.replace(tokens);
        self.state.limits.reconfigure(&settings.limits);
        Ok(format!(
            "{servers} server(s) applied, {} template(s), {} schedule(s) and {} webhook(s) \
             ({} changed), {n_tokens} token(s), limits updated",
            declared.templates, declared.schedules, declared.webhooks, declared.changed
        ))
    }
}
