//! `HostActor`: one per server. Caps the jobs running on it, keeps a small pool of
//! authenticated SSH connections, hands out channel leases on them, reconnects on demand,
//! closes idle connections, and pins the host key on first use.
//!
//! Channels per connection stay below sshd's `MaxSessions` (10) — five by default, since
//! sshd refuses some opens under churn from about six — and more connections are opened
//! instead, with at most a few handshakes in flight (sshd's `MaxStartups`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use actix::prelude::*;
use async_ssh2_tokio::Client;
use tokio::sync::{Mutex, Notify, OwnedSemaphorePermit, Semaphore};

use super::messages::{AcquireSlot, Checkout};
use crate::metrics;
use crate::ssh::{self, SshError, SshOptions, SshTarget};
use crate::store::{Store, StoreError};

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
    client: Client,
    login_shell_posix: bool,
    in_use: Arc<AtomicUsize>,
    last_used: Instant,
    /// One in `jobexec_ssh_connections_open` while the pool holds the connection.
    _open: metrics::GaugeGuard<1>,
}

#[derive(Default)]
struct PoolState {
    conns: Vec<PooledConn>,
    connecting: usize,
}

struct Pool {
    state: Mutex<PoolState>,
    freed: Arc<Notify>,
    handshakes: Semaphore,
    limits: PoolLimits,
}

/// The right to run one channel on a pooled connection; dropping it frees the room.
pub struct ChannelLease {
    /// The connection (a cheap clone).
    pub client: Client,
    /// The login shell runs the bootstrap as is (see `exec::build_for`).
    pub login_shell_posix: bool,
    in_use: Arc<AtomicUsize>,
    freed: Arc<Notify>,
}

impl std::fmt::Debug for ChannelLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelLease").finish_non_exhaustive()
    }
}

impl Drop for ChannelLease {
    fn drop(&mut self) {
        self.in_use.fetch_sub(1, Ordering::AcqRel);
        self.freed.notify_waiters();
    }
}

/// The actor of one server.
pub struct HostActor {
    server_id: uuid::Uuid,
    store: Store,
    opts: SshOptions,
    slots: Arc<Semaphore>,
    capacity: usize,
    queue: Arc<std::sync::Mutex<SlotQueue>>,
    pool: Arc<Pool>,
}

/// Jobs waiting for one of the server's slots, oldest job first.
#[derive(Default)]
struct SlotQueue {
    waiters: std::collections::BTreeMap<
        (String, u64),
        tokio::sync::oneshot::Sender<OwnedSemaphorePermit>,
    >,
    next: u64,
    pumping: bool,
}

fn lock(queue: &std::sync::Mutex<SlotQueue>) -> std::sync::MutexGuard<'_, SlotQueue> {
    queue.lock().unwrap_or_else(|p| p.into_inner())
}

/// Hand free slots to waiting jobs, the oldest first, until none waits. The deliveries of a
/// server's jobs reach the actor in no set order (each first reads its job from the
/// database, and those reads finish in any order), so the order is restored here.
async fn pump(slots: Arc<Semaphore>, queue: Arc<std::sync::Mutex<SlotQueue>>) {
    loop {
        {
            let mut q = lock(&queue);
            if q.waiters.is_empty() {
                q.pumping = false;
                return;
            }
        }
        let Ok(mut permit) = slots.clone().acquire_owned().await else {
            lock(&queue).pumping = false;
            return;
        };
        loop {
            let next = {
                let mut q = lock(&queue);
                let next = q.waiters.pop_first().map(|(_, tx)| tx);
                if next.is_none() {
                    q.pumping = false;
                }
                next
            };
            let Some(tx) = next else {
                // Nobody waits any more: the permit goes back.
                return;
            };
            match tx.send(permit) {
                Ok(()) => break,
                // That waiter went away: the next one gets it.
                Err(p) => permit = p,
            }
        }
    }
}

impl HostActor {
    /// A host actor for `server_id`, running at most `max_jobs` jobs at once.
    pub fn new(
        server_id: uuid::Uuid,
        max_jobs: usize,
        store: Store,
        opts: SshOptions,
        limits: PoolLimits,
    ) -> Self {
        Self {
            server_id,
            store,
            opts,
            slots: Arc::new(Semaphore::new(max_jobs.max(1))),
            capacity: max_jobs.max(1),
            queue: Arc::new(std::sync::Mutex::new(SlotQueue::default())),
            pool: Arc::new(Pool {
                state: Mutex::new(PoolState::default()),
                freed: Arc::new(Notify::new()),
                handshakes: Semaphore::new(4),
                limits,
            }),
        }
    }
}

impl Actor for HostActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let pool = self.pool.clone();
        let every = (pool.limits.idle / 2).max(Duration::from_secs(1));
        ctx.run_interval(every, move |act, ctx| {
            let pool = pool.clone();
            ctx.spawn(
                async move {
                    let mut st = pool.state.lock().await;
                    let idle = pool.limits.idle;
                    st.conns.retain(|c| {
                        let unused = c.in_use.load(Ordering::Acquire) == 0;
                        let keep =
                            !(c.client.is_closed() || unused && c.last_used.elapsed() > idle);
                        if !keep && unused {
                            let client = c.client.clone();
                            tokio::spawn(async move {
                                let _ = client.disconnect().await;
                            });
                        }
                        keep
                    });
                }
                .into_actor(act),
            );
        });
    }
}

impl Handler<AcquireSlot> for HostActor {
    type Result = ResponseFuture<Result<OwnedSemaphorePermit, SshError>>;

    fn handle(&mut self, msg: AcquireSlot, _: &mut Self::Context) -> Self::Result {
        let wanted = msg.max_jobs.max(1);
        if wanted > self.capacity {
            self.slots.add_permits(wanted - self.capacity);
            self.capacity = wanted;
        } else if wanted < self.capacity {
            // Take the surplus out as running jobs hand their slots back.
            let surplus = u32::try_from(self.capacity - wanted).unwrap_or(u32::MAX);
            self.capacity = wanted;
            let slots = self.slots.clone();
            tokio::spawn(async move {
                if let Ok(p) = slots.acquire_many_owned(surplus).await {
                    p.forget();
                }
            });
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let start = {
            let mut q = lock(&self.queue);
            let seq = q.next;
            q.next += 1;
            q.waiters.insert((msg.job_id, seq), tx);
            !std::mem::replace(&mut q.pumping, true)
        };
        if start {
            tokio::spawn(pump(self.slots.clone(), self.queue.clone()));
        }
        Box::pin(async move {
            rx.await.map_err(|_| SshError::Protocol {
                addr: String::new(),
                reason: "the server's job slots are closed".into(),
            })
        })
    }
}

impl Handler<Checkout> for HostActor {
    type Result = ResponseFuture<Result<ChannelLease, SshError>>;

    fn handle(&mut self, _: Checkout, _: &mut Self::Context) -> Self::Result {
        let pool = self.pool.clone();
        let store = self.store.clone();
        let opts = self.opts.clone();
        let id = self.server_id;
        Box::pin(async move { checkout(pool, store, opts, id).await })
    }
}

async fn checkout(
    pool: Arc<Pool>,
    store: Store,
    opts: SshOptions,
    id: uuid::Uuid,
) -> Result<ChannelLease, SshError> {
    loop {
        let freed = pool.freed.notified();
        tokio::pin!(freed);
        freed.as_mut().enable();
        {
            let mut st = pool.state.lock().await;
            st.conns.retain(|c| !c.client.is_closed());
            let cap = pool.limits.channels_per_connection.max(1);
            if let Some(c) = st
                .conns
                .iter_mut()
                .filter(|c| c.in_use.load(Ordering::Acquire) < cap)
                .min_by_key(|c| c.in_use.load(Ordering::Acquire))
            {
                c.in_use.fetch_add(1, Ordering::AcqRel);
                c.last_used = Instant::now();
                return Ok(ChannelLease {
                    client: c.client.clone(),
                    login_shell_posix: c.login_shell_posix,
                    in_use: c.in_use.clone(),
                    freed: pool.freed.clone(),
                });
            }
            if st.conns.len() + st.connecting < pool.limits.max_connections.max(1) {
                st.connecting += 1;
                drop(st);
                let made = connect_new(&pool, &store, &opts, id).await;
                let mut st = pool.state.lock().await;
                st.connecting -= 1;
                let server = id.to_string();
                let (client, login_shell_posix) = made.inspect_err(|e| {
                    metrics::SSH_CONNECT_FAILURES.inc([&server, failure_kind(e)]);
                })?;
                metrics::SSH_CONNECTS.inc([&server]);
                let in_use = Arc::new(AtomicUsize::new(1));
                st.conns.push(PooledConn {
                    client: client.clone(),
                    login_shell_posix,
                    in_use: in_use.clone(),
                    last_used: Instant::now(),
                    _open: metrics::SSH_CONNECTIONS_OPEN.track([&server]),
                });
                pool.freed.notify_waiters();
                return Ok(ChannelLease {
                    client,
                    login_shell_posix,
                    in_use,
                    freed: pool.freed.clone(),
                });
            }
        }
        // Full: wait for a lease to be returned or a connection to be made.
        let _ = tokio::time::timeout(Duration::from_millis(500), freed).await;
    }
}

async fn connect_new(
    pool: &Pool,
    store: &Store,
    opts: &SshOptions,
    id: uuid::Uuid,
) -> Result<(Client, bool), SshError> {
    let _handshake = pool
        .handshakes
        .acquire()
        .await
        .map_err(|_| SshError::Protocol {
            addr: String::new(),
            reason: "the connection pool is closed".into(),
        })?;
    // Read the server afresh: credentials or the pinned key may have changed.
    let row = store.get_server(id).await.map_err(|e| match e {
        StoreError::NotFound => SshError::BadKey(format!("server {id} no longer exists")),
        other => SshError::Protocol {
            addr: String::new(),
            reason: format!("cannot read the server record: {other}"),
        },
    })?;
    let draft = store
        .open_server(&row)
        .map_err(|e| SshError::Credentials(e.to_string()))?;
    let target = SshTarget::from_server(&draft)?;
    let conn = ssh::connect(&target, opts).await?;
    let line = ssh::openssh_line(&conn.host_key);
    let fingerprint = ssh::fingerprint(&conn.host_key);
    let by = "first connection";
    if let Err(e) = store
        .pin_on_first_use(
            &row,
            line,
            &fingerprint,
            &crate::domain::Actor::system(),
            by,
        )
        .await
    {
        tracing::error!(server_id = %id, error = %e, "cannot pin the host key");
    }
    let posix = ssh::exec::login_shell_is_posix(&conn.client).await;
    tracing::debug!(server_id = %id, login_shell_posix = posix, "SSH connection opened");
    Ok((conn.client, posix))
}

/// The kind of a connect failure, for the `reason` label (a fixed set: never the message).
fn failure_kind(e: &SshError) -> &'static str {
    match e {
        SshError::Resolve { .. } => "resolve",
        SshError::Refused { .. } => "refused",
        SshError::Unreachable { .. } => "unreachable",
        SshError::Timeout { .. } => "timeout",
        SshError::AuthRejected { .. } => "auth_rejected",
        SshError::BadKey(_) => "bad_key",
        SshError::HostKeyChanged { .. } => "host_key_changed",
        SshError::HostKeyUnknown { .. } => "host_key_unknown",
        SshError::Credentials(_) => "credentials",
        SshError::HostKeyRejected { .. } => "host_key_rejected",
        SshError::Protocol { .. } => "protocol",
    }
}
