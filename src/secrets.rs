//! Secrets sealed at rest: the keyring that encrypts server passwords and private keys.
//!
//! Every secret column is sealed with ChaCha20-Poly1305 under the keyring's newest key. The
//! associated data names the row, the column and the key version, so a ciphertext copied to
//! another row or column, or relabelled with another version, fails to open. A sealed value
//! is `nonce (12 bytes) || ciphertext || tag (16 bytes)`; the row's `secret_version` says
//! which key sealed it (0: stored as given, by versions before sealing existed; with a key
//! configured such a row is refused, never read as plaintext).
//!
//! Keys are 32 random bytes, written as `VERSION:BASE64`. A keyring is one or more of them,
//! separated by commas or newlines: the highest version seals, the others only open. They
//! come from `secrets.key` (`JOBEXEC_SECRET_KEY`) or from `secrets.key_file`; with neither,
//! an SQLite database gets a key file beside it (`DB.key`, mode 0600), created once.
//! `job-executor rotate-key` adds a version and re-seals every row under it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use secrecy::{ExposeSecret, SecretString};

use crate::settings::{DatabaseKind, Settings};

/// Why a keyring could not be loaded, or a secret sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// The key text is malformed. The message never quotes the key.
    #[error("{0}")]
    BadKey(String),
    /// The key file could not be read or created.
    #[error("key file {path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// No key is configured and none can be made.
    #[error(
        "no secret key: PostgreSQL is shared by several processes, so give each the same key \
         with JOBEXEC_SECRET_KEY or secrets.key_file (`job-executor gen-key` prints a new one)"
    )]
    NoKey,
    /// A row was sealed with a key version this keyring does not hold.
    #[error("sealed with key version {0}, which this process does not have")]
    UnknownVersion(i32),
    /// A row says its secrets are stored as given (`secret_version` 0) although a key is
    /// configured: refused, never read as plaintext.
    #[error(
        "{0} is marked unsealed (secret_version 0) while a secret key is configured: refused; \
         delete the server and create it again"
    )]
    Unsealed(String),
    /// Authentication of the ciphertext failed: wrong key, or the bytes were moved or altered.
    #[error("a sealed secret does not open with key version {0} (wrong key, or altered data)")]
    Corrupt(i32),
    /// The system's random source failed.
    #[error("no randomness available")]
    Random,
}

/// Where the keys came from (a file can be read again when a new version appears).
#[derive(Debug, Clone)]
enum Source {
    Inline,
    File(PathBuf),
}

/// The keys held, by version.
type Keys = BTreeMap<i32, LessSafeKey>;

/// The keys that seal and open secrets.
pub struct Keyring {
    keys: RwLock<Keys>,
    source: Source,
    rng: SystemRandom,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("versions", &self.versions())
            .field("source", &self.source)
            .finish()
    }
}

/// A fresh key entry, `VERSION:BASE64`.
pub fn generate_entry(version: i32) -> Result<String, SecretsError> {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| SecretsError::Random)?;
    Ok(format!("{version}:{}", B64.encode(bytes)))
}

fn parse(text: &str) -> Result<Keys, SecretsError> {
    let mut keys = BTreeMap::new();
    for (n, entry) in text
        .split([',', '\n'])
        .map(str::trim)
        .filter(|e| !e.is_empty() && !e.starts_with('#'))
        .enumerate()
    {
        let bad = |why: String| SecretsError::BadKey(format!("key entry {}: {why}", n + 1));
        let (version, encoded) = match entry.split_once(':') {
            Some((v, k)) => (
                v.trim()
                    .parse::<i32>()
                    .ok()
                    .filter(|v| *v >= 1)
                    .ok_or_else(|| {
                        bad("the version before ':' must be a whole number ≥ 1".into())
                    })?,
                k.trim(),
            ),
            None => (1, entry),
        };
        let bytes = B64
            .decode(encoded)
            .map_err(|_| bad("the key is not base64".into()))?;
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, &bytes).map_err(|_| {
            let n = bytes.len();
            bad(format!(
                "a key is 32 bytes (44 base64 characters), this one is {n} bytes"
            ))
        })?;
        if keys.insert(version, LessSafeKey::new(unbound)).is_some() {
            return Err(SecretsError::BadKey(format!(
                "key version {version} appears twice"
            )));
        }
    }
    if keys.is_empty() {
        return Err(SecretsError::BadKey("the key is empty".into()));
    }
    Ok(keys)
}

fn file_error(path: &Path, e: impl std::fmt::Display) -> SecretsError {
    SecretsError::File {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

fn read_key_file(path: &Path) -> Result<Keys, SecretsError> {
    let text = std::fs::read_to_string(path).map_err(|e| file_error(path, e))?;
    #[cfg(unix)]
    if let Ok(meta) = std::fs::metadata(path) {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "the secret key file is readable by other users; chmod 600 it");
        }
    }
    parse(&text)
}

/// Write `text` to a new file readable by its owner only; fails if the file exists.
pub fn create_private_file(path: &Path, text: &str) -> Result<(), SecretsError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| file_error(path, e))?;
    file.write_all(text.as_bytes())
        .and_then(|_| file.sync_all())
        .map_err(|e| file_error(path, e))
}

/// Where the settings say the key file is, or where the embedded default puts one.
fn key_file_path(settings: &Settings) -> Option<PathBuf> {
    let named = settings.secrets.key_file.trim();
    if !named.is_empty() {
        return Some(PathBuf::from(named));
    }
    match settings.database.kind() {
        DatabaseKind::Sqlite(path) if !path.trim().is_empty() => {
            Some(PathBuf::from(format!("{}.key", path.trim())))
        }
        _ => None,
    }
}

impl Keyring {
    /// The keyring the settings describe: `secrets.key`, else `secrets.key_file`, else (SQLite
    /// only) a key file beside the database, created on first use.
    pub fn from_settings(settings: &Settings) -> Result<Self, SecretsError> {
        let inline = settings.secrets.key.expose_secret().trim();
        if !inline.is_empty() {
            return Ok(Self::new(parse(inline)?, Source::Inline));
        }
        let explicit = !settings.secrets.key_file.trim().is_empty();
        let path = key_file_path(settings).ok_or(SecretsError::NoKey)?;
        if !path.exists() {
            if explicit {
                return Err(file_error(
                    &path,
                    "does not exist (`job-executor gen-key > FILE; chmod 600 FILE` makes one)",
                ));
            }
            if let Some(dir) = path.parent()
                && !dir.as_os_str().is_empty()
            {
                std::fs::create_dir_all(dir).map_err(|e| file_error(dir, e))?;
            }
            match create_private_file(&path, &format!("{}\n", generate_entry(1)?)) {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "created the secret key file (keep it with the database; without it stored secrets cannot be opened)");
                }
                // Another process created it first: use theirs.
                Err(_) if path.exists() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Self::new(read_key_file(&path)?, Source::File(path)))
    }

    /// A keyring from key text (`VERSION:BASE64` entries), for tests and embedding programs.
    pub fn from_text(text: &SecretString) -> Result<Self, SecretsError> {
        Ok(Self::new(parse(text.expose_secret())?, Source::Inline))
    }

    fn new(keys: Keys, source: Source) -> Self {
        Self {
            keys: RwLock::new(keys),
            source,
            rng: SystemRandom::new(),
        }
    }

    /// The versions held, oldest first.
    pub fn versions(&self) -> Vec<i32> {
        self.keys
            .read()
            .map(|k| k.keys().copied().collect())
            .unwrap_or_default()
    }

    /// The version new seals use.
    pub fn current(&self) -> i32 {
        self.versions().last().copied().unwrap_or(0)
    }

    /// The key file, when the keys came from one.
    pub fn file(&self) -> Option<&Path> {
        match &self.source {
            Source::File(p) => Some(p),
            Source::Inline => None,
        }
    }

    /// Read the key file again (after `rotate-key` added a version). Inline keys stay.
    pub fn reload(&self) -> Result<(), SecretsError> {
        if let Source::File(path) = &self.source {
            let keys = read_key_file(path)?;
            if let Ok(mut held) = self.keys.write() {
                *held = keys;
            }
        }
        Ok(())
    }

    /// Add `entry` (`VERSION:BASE64`) to the keys held in memory.
    pub fn add(&self, entry: &str) -> Result<(), SecretsError> {
        let parsed = parse(entry)?;
        if let Ok(mut held) = self.keys.write() {
            held.extend(parsed);
        }
        Ok(())
    }

    /// The keys held, to read.
    fn held(&self) -> Result<std::sync::RwLockReadGuard<'_, Keys>, SecretsError> {
        let poisoned = |_| SecretsError::BadKey("the keyring is poisoned".into());
        self.keys.read().map_err(poisoned)
    }

    /// Seal `plain` for `aad` under the current key; returns the version and the bytes.
    pub fn seal(&self, aad: &str, plain: &[u8]) -> Result<(i32, Vec<u8>), SecretsError> {
        let keys = self.held()?;
        let (&version, key) = keys
            .last_key_value()
            .ok_or_else(|| SecretsError::BadKey("the keyring is empty".into()))?;
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| SecretsError::Random)?;
        let mut data = plain.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(with_version(aad, version).as_bytes()),
            &mut data,
        )
        .map_err(|_| SecretsError::Corrupt(version))?;
        let mut out = Vec::with_capacity(NONCE_LEN + data.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&data);
        Ok((version, out))
    }

    /// Open bytes sealed under `version` for `aad` (version 0: stored as given).
    pub fn open(&self, version: i32, aad: &str, sealed: &[u8]) -> Result<Vec<u8>, SecretsError> {
        if version == 0 {
            return Ok(sealed.to_vec());
        }
        let missing = self
            .keys
            .read()
            .map(|k| !k.contains_key(&version))
            .unwrap_or(true);
        if missing {
            // A newer version may have been added to the key file since this process read it.
            self.reload()?;
        }
        let keys = self.held()?;
        let key = keys
            .get(&version)
            .ok_or(SecretsError::UnknownVersion(version))?;
        if sealed.len() < NONCE_LEN {
            return Err(SecretsError::Corrupt(version));
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce =
            Nonce::try_assume_unique_for_key(nonce).map_err(|_| SecretsError::Corrupt(version))?;
        let mut data = body.to_vec();
        let plain = key
            .open_in_place(
                nonce,
                Aad::from(with_version(aad, version).as_bytes()),
                &mut data,
            )
            .map_err(|_| SecretsError::Corrupt(version))?;
        Ok(plain.to_vec())
    }
}

fn with_version(aad: &str, version: i32) -> String {
    format!("job-executor/v{version}/{aad}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(text: &str) -> Keyring {
        Keyring::from_text(&SecretString::from(text.to_string())).unwrap()
    }

    #[test]
    fn seals_and_opens_and_binds_the_associated_data() {
        let k = ring(&generate_entry(1).unwrap());
        let (v, sealed) = k.seal("servers/a/password", b"hunter2").unwrap();
        assert_eq!(v, 1);
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(
            k.open(1, "servers/a/password", &sealed).unwrap(),
            b"hunter2"
        );
        // Moved to another row or column, or relabelled: refused.
        assert!(k.open(1, "servers/b/password", &sealed).is_err());
        assert!(k.open(1, "servers/a/private_key", &sealed).is_err());
        let mut flipped = sealed.clone();
        flipped[20] ^= 1;
        assert!(k.open(1, "servers/a/password", &flipped).is_err());
        // Two seals of the same text differ (fresh nonce).
        assert_ne!(
            k.seal("x", b"same").unwrap().1,
            k.seal("x", b"same").unwrap().1
        );
    }

    #[test]
    fn the_newest_version_seals_and_older_ones_open() {
        let one = generate_entry(1).unwrap();
        let two = generate_entry(2).unwrap();
        let old = ring(&one);
        let (_, sealed_old) = old.seal("a", b"s").unwrap();
        let both = ring(&format!("{one},{two}"));
        assert_eq!(both.current(), 2);
        assert_eq!(both.open(1, "a", &sealed_old).unwrap(), b"s");
        let (v, sealed_new) = both.seal("a", b"s").unwrap();
        assert_eq!(v, 2);
        assert!(matches!(
            old.open(2, "a", &sealed_new),
            Err(SecretsError::UnknownVersion(2))
        ));
        // A relabelled version does not open either.
        assert!(both.open(1, "a", &sealed_new).is_err());
    }

    #[test]
    fn malformed_keys_are_refused_without_quoting_them() {
        for bad in ["0:AAAA", "x:AAAA", "1:not base64!", "1:AAAA"] {
            let err = Keyring::from_text(&SecretString::from(bad.to_string()))
                .err()
                .unwrap()
                .to_string();
            let key = bad.split_once(':').unwrap().1;
            assert!(!err.contains(key), "{err}");
        }
        assert!(Keyring::from_text(&SecretString::from(String::new())).is_err());
        let one = generate_entry(1).unwrap();
        assert!(Keyring::from_text(&SecretString::from(format!("{one}\n{one}"))).is_err());
    }

    #[test]
    fn a_key_file_is_made_once_beside_an_sqlite_database() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("jobs.db");
        let env = std::collections::HashMap::from([(
            "DATABASE_URL".to_string(),
            db.display().to_string(),
        )]);
        let settings = Settings::load_from(None, &env).unwrap();
        let first = Keyring::from_settings(&settings).unwrap();
        let path = dir.path().join("jobs.db.key");
        assert_eq!(first.file(), Some(path.as_path()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (v, sealed) = first.seal("a", b"s").unwrap();
        let again = Keyring::from_settings(&settings).unwrap();
        assert_eq!(again.open(v, "a", &sealed).unwrap(), b"s");
    }

    #[test]
    fn postgres_without_a_key_is_refused() {
        let env = std::collections::HashMap::from([(
            "DATABASE_URL".to_string(),
            "postgres://127.0.0.1/x".to_string(),
        )]);
        let settings = Settings::load_from(None, &env).unwrap();
        assert!(matches!(
            Keyring::from_settings(&settings),
            Err(SecretsError::NoKey)
        ));
    }
}
