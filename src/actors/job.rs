//! `JobActor`: one per running job. Owns the job's SSH channel (through a lease from its
//! host), its host slot, its cancellation token and the reason it is stopped, its timeout
//! and the output writer. Whatever happens inside — a lost connection, an error, a panic —
//! the job ends in a terminal status with an `error` that says why; actix does not catch
//! panics for us, so the run future is wrapped in `catch_unwind` and a panic becomes
//! `failed`.
//!
//! ```text
//! started ─▶ lease a channel (retry connects, bounded) ─▶ exec + stdin ─▶ Started{pgid} ─▶ output…
//!    │ cancel / timeout at any point: before the exec → end at once; after it (the command
//!    │ may have started) → wait for the group, TERM it, KILL after the grace, over a fresh
//!    │ channel
//!    ▼
//! finish (conditional update) ─▶ status event ─▶ JobEnded to the dispatcher ─▶ stop
//! ```

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures::FutureExt;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use super::host::HostActor;
use super::messages::{CancelJob, Checkout, HostError, JobEnded, StopReason};
use super::output;
use crate::domain::{JobKind, JobStatus};
use crate::events::{EventBus, JobEvent};
use crate::metrics;
use crate::settings::JobSettings;
use crate::ssh::exec::{self, ExecEnd, RemoteJob, RemoteWork};
use crate::store::{Finish, JobRow, Store};

/// What a job actor needs from its process.
#[derive(Clone)]
pub struct JobDeps {
    /// The database.
    pub store: Store,
    /// The event bus.
    pub events: EventBus,
    /// `[jobs]` settings.
    pub jobs: Arc<JobSettings>,
}

/// The actor of one running job.
pub struct JobActor {
    row: Option<JobRow>,
    deps: JobDeps,
    host: Addr<HostActor>,
    dispatcher: Recipient<JobEnded>,
    /// A child of the dispatcher's token: the run future watches it, so cancelling (here,
    /// or the whole worker at once) reaches the run wherever it waits.
    cancel: CancellationToken,
    /// Why the job is stopped, once a [`CancelJob`] came; read when the run ends stopped.
    reason: Option<StopReason>,
    permit: Option<OwnedSemaphorePermit>,
    /// One in `jobexec_running_jobs` from start to stop.
    running: Option<metrics::GaugeGuard<0>>,
}

impl JobActor {
    /// An actor for the claimed job `row`, holding its host slot `permit`.
    pub fn new(
        row: JobRow,
        deps: JobDeps,
        host: Addr<HostActor>,
        dispatcher: Recipient<JobEnded>,
        parent: &CancellationToken,
        permit: OwnedSemaphorePermit,
    ) -> Self {
        Self {
            row: Some(row),
            deps,
            host,
            dispatcher,
            cancel: parent.child_token(),
            reason: None,
            permit: Some(permit),
            running: None,
        }
    }
}

impl Actor for JobActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let Some(row) = self.row.take() else {
            ctx.stop();
            return;
        };
        self.running = Some(metrics::RUNNING_JOBS.track([]));
        let began = Instant::now();
        let id = row.id.clone();
        let (host, cancel, deps) = (self.host.clone(), self.cancel.clone(), self.deps.clone());
        let run = AssertUnwindSafe(run(row, host, cancel, deps))
            .catch_unwind()
            .map(|ran| ran.unwrap_or_else(Ending::Panicked));
        ctx.spawn(
            run.into_actor(self)
                .then(move |ending, act, _| {
                    let finish = ending.finish(&id, act.reason.unwrap_or(StopReason::Canceled));
                    let deps = act.deps.clone();
                    async move {
                        record(&deps, id.clone(), finish, began).await;
                        id
                    }
                    .into_actor(act)
                })
                .map(|job_id, act, ctx| {
                    act.permit.take();
                    act.dispatcher.do_send(JobEnded { job_id });
                    ctx.stop();
                }),
        );
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.running.take();
    }
}

impl Handler<CancelJob> for JobActor {
    type Result = ();

    fn handle(&mut self, msg: CancelJob, _: &mut Self::Context) {
        self.reason.get_or_insert(msg.reason);
        self.cancel.cancel();
    }
}

/// Store the end (if the job may still reach it) and publish it; a job this call ended
/// counts in `jobexec_job_duration_seconds` (run time since `began`).
async fn record(deps: &JobDeps, id: String, finish: Finish, began: Instant) {
    let status = finish.status;
    let mut tries = 0;
    loop {
        match deps.store.finish_job(id.clone(), finish.clone()).await {
            Ok(Some(row)) => {
                tracing::info!(job_id = %id, status = %status, exit_code = ?row.exit_code, "job finished");
                metrics::JOB_DURATION.observe([status.as_str()], began.elapsed().as_secs_f64());
                deps.events.publish(JobEvent::Status(Arc::new(row)));
                return;
            }
            Ok(None) => {
                tracing::warn!(job_id = %id, status = %status, "job had already ended elsewhere");
                return;
            }
            Err(e) if tries < 20 => {
                tries += 1;
                tracing::warn!(job_id = %id, error = %e, "cannot record the job's end yet; retrying");
                tokio::time::sleep(Duration::from_millis(250 * tries)).await;
            }
            Err(e) => {
                tracing::error!(job_id = %id, error = %e, "cannot record the job's end; the lease reaper will");
                return;
            }
        }
    }
}

/// How a run ended.
enum Ending {
    /// On its own: its end as it is.
    Ran(Finish),
    /// Stopped by the token; the actor, which holds the reason, words it.
    Stopped {
        /// Its process group, if the bootstrap reported it: then the command may have
        /// started (the bootstrap reports it just before).
        pgid: Option<i64>,
    },
    /// The run future panicked.
    Panicked(Box<dyn std::any::Any + Send>),
}

impl Ending {
    fn finish(self, job_id: &str, reason: StopReason) -> Finish {
        match self {
            Ending::Ran(finish) => finish,
            Ending::Stopped { pgid } => {
                let when = if pgid.is_some() {
                    ""
                } else {
                    " before it started"
                };
                let error = match reason {
                    StopReason::Canceled => format!("canceled by request{when}"),
                    StopReason::Shutdown => format!("canceled: the worker shut down{when}"),
                };
                Finish {
                    remote_pgid: pgid,
                    ..ended(JobStatus::Canceled, None, error)
                }
            }
            Ending::Panicked(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                tracing::error!(job_id = %job_id, panic = %what, "job supervisor panicked");
                failed(format!(
                    "internal error: the job's supervisor failed ({what})"
                ))
            }
        }
    }
}

fn failed(error: impl Into<String>) -> Finish {
    ended(JobStatus::Failed, None, error)
}

/// An end other than success, with why.
fn ended(status: JobStatus, exit_code: Option<i32>, error: impl Into<String>) -> Finish {
    let error = Some(error.into());
    Finish {
        status,
        exit_code,
        error,
        remote_pgid: None,
    }
}

fn remote_job(row: &JobRow, secret_env: BTreeMap<String, String>) -> RemoteJob {
    let spec = row.spec();
    let work = match spec.kind {
        JobKind::Command => RemoteWork::Command {
            line: spec.command_line(),
        },
        JobKind::Script => RemoteWork::Script {
            shell: spec
                .shell
                .clone()
                .unwrap_or_else(|| crate::domain::DEFAULT_SHELL.into()),
            script: spec.script.clone().unwrap_or_default().into_bytes(),
            args: spec.args.clone().unwrap_or_default(),
        },
    };
    // Every process of the job carries its id: a process group left by a lost worker is
    // recognised as this job's before it is killed (see `exec::kill_orphan_group`).
    let mut env = spec.env;
    env.insert(exec::JOB_ID_VAR.to_string(), row.id.clone());
    RemoteJob {
        work,
        env,
        secret_env,
        cwd: spec.cwd,
    }
}

async fn run(
    row: JobRow,
    host: Addr<HostActor>,
    cancel: CancellationToken,
    deps: JobDeps,
) -> Ending {
    let settings = deps.jobs.clone();
    let secret_env = match deps.store.job_secret_env(&row) {
        Ok(env) => env,
        Err(e) => {
            return Ending::Ran(failed(format!(
                "the job's secret parameters cannot be opened: {e}"
            )));
        }
    };
    let job = remote_job(&row, secret_env);
    if let Err(e) = exec::build(&job) {
        return Ending::Ran(failed(format!("the job cannot be run: {e}")));
    }
    let timeout = Duration::from_secs(u64::try_from(row.timeout_secs).unwrap_or(1).max(1));
    let deadline = tokio::time::Instant::now() + timeout;
    let timed_out = || {
        let error = format!("timed out after {}s", timeout.as_secs());
        ended(JobStatus::TimedOut, None, error)
    };

    // Connect (bounded retries: nothing has run yet) and open a channel.
    let mut attempt = 0;
    let (lease, channel) = loop {
        attempt += 1;
        let got = tokio::select! {
            _ = cancel.cancelled() => return Ending::Stopped { pgid: None },
            _ = tokio::time::sleep_until(deadline) => return Ending::Ran(timed_out()),
            got = async {
                let lease = host.send(Checkout).await??;
                let channel = exec::open_channel(&lease.client).await?;
                metrics::SSH_CHANNEL_OPENS.inc([&row.server_id]);
                Ok::<_, HostError>((lease, channel))
            } => got,
        };
        match got {
            Ok(pair) => break pair,
            Err(e) if attempt < settings.connect_attempts.max(1) && !e.is_permanent() => {
                tracing::warn!(job_id = %row.id, attempt, error = %e, "connection failed before the command started; retrying");
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
            }
            Err(e) => return Ending::Ran(failed(e.to_string())),
        }
    };

    let (tx, mut group, writer) = output::spawn(
        row.id.clone(),
        row.next_seq,
        deps.store.clone(),
        deps.events.clone(),
        settings.output_cap_bytes,
    );
    // Boxed so it can be dropped early: dropping it closes the channel and the writer's input.
    let mut exec_run = Box::pin(exec::run_in(channel, &job, tx, lease.login_shell_posix));
    enum Outcome {
        Ran(Result<ExecEnd, crate::ssh::SshError>),
        /// Stopped by the token (`None`) or by the timeout.
        Stop(Option<Finish>),
    }
    let outcome = tokio::select! {
        r = &mut exec_run => Outcome::Ran(r),
        _ = cancel.cancelled() => Outcome::Stop(None),
        _ = tokio::time::sleep_until(deadline) => Outcome::Stop(Some(timed_out())),
    };
    let ending = match outcome {
        Outcome::Ran(Ok(ExecEnd::Exited(0))) => Ending::Ran(Finish {
            status: JobStatus::Completed,
            exit_code: Some(0),
            error: None,
            remote_pgid: None,
        }),
        Outcome::Ran(Ok(ExecEnd::Exited(code))) => {
            let error = format!("the command exited with status {code}");
            Ending::Ran(ended(JobStatus::Failed, Some(code), error))
        }
        Outcome::Ran(Ok(ExecEnd::Signaled(sig))) => {
            Ending::Ran(failed(format!("the command was killed by signal {sig}")))
        }
        Outcome::Ran(Err(e)) => Ending::Ran(failed(e.to_string())),
        Outcome::Stop(timeout_finish) => {
            let grace = Duration::from_secs(settings.kill_grace_secs);
            let bound = grace + Duration::from_secs(5);
            let mut ended = false;
            // Not known yet, the group may still come: the run goes on until the bootstrap has
            // reported it (or ended), and the writer passes it on a moment after.
            let seen = group.borrow_and_update().clone();
            let known = match seen {
                Some(g) => Some(g),
                None => tokio::select! {
                    g = group.wait_for(Option::is_some) => g.ok().and_then(|g| g.clone()),
                    _ = &mut exec_run => {
                        ended = true;
                        None
                    }
                    _ = tokio::time::sleep(bound) => None,
                },
            };
            if let Some(g) = known
                && let Err(e) =
                    exec::kill_group(&lease.client, g.pgid, grace, g.tmpfile.as_deref()).await
            {
                tracing::warn!(job_id = %row.id, error = %e, "could not kill the remote process group");
            }
            // Let the channel report the end; a channel still open then is dropped (closed).
            if !ended {
                let _ = tokio::time::timeout(bound, &mut exec_run).await;
            }
            match timeout_finish {
                Some(f) => Ending::Ran(f),
                // The writer's report says whether the group came.
                None => Ending::Stopped { pgid: None },
            }
        }
    };
    drop(exec_run);
    drop(lease);
    let report = writer.await.unwrap_or_default();
    // The process group goes with the end: a short job had it written nowhere else.
    match ending {
        Ending::Ran(finish) => {
            let finish = match report.store_error {
                Some(e) if finish.status == JobStatus::Completed => failed(format!(
                    "the command succeeded but its output could not be stored: {e}"
                )),
                _ => finish,
            };
            Ending::Ran(Finish {
                remote_pgid: report.pgid,
                ..finish
            })
        }
        Ending::Stopped { .. } => Ending::Stopped { pgid: report.pgid },
        panicked => panicked,
    }
}
