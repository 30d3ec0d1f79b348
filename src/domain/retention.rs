//! Retention: how long each kind of row is kept, and the cut-off times that follow from it at
//! a given moment. Pure: the store deletes what is older than the cuts.

use std::time::Duration;

use super::{FieldError, Micros, parse_duration_within};

/// The longest retention a duration may name: 3650 days.
pub const MAX_RETENTION: Duration = Duration::from_secs(3650 * 86_400);

/// The shortest interval between two background prunes.
const MIN_EVERY: Duration = Duration::from_secs(1);

/// The kinds of row a prune deletes, each named as its table (the label of
/// `jobexec_pruned_rows_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PruneTable {
    /// Output chunks (`job_output`).
    Output,
    /// Finished jobs (`jobs`).
    Jobs,
    /// Finished runs with no job left (`runs`).
    Runs,
    /// Audit records (`audit_log`).
    Audit,
    /// Settled webhook deliveries (`webhook_deliveries`).
    Deliveries,
}

impl PruneTable {
    /// Every table, in the order a prune visits them.
    pub const ALL: [PruneTable; 5] = [
        PruneTable::Output,
        PruneTable::Jobs,
        PruneTable::Runs,
        PruneTable::Audit,
        PruneTable::Deliveries,
    ];

    /// The table's name.
    pub fn as_str(self) -> &'static str {
        match self {
            PruneTable::Output => "job_output",
            PruneTable::Jobs => "jobs",
            PruneTable::Runs => "runs",
            PruneTable::Audit => "audit_log",
            PruneTable::Deliveries => "webhook_deliveries",
        }
    }
}

impl std::fmt::Display for PruneTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Rows per table: what a prune deleted, or would delete.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneCounts([u64; 5]);

impl PruneCounts {
    fn slot(table: PruneTable) -> usize {
        PruneTable::ALL
            .iter()
            .position(|t| *t == table)
            .unwrap_or(0)
    }

    /// Count `n` more rows of `table`.
    pub fn add(&mut self, table: PruneTable, n: u64) {
        self.0[Self::slot(table)] += n;
    }

    /// The rows of `table`.
    pub fn get(&self, table: PruneTable) -> u64 {
        self.0[Self::slot(table)]
    }

    /// Add every count of `other`.
    pub fn merge(&mut self, other: &PruneCounts) {
        for t in PruneTable::ALL {
            self.add(t, other.get(t));
        }
    }

    /// The rows of every table.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
}

/// A retention policy: for each kind of row, how long it is kept (`None`: forever).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Output of jobs that finished longer ago than this.
    pub output: Option<Duration>,
    /// Completed and canceled jobs.
    pub jobs: Option<Duration>,
    /// Failed and timed-out jobs (`None` here and set in `jobs`: as `jobs`).
    pub failed_jobs: Option<Duration>,
    /// The newest jobs of each server, kept whatever their age.
    pub keep_last_per_server: u32,
    /// Audit records.
    pub audit: Option<Duration>,
    /// Delivered and failed webhook deliveries.
    pub deliveries: Option<Duration>,
    /// How often the background prune runs.
    pub every: Duration,
    /// Rows per delete transaction (at least 1).
    pub batch: u32,
}

/// The times a prune at one moment deletes before (microseconds since the epoch; `None`:
/// nothing of that kind is deleted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cuts {
    /// Output of jobs finished before this.
    pub output: Option<i64>,
    /// Completed and canceled jobs finished before this.
    pub jobs: Option<i64>,
    /// Failed and timed-out jobs finished before this.
    pub failed_jobs: Option<i64>,
    /// Job-less finished runs finished before this.
    pub runs: Option<i64>,
    /// Audit records written before this.
    pub audit: Option<i64>,
    /// Settled deliveries made before this.
    pub deliveries: Option<i64>,
    /// The newest jobs of each server that are kept.
    pub keep_last_per_server: u32,
    /// Rows per delete transaction.
    pub batch: i64,
}

impl Cuts {
    /// The latest of the job cuts: no job created after it can be deleted.
    pub fn jobs_before(&self) -> Option<i64> {
        self.jobs.max(self.failed_jobs)
    }
}

impl RetentionPolicy {
    /// The policy of the settings' fields (durations as text, empty: forever). A refusal
    /// names the field and never quotes its value.
    #[expect(clippy::too_many_arguments, reason = "one argument per setting")]
    pub fn parse(
        output: &str,
        jobs: &str,
        failed_jobs: &str,
        keep_last_per_server: u32,
        audit: &str,
        deliveries: &str,
        every: &str,
        batch: u32,
    ) -> Result<RetentionPolicy, FieldError> {
        let keep = |field: &'static str, raw: &str| -> Result<Option<Duration>, FieldError> {
            if raw.trim().is_empty() {
                return Ok(None);
            }
            parse_duration_within(field, raw, MAX_RETENTION)
                .map(Some)
                .map_err(|_| {
                    FieldError::new(
                        field,
                        "is not a duration such as \"30d\", \"12h\" or \"10s\" (whole numbers \
                         with the units d, h, m, s, largest first, at most 3650d; empty: \
                         forever)",
                    )
                })
        };
        let every_field = "retention.every";
        let every = keep(every_field, every)?
            .ok_or_else(|| FieldError::new(every_field, "is empty; expected a duration"))?;
        if every < MIN_EVERY {
            return Err(FieldError::new(every_field, "is below 1s"));
        }
        if batch == 0 {
            return Err(FieldError::new(
                "retention.batch",
                "is 0; expected 1 or more",
            ));
        }
        Ok(RetentionPolicy {
            output: keep("retention.output", output)?,
            jobs: keep("retention.jobs", jobs)?,
            failed_jobs: keep("retention.failed_jobs", failed_jobs)?,
            keep_last_per_server,
            audit: keep("retention.audit", audit)?,
            deliveries: keep("retention.deliveries", deliveries)?,
            every,
            batch,
        })
    }

    /// Whether anything is ever deleted.
    pub fn is_set(&self) -> bool {
        [
            self.output,
            self.jobs,
            self.failed_jobs,
            self.audit,
            self.deliveries,
        ]
        .iter()
        .any(Option::is_some)
    }

    /// The cuts of a prune at `now`. Failed and timed-out jobs fall back to `jobs`; runs
    /// with no job left follow `jobs` (or `failed_jobs` when only that is set).
    pub fn cuts(&self, now: Micros) -> Cuts {
        let before = |d: Option<Duration>| {
            d.map(|d| {
                now.0
                    .saturating_sub(i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
            })
        };
        let failed = self.failed_jobs.or(self.jobs);
        Cuts {
            output: before(self.output),
            jobs: before(self.jobs),
            failed_jobs: before(failed),
            runs: before(self.jobs.or(failed)),
            audit: before(self.audit),
            deliveries: before(self.deliveries),
            keep_last_per_server: self.keep_last_per_server,
            batch: i64::from(self.batch.max(1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(output: &str, jobs: &str, failed: &str) -> Result<RetentionPolicy, FieldError> {
        RetentionPolicy::parse(output, jobs, failed, 0, "", "", "10m", 100)
    }

    #[test]
    fn empty_keeps_forever_and_failed_jobs_fall_back_to_jobs() {
        let p = parse("", "", "").unwrap();
        assert!(!p.is_set());
        let cuts = p.cuts(Micros(1_000_000_000));
        assert_eq!(
            (cuts.output, cuts.jobs, cuts.failed_jobs),
            (None, None, None)
        );
        let p = parse("", "1h", "").unwrap();
        let cuts = p.cuts(Micros(10_000_000_000));
        assert_eq!(cuts.jobs, Some(10_000_000_000 - 3_600_000_000));
        assert_eq!(cuts.failed_jobs, cuts.jobs);
        assert_eq!(cuts.runs, cuts.jobs);
        let p = parse("", "1h", "2h").unwrap();
        let cuts = p.cuts(Micros(10_000_000_000));
        assert_eq!(cuts.failed_jobs, Some(10_000_000_000 - 7_200_000_000));
        assert_eq!(cuts.jobs_before(), cuts.jobs);
    }

    #[test]
    fn long_durations_are_taken_and_bad_ones_refused_without_their_value() {
        assert_eq!(
            parse("30d", "", "").unwrap().output,
            Some(Duration::from_secs(30 * 86_400))
        );
        for bad in ["hunter2", "-1d", "3651d", "7"] {
            let e = parse("", bad, "").unwrap_err();
            assert_eq!(e.field, "retention.jobs");
            assert!(!e.message.contains(bad), "{}", e.message);
        }
        let e = RetentionPolicy::parse("", "", "", 0, "", "", "", 1).unwrap_err();
        assert_eq!(e.field, "retention.every");
        let e = RetentionPolicy::parse("", "", "", 0, "", "", "1m", 0).unwrap_err();
        assert_eq!(e.field, "retention.batch");
    }
}
