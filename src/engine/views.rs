//! The job and run objects: what the API answers with, what the streams' events carry and
//! what a webhook delivery's `data` is. One definition, so a receiver and an API client read
//! the same thing.

use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::domain::{
    Amount, Failure, HostStatus, JobKind, JobStatus, Micros, RunStatus, Strategy, TargetsRequest,
};
use crate::store::{JobRow, Run, RunHost};

/// The job object of the API: what every job response, the `status` and `complete` events
/// of the stream, and the lists carry. The output itself is not inline (see the output
/// routes and the stream).
#[derive(Debug, Serialize, ToSchema)]
pub struct JobView {
    /// The job's id (UUID v7: ordered by submission).
    #[schema(format = Uuid)]
    pub id: String,
    /// `command` or `script`.
    pub kind: JobKind,
    /// Command jobs: the program.
    #[schema(required = true)]
    pub command: Option<String>,
    /// Arguments: appended to the command line, or the script's `$1…`.
    #[schema(required = true)]
    pub args: Option<String>,
    /// Script jobs: the script text.
    #[schema(required = true)]
    pub script: Option<String>,
    /// Script jobs: the interpreter.
    #[schema(required = true)]
    pub shell: Option<String>,
    /// The server it runs on.
    #[schema(format = Uuid)]
    pub server_id: String,
    /// Seconds allowed before it is stopped and ends `timed_out`.
    pub timeout: i64,
    /// Environment variables of the remote command.
    #[schema(value_type = BTreeMap<String, String>)]
    pub env: Value,
    /// Working directory on the remote host.
    #[schema(required = true)]
    pub cwd: Option<String>,
    /// Where the job is in its life; a terminal status never changes again.
    pub status: JobStatus,
    /// The remote command's exit code, null until known.
    #[schema(required = true)]
    pub exit_code: Option<i32>,
    /// Null, or a sentence saying why the job failed, was canceled or timed out.
    #[schema(required = true)]
    pub error: Option<String>,
    /// When it was submitted.
    pub created_at: Micros,
    /// When a worker started it.
    #[schema(required = true)]
    pub started_at: Option<Micros>,
    /// When it ended.
    #[schema(required = true)]
    pub finished_at: Option<Micros>,
    /// The job this one was duplicated from.
    #[schema(required = true, format = Uuid)]
    pub duplicated_from: Option<String>,
    /// The worker process that ran it.
    #[schema(required = true)]
    pub worker: Option<String>,
    /// The submission's idempotency key.
    #[schema(required = true)]
    pub idempotency_key: Option<String>,
    /// Whether it may be re-run when its worker is lost mid-run.
    pub retry_safe: bool,
    /// How many times a worker claimed it.
    pub attempts: i32,
    /// Whether a cancel was asked for.
    pub cancel_requested: bool,
    /// Output bytes stored.
    pub output_bytes: i64,
    /// Whether the output was cut at the configured cap.
    pub output_truncated: bool,
    /// When retention deleted its output (`[retention] output`); null: it was not.
    #[schema(required = true)]
    pub output_pruned_at: Option<Micros>,
    /// The run this job is one host of (null: a job of its own).
    #[schema(required = true, format = Uuid)]
    pub run_id: Option<String>,
}

impl JobView {
    /// The view of a stored job.
    pub fn of(row: &JobRow) -> Self {
        JobView {
            id: row.id.clone(),
            kind: row.kind,
            command: row.command.clone(),
            args: row.args.clone(),
            script: row.script.clone(),
            shell: row.shell.clone(),
            server_id: row.server_id.clone(),
            timeout: row.timeout_secs,
            env: serde_json::from_str(&row.env).unwrap_or_else(|_| json!({})),
            cwd: row.cwd.clone(),
            status: row.status,
            exit_code: row.exit_code,
            error: row.error.clone(),
            created_at: Micros(row.created_at),
            started_at: row.started_at.map(Micros),
            finished_at: row.finished_at.map(Micros),
            duplicated_from: row.duplicated_from.clone(),
            worker: row.worker.clone(),
            idempotency_key: row.caller_idempotency_key().map(str::to_string),
            retry_safe: row.retry_safe,
            attempts: row.attempts,
            cancel_requested: row.cancel_requested,
            output_bytes: row.output_bytes,
            output_truncated: row.output_truncated,
            output_pruned_at: row.output_pruned_at.map(Micros),
            run_id: row.run_id.clone(),
        }
    }
}

/// A number or a percentage as the API writes it: `2`, or `"25%"`.
fn amount(a: Amount) -> Value {
    match a {
        Amount::Count(n) => json!(n),
        Amount::Percent(_) => json!(a.to_string()),
    }
}

/// The strategy of a run, as it admits its hosts.
#[derive(Debug, Serialize, ToSchema)]
pub struct StrategyView {
    /// Most hosts at once (a number or a percentage); null: all at once.
    #[schema(value_type = Option<String>, required = true)]
    batch: Option<Value>,
    /// Hosts run first, alone.
    canary: u32,
    /// Failures allowed before no new host starts (a number or a percentage).
    #[schema(value_type = String)]
    max_failures: Value,
    /// Every host starts whatever fails.
    keep_going: bool,
}

/// The targets of a run as given: a selector, or a list of servers (the other is null).
#[derive(Debug, Serialize, ToSchema)]
pub struct TargetsView {
    /// The label selector.
    #[schema(required = true)]
    selector: Option<String>,
    /// The server names or ids listed.
    #[schema(required = true)]
    servers: Option<Vec<String>>,
}

impl TargetsView {
    /// The view of targets as given.
    pub fn of(given: TargetsRequest) -> Self {
        TargetsView {
            selector: given.selector,
            servers: given.servers,
        }
    }
}

impl StrategyView {
    /// The view of a strategy.
    pub fn of(s: &Strategy) -> Self {
        StrategyView {
            batch: s.batch.map(amount),
            canary: s.canary,
            max_failures: amount(s.max_failures),
            keep_going: s.keep_going,
        }
    }
}

/// How many hosts are where.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct RunCounts {
    /// Waiting for their turn, or their job is queued.
    queued: usize,
    /// Running.
    running: usize,
    /// Completed.
    completed: usize,
    /// Failed or unreachable.
    failed: usize,
    /// Timed out.
    timed_out: usize,
    /// Canceled.
    canceled: usize,
    /// Never started.
    skipped: usize,
}

/// One host of a run.
#[derive(Debug, Serialize, ToSchema)]
pub struct HostView {
    /// Its place in the run's order, from 0.
    position: usize,
    /// The server.
    #[schema(format = Uuid)]
    server_id: String,
    /// The server's name when the run was created.
    server_name: String,
    /// Its job (an ordinary job with `run_id`); null until it starts.
    #[schema(required = true, format = Uuid)]
    job_id: Option<String>,
    /// Where it is.
    status: HostStatus,
    /// Why it counts as a failure: `failed`, `timed_out` or `unreachable`; null otherwise.
    #[schema(required = true)]
    failure: Option<Failure>,
    /// Its command's exit code.
    #[schema(required = true)]
    exit_code: Option<i32>,
    /// Why it failed, timed out or was canceled.
    #[schema(required = true)]
    error: Option<String>,
    /// When its job started.
    #[schema(required = true)]
    started_at: Option<Micros>,
    /// When its job ended.
    #[schema(required = true)]
    finished_at: Option<Micros>,
}

impl HostView {
    fn of(position: usize, h: &RunHost) -> Self {
        let job = h.job.as_ref();
        HostView {
            position,
            server_id: h.host.server_id.clone(),
            server_name: h.host.server_name.clone(),
            job_id: h.host.job_id.clone(),
            status: h.status(),
            failure: h.failure(),
            exit_code: job.and_then(|j| j.exit_code),
            error: job.and_then(|j| j.error.clone()),
            started_at: job.and_then(|j| j.started_at).map(Micros),
            finished_at: job.and_then(|j| j.finished_at).map(Micros),
        }
    }
}

/// The run object: what every run response, and the stream's `run` and `complete` events,
/// carry.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunView {
    /// The run's id (UUID v7: ordered by creation).
    #[schema(format = Uuid)]
    id: String,
    /// `queued`, `running`, `completed` (every host completed), `failed` (some host failed,
    /// timed out, was unreachable or skipped for failures) or `canceled`.
    status: RunStatus,
    /// `command` or `script`.
    kind: JobKind,
    /// Command runs: the program.
    #[schema(required = true)]
    command: Option<String>,
    /// Arguments.
    #[schema(required = true)]
    args: Option<String>,
    /// Script runs: the script.
    #[schema(required = true)]
    script: Option<String>,
    /// Script runs: the interpreter.
    #[schema(required = true)]
    shell: Option<String>,
    /// Environment variables of the remote command.
    #[schema(value_type = BTreeMap<String, String>)]
    env: Value,
    /// Working directory on the hosts.
    #[schema(required = true)]
    cwd: Option<String>,
    /// Seconds each host's job is allowed.
    timeout: i64,
    /// The targets as given.
    targets: TargetsView,
    /// How hosts are admitted.
    strategy: StrategyView,
    /// The run this one reruns.
    #[schema(required = true, format = Uuid)]
    rerun_of: Option<String>,
    /// The template that launched it.
    #[schema(required = true, format = Uuid)]
    template_id: Option<String>,
    /// The values of the template's parameters that launched it (secret ones are never
    /// shown).
    #[schema(required = true, value_type = Option<Object>)]
    parameters: Option<Value>,
    /// A cancel was asked for.
    cancel_requested: bool,
    /// Hosts per status.
    counts: RunCounts,
    /// Every host, in order.
    hosts: Vec<HostView>,
    /// Who started it (the token's name).
    created_by: String,
    /// When it was created.
    created_at: Micros,
    /// When its first host was admitted.
    #[schema(required = true)]
    started_at: Option<Micros>,
    /// When its last host ended.
    #[schema(required = true)]
    finished_at: Option<Micros>,
}

impl RunView {
    /// The view of a stored run.
    pub fn of(run: &Run) -> Self {
        let row = &run.row;
        let spec = row.job_spec();
        let strategy = row.strategy();
        let mut counts = RunCounts::default();
        for h in &run.hosts {
            *match h.status() {
                HostStatus::Queued => &mut counts.queued,
                HostStatus::Running => &mut counts.running,
                HostStatus::Completed => &mut counts.completed,
                HostStatus::Failed => &mut counts.failed,
                HostStatus::TimedOut => &mut counts.timed_out,
                HostStatus::Canceled => &mut counts.canceled,
                HostStatus::Skipped => &mut counts.skipped,
            } += 1;
        }
        RunView {
            id: row.id.clone(),
            status: row.status,
            kind: spec.kind,
            command: spec.command,
            args: spec.args,
            script: spec.script,
            shell: spec.shell,
            env: serde_json::to_value(&spec.env).unwrap_or_else(|_| json!({})),
            cwd: spec.cwd,
            timeout: spec.timeout_secs,
            targets: TargetsView::of(serde_json::from_str(&row.targets).unwrap_or_default()),
            strategy: StrategyView::of(&strategy),
            template_id: row.template_id.clone(),
            parameters: (row.parameters.as_deref()).and_then(|p| serde_json::from_str(p).ok()),
            rerun_of: row.rerun_of.clone(),
            cancel_requested: row.cancel_requested,
            counts,
            hosts: (run.hosts.iter().enumerate())
                .map(|(i, h)| HostView::of(i, h))
                .collect(),
            created_by: row.actor.clone(),
            created_at: Micros(row.created_at),
            started_at: row.started_at.map(Micros),
            finished_at: row.finished_at.map(Micros),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_written_as_numbers_or_percentages() {
        assert_eq!(amount(Amount::Count(2)), json!(2));
        assert_eq!(amount(Amount::Percent(25)), json!("25%"));
    }
}
