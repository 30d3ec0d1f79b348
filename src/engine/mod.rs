//! The engine: every use case, once.
//!
//! Submit, cancel, duplicate, read and follow output; runs over many servers (start,
//! advance, cancel, rerun, summarize); register, change, delete and test servers and pin
//! their host keys; the audit record of each; retention (the prune). The HTTP handlers, the
//! library ([`crate::Supervisor`]) and the daemon's settings file all call these functions;
//! none of them holds a use case of its own. Each returns a typed [`Error`]; `http` maps it to a
//! status, the library hands it out as it is.
//!
//! Each use case takes the [`Actor`] it is done for and decides access here, once: its role
//! (`Engine::allow`, the table in [`crate::domain::Action::needs`]) and its scope (`scope`:
//! what a scoped caller does not reach answers as missing; work that would reach outside is
//! refused whole).
//!
//! [`Runtime`] starts what the use cases act through (the database, the queue, the
//! dispatcher and its actors on an actix system of their own) for a [`Role`], and stops it.
//!
//! ```text
//!  http (extract → engine → view)   supervisor (library)   app (roles, HTTP server, reload)
//!                     ╲                    │                   ╱
//!                      ▼                   ▼                  ▼
//!                 engine: Engine (use cases), Runtime (start / drain), follow
//!                      │                   │                  │
//!                      ▼                   ▼                  ▼
//!         actors (Dispatcher, HostActor, JobActor, output)   queue (memory, RabbitMQ)
//!                      │                                      │
//!                      ▼                                      ▼
//!                 store (diesel) ─────────▶ domain (pure) ◀── ssh, settings, events
//! ```

mod declared;
mod error;
pub mod follow;
mod jobs;
mod retention;
mod run_follow;
mod runs;
mod runtime;
mod schedules;
mod scope;
mod servers;
mod sessions;
mod templates;
pub mod views;
mod webhooks;

use std::sync::Arc;

use actix::Addr;

pub use declared::{Declared, webhook_request};
pub use error::{Error, Subject};
pub use follow::FollowTask;
pub(crate) use jobs::WAIT_POLL;
pub use jobs::{Canceled, Duplicated, Submitted};
pub use retention::{PruneError, PruneReport, Pruner};
pub use run_follow::{RunEvent, RunFollow};
pub use runs::{OutputGroup, RerunOnly};
pub use runtime::{Role, Runtime, StartError, open_store_waiting};
pub use schedules::{Schedule, ScheduleRequest, check_schedule};
pub use servers::{Tested, apply_servers, ensure_default_server};
pub use sessions::SESSION_IDLE;
pub use templates::{LaunchRequest, template_row};
pub use webhooks::{EVENTS, WebhookFilter, WebhookRequest, check_webhook, signature};

pub use crate::domain::Actor;

use crate::actors::Dispatcher;
use crate::events::EventBus;
use crate::queue::JobQueue;
use crate::queue::rabbit::RabbitBroker;
use crate::settings::Settings;
use crate::store::{AuditEntry, AuditFilter, AuditRow, Backend, Store, StoreError};

/// The handle every use case is a method of. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    store: Store,
    settings: Arc<Settings>,
    queue: Arc<dyn JobQueue>,
    events: EventBus,
    dispatcher: Addr<Dispatcher>,
    broker: Option<Arc<RabbitBroker>>,
    /// Where jobs the broker confirmed are recorded (processes that accept jobs, on RabbitMQ).
    published: Option<crate::queue::bridge::Published>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("backend", &self.store.backend())
            .field("queue", &self.queue.kind())
            .finish_non_exhaustive()
    }
}

/// What `/health` reports.
#[derive(Debug)]
pub struct Health {
    /// The database's answer to a trivial query.
    pub database: Result<(), StoreError>,
    /// Which database.
    pub backend: Backend,
    /// `memory` or `rabbitmq`.
    pub queue: &'static str,
    /// Whether the queue takes messages now.
    pub queue_connected: bool,
}

impl Engine {
    /// The database.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The settings the engine started with.
    pub fn settings(&self) -> &Arc<Settings> {
        &self.settings
    }

    /// The process's event bus (status changes and output as they happen).
    pub fn events(&self) -> &EventBus {
        &self.events
    }

    /// Is the database reachable, which queue is in use.
    pub async fn health(&self) -> Health {
        Health {
            database: self.store.ping().await,
            backend: self.store.backend(),
            queue: self.queue.kind(),
            queue_connected: self.queue.is_up(),
        }
    }

    /// A page of the audit log, newest first.
    pub async fn audit_log(
        &self,
        actor: &Actor,
        filter: AuditFilter,
    ) -> Result<Vec<AuditRow>, Error> {
        self.allow(
            actor,
            crate::domain::Action::Read(crate::domain::Area::Audit),
        )
        .await?;
        Ok(self.store.list_audit(filter).await?)
    }

    /// Whether `actor` may do `action`: a refusal (`Forbidden`, a 403) is recorded in the
    /// audit log as `access.denied`, with the action and the role.
    pub(crate) async fn allow(
        &self,
        actor: &Actor,
        action: crate::domain::Action,
    ) -> Result<(), Error> {
        let Err(message) = actor.access.allow(action) else {
            return Ok(());
        };
        tracing::info!(actor = %actor.name, role = %actor.access.role, action = %action.describe(), "refused");
        let detail = serde_json::json!({"action": action.describe(), "role": actor.access.role});
        self.audit(actor, "access.denied", &actor.name, detail)
            .await;
        Err(Error::Forbidden(message))
    }

    /// Record that `actor` did `action` (`KIND.VERB`: the target's kind comes first) to
    /// `target`. A failure to record is logged; the action stands.
    async fn audit(
        &self,
        actor: &Actor,
        action: &'static str,
        target: impl ToString,
        detail: serde_json::Value,
    ) {
        let kind = action.split('.').next().unwrap_or(action);
        let entry = AuditEntry::by(actor, action, kind, target, detail);
        let target = entry.target_id.clone();
        if let Err(e) = self.store.audit(entry).await {
            tracing::error!(action, target_id = ?target, error = %e, "cannot write the audit record");
        }
    }
}
