//! In-process SSH server standing in for OpenSSH `sshd` in integration tests.
//!
//! Used on machines where `/usr/sbin/sshd` is absent. It runs on the test's tokio
//! runtime (russh server side) and mimics what the product relies on from OpenSSH:
//!
//! * authentication: `none` is rejected, `password` is accepted for the configured
//!   user and password only, `publickey` for the configured user and one of the
//!   authorized keys only (the key query gets `PK_OK` and the signature is checked);
//! * `session` channels (at most [`MAX_SESSIONS`] per connection, as OpenSSH's
//!   `MaxSessions`; more are refused with "administratively prohibited");
//! * `exec` runs `/bin/sh -c <command>` (`shell` runs `/bin/sh`) in a NEW SESSION
//!   (`setsid()`), so `$$` of the shell is its process group id, as with OpenSSH;
//! * `env` requests sent before `exec` are applied to the child environment, which
//!   otherwise is a fresh login-like one (`USER`, `LOGNAME`, `HOME`, `PATH`,
//!   `SHELL`, `SSH_CLIENT`, `SSH_CONNECTION`), and the child starts in `$HOME`;
//! * client data goes to the child's stdin, client EOF closes it;
//! * stdout is streamed as channel data and stderr as extended data (type 1), as it
//!   comes and within the client's window; once both pipes are at EOF and the
//!   shell is reaped, `exit-status` (or `exit-signal` with the signal name, e.g.
//!   "TERM") is sent, then EOF, then the channel is closed;
//! * `signal` requests are delivered to the child's process group (`killpg`, as
//!   OpenSSH does);
//! * the client closing the channel or disconnecting gets the process group a
//!   SIGHUP, then a SIGKILL if it is still there shortly after;
//! * global requests such as `keepalive@openssh.com` are answered by russh (with
//!   a failure reply, as OpenSSH does).
//!
//! With [`StandInConfig::forge_stray_messages`] it also plays a hostile server: in the middle
//! of each job (when the client's first stdin byte or EOF comes) it sends messages for channel ids the
//! client never opened (see [`forge_stray_messages`]).
//!
//! Dropping [`StandIn`] stops accepting, disconnects the sessions and kills the
//! process groups still running.
//!
//! Per-connection errors never panic the server; they are written to stderr only
//! when the `TEST_LOG` environment variable is set.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::io;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use russh::keys::{PrivateKey, PublicKey};
use russh::server::{
    Auth, ChannelOpenHandle, Config, Handle, Handler, Msg, PublicKeyOffer, Session,
    VerifiedPublicKey,
};
use russh::{
    Channel, ChannelId, ChannelOpenFailure, ChannelWriteHalf, Disconnect, MethodKind, MethodSet,
    Sig,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};
use tokio::sync::{mpsc, watch};

/// Maximum number of session channels per connection (OpenSSH `MaxSessions`).
pub const MAX_SESSIONS: usize = 10;

/// Delay between the SIGHUP and the SIGKILL sent to a process group whose
/// channel was closed by the client (or whose connection went away).
const KILL_GRACE: Duration = Duration::from_millis(300);

/// Size of the buffer used to read the child's stdout / stderr.
const READ_CHUNK: usize = 32 * 1024;

/// Configuration of a [`StandIn`] server.
pub struct StandInConfig {
    /// The only user accepted.
    pub user: String,
    /// Accept password authentication with this password if `Some`.
    pub password: Option<String>,
    /// Accept public-key authentication for these keys.
    pub authorized_keys: Vec<PublicKey>,
    /// The server host key.
    pub host_key: PrivateKey,
    /// Send messages for channels the client never opened in the middle of every job.
    pub forge_stray_messages: bool,
}

/// A running stand-in SSH server listening on `127.0.0.1:port`.
pub struct StandIn {
    /// The port the server listens on (on 127.0.0.1).
    pub port: u16,
    stop: watch::Sender<bool>,
    shared: Arc<Shared>,
}

impl StandIn {
    /// Bind 127.0.0.1:0, spawn the server on the current tokio runtime, return once listening.
    pub async fn start(cfg: StandInConfig) -> io::Result<StandIn> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let port = listener.local_addr()?.port();

        // Same order as OpenSSH advertises them.
        let mut methods = MethodSet::empty();
        methods.push(MethodKind::PublicKey);
        if cfg.password.is_some() {
            methods.push(MethodKind::Password);
        }

        let config = Config {
            methods,
            auth_rejection_time: Duration::from_millis(10),
            auth_rejection_time_initial: Some(Duration::ZERO),
            keys: vec![cfg.host_key],
            inactivity_timeout: None,
            nodelay: true,
            ..Default::default()
        };

        let shared = Arc::new(Shared {
            user: cfg.user,
            password: cfg.password,
            authorized_keys: cfg.authorized_keys,
            forge_stray_messages: cfg.forge_stray_messages,
            port,
            groups: Mutex::new(HashSet::new()),
            stopping: AtomicBool::new(false),
        });

        let (stop, stop_rx) = watch::channel(false);
        tokio::spawn(accept_loop(
            listener,
            Arc::new(config),
            Arc::clone(&shared),
            stop_rx,
        ));

        Ok(StandIn { port, stop, shared })
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Stops the accept loop (which drops the listener) and makes every
        // connection task disconnect its client.
        self.stop.send_replace(true);
        // Kill what is still running, synchronously: the runtime may be about to
        // go away together with the tasks that would otherwise do it.
        let groups: Vec<i32> = self.shared.groups().iter().copied().collect();
        for pgid in groups {
            log(format_args!("stopping: killing process group {pgid}"));
            sys::killpg(pgid, sys::SIGHUP);
            sys::killpg(pgid, sys::SIGKILL);
        }
    }
}

// ---------------------------------------------------------------------------
// Server-wide state

struct Shared {
    user: String,
    password: Option<String>,
    authorized_keys: Vec<PublicKey>,
    forge_stray_messages: bool,
    port: u16,
    /// Process groups (= pids of the shells, which are session leaders) whose
    /// channel is still running. A group is removed right after its leader is
    /// reaped, so signals are never sent to a recycled pid.
    groups: Mutex<HashSet<i32>>,
    stopping: AtomicBool,
}

impl Shared {
    fn groups(&self) -> MutexGuard<'_, HashSet<i32>> {
        self.groups
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Send `sig` to process group `pgid` if it still belongs to a running channel.
    fn signal_group(&self, pgid: i32, sig: i32) -> bool {
        let groups = self.groups();
        groups.contains(&pgid) && sys::killpg(pgid, sig)
    }

    /// SIGHUP the group now, SIGKILL it after [`KILL_GRACE`] if it is still registered.
    fn hangup_group(self: &Arc<Self>, pgid: i32) {
        if !self.signal_group(pgid, sys::SIGHUP) {
            return;
        }
        // A stopped process would not act on SIGHUP.
        self.signal_group(pgid, sys::SIGCONT);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let shared = Arc::clone(self);
                rt.spawn(async move {
                    tokio::time::sleep(KILL_GRACE).await;
                    shared.signal_group(pgid, sys::SIGKILL);
                });
            }
            Err(_) => {
                self.signal_group(pgid, sys::SIGKILL);
            }
        }
    }

    fn user_ok(&self, user: &str) -> bool {
        user == self.user
    }

    fn key_ok(&self, user: &str, key: &PublicKey) -> bool {
        self.user_ok(user)
            && self
                .authorized_keys
                .iter()
                .any(|k| k.key_data() == key.key_data())
    }
}

/// Resolves once the flag is `true` or its sender is gone.
async fn raised(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|f| *f).await;
}

fn log(args: std::fmt::Arguments<'_>) {
    if std::env::var_os("TEST_LOG").is_some() {
        eprintln!("[ssh stand-in] {args}");
    }
}

// ---------------------------------------------------------------------------
// Accepting connections

async fn accept_loop(
    listener: TcpListener,
    config: Arc<Config>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            () = raised(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    tokio::spawn(serve_connection(
                        socket,
                        peer,
                        Arc::clone(&config),
                        Arc::clone(&shared),
                        stop.clone(),
                    ));
                }
                Err(e) => {
                    log(format_args!("accept failed: {e}"));
                    // E.g. EMFILE: do not spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
    log(format_args!("port {}: no longer accepting", shared.port));
}

async fn serve_connection(
    socket: TcpStream,
    peer: SocketAddr,
    config: Arc<Config>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    if let Err(e) = socket.set_nodelay(true) {
        log(format_args!("{peer}: set_nodelay failed: {e}"));
    }
    let handler = Conn {
        shared,
        peer,
        channels: HashMap::new(),
    };
    let session = tokio::select! {
        started = russh::server::run_stream(config, socket, handler) => match started {
            Ok(session) => session,
            Err(e) => {
                log(format_args!("{peer}: connection setup failed: {e}"));
                return;
            }
        },
        () = raised(&mut stop) => return,
    };
    let handle = session.handle();
    tokio::select! {
        ended = session => match ended {
            Ok(()) => log(format_args!("{peer}: connection closed")),
            Err(e) => log(format_args!("{peer}: connection ended with error: {e}")),
        },
        () = raised(&mut stop) => {
            let sent = handle
                .disconnect(
                    Disconnect::ByApplication,
                    "server shutting down".into(),
                    String::new(),
                )
                .await;
            if let Err(e) = sent {
                log(format_args!("{peer}: disconnect failed: {e}"));
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Per-connection handler

struct Conn {
    shared: Arc<Shared>,
    peer: SocketAddr,
    channels: HashMap<ChannelId, ChanState>,
}

/// State of one session channel, owned by the connection handler.
struct ChanState {
    /// Writing half of the channel, handed to the process task at exec time.
    write: Option<ChannelWriteHalf<Msg>>,
    /// Variables from `env` requests.
    env: Vec<(OsString, OsString)>,
    /// Client data received before the command started.
    early_stdin: Vec<u8>,
    /// The client sent EOF.
    client_eof: bool,
    /// Feeds the child's stdin; dropped on client EOF (which closes stdin).
    stdin: Option<mpsc::UnboundedSender<Vec<u8>>>,
    /// Process group of the running command (pid of the shell).
    pgid: Option<i32>,
    started: bool,
    /// Stray messages were sent during this channel's job.
    forged: bool,
    /// Set to `true` (or dropped) when the client closed the channel or went away:
    /// the process task then stops forwarding output.
    closed: watch::Sender<bool>,
    /// Set by the process task once it sent `CHANNEL_CLOSE` (russh then forgets the
    /// channel and `channel_close` is never called for it).
    done: Arc<AtomicBool>,
}

impl ChanState {
    fn new(write: ChannelWriteHalf<Msg>) -> Self {
        ChanState {
            write: Some(write),
            env: Vec::new(),
            early_stdin: Vec::new(),
            client_eof: false,
            stdin: None,
            pgid: None,
            started: false,
            forged: false,
            closed: watch::channel(false).0,
            done: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl Conn {
    /// Start `/bin/sh -c command` (or `/bin/sh` for a shell) for `channel`.
    fn start_process(
        &mut self,
        channel: ChannelId,
        command: Option<&[u8]>,
        session: &mut Session,
    ) -> io::Result<()> {
        if self.shared.stopping.load(Ordering::SeqCst) {
            return Err(io::Error::other("server shutting down"));
        }
        let st = self
            .channels
            .get_mut(&channel)
            .ok_or_else(|| io::Error::other("unknown channel"))?;
        if st.started {
            return Err(io::Error::other("a command already runs on this channel"));
        }
        let write = st
            .write
            .take()
            .ok_or_else(|| io::Error::other("channel already used"))?;

        let home = std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| OsString::from("/"));
        let path = std::env::var_os("PATH")
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| OsString::from("/usr/local/bin:/usr/bin:/bin"));
        let peer_ip = self.peer.ip();
        let peer_port = self.peer.port();
        let port = self.shared.port;

        let mut cmd = Command::new("/bin/sh");
        match command {
            Some(command) => {
                cmd.arg0("sh").arg("-c").arg(OsStr::from_bytes(command));
            }
            None => {
                // Login shell, as sshd starts it.
                cmd.arg0("-sh");
            }
        }
        cmd.env_clear()
            .env("USER", &self.shared.user)
            .env("LOGNAME", &self.shared.user)
            .env("HOME", &home)
            .env("PATH", &path)
            .env("SHELL", "/bin/sh")
            .env("SSH_CLIENT", format!("{peer_ip} {peer_port} {port}"))
            .env(
                "SSH_CONNECTION",
                format!("{peer_ip} {peer_port} 127.0.0.1 {port}"),
            )
            .envs(st.env.iter().map(|(k, v)| (k, v)))
            .current_dir(if std::path::Path::new(&home).is_dir() {
                home.clone()
            } else {
                OsString::from("/")
            })
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(false);
        // SAFETY: the closure only calls setsid(2), which is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                if sys::setsid() == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }

        let mut child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) => {
                st.write = Some(write);
                return Err(e);
            }
        };
        let leader = child.id().and_then(|p| i32::try_from(p).ok());
        let (Some(pgid), Some(stdin), Some(stdout), Some(stderr)) = (
            leader,
            child.stdin.take(),
            child.stdout.take(),
            child.stderr.take(),
        ) else {
            // Cannot happen (all pipes were requested and the child is not reaped).
            let _ = child.start_kill();
            return Err(io::Error::other("child spawned without pipes"));
        };
        self.shared.groups().insert(pgid);
        log(format_args!(
            "{}: channel {channel:?}: started process group {pgid}",
            self.peer
        ));

        st.started = true;
        st.pgid = Some(pgid);

        // stdin: data received so far, then whatever comes until the client's EOF.
        let (stdin_tx, stdin_rx) = mpsc::unbounded_channel();
        if !st.early_stdin.is_empty() {
            let _ = stdin_tx.send(std::mem::take(&mut st.early_stdin));
        }
        if st.client_eof {
            drop(stdin_tx);
        } else {
            st.stdin = Some(stdin_tx);
        }
        tokio::spawn(feed_stdin(stdin, stdin_rx));

        tokio::spawn(run_process(ProcessTask {
            child,
            pgid,
            stdout,
            stderr,
            write,
            handle: session.handle(),
            closed: st.closed.subscribe(),
            done: Arc::clone(&st.done),
            shared: Arc::clone(&self.shared),
        }));
        Ok(())
    }

    fn forget_channel(&mut self, channel: ChannelId) {
        if let Some(st) = self.channels.remove(&channel) {
            hang_up(&self.shared, st);
        }
    }
}

/// The client is gone from this channel: stop forwarding, close stdin, kill the group.
fn hang_up(shared: &Arc<Shared>, st: ChanState) {
    st.closed.send_replace(true);
    drop(st.stdin);
    if let Some(pgid) = st.pgid
        && !st.done.load(Ordering::SeqCst)
    {
        shared.hangup_group(pgid);
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        for (_, st) in self.channels.drain() {
            hang_up(&self.shared, st);
        }
    }
}

impl Handler for Conn {
    type Error = russh::Error;

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        Ok(Auth::reject())
    }

    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        let ok = self.shared.user_ok(user)
            && self
                .shared
                .password
                .as_deref()
                .is_some_and(|expected| expected == password);
        if !ok {
            log(format_args!(
                "{}: password rejected for {user:?}",
                self.peer
            ));
        }
        Ok(if ok { Auth::Accept } else { Auth::reject() })
    }

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        let public_key = offer.public_key;
        Ok(if self.shared.key_ok(user, public_key) {
            Auth::Accept
        } else {
            log(format_args!(
                "{}: public key {} not authorized for {user:?}",
                self.peer,
                public_key.algorithm()
            ));
            Auth::reject()
        })
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(if self.shared.key_ok(user, key.public_key) {
            Auth::Accept
        } else {
            Auth::reject()
        })
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Channels we closed ourselves are over.
        self.channels
            .retain(|_, st| !st.done.load(Ordering::SeqCst));
        if self.shared.stopping.load(Ordering::SeqCst) || self.channels.len() >= MAX_SESSIONS {
            log(format_args!(
                "{}: refusing session channel ({} open)",
                self.peer,
                self.channels.len()
            ));
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
        let id = channel.id();
        // Incoming messages are handled through the Handler callbacks; the read
        // half is dropped so that russh never waits on it.
        let (read, write) = channel.split();
        drop(read);
        self.channels.insert(id, ChanState::new(write));
        reply.accept().await;
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.forget_channel(channel);
        Ok(())
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(st) = self.channels.get_mut(&channel) {
            // A plain command sends no stdin, only EOF, right behind its exec request.
            if self.shared.forge_stray_messages && st.started && !st.forged {
                st.forged = true;
                forge_stray_messages(session)?;
            }
            st.client_eof = true;
            st.stdin = None;
        }
        Ok(())
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(st) = self.channels.get_mut(&channel) {
            if self.shared.forge_stray_messages && st.started && !st.forged {
                st.forged = true;
                forge_stray_messages(session)?;
            }
            if let Some(stdin) = &st.stdin {
                // Fails only once the child's stdin is gone: data is then discarded.
                let _ = stdin.send(data.to_vec());
            } else if !st.started && !st.client_eof {
                st.early_stdin.extend_from_slice(data);
            }
        }
        Ok(())
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        variable_name: &str,
        variable_value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        match self.channels.get_mut(&channel) {
            Some(st)
                if !st.started && !variable_name.is_empty() && !variable_name.contains('=') =>
            {
                st.env.push((variable_name.into(), variable_value.into()));
                session.channel_success(channel)
            }
            _ => session.channel_failure(channel),
        }
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        match self.start_process(channel, Some(data), session) {
            Ok(()) => session.channel_success(channel),
            Err(e) => {
                log(format_args!("{}: exec failed: {e}", self.peer));
                session.channel_failure(channel)
            }
        }
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        match self.start_process(channel, None, session) {
            Ok(()) => session.channel_success(channel),
            Err(e) => {
                log(format_args!("{}: shell failed: {e}", self.peer));
                session.channel_failure(channel)
            }
        }
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // No pseudo-terminals here: the client goes on without one.
        session.channel_failure(channel)
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }

    async fn signal(
        &mut self,
        channel: ChannelId,
        signal: Sig,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let delivered = match (
            self.channels.get(&channel).and_then(|st| st.pgid),
            sig_number(&signal),
        ) {
            (Some(pgid), Some(sig)) => {
                log(format_args!(
                    "{}: channel {channel:?}: signal {signal:?} to group {pgid}",
                    self.peer
                ));
                self.shared.signal_group(pgid, sig)
            }
            _ => {
                log(format_args!(
                    "{}: channel {channel:?}: signal {signal:?} not delivered",
                    self.peer
                ));
                false
            }
        };
        if delivered {
            session.channel_success(channel)
        } else {
            session.channel_failure(channel)
        }
    }
}

/// Messages for channel ids the client never opened: `CHANNEL_OPEN_FAILURE` for id 4242,
/// and an unsolicited session channel open whose `CHANNEL_EOF` and `CHANNEL_CLOSE` are sent
/// before the client answers, so they reach it addressed to channel 0 (russh's client numbers
/// its channels from 2). A client that accepted the unsolicited channel would get its
/// confirmation refused (the channel is gone by then) and lose the connection.
///
/// (russh's server addresses data and exit statuses only to channels the client confirmed,
/// so those cannot be forged with it.)
fn forge_stray_messages(session: &mut Session) -> Result<(), russh::Error> {
    use russh::keys::ssh_encoding::Decode;
    let never_opened = ChannelId::decode(&mut &4242u32.to_be_bytes()[..])
        .map_err(|e| russh::Error::IO(io::Error::other(e.to_string())))?;
    session.channel_open_failure(
        never_opened,
        ChannelOpenFailure::ConnectFailed,
        "forged",
        "en",
    )?;
    let unsolicited = session.channel_open_session()?;
    session.eof(unsolicited)?;
    session.close(unsolicited)?;
    log(format_args!(
        "sent messages for channels the client never opened"
    ));
    Ok(())
}

// ---------------------------------------------------------------------------
// Running the command

async fn feed_stdin(mut stdin: ChildStdin, mut rx: mpsc::UnboundedReceiver<Vec<u8>>) {
    while let Some(chunk) = rx.recv().await {
        if stdin.write_all(&chunk).await.is_err() {
            // The child closed its stdin (or died): discard the rest.
            return;
        }
    }
    // Client EOF (or channel gone): dropping `stdin` closes the pipe.
    let _ = stdin.shutdown().await;
}

struct ProcessTask {
    child: Child,
    pgid: i32,
    stdout: ChildStdout,
    stderr: ChildStderr,
    write: ChannelWriteHalf<Msg>,
    handle: Handle,
    closed: watch::Receiver<bool>,
    done: Arc<AtomicBool>,
    shared: Arc<Shared>,
}

async fn run_process(task: ProcessTask) {
    let ProcessTask {
        mut child,
        pgid,
        stdout,
        stderr,
        write,
        handle,
        closed,
        done,
        shared,
    } = task;
    let id = write.id();

    // All output first (both pipes at EOF)...
    tokio::join!(
        pump(stdout, &write, None, closed.clone()),
        pump(stderr, &write, Some(1), closed.clone()),
    );
    // ...then the shell's status. It stayed a zombie until now, so its pid could
    // not be reused while registered as a process group.
    let status = child.wait().await;
    shared.groups().remove(&pgid);

    let client_closed = *closed.borrow();
    log(format_args!(
        "channel {id:?}: process group {pgid} finished: {status:?}{}",
        if client_closed {
            " (channel closed by client)"
        } else {
            ""
        }
    ));
    if client_closed {
        done.store(true, Ordering::SeqCst);
        return;
    }

    match status {
        Ok(status) => send_exit(&write, &handle, status).await,
        Err(e) => log(format_args!("channel {id:?}: wait failed: {e}")),
    }
    let _ = write.eof().await;
    let _ = write.close().await;
    done.store(true, Ordering::SeqCst);
}

/// Forward one of the child's pipes to the channel until EOF. Once the client is
/// gone from the channel, keep reading (so the child never blocks on a full pipe)
/// but discard.
async fn pump<R: AsyncRead + Unpin>(
    mut pipe: R,
    write: &ChannelWriteHalf<Msg>,
    ext: Option<u32>,
    mut closed: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; READ_CHUNK];
    let mut forward = true;
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        if !forward {
            continue;
        }
        let chunk = buf.get(..n).unwrap_or_default().to_vec();
        let send = async {
            match ext {
                None => write.data_bytes(chunk).await,
                Some(ext) => write.extended_data_bytes(ext, chunk).await,
            }
        };
        // Sending waits for the client's window; give up if the client goes away.
        tokio::select! {
            sent = send => forward = sent.is_ok(),
            () = raised(&mut closed) => forward = false,
        }
    }
}

async fn send_exit(write: &ChannelWriteHalf<Msg>, handle: &Handle, status: ExitStatus) {
    let id = write.id();
    if let Some(code) = status.code() {
        let _ = write.exit_status(u32::try_from(code).unwrap_or(255)).await;
    } else if let Some(sig) = status.signal() {
        let _ = handle
            .exit_signal_request(
                id,
                signal_from_number(sig),
                status.core_dumped(),
                String::new(),
                String::new(),
            )
            .await;
    } else {
        let _ = write.exit_status(255).await;
    }
}

// ---------------------------------------------------------------------------
// Signals (names as in OpenSSH's sig2name / name2sig)

fn sig_number(sig: &Sig) -> Option<i32> {
    Some(match sig {
        Sig::ABRT => sys::SIGABRT,
        Sig::ALRM => sys::SIGALRM,
        Sig::FPE => sys::SIGFPE,
        Sig::HUP => sys::SIGHUP,
        Sig::ILL => sys::SIGILL,
        Sig::INT => sys::SIGINT,
        Sig::KILL => sys::SIGKILL,
        Sig::PIPE => sys::SIGPIPE,
        Sig::QUIT => sys::SIGQUIT,
        Sig::SEGV => sys::SIGSEGV,
        Sig::TERM => sys::SIGTERM,
        Sig::USR1 => sys::SIGUSR1,
        Sig::Custom(name) if name == "USR2" => sys::SIGUSR2,
        Sig::Custom(_) => return None,
    })
}

fn signal_from_number(sig: i32) -> Sig {
    match sig {
        sys::SIGABRT => Sig::ABRT,
        sys::SIGALRM => Sig::ALRM,
        sys::SIGFPE => Sig::FPE,
        sys::SIGHUP => Sig::HUP,
        sys::SIGILL => Sig::ILL,
        sys::SIGINT => Sig::INT,
        sys::SIGKILL => Sig::KILL,
        sys::SIGPIPE => Sig::PIPE,
        sys::SIGQUIT => Sig::QUIT,
        sys::SIGSEGV => Sig::SEGV,
        sys::SIGTERM => Sig::TERM,
        sys::SIGUSR1 => Sig::USR1,
        sys::SIGUSR2 => Sig::Custom("USR2".into()),
        _ => Sig::Custom("SIG@openssh.com".into()),
    }
}

/// The two libc functions needed, declared directly (std links libc anyway), so
/// the tests need no extra dependency.
mod sys {
    mod ffi {
        unsafe extern "C" {
            pub fn setsid() -> i32;
            pub fn kill(pid: i32, sig: i32) -> i32;
        }
    }

    /// `setsid(2)`: returns -1 on failure. Async-signal-safe (usable in `pre_exec`).
    pub fn setsid() -> i32 {
        // SAFETY: plain system call without pointers.
        unsafe { ffi::setsid() }
    }

    /// `killpg(pgid, sig)`; false if it failed (e.g. no such group any more).
    pub fn killpg(pgid: i32, sig: i32) -> bool {
        if pgid <= 1 {
            return false;
        }
        // SAFETY: plain system call without pointers; a negative pid addresses
        // the process group, and pgid > 1 so this never means "all processes".
        unsafe { ffi::kill(-pgid, sig) == 0 }
    }

    pub const SIGHUP: i32 = 1;
    pub const SIGINT: i32 = 2;
    pub const SIGQUIT: i32 = 3;
    pub const SIGILL: i32 = 4;
    pub const SIGABRT: i32 = 6;
    pub const SIGFPE: i32 = 8;
    pub const SIGKILL: i32 = 9;
    pub const SIGSEGV: i32 = 11;
    pub const SIGPIPE: i32 = 13;
    pub const SIGALRM: i32 = 14;
    pub const SIGTERM: i32 = 15;
    #[cfg(any(target_os = "linux", target_os = "android"))]
    pub const SIGUSR1: i32 = 10;
    #[cfg(any(target_os = "linux", target_os = "android"))]
    pub const SIGUSR2: i32 = 12;
    #[cfg(any(target_os = "linux", target_os = "android"))]
    pub const SIGCONT: i32 = 18;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    pub const SIGUSR1: i32 = 30;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    pub const SIGUSR2: i32 = 31;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    pub const SIGCONT: i32 = 19;
}
