//! The vocabulary of the system: ids, statuses and their allowed transitions, server and job
//! specifications with their validation. Pure: no I/O, no database, no clock beyond what callers
//! pass in. Everything here is tested on its own.

/// A closed set of names stored in a text column and sent in the API: the enum with its
/// derives, `ALL` (in declaration order), `as_str`, `Display` and a `FromStr` that takes the
/// name (or one of its aliases) and otherwise says which names `what` accepts.
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident ($what:literal) {
            $($(#[$vmeta:meta])* $variant:ident = $text:literal $(| $alias:literal)*,)+
        }
    ) => {
        $(#[$meta])*
        #[derive(
            Debug,
            Clone,
            Copy,
            PartialEq,
            Eq,
            Hash,
            serde::Serialize,
            serde::Deserialize,
            utoipa::ToSchema,
            diesel::AsExpression,
            diesel::FromSqlRow,
        )]
        #[diesel(sql_type = diesel::sql_types::Text)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: [Self; [$($text),+].len()] = [$(Self::$variant),+];

            /// The name used in the API and the database.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text $(| $alias)* => Ok(Self::$variant),)+
                    other => Err(format!(
                        concat!("unknown ", $what, " {:?}; expected {}"),
                        other,
                        $crate::domain::expected_names(&[$($text),+])
                    )),
                }
            }
        }
    };
}

/// The names a [`named_enum!`] accepts, for its parse error: `"a" or "b"` for two,
/// `one of a, b, c` for more.
fn expected_names(names: &[&str]) -> String {
    match names {
        [a, b] => format!("{a:?} or {b:?}"),
        _ => format!("one of {}", names.join(", ")),
    }
}

mod access;
mod ids;
mod job;
mod labels;
mod retention;
mod run;
mod schedule;
mod server;
mod spec;
mod template;

pub use access::{Access, Action, Area, Identity, Role};

pub use ids::{JobId, RunId, ServerId};

/// Who asks for something: recorded in the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// The token's name, `anonymous` without tokens, `library` or `system`.
    pub name: String,
    /// The caller's address, when it came over the network.
    pub peer: Option<String>,
    /// What it may do: its token's role and scope (`admin` for the library and the
    /// service itself).
    pub access: Access,
}

impl Actor {
    /// A program embedding the library.
    pub fn library() -> Self {
        Actor {
            name: "library".into(),
            peer: None,
            access: Access::admin(),
        }
    }

    /// The service itself (a worker's first connection).
    pub fn system() -> Self {
        Actor {
            name: "system".into(),
            peer: None,
            access: Access::admin(),
        }
    }
}
pub use job::{JobKind, JobStatus, OutputStream};
pub use labels::{Labels, SELECTOR_PATTERN, Selector, validate_labels};
pub use retention::{Cuts, MAX_RETENTION, PruneCounts, PruneTable, RetentionPolicy};
pub use run::{
    Amount, Failure, HostState, HostStatus, NewRun, Plan, RunRequest, RunStatus, Strategy,
    StrategyRequest, Targets, TargetsRequest, plan,
};
pub use schedule::{
    Cron, Fire, MAX_DURATION, Overlap, SEARCH_YEARS, Zone, fires_between, next_fires,
    parse_duration, parse_duration_within,
};
pub use server::{AuthType, HostKeyCheck, ServerDraft, ServerPatch, ServerSecrets};
pub(crate) use spec::whole_number;
pub use spec::{DEFAULT_SHELL, JobLimits, JobRequest, JobSpec, valid_env_name, valid_shell};
pub use template::{
    Launch, MAX_PARAMS, ParamDef, ParamType, TemplateRequest, check_launch, valid_template_name,
    validate_params,
};

use std::borrow::Cow;
use std::fmt;

/// A field of a request that failed validation. Turned into a 422 naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// The name of the offending field, as the API spells it.
    pub field: Cow<'static, str>,
    /// What is wrong with it, in a sentence a user can act on.
    pub message: String,
}

impl FieldError {
    /// A validation failure of `field`.
    pub fn new(field: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A validation failure of `field` when `failed`, else `Ok`.
fn refuse(failed: bool, field: &'static str, message: impl Into<String>) -> Result<(), FieldError> {
    if failed {
        Err(FieldError::new(field, message))
    } else {
        Ok(())
    }
}

/// Microseconds since the Unix epoch: how every time is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Micros(pub i64);

impl Micros {
    /// The current wall-clock time.
    pub fn now() -> Self {
        Self(chrono::Utc::now().timestamp_micros())
    }

    /// The wall-clock time `d` ago.
    pub fn ago(d: std::time::Duration) -> Self {
        let d = i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
        Self(Self::now().0.saturating_sub(d))
    }

    /// RFC 3339 with microseconds, in UTC.
    pub fn to_rfc3339(self) -> String {
        chrono::DateTime::from_timestamp_micros(self.0)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    }
}

impl fmt::Display for Micros {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl serde::Serialize for Micros {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}

/// In the OpenAPI document a time is an RFC 3339 string (UTC, microseconds).
impl utoipa::PartialSchema for Micros {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
            .description(Some("RFC 3339 time in UTC, with microseconds."))
            .examples([serde_json::json!("2025-01-31T09:15:42.123456Z")])
            .into()
    }
}

impl utoipa::ToSchema for Micros {}

/// Parse a UUID path segment, naming what it was meant to identify on failure.
pub fn parse_id(what: &'static str, raw: &str) -> Result<uuid::Uuid, FieldError> {
    uuid::Uuid::parse_str(raw).map_err(|_| FieldError::new(what, format!("{raw:?} is not a UUID")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micros_format_as_rfc3339_utc() {
        assert_eq!(Micros(0).to_rfc3339(), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            Micros(1_500_000).to_rfc3339(),
            "1970-01-01T00:00:01.500000Z"
        );
    }

    #[test]
    fn parse_id_names_the_field() {
        let err = parse_id("id", "nope").unwrap_err();
        assert_eq!(err.field, "id");
        assert!(parse_id("id", "0195f2a4-3b7c-7d8e-9f00-112233445566").is_ok());
    }
}
