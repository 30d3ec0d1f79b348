//! Servers: register, change, delete, test the connection, pin host keys; and the servers
//! the settings declare (`[[servers]]`, the seed's `SSH_*` default server).

use crate::domain::{Action, Area};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde_json::json;

use super::{Actor, Engine, Error, StartError, Subject};
use crate::actors::host::host_allowed;
use crate::domain::{AuthType, FieldError, ServerDraft, ServerId, ServerPatch};
use crate::settings::Settings;
use crate::ssh::{self, SshError, SshOptions, SshTarget, TestReport};
use crate::store::{AuditEntry, ServerRow, Store, StoreError, UpdateError, Updated};

/// A connection test's result.
#[derive(Debug)]
pub struct Tested {
    /// What the test found.
    pub report: TestReport,
    /// Whether this test pinned the presented key (trust on first use, or an accepted
    /// change).
    pub pinned: bool,
}

/// The names of the fields a patch sets (never their values: some are secrets).
fn fields_set(p: &ServerPatch) -> Vec<&'static str> {
    [
        ("name", p.name.is_some()),
        ("hostname", p.hostname.is_some()),
        ("port", p.port.is_some()),
        ("user", p.user.is_some()),
        ("auth_type", p.auth_type.is_some()),
        ("password", p.password.is_some()),
        (
            "private_key",
            p.private_key.is_some() || p.pem_file.is_some(),
        ),
        ("private_key_passphrase", p.private_key_passphrase.is_some()),
        ("is_active", p.is_active.is_some()),
        ("host_key", p.host_key.is_some()),
        ("host_key_check", p.host_key_check.is_some()),
        ("max_concurrent_jobs", p.max_concurrent_jobs.is_some()),
        ("labels", p.labels.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect()
}

/// The report of a test that failed before it could connect.
fn failed(e: &SshError) -> TestReport {
    not_tested(e.to_string(), Some(e.clone()))
}

/// The report of a test that did not get to connect, and why.
fn not_tested(error: String, failure: Option<SshError>) -> TestReport {
    TestReport {
        ok: false,
        latency_ms: 0,
        host_key_fingerprint: None,
        error: Some(error),
        host_key: None,
        failure,
    }
}

fn missing(id: ServerId) -> impl FnOnce() -> Subject {
    move || Subject::Server(id.to_string())
}

/// Store a new server.
async fn insert(
    store: &Store,
    settings: &Settings,
    input: ServerPatch,
) -> Result<ServerRow, Error> {
    let draft = ServerDraft::create(input, settings.ssh.default_max_concurrent_jobs)?;
    allowed(&settings.ssh.allowed_hosts, &draft.hostname)?;
    Ok(store.insert_server(draft).await?)
}

/// Refused, naming `hostname`, unless `ssh.allowed_hosts` allows the host.
fn allowed(patterns: &[String], hostname: &str) -> Result<(), FieldError> {
    if host_allowed(patterns, hostname) {
        return Ok(());
    }
    let message = format!("{hostname:?} is not allowed by ssh.allowed_hosts");
    Err(FieldError::new("hostname", message))
}

/// What a caller of a connection test is told: the kind of failure, never what would tell a
/// closed port from a filtered one or from a service that is not SSH (the precise cause is
/// in the audit record and the log).
fn for_callers(e: &SshError) -> String {
    let unreachable = "unreachable: no working SSH session could be made with the server";
    match e {
        SshError::Resolve { .. }
        | SshError::Refused { .. }
        | SshError::Unreachable { .. }
        | SshError::Timeout { .. }
        | SshError::Protocol { .. } => unreachable.into(),
        SshError::AuthRejected { .. } => {
            "authentication failed: the server refused the credentials".into()
        }
        SshError::BadKey(_) => "authentication failed: the private key cannot be used".into(),
        SshError::Credentials(_) => {
            "the stored credentials cannot be opened (wrong secret key)".into()
        }
        SshError::HostKeyChanged {
            pinned, presented, ..
        } => format!(
            "host key mismatch: pinned {pinned}, server presented {presented}; if the change is \
             expected, accept the new key (POST /api/v1/servers/ID/test with \
             {{\"accept_host_key\": true}}, or set host_key on the server)"
        ),
        SshError::HostKeyUnknown { .. } => {
            "host key mismatch: the server's key is not the one the known_hosts file lists".into()
        }
        SshError::HostKeyRejected { .. } | SshError::KnownHostsRefused { .. } => {
            "host key mismatch: the server's key was refused".into()
        }
        SshError::HostCertificate { .. } => {
            "host key mismatch: the server presented a host certificate, which is refused".into()
        }
        SshError::Build(_) => "the test command cannot be built".into(),
    }
}

/// Change a stored server: omitted fields keep their value, the result is validated whole.
async fn patch(
    store: &Store,
    settings: &Settings,
    id: ServerId,
    input: ServerPatch,
) -> Result<Updated, Error> {
    let patterns = settings.ssh.allowed_hosts.clone();
    let updated = store.update_server(id.0, move |draft| {
        let draft = draft.patch(input)?;
        allowed(&patterns, &draft.hostname)?;
        Ok(draft)
    });
    updated.await.map_err(update_error(id))
}

fn update_error(id: ServerId) -> impl FnOnce(UpdateError) -> Error {
    move |e| match e {
        UpdateError::Invalid(f) => Error::Invalid(f),
        UpdateError::Store(s) => Error::store(missing(id))(s),
    }
}

/// The fields whose change sends the stored secret somewhere else, or to a host no longer
/// verified as before.
fn destination_changes(old: &ServerDraft, new: &ServerDraft) -> Vec<&'static str> {
    [
        ("hostname", old.hostname != new.hostname),
        ("port", old.port != new.port),
        ("user", old.user != new.user),
        ("host_key_check", old.host_key_check != new.host_key_check),
        ("host_key", old.host_key.is_some() && new.host_key.is_none()),
    ]
    .into_iter()
    .filter_map(|(field, changed)| changed.then_some(field))
    .collect()
}

impl Engine {
    /// Register a server.
    pub async fn create_server(
        &self,
        actor: &Actor,
        input: ServerPatch,
    ) -> Result<ServerRow, Error> {
        self.allow(actor, Action::Create(Area::Servers)).await?;
        let name = input.name.as_deref().unwrap_or_default();
        self.may_place(actor, name, &input.labels.clone().unwrap_or_default())?;
        let fields = fields_set(&input);
        let row = insert(&self.store, &self.settings, input).await?;
        tracing::info!(server_id = %row.id, name = %row.name, "server created");
        let detail = json!({ "name": row.name, "hostname": row.hostname, "fields": fields });
        self.audit(actor, "server.create", &row.id, detail).await;
        Ok(row)
    }

    /// Every server `actor` reaches.
    pub async fn servers(&self, actor: &Actor) -> Result<Vec<ServerRow>, Error> {
        let mut rows = self.store.list_servers().await?;
        if let Some(scope) = &actor.access.scope {
            rows.retain(|row| scope.matches(&row.labels()));
        }
        Ok(rows)
    }

    /// The id of the server `name_or_id` names: an id is taken as it is (a submission checks
    /// it), a name is looked up.
    pub async fn server_id_of(&self, name_or_id: &str) -> Result<ServerId, Error> {
        if let Ok(id) = name_or_id.parse::<ServerId>() {
            return Ok(id);
        }
        let row = self
            .store
            .get_server_by_name(name_or_id.to_string())
            .await
            .map_err(Error::store(|| {
                Subject::ServerNamed(name_or_id.to_string())
            }))?;
        Ok(ServerId(crate::domain::parse_id("id", &row.id)?))
    }

    /// Create the server named in `patch`, or update the one with that name: allowed as a
    /// create or an update by `actor` would be, and audited as one.
    pub async fn upsert_server(
        &self,
        actor: &Actor,
        patch: ServerPatch,
    ) -> Result<ServerRow, Error> {
        let name = patch.name.clone().unwrap_or_default();
        match self.store.get_server_by_name(name).await {
            Ok(row) => {
                let id = ServerId(crate::domain::parse_id("id", &row.id)?);
                self.update_server(actor, id, patch).await
            }
            Err(StoreError::NotFound) => self.create_server(actor, patch).await,
            Err(e) => Err(e.into()),
        }
    }

    /// One server, if `actor` reaches it (else it does not exist, as far as the caller can
    /// tell).
    pub async fn server(&self, actor: &Actor, id: ServerId) -> Result<ServerRow, Error> {
        let row = self
            .store
            .get_server(id.0)
            .await
            .map_err(Error::store(missing(id)))?;
        match &actor.access.scope {
            Some(scope) if !scope.matches(&row.labels()) => Err(Error::NotFound(missing(id)())),
            _ => Ok(row),
        }
    }

    /// Change a server: omitted fields keep their value, the result is validated whole. A
    /// change of where the stored secret goes (hostname, port, user, host key policy, the
    /// pinned key cleared) needs the secret (password or private key) again in the same
    /// request: the stored one is never sent to a new destination. A change of the pinned
    /// key is recorded as such.
    pub async fn update_server(
        &self,
        actor: &Actor,
        id: ServerId,
        input: ServerPatch,
    ) -> Result<ServerRow, Error> {
        self.allow(actor, Action::Update(Area::Servers)).await?;
        if actor.access.scope.is_some() {
            let row = self.server(actor, id).await?;
            if let Some(labels) = &input.labels {
                self.may_place(actor, &row.name, labels)?;
            }
        }
        let fields = fields_set(&input);
        let changes = Arc::new(OnceLock::new());
        let seen = changes.clone();
        let patterns = self.settings.ssh.allowed_hosts.clone();
        let updated = self
            .store
            .update_server(id.0, move |old: ServerDraft| {
                let password = input.password.is_some();
                let key = input.private_key.is_some() || input.pem_file.is_some();
                let new = old.clone().patch(input)?;
                allowed(&patterns, &new.hostname)?;
                let (secret, reentered) = match new.auth_type {
                    AuthType::Password => ("password", password),
                    AuthType::Key => ("private_key", key),
                };
                let moved = destination_changes(&old, &new);
                if !moved.is_empty() && !reentered {
                    let message = format!(
                        "is required again to change {}: the stored secret is not sent to a new \
                         destination",
                        moved.join(", ")
                    );
                    return Err(FieldError::new(secret, message));
                }
                let _ = seen.set((moved, reentered));
                Ok(new)
            })
            .await
            .map_err(update_error(id))?;
        let row = updated.row;
        tracing::info!(server_id = %row.id, "server updated");
        let (moved, reentered) = changes.get().cloned().unwrap_or_default();
        let detail = json!({
            "fields": fields,
            "destination_changed": moved,
            "secret_reentered": reentered,
        });
        self.audit(actor, "server.update", &row.id, detail).await;
        if updated.previous_host_key != row.host_key {
            let detail = json!({
                "old_fingerprint": updated.previous_host_key.as_deref().map(ssh::pinned_fingerprint),
                "new_fingerprint": row.host_key.as_deref().map(ssh::pinned_fingerprint),
                "by": "update",
            });
            self.audit(actor, "server.host_key_changed", &row.id, detail)
                .await;
        }
        Ok(row)
    }

    /// Delete a server; refused while it has queued or running jobs.
    pub async fn delete_server(&self, actor: &Actor, id: ServerId) -> Result<(), Error> {
        self.allow(actor, Action::Delete(Area::Servers)).await?;
        if actor.access.scope.is_some() {
            self.server(actor, id).await?;
        }
        let row = self
            .store
            .delete_server(id.0)
            .await
            .map_err(Error::store(missing(id)))?;
        tracing::info!(server_id = %id, "server deleted");
        let detail = json!({ "name": row.name, "hostname": row.hostname });
        self.audit(actor, "server.delete", id, detail).await;
        Ok(())
    }

    /// Connect, authenticate, run `true`, within `ssh.test_timeout_secs`. A failed test is a
    /// report, not an error. On trust on first use a successful test pins the presented
    /// key; with `accept_host_key` it replaces the pinned key with the one presented now.
    pub async fn test_server(
        &self,
        actor: &Actor,
        id: ServerId,
        accept_host_key: bool,
    ) -> Result<Tested, Error> {
        self.allow(
            actor,
            if accept_host_key {
                Action::AcceptHostKey
            } else {
                Action::TestServer
            },
        )
        .await?;
        let row = self.server(actor, id).await?;
        let opts = SshOptions::from_settings(&self.settings.ssh);
        let bound = Duration::from_secs(self.settings.ssh.test_timeout_secs.max(1));
        let (mut report, accepted) = match self.target(&row) {
            // Nothing is sent to a host the settings do not allow.
            _ if !host_allowed(&self.settings.ssh.allowed_hosts, &row.hostname) => {
                let message = format!("{:?} is not allowed by ssh.allowed_hosts", row.hostname);
                (not_tested(message, None), None)
            }
            Err(e) => (failed(&e), None),
            // Learn the key now presented (no credentials are sent), then test against it.
            Ok(mut target) if accept_host_key => match ssh::probe_host_key(&target, &opts).await {
                Ok(key) => {
                    let line = ssh::openssh_line(&key);
                    target.pinned = Some(line.clone());
                    (
                        ssh::test_connection(&target, &opts, bound).await,
                        Some(line),
                    )
                }
                Err(e) => (failed(&e), None),
            },
            Ok(target) => (ssh::test_connection(&target, &opts, bound).await, None),
        };
        let pinned = match (accepted, report.host_key.clone()) {
            _ if !report.ok => false,
            (Some(line), _) => {
                let detail = json!({
                    "old_fingerprint": row.host_key.as_deref().map(ssh::pinned_fingerprint),
                    "new_fingerprint": ssh::pinned_fingerprint(&line),
                    "by": "accept_host_key",
                });
                let record = AuditEntry::by(actor, "server.host_key_changed", "server", id, detail);
                self.store
                    .repin_host_key(id.0, line, record)
                    .await
                    .map_err(Error::store(missing(id)))?;
                tracing::info!(server_id = %id, fingerprint = ?report.host_key_fingerprint, "host key accepted");
                true
            }
            (None, Some(key)) => {
                let fingerprint = report.host_key_fingerprint.clone().unwrap_or_default();
                self.store
                    .pin_on_first_use(&row, key, &fingerprint, actor, "connection test")
                    .await?
            }
            (None, None) => false,
        };
        tracing::info!(server_id = %id, ok = report.ok, latency_ms = report.latency_ms, error = ?report.error, "connection test");
        // The precise cause stays in the log and the audit record; the caller gets its kind.
        let detail = json!({ "ok": report.ok, "error": report.error });
        self.audit(actor, "server.test", id, detail).await;
        if let Some(e) = report.failure.take() {
            report.error = Some(for_callers(&e));
        }
        Ok(Tested { report, pinned })
    }

    /// The SSH target of a stored server (its secrets opened).
    fn target(&self, row: &ServerRow) -> Result<SshTarget, SshError> {
        let draft = self
            .store
            .open_server(row)
            .map_err(|e| SshError::Credentials(e.to_string()))?;
        SshTarget::from_server(&draft)
    }
}

/// Create a server by name, or update the one with that name (fields not given keep their
/// value), as the service itself: `[[servers]]` in the settings file and the seed's default
/// server.
async fn upsert_server(
    store: &Store,
    settings: &Settings,
    input: ServerPatch,
) -> Result<ServerRow, Error> {
    let name = input
        .name
        .clone()
        .ok_or_else(|| FieldError::new("name", "is required"))?;
    match store.get_server_by_name(name.clone()).await {
        Ok(row) => {
            let id = ServerId(crate::domain::parse_id("id", &row.id)?);
            Ok(patch(store, settings, id, input).await?.row)
        }
        Err(StoreError::NotFound) => insert(store, settings, input).await,
        Err(e) => Err(e.into()),
    }
}

/// The seed's `SSH_HOST`/`SSH_USER`/… describe a default server: create or update it by name.
pub async fn ensure_default_server(store: &Store, settings: &Settings) -> Result<(), StartError> {
    use secrecy::{ExposeSecret, SecretString};
    let d = &settings.default_server;
    if d.host.trim().is_empty() {
        return Ok(());
    }
    let key = if d.private_key_path.is_empty() {
        None
    } else {
        let text = std::fs::read_to_string(&d.private_key_path).map_err(|e| {
            StartError::DefaultServer(format!("cannot read {}: {e}", d.private_key_path))
        })?;
        Some(SecretString::from(text))
    };
    let password = (!d.password.expose_secret().is_empty()).then(|| d.password.clone());
    let patch = ServerPatch {
        name: Some(d.name.clone()),
        hostname: Some(d.host.clone()),
        port: Some(i64::from(d.port)),
        user: Some(if d.user.is_empty() {
            "root".into()
        } else {
            d.user.clone()
        }),
        auth_type: Some(if key.is_some() { "key" } else { "password" }.into()),
        password,
        private_key: key,
        ..Default::default()
    };
    upsert_server(store, settings, patch)
        .await
        .map_err(|e| StartError::DefaultServer(e.to_string()))?;
    tracing::info!(name = %d.name, host = %d.host, "default server registered from SSH_* settings");
    Ok(())
}

/// Create or update, by name, every `[[servers]]` table of the settings. All are checked
/// before any is written, so a bad table changes nothing.
pub async fn apply_servers(store: &Store, settings: &Settings) -> Result<usize, StartError> {
    let mut patches = Vec::new();
    for server in &settings.servers {
        let patch = server
            .checked_patch(settings.ssh.default_max_concurrent_jobs)
            .map_err(|e| StartError::Servers(e.to_string()))?;
        patches.push(patch);
    }
    let n = patches.len();
    for patch in patches {
        let name = patch.name.clone().unwrap_or_default();
        upsert_server(store, settings, patch)
            .await
            .map_err(|e| StartError::Servers(format!("server {name:?}: {e}")))?;
        tracing::info!(name = %name, "server from the settings file applied");
    }
    Ok(n)
}
