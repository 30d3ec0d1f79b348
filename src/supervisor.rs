//! The library API: run the job supervisor inside a Rust program, without HTTP.
//!
//! A [`Supervisor`] owns the same engine the `job-executor` binary runs (the database, the
//! queue, the dispatcher and its actors) on a thread of its own, so the calling program can
//! be a plain `#[tokio::main]` program: nothing of actix shows through.
//!
//! ```no_run
//! use futures::StreamExt;
//! use job_executor::supervisor::{NewServer, Supervisor};
//!
//! # async fn demo() -> anyhow::Result<()> {
//! let sup = Supervisor::builder()
//!     .database("sqlite://./jobs.db")
//!     .build()
//!     .await?;
//! sup.upsert_server(NewServer::with_key("web-1", "10.0.0.5", "deploy", "-----BEGIN OPENSSH…"))
//!     .await?;
//! let job = sup.run_command("web-1", "uname -a").await?;
//! let mut output = sup.output(&job);
//! while let Some(chunk) = output.next().await {
//!     print!("{}", String::from_utf8_lossy(&chunk.data));
//! }
//! let done = sup.wait(&job).await?;
//! println!("exit code {:?}", done.exit_code);
//! sup.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! The library acts as `admin` on every server unless told otherwise:
//! [`Builder::acting_as`] gives it a name, a role and a scope, decided as for a token with
//! them (a viewer cannot submit; a scope hides and refuses what is outside it).

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use secrecy::SecretString;
use tokio::sync::mpsc;

use crate::domain::{
    Access, Actor, JobKind, JobRequest, JobStatus, OutputStream, RunRequest, ServerPatch,
    StrategyRequest, TargetsRequest,
};
pub use crate::domain::{JobId, RunId};
use crate::engine::follow::{Gone, Sink};
use crate::engine::{self, Engine, Role, RunEvent, Runtime, Subject};
use crate::settings::{Settings, SettingsError};
pub use crate::store::Run;
use crate::store::{JobRow, ServerRow, StoreError};

/// What went wrong in a library call. Messages never contain secrets.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The settings could not be loaded.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// The supervisor could not start.
    #[error(transparent)]
    Start(#[from] engine::StartError),
    /// A request was refused or failed (invalid field, unknown server, a job that already
    /// ended, the database…), as the engine said it: the HTTP API gives the same message.
    #[error(transparent)]
    Engine(#[from] engine::Error),
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        Error::Engine(e.into())
    }
}

/// Builds a [`Supervisor`]: start from the defaults (or settings), change what you need.
#[derive(Debug)]
pub struct Builder {
    settings: Result<Settings, SettingsError>,
    actor: Actor,
}

impl Builder {
    /// The database: a file path, `sqlite://PATH`, or `postgres://…`.
    pub fn database(self, url: &str) -> Self {
        self.settings(|s| s.database.url = SecretString::from(url.to_string()))
    }

    /// A RabbitMQ broker to share work with `job-executor` workers (default: in-process
    /// queue).
    pub fn rabbitmq(self, url: &str) -> Self {
        self.settings(|s| s.rabbitmq.url = SecretString::from(url.to_string()))
    }

    /// The secret key that seals stored credentials (`VERSION:BASE64`; see
    /// [`crate::secrets`]). Needed on PostgreSQL; on SQLite a key file is made beside the
    /// database otherwise.
    pub fn secret_key(self, key: &str) -> Self {
        self.settings(|s| s.secrets.key = SecretString::from(key.to_string()))
    }

    /// Jobs this process runs at once.
    pub fn concurrency(self, n: usize) -> Self {
        self.settings(|s| s.worker.concurrency = n.max(1))
    }

    /// Seconds a job may run when it does not say.
    pub fn default_timeout(self, d: Duration) -> Self {
        self.settings(|s| s.jobs.default_timeout_secs = whole_seconds(d))
    }

    /// Change any other setting.
    pub fn settings(mut self, change: impl FnOnce(&mut Settings)) -> Self {
        if let Ok(s) = &mut self.settings {
            change(s);
        }
        self
    }

    /// Act as `name` with `access` (a role, and a scope over server labels) instead of as
    /// `library`, an admin on every server: every call is then allowed, hidden or refused as
    /// it would be for a token with them, and the audit log names `name`.
    pub fn acting_as(mut self, name: &str, access: Access) -> Self {
        self.actor = Actor {
            name: name.to_string(),
            peer: None,
            access,
        };
        self
    }

    /// Open the database (migrating it) and start the engine.
    pub async fn build(self) -> Result<Supervisor, Error> {
        let mut sup = Supervisor::start(self.settings?).await?;
        sup.actor = self.actor;
        Ok(sup)
    }
}

/// A server to register (by name: created, or updated when the name exists).
#[derive(Debug)]
pub struct NewServer {
    patch: ServerPatch,
}

impl NewServer {
    /// A server reached with a private key (OpenSSH or PEM text).
    pub fn with_key(name: &str, host: &str, user: &str, private_key: &str) -> Self {
        Self::new(name, host, user, "key").private_key(private_key)
    }

    /// A server reached with a password.
    pub fn with_password(name: &str, host: &str, user: &str, password: &str) -> Self {
        let mut s = Self::new(name, host, user, "password");
        s.patch.password = Some(SecretString::from(password.to_string()));
        s
    }

    fn new(name: &str, host: &str, user: &str, auth: &str) -> Self {
        NewServer {
            patch: ServerPatch {
                name: Some(name.to_string()),
                hostname: Some(host.to_string()),
                user: Some(user.to_string()),
                auth_type: Some(auth.to_string()),
                ..Default::default()
            },
        }
    }

    /// The private key (and key auth).
    pub fn private_key(mut self, key: &str) -> Self {
        self.patch.private_key = Some(SecretString::from(key.to_string()));
        self
    }

    /// The private key's passphrase.
    pub fn passphrase(mut self, passphrase: &str) -> Self {
        self.patch.private_key_passphrase = Some(SecretString::from(passphrase.to_string()));
        self
    }

    /// The SSH port (default 22).
    pub fn port(mut self, port: u16) -> Self {
        self.patch.port = Some(i64::from(port));
        self
    }

    /// Jobs run on it at once.
    pub fn max_concurrent_jobs(mut self, n: u32) -> Self {
        self.patch.max_concurrent_jobs = Some(i64::from(n));
        self
    }

    /// A label, matched by run selectors ([`NewRun::on`]).
    pub fn label(mut self, key: &str, value: &str) -> Self {
        (self.patch.labels.get_or_insert_with(Default::default))
            .insert(key.to_string(), value.to_string());
        self
    }

    /// Pin its host key up front (an OpenSSH public key line or a `SHA256:` fingerprint).
    pub fn host_key(mut self, key: &str) -> Self {
        self.patch.host_key = Some(key.to_string());
        self
    }

    /// The fields as the API's server body (for [`Supervisor::upsert_server`]).
    pub fn into_patch(self) -> ServerPatch {
        self.patch
    }
}

/// A job to submit: a command line or a script, on a server named by name or id.
#[derive(Debug, Default)]
pub struct NewJob {
    kind: Option<JobKind>,
    request: JobRequest,
    server: String,
}

impl NewJob {
    /// A command line, run by the login shell of `server`.
    pub fn command(server: &str, command: &str) -> Self {
        let request = JobRequest {
            command: Some(command.to_string()),
            ..Default::default()
        };
        Self::new(JobKind::Command, server, request)
    }

    /// A script, run by `/bin/bash` (or [`NewJob::shell`]) with [`NewJob::args`] as `$1…`.
    pub fn script(server: &str, script: &str) -> Self {
        let request = JobRequest {
            script: Some(script.to_string()),
            ..Default::default()
        };
        Self::new(JobKind::Script, server, request)
    }

    fn new(kind: JobKind, server: &str, request: JobRequest) -> Self {
        NewJob {
            kind: Some(kind),
            request,
            server: server.to_string(),
        }
    }

    /// Arguments (appended to a command, or a script's `$1…`).
    pub fn args(mut self, args: &str) -> Self {
        self.request.args = Some(args.to_string());
        self
    }

    /// Stop the job after this long (it ends `timed_out`).
    pub fn timeout(mut self, d: Duration) -> Self {
        self.request.timeout = Some(whole_seconds(d));
        self
    }

    /// An environment variable for the remote command.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.request
            .env
            .get_or_insert_with(BTreeMap::new)
            .insert(key.to_string(), value.to_string());
        self
    }

    /// The remote working directory.
    pub fn cwd(mut self, dir: &str) -> Self {
        self.request.cwd = Some(dir.to_string());
        self
    }

    /// The interpreter of a script (an absolute path).
    pub fn shell(mut self, shell: &str) -> Self {
        self.request.shell = Some(shell.to_string());
        self
    }

    /// A second submit with the same key returns the first job.
    pub fn idempotency_key(mut self, key: &str) -> Self {
        self.request.idempotency_key = Some(key.to_string());
        self
    }
}

/// A run to start: one command or script on many servers, admitted as its strategy says
/// (default: all at once, stop at the first failure).
#[derive(Debug, Default)]
pub struct NewRun {
    request: RunRequest,
}

impl NewRun {
    /// A command line, run by each server's login shell.
    pub fn command(command: &str) -> Self {
        let mut run = NewRun::default();
        run.request.job.command = Some(command.to_string());
        run
    }

    /// A script, run by `/bin/bash` (or [`NewRun::shell`]) on each server.
    pub fn script(script: &str) -> Self {
        let mut run = NewRun::default();
        run.request.job.script = Some(script.to_string());
        run
    }

    /// On every active server a label selector matches (`role=web,env!=prod`).
    pub fn on(mut self, selector: &str) -> Self {
        self.request.targets = Some(TargetsRequest {
            selector: Some(selector.to_string()),
            servers: None,
        });
        self
    }

    /// On these servers (names or ids), in this order.
    pub fn on_servers(mut self, servers: &[&str]) -> Self {
        self.request.targets = Some(TargetsRequest {
            selector: None,
            servers: Some(servers.iter().map(|s| s.to_string()).collect()),
        });
        self
    }

    fn strategy(&mut self) -> &mut StrategyRequest {
        self.request.strategy.get_or_insert_with(Default::default)
    }

    /// At most `n` hosts running at once.
    pub fn batch(mut self, n: u32) -> Self {
        self.strategy().batch = Some(serde_json::json!(n));
        self
    }

    /// At most `percent`% of the hosts running at once (rounded up).
    pub fn batch_percent(mut self, percent: u32) -> Self {
        self.strategy().batch = Some(serde_json::json!(format!("{percent}%")));
        self
    }

    /// The first `n` hosts run alone before the rest.
    pub fn canary(mut self, n: u32) -> Self {
        self.strategy().canary = Some(i64::from(n));
        self
    }

    /// Failures allowed before no new host starts (the rest are skipped).
    pub fn max_failures(mut self, n: u32) -> Self {
        self.strategy().max_failures = Some(serde_json::json!(n));
        self
    }

    /// Start every host whatever fails.
    pub fn keep_going(mut self) -> Self {
        self.strategy().keep_going = Some(true);
        self
    }

    /// Arguments (appended to a command, or a script's `$1…`).
    pub fn args(mut self, args: &str) -> Self {
        self.request.job.args = Some(args.to_string());
        self
    }

    /// Stop each host's job after this long (it ends `timed_out`).
    pub fn timeout(mut self, d: Duration) -> Self {
        self.request.job.timeout = Some(whole_seconds(d));
        self
    }

    /// An environment variable for the remote command.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        (self.request.job.env.get_or_insert_with(BTreeMap::new))
            .insert(key.to_string(), value.to_string());
        self
    }

    /// The interpreter of a script (an absolute path).
    pub fn shell(mut self, shell: &str) -> Self {
        self.request.job.shell = Some(shell.to_string());
        self
    }
}

/// A run started by [`Supervisor::run`]: read, wait for, cancel or follow it.
#[derive(Debug, Clone)]
pub struct RunHandle {
    id: RunId,
    engine: Engine,
    actor: Actor,
}

/// A piece of one host's output in a run.
#[derive(Debug, Clone)]
pub struct RunOutput {
    /// The host's place in the run.
    pub position: usize,
    /// The host's server name.
    pub server_name: String,
    /// The chunk.
    pub chunk: OutputChunk,
}

impl RunHandle {
    /// The run's id.
    pub fn id(&self) -> RunId {
        self.id
    }

    /// The run as stored now (each host with its job).
    pub async fn get(&self) -> Result<Run, Error> {
        Ok(self.engine.run(&self.actor, self.id).await?)
    }

    /// Wait until every host has ended; returns the run as it ended.
    pub async fn wait(&self) -> Result<Run, Error> {
        self.get().await?;
        Ok(self.engine.wait_run(self.id).await?)
    }

    /// Cancel: hosts not started are skipped, running ones canceled. Refused when the run
    /// has already ended.
    pub async fn cancel(&self) -> Result<Run, Error> {
        Ok(self.engine.cancel_run(&self.actor, self.id).await?)
    }

    /// Every host's output from the start, live, as one async stream that ends when the run
    /// does (each host's chunks in order; hosts interleaved as they came).
    pub fn output(&self) -> Pin<Box<dyn Stream<Item = RunOutput> + Send>> {
        let (tx, mut rx) = mpsc::channel::<RunOutput>(64);
        let (engine, actor) = (self.engine.clone(), self.actor.clone());
        let id = self.id;
        tokio::spawn(async move {
            let Ok(mut run) = engine.run(&actor, id).await else {
                return;
            };
            let (events_tx, mut events) = mpsc::channel(64);
            tokio::spawn(engine.follow_run(run.clone(), Vec::new(), events_tx).run());
            while let Some(event) = events.recv().await {
                let (position, chunk) = match event {
                    RunEvent::Run(r) => {
                        run = r;
                        continue;
                    }
                    RunEvent::Output { position, chunk } => (position, chunk),
                    RunEvent::Complete(_) => return,
                    RunEvent::Status { .. } | RunEvent::HostComplete { .. } => continue,
                };
                let out = RunOutput {
                    position,
                    server_name: run.hosts[position].host.server_name.clone(),
                    chunk: OutputChunk {
                        seq: chunk.seq,
                        stream: chunk.stream(),
                        data: chunk.data,
                        at: chunk.at,
                    },
                };
                if tx.send(out).await.is_err() {
                    return;
                }
            }
        });
        Box::pin(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
    }
}

/// A piece of a job's output, in the order it came.
#[derive(Debug, Clone)]
pub struct OutputChunk {
    /// Sequence number; stdout and stderr share it.
    pub seq: i64,
    /// Which stream.
    pub stream: OutputStream,
    /// The bytes as the command wrote them (not necessarily whole UTF-8 characters).
    pub data: Vec<u8>,
    /// When it arrived, in microseconds since the Unix epoch.
    pub at: i64,
}

/// A running supervisor. Drop it or call [`Supervisor::shutdown`] to stop.
#[derive(Debug)]
pub struct Supervisor {
    runtime: Runtime,
    actor: Actor,
}

impl Supervisor {
    /// Start from the compiled-in defaults (SQLite `./jobs.db`, in-process queue).
    pub fn builder() -> Builder {
        Builder {
            settings: Settings::load_from(None, &std::collections::HashMap::new()),
            actor: Actor::library(),
        }
    }

    /// Start from loaded settings (e.g. [`Settings::load`] with a config file).
    pub fn builder_from(settings: Settings) -> Builder {
        Builder {
            settings: Ok(settings),
            actor: Actor::library(),
        }
    }

    /// Start with `settings` as they are: a worker's role (runs jobs, listens on nothing).
    pub async fn start(settings: Settings) -> Result<Supervisor, Error> {
        let runtime = Runtime::start(Arc::new(settings), Role::Worker).await?;
        Ok(Supervisor {
            runtime,
            actor: Actor::library(),
        })
    }

    /// The engine: every use case, for what this API does not wrap. Mount the HTTP API in
    /// an actix-web app of your own with it:
    /// `App::new().app_data(web::Data::new(job_executor::http::AppState::new(sup.engine().clone())?)).configure(job_executor::http::configure)`
    /// (add `.configure(job_executor::http::dashboard::configure)` for the web dashboard at `/`).
    pub fn engine(&self) -> &Engine {
        self.runtime.engine()
    }

    /// Create the server named in `server`, or update it if the name exists.
    pub async fn upsert_server(&self, server: NewServer) -> Result<ServerRow, Error> {
        Ok(self
            .engine()
            .upsert_server(&self.actor, server.into_patch())
            .await?)
    }

    /// The registered servers, by name.
    pub async fn servers(&self) -> Result<Vec<ServerRow>, Error> {
        Ok(self.engine().servers(&self.actor).await?)
    }

    /// Submit a job; it is queued and runs as soon as its server has room.
    pub async fn submit(&self, job: NewJob) -> Result<JobId, Error> {
        let server = self.engine().server_id_of(&job.server).await?;
        let mut request = job.request;
        request.server_id = Some(server.to_string());
        let kind = job.kind.unwrap_or(JobKind::Command);
        let submitted = self.engine().submit(&self.actor, kind, request).await?;
        JobId::of_row(&submitted.job.id)
            .map_err(|_| engine::Error::NotFound(Subject::Job(submitted.job.id)).into())
    }

    /// Submit a command line on `server` (a name or an id).
    pub async fn run_command(&self, server: &str, command: &str) -> Result<JobId, Error> {
        self.submit(NewJob::command(server, command)).await
    }

    /// The job as stored now.
    pub async fn job(&self, id: &JobId) -> Result<JobRow, Error> {
        Ok(self.engine().job(&self.actor, *id).await?)
    }

    /// Ask a job to stop: a queued job ends `canceled` at once, a running one once its
    /// remote processes are killed. Refused when it has already ended.
    pub async fn cancel(&self, id: &JobId) -> Result<(), Error> {
        self.engine().cancel(&self.actor, *id).await?;
        Ok(())
    }

    /// Wait until the job ends; returns its final row (status, exit code, error).
    pub async fn wait(&self, id: &JobId) -> Result<JobRow, Error> {
        self.job(id).await?;
        Ok(self.engine().wait(*id).await?)
    }

    /// The job's output from the start, live, as an async stream that ends when the job
    /// does. A slow reader never slows the job: what the live feed dropped is read back from
    /// the database.
    pub fn output(&self, id: &JobId) -> Pin<Box<dyn Stream<Item = OutputChunk> + Send>> {
        let (tx, mut rx) = mpsc::channel::<OutputChunk>(64);
        let (engine, actor) = (self.engine().clone(), self.actor.clone());
        let id = *id;
        tokio::spawn(async move {
            // A job another worker runs is heard of only in the database: look there too.
            if let Ok(task) = engine.follow(&actor, id, -1, ChunkSink { tx }).await {
                task.polling(engine::WAIT_POLL).run().await;
            }
        });
        Box::pin(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
    }

    /// Start a run: one job per target server, admitted as its strategy says.
    pub async fn run(&self, run: NewRun) -> Result<RunHandle, Error> {
        let started = self.engine().start_run(&self.actor, run.request).await?;
        let id = RunId::of_row(&started.row.id)
            .map_err(|_| engine::Error::NotFound(Subject::Run(started.row.id)))?;
        Ok(self.run_handle(id))
    }

    /// The handle of run `id` (started here or elsewhere).
    pub fn run_handle(&self, id: RunId) -> RunHandle {
        RunHandle {
            id,
            engine: self.engine().clone(),
            actor: self.actor.clone(),
        }
    }

    /// Stop: running jobs get `worker.shutdown_grace_secs` to finish, then are canceled
    /// (their remote process groups killed); nothing is left `running`.
    pub async fn shutdown(self) {
        self.runtime.stop().await;
    }
}

/// The library's end of a follow: raw chunks into a bounded channel.
struct ChunkSink {
    tx: mpsc::Sender<OutputChunk>,
}

impl Sink for ChunkSink {
    async fn output(
        &mut self,
        seq: i64,
        stream: OutputStream,
        data: &[u8],
        at: i64,
    ) -> Result<(), Gone> {
        let chunk = OutputChunk {
            seq,
            stream,
            data: data.to_vec(),
            at,
        };
        self.tx.send(chunk).await.map_err(|_| Gone)
    }

    fn gone(&self) -> impl std::future::Future<Output = ()> + 'static {
        let tx = self.tx.clone();
        async move { tx.closed().await }
    }
}

/// `d` in whole seconds, at least 1.
fn whole_seconds(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX).max(1)
}

impl JobRow {
    /// Whether the job completed with exit code 0.
    pub fn succeeded(&self) -> bool {
        self.status() == JobStatus::Completed
    }
}
