//! What a use case can answer instead of doing it. The HTTP layer maps each case to a status
//! (`crate::error`), the library hands it out as it is.

use std::fmt;

use crate::domain::{FieldError, JobStatus, RunStatus};
use crate::store::StoreError;

/// The thing a request named and that was not there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// A job, by id (or by the text given for its id).
    Job(String),
    /// A server, by id (or by the text given for its id).
    Server(String),
    /// A server, by name.
    ServerNamed(String),
    /// A run, by id.
    Run(String),
    /// A template, by name or id.
    Template(String),
    /// A schedule, by name or id.
    Schedule(String),
    /// A webhook, by name or id.
    Webhook(String),
    /// A webhook's delivery, by id.
    Delivery(String),
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Job(id) => write!(f, "job {id}"),
            Self::Server(id) => write!(f, "server {id}"),
            Self::ServerNamed(name) => write!(f, "server {name:?}"),
            Self::Run(id) => write!(f, "run {id}"),
            Self::Template(name) => write!(f, "template {name:?}"),
            Self::Schedule(name) => write!(f, "schedule {name:?}"),
            Self::Webhook(name) => write!(f, "webhook {name:?}"),
            Self::Delivery(id) => write!(f, "delivery {id}"),
        }
    }
}

/// Why a use case was refused or failed. Messages never contain secrets.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// What the request names does not exist.
    #[error("{0} does not exist")]
    NotFound(Subject),
    /// A field of the request is invalid (the message names it).
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// The job has ended: it cannot be canceled.
    #[error("job {id} has already ended ({status}); it cannot be canceled")]
    AlreadyEnded {
        /// The job.
        id: String,
        /// How it ended.
        status: JobStatus,
    },
    /// The run has ended: it cannot be canceled.
    #[error("run {id} has already ended ({status}); it cannot be canceled")]
    RunEnded {
        /// The run.
        id: String,
        /// How it ended.
        status: RunStatus,
    },
    /// The run has not ended: what it would rerun is not known yet.
    #[error("run {id} is still {status}; rerun it once it has ended (or cancel it)")]
    RunNotEnded {
        /// The run.
        id: String,
        /// Where it is.
        status: RunStatus,
    },
    /// The caller's role or scope does not allow it ("operator tokens cannot delete
    /// servers").
    #[error("{0}")]
    Forbidden(String),
    /// The database refused or failed (a conflict such as a name taken or a busy server, an
    /// outage, a fault).
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Error {
    /// A store error, with `subject` named when it is a missing row.
    pub(crate) fn store(subject: impl FnOnce() -> Subject) -> impl FnOnce(StoreError) -> Error {
        move |e| match e {
            StoreError::NotFound => Error::NotFound(subject()),
            other => Error::Store(other),
        }
    }
}
