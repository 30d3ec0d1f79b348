//! The settings tree and its layered loading.
//!
//! Layers, lowest first: `config/default.toml` (compiled in), the file given with `--config`,
//! the Go seed's environment variables (`SERVER_ADDR`, `DATABASE_URL`, …), then
//! `JOBEXEC__SECTION__KEY` variables. Values that may carry credentials (database and broker
//! URLs, the default server's password) are wrapped so they never reach a log line.

use std::collections::HashMap;
use std::path::Path;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// The compiled-in defaults: `config/default.toml`.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Everything the service can be told.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    /// The HTTP API.
    pub http: HttpSettings,
    /// The database.
    pub database: DatabaseSettings,
    /// The message broker.
    pub rabbitmq: RabbitSettings,
    /// SSH connections.
    pub ssh: SshSettings,
    /// Job limits and execution.
    pub jobs: JobSettings,
    /// The worker.
    pub worker: WorkerSettings,
    /// The seed's default SSH target.
    pub default_server: DefaultServerSettings,
    /// Logging.
    pub log: LogSettings,
    /// API authentication.
    pub auth: AuthSettings,
    /// The key that seals stored secrets.
    pub secrets: SecretSettings,
    /// Request rate and stream limits.
    pub limits: LimitSettings,
    /// Webhook deliveries.
    pub webhook_delivery: WebhookDeliverySettings,
    /// What is deleted when, and how the background prune runs.
    pub retention: RetentionSettings,
    /// Servers declared in the file (`[[servers]]`), created or updated by name at start and
    /// on SIGHUP.
    #[serde(default)]
    pub servers: Vec<ServerSettings>,
    /// Templates declared in the file (`[[templates]]`), created or updated by name at start
    /// and on SIGHUP, before the schedules.
    #[serde(default)]
    pub templates: Vec<TemplateSettings>,
    /// Schedules declared in the file (`[[schedules]]`), created or updated by name at start
    /// and on SIGHUP.
    #[serde(default)]
    pub schedules: Vec<ScheduleSettings>,
    /// Webhooks declared in the file (`[[webhooks]]`), created or updated by name at start
    /// and on SIGHUP, after the templates their filters may name.
    #[serde(default)]
    pub webhooks: Vec<WebhookTableSettings>,
}

/// One `[[templates]]` table: the fields `POST /api/v1/templates` takes, as TOML.
///
/// ```toml
/// [[templates]]
/// name = "deploy"
/// script = "deploy --version \"$JOBEXEC_PARAM_VERSION\""
/// targets = { selector = "role=web" }
/// strategy = { batch = "25%", max_failures = 1 }
/// parameters = [{ name = "version", type = "string", required = true, pattern = "[0-9.]+" }]
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateSettings {
    /// Unique name: the key a reload matches on.
    pub name: String,
    /// What it is for.
    pub description: Option<String>,
    /// The command (with `args`), or give `script`.
    pub command: Option<String>,
    /// The command's arguments.
    pub args: Option<String>,
    /// A script, run by `shell`.
    pub script: Option<String>,
    /// The script's interpreter.
    pub shell: Option<String>,
    /// Environment variables the job gets.
    pub env: Option<std::collections::BTreeMap<String, String>>,
    /// The directory it runs in.
    pub cwd: Option<String>,
    /// Seconds each job may take.
    pub timeout: Option<i64>,
    /// Whether a job may be run again after its worker died.
    pub retry_safe: Option<bool>,
    /// Which servers (`{ selector = "role=web" }` or `{ servers = ["a", "b"] }`).
    pub targets: Option<crate::domain::TargetsRequest>,
    /// How hosts are admitted.
    pub strategy: Option<crate::domain::StrategyRequest>,
    /// The typed parameters a launch gives.
    #[serde(default)]
    pub parameters: Vec<crate::domain::ParamDef>,
}

impl TemplateSettings {
    /// The API's template request for this table.
    pub fn to_request(&self) -> crate::domain::TemplateRequest {
        crate::domain::TemplateRequest {
            name: Some(self.name.clone()),
            description: self.description.clone(),
            parameters: Some(self.parameters.clone()),
            run: crate::domain::RunRequest {
                job: crate::domain::JobRequest {
                    command: self.command.clone(),
                    args: self.args.clone(),
                    script: self.script.clone(),
                    shell: self.shell.clone(),
                    env: self.env.clone(),
                    cwd: self.cwd.clone(),
                    timeout: self.timeout,
                    retry_safe: self.retry_safe,
                    ..Default::default()
                },
                targets: self.targets.clone(),
                strategy: self.strategy.clone(),
            },
        }
    }
}

/// One `[[schedules]]` table: the fields `POST /api/v1/schedules` takes, as TOML.
///
/// ```toml
/// [[schedules]]
/// name = "nightly-deploy"
/// template = "deploy"
/// parameters = { version = "1.4.2" }
/// cron = "0 30 2 * * *"
/// timezone = "Europe/Berlin"
/// overlap = "skip"
/// catch_up = "1h"
/// ```
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSettings {
    /// Unique name: the key a reload matches on.
    pub name: String,
    /// The template it launches (name or id): one of the file's, or one in the database.
    pub template: String,
    /// The template's parameters, by name.
    pub parameters: Option<std::collections::BTreeMap<String, serde_json::Value>>,
    /// 5 fields (`min hour dom month dow`) or 6 (seconds first).
    pub cron: String,
    /// IANA time zone (default `UTC`).
    pub timezone: Option<String>,
    /// `skip` (default), `queue_one`, `allow` or `cancel_previous`.
    pub overlap: Option<String>,
    /// How far back missed fires are made up after downtime (`"1h"`; default `"0s"`).
    pub catch_up: Option<String>,
    /// Paused or not; left as it is in the database when not given.
    pub paused: Option<bool>,
}

impl std::fmt::Debug for ScheduleSettings {
    /// The parameters' names only: a secret parameter's value may be among them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&String> = self.parameters.iter().flat_map(|p| p.keys()).collect();
        f.debug_struct("ScheduleSettings")
            .field("name", &self.name)
            .field("template", &self.template)
            .field("parameters", &names)
            .field("cron", &self.cron)
            .field("timezone", &self.timezone)
            .field("overlap", &self.overlap)
            .field("catch_up", &self.catch_up)
            .field("paused", &self.paused)
            .finish()
    }
}

/// One `[[webhooks]]` table: the fields `POST /api/v1/webhooks` takes, as TOML, with the
/// secret given inline or in a file.
///
/// ```toml
/// [[webhooks]]
/// name = "ops"
/// url = "https://hooks.example.com/jobexec"
/// events = ["job.failed", "job.recovered", "run.finished"]
/// filter = { selector = "env=prod", template = "deploy" }
/// secret_file = "/etc/job-executor/ops-webhook.secret"
/// ```
///
/// The file is the webhook's definition: a table without `secret` or `secret_file` makes an
/// unsigned webhook, and a secret set through the API is removed by the next reload.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookTableSettings {
    /// Unique name: the key a reload matches on.
    pub name: String,
    /// Where deliveries are posted (`http://` or `https://`).
    pub url: String,
    /// The events it wants (at least one).
    pub events: Vec<String>,
    /// Which jobs and runs (both optional).
    pub filter: Option<WebhookFilterSettings>,
    /// The signing secret.
    pub secret: Option<SecretString>,
    /// A file holding the signing secret (a trailing newline is not part of it).
    pub secret_file: Option<String>,
    /// Whether events are delivered (default true).
    pub active: Option<bool>,
}

/// `filter` of a `[[webhooks]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookFilterSettings {
    /// Only jobs and runs on servers this selector matches.
    pub selector: Option<String>,
    /// Only jobs and runs of this template (name or id).
    pub template: Option<String>,
}

impl std::fmt::Debug for WebhookTableSettings {
    /// The URL without its query and credentials, the secret not at all.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookTableSettings")
            .field("name", &self.name)
            .field("url", &redact_url(&self.url))
            .field("events", &self.events)
            .field("filter", &self.filter)
            .field("secret", &self.secret.as_ref().map(|_| "[redacted]"))
            .field("secret_file", &self.secret_file)
            .field("active", &self.active)
            .finish()
    }
}

impl WebhookTableSettings {
    /// The signing secret, read from `secret_file` when that is how it is given. The error
    /// names the field or the file, never the secret.
    pub fn read_secret(&self) -> Result<Option<SecretString>, String> {
        match (&self.secret, &self.secret_file) {
            (Some(_), Some(_)) => Err(format!(
                "webhook {:?}: give secret or secret_file, not both",
                self.name
            )),
            (Some(s), None) => Ok(Some(s.clone())),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map(|s| {
                    Some(SecretString::from(
                        s.trim_end_matches(['\r', '\n']).to_string(),
                    ))
                })
                .map_err(|e| {
                    format!(
                        "webhook {:?}: cannot read secret_file {path}: {e}",
                        self.name
                    )
                }),
            (None, None) => Ok(None),
        }
    }
}

/// One `[[servers]]` table: the API's server fields, plus secrets read from files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Unique name: the key a reload matches on.
    pub name: String,
    /// Host name or address.
    pub hostname: String,
    /// SSH port (22).
    pub port: Option<u16>,
    /// Login user.
    pub user: String,
    /// `key` or `password`; default: `key` when a key is given.
    pub auth_type: Option<String>,
    /// The password.
    pub password: Option<SecretString>,
    /// A file holding the password (one line; a trailing newline is dropped).
    pub password_file: Option<String>,
    /// The private key (OpenSSH or PEM text).
    pub private_key: Option<SecretString>,
    /// A file holding the private key.
    pub private_key_file: Option<String>,
    /// The key's passphrase.
    pub private_key_passphrase: Option<SecretString>,
    /// Pinned host key (OpenSSH public key line or `SHA256:` fingerprint).
    pub host_key: Option<String>,
    /// `tofu` (default) or `off`.
    pub host_key_check: Option<String>,
    /// Jobs at once on it.
    pub max_concurrent_jobs: Option<u32>,
    /// Whether jobs may run on it.
    pub is_active: Option<bool>,
    /// Labels (`labels = { role = "web", env = "prod" }`), matched by run selectors.
    pub labels: Option<crate::domain::Labels>,
}

/// Why a `[[servers]]` table cannot be applied. Says which table and which field or file,
/// never a value.
#[derive(Debug, thiserror::Error)]
pub enum ServerTableError {
    /// Two fields that exclude each other are both set.
    #[error("server {server:?}: give {one} or {other}, not both")]
    Both {
        /// The table's `name`.
        server: String,
        /// One field.
        one: &'static str,
        /// The other.
        other: &'static str,
    },
    /// A secret file cannot be read.
    #[error("server {server:?}: cannot read {what} {path}: {source}")]
    Read {
        /// The table's `name`.
        server: String,
        /// The field naming the file.
        what: &'static str,
        /// The file.
        path: String,
        /// The OS's answer.
        source: std::io::Error,
    },
    /// A field is invalid as creating the server would find it.
    #[error("server {server:?}: {error}")]
    Invalid {
        /// The table's `name`.
        server: String,
        /// Which field, and why.
        error: crate::domain::FieldError,
    },
}

impl ServerSettings {
    /// The API's server body for this table, its secret files read and its fields checked as
    /// creating the server would check them.
    pub fn checked_patch(
        &self,
        default_max_concurrent_jobs: u32,
    ) -> Result<crate::domain::ServerPatch, ServerTableError> {
        let patch = self.to_patch()?;
        crate::domain::ServerDraft::create(patch.clone(), default_max_concurrent_jobs).map_err(
            |error| ServerTableError::Invalid {
                server: self.name.clone(),
                error,
            },
        )?;
        Ok(patch)
    }

    /// The API's server body for this table, with the secret files read.
    pub fn to_patch(&self) -> Result<crate::domain::ServerPatch, ServerTableError> {
        let read = |path: &str, what: &'static str| {
            std::fs::read_to_string(path).map_err(|source| ServerTableError::Read {
                server: self.name.clone(),
                what,
                path: path.to_string(),
                source,
            })
        };
        let both = |one, other| ServerTableError::Both {
            server: self.name.clone(),
            one,
            other,
        };
        let password = match (&self.password, &self.password_file) {
            (Some(_), Some(_)) => return Err(both("password", "password_file")),
            (Some(p), None) => Some(p.clone()),
            (None, Some(f)) => Some(SecretString::from(
                read(f, "password_file")?
                    .trim_end_matches(['\r', '\n'])
                    .to_string(),
            )),
            (None, None) => None,
        };
        let key = match (&self.private_key, &self.private_key_file) {
            (Some(_), Some(_)) => return Err(both("private_key", "private_key_file")),
            (Some(k), None) => Some(k.clone()),
            (None, Some(f)) => Some(SecretString::from(read(f, "private_key_file")?)),
            (None, None) => None,
        };
        let auth_type = self
            .auth_type
            .clone()
            .unwrap_or_else(|| if key.is_some() { "key" } else { "password" }.to_string());
        Ok(crate::domain::ServerPatch {
            name: Some(self.name.clone()),
            hostname: Some(self.hostname.clone()),
            port: self.port.map(i64::from),
            user: Some(self.user.clone()),
            auth_type: Some(auth_type),
            password,
            private_key: key,
            private_key_passphrase: self.private_key_passphrase.clone(),
            host_key: self.host_key.clone(),
            host_key_check: self.host_key_check.clone(),
            max_concurrent_jobs: self.max_concurrent_jobs.map(i64::from),
            is_active: self.is_active,
            labels: self.labels.clone(),
            ..Default::default()
        })
    }
}

/// `[webhook_delivery]`: how deliveries are attempted (the webhooks themselves are `[[webhooks]]`)
#[derive(Debug, Clone, Deserialize)]
pub struct WebhookDeliverySettings {
    /// Attempts per delivery before it is `failed`.
    pub max_attempts: u32,
    /// Seconds one attempt may take.
    pub timeout_secs: u64,
    /// Attempts in flight at once in this process.
    pub concurrency: usize,
    /// Attempts in flight at once per webhook.
    pub per_webhook: usize,
    /// The wait before the first retry (ms); each retry waits twice the last.
    pub retry_base_ms: u64,
}

/// `[retention]`: how long rows are kept, as durations (`"30d"`, `"12h"`, `"10s"`); an empty
/// string keeps them forever. [`RetentionSettings::policy`] parses them.
#[derive(Debug, Clone, Deserialize)]
pub struct RetentionSettings {
    /// Output chunks of jobs that finished longer ago than this.
    pub output: String,
    /// Finished jobs (with their output), and their runs once every job of a run is gone.
    pub jobs: String,
    /// Failed and timed-out jobs; empty: as `jobs`.
    pub failed_jobs: String,
    /// The newest jobs of each server that are never deleted (0: no floor).
    pub keep_last_per_server: u32,
    /// Audit records.
    pub audit: String,
    /// Webhook deliveries that were delivered or failed (never pending ones).
    pub deliveries: String,
    /// How often the background prune runs (when any of the above is set).
    pub every: String,
    /// Rows per delete transaction.
    pub batch: u32,
}

impl RetentionSettings {
    /// The policy these settings describe; a refusal names the key, never its value.
    pub fn policy(&self) -> Result<crate::domain::RetentionPolicy, crate::domain::FieldError> {
        crate::domain::RetentionPolicy::parse(
            &self.output,
            &self.jobs,
            &self.failed_jobs,
            self.keep_last_per_server,
            &self.audit,
            &self.deliveries,
            &self.every,
            self.batch,
        )
    }
}

/// `[auth]`
#[derive(Debug, Clone, Deserialize)]
pub struct AuthSettings {
    /// Bearer tokens: `NAME:TOKEN`, `TOKEN`, or `NAME:sha256:HEX` (admin tokens), or
    /// `[[auth.tokens]]` tables with a role and a scope. Empty: no authentication (and then
    /// the API listens on loopback only).
    pub tokens: Vec<TokenSettings>,
}

/// One entry of `auth.tokens`: a string as before roles (an admin token), or a table.
#[derive(Debug, Clone)]
pub enum TokenSettings {
    /// `NAME:TOKEN`, `TOKEN`, or `NAME:sha256:HEX`: a token with every right.
    Bare(SecretString),
    /// A `[[auth.tokens]]` table.
    Table(TokenTable),
}

/// A `[[auth.tokens]]` table.
///
/// ```toml
/// [[auth.tokens]]
/// name = "ci-staging"
/// token_sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
/// role = "operator"
/// scope = "env=staging"
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenTable {
    /// The name the audit log records and `whoami` shows.
    pub name: String,
    /// The token itself (at least 16 characters).
    pub token: Option<SecretString>,
    /// Or its SHA-256, in hex (`job-executor` never needs the token then).
    pub token_sha256: Option<String>,
    /// `viewer`, `operator` or `admin`.
    pub role: String,
    /// Only servers this label selector matches (`env=staging`); none: every server.
    pub scope: Option<String>,
}

impl<'de> Deserialize<'de> for TokenSettings {
    /// A string (or a number the environment parsed one into) is a bare token; a table is
    /// a [`TokenTable`].
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entry;
        impl<'de> serde::de::Visitor<'de> for Entry {
            type Value = TokenSettings;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a token string or a table with name, token or token_sha256, role")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(TokenSettings::Bare(SecretString::from(v.to_string())))
            }

            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(TokenSettings::Bare(SecretString::from(v.to_string())))
            }

            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(TokenSettings::Bare(SecretString::from(v.to_string())))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                let table =
                    TokenTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(TokenSettings::Table(table))
            }
        }
        d.deserialize_any(Entry)
    }
}

/// `[secrets]`
#[derive(Debug, Clone, Deserialize)]
pub struct SecretSettings {
    /// Keyring text (`VERSION:BASE64`, comma-separated).
    pub key: SecretString,
    /// A file holding the keyring, one entry per line.
    pub key_file: String,
}

/// `[limits]`
#[derive(Debug, Clone, Deserialize)]
pub struct LimitSettings {
    /// Job submissions (submit, script, duplicate) per minute per caller; 0 for no limit.
    pub submissions_per_minute: u32,
    /// Submissions a caller may make at once before the rate applies.
    pub submission_burst: u32,
    /// Open SSE streams per caller; 0 for no limit.
    pub max_streams_per_client: usize,
}

/// `[http]`
#[derive(Debug, Clone, Deserialize)]
pub struct HttpSettings {
    /// Listen address, `host:port`.
    pub addr: String,
    /// Largest accepted request body in bytes.
    pub max_body_bytes: usize,
    /// HTTP worker threads; 0 for one per core.
    pub workers: usize,
    /// Seconds in-flight requests get at shutdown.
    pub shutdown_grace_secs: u64,
    /// PEM certificate chain; with `tls_key`, the API speaks HTTPS.
    pub tls_cert: String,
    /// PEM private key of `tls_cert`.
    pub tls_key: String,
}

/// `[database]`
#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSettings {
    /// File path, `sqlite://PATH` or `postgres://…`.
    pub url: SecretString,
    /// Pool size.
    pub pool_size: u32,
    /// Seconds to wait for a connection.
    pub connect_timeout_secs: u64,
    /// SQLite lock wait in milliseconds.
    pub busy_timeout_ms: u64,
}

/// `[rabbitmq]`
#[derive(Debug, Clone, Deserialize)]
pub struct RabbitSettings {
    /// AMQP URL (`amqp://`, or `amqps://` for TLS); empty for none.
    pub url: SecretString,
    /// `amqps://`: a PEM file of CA certificates trusted beside the system's roots (a
    /// private CA); empty for the system's roots alone.
    #[serde(default)]
    pub ca_file: String,
    /// The jobs queue.
    pub jobs_queue: String,
    /// The control (cancel) fanout exchange.
    pub control_exchange: String,
    /// The events topic exchange.
    pub events_exchange: String,
    /// Longest wait between reconnection attempts.
    pub reconnect_max_secs: u64,
    /// Database poll and outbox interval.
    pub poll_secs: u64,
}

impl RabbitSettings {
    /// Whether a broker is configured.
    pub fn enabled(&self) -> bool {
        !self.url.expose_secret().trim().is_empty()
    }

    /// The URL without its password, for logs.
    pub fn redacted_url(&self) -> String {
        redact_url(self.url.expose_secret())
    }
}

/// `[ssh]`
#[derive(Debug, Clone, Deserialize)]
pub struct SshSettings {
    /// Seconds to connect, exchange keys and authenticate.
    pub connect_timeout_secs: u64,
    /// Seconds between keepalives.
    pub keepalive_interval_secs: u64,
    /// Unanswered keepalives before the connection is lost.
    pub keepalive_max: usize,
    /// Bound of the connection test, in seconds.
    pub test_timeout_secs: u64,
    /// Default `max_concurrent_jobs` of new servers.
    pub default_max_concurrent_jobs: u32,
    /// An OpenSSH known_hosts file consulted for servers with no pinned key; empty for none.
    pub known_hosts_file: String,
    /// Glob patterns (`*`, `?`) a server's hostname must match; empty: any.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
}

/// `[jobs]`
#[derive(Debug, Clone, Deserialize)]
pub struct JobSettings {
    /// Timeout when none is given.
    pub default_timeout_secs: i64,
    /// Largest timeout.
    pub max_timeout_secs: i64,
    /// Largest script.
    pub max_script_bytes: usize,
    /// Longest command line.
    pub max_command_bytes: usize,
    /// Most env entries.
    pub max_env_entries: usize,
    /// Output kept per job.
    pub output_cap_bytes: u64,
    /// TERM → KILL delay.
    pub kill_grace_secs: u64,
    /// Connection attempts before the command starts.
    pub connect_attempts: u32,
}

impl JobSettings {
    /// The validation bounds.
    pub fn limits(&self) -> crate::domain::JobLimits {
        crate::domain::JobLimits {
            default_timeout_secs: self.default_timeout_secs,
            max_timeout_secs: self.max_timeout_secs,
            max_script_bytes: self.max_script_bytes,
            max_command_bytes: self.max_command_bytes,
            max_env_entries: self.max_env_entries,
        }
    }
}

/// `[worker]`
#[derive(Debug, Clone, Deserialize)]
pub struct WorkerSettings {
    /// Name in job records.
    pub id: String,
    /// Jobs at once.
    pub concurrency: usize,
    /// Lease length.
    pub lease_secs: u64,
    /// Renewal interval.
    pub heartbeat_secs: u64,
    /// Shutdown grace.
    pub shutdown_grace_secs: u64,
    /// Connections per server.
    pub max_connections_per_host: usize,
    /// Channels per connection.
    pub channels_per_connection: usize,
    /// Idle connection lifetime.
    pub idle_connection_secs: u64,
}

impl WorkerSettings {
    /// The worker id: the setting, or HOSTNAME:PID.
    pub fn worker_id(&self) -> String {
        if !self.id.is_empty() {
            return self.id.clone();
        }
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        format!("{host}:{}", std::process::id())
    }
}

/// `[default_server]`: the seed's `SSH_*` variables.
#[derive(Debug, Clone, Deserialize)]
pub struct DefaultServerSettings {
    /// Name of the server record.
    pub name: String,
    /// Host; empty means no default server.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Login user.
    pub user: String,
    /// Password, if password auth.
    pub password: SecretString,
    /// Path of a private key file, if key auth.
    pub private_key_path: String,
}

/// `[log]`
#[derive(Debug, Clone, Deserialize)]
pub struct LogSettings {
    /// `text` or `json`.
    pub format: LogFormat,
    /// Tracing filter directive.
    pub filter: String,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Why settings could not be loaded. Says where (file, line, column) and which key, never a
/// value or a line of the file: either may hold a password or a token.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The file named with `--config` does not exist.
    #[error("config file {0} does not exist")]
    MissingFile(String),
    /// The file cannot be read.
    #[error("config file {file}: cannot read: {source}")]
    Read {
        /// The file.
        file: String,
        /// The OS's answer.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("{file}:{line}:{column}: not valid TOML (line {line}, column {column}): {message}")]
    Syntax {
        /// The file.
        file: String,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// What is wrong there (toml's message without the quoted line).
        message: String,
    },
    /// A value has the wrong type or is refused.
    #[error("invalid settings: {at}{}{message}", key.as_ref().map(|k| format!("{k}: ")).unwrap_or_default())]
    Invalid {
        /// Where the file sets the key (`FILE:LINE:COLUMN: `); empty when it does not.
        at: String,
        /// The key (`worker.concurrency`, `servers[1]`), when known.
        key: Option<String>,
        /// What is wrong with its value, without the value.
        message: String,
    },
}

impl SettingsError {
    /// A `config` error as a settings error: `config`'s own messages quote the value (and a
    /// parse error the line), so only the key and the kind of problem are kept.
    fn from_config(e: config::ConfigError, file: Option<&Path>, positions: &KeyPositions) -> Self {
        fn describe(e: config::ConfigError) -> (Option<String>, String) {
            use config::ConfigError as E;
            match e {
                E::Type { key, expected, .. } => {
                    (key, format!("has the wrong type; expected {expected}"))
                }
                E::At { error, key, .. } => (key, describe(*error).1),
                E::Message(message) => (None, without_value(&message)),
                E::NotFound(key) => (Some(key), "is missing".into()),
                _ => (None, "cannot be loaded".into()),
            }
        }
        let (key, message) = describe(e);
        let at = match (file, key.as_ref().and_then(|k| positions.get(k))) {
            (Some(file), Some((line, column))) => format!("{}:{line}:{column}: ", file.display()),
            _ => String::new(),
        };
        SettingsError::Invalid { at, key, message }
    }
}

/// Where each key of a settings file is written, by key path as messages write it
/// (`http.addr`, `servers[1].name`): the 1-based line and column of the key, or of the
/// element for an array element.
pub type KeyPositions = HashMap<String, (usize, usize)>;

/// Line and column (1-based) of a byte offset into `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Parse the settings file `text` (read from `file`) for where its keys are written. A syntax
/// error says where, and toml's message alone: its full error quotes the line.
pub fn key_positions(file: &Path, text: &str) -> Result<KeyPositions, SettingsError> {
    use toml::de::{DeTable, DeValue};
    fn walk(text: &str, path: String, at: usize, value: &DeValue<'_>, out: &mut KeyPositions) {
        match value {
            DeValue::Table(table) => {
                for (key, value) in table {
                    let key_path = match path.as_str() {
                        "" => key.get_ref().to_string(),
                        _ => format!("{path}.{}", key.get_ref()),
                    };
                    walk(text, key_path, key.span().start, value.get_ref(), out);
                }
            }
            DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let start = item.span().start;
                    walk(text, format!("{path}[{i}]"), start, item.get_ref(), out);
                }
            }
            _ => {}
        }
        out.insert(path, line_col(text, at));
    }
    let root = DeTable::parse(text).map_err(|e| {
        let (line, column) = line_col(text, e.span().map_or(0, |s| s.start));
        let message = e.message().lines().next().unwrap_or_default().to_string();
        let file = file.display().to_string();
        SettingsError::Syntax {
            file,
            line,
            column,
            message,
        }
    })?;
    let mut out = KeyPositions::new();
    walk(
        text,
        String::new(),
        0,
        &DeValue::Table(root.into_inner()),
        &mut out,
    );
    Ok(out)
}

/// A deserialization error's message without the value it quotes: serde writes
/// `invalid type: string "hunter2", expected u64`, and the value may be a secret.
pub fn without_value(message: &str) -> String {
    let first = message.lines().next().unwrap_or_default().trim();
    if first.starts_with("unknown field") || first.starts_with("missing field") {
        // These quote a key, not a value.
        return first.to_string();
    }
    let kind = [
        ("invalid type", "has the wrong type"),
        ("unknown variant", "has an unknown value"),
        ("invalid length", "has the wrong number of entries"),
    ]
    .into_iter()
    .find(|(start, _)| first.starts_with(start))
    .map_or("has an invalid value", |(_, kind)| kind);
    match first.split_once(", expected ") {
        Some((_, expected)) => format!("{kind}; expected {expected}"),
        None => kind.to_string(),
    }
}

/// Which database a URL selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseKind {
    /// SQLite at this path.
    Sqlite(String),
    /// PostgreSQL at this URL.
    Postgres(String),
}

impl DatabaseSettings {
    /// Decide the backend from the URL: `postgres://` or `postgresql://` → PostgreSQL;
    /// `sqlite://PATH`, `sqlite:PATH` or a plain path → SQLite.
    pub fn kind(&self) -> DatabaseKind {
        let url = self.url.expose_secret().trim();
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            DatabaseKind::Postgres(url.to_string())
        } else if let Some(path) = url.strip_prefix("sqlite://") {
            DatabaseKind::Sqlite(path.to_string())
        } else if let Some(path) = url.strip_prefix("sqlite:") {
            DatabaseKind::Sqlite(path.to_string())
        } else {
            DatabaseKind::Sqlite(url.to_string())
        }
    }

    /// The URL with any password replaced, fit for a log line.
    pub fn redacted_url(&self) -> String {
        redact_url(self.url.expose_secret())
    }
}

/// Replace the password of `scheme://user:password@host…` with `***`, and leave out the
/// query and fragment (they may carry credentials too: `?password=…`).
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, tail) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let (user, place) = match authority.rsplit_once('@') {
        Some((userinfo, host)) => (userinfo.split(':').next(), format!("{host}{tail}")),
        None => (None, rest.to_string()),
    };
    let place = place.split(['?', '#']).next().unwrap_or_default();
    match user {
        Some(user) => format!("{scheme}://{user}:***@{place}"),
        None => format!("{scheme}://{place}"),
    }
}

/// The seed's variables and the settings key each one sets.
const SEED_VARS: &[(&str, &str)] = &[
    ("SERVER_ADDR", "http.addr"),
    ("DATABASE_URL", "database.url"),
    ("RABBITMQ_URL", "rabbitmq.url"),
    ("SSH_HOST", "default_server.host"),
    ("SSH_PORT", "default_server.port"),
    ("SSH_USER", "default_server.user"),
    ("SSH_PASSWORD", "default_server.password"),
    ("SSH_PRIVATE_KEY", "default_server.private_key_path"),
    ("JOBEXEC_SECRET_KEY", "secrets.key"),
];

/// Comma-separated API tokens (`auth.tokens`), beaten by a `JOBEXEC__AUTH__TOKENS` variable.
const TOKENS_VAR: &str = "JOBEXEC_API_TOKENS";

const ENV_PREFIX: &str = "JOBEXEC";
const ENV_SEPARATOR: &str = "__";

impl Settings {
    /// Load from the process environment and an optional file.
    pub fn load(file: Option<&Path>) -> Result<Self, SettingsError> {
        Self::load_from(file, &std::env::vars().collect())
    }

    /// Load from an explicit environment map (testable without touching the process env).
    pub fn load_from(
        file: Option<&Path>,
        env: &HashMap<String, String>,
    ) -> Result<Self, SettingsError> {
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            DEFAULT_TOML,
            config::FileFormat::Toml,
        ));
        let mut positions = KeyPositions::new();
        if let Some(path) = file {
            if !path.exists() {
                return Err(SettingsError::MissingFile(path.display().to_string()));
            }
            let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
                file: path.display().to_string(),
                source,
            })?;
            positions = key_positions(path, &text)?;
            builder = builder.add_source(config::File::from_str(&text, config::FileFormat::Toml));
        }
        let invalid = |e: config::ConfigError| SettingsError::from_config(e, file, &positions);
        // Seed variables sit between the file and JOBEXEC__ variables: a JOBEXEC__ variable
        // for the same key wins, so they are applied only when it is absent.
        for (var, key) in SEED_VARS {
            let Some(value) = env.get(*var).filter(|v| !v.is_empty()) else {
                continue;
            };
            let ours = format!(
                "{ENV_PREFIX}{ENV_SEPARATOR}{}",
                key.replace('.', ENV_SEPARATOR).to_uppercase()
            );
            if env.contains_key(&ours) {
                continue;
            }
            let value = if *var == "SERVER_ADDR" && value.starts_with(':') {
                format!("0.0.0.0{value}")
            } else {
                value.clone()
            };
            builder = builder.set_override(*key, value).map_err(invalid)?;
        }
        if let Some(list) = env.get(TOKENS_VAR).filter(|v| !v.trim().is_empty()) {
            let tokens: Vec<String> = list
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(String::from)
                .collect();
            builder = builder
                .set_override("auth.tokens", tokens)
                .map_err(invalid)?;
        }
        let ours: HashMap<String, String> = env
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}{ENV_SEPARATOR}")))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator(ENV_SEPARATOR)
                .separator(ENV_SEPARATOR)
                .try_parsing(true)
                .list_separator(",")
                .with_list_parse_key("auth.tokens")
                .with_list_parse_key("ssh.allowed_hosts")
                .source(Some(ours)),
        );
        builder
            .build()
            .map_err(invalid)?
            .try_deserialize()
            .map_err(invalid)
    }
}

/// Whether every address `addr` names is a loopback address. An address that does not
/// resolve counts as loopback here: binding it fails with its own error.
pub fn loopback_only(addr: &str) -> bool {
    use std::net::ToSocketAddrs;
    match addr.to_socket_addrs() {
        Ok(addrs) => addrs.into_iter().all(|a| a.ip().is_loopback()),
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_load() {
        let s = Settings::load_from(None, &env(&[])).unwrap();
        assert_eq!(s.http.addr, "127.0.0.1:8080");
        assert_eq!(s.database.kind(), DatabaseKind::Sqlite("./jobs.db".into()));
        assert!(s.rabbitmq.url.expose_secret().is_empty());
        assert_eq!(s.log.format, LogFormat::Text);
    }

    #[test]
    fn seed_variables_are_honoured() {
        let s = Settings::load_from(
            None,
            &env(&[
                ("SERVER_ADDR", ":9090"),
                ("DATABASE_URL", "postgres://u:p@h/db"),
                ("SSH_HOST", "10.1.2.3"),
                ("SSH_PORT", "2222"),
            ]),
        )
        .unwrap();
        assert_eq!(s.http.addr, "0.0.0.0:9090");
        assert_eq!(
            s.database.kind(),
            DatabaseKind::Postgres("postgres://u:p@h/db".into())
        );
        assert_eq!(s.default_server.host, "10.1.2.3");
        assert_eq!(s.default_server.port, 2222);
    }

    #[test]
    fn jobexec_variables_beat_seed_variables_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "[http]\naddr = \"127.0.0.1:1111\"\n[ssh]\nconnect_timeout_secs = 3\n",
        )
        .unwrap();
        let s = Settings::load_from(
            Some(&file),
            &env(&[
                ("SERVER_ADDR", "127.0.0.1:2222"),
                ("JOBEXEC__HTTP__ADDR", "127.0.0.1:3333"),
                ("JOBEXEC__SSH__TEST_TIMEOUT_SECS", "7"),
            ]),
        )
        .unwrap();
        assert_eq!(s.http.addr, "127.0.0.1:3333");
        assert_eq!(s.ssh.connect_timeout_secs, 3);
        assert_eq!(s.ssh.test_timeout_secs, 7);
    }

    #[test]
    fn missing_file_is_an_error() {
        let err = Settings::load_from(Some(Path::new("/nonexistent.toml")), &env(&[])).unwrap_err();
        assert!(err.to_string().contains("/nonexistent.toml"));
    }

    #[test]
    fn errors_name_where_and_which_key_never_the_value() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        for (text, at) in [
            (
                "[worker]\nconcurrency = \"hunter2\"\n",
                ":2:1: worker.concurrency",
            ),
            ("[log]\nformat = \"hunter2\"\n", ":2:1: log.format"),
            ("[db]\npassword = \"hunter2\n", "c.toml:2:"),
        ] {
            std::fs::write(&file, text).unwrap();
            let err = Settings::load_from(Some(&file), &env(&[])).unwrap_err();
            let err = err.to_string();
            assert!(err.contains(at) && !err.contains("hunter2"), "{err}");
        }
        let bad = env(&[("JOBEXEC__WORKER__CONCURRENCY", "hunter2")]);
        let err = Settings::load_from(None, &bad).unwrap_err().to_string();
        assert!(
            err.contains("worker.concurrency") && !err.contains("hunter2"),
            "{err}"
        );
    }

    #[test]
    fn sqlite_url_forms() {
        for (url, path) in [
            ("sqlite:///tmp/a.db", "/tmp/a.db"),
            ("sqlite:b.db", "b.db"),
            ("c.db", "c.db"),
        ] {
            let s = Settings::load_from(None, &env(&[("DATABASE_URL", url)])).unwrap();
            assert_eq!(s.database.kind(), DatabaseKind::Sqlite(path.into()));
        }
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(
            redact_url("amqp://127.0.0.1:5672/%2f"),
            "amqp://127.0.0.1:5672/%2f"
        );
        assert_eq!(redact_url("./jobs.db"), "./jobs.db");
    }
}
