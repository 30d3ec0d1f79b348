//! `Dispatcher`: one per process, the only bridge between the queue and the job actors.
//!
//! For each delivery: read the job; wait (FIFO) for a slot on its server and in this worker;
//! claim it with one conditional update (only the winner runs it); start its `JobActor`.
//! A job waiting for a slot stays `queued`. A heartbeat renews the leases of running jobs,
//! picks up cancels requested through the database, and fails jobs whose worker was lost.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::host::{HostActor, PoolLimits};
use super::job::{JobActor, JobDeps};
use super::messages::{AcquireSlot, CancelJob, Delivery, Drain, JobEnded, StopReason};
use crate::domain::Micros;
use crate::events::JobEvent;
use crate::queue::JobQueue;
use crate::settings::Settings;
use crate::ssh::SshOptions;

/// The dispatcher of one process.
pub struct Dispatcher {
    deps: JobDeps,
    settings: Arc<Settings>,
    queue: Arc<dyn JobQueue>,
    worker_id: String,
    runs_jobs: bool,
    hosts: HashMap<String, Addr<HostActor>>,
    running: HashMap<String, Addr<JobActor>>,
    running_count: Arc<std::sync::atomic::AtomicUsize>,
    pending: std::collections::HashSet<String>,
    broker: Option<Arc<crate::queue::rabbit::RabbitBroker>>,
    worker_slots_held: HashMap<String, tokio::sync::OwnedSemaphorePermit>,
    slots: Arc<Semaphore>,
    token: CancellationToken,
    draining: bool,
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
            running_count: Arc::default(),
            pending: Default::default(),
            broker: None,
            worker_slots_held: HashMap::new(),
            slots,
            token: CancellationToken::new(),
            draining: false,
        }
    }

    /// Take cancels from the broker's control exchange as well.
    pub fn with_broker(mut self, broker: Option<Arc<crate::queue::rabbit::RabbitBroker>>) -> Self {
        self.broker = broker;
        self
    }

    /// Look in the database for queued jobs no delivery brought (the broker was away, a
    /// message was lost, the process restarted): they are delivered to ourselves.
    fn poll_queued(&mut self, ctx: &mut Context<Self>) {
        if self.draining || !self.runs_jobs {
            return;
        }
        let store = self.deps.store.clone();
        ctx.spawn(
            async move { store.queued_job_ids(200).await.unwrap_or_default() }
                .into_actor(self)
                .map(|ids, _, ctx| {
                    for id in ids {
                        ctx.notify(Delivery(id, None));
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
        )
        .start();
        self.hosts.insert(server_id.to_string(), addr.clone());
        Some(addr)
    }

    fn heartbeat(&mut self, ctx: &mut Context<Self>) {
        let store = self.deps.store.clone();
        let ssh_opts = SshOptions::from_settings(&self.settings.ssh);
        let grace = Duration::from_secs(self.settings.jobs.kill_grace_secs);
        let events = self.deps.events.clone();
        let worker = self.worker_id.clone();
        let ids: Vec<String> = self.running.keys().cloned().collect();
        let lease = Duration::from_secs(self.settings.worker.lease_secs.max(1));
        let until = Micros(Micros::now().0 + i64::try_from(lease.as_micros()).unwrap_or(i64::MAX));
        ctx.spawn(
            async move {
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
                                    ssh_opts.clone(),
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
                cancels
            }
            .into_actor(self)
            .map(|cancels, act, _| {
                for id in cancels {
                    if let Some(addr) = act.running.get(&id) {
                        addr.do_send(CancelJob {
                            job_id: id,
                            reason: StopReason::Canceled,
                        });
                    }
                }
            }),
        );
    }
}

/// Kill, on its host, the process group a lost worker left running (only if it is still
/// that job's: see [`crate::ssh::exec::kill_orphan_group`]). Over a connection of its own, so
/// any process (an api too) can do it.
async fn kill_lost_group(
    store: crate::store::Store,
    opts: SshOptions,
    job: crate::store::LostJob,
    pgid: i64,
    grace: Duration,
) {
    let work = async {
        let id = uuid::Uuid::parse_str(&job.server_id).map_err(|e| e.to_string())?;
        let row = store.get_server(id).await.map_err(|e| e.to_string())?;
        let draft = store.open_server(&row).map_err(|e| e.to_string())?;
        let target = crate::ssh::SshTarget::from_server(&draft).map_err(|e| e.to_string())?;
        let conn = crate::ssh::connect(&target, &opts)
            .await
            .map_err(|e| e.to_string())?;
        let done = crate::ssh::exec::kill_orphan_group(&conn.client, pgid, &job.id, grace)
            .await
            .map_err(|e| e.to_string());
        let _ = conn.client.disconnect().await;
        done
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
        if let Some(rx) = self.queue.take_consumer() {
            ctx.add_stream(tokio_stream_from(rx));
        }
        if let Some(rx) = self.broker.as_ref().and_then(|b| b.take_control()) {
            ctx.add_stream(control_stream(rx));
        }
        let poll = Duration::from_secs(self.settings.rabbitmq.poll_secs.max(1));
        ctx.run_interval(poll, |act, ctx| act.poll_queued(ctx));
        // Jobs queued before this start are found by the database poll, at once.
        self.poll_queued(ctx);
    }
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<crate::queue::Delivered>,
) -> impl futures::Stream<Item = Delivery> {
    futures::stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
            .map(|o| o.map(|d| Delivery(d.job_id, d.ack)))
    })
}

/// A cancel from another process.
struct RemoteCancel(String);

fn control_stream(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<crate::queue::rabbit::ControlMsg>,
) -> impl futures::Stream<Item = RemoteCancel> {
    futures::stream::poll_fn(move |cx| {
        rx.poll_recv(cx).map(|o| {
            o.map(|m| match m {
                crate::queue::rabbit::ControlMsg::Cancel { job_id } => RemoteCancel(job_id),
            })
        })
    })
}

impl StreamHandler<RemoteCancel> for Dispatcher {
    fn handle(&mut self, RemoteCancel(job_id): RemoteCancel, _: &mut Self::Context) {
        if let Some(addr) = self.running.get(&job_id) {
            addr.do_send(CancelJob {
                job_id,
                reason: StopReason::Canceled,
            });
        }
    }
}

impl StreamHandler<Delivery> for Dispatcher {
    fn handle(&mut self, msg: Delivery, ctx: &mut Self::Context) {
        <Self as Handler<Delivery>>::handle(self, msg, ctx);
    }

    fn finished(&mut self, _: &mut Self::Context) {
        tracing::debug!("queue consumer ended");
    }
}

impl Handler<Delivery> for Dispatcher {
    type Result = ();

    fn handle(&mut self, Delivery(job_id, ack): Delivery, ctx: &mut Self::Context) {
        let ack = move || async move {
            if let Some(ack) = ack {
                ack().await;
            }
        };
        if self.draining
            || !self.runs_jobs
            || self.running.contains_key(&job_id)
            || !self.pending.insert(job_id.clone())
        {
            // Not for us now, or already in hand: the row stays the truth either way.
            ctx.spawn(ack().into_actor(self));
            return;
        }
        let store = self.deps.store.clone();
        let id = job_id.clone();
        ctx.spawn(
            async move {
                let (row, max) = store.queued_job_with_cap(id).await.ok()??;
                Some((row, usize::try_from(max).unwrap_or(1)))
            }
            .into_actor(self)
            .then(move |found, act, _| {
                let host = found
                    .as_ref()
                    .and_then(|(row, max)| act.host(&row.server_id, *max));
                let slots = act.slots.clone();
                let store = act.deps.store.clone();
                let worker = act.worker_id.clone();
                let lease = Duration::from_secs(act.settings.worker.lease_secs.max(1));
                let events = act.deps.events.clone();
                async move {
                    let (row, max_jobs) = found?;
                    let host = host?;
                    // The server's slot first: a job waiting for a busy server must not hold
                    // one of this worker's slots meanwhile.
                    let host_slot = host
                        .send(AcquireSlot {
                            max_jobs,
                            job_id: row.id.clone(),
                        })
                        .await
                        .ok()?
                        .ok()?;
                    let worker_slot = slots.acquire_owned().await.ok()?;
                    let until = Micros(
                        Micros::now().0 + i64::try_from(lease.as_micros()).unwrap_or(i64::MAX),
                    );
                    match store.claim_job(row.id.clone(), worker, until).await {
                        Ok(Some(claimed)) => {
                            events.publish(JobEvent::Status(Arc::new(claimed.clone())));
                            Some((claimed, host, host_slot, worker_slot))
                        }
                        Ok(None) => None,
                        Err(e) => {
                            tracing::warn!(job_id = %row.id, error = %e, "claim failed");
                            None
                        }
                    }
                }
                .into_actor(act)
            })
            .then(move |claimed, act, _| {
                // The claim is committed (or lost) before the delivery is acknowledged.
                let id = job_id.clone();
                async move {
                    ack().await;
                    claimed
                }
                .into_actor(act)
                .map(move |claimed, act, _| {
                    act.pending.remove(&id);
                    claimed
                })
            })
            .map(|claimed, act, ctx| {
                let Some((row, host, host_slot, worker_slot)) = claimed else {
                    return;
                };
                let id = row.id.clone();
                tracing::info!(job_id = %id, server_id = %row.server_id, "job started");
                let actor = JobActor::new(
                    row,
                    act.deps.clone(),
                    host,
                    ctx.address().recipient(),
                    &act.token,
                    host_slot,
                )
                .start();
                act.running.insert(id.clone(), actor);
                act.running_count
                    .store(act.running.len(), std::sync::atomic::Ordering::Release);
                // The worker slot is held until the job ends.
                act.worker_slots_held.insert(id, worker_slot);
            }),
        );
    }
}

impl Handler<JobEnded> for Dispatcher {
    type Result = ();

    fn handle(&mut self, JobEnded(id): JobEnded, _: &mut Self::Context) {
        self.running.remove(&id);
        self.worker_slots_held.remove(&id);
        self.running_count
            .store(self.running.len(), std::sync::atomic::Ordering::Release);
    }
}

impl Handler<CancelJob> for Dispatcher {
    type Result = ();

    fn handle(&mut self, msg: CancelJob, _: &mut Self::Context) {
        if let Some(addr) = self.running.get(&msg.job_id) {
            addr.do_send(msg);
        }
    }
}

impl Handler<Drain> for Dispatcher {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: Drain, _: &mut Self::Context) -> Self::Result {
        self.draining = true;
        let grace = msg.grace;
        let kill_grace =
            Duration::from_secs(self.deps.jobs.kill_grace_secs) + Duration::from_secs(5);
        let count = self.running_count.clone();
        let count2 = count.clone();
        Box::pin(
            wait_until_idle(count, grace)
                .into_actor(self)
                .then(move |_, act, _| {
                    for (id, addr) in &act.running {
                        addr.do_send(CancelJob {
                            job_id: id.clone(),
                            reason: StopReason::Shutdown,
                        });
                    }
                    wait_until_idle(count2, kill_grace).into_actor(act)
                }),
        )
    }
}

/// Wait until no job runs, or `bound` passes.
async fn wait_until_idle(count: Arc<std::sync::atomic::AtomicUsize>, bound: Duration) {
    let until = tokio::time::Instant::now() + bound;
    while count.load(std::sync::atomic::Ordering::Acquire) > 0
        && tokio::time::Instant::now() < until
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
