//! Running one job on a remote host over an SSH session channel, and stopping it.
//!
//! # The bootstrap
//!
//! Every job runs as a fixed `/bin/sh` bootstrap ([`build`]) that, before any of the user's
//! code runs:
//!
//! 1. (scripts only) makes a private temporary file (`mktemp`, mode 0600);
//! 2. prints one preamble line on stdout: `JOBEXEC <pgid> [<tmpfile>]`, where `<pgid>` is the
//!    shell's own pid (`$$`): sshd makes the shell of every exec channel a session and
//!    process-group leader, so that is the id of the job's process group;
//! 3. (scripts, and commands with secret parameters) reads a gate: `IFS= read -r _gate`
//!    reads one line from stdin, which orders what follows on stdin (secret values, then a
//!    script's bytes). A plain command reads nothing: its stdin is at EOF from the start.
//!
//! [`run`] writes the stdin (the gate line and secret values; for scripts, then exactly the
//! script's bytes, which `head -c` copies into the temporary file) and EOF right behind the
//! exec request, without waiting for the preamble. A plain command has no stdin to write, so
//! once the channel is open it costs one round trip; the others wait one more for sshd to open
//! the session's window (it does once the command has started). `run` reads and strips the
//! preamble and emits [`ExecEvent::Started`] before any of the job's output.
//!
//! The user's code may therefore start before the client has seen the preamble. What the
//! client relies on instead:
//! - any failure after the exec request counts as "may have run": the worker never runs
//!   such a job again on its own (only a job submitted `retry_safe` is queued again when its
//!   worker is lost);
//! - a cancel or a timeout that comes before `Started` waits for the preamble (or the
//!   channel's end) and then kills the group, so it reaches the process group whenever the
//!   command started;
//! - a channel that closes without a preamble ran none of the user's code: a channel's data
//!   comes before its end, and the preamble comes before the user's code.
//!
//! Commands end with `eval '<line>'` in the bootstrap shell, so the user's line keeps the pid
//! (and the process group), its exit status is the user's own, and a syntax error in it is
//! reported by the shell (exit 2, message on stderr) after the preamble, never breaking it.
//! (`eval` instead of `exec /bin/sh -c` saves a shell start per job.)
//! Scripts are never pasted into a command line (so they are not visible in `ps` and have no
//! size limit): they travel over stdin into the temporary file, which `<shell>` then runs with
//! the user's arguments; the bootstrap removes the file and exits with the script's status.
//!
//! Everything the user gave (command line, environment values, working directory, shell) is
//! single-quoted; the whole bootstrap is itself passed as `exec /bin/sh -c '<bootstrap>'`, so
//! it runs under `/bin/sh` whatever the login shell is (as long as the login shell
//! understands POSIX single quotes, as sh, bash, dash, ksh and zsh do).
//!
//! # Killing
//!
//! The SSH `signal` request is unreliable (OpenSSH ignores it on many versions), so
//! [`kill_group`] runs `kill` against the process group over a fresh channel: TERM, a grace
//! period, then KILL, and it removes the script's temporary file (a KILLed bootstrap cannot).
//!
//! # Channels
//!
//! sshd refuses new session channels beyond `MaxSessions` (10 by default) per connection and may
//! hold a slot until the session's processes are gone; [`open_channel`] retries refusals with a
//! short backoff.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use russh::client::Msg;
use russh::{Channel, ChannelMsg, ChannelWriteHalf, Sig};
use tokio::sync::mpsc;

use super::{Client, SshError, classify_russh, protocol};

/// What a job runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteWork {
    /// `line` is the user's command line (the seed's `command + " " + args`), run by
    /// `/bin/sh -c`.
    Command {
        /// The command line, shell syntax.
        line: String,
    },
    /// A script given whole; run by `shell` (absolute path) with `args` (a string, split by
    /// the shell into `$1`…).
    Script {
        /// Absolute path of the interpreter, e.g. `/bin/bash`.
        shell: String,
        /// The script's bytes, passed unchanged.
        script: Vec<u8>,
        /// Arguments, shell syntax (split, expanded and unquoted by `/bin/sh`).
        args: String,
    },
}

/// A job as the remote side runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteJob {
    /// What to run.
    pub work: RemoteWork,
    /// Extra environment variables, exported before the user's code runs.
    pub env: BTreeMap<String, String>,
    /// Environment variables that must not show on the remote host's process list (secret
    /// parameters): they travel on stdin after the gate, never on the command line.
    pub secret_env: BTreeMap<String, String>,
    /// Working directory; relative paths are relative to the login directory, and `~` or
    /// `~/…` are relative to `$HOME`. `None` keeps the login directory.
    pub cwd: Option<String>,
}

/// What [`run`] reports while the job runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    /// The remote process group exists and the user's code has NOT started yet.
    Started {
        /// The job's process group id (its session leader's pid).
        pgid: i64,
        /// The temporary file holding a script (script jobs only); pass it to [`kill_group`].
        tmpfile: Option<String>,
    },
    /// Bytes the job wrote on stdout, unchanged and unbuffered (shared, not copied, by
    /// whoever passes them on).
    Stdout(Arc<[u8]>),
    /// Bytes the job wrote on stderr, unchanged and unbuffered.
    Stderr(Arc<[u8]>),
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEnd {
    /// The job's shell exited with this status. A script whose interpreter dies of a signal
    /// ends `Exited(128 + n)` (the bootstrap that removes its file outlives it), unless the
    /// whole group was killed.
    Exited(i32),
    /// The job's shell was killed by this signal, named without `SIG` (e.g. `"TERM"`).
    Signaled(String),
}

/// Exit status of the bootstrap when it cannot set up the job (gate closed, temporary file
/// unusable, script truncated).
pub const BOOTSTRAP_FAILED: i32 = 125;

/// Exit status when the working directory cannot be entered.
pub const CWD_FAILED: i32 = 126;

/// First word of the preamble line.
const PREAMBLE_TAG: &str = "JOBEXEC";

/// Bytes of stdout/stderr accepted before the preamble (login-script noise) before giving up.
const PREAMBLE_LIMIT: usize = 64 * 1024;

/// Channel-open attempts, and the backoff between them.
const OPEN_ATTEMPTS: u32 = 10;
const OPEN_BACKOFF_FIRST: Duration = Duration::from_millis(20);
const OPEN_BACKOFF_MAX: Duration = Duration::from_millis(500);

/// Tenths of a second [`kill_group`] waits, after KILL, for the group to be gone.
const POST_KILL_TENTHS: u32 = 10;

/// Address used in errors of [`run`], which sees only a channel.
const UNKNOWN_ADDR: &str = "the remote host";

/// Why no exec line can be built from the input; names the field at fault. Nothing has run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// A text that goes into the command line holds a NUL character.
    #[error("{0} must not contain a NUL character")]
    Nul(String),
    /// `cwd` is the empty string.
    #[error("cwd must not be empty")]
    EmptyCwd,
    /// An environment name outside `[A-Za-z_][A-Za-z0-9_]*`.
    #[error(
        "invalid environment variable name {0:?}: use letters, digits and _, not starting \
         with a digit"
    )]
    EnvName(String),
    /// The command is blank.
    #[error("the command is empty")]
    EmptyCommand,
    /// The script's shell is not an absolute path.
    #[error("shell must be an absolute path, not {0:?}")]
    RelativeShell(String),
    /// A process group that must never be signalled (0 or 1).
    #[error("refusing to kill process group {0}")]
    ProcessGroup(i64),
    /// The owner of an orphaned group is not a job id.
    #[error("{0:?} is not a job id")]
    JobId(String),
    /// The script's temporary file is not an absolute path.
    #[error("tmpfile must be an absolute path")]
    RelativeTmpfile,
}

/// Open a session channel, retrying refusals with backoff.
///
/// A refusal (`SSH_MSG_CHANNEL_OPEN_FAILURE`, e.g. sshd's `MaxSessions` reached) is retried up
/// to 10 times, waiting 20 ms, then twice as long each time up to 500 ms (about 2.6 s in all);
/// only then is it an error. Any other failure (the connection is gone) is returned at once.
pub async fn open_channel(client: &Client) -> Result<Channel<Msg>, SshError> {
    let mut delay = OPEN_BACKOFF_FIRST;
    let mut attempt = 1;
    loop {
        match client.channel_open_session().await {
            Ok(channel) => return Ok(channel),
            Err(russh::Error::ChannelOpenFailure(why)) => {
                if attempt >= OPEN_ATTEMPTS {
                    return Err(protocol(
                        client.addr().to_string(),
                        format!(
                            "the server refused a new session channel {attempt} times \
                             (last reason: {why:?}); too many sessions on one connection?"
                        ),
                    ));
                }
                tracing::debug!(attempt, ?why, "session channel refused; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(OPEN_BACKOFF_MAX);
                attempt += 1;
            }
            Err(e) => return Err(classify_russh(&client.addr().to_string(), e)),
        }
    }
}

fn exit_of(msg: &ChannelMsg) -> Option<ExecEnd> {
    match msg {
        ChannelMsg::ExitStatus { exit_status } => Some(ExecEnd::Exited(
            i32::try_from(*exit_status).unwrap_or(i32::MAX),
        )),
        // Named as OpenSSH reports it (`TERM`, `KILL`, …): russh's standard signals are
        // variants of those names.
        ChannelMsg::ExitSignal {
            signal_name: Sig::Custom(name),
            ..
        } => Some(ExecEnd::Signaled(name.clone())),
        ChannelMsg::ExitSignal { signal_name, .. } => {
            Some(ExecEnd::Signaled(format!("{signal_name:?}")))
        }
        _ => None,
    }
}

/// The write half of a channel that asks the server to close the channel if it is dropped
/// before being disarmed: a `run` future dropped mid-way (or failing) then leaves no session
/// behind (a bootstrap waiting on its gate gets EOF and exits).
struct CloseOnDrop(Option<ChannelWriteHalf<Msg>>);

impl CloseOnDrop {
    fn half(&self) -> Result<&ChannelWriteHalf<Msg>, SshError> {
        self.0
            .as_ref()
            .ok_or_else(|| protocol(UNKNOWN_ADDR, "the channel is already closed"))
    }

    /// The channel ended normally: nothing to close.
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        if let Some(half) = self.0.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                let _ = half.eof().await;
                let _ = half.close().await;
            });
        }
    }
}

/// The parsed preamble line.
#[derive(Debug, PartialEq, Eq)]
struct Preamble {
    pgid: i64,
    tmpfile: Option<String>,
}

/// Result of looking for the preamble in the stdout bytes seen so far.
#[derive(Debug, PartialEq, Eq)]
enum Scan {
    /// No complete preamble line yet.
    NotYet,
    /// Found: `noise` is what came before the line (login scripts' output), `rest` what came
    /// after it.
    Found {
        preamble: Preamble,
        noise: Vec<u8>,
        rest: Vec<u8>,
    },
    /// A line starting with the tag could not be parsed.
    Malformed(String),
}

/// Find the first complete line starting with `JOBEXEC ` and parse it.
fn scan_preamble(buf: &[u8]) -> Scan {
    let mut start = 0;
    while let Some(nl) = buf[start..].iter().position(|&b| b == b'\n') {
        let end = start + nl;
        let line = &buf[start..end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.starts_with(PREAMBLE_TAG.as_bytes()) {
            return match parse_preamble(line) {
                Some(preamble) => Scan::Found {
                    preamble,
                    noise: buf[..start].to_vec(),
                    rest: buf[end + 1..].to_vec(),
                },
                None => Scan::Malformed(String::from_utf8_lossy(line).into_owned()),
            };
        }
        start = end + 1;
    }
    Scan::NotYet
}

/// `JOBEXEC <pgid>` or `JOBEXEC <pgid> <tmpfile>` (the file name may contain spaces).
fn parse_preamble(line: &[u8]) -> Option<Preamble> {
    let line = std::str::from_utf8(line).ok()?;
    let rest = line.strip_prefix(PREAMBLE_TAG)?.strip_prefix(' ')?;
    let (pgid, tmpfile) = match rest.split_once(' ') {
        Some((pgid, file)) => (pgid, Some(file)),
        None => (rest, None),
    };
    // Digits only (`parse` would take a sign), above 1; the file, an absolute path.
    let digits = !pgid.is_empty() && pgid.bytes().all(|b| b.is_ascii_digit());
    let pgid = pgid.parse().ok().filter(|&p: &i64| digits && p > 1)?;
    if tmpfile.is_some_and(|f| !f.starts_with('/')) {
        return None;
    }
    let tmpfile = tmpfile.map(str::to_string);
    Some(Preamble { pgid, tmpfile })
}

/// At most `max` characters of `bytes`, lossily decoded, for an error message.
fn snippet(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    if text.chars().count() > max {
        let cut: String = text.chars().take(max).collect();
        format!("{cut}…")
    } else {
        text.to_string()
    }
}

/// Send an event; a receiver that went away only means nobody listens any more: the job keeps
/// being drained so the connection (shared with other channels) never stalls.
async fn emit(events: &mpsc::Sender<ExecEvent>, event: ExecEvent) {
    let _ = events.send(event).await;
}

/// Run the job on `channel`, sending events as they come. Returns when the channel closes.
///
/// Events: first [`ExecEvent::Started`] (before any of the job's output), then the job's
/// stdout and stderr chunks as the server sends them. Output that login scripts print before
/// the bootstrap's preamble is passed on as stdout right after `Started`.
///
/// Returns the job's exit status or signal once the channel has closed (a job that leaves
/// background processes holding its output open therefore lasts until they end or are killed).
/// Errors: an invalid job ([`SshError::Build`], the reason from [`build`]; validate with it
/// first to report such jobs as the user's mistake); otherwise [`SshError::Protocol`] unless
/// the transport itself failed: the server refused the exec request; the bootstrap ended or
/// sent something else before its preamble (nothing of the user's ran); the connection was
/// lost after the exec request (the command may have run, wholly or partly). `run` sees only a channel, so these errors name the
/// host as "the remote host". A receiver of `events` that is dropped does not stop the job:
/// its output is then discarded.
///
/// Events are sent as the data arrives, and `run` waits for the receiver to take them: a
/// receiver that falls behind holds up this channel and, once russh's per-channel buffer is
/// full, the other channels of the same connection too.
///
/// Dropping the returned future asks the server to close the channel; that does not stop a
/// job already running: use [`kill_group`] for that.
pub async fn run(
    channel: Channel<Msg>,
    job: &RemoteJob,
    events: mpsc::Sender<ExecEvent>,
) -> Result<ExecEnd, SshError> {
    run_in(channel, job, events, false).await
}

/// Like [`run`], with the login shell's kind known (see [`build_for`]).
pub async fn run_in(
    channel: Channel<Msg>,
    job: &RemoteJob,
    events: mpsc::Sender<ExecEvent>,
    login_shell_posix: bool,
) -> Result<ExecEnd, SshError> {
    let (line, payload) = build_for(job, login_shell_posix)?;
    let (mut rx, tx) = channel.split();
    let mut tx = CloseOnDrop(Some(tx));
    let exit = {
        let half = tx.half()?;
        let exec = half.exec(true, line).await;
        exec.map_err(|e| classify_russh(UNKNOWN_ADDR, e))?;
        // The stdin (gate line, secrets, script) goes right behind the exec request, in the same
        // flight: no round trip waits for the preamble. From here on the command may have started.
        // It is written while the channel is read, never before: a large script waits on the
        // window, which the reading side keeps open.
        let feed = async {
            if !payload.is_empty() {
                half.data_bytes(payload).await?;
            }
            half.eof().await
        };
        tokio::pin!(feed);
        let mut fed = false;

        // Phase 1: up to the preamble, which the bootstrap prints before any of the user's code.
        let mut out = Vec::new();
        let mut err = Vec::new();
        let mut exit = None;
        let found = loop {
            let seen = out.len() + err.len();
            if seen > PREAMBLE_LIMIT {
                let failure =
                    format!("no preamble from the remote bootstrap after {seen} bytes of output");
                return Err(protocol(UNKNOWN_ADDR, failure));
            }
            let msg = tokio::select! {
                done = &mut feed, if !fed => {
                    fed = true;
                    if let Err(e) = done {
                        // The read side will say how the channel ended.
                        tracing::debug!(error = %e, "writing the job's stdin failed");
                    }
                    continue;
                }
                msg = rx.wait() => msg,
            };
            let failure = match msg {
                Some(ChannelMsg::Data { data }) => {
                    out.extend_from_slice(&data);
                    match scan_preamble(&out) {
                        Scan::Found {
                            preamble,
                            noise,
                            rest,
                        } => break (preamble, noise, rest),
                        Scan::Malformed(line) => {
                            format!("the remote bootstrap sent a malformed preamble: {line:?}")
                        }
                        Scan::NotYet => continue,
                    }
                }
                Some(ChannelMsg::ExtendedData { data, .. }) => {
                    err.extend_from_slice(&data);
                    continue;
                }
                Some(ChannelMsg::Failure) => "the server refused to run the command".to_string(),
                Some(msg @ (ChannelMsg::ExitStatus { .. } | ChannelMsg::ExitSignal { .. })) => {
                    exit = exit_of(&msg);
                    continue;
                }
                // The channel's data comes before its end: a channel that ended without the
                // preamble never printed it, so none of the user's code ran.
                Some(ChannelMsg::Close) => {
                    let end = match &exit {
                        Some(ExecEnd::Exited(code)) => format!(" (exit status {code})"),
                        Some(ExecEnd::Signaled(sig)) => format!(" (signal {sig})"),
                        None => String::new(),
                    };
                    let said = Some(snippet(&err, 300)).filter(|s| !s.is_empty());
                    let said = said.map(|s| format!(": {s}")).unwrap_or_default();
                    format!("the channel closed before the remote bootstrap started{end}{said}")
                }
                // The connection went with the command sent: it may have started.
                None => {
                    "the connection was lost after the command was sent (it may have run)".into()
                }
                Some(_) => continue,
            };
            return Err(protocol(UNKNOWN_ADDR, failure));
        };

        let (preamble, noise, rest) = found;
        let (pgid, tmpfile) = (preamble.pgid, preamble.tmpfile);
        emit(&events, ExecEvent::Started { pgid, tmpfile }).await;
        for (event, bytes) in [
            (ExecEvent::Stdout as fn(Arc<[u8]>) -> ExecEvent, noise),
            (ExecEvent::Stderr, err),
            (ExecEvent::Stdout, rest),
        ] {
            if !bytes.is_empty() {
                emit(&events, event(bytes.into())).await;
            }
        }

        // Phase 2: relay until the channel closes (and finish writing the stdin).
        loop {
            tokio::select! {
                done = &mut feed, if !fed => {
                    fed = true;
                    if let Err(e) = done {
                        tracing::debug!(error = %e, "writing the job's stdin failed");
                    }
                }
                msg = rx.wait() => match msg {
                    Some(ChannelMsg::Data { data }) => emit(&events, ExecEvent::Stdout(Arc::from(&data[..]))).await,
                    Some(ChannelMsg::ExtendedData { data, .. }) => {
                        emit(&events, ExecEvent::Stderr(Arc::from(&data[..]))).await
                    }
                    Some(msg @ (ChannelMsg::ExitStatus { .. } | ChannelMsg::ExitSignal { .. })) => {
                        exit = exit_of(&msg);
                    }
                    Some(ChannelMsg::Close) | None => break,
                    Some(_) => {}
                }
            }
        }
        exit
    };
    tx.disarm();
    exit.ok_or_else(|| {
        protocol(
            UNKNOWN_ADDR,
            "the connection was lost before the command finished",
        )
    })
}

/// TERM the whole process group, wait up to `grace` for it to go, then KILL it; remove
/// `tmpfile` if given. Over a fresh channel (use open_channel).
///
/// Runs one remote `/bin/sh` on a new channel: `kill -TERM -<pgid>`, polls every 0.1 s
/// (`kill -0`) for at most `grace`, `kill -KILL -<pgid>`, waits up to 1 s more for the group
/// to be gone, removes `tmpfile`. A group that is already gone is not an error. The whole call
/// is bounded by `grace + 10 s`. `pgid` must be above 1 (`kill -1` would hit every process of
/// the user), and `tmpfile` an absolute path.
pub async fn kill_group(
    client: &Client,
    pgid: i64,
    grace: Duration,
    tmpfile: Option<&str>,
) -> Result<(), SshError> {
    let script = kill_script(pgid, grace, tmpfile, None)?;
    run_kill(client, script, pgid, grace).await
}

/// Kill the process group a lost worker left running, but only if it is still that job's:
/// some process in it carries `JOBEXEC_JOB_ID=<job_id>` in its environment (every job's
/// commands get it). A group whose id was reused by something else, or whose processes are
/// all gone, is left alone. Linux hosts (`/proc`); elsewhere nothing is killed.
pub async fn kill_orphan_group(
    client: &Client,
    pgid: i64,
    job_id: &str,
    grace: Duration,
) -> Result<(), SshError> {
    let script = kill_script(pgid, grace, None, Some(job_id))?;
    run_kill(client, script, pgid, grace).await
}

async fn run_kill(
    client: &Client,
    script: String,
    pgid: i64,
    grace: Duration,
) -> Result<(), SshError> {
    let addr = client.addr().to_string();
    let bound = grace + Duration::from_secs(10);
    let ran = tokio::time::timeout(bound, collect(client, script))
        .await
        .map_err(|_| super::timeout(&addr, bound.as_secs(), "killing the process group"))??;
    match ran.end {
        Some(ExecEnd::Exited(0)) => Ok(()),
        Some(other) => Err(protocol(
            addr,
            format!(
                "killing process group {pgid} failed ({other:?}): {}",
                snippet(&ran.stderr, 300)
            ),
        )),
        None => Err(protocol(
            addr,
            "the connection was lost while killing the process group",
        )),
    }
}

/// What [`collect`] gathered from a command.
pub(crate) struct Collected {
    /// All of its stdout.
    pub(crate) stdout: Vec<u8>,
    /// The start of its stderr (reading stops keeping it past 4 KiB).
    pub(crate) stderr: Vec<u8>,
    /// Its exit status or signal; `None` when the channel closed without one.
    pub(crate) end: Option<ExecEnd>,
}

/// Run `command` with no input on a channel of its own ([`open_channel`]) and gather what it
/// prints until the channel closes. Dropping the future asks the server to close the channel.
pub(crate) async fn collect(client: &Client, command: String) -> Result<Collected, SshError> {
    let addr = client.addr().to_string();
    let (mut rx, tx) = open_channel(client).await?.split();
    let mut tx = CloseOnDrop(Some(tx));
    let half = tx.half()?;
    let exec = half.exec(true, command).await;
    exec.map_err(|e| classify_russh(&addr, e))?;
    let _ = half.eof().await;
    let (mut stdout, mut stderr, mut end) = (Vec::new(), Vec::new(), None);
    loop {
        match rx.wait().await {
            Some(ChannelMsg::Data { data }) => stdout.extend_from_slice(&data),
            Some(ChannelMsg::ExtendedData { data, .. }) if stderr.len() < 4096 => {
                stderr.extend_from_slice(&data)
            }
            Some(ChannelMsg::Failure) => {
                return Err(protocol(addr, "the server refused to run the command"));
            }
            Some(msg @ (ChannelMsg::ExitStatus { .. } | ChannelMsg::ExitSignal { .. })) => {
                end = exit_of(&msg)
            }
            Some(ChannelMsg::Close) | None => break,
            Some(_) => {}
        }
    }
    tx.disarm();
    Ok(Collected {
        stdout,
        stderr,
        end,
    })
}

/// The environment variable that marks a job's remote processes with its id.
pub const JOB_ID_VAR: &str = "JOBEXEC_JOB_ID";

/// The exec line of [`kill_group`] (and, with `owner`, of [`kill_orphan_group`]).
fn kill_script(
    pgid: i64,
    grace: Duration,
    tmpfile: Option<&str>,
    owner: Option<&str>,
) -> Result<String, BuildError> {
    if pgid <= 1 {
        return Err(BuildError::ProcessGroup(pgid));
    }
    let guard = match owner {
        Some(id) => {
            if id.is_empty() || !id.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
                return Err(BuildError::JobId(id.to_string()));
            }
            format!(
                "owned() {{ for _p in $(ps -eo pid=,pgid= 2>/dev/null | awk '$2 == {pgid} {{ print $1 }}'); do \
                 tr '\\000' '\\n' < /proc/$_p/environ 2>/dev/null | grep -qx '{JOB_ID_VAR}={id}' && return 0; \
                 done; return 1; }}; owned || exit 0; "
            )
        }
        None => String::new(),
    };
    let tenths = grace.as_millis().div_ceil(100);
    // `alive`: does the group still have a process that is not a zombie? `kill -0` alone
    // also counts zombies, which a slow (or absent) reaper of orphans leaves for a long time;
    // where `ps` cannot tell, the `kill -0` answer stands.
    let mut script = guard;
    script.push_str(&format!(
        "alive() {{ kill -0 -{pgid} 2>/dev/null || return 1; \
         _ps=$(ps -eo pgid=,stat= 2>/dev/null) && [ -n \"$_ps\" ] || return 0; \
         printf '%s\\n' \"$_ps\" | awk '$1 == {pgid} && $2 !~ /^Z/ {{ f = 1 }} END {{ exit !f }}'; }}; \
         pause() {{ sleep 0.1 2>/dev/null || sleep 1; }}; \
         kill -TERM -{pgid} 2>/dev/null; i=0; \
         while [ $i -lt {tenths} ] && alive; do pause; i=$((i+1)); done; \
         kill -KILL -{pgid} 2>/dev/null; i=0; \
         while [ $i -lt {POST_KILL_TENTHS} ] && alive; do pause; i=$((i+1)); done; "
    ));
    if let Some(file) = tmpfile {
        check_text("tmpfile", file)?;
        if !file.starts_with('/') {
            return Err(BuildError::RelativeTmpfile);
        }
        script.push_str(&format!("rm -f {}; ", quote(file)));
    }
    script.push_str("true");
    Ok(format!("exec /bin/sh -c {}", quote(&script)))
}

/// `s` in POSIX single quotes (`'` becomes `'\''`).
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn valid_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Text that goes into an argument list cannot hold NUL.
fn check_text(what: &str, s: &str) -> Result<(), BuildError> {
    if s.contains('\0') {
        Err(BuildError::Nul(what.to_string()))
    } else {
        Ok(())
    }
}

/// `cd` to the job's directory, or `exit 126` when it cannot.
fn cd_command(cwd: &str) -> String {
    let target = if cwd == "~" {
        "\"$HOME\"".to_string()
    } else if let Some(rest) = cwd.strip_prefix("~/") {
        format!("\"$HOME\"/{}", quote(rest))
    } else {
        quote(cwd)
    };
    format!("cd {target} || exit {CWD_FAILED}")
}

/// Validate env names (`[A-Za-z_][A-Za-z0-9_]*`), shell path, cwd; returns the exec line and
/// the stdin payload. Pure; unit-tested.
///
/// The exec line is `exec /bin/sh -c '<bootstrap>'` (see the module documentation); the payload
/// is empty for a plain command, else the gate line (`"\n"`) and the secret values, followed
/// for scripts by the script's bytes. Errors name the field
/// at fault: an environment name outside `[A-Za-z_][A-Za-z0-9_]*`, a shell that is not an
/// absolute path, an empty working directory or command, or a NUL character in any text that
/// goes into the command line.
pub fn build(job: &RemoteJob) -> Result<(String, Vec<u8>), BuildError> {
    build_for(job, false)
}

/// Like [`build`]; with `login_shell_posix` (the login shell is sh, dash, bash, ksh or ash,
/// see [`login_shell_is_posix`]) the bootstrap runs in the login shell itself instead of
/// under `exec /bin/sh -c`, which saves a shell start per job.
pub fn build_for(
    job: &RemoteJob,
    login_shell_posix: bool,
) -> Result<(String, Vec<u8>), BuildError> {
    let wrap = |bootstrap: &str| {
        if login_shell_posix {
            bootstrap.to_string()
        } else {
            format!("exec /bin/sh -c {}", quote(bootstrap))
        }
    };
    let mut setup = Vec::new();
    if let Some(cwd) = &job.cwd {
        if cwd.is_empty() {
            return Err(BuildError::EmptyCwd);
        }
        check_text("cwd", cwd)?;
        setup.push(cd_command(cwd));
    }
    for (name, value) in &job.env {
        if !valid_env_name(name) {
            return Err(BuildError::EnvName(name.clone()));
        }
        check_text(&format!("the value of {name}"), value)?;
        setup.push(format!("export {name}={}", quote(value)));
    }
    // Each secret is one stdin line of octal escapes, which `printf %b` (a builtin) turns back
    // into its bytes; the `x` keeps trailing newlines from `$(…)`.
    let mut secrets: Vec<(String, &str)> = Vec::new();
    let mut secret_lines = Vec::new();
    for (name, value) in &job.secret_env {
        if !valid_env_name(name) {
            return Err(BuildError::EnvName(name.clone()));
        }
        check_text(&format!("the value of {name}"), value)?;
        secrets.push((
            format!("_v=$(printf '%bx' \"$_v\"); {name}=\"${{_v%x}}\"; export {name}; unset _v"),
            "IFS= read -r _v ||",
        ));
        for b in value.bytes() {
            secret_lines.extend_from_slice(format!("\\0{b:03o}").as_bytes());
        }
        secret_lines.push(b'\n');
    }
    let mut stdin = b"\n".to_vec();
    stdin.extend_from_slice(&secret_lines);

    let gate = format!("IFS= read -r _gate || exit {BOOTSTRAP_FAILED}");
    match &job.work {
        RemoteWork::Command { line } => {
            check_text("the command", line)?;
            if line.trim().is_empty() {
                return Err(BuildError::EmptyCommand);
            }
            let mut parts = vec!["printf 'JOBEXEC %s\\n' \"$$\"".to_string()];
            // Nothing to read when no secret follows: no stdin byte to wait for. (sshd opens a
            // session's window only once its command has started, so any stdin costs a round
            // trip; a plain command needs none, and its stdin is at EOF from the start.)
            let stdin = if secrets.is_empty() {
                Vec::new()
            } else {
                parts.push(gate);
                stdin
            };
            let fail = format!("exit {BOOTSTRAP_FAILED}");
            parts.extend(
                secrets
                    .iter()
                    .map(|(set, read)| format!("{read} {fail}; {set}")),
            );
            parts.extend(setup);
            // `eval` in the bootstrap shell rather than `exec /bin/sh -c`: one shell start less
            // per job (shell starts were 40% of the CPU of a run of trivial jobs), the same
            // pid and group, the user's own exit status, and a syntax error still ends the
            // shell with status 2 and a message on stderr.
            parts.push(format!("unset _gate; eval {}", quote(line)));
            let bootstrap = parts.join("; ");
            Ok((wrap(&bootstrap), stdin))
        }
        RemoteWork::Script {
            shell,
            script,
            args,
        } => {
            check_text("shell", shell)?;
            if !shell.starts_with('/') {
                return Err(BuildError::RelativeShell(shell.clone()));
            }
            check_text("args", args)?;
            let n = script.len();
            // Runs in its own /bin/sh (`$0` is the temporary file): the environment, the
            // directory and a syntax error in `args` stay out of the bootstrap, which still
            // removes the file afterwards.
            let mut inner = setup;
            inner.push(format!("exec {} \"$0\" {args}", quote(shell)));
            let inner = inner.join("; ");
            let fail = BOOTSTRAP_FAILED;
            let reads = (secrets.iter())
                .map(|(set, read)| format!("{read} {{ rm -f \"$_f\"; exit {fail}; }}; {set}"))
                .collect::<Vec<_>>();
            let bootstrap = [
                "_u=$(umask); umask 077".to_string(),
                format!("_f=$(mktemp \"${{TMPDIR:-/tmp}}/jobexec.XXXXXX\") || exit {fail}"),
                "umask \"$_u\"".to_string(),
                "case \"$_f\" in /*) ;; *) _f=\"$PWD/$_f\" ;; esac".to_string(),
                "printf 'JOBEXEC %s %s\\n' \"$$\" \"$_f\"".to_string(),
                format!("IFS= read -r _gate || {{ rm -f \"$_f\"; exit {fail}; }}"),
            ]
            .into_iter()
            .chain(reads)
            .chain([
                format!("head -c {n} > \"$_f\""),
                format!(
                    "_n=$(wc -c < \"$_f\") && [ $_n -eq {n} ] || {{ rm -f \"$_f\"; \
                     echo \"jobexec: the script did not arrive whole\" >&2; exit {fail}; }}"
                ),
                format!("/bin/sh -c {} \"$_f\"", quote(&inner)),
                "_s=$?".to_string(),
                "rm -f \"$_f\"".to_string(),
                "exit \"$_s\"".to_string(),
            ])
            .collect::<Vec<_>>()
            .join("; ");
            let mut payload = stdin;
            payload.extend_from_slice(script);
            Ok((wrap(&bootstrap), payload))
        }
    }
}

/// Whether the login shell of the connection's user runs the bootstrap as is: asks for
/// `$SHELL` once (sshd sets it to the login shell) and accepts sh, dash, bash, ksh, mksh and
/// ash. Anything else, or any doubt, answers false (the bootstrap is then wrapped).
pub async fn login_shell_is_posix(client: &Client) -> bool {
    let Ok(Ok(out)) = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        client.execute("echo \"$SHELL\""),
    )
    .await
    else {
        return false;
    };
    let shell = out.stdout.trim();
    let name = shell.rsplit('/').next().unwrap_or_default();
    out.exit_status == 0 && matches!(name, "sh" | "dash" | "bash" | "ksh" | "mksh" | "ash")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_single_quotes() {
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), "'it'\\''s'");
        assert_eq!(quote(""), "''");
    }

    #[test]
    fn preamble_is_found_with_noise_and_rest() {
        assert_eq!(scan_preamble(b"JOBEXEC 12"), Scan::NotYet);
        assert_eq!(
            scan_preamble(b"hello\nJOBEXEC 1234\nout"),
            Scan::Found {
                preamble: Preamble {
                    pgid: 1234,
                    tmpfile: None
                },
                noise: b"hello\n".to_vec(),
                rest: b"out".to_vec(),
            }
        );
        assert_eq!(
            scan_preamble(b"JOBEXEC 77 /tmp/my dir/jobexec.abc\r\n"),
            Scan::Found {
                preamble: Preamble {
                    pgid: 77,
                    tmpfile: Some("/tmp/my dir/jobexec.abc".into())
                },
                noise: vec![],
                rest: vec![],
            }
        );
        for bad in [
            &b"JOBEXEC\n"[..],
            b"JOBEXEC x\n",
            b"JOBEXEC 1\n",
            b"JOBEXEC -5\n",
            b"JOBEXEC 12 rel/path\n",
        ] {
            assert!(
                matches!(scan_preamble(bad), Scan::Malformed(_)),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn kill_script_validates() {
        assert!(kill_script(0, Duration::from_secs(1), None, None).is_err());
        assert!(kill_script(1, Duration::from_secs(1), None, None).is_err());
        assert!(kill_script(55, Duration::from_secs(1), Some("rel"), None).is_err());
        assert!(kill_script(55, Duration::from_secs(1), None, Some("x'; rm -rf /")).is_err());
        let s = kill_script(55, Duration::from_millis(1500), Some("/tmp/x'y"), None).unwrap();
        assert!(s.contains("-lt 15 ]"), "{s}");
        assert!(s.contains("kill -KILL -55"), "{s}");
    }

    /// A lost job's group is killed only when one of its processes carries the job's id.
    #[cfg(target_os = "linux")]
    #[test]
    fn an_orphan_group_is_killed_only_when_it_is_the_jobs() {
        use std::os::unix::process::CommandExt;
        use std::process::Command;
        let id = "0195f2a4-3b7c-7d8e-9f00-112233445566";
        let mut child = Command::new("sleep")
            .arg("30")
            .env(JOB_ID_VAR, id)
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = i64::from(child.id());
        let run = |owner: &str| {
            let script = kill_script(pgid, Duration::from_millis(200), None, Some(owner)).unwrap();
            Command::new("/bin/sh")
                .arg("-c")
                .arg(script)
                .status()
                .unwrap()
        };
        assert!(run("0195f2a4-0000-0000-0000-000000000000").success());
        assert!(
            child.try_wait().unwrap().is_none(),
            "another job's group was killed"
        );
        assert!(run(id).success());
        let status = child.wait().unwrap();
        assert!(!status.success(), "{status:?}");
    }

    /// Run a built job with the local /bin/sh: the quoting holds whatever the values are.
    #[test]
    fn built_command_runs_locally() {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let job = RemoteJob {
            work: RemoteWork::Command {
                line: r#"printf '%s|%s|%s' "$A" "$B" "$(pwd)"; exit 4"#.into(),
            },
            env: BTreeMap::from([
                ("A".into(), "it's \"q\" $HOME `x` \\n".into()),
                ("B".into(), "two\nlines".into()),
            ]),
            secret_env: BTreeMap::new(),
            cwd: Some("/".into()),
        };
        let (line, payload) = build(&job).unwrap();
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(&line)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&payload).unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(4));
        let text = String::from_utf8(out.stdout).unwrap();
        let (first, rest) = text.split_once('\n').unwrap();
        assert!(first.starts_with("JOBEXEC "), "{text}");
        assert_eq!(rest, "it's \"q\" $HOME `x` \\n|two\nlines|/");
    }

    /// Secrets reach the command's environment byte for byte over stdin, and never appear
    /// in the command line (what `ps` on the host shows), for commands and for scripts.
    #[test]
    fn secrets_travel_on_stdin_and_arrive_whole() {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let secret = "it's $(id) `x` \\0101 \"q\"; rm -rf / \u{e9}\ntwo lines\n\n";
        let run = |work: RemoteWork| {
            let job = RemoteJob {
                work,
                env: BTreeMap::from([("PLAIN".into(), "p".into())]),
                secret_env: BTreeMap::from([
                    ("S".into(), secret.to_string()),
                    ("EMPTY".into(), String::new()),
                ]),
                cwd: None,
            };
            let (line, payload) = build(&job).unwrap();
            assert!(!line.contains("rm -rf"), "{line}");
            assert!(!line.contains("two lines"), "{line}");
            let mut child = Command::new("/bin/sh")
                .arg("-c")
                .arg(&line)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(&payload).unwrap();
            let out = child.wait_with_output().unwrap();
            assert_eq!(out.status.code(), Some(0), "{out:?}");
            let text = String::from_utf8(out.stdout).unwrap();
            text.split_once('\n').unwrap().1.to_string()
        };
        let print = r#"printf '%s|%s|%s' "$S" "${EMPTY-unset}" "$PLAIN""#;
        let want = format!("{secret}||p");
        assert_eq!(run(RemoteWork::Command { line: print.into() }), want);
        let script = RemoteWork::Script {
            shell: "/bin/sh".into(),
            script: print.as_bytes().to_vec(),
            args: String::new(),
        };
        assert_eq!(run(script), want);
    }
}
