//! Who may do what: a caller's [`Role`] and optional scope, and the one table that says
//! which role each [`Action`] needs ([`Action::needs`]).
//!
//! Roles are ordered: `viewer` reads jobs, runs, servers, templates and schedules and
//! follows their streams; `operator` also starts and stops work (submit, cancel,
//! duplicate, runs, template launches); `admin` also changes the fleet's definitions
//! (servers, templates, schedules, webhooks) and reads the audit log and the webhooks.
//! A token without a role is `admin`, as every token was before roles.
//!
//! A scope (a selector over server labels) narrows what a token reaches to the servers it
//! matches, whatever the role: the engine hides jobs, runs and servers outside it and
//! refuses work that would start there; what spans every server alike (the audit log,
//! webhooks: [`Action::spans_the_fleet`]) is refused to a scoped token.

use super::Selector;

/// A caller's role.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads and follows.
    Viewer,
    /// Reads, and starts and stops work.
    Operator,
    /// Everything.
    Admin,
}

impl Role {
    /// Its name as the settings and the API write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role {other:?}; expected viewer, operator or admin"
            )),
        }
    }
}

/// What a caller may do: a role, and the servers (by label selector) it may reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// The role.
    pub role: Role,
    /// Only servers this selector matches (none: every server).
    pub scope: Option<Selector>,
}

impl Access {
    /// Everything, on every server: a token without a role, the library, the service.
    pub fn admin() -> Self {
        Access {
            role: Role::Admin,
            scope: None,
        }
    }

    /// `Ok` when this access may do `action`, else the refusal's message ("operator tokens
    /// cannot delete servers").
    pub fn allow(&self, action: Action) -> Result<(), String> {
        if self.role < action.needs() {
            return Err(format!("{} tokens cannot {}", self.role, action.describe()));
        }
        if self.scope.is_some() && action.spans_the_fleet() {
            return Err(format!("scoped tokens cannot {}", action.describe()));
        }
        Ok(())
    }
}

/// Whose a presented token is: its name and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The token's name.
    pub name: String,
    /// Its role and scope.
    pub access: Access,
}

/// What an [`Action`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Area {
    /// Jobs, their output and streams.
    Jobs,
    /// Runs over many servers and their streams.
    Runs,
    /// Servers.
    Servers,
    /// Templates.
    Templates,
    /// Schedules.
    Schedules,
    /// Webhooks and their deliveries.
    Webhooks,
    /// The audit log.
    Audit,
}

impl Area {
    fn as_str(self) -> &'static str {
        match self {
            Area::Jobs => "jobs",
            Area::Runs => "runs",
            Area::Servers => "servers",
            Area::Templates => "templates",
            Area::Schedules => "schedules",
            Area::Webhooks => "webhooks",
            Area::Audit => "the audit log",
        }
    }
}

/// Every use case a role decides. The one place that says which role each needs is
/// [`Action::needs`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Read (list, get, follow).
    Read(Area),
    /// Create.
    Create(Area),
    /// Update (replace, patch, label).
    Update(Area),
    /// Delete.
    Delete(Area),
    /// Submit a command or script job.
    Submit,
    /// Cancel a job.
    Cancel,
    /// Duplicate a job.
    Duplicate,
    /// Start a run over many servers.
    StartRun,
    /// Cancel a run.
    CancelRun,
    /// Rerun a run's failed hosts.
    Rerun,
    /// Launch a template.
    Launch,
    /// Test a server's connection.
    TestServer,
    /// Accept (pin) a server's changed host key.
    AcceptHostKey,
    /// Pause or resume a schedule.
    PauseSchedule,
    /// Attempt a webhook delivery again.
    Redeliver,
}

impl Action {
    /// The least role that may do it.
    pub fn needs(self) -> Role {
        use Action as A;
        match self {
            A::Read(Area::Webhooks | Area::Audit) => Role::Admin,
            A::Read(_) => Role::Viewer,
            A::Submit
            | A::Cancel
            | A::Duplicate
            | A::StartRun
            | A::CancelRun
            | A::Rerun
            | A::Launch
            | A::TestServer => Role::Operator,
            A::Create(_)
            | A::Update(_)
            | A::Delete(_)
            | A::AcceptHostKey
            | A::PauseSchedule
            | A::Redeliver => Role::Admin,
        }
    }

    /// Whether it reads or changes what concerns every server alike, so that a token scoped
    /// to some servers may not do it whatever its role: the audit log records actions on
    /// every server, and a webhook hears (and its deliveries hold) every job's events.
    pub fn spans_the_fleet(self) -> bool {
        use Action as A;
        matches!(
            self,
            A::Read(Area::Webhooks | Area::Audit)
                | A::Create(Area::Webhooks)
                | A::Update(Area::Webhooks)
                | A::Delete(Area::Webhooks)
                | A::Redeliver
        )
    }

    /// What a refusal says it was ("delete servers": "operator tokens cannot …").
    pub fn describe(self) -> String {
        use Action as A;
        match self {
            A::Read(area) => format!("read {}", area.as_str()),
            A::Create(area) => format!("create {}", area.as_str()),
            A::Update(area) => format!("change {}", area.as_str()),
            A::Delete(area) => format!("delete {}", area.as_str()),
            A::Submit => "submit jobs".into(),
            A::Cancel => "cancel jobs".into(),
            A::Duplicate => "duplicate jobs".into(),
            A::StartRun => "start runs".into(),
            A::CancelRun => "cancel runs".into(),
            A::Rerun => "rerun runs".into(),
            A::Launch => "launch templates".into(),
            A::TestServer => "test servers".into(),
            A::AcceptHostKey => "accept host keys".into(),
            A::PauseSchedule => "pause or resume schedules".into(),
            A::Redeliver => "redeliver webhook deliveries".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_and_a_refusal_names_role_and_action() {
        let operator = Access {
            role: Role::Operator,
            scope: None,
        };
        assert!(operator.allow(Action::Submit).is_ok());
        assert!(operator.allow(Action::Read(Area::Jobs)).is_ok());
        assert_eq!(
            operator.allow(Action::Delete(Area::Servers)).unwrap_err(),
            "operator tokens cannot delete servers"
        );
        assert!(operator.allow(Action::Read(Area::Audit)).is_err());
        let viewer = Access {
            role: Role::Viewer,
            scope: None,
        };
        assert!(viewer.allow(Action::Read(Area::Runs)).is_ok());
        assert!(viewer.allow(Action::Cancel).is_err());
        assert!(Access::admin().allow(Action::Read(Area::Audit)).is_ok());
        let scoped = Access {
            role: Role::Admin,
            scope: Some(Selector::parse("scope", "env=staging").unwrap()),
        };
        assert!(scoped.allow(Action::Delete(Area::Servers)).is_ok());
        assert_eq!(
            scoped.allow(Action::Read(Area::Audit)).unwrap_err(),
            "scoped tokens cannot read the audit log"
        );
        assert!(scoped.allow(Action::Redeliver).is_err());
        assert_eq!("operator".parse::<Role>(), Ok(Role::Operator));
        assert!("root".parse::<Role>().is_err());
    }
}
