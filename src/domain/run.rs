//! Runs: one job on many servers, and the strategy that decides which host starts when.
//!
//! The plan is pure: given every host's state and the strategy, [`plan`] says which waiting
//! hosts start now, which are skipped, and whether the run is over. The store applies it in
//! one transaction on the run's row, so any process may advance any run, and a host is
//! never admitted twice.
//!
//! ```text
//!  host:  pending ──▶ admitted (its job: queued ▶ running ▶ completed | failed | timed_out | canceled)
//!            └──────▶ skipped (the run was canceled, or failures passed `max_failures`)
//! ```

use std::fmt;

use super::{FieldError, JobKind, JobLimits, JobRequest, JobSpec, JobStatus, Selector};

/// A number of hosts, or a percentage of the run's hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amount {
    /// That many hosts.
    Count(u32),
    /// That percentage (0-100) of the hosts.
    Percent(u32),
}

impl Amount {
    /// Parse `3`, `"3"` or `"25%"` (the JSON number arrives as its text); `field` names the
    /// 422. A percentage is at most 100.
    pub fn parse(field: &'static str, raw: &str) -> Result<Self, FieldError> {
        let raw = raw.trim();
        let bad = || {
            FieldError::new(
                field,
                format!("{raw:?} is not a whole number of hosts or a percentage such as \"25%\""),
            )
        };
        match raw.strip_suffix('%') {
            Some(p) => {
                let p: u32 = p.trim().parse().map_err(|_| bad())?;
                if p > 100 {
                    return Err(FieldError::new(field, format!("{raw} is over 100%")));
                }
                Ok(Amount::Percent(p))
            }
            None => raw.parse().map(Amount::Count).map_err(|_| bad()),
        }
    }

    /// Of `total` hosts, rounded up (a batch of 10% of 5 hosts is 1 host, not 0).
    pub fn of_ceil(self, total: usize) -> usize {
        match self {
            Amount::Count(n) => n as usize,
            Amount::Percent(p) => (total * p as usize).div_ceil(100),
        }
    }

    /// Of `total` hosts, rounded down (`max_failures` of 10% of 5 hosts allows none).
    pub fn of_floor(self, total: usize) -> usize {
        match self {
            Amount::Count(n) => n as usize,
            Amount::Percent(p) => total * p as usize / 100,
        }
    }

    /// Zero hosts, whatever the run's size.
    pub fn is_zero(self) -> bool {
        matches!(self, Amount::Count(0) | Amount::Percent(0))
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Amount::Count(n) => write!(f, "{n}"),
            Amount::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// How a run admits its hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Strategy {
    /// Most hosts running at once (a sliding window); `None`: all at once.
    pub batch: Option<Amount>,
    /// This many hosts run first, alone; the rest start once they have all ended.
    pub canary: u32,
    /// Failures allowed: one more and no new host starts (the rest are skipped).
    pub max_failures: Amount,
    /// Start every host whatever fails.
    pub keep_going: bool,
}

impl Default for Strategy {
    fn default() -> Self {
        Strategy {
            batch: None,
            canary: 0,
            max_failures: Amount::Count(0),
            keep_going: false,
        }
    }
}

impl Strategy {
    /// Check the strategy for a run over `hosts` hosts.
    pub fn validate(&self, hosts: usize) -> Result<(), FieldError> {
        if self.batch.is_some_and(Amount::is_zero) {
            return Err(FieldError::new(
                "strategy.batch",
                "must be at least 1 host (or a percentage above 0%)",
            ));
        }
        if self.canary as usize > hosts {
            return Err(FieldError::new(
                "strategy.canary",
                format!("{} is more than the {hosts} hosts of the run", self.canary),
            ));
        }
        Ok(())
    }

    /// The window: most hosts running at once out of `total`.
    pub fn window(&self, total: usize) -> usize {
        self.batch.map_or(total, |b| b.of_ceil(total).max(1))
    }
}

named_enum! {
    /// Where a run is in its life.
    pub enum RunStatus ("run status") {
        /// Created; no host has started yet.
        Queued = "queued",
        /// Hosts are running or waiting for their turn.
        Running = "running",
        /// Every host completed.
        Completed = "completed",
        /// Some host failed, timed out, was unreachable or was skipped for failures.
        Failed = "failed",
        /// Canceled: running hosts were stopped, waiting ones skipped.
        Canceled = "canceled",
    }
}

impl RunStatus {
    /// True once every host has ended.
    pub fn is_terminal(self) -> bool {
        !matches!(self, Self::Queued | Self::Running)
    }
}

named_enum! {
    /// A host's place in its run, as the API shows it: its job's status once admitted.
    pub enum HostStatus ("host status") {
        /// Waiting for its turn, or its job is queued.
        Queued = "queued",
        /// Its job is running.
        Running = "running",
        /// Its job completed.
        Completed = "completed",
        /// Its job failed or the host was unreachable (`failure` says which).
        Failed = "failed",
        /// Its job ran past its timeout.
        TimedOut = "timed_out",
        /// Its job was canceled.
        Canceled = "canceled",
        /// It never started: the run was canceled or failures passed `max_failures`.
        Skipped = "skipped",
    }
}

named_enum! {
    /// Why a host counts as a failure.
    pub enum Failure ("failure") {
        /// The command ran and failed (non-zero exit, signal, lost worker).
        Failed = "failed",
        /// The command ran past its timeout.
        TimedOut = "timed_out",
        /// The command never started: no connection, no login, or a refused host key.
        Unreachable = "unreachable",
    }
}

/// A host as the planner sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostState {
    /// Not admitted yet.
    Pending,
    /// Never to start.
    Skipped,
    /// Admitted: its job's status.
    Job(JobStatus),
}

impl HostState {
    /// Ended (or never to start).
    pub fn is_done(self) -> bool {
        match self {
            HostState::Pending => false,
            HostState::Skipped => true,
            HostState::Job(s) => s.is_terminal(),
        }
    }

    /// Counts toward `max_failures`.
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            HostState::Job(JobStatus::Failed | JobStatus::TimedOut)
        )
    }
}

/// What to do to a run now.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Positions of waiting hosts to start now, in order.
    pub admit: Vec<usize>,
    /// Positions of waiting hosts never to start.
    pub skip: Vec<usize>,
    /// The run's end, once every host has ended (counting this plan's skips).
    pub finished: Option<RunStatus>,
}

/// Decide which waiting hosts start now, which are skipped, and whether the run is over.
///
/// A host starts when it is next in order, fewer than the window are running, and the
/// canaries (the first `canary` hosts) have all ended, unless it is one of them. No host
/// starts once the run is canceled, or once failures exceed `max_failures` (unless
/// `keep_going`): the waiting ones are skipped.
pub fn plan(hosts: &[HostState], strategy: &Strategy, canceled: bool) -> Plan {
    let total = hosts.len();
    let failures = hosts.iter().filter(|h| h.is_failure()).count();
    let allowed = strategy.max_failures.of_floor(total);
    let stop = canceled || (!strategy.keep_going && failures > allowed);
    let pending = (0..total).filter(|&i| hosts[i] == HostState::Pending);
    let mut plan = Plan::default();
    if stop {
        plan.skip = pending.collect();
    } else {
        let active = hosts
            .iter()
            .filter(|h| !h.is_done() && **h != HostState::Pending)
            .count();
        let canary = (strategy.canary as usize).min(total);
        let canaries_running = hosts[..canary].iter().any(|h| !h.is_done());
        let free = strategy.window(total).saturating_sub(active);
        plan.admit = pending
            .filter(|&i| !canaries_running || i < canary)
            .take(free)
            .collect();
    }
    let done = |i: usize| hosts[i].is_done() || plan.skip.contains(&i);
    if (0..total).all(done) {
        let all_completed = hosts
            .iter()
            .all(|h| *h == HostState::Job(JobStatus::Completed));
        plan.finished = Some(if canceled {
            RunStatus::Canceled
        } else if all_completed {
            RunStatus::Completed
        } else {
            RunStatus::Failed
        });
    }
    plan
}

/// `POST /runs`: the job every host runs, its targets and the strategy.
#[derive(Debug, Default, serde::Deserialize, utoipa::ToSchema)]
pub struct RunRequest {
    /// The job fields, as a job takes them (`command` + `args`, or `script` + `shell`; `env`,
    /// `cwd`, `timeout`, `retry_safe`); `server_id` and `idempotency_key` are not taken (a
    /// run names its servers in `targets`).
    #[serde(flatten)]
    pub job: JobRequest,
    /// Which servers: resolved once, when the run is created.
    pub targets: Option<TargetsRequest>,
    /// How hosts are admitted (default: all at once, stop at the first failure).
    pub strategy: Option<StrategyRequest>,
}

/// `targets`: a selector over server labels, or an explicit list. Exactly one is given.
#[derive(Debug, Default, Clone, serde::Deserialize, serde::Serialize, utoipa::ToSchema)]
pub struct TargetsRequest {
    /// `role=web,env=prod`, `key!=value`, `key`, `!key`: every active server it matches.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(
        pattern = "^(!?[a-z0-9_./-]{1,63}|[a-z0-9_./-]{1,63}!?=([^\\s,=!\\u0000-\\u001f\\u007f-\\u009f]([^,=!\\u0000-\\u001f\\u007f-\\u009f]{0,253}[^\\s,=!\\u0000-\\u001f\\u007f-\\u009f])?)?)(,(!?[a-z0-9_./-]{1,63}|[a-z0-9_./-]{1,63}!?=([^\\s,=!\\u0000-\\u001f\\u007f-\\u009f]([^,=!\\u0000-\\u001f\\u007f-\\u009f]{0,253}[^\\s,=!\\u0000-\\u001f\\u007f-\\u009f])?)?))*$"
    )]
    pub selector: Option<String>,
    /// Server names or ids, in the order they are to be run.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(min_items = 1, max_items = 10000)]
    pub servers: Option<Vec<String>>,
}

/// `strategy`: every field optional.
#[derive(Debug, Default, Clone, serde::Deserialize, serde::Serialize, utoipa::ToSchema)]
pub struct StrategyRequest {
    /// Most hosts running at once: a number (at least 1) or a percentage (`"25%"`) of the
    /// hosts, rounded up. Default: all at once.
    #[schema(schema_with = batch_schema)]
    pub batch: Option<serde_json::Value>,
    /// This many hosts run first, alone (the rest wait until they have all ended).
    #[serde(default, deserialize_with = "super::spec::whole_number")]
    #[schema(minimum = 0, maximum = 10000)]
    pub canary: Option<i64>,
    /// Failures allowed before no new host starts (the rest are `skipped`): a number or a
    /// percentage of the hosts, rounded down. Default 0: stop at the first failure.
    #[schema(schema_with = max_failures_schema)]
    pub max_failures: Option<serde_json::Value>,
    /// Start every host whatever fails (`max_failures` is then ignored).
    pub keep_going: Option<bool>,
}

fn amount_schema(min: i64, percent: &str, what: &str) -> utoipa::openapi::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
    let count = ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(min))
        .maximum(Some(1_000_000));
    let share = ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(percent));
    OneOfBuilder::new()
        .item(count)
        .item(share)
        .description(Some(what))
        .build()
        .into()
}

fn batch_schema() -> utoipa::openapi::Schema {
    amount_schema(
        1,
        "^(100|[1-9][0-9]?)%$",
        "Hosts at once: a number or a percentage.",
    )
}

fn max_failures_schema() -> utoipa::openapi::Schema {
    amount_schema(
        0,
        "^(100|[1-9]?[0-9])%$",
        "Failures allowed: a number or a percentage.",
    )
}

/// A number or a percentage as sent: an integer, or a string such as `"25%"`.
fn amount(field: &'static str, value: &serde_json::Value) -> Result<Amount, FieldError> {
    let raw = match value {
        serde_json::Value::Number(n) if n.is_u64() => n.to_string(),
        serde_json::Value::String(s) => s.clone(),
        other => {
            return Err(FieldError::new(
                field,
                format!("{other} is not a whole number of hosts or a percentage such as \"25%\""),
            ));
        }
    };
    Amount::parse(field, &raw)
}

impl StrategyRequest {
    /// The strategy it says (its fit to the run's hosts is checked by [`Strategy::validate`]).
    pub fn parse(self) -> Result<Strategy, FieldError> {
        let batch = (self.batch.as_ref())
            .filter(|v| !v.is_null())
            .map(|v| amount("strategy.batch", v))
            .transpose()?;
        let max_failures = (self.max_failures.as_ref())
            .filter(|v| !v.is_null())
            .map(|v| amount("strategy.max_failures", v))
            .transpose()?
            .unwrap_or(Amount::Count(0));
        let canary = match self.canary {
            None => 0,
            Some(n) => u32::try_from(n)
                .ok()
                .filter(|n| *n <= 10_000)
                .ok_or_else(|| {
                    FieldError::new("strategy.canary", format!("{n} is out of range (0-10000)"))
                })?,
        };
        Ok(Strategy {
            batch,
            canary,
            max_failures,
            keep_going: self.keep_going.unwrap_or(false),
        })
    }
}

/// What a run targets, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Targets {
    /// Every active server the selector matches.
    Selector(Selector),
    /// These servers (names or ids), in this order.
    Servers(Vec<String>),
}

impl TargetsRequest {
    /// Exactly one of `selector` and `servers`, each well formed.
    pub fn parse(self) -> Result<Targets, FieldError> {
        match (self.selector, self.servers) {
            (Some(_), Some(_)) => Err(FieldError::new(
                "targets",
                "give a selector or a list of servers, not both",
            )),
            (Some(raw), None) => Ok(Targets::Selector(Selector::parse(
                "targets.selector",
                &raw,
            )?)),
            (None, Some(list)) => {
                if list.is_empty() {
                    return Err(FieldError::new("targets.servers", "is empty"));
                }
                if let Some(blank) = list.iter().position(|s| s.trim().is_empty()) {
                    return Err(FieldError::new(
                        "targets.servers",
                        format!("entry {blank} is empty"),
                    ));
                }
                Ok(Targets::Servers(list))
            }
            (None, None) => Err(FieldError::new(
                "targets",
                "is required: {\"selector\": \"role=web\"} or {\"servers\": [\"web-1\", …]}",
            )),
        }
    }
}

/// A run request, checked: the job, the targets (still to resolve) and the strategy.
#[derive(Debug, Clone)]
pub struct NewRun {
    /// The job every host runs.
    pub spec: JobSpec,
    /// Which servers.
    pub targets: Targets,
    /// The targets as given, for the run object.
    pub targets_given: TargetsRequest,
    /// How hosts are admitted.
    pub strategy: Strategy,
}

impl RunRequest {
    /// Check everything that does not need the database.
    pub fn validate(self, limits: &JobLimits) -> Result<NewRun, FieldError> {
        if self.job.server_id.is_some() {
            return Err(FieldError::new(
                "server_id",
                "a run names its servers in targets, not server_id",
            ));
        }
        if self.job.idempotency_key.is_some() {
            return Err(FieldError::new("idempotency_key", "is not taken by runs"));
        }
        let kind = if self.job.script.is_some() {
            JobKind::Script
        } else {
            JobKind::Command
        };
        let spec = JobSpec::from_request(kind, self.job, limits)?;
        let targets_given = self.targets.unwrap_or_default();
        let targets = targets_given.clone().parse()?;
        let strategy = self.strategy.unwrap_or_default().parse()?;
        Ok(NewRun {
            spec,
            targets,
            targets_given,
            strategy,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::HostState::{Job, Pending, Skipped};
    use super::*;
    use JobStatus::{Canceled, Completed, Failed, Queued, Running, TimedOut};

    fn strategy(batch: Option<u32>, canary: u32, max_failures: u32, keep_going: bool) -> Strategy {
        Strategy {
            batch: batch.map(Amount::Count),
            canary,
            max_failures: Amount::Count(max_failures),
            keep_going,
        }
    }

    #[test]
    fn a_batch_is_a_sliding_window() {
        let s = strategy(Some(2), 0, 0, false);
        assert_eq!(plan(&[Pending; 6], &s, false).admit, vec![0, 1]);
        let one_done = [
            Job(Completed),
            Job(Running),
            Pending,
            Pending,
            Pending,
            Pending,
        ];
        assert_eq!(plan(&one_done, &s, false).admit, vec![2]);
        let full = [
            Job(Completed),
            Job(Running),
            Job(Queued),
            Pending,
            Pending,
            Pending,
        ];
        assert_eq!(plan(&full, &s, false), Plan::default());
    }

    #[test]
    fn without_a_batch_everything_starts_at_once() {
        let p = plan(&[Pending; 4], &Strategy::default(), false);
        assert_eq!(p.admit, vec![0, 1, 2, 3]);
    }

    #[test]
    fn canaries_run_alone_first() {
        let s = strategy(Some(3), 1, 0, false);
        assert_eq!(plan(&[Pending; 5], &s, false).admit, vec![0]);
        let running = [Job(Running), Pending, Pending, Pending, Pending];
        assert_eq!(plan(&running, &s, false).admit, Vec::<usize>::new());
        let done = [Job(Completed), Pending, Pending, Pending, Pending];
        assert_eq!(plan(&done, &s, false).admit, vec![1, 2, 3]);
    }

    #[test]
    fn a_failure_past_the_threshold_skips_the_rest() {
        let s = strategy(Some(2), 0, 0, false);
        let hosts = [Job(Failed), Job(Running), Pending, Pending];
        let p = plan(&hosts, &s, false);
        assert_eq!((p.admit, p.skip, p.finished), (vec![], vec![2, 3], None));
        let hosts = [Job(Failed), Job(Completed), Pending, Pending];
        assert_eq!(plan(&hosts, &s, false).finished, Some(RunStatus::Failed));
        // One failure allowed: the second stops it.
        let s = strategy(Some(1), 0, 1, false);
        assert_eq!(
            plan(&[Job(TimedOut), Pending, Pending], &s, false).admit,
            vec![1]
        );
        let p = plan(&[Job(TimedOut), Job(Failed), Pending], &s, false);
        assert_eq!(p.skip, vec![2]);
    }

    #[test]
    fn keep_going_starts_every_host() {
        let s = strategy(Some(1), 0, 0, true);
        let p = plan(&[Job(Failed), Job(Failed), Pending], &s, false);
        assert_eq!(p.admit, vec![2]);
        let p = plan(&[Job(Failed), Job(Failed), Job(Completed)], &s, false);
        assert_eq!(p.finished, Some(RunStatus::Failed));
    }

    #[test]
    fn percentages_round_as_documented() {
        let s = Strategy {
            batch: Some(Amount::Percent(25)),
            max_failures: Amount::Percent(10),
            ..Strategy::default()
        };
        assert_eq!(s.window(6), 2);
        assert_eq!(s.window(1), 1);
        assert_eq!(Amount::Percent(10).of_floor(6), 0);
        assert_eq!(Amount::Percent(50).of_floor(6), 3);
    }

    #[test]
    fn a_canceled_run_skips_what_waits_and_ends_canceled() {
        let s = Strategy::default();
        let p = plan(&[Job(Canceled), Job(Completed), Pending], &s, true);
        assert_eq!(p.skip, vec![2]);
        assert_eq!(p.finished, Some(RunStatus::Canceled));
        let p = plan(&[Job(Running), Pending], &s, true);
        assert_eq!((p.skip, p.finished), (vec![1], None));
    }

    #[test]
    fn the_run_completes_only_when_every_host_completed() {
        let s = Strategy::default();
        assert_eq!(
            plan(&[Job(Completed), Job(Completed)], &s, false).finished,
            Some(RunStatus::Completed)
        );
        assert_eq!(
            plan(&[Job(Completed), Skipped], &s, false).finished,
            Some(RunStatus::Failed)
        );
    }

    #[test]
    fn amounts_parse_and_refuse() {
        assert_eq!(Amount::parse("b", "3"), Ok(Amount::Count(3)));
        assert_eq!(Amount::parse("b", "25%"), Ok(Amount::Percent(25)));
        assert_eq!(Amount::parse("b", "101%").unwrap_err().field, "b");
        assert!(Amount::parse("b", "-1").is_err());
        assert!(Amount::parse("b", "1.5").is_err());
        let zero = Strategy {
            batch: Some(Amount::Count(0)),
            ..Strategy::default()
        };
        assert_eq!(zero.validate(3).unwrap_err().field, "strategy.batch");
        let canaries = strategy(None, 4, 0, false);
        assert_eq!(canaries.validate(3).unwrap_err().field, "strategy.canary");
    }
}
