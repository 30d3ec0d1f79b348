//! Retention: the prune, run by `job-executor prune` and in the background of every process
//! (`[retention]`).
//!
//! A pass claims the prune lease (one process at a time: another process's pass skips while
//! the lease is held and unexpired), then walks the tables in order — output, jobs, runs,
//! audit, deliveries — step by step through [`Store::prune_step`]: each step deletes at most
//! `retention.batch` rows in one short transaction, and the pass pauses between steps for
//! as long as the step took (at least [`MIN_PAUSE`]), so that other writers (SQLite has one
//! at a time) get their turn. The lease is renewed between steps; a pass that lost it stops.
//! After a pass that deleted rows, SQLite gives the freed pages back to the file system
//! (incremental vacuum, in steps, then a checkpoint). A dry run takes the same steps,
//! counting instead of deleting, and takes no lease: it changes nothing.
//!
//! ```text
//!  tick (retention.every) ─▶ claim lease ─┬─ held elsewhere ─▶ skip
//!                                         └─ ours ─▶ step ─▶ renew ─▶ pause ─▶ step … ─▶
//!                                            vacuum (SQLite) ─▶ release ─▶ log one line
//! ```

use std::time::{Duration, Instant};

use super::Engine;
use crate::domain::{FieldError, Micros, PruneCounts, PruneTable, RetentionPolicy};
use crate::metrics::PRUNED_ROWS;
use crate::settings::Settings;
use crate::store::{Cursor, Store, StoreError};

/// How long a claimed lease lasts; it is renewed when less than half is left.
const LEASE_FOR: Duration = Duration::from_secs(60);
/// The shortest pause between two steps.
const MIN_PAUSE: Duration = Duration::from_millis(2);

/// What a prune did (or, dry, would do).
#[derive(Debug, Clone, Default)]
pub struct PruneReport {
    /// Rows deleted (dry: that would be), per table.
    pub counts: PruneCounts,
    /// A dry run: nothing was deleted.
    pub dry_run: bool,
    /// Another process held the lease: this pass did nothing.
    pub skipped: bool,
    /// Pages given back to the file system (SQLite).
    pub vacuumed: bool,
    /// How long it took.
    pub took: Duration,
}

/// Why a prune could not run.
#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    /// `[retention]` sets nothing to delete.
    #[error(
        "no retention policy is set: set one of output, jobs, failed_jobs, audit or deliveries \
         in [retention] (for example `jobs = \"30d\"`)"
    )]
    NoPolicy,
    /// A `[retention]` value is invalid.
    #[error("[retention] {0}")]
    Invalid(#[from] FieldError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A prune over a store, under a policy.
#[derive(Debug, Clone)]
pub struct Pruner {
    store: Store,
    policy: RetentionPolicy,
    holder: String,
}

impl Pruner {
    /// The pruner of `settings`' `[retention]` on `store`; refused when nothing is set.
    pub fn new(store: Store, settings: &Settings) -> Result<Pruner, PruneError> {
        let policy = settings.retention.policy()?;
        if !policy.is_set() {
            return Err(PruneError::NoPolicy);
        }
        let holder = format!(
            "{}/{}",
            settings.worker.worker_id(),
            uuid::Uuid::new_v4().simple()
        );
        Ok(Pruner {
            store,
            policy,
            holder,
        })
    }

    /// The policy it prunes by.
    pub fn policy(&self) -> &RetentionPolicy {
        &self.policy
    }

    /// One pass over every table (see the module's docs).
    pub async fn prune(&self, dry_run: bool) -> Result<PruneReport, PruneError> {
        let start = Instant::now();
        let mut report = PruneReport {
            dry_run,
            ..PruneReport::default()
        };
        let mut lease_until = Micros(0);
        if !dry_run {
            lease_until = self.lease_deadline();
            if !self
                .store
                .claim_prune_lease(self.holder.clone(), lease_until)
                .await?
            {
                report.skipped = true;
                return Ok(report);
            }
        }
        let walked = self.walk(dry_run, &mut report, &mut lease_until).await;
        if !dry_run {
            if walked.is_ok() && report.counts.total() > 0 {
                report.vacuumed = self.vacuum().await;
            }
            if let Err(e) = self.store.release_prune_lease(self.holder.clone()).await {
                tracing::warn!(error = %e, "cannot release the prune lease; it expires");
            }
        }
        walked?;
        report.took = start.elapsed();
        Ok(report)
    }

    fn lease_deadline(&self) -> Micros {
        Micros(Micros::now().0 + i64::try_from(LEASE_FOR.as_micros()).unwrap_or(i64::MAX))
    }

    /// Every table, step by step, counting into `report`.
    async fn walk(
        &self,
        dry_run: bool,
        report: &mut PruneReport,
        lease_until: &mut Micros,
    ) -> Result<(), PruneError> {
        let cuts = self.policy.cuts(Micros::now());
        let half = i64::try_from(LEASE_FOR.as_micros() / 2).unwrap_or(i64::MAX);
        for table in PruneTable::ALL {
            let mut cursor = Cursor::default();
            loop {
                if !dry_run && lease_until.0 - Micros::now().0 < half {
                    *lease_until = self.lease_deadline();
                    let held = self
                        .store
                        .claim_prune_lease(self.holder.clone(), *lease_until);
                    if !held.await? {
                        tracing::warn!("the prune lease was lost; this pass stops");
                        return Ok(());
                    }
                }
                let began = Instant::now();
                let step = self.store.prune_step(table, cuts, cursor, dry_run).await?;
                report.counts.merge(&step.counts);
                if !dry_run {
                    for t in PruneTable::ALL {
                        let n = step.counts.get(t);
                        if n > 0 {
                            PRUNED_ROWS.inc_by([t.as_str()], n);
                        }
                    }
                }
                let Some(next) = step.next else { break };
                cursor = next;
                if !dry_run {
                    tokio::time::sleep(began.elapsed().max(MIN_PAUSE)).await;
                }
            }
        }
        Ok(())
    }

    /// SQLite: give the freed pages back, a step at a time, then checkpoint. Whether it
    /// finished (a failure is logged: the space stays free for reuse).
    async fn vacuum(&self) -> bool {
        let mut last = i64::MAX;
        loop {
            let began = Instant::now();
            match self.store.vacuum_step().await {
                Ok(0) => break,
                Ok(left) if left < last => last = left,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot vacuum the database");
                    return false;
                }
            }
            tokio::time::sleep(began.elapsed().max(MIN_PAUSE)).await;
        }
        match self.store.checkpoint().await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "cannot checkpoint the database");
                false
            }
        }
    }
}

/// The log line of a pass.
fn log_pass(report: &PruneReport) {
    let c = &report.counts;
    tracing::info!(
        job_output = c.get(PruneTable::Output),
        jobs = c.get(PruneTable::Jobs),
        runs = c.get(PruneTable::Runs),
        audit_log = c.get(PruneTable::Audit),
        webhook_deliveries = c.get(PruneTable::Deliveries),
        took_ms = report.took.as_millis() as u64,
        "retention prune"
    );
}

impl Engine {
    /// One prune pass by the settings' `[retention]`: what it deleted, or with `dry_run`
    /// what it would delete (nothing changes).
    pub async fn prune(&self, dry_run: bool) -> Result<PruneReport, PruneError> {
        Pruner::new(self.store.clone(), &self.settings)?
            .prune(dry_run)
            .await
    }

    /// Prune from this process every `retention.every`, when a policy is set.
    pub(crate) fn spawn_pruner(&self) {
        let pruner = match Pruner::new(self.store.clone(), &self.settings) {
            Ok(p) => p,
            Err(PruneError::NoPolicy) => return,
            Err(e) => {
                tracing::error!(error = %e, "no background prune");
                return;
            }
        };
        actix::spawn(async move {
            let every = pruner.policy().every;
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match pruner.prune(false).await {
                    Ok(report) if report.skipped => {
                        tracing::debug!("another process is pruning; this pass is skipped");
                    }
                    Ok(report) => log_pass(&report),
                    Err(e) => tracing::warn!(error = %e, "the retention prune failed"),
                }
            }
        });
    }
}
