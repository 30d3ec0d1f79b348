//! Servers: the SSH targets jobs run on, and the validation of what users send for them.
//!
//! One input shape serves create and update: on create the missing fields take their
//! defaults (or are refused), on update they keep their stored value. Either way the result
//! is checked whole, so an update cannot leave a password server without a password.

use secrecy::{ExposeSecret, SecretString};

use super::{FieldError, refuse};

named_enum! {
    /// How the worker authenticates to a server.
    #[derive(Default)]
    pub enum AuthType ("auth_type") {
        /// Password authentication.
        #[default]
        Password = "password",
        /// Public-key authentication with a private key held by the service.
        Key = "key" | "publickey" | "private_key",
    }
}

named_enum! {
    /// What the worker does with the key a server presents.
    #[derive(Default)]
    pub enum HostKeyCheck ("host_key_check") {
        /// Trust on first use: the first key seen is pinned, a different one later is refused.
        #[default]
        Tofu = "tofu",
        /// Accept any key (the per-server escape hatch; responses show it).
        Off = "off",
    }
}

/// The secrets of a server. Never printed: `Debug` says only which are present (a
/// [`SecretString`] prints as `[REDACTED]`).
#[derive(Clone, Debug, Default)]
pub struct ServerSecrets {
    /// Password for password authentication.
    pub password: Option<SecretString>,
    /// Private key text, OpenSSH or PEM.
    pub private_key: Option<SecretString>,
    /// Passphrase of the private key, when it is encrypted.
    pub private_key_passphrase: Option<SecretString>,
}

/// A server as sent by a client, for create (`POST`) or partial update (`PUT`).
/// Every field is optional here; `ServerDraft::create` and `ServerDraft::patch` decide.
///
/// On create `name`, `hostname`, `user` and the credential of `auth_type` are required
/// (`auth_type` may be left out when only a password or only a key is sent); on update
/// omitted fields keep their value. The secrets are write-only: no response contains them.
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::ToSchema)]
pub struct ServerPatch {
    /// Unique name: not blank, at most 128 characters.
    #[schema(
        max_length = 128,
        pattern = "[^\\t-\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]"
    )]
    pub name: Option<String>,
    /// Host name (letters, digits, `-`, `.`, `_`) or IP address.
    #[schema(max_length = 253, pattern = "^[A-Za-z0-9._-]+$")]
    pub hostname: Option<String>,
    /// TCP port, 1–65535 (kept wide here so an out-of-range value gets a clear 422). A whole
    /// number (`22` or `22.0`).
    #[serde(default, deserialize_with = "super::spec::whole_number")]
    #[schema(default = 22, minimum = 1, maximum = 65535)]
    pub port: Option<i64>,
    /// Login user: at most 64 characters, no spaces or control characters.
    #[schema(
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f\\t-\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]{1,64}$"
    )]
    pub user: Option<String>,
    /// `password` or `key`.
    #[schema(value_type = Option<AuthType>)]
    pub auth_type: Option<String>,
    /// Write-only password.
    #[schema(value_type = Option<String>, write_only)]
    pub password: Option<SecretString>,
    /// Write-only private key text (OpenSSH or PEM).
    #[schema(value_type = Option<String>, write_only)]
    pub private_key: Option<SecretString>,
    /// The seed's clients send the key as `pem_file`: a synonym of `private_key`.
    #[schema(value_type = Option<String>, write_only)]
    pub pem_file: Option<SecretString>,
    /// Write-only passphrase of the private key.
    #[schema(value_type = Option<String>, write_only)]
    pub private_key_passphrase: Option<SecretString>,
    /// Whether jobs may run on it.
    pub is_active: Option<bool>,
    /// Pinned host key: `SHA256:` fingerprint or an OpenSSH public key line. Empty unpins.
    pub host_key: Option<String>,
    /// `tofu` or `off`.
    #[schema(value_type = Option<HostKeyCheck>)]
    pub host_key_check: Option<String>,
    /// How many jobs may run on it at once. A whole number (`4` or `4.0`).
    #[serde(default, deserialize_with = "super::spec::whole_number")]
    #[schema(minimum = 1, maximum = 10000)]
    pub max_concurrent_jobs: Option<i64>,
    /// Labels, `{"role": "web", "env": "prod"}` (keys 1-63 of `a-z 0-9 _ . - /`, values up
    /// to 255 characters without `,` `=` `!`): what selectors match. On update the whole map
    /// is replaced.
    #[schema(schema_with = super::labels::labels_schema)]
    pub labels: Option<super::Labels>,
}

/// A complete, validated server (without its id and timestamps).
#[derive(Debug, Clone)]
pub struct ServerDraft {
    /// Unique name.
    pub name: String,
    /// Host name or address.
    pub hostname: String,
    /// TCP port.
    pub port: u16,
    /// Login user.
    pub user: String,
    /// How to authenticate.
    pub auth_type: AuthType,
    /// Write-only secrets.
    pub secrets: ServerSecrets,
    /// Whether jobs may run on it.
    pub is_active: bool,
    /// Pinned host key, if any.
    pub host_key: Option<String>,
    /// Host key policy.
    pub host_key_check: HostKeyCheck,
    /// Cap of concurrent jobs on this server.
    pub max_concurrent_jobs: u32,
    /// Labels, matched by selectors.
    pub labels: super::Labels,
}

/// Upper bound of `max_concurrent_jobs`.
pub const MAX_CONCURRENT_JOBS_LIMIT: i64 = 10_000;

impl ServerDraft {
    /// Validate a create request; `default_max_jobs` fills `max_concurrent_jobs`.
    pub fn create(input: ServerPatch, default_max_jobs: u32) -> Result<Self, FieldError> {
        let required = |field: &'static str, value: &Option<String>| {
            value
                .clone()
                .ok_or_else(|| FieldError::new(field, "is required"))
        };
        let name = required("name", &input.name)?;
        let hostname = required("hostname", &input.hostname)?;
        let user = required("user", &input.user)?;
        let has_key = input.private_key.is_some() || input.pem_file.is_some();
        let auth_type = match &input.auth_type {
            Some(_) => AuthType::Password, // replaced by `patch` below
            None if has_key => AuthType::Key,
            None if input.password.is_some() => AuthType::Password,
            None => {
                return Err(FieldError::new(
                    "auth_type",
                    "is required (\"password\" or \"key\")",
                ));
            }
        };
        let base = ServerDraft {
            name,
            hostname,
            port: 22,
            user,
            auth_type,
            secrets: ServerSecrets::default(),
            is_active: true,
            host_key: None,
            host_key_check: HostKeyCheck::Tofu,
            max_concurrent_jobs: default_max_jobs,
            labels: super::Labels::new(),
        };
        base.patch(input)
    }

    /// Apply a partial update: omitted fields keep their value; the result is checked whole.
    pub fn patch(mut self, input: ServerPatch) -> Result<Self, FieldError> {
        if let Some(name) = input.name {
            self.name = name;
        }
        if let Some(hostname) = input.hostname {
            self.hostname = hostname;
        }
        if let Some(port) = input.port {
            self.port = in_range("port", port, 1, 65535)?;
        }
        if let Some(user) = input.user {
            self.user = user;
        }
        if let Some(auth) = input.auth_type {
            self.auth_type = parse_field("auth_type", &auth)?;
        }
        // An empty `pem_file` beside a `private_key` says nothing: only two keys conflict.
        let pem_given = input
            .pem_file
            .as_ref()
            .is_some_and(|p| !p.expose_secret().is_empty());
        let both = input.private_key.is_some() && pem_given;
        refuse(
            both,
            "pem_file",
            "is a synonym of private_key; send only one of them",
        )?;
        if let Some(pw) = input.password {
            self.secrets.password = non_empty_secret(pw);
        }
        if let Some(key) = input.private_key.or(input.pem_file) {
            self.secrets.private_key = non_empty_secret(key);
            // A new key without a passphrase is taken as unencrypted.
            self.secrets.private_key_passphrase = None;
        }
        if let Some(pass) = input.private_key_passphrase {
            self.secrets.private_key_passphrase = non_empty_secret(pass);
        }
        if let Some(active) = input.is_active {
            self.is_active = active;
        }
        if let Some(key) = input.host_key {
            let key = key.trim();
            self.host_key = if key.is_empty() {
                None
            } else {
                Some(normalize_host_key(key)?)
            };
        }
        if let Some(check) = input.host_key_check {
            self.host_key_check = parse_field("host_key_check", &check)?;
        }
        if let Some(max) = input.max_concurrent_jobs {
            self.max_concurrent_jobs =
                in_range("max_concurrent_jobs", max, 1, MAX_CONCURRENT_JOBS_LIMIT)?;
        }
        if let Some(labels) = input.labels {
            super::validate_labels(&labels)?;
            self.labels = labels;
        }
        self.validate()?;
        Ok(self)
    }

    fn validate(&self) -> Result<(), FieldError> {
        // Lengths in characters, as the document's maxLength counts them.
        refuse(self.name.trim().is_empty(), "name", "must not be empty")?;
        let long = self.name.chars().count() > 128;
        refuse(long, "name", "is longer than 128 characters")?;
        validate_hostname(&self.hostname)?;
        refuse(self.user.trim().is_empty(), "user", "must not be empty")?;
        let bad_user = self.user.chars().count() > 64
            || self
                .user
                .chars()
                .any(|c| c.is_whitespace() || c.is_control());
        let message = "must be a login name without spaces (at most 64 characters)";
        refuse(bad_user, "user", message)?;
        match self.auth_type {
            AuthType::Password => {
                let message = "is required when auth_type is \"password\"";
                refuse(self.secrets.password.is_none(), "password", message)?;
            }
            AuthType::Key => {
                let Some(key) = &self.secrets.private_key else {
                    return Err(FieldError::new(
                        "private_key",
                        "is required when auth_type is \"key\" (the key text, OpenSSH or PEM)",
                    ));
                };
                check_private_key(
                    key.expose_secret(),
                    self.secrets
                        .private_key_passphrase
                        .as_ref()
                        .map(|p| p.expose_secret()),
                )?;
            }
        }
        Ok(())
    }
}

/// `value` as a `T` when it lies in `min..=max`; else a 422 naming `field` and the range.
fn in_range<T: TryFrom<i64>>(
    field: &'static str,
    value: i64,
    min: i64,
    max: i64,
) -> Result<T, FieldError> {
    (min..=max)
        .contains(&value)
        .then(|| T::try_from(value).ok())
        .flatten()
        .ok_or_else(|| FieldError::new(field, format!("{value} is out of range ({min}-{max})")))
}

/// A named value of `field` (an enum's [`FromStr`](std::str::FromStr)), its error the 422's message.
fn parse_field<T: std::str::FromStr<Err = String>>(
    field: &'static str,
    raw: &str,
) -> Result<T, FieldError> {
    raw.parse().map_err(|msg| FieldError::new(field, msg))
}

fn non_empty_secret(s: SecretString) -> Option<SecretString> {
    Some(s).filter(|s| !s.expose_secret().is_empty())
}

fn validate_hostname(host: &str) -> Result<(), FieldError> {
    refuse(host.trim().is_empty(), "hostname", "must not be empty")?;
    refuse(
        host.len() > 253,
        "hostname",
        "is longer than 253 characters",
    )?;
    let ok = host.parse::<std::net::IpAddr>().is_ok()
        || host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    let message = format!("{host:?} is not a host name or IP address");
    refuse(!ok, "hostname", message)
}

/// Check that a private key decodes (with its passphrase when it has one). The message never
/// quotes the key.
pub fn check_private_key(key: &str, passphrase: Option<&str>) -> Result<(), FieldError> {
    match russh::keys::decode_secret_key(key, passphrase) {
        Ok(_) => Ok(()),
        Err(russh::keys::Error::KeyIsEncrypted) => Err(FieldError::new(
            "private_key_passphrase",
            "the private key is encrypted: a passphrase is required",
        )),
        Err(_) if passphrase.is_some() => Err(FieldError::new(
            "private_key_passphrase",
            "the private key cannot be decoded with this passphrase (or it is not an OpenSSH or PEM private key)",
        )),
        Err(_) => Err(FieldError::new(
            "private_key",
            "is not an OpenSSH or PEM private key that can be decoded",
        )),
    }
}

/// Accept a `SHA256:` fingerprint or an OpenSSH public key line (`ssh-ed25519 AAAA… [comment]`)
/// and return it in canonical form (the fingerprint as given, the key line without comment).
pub fn normalize_host_key(key: &str) -> Result<String, FieldError> {
    if let Some(b64) = key.strip_prefix("SHA256:") {
        let ok = (42..=44).contains(&b64.len())
            && b64
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '='));
        return if ok {
            Ok(key.to_string())
        } else {
            Err(FieldError::new(
                "host_key",
                "is not a SHA256 fingerprint (SHA256: followed by 43 base64 characters)",
            ))
        };
    }
    match russh::keys::PublicKey::from_openssh(key) {
        Ok(pk) => pk
            .to_openssh()
            .map(|line| {
                line.split_whitespace()
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .map_err(|_| FieldError::new("host_key", "cannot be encoded")),
        Err(_) => Err(FieldError::new(
            "host_key",
            "must be a SHA256: fingerprint or an OpenSSH public key line",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> Option<SecretString> {
        Some(SecretString::from(s.to_string()))
    }

    fn password_input() -> ServerPatch {
        ServerPatch {
            name: Some("web-1".into()),
            hostname: Some("10.0.0.5".into()),
            user: Some("deploy".into()),
            auth_type: Some("password".into()),
            password: secret("hunter2"),
            ..Default::default()
        }
    }

    #[test]
    fn create_fills_defaults() {
        let d = ServerDraft::create(password_input(), 4).unwrap();
        assert_eq!(d.port, 22);
        assert!(d.is_active);
        assert_eq!(d.max_concurrent_jobs, 4);
        assert_eq!(d.host_key_check, HostKeyCheck::Tofu);
    }

    #[test]
    fn bad_fields_are_named() {
        let with = |f: fn(&mut ServerPatch)| {
            let mut input = password_input();
            f(&mut input);
            input
        };
        let cases: Vec<(ServerPatch, &str)> = vec![
            (with(|p| p.port = Some(70000)), "port"),
            (with(|p| p.port = Some(0)), "port"),
            (with(|p| p.hostname = Some(" ".into())), "hostname"),
            (with(|p| p.hostname = Some("a b".into())), "hostname"),
            (with(|p| p.password = None), "password"),
            (with(|p| p.auth_type = Some("kerberos".into())), "auth_type"),
            (with(|p| p.name = None), "name"),
            (with(|p| p.user = Some(String::new())), "user"),
            (
                with(|p| {
                    p.auth_type = Some("key".into());
                    p.private_key = secret("nope");
                }),
                "private_key",
            ),
            (
                with(|p| p.host_key = Some("SHA256:short".into())),
                "host_key",
            ),
            (
                with(|p| p.max_concurrent_jobs = Some(0)),
                "max_concurrent_jobs",
            ),
        ];
        for (input, field) in cases {
            let err = ServerDraft::create(input, 4).unwrap_err();
            assert_eq!(err.field, field, "{err}");
        }
    }

    #[test]
    fn patch_keeps_omitted_fields_and_checks_the_whole() {
        let d = ServerDraft::create(password_input(), 4).unwrap();
        let d2 = d
            .clone()
            .patch(ServerPatch {
                port: Some(2222),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(d2.port, 2222);
        assert_eq!(d2.name, "web-1");
        assert!(d2.secrets.password.is_some());
        let err = d
            .patch(ServerPatch {
                auth_type: Some("key".into()),
                ..Default::default()
            })
            .unwrap_err();
        assert_eq!(err.field, "private_key");
    }

    #[test]
    fn names_and_aliases_parse() {
        assert_eq!("publickey".parse::<AuthType>(), Ok(AuthType::Key));
        let err = "kerberos".parse::<AuthType>().unwrap_err();
        assert_eq!(
            err,
            r#"unknown auth_type "kerberos"; expected "password" or "key""#
        );
        assert_eq!(HostKeyCheck::Off.to_string(), "off");
    }

    #[test]
    fn secrets_debug_is_redacted() {
        let d = ServerDraft::create(password_input(), 4).unwrap();
        let shown = format!("{d:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn host_key_forms() {
        let fp = "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU";
        assert_eq!(normalize_host_key(fp).unwrap(), fp);
        let line = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl comment";
        let canon = normalize_host_key(line).unwrap();
        assert!(canon.starts_with("ssh-ed25519 AAAA"), "{canon}");
        assert!(!canon.contains("comment"));
    }
}
