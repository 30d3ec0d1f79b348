//! Rows as stored, apart from the queries that read and write them.

use diesel::prelude::*;
use secrecy::{ExposeSecret, SecretString};

use super::schema::servers;
use crate::domain::{AuthType, HostKeyCheck, Micros, ServerDraft, ServerSecrets};

/// A `servers` row. Secret columns hold bytes; `secret_version` says how they are sealed.
#[derive(Clone, Queryable, Selectable, Insertable, AsChangeset)]
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
    pub auth_type: String,
    /// Password bytes.
    pub password: Option<Vec<u8>>,
    /// Private key bytes.
    pub private_key: Option<Vec<u8>>,
    /// Passphrase bytes.
    pub private_key_passphrase: Option<Vec<u8>>,
    /// 0: stored as given.
    pub secret_version: i32,
    /// Pinned host key.
    pub host_key: Option<String>,
    /// `tofu` or `off`.
    pub host_key_check: String,
    /// Cap of concurrent jobs.
    pub max_concurrent_jobs: i32,
    /// Whether jobs may run on it.
    pub is_active: bool,
    /// Creation time.
    pub created_at: i64,
    /// Last update time.
    pub updated_at: i64,
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

fn open(bytes: &Option<Vec<u8>>) -> Option<SecretString> {
    bytes
        .as_ref()
        .map(|b| SecretString::from(String::from_utf8_lossy(b).into_owned()))
}

fn seal(secret: &Option<SecretString>) -> Option<Vec<u8>> {
    secret
        .as_ref()
        .map(|s| s.expose_secret().as_bytes().to_vec())
}

/// The secrets of a row, decoded.
pub fn server_secrets(row: &ServerRow) -> ServerSecrets {
    ServerSecrets {
        password: open(&row.password),
        private_key: open(&row.private_key),
        private_key_passphrase: open(&row.private_key_passphrase),
    }
}

impl ServerRow {
    /// A new row for a validated draft.
    pub fn new(id: uuid::Uuid, draft: &ServerDraft, now: Micros) -> Self {
        let mut row = ServerRow {
            id: id.to_string(),
            name: String::new(),
            hostname: String::new(),
            port: 22,
            username: String::new(),
            auth_type: String::new(),
            password: None,
            private_key: None,
            private_key_passphrase: None,
            secret_version: 0,
            host_key: None,
            host_key_check: String::new(),
            max_concurrent_jobs: 1,
            is_active: true,
            created_at: now.0,
            updated_at: now.0,
        };
        row.apply(draft, now);
        row
    }

    /// Overwrite every editable column from `draft`.
    pub fn apply(&mut self, draft: &ServerDraft, now: Micros) {
        self.name = draft.name.trim().to_string();
        self.hostname = draft.hostname.trim().to_string();
        self.port = i32::from(draft.port);
        self.username = draft.user.clone();
        self.auth_type = draft.auth_type.as_str().to_string();
        self.password = seal(&draft.secrets.password);
        self.private_key = seal(&draft.secrets.private_key);
        self.private_key_passphrase = seal(&draft.secrets.private_key_passphrase);
        self.host_key = draft.host_key.clone();
        self.host_key_check = draft.host_key_check.as_str().to_string();
        self.max_concurrent_jobs = i32::try_from(draft.max_concurrent_jobs).unwrap_or(i32::MAX);
        self.is_active = draft.is_active;
        self.updated_at = now.0;
    }

    /// The row as a draft, for a partial update or a connection.
    pub fn to_draft(&self) -> ServerDraft {
        ServerDraft {
            name: self.name.clone(),
            hostname: self.hostname.clone(),
            port: u16::try_from(self.port).unwrap_or(22),
            user: self.username.clone(),
            auth_type: self.auth_type.parse().unwrap_or(AuthType::Password),
            secrets: server_secrets(self),
            is_active: self.is_active,
            host_key: self.host_key.clone(),
            host_key_check: self.host_key_check.parse().unwrap_or(HostKeyCheck::Tofu),
            max_concurrent_jobs: u32::try_from(self.max_concurrent_jobs).unwrap_or(1),
        }
    }
}
