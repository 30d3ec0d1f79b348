//! `HostActor`: one per server. Owns the server's run slots and the queue of jobs waiting
//! for one, and a small pool of authenticated SSH connections with the count of channels on
//! each; hands out channel leases on them, connects on demand, closes idle connections, and
//! pins the host key on first use. Nothing outside the actor touches that state: slots and
//! leases come and go by message ([`AcquireSlot`], [`Checkout`], [`LeaseReturned`]).
//!
//! Channels per connection stay below sshd's `MaxSessions` (10) — five by default, since
//! sshd refuses some opens under churn from about six — and more connections are opened
//! instead, with at most [`HANDSHAKES`] in flight (sshd's `MaxStartups`).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::ssh::Client;
use actix::dev::{MessageResponse, OneshotSender};
use actix::prelude::*;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use super::messages::{AcquireSlot, ChannelLease, Checkout, HostError, LeaseReturned};
use crate::metrics;
use crate::ssh::{self, SshError, SshOptions, SshTarget};
use crate::store::{ServerRow, Store, StoreError};

/// Connections being made at once, at most (sshd's `MaxStartups` starts refusing at 10).
pub const HANDSHAKES: usize = 4;

/// How a host's pool is shaped.
#[derive(Debug, Clone)]
pub struct PoolLimits {
    /// Connections kept at most.
    pub max_connections: usize,
    /// Channels run on one connection at most.
    pub channels_per_connection: usize,
    /// An unused connection is closed after this long.
    pub idle: Duration,
}

struct PooledConn {
    id: u64,
    client: Client,
    login_shell_posix: bool,
    /// Leases out on it.
    in_use: usize,
    last_used: Instant,
    /// One in `jobexec_ssh_connections_open` while the pool holds the connection.
    _open: metrics::GaugeGuard<1>,
}

type LeaseReply = oneshot::Sender<Result<ChannelLease, HostError>>;

/// The actor of one server.
pub struct HostActor {
    server_id: uuid::Uuid,
    store: Store,
    opts: SshOptions,
    limits: PoolLimits,
    /// `ssh.allowed_hosts`: checked before every connection.
    allowed: Arc<[String]>,
    /// The run slots. A semaphore, not a count of the actor's: a slot's permit goes with the
    /// job to its actor and comes back the moment it is dropped, however the job ends.
    slots: Arc<Semaphore>,
    /// Slots the semaphore holds now (`max_concurrent_jobs` as last seen).
    capacity: usize,
    /// Jobs waiting for a slot, the oldest job first (job id, then arrival).
    slot_waiters: BTreeMap<(String, u64), oneshot::Sender<OwnedSemaphorePermit>>,
    arrivals: u64,
    /// A wait for a free slot is under way (one at a time: it serves the oldest waiter).
    pumping: bool,
    conns: Vec<PooledConn>,
    next_conn: u64,
    /// Connections being made.
    connecting: usize,
    /// Checkouts waiting for room on a connection, first come first served.
    lease_waiters: VecDeque<LeaseReply>,
}

impl HostActor {
    /// A host actor for `server_id`, running at most `max_jobs` jobs at once, connecting
    /// only to the hosts `allowed` allows (`ssh.allowed_hosts`).
    pub fn new(
        server_id: uuid::Uuid,
        max_jobs: usize,
        store: Store,
        opts: SshOptions,
        limits: PoolLimits,
        allowed: Arc<[String]>,
    ) -> Self {
        Self {
            server_id,
            store,
            opts,
            limits,
            allowed,
            slots: Arc::new(Semaphore::new(max_jobs.max(1))),
            capacity: max_jobs.max(1),
            slot_waiters: BTreeMap::new(),
            arrivals: 0,
            pumping: false,
            conns: Vec::new(),
            next_conn: 0,
            connecting: 0,
            lease_waiters: VecDeque::new(),
        }
    }

    /// Follow a change of `max_concurrent_jobs`: add slots, or take the surplus out as
    /// running jobs hand theirs back.
    fn resize_slots(&mut self, wanted: usize, ctx: &mut Context<Self>) {
        if wanted > self.capacity {
            self.slots.add_permits(wanted - self.capacity);
        } else if wanted < self.capacity {
            let surplus = u32::try_from(self.capacity - wanted).unwrap_or(u32::MAX);
            let slots = self.slots.clone();
            ctx.spawn(fut::wrap_future(async move {
                if let Ok(p) = slots.acquire_many_owned(surplus).await {
                    p.forget();
                }
            }));
        }
        self.capacity = wanted;
    }

    /// Hand the next free slot to the oldest waiting job, and so on until none waits. The
    /// deliveries of a server's jobs reach the actor in no set order (each first reads its
    /// job from the database, and those reads finish in any order), so the order is restored
    /// here.
    fn pump_slots(&mut self, ctx: &mut Context<Self>) {
        if self.pumping || self.slot_waiters.is_empty() {
            return;
        }
        self.pumping = true;
        let free = self.slots.clone().acquire_owned();
        ctx.spawn(free.into_actor(self).map(|permit, act, ctx| {
            act.pumping = false;
            let Ok(mut permit) = permit else { return };
            while let Some((_, waiter)) = act.slot_waiters.pop_first() {
                match waiter.send(permit) {
                    Ok(()) => break,
                    // That job went away: the next one gets it.
                    Err(back) => permit = back,
                }
            }
            // Nobody waited any more: the permit went back to the semaphore.
            act.pump_slots(ctx);
        }));
    }

    /// A lease on the open connection with the most room, if one has any.
    fn lease_on_open(&mut self, ctx: &mut Context<Self>) -> Option<ChannelLease> {
        let cap = self.limits.channels_per_connection.max(1);
        let conn = self
            .conns
            .iter_mut()
            .filter(|c| c.in_use < cap && !c.client.is_closed())
            .min_by_key(|c| c.in_use)?;
        Some(lease(conn, ctx))
    }

    /// Serve the waiting checkouts: on room that opened up, then on new connections.
    fn serve_waiters(&mut self, ctx: &mut Context<Self>) {
        self.conns.retain(|c| !c.client.is_closed());
        self.lease_waiters.retain(|w| !w.is_closed());
        while !self.lease_waiters.is_empty() {
            if let Some(lease) = self.lease_on_open(ctx) {
                if let Some(waiter) = self.lease_waiters.pop_front() {
                    // A waiter gone meanwhile drops the lease, which comes back by message.
                    let _ = waiter.send(Ok(lease));
                }
            } else if self.conns.len() + self.connecting < self.limits.max_connections.max(1)
                && self.connecting < HANDSHAKES
            {
                if let Some(waiter) = self.lease_waiters.pop_front() {
                    self.connect(waiter, ctx);
                }
            } else {
                // Full: a returned lease or a new connection serves the rest.
                return;
            }
        }
    }

    /// Open a connection for `waiter`, which gets the first lease on it (or the error).
    fn connect(&mut self, waiter: LeaseReply, ctx: &mut Context<Self>) {
        self.connecting += 1;
        let allowed = self.allowed.clone();
        let made = connect_new(
            self.store.clone(),
            self.opts.clone(),
            self.server_id,
            allowed,
        );
        ctx.spawn(made.into_actor(self).map(move |made, act, ctx| {
            act.connecting -= 1;
            let server = act.server_id.to_string();
            match made {
                Ok((client, login_shell_posix)) => {
                    metrics::SSH_CONNECTS.inc([&server]);
                    let id = act.next_conn;
                    act.next_conn += 1;
                    act.conns.push(PooledConn {
                        id,
                        client,
                        login_shell_posix,
                        in_use: 0,
                        last_used: Instant::now(),
                        _open: metrics::SSH_CONNECTIONS_OPEN.track([&server]),
                    });
                    if let Some(conn) = act.conns.last_mut() {
                        let _ = waiter.send(Ok(lease(conn, ctx)));
                    }
                }
                Err(e) => {
                    metrics::SSH_CONNECT_FAILURES.inc([&server, failure_kind(&e)]);
                    let _ = waiter.send(Err(e));
                }
            }
            act.serve_waiters(ctx);
        }));
    }

    /// Close connections that are closed already or unused for longer than the idle time.
    fn close_idle(&mut self) {
        let idle = self.limits.idle;
        self.conns.retain(|c| {
            let unused = c.in_use == 0;
            let keep = !(c.client.is_closed() || unused && c.last_used.elapsed() > idle);
            if !keep && unused {
                let client = c.client.clone();
                tokio::spawn(async move {
                    let _ = client.disconnect().await;
                });
            }
            keep
        });
    }
}

fn lease(conn: &mut PooledConn, ctx: &mut Context<HostActor>) -> ChannelLease {
    conn.in_use += 1;
    conn.last_used = Instant::now();
    ChannelLease {
        client: conn.client.clone(),
        login_shell_posix: conn.login_shell_posix,
        conn: conn.id,
        owner: ctx.address().recipient(),
    }
}

impl Actor for HostActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Slot requests must queue in the order they were sent (a full mailbox parks senders
        // and wakes them in no particular order): room for every job a worker may hold.
        ctx.set_mailbox_capacity(MAILBOX);
        let every = (self.limits.idle / 2).max(Duration::from_secs(1));
        ctx.run_interval(every, |act, ctx| {
            act.close_idle();
            act.serve_waiters(ctx);
        });
    }
}

/// The host actor's mailbox: far above the jobs one worker hands one server at once.
const MAILBOX: usize = 1 << 16;

impl Handler<AcquireSlot> for HostActor {
    type Result = ResponseFuture<Result<OwnedSemaphorePermit, HostError>>;

    fn handle(&mut self, msg: AcquireSlot, ctx: &mut Self::Context) -> Self::Result {
        self.resize_slots(msg.max_jobs.max(1), ctx);
        let (tx, rx) = oneshot::channel();
        self.slot_waiters.insert((msg.job_id, self.arrivals), tx);
        self.arrivals += 1;
        self.pump_slots(ctx);
        Box::pin(async move { rx.await.map_err(|_| MailboxError::Closed.into()) })
    }
}

impl Handler<Checkout> for HostActor {
    type Result = LeaseResponse;

    fn handle(&mut self, _: Checkout, ctx: &mut Self::Context) -> Self::Result {
        // The hot path: room on an open connection, answered at once.
        self.conns.retain(|c| !c.client.is_closed());
        if self.lease_waiters.is_empty()
            && let Some(lease) = self.lease_on_open(ctx)
        {
            return LeaseResponse::Now(lease);
        }
        let (tx, rx) = oneshot::channel();
        self.lease_waiters.push_back(tx);
        self.serve_waiters(ctx);
        LeaseResponse::Later(rx)
    }
}

/// The answer to a [`Checkout`]: a lease at once (no task, no future), or a wait for one in
/// a task of its own — not in the actor's context, which polls all its futures on each wake.
pub enum LeaseResponse {
    /// Room was free.
    Now(ChannelLease),
    /// Served when room opens up or a connection is made.
    Later(oneshot::Receiver<Result<ChannelLease, HostError>>),
}

impl MessageResponse<HostActor, Checkout> for LeaseResponse {
    fn handle(
        self,
        _: &mut Context<HostActor>,
        tx: Option<OneshotSender<Result<ChannelLease, HostError>>>,
    ) {
        // Nobody asked for the answer (`do_send`): the lease drops and comes back.
        let Some(tx) = tx else { return };
        match self {
            LeaseResponse::Now(lease) => {
                let _ = tx.send(Ok(lease));
            }
            LeaseResponse::Later(rx) => {
                actix::spawn(async move {
                    let answer = rx
                        .await
                        .unwrap_or_else(|_| Err(MailboxError::Closed.into()));
                    let _ = tx.send(answer);
                });
            }
        }
    }
}

impl Handler<LeaseReturned> for HostActor {
    type Result = ();

    fn handle(&mut self, msg: LeaseReturned, ctx: &mut Self::Context) {
        if let Some(c) = self.conns.iter_mut().find(|c| c.id == msg.conn) {
            c.in_use = c.in_use.saturating_sub(1);
            c.last_used = Instant::now();
        }
        self.serve_waiters(ctx);
    }
}

/// Whether `hostname` matches one of `patterns` (`ssh.allowed_hosts`: globs with `*` and
/// `?`, case-insensitive); no patterns allow any host.
pub fn host_allowed(patterns: &[String], hostname: &str) -> bool {
    patterns.is_empty()
        || patterns
            .iter()
            .any(|p| glob(p.as_bytes(), hostname.as_bytes()))
}

/// `text` matches `pattern` whole: `*` stands for any run, `?` for one byte.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // The last `*` seen, and where in `text` it started matching.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c.eq_ignore_ascii_case(&text[t]) => {
                p += 1;
                t += 1;
            }
            _ => match star {
                // Let the `*` take one more byte and try again.
                Some((sp, st)) => {
                    star = Some((sp, st + 1));
                    p = sp + 1;
                    t = st + 1;
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// The server's record, read afresh (credentials or the pinned key may have changed), and
/// where to connect to it; refused, without connecting, when `ssh.allowed_hosts` does not
/// allow its host.
pub(super) async fn server_target(
    store: &Store,
    id: uuid::Uuid,
    allowed: &[String],
) -> Result<(ServerRow, SshTarget), HostError> {
    let row = store.get_server(id).await.map_err(|e| match e {
        StoreError::NotFound => HostError::ServerGone(id),
        other => HostError::ServerUnreadable(other),
    })?;
    if !host_allowed(allowed, &row.hostname) {
        return Err(HostError::NotAllowed(row.hostname));
    }
    let draft = store.open_server(&row).map_err(HostError::Credentials)?;
    let target = SshTarget::from_server(&draft)?;
    Ok((row, target))
}

async fn connect_new(
    store: Store,
    opts: SshOptions,
    id: uuid::Uuid,
    allowed: Arc<[String]>,
) -> Result<(Client, bool), HostError> {
    let (row, target) = server_target(&store, id, &allowed).await?;
    let addr = target.addr();
    let conn = ssh::connect_claiming(&target, &opts, |key| {
        claim_first_use(&store, &row, id, addr, key)
    })
    .await?;
    let posix = ssh::exec::login_shell_is_posix(&conn.client).await;
    tracing::debug!(server_id = %id, login_shell_posix = posix, "SSH connection opened");
    Ok((conn.client, posix))
}

/// Before any credential is sent: on a server whose policy is trust on first use and that
/// had nothing pinned, pin the key the handshake will accept (one conditional update: of two
/// first connections only one pins). A connection whose key lost that race to another key
/// stops here, before authenticating; so does one whose pin cannot be recorded.
async fn claim_first_use(
    store: &Store,
    row: &ServerRow,
    id: uuid::Uuid,
    addr: String,
    key: russh::keys::PublicKey,
) -> Result<(), HostError> {
    if row.host_key.is_some() || row.host_key_check != crate::domain::HostKeyCheck::Tofu {
        return Ok(());
    }
    let presented = ssh::fingerprint(&key);
    let system = crate::domain::Actor::system();
    let line = ssh::openssh_line(&key);
    let pinned = store
        .pin_on_first_use(row, line, &presented, &system, "first connection")
        .await
        .map_err(HostError::ServerUnreadable)?;
    if pinned {
        return Ok(());
    }
    // Another connection pinned first (or the policy changed): only its key will do.
    let now = store.get_server(id).await.map_err(|e| match e {
        StoreError::NotFound => HostError::ServerGone(id),
        other => HostError::ServerUnreadable(other),
    })?;
    match now.host_key.as_deref().map(ssh::pinned_fingerprint) {
        Some(winner) if winner != presented => Err(HostError::Ssh(SshError::HostKeyChanged {
            addr,
            pinned: winner,
            presented,
        })),
        _ => Ok(()),
    }
}

/// The kind of a connect failure, for the `reason` label (a fixed set: never the message).
fn failure_kind(e: &HostError) -> &'static str {
    let e = match e {
        HostError::Ssh(e) => e,
        HostError::ServerGone(_) => return "bad_key",
        HostError::Credentials(_) => return "credentials",
        HostError::NotAllowed(_) => return "not_allowed",
        HostError::ServerUnreadable(_) | HostError::Unavailable(_) => return "protocol",
    };
    match e {
        SshError::Resolve { .. } => "resolve",
        SshError::Refused { .. } => "refused",
        SshError::Unreachable { .. } => "unreachable",
        SshError::Timeout { .. } => "timeout",
        SshError::AuthRejected { .. } => "auth_rejected",
        SshError::BadKey(_) => "bad_key",
        SshError::HostKeyChanged { .. } => "host_key_changed",
        SshError::HostKeyUnknown { .. } | SshError::KnownHostsRefused { .. } => "host_key_unknown",
        SshError::Credentials(_) => "credentials",
        SshError::HostKeyRejected { .. } | SshError::HostCertificate { .. } => "host_key_rejected",
        SshError::Protocol { .. } => "protocol",
        SshError::Build(_) => "protocol",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Actor;
    use crate::store::tests::{TestDb, server_draft};

    const WINNER: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";

    /// Finding 6: two first connections, the other one pinned first. The loser's key is
    /// refused by the claim made before authenticating; the winner's own key passes, and a
    /// first connection alone pins what it saw.
    #[tokio::test]
    async fn a_first_connection_that_lost_the_pin_race_stops_before_authenticating() {
        let db = TestDb::sqlite();
        let store = db.open().await;
        let row = store.insert_server(server_draft()).await.unwrap();
        let id = uuid::Uuid::parse_str(&row.id).unwrap();
        let winner = russh::keys::PublicKey::from_openssh(WINNER).unwrap();
        let loser = russh::keys::PublicKey::from_openssh(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEAl1U/wClblcZO5HPJc3PBeF/KZHbWF8W17AQ+865Sl",
        )
        .unwrap();
        // The other connection's pin lands after this one read the row (`row` is stale).
        let other = store.get_server(id).await.unwrap();
        let fp = ssh::fingerprint(&winner);
        assert!(
            store
                .pin_on_first_use(&other, WINNER.into(), &fp, &Actor::system(), "test")
                .await
                .unwrap()
        );
        let lost = claim_first_use(&store, &row, id, "h:22".into(), loser).await;
        assert!(
            matches!(lost, Err(HostError::Ssh(SshError::HostKeyChanged { .. }))),
            "{lost:?}"
        );
        claim_first_use(&store, &row, id, "h:22".into(), winner.clone())
            .await
            .unwrap();
        assert_eq!(
            store.get_server(id).await.unwrap().host_key.as_deref(),
            Some(WINNER)
        );
    }

    #[test]
    fn allowed_hosts_are_globs_on_the_whole_name() {
        assert!(host_allowed(&[], "anything"));
        let patterns = ["*.example.com", "10.0.?.*", "db"].map(String::from);
        for ok in ["a.example.com", "A.B.EXAMPLE.COM", "10.0.1.25", "db"] {
            assert!(host_allowed(&patterns, ok), "{ok}");
        }
        for no in [
            "example.com",
            "a.example.com.evil",
            "10.0.12.5",
            "db2",
            "xdb",
            "",
        ] {
            assert!(!host_allowed(&patterns, no), "{no}");
        }
    }
}
