//! Job statuses and the one function that says which changes are allowed.
//!
//! ```text
//!            ┌──────────── canceled ◀──────────┐
//!            │                                 │
//!  queued ───┼──▶ running ──▶ completed | failed | timed_out
//!    ▲       │       │
//!    │       └──▶ failed (could not start: server gone, …)
//!    └───────────────┘ (re-queued: connection failed before the command started,
//!                       or a lost worker's job that is safe to retry)
//! ```
//! A terminal status never changes again.

named_enum! {
    /// Where a job is in its life. Stored as its name ([`JobStatus::as_str`]) in a text column.
    #[derive(Default)]
    pub enum JobStatus ("status") {
        /// Accepted and waiting for a worker (the status of a new job).
        #[default]
        Queued = "queued",
        /// Claimed by a worker; the remote command is starting or running.
        Running = "running",
        /// Exited with code 0.
        Completed = "completed",
        /// Exited non-zero, or could not run (`error` says why).
        Failed = "failed",
        /// Stopped at a user's request.
        Canceled = "canceled",
        /// Stopped because it ran past its timeout.
        TimedOut = "timed_out",
    }
}

impl JobStatus {
    /// True once the job has ended; a terminal status never changes.
    pub fn is_terminal(self) -> bool {
        !matches!(self, Self::Queued | Self::Running)
    }

    /// Whether a job may go from `self` to `to`. The store enforces this with conditional
    /// updates (`UPDATE … WHERE status IN (allowed sources)`), so two processes cannot both win.
    pub fn can_become(self, to: JobStatus) -> bool {
        use JobStatus::*;
        matches!(
            (self, to),
            (Queued, Running | Canceled | Failed)
                | (Running, Completed | Failed | Canceled | TimedOut | Queued)
        )
    }

    /// The statuses from which `to` may be reached.
    pub fn sources_of(to: JobStatus) -> Vec<JobStatus> {
        Self::ALL
            .into_iter()
            .filter(|from| from.can_become(to))
            .collect()
    }
}

named_enum! {
    /// What a job runs. Stored as its name ([`JobKind::as_str`]) in a text column.
    #[derive(Default)]
    pub enum JobKind ("job kind") {
        /// A command line: `command` followed by `args`.
        #[default]
        Command = "command",
        /// A shell script given whole, run by `shell` with `args` as `$1…`.
        Script = "script",
    }
}

/// Which remote stream an output chunk came from.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum OutputStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl OutputStream {
    /// The number stored in `job_output.stream`.
    pub fn code(self) -> i16 {
        match self {
            Self::Stdout => 0,
            Self::Stderr => 1,
        }
    }

    /// The stream stored as `code`; anything but 1 is stdout.
    pub fn from_code(code: i16) -> Self {
        if code == 1 {
            Self::Stderr
        } else {
            Self::Stdout
        }
    }
}

#[cfg(test)]
mod tests {
    use super::JobStatus::*;
    use super::*;

    #[test]
    fn terminal_statuses_never_change() {
        for from in JobStatus::ALL.into_iter().filter(|s| s.is_terminal()) {
            for to in JobStatus::ALL {
                assert!(!from.can_become(to), "{from} -> {to} must be refused");
            }
        }
    }

    #[test]
    fn the_lifecycle_is_allowed() {
        assert!(Queued.can_become(Running));
        assert!(Queued.can_become(Canceled));
        assert!(Running.can_become(Completed));
        assert!(Running.can_become(TimedOut));
        assert!(Running.can_become(Queued));
        assert!(!Queued.can_become(Completed));
        assert!(!Queued.can_become(TimedOut));
        assert!(!Running.can_become(Running));
    }

    #[test]
    fn sources_match_can_become() {
        assert_eq!(JobStatus::sources_of(Canceled), vec![Queued, Running]);
        assert_eq!(JobStatus::sources_of(Running), vec![Queued]);
    }

    #[test]
    fn names_round_trip() {
        for st in JobStatus::ALL {
            assert_eq!(st.as_str().parse::<JobStatus>(), Ok(st));
        }
        assert!(
            "done"
                .parse::<JobStatus>()
                .unwrap_err()
                .contains("timed_out")
        );
    }
}
