//! Rows as stored, apart from the queries that read and write them.

use diesel::prelude::*;
use secrecy::{ExposeSecret, SecretString};

use super::schema::servers;
use crate::domain::{AuthType, HostKeyCheck, Micros, ServerDraft, ServerSecrets};
use crate::secrets::{Keyring, SecretsError};

/// A `servers` row. Secret columns hold bytes; `secret_version` says how they are sealed.
#[derive(Clone, Default, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = servers)]
#[diesel(treat_none_as_null = true)]
pub struct ServerRow {
    /// UUID.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// Host name or address.
    pub hostname: String,
    /// TCP port.
    pub port: i32,
    /// Login user.
    pub username: String,
    /// `password` or `key`.
    pub auth_type: AuthType,
    /// Password bytes.
    pub password: Option<Vec<u8>>,
    /// Private key bytes.
    pub private_key: Option<Vec<u8>>,
    /// Passphrase bytes.
    pub private_key_passphrase: Option<Vec<u8>>,
    /// Key version that sealed the secrets (0: stored as given, refused once a key exists).
    pub secret_version: i32,
    /// Pinned host key.
    pub host_key: Option<String>,
    /// `tofu` or `off`.
    pub host_key_check: HostKeyCheck,
    /// Cap of concurrent jobs.
    pub max_concurrent_jobs: i32,
    /// Whether jobs may run on it.
    pub is_active: bool,
    /// Creation time.
    pub created_at: i64,
    /// Last update time.
    pub updated_at: i64,
    /// Labels, a JSON object of strings.
    pub labels: String,
}

impl std::fmt::Debug for ServerRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerRow")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("hostname", &self.hostname)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// The secret columns, named as they are bound into each sealed value.
const PASSWORD: &str = "password";
const PRIVATE_KEY: &str = "private_key";
const PASSPHRASE: &str = "private_key_passphrase";

fn aad(id: &str, column: &str) -> String {
    format!("servers/{id}/{column}")
}

fn open_column(
    keyring: &Keyring,
    id: &str,
    version: i32,
    column: &str,
    bytes: &Option<Vec<u8>>,
) -> Result<Option<SecretString>, SecretsError> {
    let Some(bytes) = bytes else { return Ok(None) };
    // Version 0 would be plaintext: once a key is configured (always, in a store) a row that
    // claims it was written behind the service's back, and is refused.
    if version == 0 && keyring.current() > 0 {
        return Err(SecretsError::Unsealed(aad(id, column)));
    }
    let plain = keyring.open(version, &aad(id, column), bytes)?;
    Ok(Some(SecretString::from(
        String::from_utf8_lossy(&plain).into_owned(),
    )))
}

/// The secrets of a row, opened with `keyring`.
pub fn server_secrets(row: &ServerRow, keyring: &Keyring) -> Result<ServerSecrets, SecretsError> {
    let open = |column, bytes| open_column(keyring, &row.id, row.secret_version, column, bytes);
    Ok(ServerSecrets {
        password: open(PASSWORD, &row.password)?,
        private_key: open(PRIVATE_KEY, &row.private_key)?,
        private_key_passphrase: open(PASSPHRASE, &row.private_key_passphrase)?,
    })
}

impl ServerRow {
    /// A new row for a validated draft, its secrets sealed with `keyring`.
    pub fn new(
        id: uuid::Uuid,
        draft: &ServerDraft,
        now: Micros,
        keyring: &Keyring,
    ) -> Result<Self, SecretsError> {
        let mut row = ServerRow {
            id: id.to_string(),
            created_at: now.0,
            ..ServerRow::default()
        };
        row.apply(draft, now, keyring)?;
        Ok(row)
    }

    /// Overwrite every editable column from `draft`, sealing its secrets with `keyring`.
    pub fn apply(
        &mut self,
        draft: &ServerDraft,
        now: Micros,
        keyring: &Keyring,
    ) -> Result<(), SecretsError> {
        self.name = draft.name.trim().to_string();
        self.hostname = draft.hostname.trim().to_string();
        self.port = i32::from(draft.port);
        self.username = draft.user.clone();
        self.auth_type = draft.auth_type;
        self.seal_secrets(&draft.secrets, keyring)?;
        self.host_key = draft.host_key.clone();
        self.host_key_check = draft.host_key_check;
        self.max_concurrent_jobs = i32::try_from(draft.max_concurrent_jobs).unwrap_or(i32::MAX);
        self.is_active = draft.is_active;
        self.labels = serde_json::to_string(&draft.labels).unwrap_or_else(|_| "{}".into());
        self.updated_at = now.0;
        Ok(())
    }

    /// Seal `secrets` into the secret columns under the keyring's current version.
    pub fn seal_secrets(
        &mut self,
        secrets: &ServerSecrets,
        keyring: &Keyring,
    ) -> Result<(), SecretsError> {
        let mut version = keyring.current();
        let mut seal = |column: &str, secret: &Option<SecretString>| {
            secret
                .as_ref()
                .map(|s| {
                    let (v, bytes) =
                        keyring.seal(&aad(&self.id, column), s.expose_secret().as_bytes())?;
                    version = v;
                    Ok(bytes)
                })
                .transpose()
        };
        let password = seal(PASSWORD, &secrets.password)?;
        let private_key = seal(PRIVATE_KEY, &secrets.private_key)?;
        let passphrase = seal(PASSPHRASE, &secrets.private_key_passphrase)?;
        self.password = password;
        self.private_key = private_key;
        self.private_key_passphrase = passphrase;
        self.secret_version = version;
        Ok(())
    }

    /// The row as a draft (its secrets opened), for a partial update or a connection.
    pub fn to_draft(&self, keyring: &Keyring) -> Result<ServerDraft, SecretsError> {
        Ok(ServerDraft {
            name: self.name.clone(),
            hostname: self.hostname.clone(),
            port: u16::try_from(self.port).unwrap_or(22),
            user: self.username.clone(),
            auth_type: self.auth_type,
            secrets: server_secrets(self, keyring)?,
            is_active: self.is_active,
            host_key: self.host_key.clone(),
            host_key_check: self.host_key_check,
            max_concurrent_jobs: u32::try_from(self.max_concurrent_jobs).unwrap_or(1),
            labels: self.labels(),
        })
    }

    /// The labels (none, if the column does not hold a JSON object of strings).
    pub fn labels(&self) -> crate::domain::Labels {
        serde_json::from_str(&self.labels).unwrap_or_default()
    }
}
