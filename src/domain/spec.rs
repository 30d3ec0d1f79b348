//! Job submissions: what users send, and its validation into a [`JobSpec`].

use std::collections::BTreeMap;

use super::{FieldError, JobKind, refuse};

/// A command or script submission as sent (`POST /jobs`, `POST /jobs/script`).
///
/// A command job needs `command` and takes no `script` or `shell`; a script job needs
/// `script` and takes no `command`.
///
/// The schema states what validation checks whatever the route: no NUL byte in a string the
/// job runs with, `env` names and count, the lengths (in characters) of `cwd` and
/// `idempotency_key`, the range of `timeout` (its maximum is the default
/// `jobs.max_timeout_secs`; a service configured lower refuses more).
#[derive(Debug, Default, serde::Deserialize, utoipa::ToSchema)]
pub struct JobRequest {
    /// Command jobs: the program (the seed's `command`): not blank, no NUL byte.
    #[schema(
        pattern = "^[^\\u0000]*[^\\u0000\\t-\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000][^\\u0000]*$"
    )]
    pub command: Option<String>,
    /// Script jobs: the script text, not blank.
    #[schema(
        pattern = "[^\\t-\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]"
    )]
    pub script: Option<String>,
    /// Arguments: appended to the command line, or the script's `$1…`.
    #[schema(pattern = "^[^\\u0000]*$")]
    pub args: Option<String>,
    /// Target server id; omitted means the default server, when one is configured.
    #[schema(format = Uuid)]
    pub server_id: Option<String>,
    /// Seconds before the job is stopped and ends `timed_out`; 0 or omitted: the default
    /// (`jobs.default_timeout_secs`). A whole number (`60` or `60.0`).
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(minimum = 0, maximum = 604800)]
    pub timeout: Option<i64>,
    /// Script jobs: the interpreter (absolute path); default `/bin/bash`.
    #[schema(pattern = "^/[A-Za-z0-9/._+-]{0,255}$")]
    pub shell: Option<String>,
    /// Environment variables for the remote command (names `[A-Za-z_][A-Za-z0-9_]*`).
    #[schema(schema_with = env_schema)]
    pub env: Option<BTreeMap<String, String>>,
    /// Working directory on the remote host.
    #[schema(max_length = 4096, pattern = "^[^\\u0000]*$")]
    pub cwd: Option<String>,
    /// A second submit with the same key returns the first job.
    #[schema(max_length = 256)]
    pub idempotency_key: Option<String>,
    /// Whether the job may be re-run when its worker is lost mid-run (off by default).
    pub retry_safe: Option<bool>,
}

/// Most `env` entries the schema states: the default `jobs.max_env_entries`.
const DOCUMENTED_MAX_ENV_ENTRIES: usize = 128;

/// The schema of `env`: an object of strings without NUL bytes, its names variable names.
fn env_schema() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Type};
    use utoipa::openapi::{RefOr, Schema};
    let value = ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some("^[^\\u0000]*$"))
        .build();
    let name = ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some("^[A-Za-z_][A-Za-z0-9_]*$"))
        .build();
    ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::SchemaType::from_iter([
            Type::Object,
            Type::Null,
        ]))
        .description(Some(
            "Environment variables for the remote command (names `[A-Za-z_][A-Za-z0-9_]*`).",
        ))
        .additional_properties(Some(AdditionalProperties::RefOr(RefOr::T(Schema::Object(
            value,
        )))))
        .property_names(Some(name))
        .max_properties(Some(DOCUMENTED_MAX_ENV_ENTRIES))
        .build()
}

/// Deserialize an optional integer written as a JSON integer or as a float with no
/// fractional part (`60.0`): JSON Schema counts both as an `integer`, so both are accepted.
/// `1.5` is refused, and the 422 names the field.
pub(crate) fn whole_number<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<i64>, D::Error> {
    use serde::de::{Deserialize, Error, Unexpected};
    use serde_json::Value;
    let n = match Value::deserialize(deserializer)? {
        Value::Null => return Ok(None),
        Value::Number(n) => n,
        Value::Bool(b) => return Err(D::Error::invalid_type(Unexpected::Bool(b), &"an integer")),
        Value::String(s) => return Err(D::Error::invalid_type(Unexpected::Str(&s), &"an integer")),
        Value::Array(_) => return Err(D::Error::invalid_type(Unexpected::Seq, &"an integer")),
        Value::Object(_) => return Err(D::Error::invalid_type(Unexpected::Map, &"an integer")),
    };
    let unexpected = match (n.as_i64(), n.as_u64(), n.as_f64()) {
        (Some(v), _, _) => return Ok(Some(v)),
        (None, Some(v), _) => Unexpected::Unsigned(v),
        // i64::MAX as f64 is 2^63, itself out of range: hence `<`.
        #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
        (None, None, Some(v))
            if v.fract() == 0.0 && v >= i64::MIN as f64 && v < i64::MAX as f64 =>
        {
            return Ok(Some(v as i64));
        }
        (_, _, v) => Unexpected::Float(v.unwrap_or(f64::NAN)),
    };
    Err(D::Error::invalid_value(unexpected, &"an integer"))
}

/// Bounds that validation enforces, from settings.
#[derive(Debug, Clone)]
pub struct JobLimits {
    /// `timeout` when omitted.
    pub default_timeout_secs: i64,
    /// Largest `timeout` accepted.
    pub max_timeout_secs: i64,
    /// Largest script, in bytes.
    pub max_script_bytes: usize,
    /// Longest command line (command + args), in bytes.
    pub max_command_bytes: usize,
    /// Most `env` entries.
    pub max_env_entries: usize,
}

/// A validated job, ready to store (a run keeps it as JSON, for the jobs it makes).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct JobSpec {
    /// Command or script.
    pub kind: JobKind,
    /// The program, for command jobs.
    pub command: Option<String>,
    /// Arguments.
    pub args: Option<String>,
    /// The script, for script jobs.
    pub script: Option<String>,
    /// The interpreter, for script jobs.
    pub shell: Option<String>,
    /// Seconds allowed.
    pub timeout_secs: i64,
    /// Environment.
    pub env: BTreeMap<String, String>,
    /// Working directory.
    pub cwd: Option<String>,
    /// Idempotency key.
    pub idempotency_key: Option<String>,
    /// Safe to re-run after a lost worker.
    pub retry_safe: bool,
}

/// Default interpreter of script jobs (the seed's).
pub const DEFAULT_SHELL: &str = "/bin/bash";

/// `NAME` of an environment variable: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// An interpreter path: absolute, no spaces or shell metacharacters.
pub fn valid_shell(shell: &str) -> bool {
    shell.starts_with('/')
        && shell.len() <= 256
        && shell
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | '+'))
}

impl JobSpec {
    /// Validate a submission of `kind`.
    pub fn from_request(
        kind: JobKind,
        req: JobRequest,
        limits: &JobLimits,
    ) -> Result<JobSpec, FieldError> {
        let (command, script, shell) = match kind {
            JobKind::Command => {
                let message = "belongs to POST /jobs/script, not to a command job";
                refuse(req.script.is_some(), "script", message)?;
                let command = req
                    .command
                    .filter(|c| !c.trim().is_empty())
                    .ok_or_else(|| {
                        FieldError::new("command", "is required and must not be empty")
                    })?;
                let len = command.len() + req.args.as_ref().map_or(0, |a| a.len() + 1);
                let max = limits.max_command_bytes;
                let message =
                    format!("the command line is {len} bytes; at most {max} are accepted");
                refuse(len > max, "command", message)?;
                let nul =
                    command.contains('\0') || req.args.as_ref().is_some_and(|a| a.contains('\0'));
                refuse(nul, "command", "must not contain NUL bytes")?;
                refuse(req.shell.is_some(), "shell", "applies to script jobs only")?;
                (Some(command), None, None)
            }
            JobKind::Script => {
                let message = "belongs to POST /jobs, not to a script job";
                refuse(req.command.is_some(), "command", message)?;
                let script = req.script.filter(|s| !s.trim().is_empty()).ok_or_else(|| {
                    FieldError::new("script", "is required and must not be empty")
                })?;
                let (len, max) = (script.len(), limits.max_script_bytes);
                let message = format!("is {len} bytes; at most {max} are accepted");
                refuse(len > max, "script", message)?;
                let shell = req.shell.unwrap_or_else(|| DEFAULT_SHELL.to_string());
                let message = format!("{shell:?} is not an absolute interpreter path");
                refuse(!valid_shell(&shell), "shell", message)?;
                let bad_args = req
                    .args
                    .as_ref()
                    .is_some_and(|a| a.len() > limits.max_command_bytes || a.contains('\0'));
                refuse(bad_args, "args", "is too long or contains NUL bytes")?;
                (None, Some(script), Some(shell))
            }
        };
        let max = limits.max_timeout_secs;
        let timeout_secs = match req.timeout {
            None | Some(0) => limits.default_timeout_secs,
            Some(t) => {
                let message = format!("{t} is out of range (1-{max} seconds)");
                refuse(t < 0 || t > max, "timeout", message)?;
                t
            }
        };
        let env = req.env.unwrap_or_default();
        let (len, max) = (env.len(), limits.max_env_entries);
        let message = format!("has {len} entries; at most {max} are accepted");
        refuse(len > max, "env", message)?;
        if let Some(bad) = env.keys().find(|k| !valid_env_name(k)) {
            return Err(FieldError::new(
                "env",
                format!("{bad:?} is not a variable name ([A-Za-z_][A-Za-z0-9_]*)"),
            ));
        }
        let nul = env.values().any(|v| v.contains('\0'));
        refuse(nul, "env", "values must not contain NUL bytes")?;
        let cwd = req.cwd.filter(|c| !c.is_empty());
        let bad_cwd = cwd
            .as_ref()
            .is_some_and(|c| c.contains('\0') || c.chars().count() > 4096);
        refuse(bad_cwd, "cwd", "is too long or contains NUL bytes")?;
        let idempotency_key = req.idempotency_key.filter(|k| !k.is_empty());
        let long_key = idempotency_key
            .as_ref()
            .is_some_and(|k| k.chars().count() > 256);
        refuse(long_key, "idempotency_key", "is longer than 256 characters")?;
        Ok(JobSpec {
            kind,
            command,
            args: req.args.filter(|a| !a.is_empty()),
            script,
            shell,
            timeout_secs,
            env,
            cwd,
            idempotency_key,
            retry_safe: req.retry_safe.unwrap_or(false),
        })
    }

    /// The command line a command job runs: `command args`.
    pub fn command_line(&self) -> String {
        match (&self.command, &self.args) {
            (Some(c), Some(a)) => format!("{c} {a}"),
            (Some(c), None) => c.clone(),
            _ => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> JobLimits {
        JobLimits {
            default_timeout_secs: 3600,
            max_timeout_secs: 86400,
            max_script_bytes: 1000,
            max_command_bytes: 100,
            max_env_entries: 2,
        }
    }

    fn cmd(f: impl FnOnce(&mut JobRequest)) -> Result<JobSpec, FieldError> {
        let mut r = JobRequest {
            command: Some("ls".into()),
            args: Some("-la".into()),
            ..Default::default()
        };
        f(&mut r);
        JobSpec::from_request(JobKind::Command, r, &limits())
    }

    #[test]
    fn command_defaults() {
        let s = cmd(|_| {}).unwrap();
        assert_eq!(s.timeout_secs, 3600);
        assert_eq!(s.command_line(), "ls -la");
        assert!(!s.retry_safe);
    }

    #[test]
    fn bad_fields_are_named() {
        let cases: Vec<(Result<JobSpec, FieldError>, &str)> = vec![
            (cmd(|r| r.command = None), "command"),
            (cmd(|r| r.command = Some("  ".into())), "command"),
            (cmd(|r| r.command = Some("x".repeat(200))), "command"),
            (cmd(|r| r.timeout = Some(-5)), "timeout"),
            (cmd(|r| r.timeout = Some(100_000)), "timeout"),
            (
                cmd(|r| r.env = Some([("1BAD".to_string(), "v".to_string())].into())),
                "env",
            ),
            (
                cmd(|r| r.env = Some((0..3).map(|i| (format!("V{i}"), String::new())).collect())),
                "env",
            ),
            (cmd(|r| r.shell = Some("/bin/sh".into())), "shell"),
            (cmd(|r| r.script = Some("echo".into())), "script"),
        ];
        for (res, field) in cases {
            assert_eq!(res.unwrap_err().field, field);
        }
    }

    #[test]
    fn the_env_schema_states_the_names_and_count_validation_allows() {
        use utoipa::PartialSchema;
        let schema = serde_json::to_value(JobRequest::schema()).unwrap();
        let env = &schema["properties"]["env"];
        assert_eq!(env["propertyNames"]["pattern"], "^[A-Za-z_][A-Za-z0-9_]*$");
        assert_eq!(env["maxProperties"], 128);
    }

    #[test]
    fn whole_floats_are_integers() {
        let parse = |body: &str| serde_json::from_str::<JobRequest>(body).map(|r| r.timeout);
        assert_eq!(parse(r#"{"timeout": 60}"#).unwrap(), Some(60));
        assert_eq!(parse(r#"{"timeout": 60.0}"#).unwrap(), Some(60));
        assert_eq!(parse(r#"{"timeout": -5.0}"#).unwrap(), Some(-5));
        assert_eq!(parse(r#"{"timeout": null}"#).unwrap(), None);
        assert_eq!(parse(r#"{}"#).unwrap(), None);
        for bad in [
            r#"{"timeout": 1.5}"#,
            r#"{"timeout": 1e300}"#,
            r#"{"timeout": "60"}"#,
            r#"{"timeout": 18446744073709551615}"#,
        ] {
            let err = serde_path_to_error::deserialize::<_, JobRequest>(
                &mut serde_json::Deserializer::from_str(bad),
            )
            .unwrap_err();
            assert_eq!(err.path().to_string(), "timeout", "{bad}");
        }
        let patch: crate::domain::ServerPatch =
            serde_json::from_str(r#"{"port": 22.0, "max_concurrent_jobs": 4.0}"#).unwrap();
        assert_eq!((patch.port, patch.max_concurrent_jobs), (Some(22), Some(4)));
    }

    #[test]
    fn scripts() {
        let script = |f: fn(&mut JobRequest)| {
            let mut r = JobRequest {
                script: Some("x".into()),
                ..Default::default()
            };
            f(&mut r);
            JobSpec::from_request(JobKind::Script, r, &limits())
        };
        let ok = script(|r| r.script = Some("echo hi".into())).unwrap();
        assert_eq!(ok.shell.as_deref(), Some(DEFAULT_SHELL));
        let cases: Vec<(Result<JobSpec, FieldError>, &str)> = vec![
            (script(|r| r.script = None), "script"),
            (script(|r| r.script = Some("x".repeat(2000))), "script"),
            (script(|r| r.shell = Some("bash".into())), "shell"),
            (script(|r| r.shell = Some("/bin/sh; rm".into())), "shell"),
        ];
        for (res, field) in cases {
            assert_eq!(res.unwrap_err().field, field);
        }
    }
}
