//! The SSH layer: connect, verify the host key, authenticate, and say clearly what failed.
//!
//! Connections go through async-ssh2-tokio (`Client` over russh). Its handler can check a
//! host key but cannot report one, so learning a server's key (for trust on first use and
//! for the fingerprint the connection test shows) takes a short russh handshake of our own
//! ([`probe_host_key`]) that stops at key exchange and never authenticates. Once a full key
//! is pinned, connections verify it directly and the probe is skipped.
//!
//! Owns: turning transport, host-key and auth failures into [`SshError`], whose messages
//! name the host and the cause but never a secret.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_ssh2_tokio::{AuthMethod, Client, ServerCheckMethod};
use russh::keys::{HashAlg, PublicKey};
use secrecy::ExposeSecret;
use tokio::sync::oneshot;

use crate::domain::{AuthType, HostKeyCheck, ServerDraft};
pub mod exec;

/// Knobs of SSH connections, from `[ssh]`.
#[derive(Debug, Clone)]
pub struct SshOptions {
    /// Bound of connect + key exchange + authentication.
    pub connect_timeout: Duration,
    /// Interval of keepalives on open connections.
    pub keepalive_interval: Duration,
    /// Unanswered keepalives before the connection is lost.
    pub keepalive_max: usize,
    /// An OpenSSH known_hosts file for servers with no pinned key.
    pub known_hosts: Option<std::path::PathBuf>,
}

impl SshError {
    /// Whether trying again cannot help: the host's identity or the credentials are wrong.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            SshError::HostKeyChanged { .. }
                | SshError::HostKeyUnknown { .. }
                | SshError::HostKeyRejected { .. }
                | SshError::AuthRejected { .. }
                | SshError::BadKey(_)
                | SshError::Credentials(_)
                | SshError::Build(_)
        )
    }
}

impl SshOptions {
    /// From the settings section.
    pub fn from_settings(s: &crate::settings::SshSettings) -> Self {
        Self {
            connect_timeout: Duration::from_secs(s.connect_timeout_secs.max(1)),
            keepalive_interval: Duration::from_secs(s.keepalive_interval_secs.max(1)),
            keepalive_max: s.keepalive_max.max(1),
            known_hosts: Some(s.known_hosts_file.trim())
                .filter(|p| !p.is_empty())
                .map(std::path::PathBuf::from),
        }
    }

    fn russh_config(&self) -> russh::client::Config {
        russh::client::Config {
            // Without it every exec pays a ~40 ms Nagle stall.
            nodelay: true,
            keepalive_interval: Some(self.keepalive_interval),
            keepalive_max: self.keepalive_max,
            inactivity_timeout: None,
            ..Default::default()
        }
    }
}

/// Why a connection could not be made. Messages never contain secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SshError {
    /// The host name does not resolve.
    #[error("cannot resolve host {host}: {reason}")]
    Resolve {
        /// The host name.
        host: String,
        /// The resolver's answer.
        reason: String,
    },
    /// Nothing listens on the port.
    #[error("connection refused by {addr}")]
    Refused {
        /// `host:port`.
        addr: String,
    },
    /// No route to the host.
    #[error("host {addr} is unreachable: {reason}")]
    Unreachable {
        /// `host:port`.
        addr: String,
        /// The OS's answer.
        reason: String,
    },
    /// The bound ran out.
    #[error("timed out after {secs}s connecting to {addr} ({stage})")]
    Timeout {
        /// `host:port`.
        addr: String,
        /// Seconds waited.
        secs: u64,
        /// What was under way.
        stage: &'static str,
    },
    /// The server refused the credentials.
    #[error("authentication rejected: {method} refused for user {user:?} on {addr}")]
    AuthRejected {
        /// `host:port`.
        addr: String,
        /// The login user.
        user: String,
        /// `password` or `key`.
        method: &'static str,
    },
    /// The stored private key cannot be used.
    #[error("the private key cannot be used: {0}")]
    BadKey(String),
    /// The server presented a key other than the pinned one.
    #[error(
        "host key changed for {addr}: pinned {pinned}, server presented {presented}; \
         if the change is expected, accept the new key (POST /api/v1/servers/ID/test with \
         {{\"accept_host_key\": true}}, or set host_key on the server)"
    )]
    HostKeyChanged {
        /// `host:port`.
        addr: String,
        /// The pinned fingerprint.
        pinned: String,
        /// The fingerprint presented now.
        presented: String,
    },
    /// The known_hosts file lists the host with other keys.
    #[error(
        "host key for {addr} is not the one {file} lists: server presented {presented}; \
         fix the known_hosts entry or pin the key on the server"
    )]
    HostKeyUnknown {
        /// `host:port`.
        addr: String,
        /// The known_hosts file.
        file: String,
        /// The fingerprint presented.
        presented: String,
    },
    /// The stored credentials could not be opened (wrong secret key).
    #[error("cannot use the stored credentials: {0}")]
    Credentials(String),
    /// Host key verification failed for another reason.
    #[error("host key verification failed for {addr}")]
    HostKeyRejected {
        /// `host:port`.
        addr: String,
    },
    /// No exec line can be built from the input (checked before anything is sent).
    #[error("the remote command cannot be built: {0}")]
    Build(#[from] exec::BuildError),
    /// The connection was lost or the protocol failed.
    #[error("SSH failure with {addr}: {reason}")]
    Protocol {
        /// `host:port`.
        addr: String,
        /// What went wrong.
        reason: String,
    },
}

/// `SHA256:…` fingerprint of a public key, as OpenSSH prints it.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// Where to connect and as whom.
#[derive(Clone)]
pub struct SshTarget {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Login user.
    pub user: String,
    /// Credentials, ready for async-ssh2-tokio. Never `Debug`-printed.
    auth: AuthKind,
    /// Pinned key: a full OpenSSH key line or a `SHA256:` fingerprint.
    pub pinned: Option<String>,
    /// Host key policy.
    pub check: HostKeyCheck,
}

#[derive(Clone)]
enum AuthKind {
    Password(secrecy::SecretString),
    Key {
        key: secrecy::SecretString,
        passphrase: Option<secrecy::SecretString>,
    },
}

impl std::fmt::Debug for SshTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshTarget")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl SshTarget {
    /// The target a server record describes.
    pub fn from_server(server: &ServerDraft) -> Result<Self, SshError> {
        let auth = match server.auth_type {
            AuthType::Password => AuthKind::Password(
                server
                    .secrets
                    .password
                    .clone()
                    .ok_or_else(|| SshError::BadKey("no password is stored".into()))?,
            ),
            AuthType::Key => AuthKind::Key {
                key: server
                    .secrets
                    .private_key
                    .clone()
                    .ok_or_else(|| SshError::BadKey("no private key is stored".into()))?,
                passphrase: server.secrets.private_key_passphrase.clone(),
            },
        };
        Ok(Self {
            host: server.hostname.clone(),
            port: server.port,
            user: server.user.clone(),
            auth,
            pinned: server.host_key.clone(),
            check: server.host_key_check,
        })
    }

    /// `host:port`, with brackets around IPv6 addresses.
    pub fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    fn auth_method(&self) -> AuthMethod {
        match &self.auth {
            AuthKind::Password(pw) => AuthMethod::with_password(pw.expose_secret()),
            AuthKind::Key { key, passphrase } => AuthMethod::with_key(
                key.expose_secret(),
                passphrase.as_ref().map(|p| p.expose_secret()),
            ),
        }
    }

    fn method_name(&self) -> &'static str {
        match self.auth {
            AuthKind::Password(_) => "password",
            AuthKind::Key { .. } => "key",
        }
    }
}

/// A key as pinned: `TYPE BASE64`, without a comment.
pub fn openssh_line(key: &PublicKey) -> String {
    key.to_openssh()
        .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// An authenticated connection and the host key it was made with.
pub struct Connection {
    /// The async-ssh2-tokio client: a cheap clone over one SSH connection.
    pub client: Client,
    /// The server's key, as verified on this connection.
    pub host_key: PublicKey,
}

struct KeyCatcher {
    tx: Option<oneshot::Sender<PublicKey>>,
}

impl russh::client::Handler for KeyCatcher {
    type Error = russh::Error;

    async fn check_server_key(&mut self, key: &PublicKey) -> Result<bool, Self::Error> {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(key.clone());
        }
        // Stop here: the probe never authenticates.
        Ok(false)
    }
}

/// Learn the key a server presents, without authenticating.
pub async fn probe_host_key(target: &SshTarget, opts: &SshOptions) -> Result<PublicKey, SshError> {
    let addr = target.addr();
    let deadline = opts.connect_timeout;
    let work = async {
        let sockaddr = resolve(target).await?;
        let (tx, rx) = oneshot::channel();
        let config = Arc::new(opts.russh_config());
        let handler = KeyCatcher { tx: Some(tx) };
        let session =
            tokio::spawn(async move { russh::client::connect(config, sockaddr, handler).await });
        match rx.await {
            Ok(key) => {
                session.abort();
                Ok(key)
            }
            Err(_) => match session.await {
                Ok(Err(e)) => Err(classify_russh(&addr, e)),
                _ => Err(SshError::Protocol {
                    addr: addr.clone(),
                    reason: "the server closed the connection before presenting a host key".into(),
                }),
            },
        }
    };
    tokio::time::timeout(deadline, work)
        .await
        .unwrap_or_else(|_| {
            Err(SshError::Timeout {
                addr: target.addr(),
                secs: deadline.as_secs(),
                stage: "key exchange",
            })
        })
}

async fn resolve(target: &SshTarget) -> Result<std::net::SocketAddr, SshError> {
    let mut addrs = tokio::net::lookup_host((target.host.as_str(), target.port))
        .await
        .map_err(|e| SshError::Resolve {
            host: target.host.clone(),
            reason: e.to_string(),
        })?;
    addrs.next().ok_or_else(|| SshError::Resolve {
        host: target.host.clone(),
        reason: "no addresses".into(),
    })
}

/// The fingerprint of a pinned key: a `SHA256:` fingerprint as it is, an OpenSSH public key
/// line hashed (anything else, which validation does not let in, as it is).
pub fn pinned_fingerprint(pinned: &str) -> String {
    if pinned.starts_with("SHA256:") {
        return pinned.to_string();
    }
    PublicKey::from_openssh(pinned)
        .map(|k| fingerprint(&k))
        .unwrap_or_else(|_| pinned.to_string())
}

/// Decide which key to accept: the pinned one, or (trust on first use, or checks off) the
/// one the probe saw. Fails before authentication when the server's key differs from the pin.
async fn expected_key(target: &SshTarget, opts: &SshOptions) -> Result<PublicKey, SshError> {
    if target.check == HostKeyCheck::Tofu
        && let Some(pinned) = &target.pinned
        && !pinned.starts_with("SHA256:")
        && let Ok(key) = PublicKey::from_openssh(pinned)
    {
        return Ok(key);
    }
    let seen = probe_host_key(target, opts).await?;
    if target.check == HostKeyCheck::Tofu
        && let Some(pinned) = &target.pinned
    {
        let pinned_fp = pinned_fingerprint(pinned);
        let presented = fingerprint(&seen);
        if pinned_fp != presented {
            return Err(SshError::HostKeyChanged {
                addr: target.addr(),
                pinned: pinned_fp,
                presented,
            });
        }
    } else if target.check == HostKeyCheck::Tofu
        && let Some(file) = &opts.known_hosts
    {
        let listed =
            russh::keys::known_hosts::known_host_keys_path(&target.host, target.port, file)
                .map_err(|e| SshError::Protocol {
                    addr: target.addr(),
                    reason: format!("cannot read {}: {e}", file.display()),
                })?;
        let presented = fingerprint(&seen);
        if !listed.is_empty() && !listed.iter().any(|(_, k)| fingerprint(k) == presented) {
            return Err(SshError::HostKeyUnknown {
                addr: target.addr(),
                file: file.display().to_string(),
                presented,
            });
        }
    }
    Ok(seen)
}

/// Connect and authenticate, verifying the host key before any credential is sent.
pub async fn connect(target: &SshTarget, opts: &SshOptions) -> Result<Connection, SshError> {
    let started = Instant::now();
    let key = expected_key(target, opts).await?;
    let remaining = opts.connect_timeout.saturating_sub(started.elapsed());
    let key_b64 = key
        .to_openssh()
        .ok()
        .and_then(|line| line.split_whitespace().nth(1).map(str::to_string))
        .unwrap_or_default();
    let check = ServerCheckMethod::PublicKey(key_b64);
    let sockaddr = resolve(target).await?;
    let attempt = Client::connect_with_config(
        (sockaddr.ip(), sockaddr.port()),
        &target.user,
        target.auth_method(),
        check,
        opts.russh_config(),
    );
    match tokio::time::timeout(remaining, attempt).await {
        Ok(Ok(client)) => Ok(Connection {
            client,
            host_key: key,
        }),
        Ok(Err(e)) => match classify(target, e) {
            // The pinned key was refused in the handshake (before any credential): learn
            // what the server presents now, to name both keys.
            SshError::HostKeyRejected { addr } if target.pinned.is_some() => {
                match probe_host_key(target, opts).await {
                    Ok(seen) if fingerprint(&seen) != fingerprint(&key) => {
                        Err(SshError::HostKeyChanged {
                            addr,
                            pinned: fingerprint(&key),
                            presented: fingerprint(&seen),
                        })
                    }
                    _ => Err(SshError::HostKeyRejected { addr }),
                }
            }
            other => Err(other),
        },
        Err(_) => Err(SshError::Timeout {
            addr: target.addr(),
            secs: opts.connect_timeout.as_secs(),
            stage: "authentication",
        }),
    }
}

fn classify(target: &SshTarget, e: async_ssh2_tokio::Error) -> SshError {
    use async_ssh2_tokio::Error as E;
    let addr = target.addr();
    match e {
        E::PasswordWrong | E::KeyAuthFailed | E::KeyboardInteractiveAuthFailed => {
            SshError::AuthRejected {
                addr,
                user: target.user.clone(),
                method: target.method_name(),
            }
        }
        E::KeyInvalid(err) => SshError::BadKey(key_error(&err)),
        E::ServerCheckFailed => SshError::HostKeyRejected { addr },
        E::AddressInvalid(err) => SshError::Resolve {
            host: target.host.clone(),
            reason: err.to_string(),
        },
        E::SshError(err) => classify_russh(&addr, err),
        E::IoError(err) => classify_io(&addr, &err),
        other => SshError::Protocol {
            addr,
            reason: other.to_string(),
        },
    }
}

fn key_error(err: &russh::keys::Error) -> String {
    match err {
        russh::keys::Error::KeyIsEncrypted => "it is encrypted and no passphrase is stored".into(),
        _ => "bad format or wrong passphrase".into(),
    }
}

fn classify_russh(addr: &str, e: russh::Error) -> SshError {
    match e {
        russh::Error::IO(io) => classify_io(addr, &io),
        russh::Error::UnknownKey | russh::Error::WrongServerSig => SshError::HostKeyRejected {
            addr: addr.to_string(),
        },
        russh::Error::ConnectionTimeout => SshError::Timeout {
            addr: addr.to_string(),
            secs: 0,
            stage: "connect",
        },
        russh::Error::Disconnect | russh::Error::HUP => SshError::Protocol {
            addr: addr.to_string(),
            reason: "the server closed the connection".into(),
        },
        russh::Error::KeepaliveTimeout => SshError::Protocol {
            addr: addr.to_string(),
            reason: "the connection was lost (keepalives went unanswered)".into(),
        },
        other => SshError::Protocol {
            addr: addr.to_string(),
            reason: other.to_string(),
        },
    }
}

fn classify_io(addr: &str, e: &std::io::Error) -> SshError {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => SshError::Refused {
            addr: addr.to_string(),
        },
        K::HostUnreachable | K::NetworkUnreachable | K::AddrNotAvailable => SshError::Unreachable {
            addr: addr.to_string(),
            reason: e.to_string(),
        },
        K::TimedOut => SshError::Timeout {
            addr: addr.to_string(),
            secs: 0,
            stage: "connect",
        },
        K::ConnectionReset | K::UnexpectedEof | K::BrokenPipe => SshError::Protocol {
            addr: addr.to_string(),
            reason: "the server closed the connection".into(),
        },
        _ => SshError::Protocol {
            addr: addr.to_string(),
            reason: e.to_string(),
        },
    }
}

/// What the connection test found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TestReport {
    /// Connected, authenticated and `true` exited 0.
    pub ok: bool,
    /// Milliseconds the whole test took.
    pub latency_ms: u64,
    /// The key the server presented, when key exchange got that far.
    pub host_key_fingerprint: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
    /// The server's key as an OpenSSH line (not serialized; the caller may pin it).
    #[serde(skip)]
    pub host_key: Option<String>,
    /// Why it failed, as an error (not serialized; the caller words it for its audience).
    #[serde(skip)]
    pub failure: Option<SshError>,
}

/// Connect, authenticate and run `true`, within `bound`.
pub async fn test_connection(target: &SshTarget, opts: &SshOptions, bound: Duration) -> TestReport {
    let started = Instant::now();
    let outcome = tokio::time::timeout(bound, async {
        let conn = connect(target, opts).await?;
        let result = conn
            .client
            .execute("true")
            .await
            .map_err(|e| classify(target, e));
        let _ = conn.client.disconnect().await;
        let result = result?;
        if result.exit_status != 0 {
            return Err(SshError::Protocol {
                addr: target.addr(),
                reason: format!("`true` exited with status {}", result.exit_status),
            });
        }
        Ok(conn.host_key)
    })
    .await
    .unwrap_or_else(|_| {
        Err(SshError::Timeout {
            addr: target.addr(),
            secs: bound.as_secs(),
            stage: "connection test",
        })
    });
    let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    match outcome {
        Ok(key) => TestReport {
            ok: true,
            latency_ms,
            host_key_fingerprint: Some(fingerprint(&key)),
            error: None,
            host_key: Some(openssh_line(&key)).filter(|l| !l.is_empty()),
            failure: None,
        },
        Err(err) => {
            let presented = match &err {
                SshError::HostKeyChanged { presented, .. } => Some(presented.clone()),
                _ => None,
            };
            TestReport {
                ok: false,
                latency_ms,
                host_key_fingerprint: presented,
                error: Some(err.to_string()),
                host_key: None,
                failure: Some(err),
            }
        }
    }
}
