//! Runs: one job on many servers. Start, read, list, cancel, rerun, summarize, and the
//! driver that advances every run as its hosts end.
//!
//! Progress lives in the database: a run advances by one locked transaction
//! ([`Store::advance_run`](crate::store::Store::advance_run)) that any process may make at any
//! time. Each process's driver makes it when it hears that a host's job ended (its own
//! workers' events, or the broker's), and sweeps the unfinished runs every few seconds, so a
//! run goes on when the process that started it is gone.

use crate::domain::Action;
use std::collections::HashSet;
use std::time::Duration;

use serde_json::json;

use super::{Actor, Engine, Error, Subject};
use crate::domain::{
    FieldError, HostStatus, JobId, NewRun, RunId, RunRequest, RunStatus, Targets, TargetsRequest,
};
use crate::events::JobEvent;
use crate::store::{Run, RunFilter, RunRow, ServerRow, StoreError};

/// How often each process advances the runs that have not ended, whatever it heard.
pub(crate) const SWEEP: Duration = Duration::from_secs(2);

/// Bytes of a group's output shown in its summary.
const SAMPLE_BYTES: usize = 4096;

/// Hosts whose output and end were the same (`GET /runs/{id}/summary`).
#[derive(Debug, Clone)]
pub struct OutputGroup {
    /// The hosts' positions in the run, in order.
    pub hosts: Vec<usize>,
    /// How they ended.
    pub status: HostStatus,
    /// Their exit code.
    pub exit_code: Option<i32>,
    /// SHA-256 of the output (stdout and stderr as they came), hex.
    pub output_sha256: String,
    /// Output bytes.
    pub output_bytes: u64,
    /// The output's first bytes.
    pub sample: Vec<u8>,
}

/// What launched a run besides its request: a template, its plain values, its secrets.
#[derive(Debug, Default, Clone)]
pub(crate) struct Origin {
    /// The template.
    pub template_id: Option<String>,
    /// Its parameters' values that are not secret, as a JSON object.
    pub parameters: Option<String>,
    /// Its secret parameters' environment (sealed with the run, never shown).
    pub secret_env: std::collections::BTreeMap<String, String>,
    /// The run's id, chosen beforehand (a schedule's fire names its run before launching
    /// it, so a second launch of the fire cannot make a second run); none: a new one.
    pub run_id: Option<String>,
}

/// Which hosts a rerun takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RerunOnly {
    /// The failed, timed-out, skipped and canceled hosts.
    #[default]
    Failed,
    /// Every host.
    All,
}

impl Engine {
    /// Check a run request, resolve its targets, store it and start its first hosts.
    pub async fn start_run(&self, actor: &Actor, request: RunRequest) -> Result<Run, Error> {
        self.allow(actor, Action::StartRun).await?;
        let new = request.validate(&self.settings.jobs.limits())?;
        self.create_run(actor, new, None, Origin::default()).await
    }

    pub(super) async fn create_run(
        &self,
        actor: &Actor,
        new: NewRun,
        rerun_of: Option<String>,
        origin: Origin,
    ) -> Result<Run, Error> {
        let hosts = self.resolve_targets(actor, &new.targets).await?;
        new.strategy.validate(hosts.len())?;
        let s = new.strategy;
        let id = (origin.run_id.clone()).unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let sealed_env = (!origin.secret_env.is_empty())
            .then(|| self.store.seal_run_env(&id, &origin.secret_env))
            .transpose()?;
        let row = RunRow {
            id,
            spec: serde_json::to_string(&new.spec).unwrap_or_default(),
            targets: serde_json::to_string(&new.targets_given).unwrap_or_default(),
            batch: s.batch.map(|b| b.to_string()),
            canary: i32::try_from(s.canary).unwrap_or(i32::MAX),
            max_failures: s.max_failures.to_string(),
            keep_going: s.keep_going,
            status: RunStatus::Queued,
            cancel_requested: false,
            rerun_of: rerun_of.clone(),
            actor: actor.name.clone(),
            created_at: crate::domain::Micros::now().0,
            started_at: None,
            finished_at: None,
            template_id: origin.template_id.clone(),
            parameters: origin.parameters,
            sealed_env,
        };
        let run = self.store.insert_run(row, hosts).await?;
        let id = run.row.id.clone();
        tracing::info!(run_id = %id, hosts = run.hosts.len(), "run created");
        let detail = json!({
            "hosts": run.hosts.len(),
            "rerun_of": rerun_of,
            "template_id": origin.template_id,
        });
        self.audit(actor, "run.start", &id, detail).await;
        self.advance_run(&id).await?;
        self.load_run(RunId(parse_run(&id)?)).await
    }

    /// The servers a run's targets name, as `(id, name)` in run order: the active servers a
    /// selector matches (by name), or the listed ones (each once, active). Refused whole,
    /// before anything is stored, when one is outside `actor`'s scope.
    async fn resolve_targets(
        &self,
        actor: &Actor,
        targets: &Targets,
    ) -> Result<Vec<(String, String)>, Error> {
        let invalid =
            |field: &'static str, message: String| Error::Invalid(FieldError::new(field, message));
        match targets {
            Targets::Selector(sel) => {
                let hosts: Vec<ServerRow> = (self.store.list_servers().await?)
                    .into_iter()
                    .filter(|s| s.is_active && sel.matches(&s.labels()))
                    .collect();
                if hosts.is_empty() {
                    return Err(invalid(
                        "targets.selector",
                        format!("{sel} matches no active server"),
                    ));
                }
                self.may_start_on(actor, hosts).await
            }
            Targets::Servers(list) => {
                let mut seen = HashSet::new();
                let mut hosts = Vec::with_capacity(list.len());
                for given in list {
                    let found = match given.parse::<uuid::Uuid>() {
                        Ok(id) => self.store.get_server(id).await,
                        Err(_) => self.store.get_server_by_name(given.clone()).await,
                    };
                    let row = match found {
                        Ok(row) => row,
                        Err(StoreError::NotFound) => {
                            return Err(invalid(
                                "targets.servers",
                                format!("no server is named or has the id {given:?}"),
                            ));
                        }
                        Err(e) => return Err(e.into()),
                    };
                    if !row.is_active {
                        return Err(invalid(
                            "targets.servers",
                            format!("server {} is not active", row.name),
                        ));
                    }
                    if !seen.insert(row.id.clone()) {
                        return Err(invalid(
                            "targets.servers",
                            format!("server {} is listed twice", row.name),
                        ));
                    }
                    hosts.push(row);
                }
                self.may_start_on(actor, hosts).await
            }
        }
    }

    /// Advance a run: start the hosts its strategy lets in now, skip those it never will,
    /// record its end. Safe to call from any process at any time.
    pub async fn advance_run(&self, id: &str) -> Result<(), Error> {
        let advanced = self.store.advance_run(id.to_string()).await?;
        for job in &advanced.admitted {
            self.announce(job, None).await;
            self.events
                .publish(JobEvent::Status(std::sync::Arc::new(job.clone())));
        }
        if let Some(row) = advanced.finished {
            tracing::info!(run_id = %row.id, status = %row.status, "run finished");
        }
        Ok(())
    }

    /// The run as stored now, if `actor` reaches every host of it (else it does not exist,
    /// as far as the caller can tell).
    pub async fn run(&self, actor: &Actor, id: RunId) -> Result<Run, Error> {
        let run = self.load_run(id).await?;
        if actor.access.scope.is_some() {
            let reach = self.reach(actor).await?;
            if !run.hosts.iter().all(|h| reach.has(&h.host.server_id)) {
                return Err(Error::NotFound(Subject::Run(id.to_string())));
            }
        }
        Ok(run)
    }

    /// The run as stored now, whoever asks.
    pub(super) async fn load_run(&self, id: RunId) -> Result<Run, Error> {
        self.store
            .get_run(id.0)
            .await
            .map_err(Error::store(|| Subject::Run(id.to_string())))
    }

    /// Wait until the run ends; returns it as it ended.
    pub async fn wait_run(&self, id: RunId) -> Result<Run, Error> {
        let mut bus = self.events.subscribe();
        loop {
            let run = self.load_run(id).await?;
            if run.row.status.is_terminal() {
                return Ok(run);
            }
            // Until a host of it ends (or events were lost), or the poll period is over.
            let host_ended = async {
                while let Ok(ev) = bus.recv().await {
                    if matches!(&ev, JobEvent::Status(r) if r.status.is_terminal() && r.run_id.as_deref() == Some(run.row.id.as_str()))
                    {
                        return;
                    }
                }
            };
            let _ = tokio::time::timeout(super::WAIT_POLL, host_ended).await;
        }
    }

    /// A page of the runs `actor` reaches (every host of them), newest first, and the cursor
    /// of the next page.
    pub async fn runs(
        &self,
        actor: &Actor,
        mut filter: RunFilter,
    ) -> Result<(Vec<Run>, Option<String>), Error> {
        filter.within = self.reach(actor).await?.ids();
        Ok(self.store.list_runs(filter).await?)
    }

    /// Cancel a run: no more host starts (the waiting ones are skipped), the running ones
    /// are canceled. Refused when it has already ended.
    pub async fn cancel_run(&self, actor: &Actor, id: RunId) -> Result<Run, Error> {
        self.allow(actor, Action::CancelRun).await?;
        if actor.access.scope.is_some() {
            self.run(actor, id).await?;
        }
        let run = self
            .store
            .request_run_cancel(id.0)
            .await
            .map_err(Error::store(|| Subject::Run(id.to_string())))?;
        let Some(run) = run else {
            let run = self.load_run(id).await?;
            return Err(Error::RunEnded {
                id: run.row.id,
                status: run.row.status,
            });
        };
        self.audit(actor, "run.cancel", id, json!({})).await;
        // Waiting hosts are skipped first, so none starts while the running ones stop.
        self.advance_run(&run.row.id).await?;
        for host in &run.hosts {
            let Some(job) = host.job.as_ref().filter(|j| !j.status.is_terminal()) else {
                continue;
            };
            let job_id = JobId(parse_run(&job.id)?);
            match self.cancel(actor, job_id).await {
                Ok(_) | Err(Error::AlreadyEnded { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        self.advance_run(&run.row.id).await?;
        self.load_run(id).await
    }

    /// A new run of the same job and strategy over the hosts of run `id` that did not
    /// complete (failed, timed out, unreachable, skipped, canceled), or over all of them.
    pub async fn rerun(&self, actor: &Actor, id: RunId, only: RerunOnly) -> Result<Run, Error> {
        self.allow(actor, Action::Rerun).await?;
        let old = self.run(actor, id).await?;
        if !old.row.status.is_terminal() {
            return Err(Error::RunNotEnded {
                id: old.row.id,
                status: old.row.status,
            });
        }
        let servers: Vec<String> = (old.hosts.iter())
            .filter(|h| only == RerunOnly::All || h.status() != HostStatus::Completed)
            .map(|h| h.host.server_id.clone())
            .collect();
        if servers.is_empty() {
            return Err(Error::Invalid(FieldError::new(
                "only",
                format!("every host of run {id} completed: there is nothing to rerun"),
            )));
        }
        let mut strategy = old.row.strategy();
        strategy.canary = strategy
            .canary
            .min(u32::try_from(servers.len()).unwrap_or(0));
        let new = NewRun {
            spec: old.row.job_spec(),
            targets: Targets::Servers(servers.clone()),
            targets_given: TargetsRequest {
                selector: None,
                servers: Some(servers),
            },
            strategy,
        };
        let origin = Origin {
            template_id: old.row.template_id.clone(),
            parameters: old.row.parameters.clone(),
            secret_env: self.store.run_secret_env(&old.row)?,
            run_id: None,
        };
        self.create_run(actor, new, Some(old.row.id), origin).await
    }

    /// The hosts of a run grouped by identical output and end, in the order each group's
    /// first host appears (a host not started has no output).
    pub async fn run_summary(
        &self,
        actor: &Actor,
        id: RunId,
    ) -> Result<(Run, Vec<OutputGroup>), Error> {
        let run = self.run(actor, id).await?;
        let mut groups: Vec<OutputGroup> = Vec::new();
        for (i, host) in run.hosts.iter().enumerate() {
            let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
            let mut sample = Vec::new();
            let mut bytes = 0u64;
            if let Some(job) = &host.job {
                let mut after = -1;
                loop {
                    let page = self.store.read_output(job.id.clone(), after, 1000).await?;
                    let Some(last) = page.last() else { break };
                    after = last.seq;
                    for c in &page {
                        digest.update(&c.data);
                        bytes += c.data.len() as u64;
                        let room = SAMPLE_BYTES.saturating_sub(sample.len());
                        sample.extend_from_slice(&c.data[..room.min(c.data.len())]);
                    }
                    if page.len() < 1000 {
                        break;
                    }
                }
            }
            let sha: String = (digest.finish().as_ref().iter())
                .map(|b| format!("{b:02x}"))
                .collect();
            let (status, exit_code) = (host.status(), host.job.as_ref().and_then(|j| j.exit_code));
            match groups
                .iter_mut()
                .find(|g| g.output_sha256 == sha && g.status == status && g.exit_code == exit_code)
            {
                Some(g) => g.hosts.push(i),
                None => groups.push(OutputGroup {
                    hosts: vec![i],
                    status,
                    exit_code,
                    output_sha256: sha,
                    output_bytes: bytes,
                    sample,
                }),
            }
        }
        Ok((run, groups))
    }

    /// Advance runs as their hosts end: on every job end this process hears of, and every
    /// [`SWEEP`] for each run not ended (what no event told, a dead process left).
    pub(crate) fn spawn_run_driver(&self) {
        let engine = self.clone();
        let mut bus = self.events.subscribe();
        actix::spawn(async move {
            let mut sweep = tokio::time::interval(SWEEP);
            loop {
                let ids = tokio::select! {
                    ev = bus.recv() => match ev {
                        Ok(JobEvent::Status(row)) if row.status.is_terminal() => {
                            row.run_id.iter().cloned().collect::<Vec<_>>()
                        }
                        Ok(_) => continue,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            engine.store.active_run_ids(1000).await.unwrap_or_default()
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    },
                    _ = sweep.tick() => match engine.store.active_run_ids(1000).await {
                        Ok(ids) => ids,
                        Err(e) => {
                            tracing::debug!(error = %e, "cannot list the runs to advance");
                            Vec::new()
                        }
                    },
                };
                for id in ids {
                    if let Err(e) = engine.advance_run(&id).await {
                        tracing::warn!(run_id = %id, error = %e, "cannot advance the run yet");
                    }
                }
            }
        });
    }
}

/// A stored id (runs and jobs are written by us: a bad one is a fault).
fn parse_run(id: &str) -> Result<uuid::Uuid, Error> {
    uuid::Uuid::parse_str(id).map_err(|_| {
        Error::Store(StoreError::Conflict(format!(
            "stored id {id:?} is not a UUID"
        )))
    })
}
