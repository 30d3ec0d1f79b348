//! `Dispatcher`: one per process, the only bridge between the queue and the job actors.
//!
//! Owns the jobs running in this process (their actors, their worker slots), the deliveries
//! in hand, the caps of the servers it has run jobs on, and one `HostActor` per server. For
//! each delivery: learn the job's server and that server's cap (from the delivery and the
//! caps kept here, or by reading the job); wait (FIFO) for a slot on its server and in this
//! worker; claim it with one conditional update (only the winner runs it); start its
//! `JobActor`. A job waiting for a slot stays `queued`. A heartbeat renews the leases of
//! running jobs, picks up cancels requested through the database, fails jobs whose worker
//! was lost, and reads the caps kept here afresh.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;

use super::host::{self, HostActor, PoolLimits};
use super::job::{JobActor, JobDeps};
use super::messages::{
    AcquireSlot, Admitted, CancelJob, Delivery, Drain, HostError, JobEnded, StopReason,
};
use crate::domain::Micros;
use crate::events::JobEvent;
use crate::queue::bridge;
use crate::queue::rabbit::{ControlMsg, RabbitBroker};
use crate::queue::{Ack, JobQueue, Route};
use crate::settings::Settings;
use crate::ssh::SshOptions;
use crate::store::{JobRow, Store};

/// The dispatcher of one process.
pub struct Dispatcher {
    deps: JobDeps,
    settings: Arc<Settings>,
    queue: Arc<dyn JobQueue>,
    worker_id: String,
    runs_jobs: bool,
    hosts: HashMap<String, Addr<HostActor>>,
    running: HashMap<String, Running>,
    /// Deliveries in hand: read, waiting for slots, or being claimed.
    pending: HashSet<String>,
    /// Stops that came for a job in hand: it may be claimed (and shown running) before its
    /// actor starts, and the stop is passed on then.
    early_stops: HashMap<String, StopReason>,
    /// Deliveries routed, waiting for the earlier ones' reads: slots are asked for in
    /// delivery order, whatever order the reads finish in (a server's FIFO holds under load).
    read: BTreeMap<u64, Read>,
    /// The `max_concurrent_jobs` of the servers deliveries went to, as last read (by a
    /// delivery's read, or the heartbeat): a delivery that names its server needs no read.
    /// A change of a server's cap reaches this worker within a heartbeat.
    caps: HashMap<String, usize>,
    /// The number the next delivery gets.
    next_delivery: u64,
    /// The delivery whose slot request goes next.
    next_admitted: u64,
    broker: Option<Arc<RabbitBroker>>,
    /// This worker's run slots (`worker.concurrency`). A semaphore: a delivery waits for a
    /// permit away from the actor, and the permit stays with the job until it ends.
    slots: Arc<Semaphore>,
    /// The parent of every job's token.
    token: CancellationToken,
    /// Counts the running jobs, so that `Drain` can wait for the last one to end.
    tracker: TaskTracker,
    draining: bool,
}

/// A job running here.
struct Running {
    actor: Addr<JobActor>,
    /// This worker's slot, held until the job ends.
    _worker_slot: OwnedSemaphorePermit,
    /// Counts the job in [`Dispatcher::tracker`] until it ends.
    _tracked: TaskTrackerToken,
}

/// A job this worker won, with the slots it runs in.
struct Claimed {
    row: JobRow,
    host: Addr<HostActor>,
    host_slot: OwnedSemaphorePermit,
    worker_slot: OwnedSemaphorePermit,
}

impl Dispatcher {
    /// A dispatcher; with `runs_jobs` false (an API process) it only forwards cancels.
    pub fn new(
        deps: JobDeps,
        settings: Arc<Settings>,
        queue: Arc<dyn JobQueue>,
        runs_jobs: bool,
    ) -> Self {
        let worker_id = settings.worker.worker_id();
        let slots = Arc::new(Semaphore::new(settings.worker.concurrency.max(1)));
        Self {
            deps,
            settings,
            queue,
            worker_id,
            runs_jobs,
            hosts: HashMap::new(),
            running: HashMap::new(),
            pending: HashSet::new(),
            early_stops: HashMap::new(),
            read: BTreeMap::new(),
            caps: HashMap::new(),
            next_delivery: 0,
            next_admitted: 0,
            broker: None,
            slots,
            token: CancellationToken::new(),
            tracker: TaskTracker::new(),
            draining: false,
        }
    }

    /// Take cancels from the broker's control exchange as well.
    pub fn with_broker(mut self, broker: Option<Arc<RabbitBroker>>) -> Self {
        self.broker = broker;
        self
    }

    /// Look in the database for queued jobs no delivery brought (the broker was away, a
    /// message was lost, the process restarted): they are delivered to ourselves. While the
    /// broker is up, only those it never confirmed (see [`bridge::OUTBOX_MIN_AGE`]) and
    /// those queued for longer than [`LOST_AFTER`]: the others are in its durable queue, and
    /// taking them here too would only have every worker race for a backlog the broker is
    /// delivering.
    fn poll_queued(&mut self, ctx: &mut Context<Self>) {
        if self.draining || !self.runs_jobs {
            return;
        }
        let store = self.deps.store.clone();
        let broker_up = self.broker.as_ref().is_some_and(|b| b.is_up());
        ctx.spawn(
            async move {
                let ids = if broker_up {
                    (store.undelivered_job_ids(bridge::OUTBOX_MIN_AGE, Some(LOST_AFTER), 200)).await
                } else {
                    store.queued_job_ids(200).await
                };
                ids.unwrap_or_default()
            }
            .into_actor(self)
            .map(|ids, _, ctx| {
                for job_id in ids {
                    ctx.notify(Delivery {
                        job_id,
                        route: None,
                        ack: None,
                    });
                }
            }),
        );
    }

    fn host(&mut self, server_id: &str, max_jobs: usize) -> Option<Addr<HostActor>> {
        if let Some(addr) = self.hosts.get(server_id).filter(|a| a.connected()) {
            return Some(addr.clone());
        }
        let id = uuid::Uuid::parse_str(server_id).ok()?;
        let w = &self.settings.worker;
        let addr = HostActor::new(
            id,
            max_jobs,
            self.deps.store.clone(),
            SshOptions::from_settings(&self.settings.ssh),
            PoolLimits {
                max_connections: w.max_connections_per_host,
                channels_per_connection: w.channels_per_connection,
                idle: Duration::from_secs(w.idle_connection_secs),
            },
            self.settings.ssh.allowed_hosts.clone().into(),
        )
        .start();
        self.hosts.insert(server_id.to_string(), addr.clone());
        Some(addr)
    }

    fn heartbeat(&mut self, ctx: &mut Context<Self>) {
        let store = self.deps.store.clone();
        let ssh_opts = SshOptions::from_settings(&self.settings.ssh);
        let grace = Duration::from_secs(self.settings.jobs.kill_grace_secs);
        let allowed: Arc<[String]> = self.settings.ssh.allowed_hosts.clone().into();
        let events = self.deps.events.clone();
        let worker = self.worker_id.clone();
        let ids: Vec<String> = self.running.keys().cloned().collect();
        let until = lease_until(self.lease());
        let servers: Vec<String> = self.caps.keys().cloned().collect();
        ctx.spawn(
            async move {
                let caps = match store.server_caps(servers).await {
                    Ok(caps) => Some(caps),
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot read the servers' caps");
                        None
                    }
                };
                let cancels = match store.renew_leases(worker, ids, until).await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot renew leases");
                        Vec::new()
                    }
                };
                let lost = "worker lost: its lease expired while the job was running".to_string();
                match store.reap_expired(lost, 3).await {
                    Ok((reaped, requeued)) => {
                        for job in requeued.iter().chain(&reaped) {
                            if let Some(pgid) = job.remote_pgid {
                                actix::spawn(kill_lost_group(
                                    store.clone(),
                                    (ssh_opts.clone(), allowed.clone()),
                                    job.clone(),
                                    pgid,
                                    grace,
                                ));
                            }
                        }
                        for job in requeued {
                            tracing::warn!(job_id = %job.id, "worker lost; the job is safe to retry and queued again");
                        }
                        for job in reaped {
                            let id = job.id;
                            tracing::warn!(job_id = %id, "job failed: its worker was lost");
                            if let Ok(uuid) = uuid::Uuid::parse_str(&id)
                                && let Ok(row) = store.get_job(uuid).await
                            {
                                events.publish(JobEvent::Status(Arc::new(row)));
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot reap expired leases"),
                }
                (cancels, caps)
            }
            .into_actor(self)
            .map(|(cancels, caps), act, _| {
                for job_id in cancels {
                    act.stop_job(job_id, StopReason::Canceled);
                }
                if let Some(caps) = caps {
                    // A server gone is forgotten: its next delivery reads its job.
                    act.caps = caps.into_iter().map(|(id, cap)| (id, cap_of(cap))).collect();
                }
            }),
        );
    }
}

/// Kill, on its host, the process group a lost worker left running (only if it is still
/// that job's: see [`crate::ssh::exec::kill_orphan_group`]). Over a connection of its own, so
/// any process (an api too) can do it.
async fn kill_lost_group(
    store: Store,
    (opts, allowed): (SshOptions, Arc<[String]>),
    job: crate::store::LostJob,
    pgid: i64,
    grace: Duration,
) {
    let Ok(server_id) = uuid::Uuid::parse_str(&job.server_id) else {
        tracing::warn!(job_id = %job.id, server_id = %job.server_id, "cannot stop the lost worker's remote processes: the server id is not a UUID");
        return;
    };
    let work = async {
        let (_, target) = host::server_target(&store, server_id, &allowed).await?;
        let conn = crate::ssh::connect(&target, &opts).await?;
        let done = crate::ssh::exec::kill_orphan_group(&conn.client, pgid, &job.id, grace).await;
        let _ = conn.client.disconnect().await;
        Ok::<(), HostError>(done?)
    };
    match work.await {
        Ok(()) => {
            tracing::info!(job_id = %job.id, pgid, "the lost worker's remote processes are stopped")
        }
        Err(e) => {
            tracing::warn!(job_id = %job.id, pgid, error = %e, "cannot stop the lost worker's remote processes")
        }
    }
}

impl Actor for Dispatcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let every = Duration::from_secs(self.settings.worker.heartbeat_secs.max(1));
        ctx.run_interval(every, |act, ctx| act.heartbeat(ctx));
        if !self.runs_jobs {
            return;
        }
        if let Some(mut rx) = self.queue.take_consumer() {
            ctx.add_stream(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)));
        }
        if let Some(mut rx) = self.broker.as_ref().and_then(|b| b.take_control()) {
            ctx.add_stream(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)));
        }
        let poll = Duration::from_secs(self.settings.rabbitmq.poll_secs.max(1));
        ctx.run_interval(poll, |act, ctx| act.poll_queued(ctx));
        // Jobs queued before this start are found by the database poll, at once.
        self.poll_queued(ctx);
    }
}

impl StreamHandler<ControlMsg> for Dispatcher {
    fn handle(&mut self, msg: ControlMsg, _: &mut Self::Context) {
        let ControlMsg::Cancel { job_id } = msg;
        self.stop_job(job_id, StopReason::Canceled);
    }
}

impl StreamHandler<Delivery> for Dispatcher {
    fn handle(&mut self, msg: Delivery, ctx: &mut Self::Context) {
        <Self as Handler<Delivery>>::handle(self, msg, ctx);
    }
}

impl Handler<Delivery> for Dispatcher {
    type Result = ();

    /// Route the delivery (read the job, unless the delivery names its server and the cap
    /// is known); wait (FIFO) for a slot on its server, then in this worker; claim it;
    /// acknowledge the delivery; start the job's actor.
    fn handle(&mut self, delivery: Delivery, ctx: &mut Self::Context) {
        let Delivery { job_id, route, ack } = delivery;
        if self.draining
            || !self.runs_jobs
            || self.running.contains_key(&job_id)
            || !self.pending.insert(job_id.clone())
        {
            // Not for us now, or already in hand: the row stays the truth either way.
            ctx.spawn(acknowledge(ack).into_actor(self));
            return;
        }
        let number = self.next_delivery;
        self.next_delivery += 1;
        let known = route.and_then(|Route { server_id, cap }| {
            let cap = cap.or_else(|| self.caps.get(&server_id).copied())?;
            Some(Target { server_id, cap })
        });
        if let Some(target) = known {
            // The claim checks that the job is still queued, and on this server.
            let read = Read {
                job_id,
                target: Some(target),
                ack,
            };
            self.read.insert(number, read);
            self.admit(ctx);
            return;
        }
        ctx.spawn(
            read_route(self.deps.store.clone(), job_id.clone())
                .into_actor(self)
                .map(move |target, act, ctx| {
                    if let Some(t) = &target {
                        act.caps.insert(t.server_id.clone(), t.cap);
                    }
                    let read = Read {
                        job_id,
                        target,
                        ack,
                    };
                    act.read.insert(number, read);
                    act.admit(ctx);
                }),
        );
    }
}

/// How long a confirmed job may stay queued before a worker's poll takes it anyway (its
/// message may have been lost: acknowledged after a claim that failed, say).
const LOST_AFTER: Duration = Duration::from_secs(30);

/// A delivery routed: its job's server is known, or the job is not queued any more.
struct Read {
    job_id: String,
    /// Where the job goes (`None`: it was not queued when it was read).
    target: Option<Target>,
    ack: Option<Ack>,
}

/// A queued job's server and that server's `max_concurrent_jobs`.
struct Target {
    server_id: String,
    cap: usize,
}

impl Dispatcher {
    /// Ask for slots for the deliveries read so far, in delivery order: each waits (FIFO)
    /// for a slot on its server, then in this worker; is claimed; acknowledged; started.
    fn admit(&mut self, ctx: &mut Context<Self>) {
        while let Some(Read {
            job_id,
            target,
            ack,
        }) = self.read.remove(&self.next_admitted)
        {
            self.next_admitted += 1;
            // Made now, so the slot request is in the host's mailbox in delivery order.
            let claim = self.wait_and_claim(job_id.clone(), target, ack.is_some());
            // A task of its own (see [`Admitted`]), which reports back when it is over.
            let dispatcher = ctx.address();
            actix::spawn(async move {
                let claimed = claim.await;
                // The claim is committed (or lost) before the delivery is acknowledged.
                acknowledge(ack).await;
                dispatcher.do_send(Admitted { job_id, claimed });
            });
        }
    }
}

impl Handler<Admitted<Claimed>> for Dispatcher {
    type Result = ();

    fn handle(&mut self, msg: Admitted<Claimed>, ctx: &mut Self::Context) {
        let Admitted { job_id, claimed } = msg;
        self.pending.remove(&job_id);
        let early_stop = self.early_stops.remove(&job_id);
        if let Some(claimed) = claimed {
            self.start(claimed, ctx);
            if let Some(reason) = early_stop {
                self.stop_job(job_id, reason);
            }
        }
    }
}

/// The job's server and its cap, if the job is still queued.
async fn read_route(store: Store, job_id: String) -> Option<Target> {
    let (server_id, cap) = store.queued_job_route(job_id).await.ok()??;
    Some(Target {
        server_id,
        cap: cap_of(cap),
    })
}

/// A stored `max_concurrent_jobs` as a slot count.
fn cap_of(max_concurrent_jobs: i32) -> usize {
    usize::try_from(max_concurrent_jobs).unwrap_or(1)
}

async fn acknowledge(ack: Option<Ack>) {
    if let Some(ack) = ack {
        ack().await;
    }
}

/// A lease that runs `lease` from now.
fn lease_until(lease: Duration) -> Micros {
    Micros(Micros::now().0 + i64::try_from(lease.as_micros()).unwrap_or(i64::MAX))
}

impl Dispatcher {
    fn lease(&self) -> Duration {
        Duration::from_secs(self.settings.worker.lease_secs.max(1))
    }

    /// Forward a stop to the job's actor, if the job runs here (or keep it for the actor,
    /// if the job is in hand).
    fn stop_job(&mut self, job_id: String, reason: StopReason) {
        if let Some(job) = self.running.get(&job_id) {
            job.actor.do_send(CancelJob { job_id, reason });
        } else if self.pending.contains(&job_id) {
            self.early_stops.entry(job_id).or_insert(reason);
        }
    }

    /// Wait for a slot on the job's server, then for one in this worker, and claim the job
    /// (`delivered`: a broker delivery brought it). `None` when it was not queued any more
    /// (or not on that server), its host is gone, or another worker won it.
    fn wait_and_claim(
        &mut self,
        job_id: String,
        target: Option<Target>,
        delivered: bool,
    ) -> impl Future<Output = Option<Claimed>> + use<> {
        // The server's slot first: a job waiting for a busy server must not hold one of this
        // worker's slots meanwhile. Asked for now (not when the future first runs), so the
        // requests reach the host in the order of the calls.
        let asked = target.and_then(|Target { server_id, cap }| {
            let host = self.host(&server_id, cap)?;
            let request = host.send(AcquireSlot {
                max_jobs: cap,
                job_id: job_id.clone(),
            });
            Some((host, request, server_id))
        });
        let slots = self.slots.clone();
        let store = self.deps.store.clone();
        let events = self.deps.events.clone();
        let worker = self.worker_id.clone();
        let lease = self.lease();
        async move {
            let (host, request, server_id) = asked?;
            let host_slot = request.await.ok()?.ok()?;
            let worker_slot = slots.acquire_owned().await.ok()?;
            let until = lease_until(lease);
            let claimed = store.claim_job(job_id.clone(), server_id, worker, until, delivered);
            let row = match claimed.await {
                Ok(Some(claimed)) => claimed,
                Ok(None) => return None,
                Err(e) => {
                    tracing::warn!(job_id = %job_id, error = %e, "claim failed");
                    return None;
                }
            };
            events.publish(JobEvent::Status(Arc::new(row.clone())));
            Some(Claimed {
                row,
                host,
                host_slot,
                worker_slot,
            })
        }
    }

    /// Start the actor of a claimed job.
    fn start(&mut self, claimed: Claimed, ctx: &mut Context<Self>) {
        let (row, deps) = (claimed.row, self.deps.clone());
        let id = row.id.clone();
        tracing::info!(job_id = %id, server_id = %row.server_id, "job started");
        let dispatcher = ctx.address().recipient();
        let actor = JobActor::new(
            row,
            deps,
            claimed.host,
            dispatcher,
            &self.token,
            claimed.host_slot,
        );
        let job = Running {
            actor: actor.start(),
            _worker_slot: claimed.worker_slot,
            _tracked: self.tracker.token(),
        };
        self.running.insert(id, job);
    }
}

impl Handler<JobEnded> for Dispatcher {
    type Result = ();

    fn handle(&mut self, JobEnded { job_id }: JobEnded, _: &mut Self::Context) {
        self.running.remove(&job_id);
    }
}

impl Handler<CancelJob> for Dispatcher {
    type Result = ();

    fn handle(&mut self, CancelJob { job_id, reason }: CancelJob, _: &mut Self::Context) {
        self.stop_job(job_id, reason);
    }
}

impl Handler<Drain> for Dispatcher {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: Drain, _: &mut Self::Context) -> Self::Result {
        self.draining = true;
        // Closed, the tracker is done once the last running job has ended.
        self.tracker.close();
        let kill_grace =
            Duration::from_secs(self.deps.jobs.kill_grace_secs) + Duration::from_secs(5);
        Box::pin(
            idle(self.tracker.clone(), msg.grace)
                .into_actor(self)
                .then(move |(), act, _| {
                    for (id, job) in &act.running {
                        job.actor.do_send(CancelJob {
                            job_id: id.clone(),
                            reason: StopReason::Shutdown,
                        });
                    }
                    idle(act.tracker.clone(), kill_grace).into_actor(act)
                }),
        )
    }
}

/// Wait until no job runs (the tracker is closed and empty), or `bound` passes.
async fn idle(tracker: TaskTracker, bound: Duration) {
    let _ = tokio::time::timeout(bound, tracker.wait()).await;
}
