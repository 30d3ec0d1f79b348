//! The SSH layer: connect, verify the host key, authenticate, and say clearly what failed.
//!
//! Connections are russh client sessions ([`Client`]). Learning a server's key (for trust on
//! first use and for the fingerprint the connection test shows) takes a short handshake of its
//! own ([`probe_host_key`]) that stops at key exchange and never authenticates; the real
//! connection then accepts exactly that key (or the pinned one), so no credential is sent to
//! a server whose key was not decided on first. Once a full key is pinned, connections verify
//! it directly and the probe is skipped. Host certificates are refused: nothing here verifies
//! a certificate authority, so a certificate host key proves nothing we could check.
//!
//! Owns: turning transport, host-key and auth failures into [`SshError`], whose messages
//! name the host and the cause but never a secret.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use russh::Channel;
use russh::client::{ChannelOpenHandle, Handle, Msg, Session};
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use secrecy::ExposeSecret;
use tokio::sync::oneshot;

use crate::domain::{AuthType, HostKeyCheck, ServerDraft};
pub mod exec;
pub mod known_hosts;

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
                | SshError::KnownHostsRefused { .. }
                | SshError::HostKeyRejected { .. }
                | SshError::HostCertificate { .. }
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
            preferred: russh::Preferred {
                cipher: std::borrow::Cow::Borrowed(cipher_order()),
                ..Default::default()
            },
            ..Default::default()
        }
    }
}

/// The ciphers offered, best first. On a CPU with AES instructions AES-GCM comes first, as in
/// Go's `x/crypto/ssh`: both ends then encrypt and authenticate in hardware, where
/// chacha20-poly1305 runs in software on both (OpenSSH's own Poly1305, ring's portable one)
/// and was most of the CPU a job printing a lot cost here, on both sides of the channel.
/// Every cipher offered is an AEAD or CTR mode that OpenSSH offers by default.
fn cipher_order() -> &'static [russh::cipher::Name] {
    use russh::cipher::{
        AES_128_CTR, AES_128_GCM, AES_192_CTR, AES_256_CTR, AES_256_GCM, CHACHA20_POLY1305,
    };
    const HARDWARE_AES: &[russh::cipher::Name] = &[
        AES_256_GCM,
        AES_128_GCM,
        CHACHA20_POLY1305,
        AES_256_CTR,
        AES_192_CTR,
        AES_128_CTR,
    ];
    const SOFTWARE: &[russh::cipher::Name] = &[
        CHACHA20_POLY1305,
        AES_256_GCM,
        AES_128_GCM,
        AES_256_CTR,
        AES_192_CTR,
        AES_128_CTR,
    ];
    if hardware_aes() {
        HARDWARE_AES
    } else {
        SOFTWARE
    }
}

/// The CPU has AES and carry-less multiply instructions (what AES-GCM runs fast on).
pub fn hardware_aes() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
            && std::arch::is_aarch64_feature_detected!("pmull")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
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
    /// The known_hosts file revokes the key, or cannot vouch for the host (see
    /// [`known_hosts`]).
    #[error("host key for {addr} refused by {file}: {reason}")]
    KnownHostsRefused {
        /// `host:port`.
        addr: String,
        /// The known_hosts file.
        file: String,
        /// Why, with the line.
        reason: String,
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
    /// The server identified itself with a host certificate, which is never accepted.
    #[error(
        "host {addr} presented a host certificate, which is refused (certificates are not \
         verified): configure the server to offer a plain host key"
    )]
    HostCertificate {
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

/// [`SshError::Protocol`].
fn protocol(addr: impl Into<String>, reason: impl Into<String>) -> SshError {
    let (addr, reason) = (addr.into(), reason.into());
    SshError::Protocol { addr, reason }
}

/// [`SshError::Timeout`].
fn timeout(addr: impl Into<String>, secs: u64, stage: &'static str) -> SshError {
    let addr = addr.into();
    SshError::Timeout { addr, secs, stage }
}

/// Where to connect and as whom.
#[derive(Clone, Debug)]
pub struct SshTarget {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Login user.
    pub user: String,
    /// Credentials (their `Debug` shows no secret: `secrecy` redacts it).
    auth: AuthKind,
    /// Pinned key: a full OpenSSH key line or a `SHA256:` fingerprint.
    pub pinned: Option<String>,
    /// Host key policy.
    pub check: HostKeyCheck,
}

#[derive(Clone, Debug)]
enum AuthKind {
    Password(secrecy::SecretString),
    Key {
        key: secrecy::SecretString,
        passphrase: Option<secrecy::SecretString>,
    },
}

impl SshTarget {
    /// The target a server record describes.
    pub fn from_server(server: &ServerDraft) -> Result<Self, SshError> {
        let secrets = &server.secrets;
        let missing = |what: &str| SshError::BadKey(format!("no {what} is stored"));
        let auth = match server.auth_type {
            AuthType::Password => AuthKind::Password(
                secrets
                    .password
                    .clone()
                    .ok_or_else(|| missing("password"))?,
            ),
            AuthType::Key => AuthKind::Key {
                key: (secrets.private_key.clone()).ok_or_else(|| missing("private key"))?,
                passphrase: secrets.private_key_passphrase.clone(),
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
}

/// A key as pinned: `TYPE BASE64`, without a comment.
pub fn openssh_line(key: &PublicKey) -> String {
    key.to_openssh()
        .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// An authenticated connection and the host key it was made with.
pub struct Connection {
    /// The client: a cheap clone over one SSH connection.
    pub client: Client,
    /// The server's key, as verified on this connection.
    pub host_key: PublicKey,
}

/// An authenticated SSH connection (a russh client session): clones share it, and channels
/// opened on it run side by side.
#[derive(Clone)]
pub struct Client {
    handle: Arc<Handle<KeyVerifier>>,
    addr: SocketAddr,
    cipher: Arc<std::sync::OnceLock<russh::cipher::Name>>,
}

/// What a command run with [`Client::execute`] printed on stdout, and its exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Executed {
    /// Its stdout, lossily decoded.
    pub stdout: String,
    /// Its exit status.
    pub exit_status: u32,
}

impl Client {
    /// The cipher the connection's key exchange agreed on (`aes256-gcm@openssh.com`, …).
    pub fn cipher(&self) -> Option<&str> {
        self.cipher.get().map(AsRef::as_ref)
    }

    /// Open a session channel (once; [`exec::open_channel`] retries refusals).
    pub async fn channel_open_session(&self) -> Result<Channel<Msg>, russh::Error> {
        self.handle.channel_open_session().await
    }

    /// Run `command` on a channel of its own, and collect its stdout and exit status
    /// (stderr is discarded). A command that ends without an exit status is an error.
    pub async fn execute(&self, command: &str) -> Result<Executed, SshError> {
        let ran = exec::collect(self, command.to_string()).await?;
        let Some(exec::ExecEnd::Exited(status)) = ran.end else {
            return Err(protocol(
                self.addr.to_string(),
                format!("{command:?} ended without an exit status"),
            ));
        };
        Ok(Executed {
            stdout: String::from_utf8_lossy(&ran.stdout).into_owned(),
            exit_status: u32::try_from(status).unwrap_or(u32::MAX),
        })
    }

    /// Say goodbye to the server (`SSH_MSG_DISCONNECT`); the connection then ends. Fails
    /// only when the connection is already gone.
    pub async fn disconnect(&self) -> Result<(), russh::Error> {
        self.handle
            .disconnect(russh::Disconnect::ByApplication, "", "")
            .await
    }

    /// Whether the connection is gone.
    pub fn is_closed(&self) -> bool {
        self.handle.is_closed()
    }

    /// The address connected to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// The client side of a handshake: decides on the server's key. `expected` is accepted and
/// anything else refused; with `seen` set (the probe), the plain key presented is sent there
/// and the handshake stops. A host certificate is always refused.
struct KeyVerifier {
    expected: Option<PublicKey>,
    seen: Option<oneshot::Sender<PublicKey>>,
    /// The cipher the first key exchange agreed on.
    cipher: Arc<std::sync::OnceLock<russh::cipher::Name>>,
}

/// Handler methods for channels the server opens, each refusing the channel (the reply is
/// dropped unanswered, which russh sends as a refusal). Arguments: the types between the
/// channel and the reply.
macro_rules! refuse_channels {
    ($($name:ident($($arg:ty),*);)*) => {$(
        async fn $name(
            &mut self,
            _: Channel<Msg>,
            $(_: $arg,)*
            _: ChannelOpenHandle,
            _: &mut Session,
        ) -> Result<(), Self::Error> {
            Ok(())
        }
    )*};
}

impl russh::client::Handler for KeyVerifier {
    /// Why a handshake stopped: a `russh::Error`, or else a host certificate refused.
    type Error = anyhow::Error;

    async fn check_server_key(
        &mut self,
        presented: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let PublicKeyOrCertificate::PublicKey { key, .. } = presented else {
            return Err(anyhow::anyhow!("host certificate refused"));
        };
        if let Some(tx) = self.seen.take() {
            let _ = tx.send(key.clone());
        }
        Ok(self
            .expected
            .as_ref()
            .is_some_and(|k| k.key_data() == key.key_data()))
    }

    async fn kex_done(
        &mut self,
        _: Option<&[u8]>,
        names: &russh::Names,
        _: &mut Session,
    ) -> Result<(), Self::Error> {
        let _ = self.cipher.set(names.cipher);
        Ok(())
    }

    // Channels are only ever opened by us: every kind the server may open towards the client
    // is refused (dropping the reply refuses), where russh's defaults accept them.
    refuse_channels! {
        server_channel_open_session();
        server_channel_open_direct_tcpip(&str, u32, &str, u32);
        server_channel_open_direct_streamlocal(&str);
        server_channel_open_forwarded_tcpip(&str, u32, &str, u32);
        server_channel_open_forwarded_streamlocal(&str);
        server_channel_open_agent_forward();
        server_channel_open_x11(&str, u32);
    }
}

fn classify_handshake(addr: &str, e: anyhow::Error) -> SshError {
    match e.downcast::<russh::Error>() {
        Ok(e) => classify_russh(addr, e),
        Err(_) => SshError::HostCertificate {
            addr: addr.to_string(),
        },
    }
}

/// Learn the key a server presents, without authenticating.
pub async fn probe_host_key(target: &SshTarget, opts: &SshOptions) -> Result<PublicKey, SshError> {
    let addr = target.addr();
    let deadline = opts.connect_timeout;
    let work = async {
        let sockaddr = resolve(target).await?;
        let (tx, mut rx) = oneshot::channel();
        // Accepts nothing: the probe never authenticates, and the refusal ends the handshake.
        let handler = KeyVerifier {
            expected: None,
            seen: Some(tx),
            cipher: Arc::default(),
        };
        let config = Arc::new(opts.russh_config());
        let ended = russh::client::connect(config, sockaddr, handler).await;
        match (rx.try_recv(), ended) {
            (Ok(key), _) => Ok(key),
            (Err(_), Err(e)) => Err(classify_handshake(&addr, e)),
            (Err(_), Ok(_)) => Err(protocol(
                &addr,
                format!("{CLOSED} before presenting a host key"),
            )),
        }
    };
    tokio::time::timeout(deadline, work)
        .await
        .unwrap_or_else(|_| Err(timeout(target.addr(), deadline.as_secs(), "key exchange")))
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
/// one the probe saw. Fails before authentication when the server's key differs from the pin,
/// or (trust on first use) when the known_hosts file refuses it: it lists other keys for the
/// host (servers with no pin only), revokes the key, or cannot be read for this host.
async fn expected_key(target: &SshTarget, opts: &SshOptions) -> Result<PublicKey, SshError> {
    let tofu = target.check == HostKeyCheck::Tofu;
    let key = match &target.pinned {
        // A full key is accepted as it is; a fingerprint, by the key the probe sees.
        Some(pinned) if tofu => match PublicKey::from_openssh(pinned) {
            Ok(key) => key,
            Err(_) => {
                let seen = probe_host_key(target, opts).await?;
                unchanged(target.addr(), pinned_fingerprint(pinned), seen)?
            }
        },
        _ => probe_host_key(target, opts).await?,
    };
    if let (true, Some(file)) = (tofu, &opts.known_hosts) {
        let text = match tokio::fs::read_to_string(file).await {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                return Err(protocol(
                    target.addr(),
                    format!("cannot read {}: {e}", file.display()),
                ));
            }
        };
        let file = file.display().to_string();
        match known_hosts::check(&text, &target.host, target.port, &key) {
            Ok(known_hosts::Listed::Other) if target.pinned.is_none() => {
                return Err(SshError::HostKeyUnknown {
                    addr: target.addr(),
                    file,
                    presented: fingerprint(&key),
                });
            }
            Ok(_) => {}
            Err(refusal) => {
                return Err(SshError::KnownHostsRefused {
                    addr: target.addr(),
                    file,
                    reason: refusal.to_string(),
                });
            }
        }
    }
    Ok(key)
}

/// `seen`, if its fingerprint is `pinned`; otherwise [`SshError::HostKeyChanged`].
fn unchanged(addr: String, pinned: String, seen: PublicKey) -> Result<PublicKey, SshError> {
    let presented = fingerprint(&seen);
    if pinned != presented {
        return Err(SshError::HostKeyChanged {
            addr,
            pinned,
            presented,
        });
    }
    Ok(seen)
}

/// Connect and authenticate, verifying the host key before any credential is sent.
pub async fn connect(target: &SshTarget, opts: &SshOptions) -> Result<Connection, SshError> {
    connect_claiming(target, opts, |_| async { Ok::<(), SshError>(()) }).await
}

/// [`connect`], calling `claim` with the one key the handshake will accept once it is known
/// and before any credential is sent: an error from `claim` ends the attempt there. A
/// worker's first connection pins the key this way (`actors::host`), so a connection whose
/// key lost a pinning race never authenticates.
pub async fn connect_claiming<E, F, Fut>(
    target: &SshTarget,
    opts: &SshOptions,
    claim: F,
) -> Result<Connection, E>
where
    E: From<SshError>,
    F: FnOnce(PublicKey) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
{
    let started = Instant::now();
    let key = expected_key(target, opts).await?;
    claim(key.clone()).await?;
    Ok(handshake_and_login(target, opts, key, started).await?)
}

/// The handshake accepting `key` alone, then the login, within what is left of the connect
/// timeout counted from `started`.
async fn handshake_and_login(
    target: &SshTarget,
    opts: &SshOptions,
    key: PublicKey,
    started: Instant,
) -> Result<Connection, SshError> {
    let remaining = opts.connect_timeout.saturating_sub(started.elapsed());
    let addr = target.addr();
    let attempt = async {
        let sockaddr = resolve(target).await?;
        let cipher = Arc::default();
        let handler = KeyVerifier {
            expected: Some(key.clone()),
            seen: None,
            cipher: Arc::clone(&cipher),
        };
        let mut handle = russh::client::connect(Arc::new(opts.russh_config()), sockaddr, handler)
            .await
            .map_err(|e| classify_handshake(&addr, e))?;
        authenticate(&mut handle, target).await?;
        Ok(Client {
            handle: Arc::new(handle),
            addr: sockaddr,
            cipher,
        })
    };
    match tokio::time::timeout(remaining, attempt).await {
        Ok(Ok(client)) => Ok(Connection {
            client,
            host_key: key,
        }),
        // The pinned key was refused in the handshake (before any credential): learn what
        // the server presents now, to name both keys.
        Ok(Err(SshError::HostKeyRejected { addr })) if target.pinned.is_some() => {
            let changed = match probe_host_key(target, opts).await {
                Ok(seen) => unchanged(addr.clone(), fingerprint(&key), seen).err(),
                Err(_) => None,
            };
            Err(changed.unwrap_or(SshError::HostKeyRejected { addr }))
        }
        Ok(Err(other)) => Err(other),
        Err(_) => Err(timeout(
            addr,
            opts.connect_timeout.as_secs(),
            "authentication",
        )),
    }
}

/// Log in with the target's password or key.
async fn authenticate(
    handle: &mut Handle<KeyVerifier>,
    target: &SshTarget,
) -> Result<(), SshError> {
    let addr = target.addr();
    let (method, result) = match &target.auth {
        AuthKind::Password(pw) => (
            "password",
            handle
                .authenticate_password(&target.user, pw.expose_secret())
                .await,
        ),
        AuthKind::Key { key, passphrase } => {
            let key = russh::keys::decode_secret_key(
                key.expose_secret(),
                passphrase.as_ref().map(|p| p.expose_secret()),
            )
            .map_err(|e| SshError::BadKey(key_error(&e)))?;
            // RSA keys sign with the best hash the server announces (SHA-1 if it says none).
            let hash = handle
                .best_supported_rsa_hash()
                .await
                .map_err(|e| classify_russh(&addr, e))?
                .flatten();
            let key = PrivateKeyWithHashAlg::new(Arc::new(key), hash);
            (
                "key",
                handle.authenticate_publickey(&target.user, key).await,
            )
        }
    };
    if result.map_err(|e| classify_russh(&addr, e))?.success() {
        Ok(())
    } else {
        Err(SshError::AuthRejected {
            addr,
            user: target.user.clone(),
            method,
        })
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
        russh::Error::ConnectionTimeout => timeout(addr, 0, "connect"),
        russh::Error::Disconnect | russh::Error::HUP => protocol(addr, CLOSED),
        russh::Error::KeepaliveTimeout => {
            protocol(addr, "the connection was lost (keepalives went unanswered)")
        }
        other => protocol(addr, other.to_string()),
    }
}

/// Why a connection ended that the server closed.
const CLOSED: &str = "the server closed the connection";

fn classify_io(addr: &str, e: &std::io::Error) -> SshError {
    use std::io::ErrorKind as K;
    let addr = addr.to_string();
    match e.kind() {
        K::ConnectionRefused => SshError::Refused { addr },
        K::HostUnreachable | K::NetworkUnreachable | K::AddrNotAvailable => {
            let reason = e.to_string();
            SshError::Unreachable { addr, reason }
        }
        K::TimedOut => timeout(addr, 0, "connect"),
        K::ConnectionReset | K::UnexpectedEof | K::BrokenPipe => protocol(addr, CLOSED),
        _ => protocol(addr, e.to_string()),
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
        let result = conn.client.execute("true").await;
        let _ = conn.client.disconnect().await;
        let status = result?.exit_status;
        if status != 0 {
            return Err(protocol(
                target.addr(),
                format!("`true` exited with status {status}"),
            ));
        }
        Ok(conn.host_key)
    })
    .await
    .unwrap_or_else(|_| Err(timeout(target.addr(), bound.as_secs(), "connection test")));
    let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let (host_key_fingerprint, error, host_key, failure) = match outcome {
        Ok(key) => {
            let line = Some(openssh_line(&key)).filter(|l| !l.is_empty());
            (Some(fingerprint(&key)), None, line, None)
        }
        // A changed key is named: the caller may accept it.
        Err(err) => {
            let presented = match &err {
                SshError::HostKeyChanged { presented, .. } => Some(presented.clone()),
                _ => None,
            };
            (presented, Some(err.to_string()), None, Some(err))
        }
    };
    TestReport {
        ok: error.is_none(),
        latency_ms,
        host_key_fingerprint,
        error,
        host_key,
        failure,
    }
}

#[cfg(test)]
mod tests {
    use russh::client::Handler;
    use russh::keys::ssh_key::certificate::{Builder, CertType};
    use russh::keys::{Algorithm, PrivateKey};

    use super::*;

    #[tokio::test]
    async fn a_host_certificate_is_refused_even_for_the_expected_key() {
        let random = || PrivateKey::random(&mut russh::keys::key::safe_rng(), Algorithm::Ed25519);
        let (host, ca) = (random().unwrap(), random().unwrap());
        let mut builder = Builder::new(
            vec![7u8; 32],
            host.public_key().key_data().clone(),
            0,
            u64::MAX,
        )
        .unwrap();
        builder.cert_type(CertType::Host).unwrap();
        builder.valid_principal("db.example.com").unwrap();
        let certificate = builder.sign(&ca).unwrap();
        let mut check = KeyVerifier {
            expected: Some(host.public_key().clone()),
            seen: None,
            cipher: Arc::default(),
        };
        let refused = check
            .check_server_key(&PublicKeyOrCertificate::Certificate(certificate))
            .await;
        let Err(refusal) = refused else {
            panic!("a certificate was accepted: {refused:?}");
        };
        let err = classify_handshake("db.example.com:22", refusal);
        assert!(matches!(err, SshError::HostCertificate { .. }), "{err:?}");
        assert!(err.is_permanent());
        assert!(err.to_string().contains("host certificate"), "{err}");
        // The same key, presented plainly, is the one expected.
        let plain = PublicKeyOrCertificate::PublicKey {
            key: host.public_key().clone(),
            hash_alg: None,
        };
        assert!(check.check_server_key(&plain).await.unwrap());
    }
}
