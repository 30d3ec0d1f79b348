//! The broker's background duties beside the queue itself:
//!
//! - workers (and `serve`) forward their local events (output, status) to the events exchange,
//!   so every api process can stream any job;
//! - api processes feed events from the exchange into their local bus;
//! - the outbox: processes that accept jobs publish the queued jobs the broker has not
//!   confirmed (it was away when they were submitted), once it is back; and record, in
//!   batches, which jobs the broker did confirm ([`Published`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};

use super::JobQueue;
use super::rabbit::{RabbitBroker, WireEvent};
use crate::domain::OutputStream;
use crate::events::{EventBus, JobEvent};
use crate::store::{JobRow, Store};

/// Which of the duties a process takes on.
#[derive(Debug, Clone, Copy)]
pub struct Duties {
    /// Forward local events to the events exchange (processes that run jobs).
    pub forward_events: bool,
    /// Feed events from the exchange into the local bus (api processes).
    pub receive_events: bool,
    /// Publish queued jobs the broker missed (processes that accept jobs).
    pub outbox: bool,
}

/// How long a confirmed job waits to be marked published, with the others confirmed
/// meanwhile. Most jobs are claimed within it, and a claimed job needs no mark: the outbox
/// only looks at queued ones, and only once they are [`OUTBOX_MIN_AGE`] old.
pub const MARK_EVERY: Duration = Duration::from_millis(250);

/// How old an unpublished queued job must be for the outbox to publish it (and a worker's
/// poll to take it while the broker is up): older than any confirmation still waiting for
/// its mark ([`MARK_EVERY`]).
pub const OUTBOX_MIN_AGE: Duration = Duration::from_secs(1);

/// Where the jobs the broker confirmed are recorded: marked published in one statement per
/// [`MARK_EVERY`], if still queued. A mark lost (the process died first) only means that
/// the outbox publishes the job again; a second message for a job is harmless (only one
/// claim wins).
#[derive(Debug, Clone)]
pub struct Published(mpsc::UnboundedSender<String>);

impl Published {
    /// Record that the broker confirmed `job_id`'s message.
    pub fn record(&self, job_id: String) {
        let _ = self.0.send(job_id);
    }

    /// Mark what was recorded, every [`MARK_EVERY`].
    fn start(store: Store) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        tokio::spawn(async move {
            let mut ids = Vec::new();
            while rx.recv_many(&mut ids, 4096).await > 0 {
                tokio::time::sleep(MARK_EVERY).await;
                while let Ok(id) = rx.try_recv() {
                    ids.push(id);
                }
                if let Err(e) = store.mark_published(std::mem::take(&mut ids)).await {
                    tracing::debug!(error = %e, "cannot mark jobs published; the outbox will publish them again");
                }
            }
        });
        Self(tx)
    }
}

/// The rows of the jobs whose status changed in `batch` and whose event did not carry the
/// row (an older worker's), read in one query, each with the place of its job's last such
/// event there: a job whose status changed twice in one batch is published once, as it is
/// now, where its last change was (after the output that came before it).
async fn status_rows(
    store: &Store,
    batch: &[(WireEvent, Vec<u8>)],
) -> HashMap<String, (usize, Arc<JobRow>)> {
    let mut last = HashMap::new();
    for (place, (ev, body)) in batch.iter().enumerate() {
        if let WireEvent::Status { job_id } = ev
            && body.is_empty()
        {
            last.insert(job_id.clone(), place);
        }
    }
    if last.is_empty() {
        return HashMap::new();
    }
    let rows = match store.get_jobs(last.keys().cloned().collect()).await {
        Ok(rows) => rows,
        Err(e) => {
            // Streams catch up from the database when they next read it.
            tracing::debug!(error = %e, "cannot read the jobs whose status changed");
            Vec::new()
        }
    };
    rows.into_iter()
        .filter_map(|row| Some((row.id.clone(), (*last.get(&row.id)?, Arc::new(row)))))
        .collect()
}

/// Publish on the local bus the events of `batch` (drained), in their order: output as it
/// came, a status with the row its event carried (or, from an older worker, the row read
/// back by [`status_rows`]).
async fn feed(store: &Store, events: &EventBus, batch: &mut Vec<(WireEvent, Vec<u8>)>) {
    let rows = status_rows(store, batch).await;
    for (place, (ev, body)) in batch.drain(..).enumerate() {
        match ev {
            WireEvent::Output {
                job_id,
                seq,
                stream,
                at,
            } => events.publish(JobEvent::Output {
                job_id: Arc::from(job_id.as_str()),
                seq,
                stream: OutputStream::from_code(stream),
                data: body.into(),
                at,
            }),
            WireEvent::Status { job_id } if !body.is_empty() => {
                match serde_json::from_slice::<JobRow>(&body) {
                    Ok(row) if row.id == job_id => {
                        events.publish(JobEvent::Status(Arc::new(row)));
                    }
                    // Streams catch up from the database when they next read it.
                    _ => tracing::debug!(%job_id, "a status event with an unreadable row"),
                }
            }
            WireEvent::Status { job_id } => {
                if let Some((last, row)) = rows.get(&job_id)
                    && *last == place
                {
                    events.publish(JobEvent::Status(row.clone()));
                }
            }
        }
    }
}

/// Start `duties`; a process with the outbox duty gets where to record confirmations.
pub fn spawn(
    duties: Duties,
    broker: Arc<RabbitBroker>,
    store: Store,
    events: EventBus,
    poll_secs: u64,
) -> Option<Published> {
    if duties.forward_events {
        let mut rx = events.subscribe();
        let b = broker.clone();
        tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(JobEvent::Output {
                        job_id,
                        seq,
                        stream,
                        data,
                        at,
                    }) => {
                        let ev = WireEvent::Output {
                            job_id: job_id.to_string(),
                            seq,
                            stream: stream.code(),
                            at,
                        };
                        b.publish_event(&ev, data.to_vec()).await;
                    }
                    Ok(JobEvent::Status(row)) => {
                        // The row goes with the event: no api reads it back.
                        let body = serde_json::to_vec(&*row).unwrap_or_default();
                        let ev = WireEvent::Status {
                            job_id: row.id.clone(),
                        };
                        b.publish_event(&ev, body).await;
                    }
                    // Streams that miss events catch up from the database.
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }
    if duties.receive_events
        && let Some(mut rx) = broker.take_events()
    {
        let store = store.clone();
        let events = events.clone();
        tokio::spawn(async move {
            let mut batch = Vec::new();
            while rx.recv_many(&mut batch, 512).await > 0 {
                feed(&store, &events, &mut batch).await;
            }
        });
    }
    if !duties.outbox {
        return None;
    }
    let published = Published::start(store.clone());
    let marks = published.clone();
    tokio::spawn(async move {
        let every = Duration::from_secs(poll_secs.max(1));
        loop {
            tokio::time::sleep(every).await;
            if !broker.is_up() {
                continue;
            }
            let ids = store
                .undelivered_job_ids(OUTBOX_MIN_AGE, None, 500)
                .await
                .unwrap_or_default();
            if !ids.is_empty() {
                tracing::info!(
                    count = ids.len(),
                    "publishing jobs the broker missed (outbox)"
                );
            }
            for id in ids {
                if broker.publish(id.clone(), None).await.is_ok() {
                    marks.record(id);
                }
            }
        }
    });
    Some(published)
}

#[cfg(test)]
mod tests {
    use diesel::RunQueryDsl;

    use super::*;
    use crate::domain::JobStatus;
    use crate::store::tests::TestDb;

    fn row(id: &str, status: JobStatus) -> JobRow {
        JobRow {
            id: id.into(),
            server_id: "s".into(),
            env: "{}".into(),
            status,
            sealed_env: Some(b"sealed secret".to_vec()),
            ..JobRow::default()
        }
    }

    /// A status event carries its row, without the sealed environment, and the api
    /// publishes it as carried; an older worker's empty status event has its row read back
    /// (once per batch, at its last place); output stays where it came; a body naming
    /// another job is dropped.
    #[tokio::test]
    async fn an_api_publishes_the_rows_status_events_carry_and_reads_the_others() {
        let db = TestDb::sqlite();
        let store = db.open().await;
        let stored = row(&uuid::Uuid::now_v7().to_string(), JobStatus::Running);
        let insert = stored.clone();
        store
            .run(move |conn| {
                diesel::insert_into(crate::store::schema::jobs::table)
                    .values(&insert)
                    .execute(conn)?;
                Ok(())
            })
            .await
            .unwrap();
        let carried = row(&uuid::Uuid::now_v7().to_string(), JobStatus::Completed);
        let body = serde_json::to_vec(&carried).unwrap();
        assert!(
            !String::from_utf8_lossy(&body).contains("sealed"),
            "the sealed environment left the process: {}",
            String::from_utf8_lossy(&body)
        );
        let status = |id: &str| WireEvent::Status { job_id: id.into() };
        let output = WireEvent::Output {
            job_id: stored.id.clone(),
            seq: 0,
            stream: 0,
            at: 0,
        };
        let mut batch = vec![
            (status(&stored.id), Vec::new()),
            (output, b"hi".to_vec()),
            (status(&stored.id), Vec::new()),
            (status(&carried.id), body.clone()),
            (status(&stored.id), body),
        ];
        let events = EventBus::default();
        let mut rx = events.subscribe();
        feed(&store, &events, &mut batch).await;
        assert!(batch.is_empty());

        let mut seen = Vec::new();
        while let Ok(event) = rx.try_recv() {
            seen.push(match event {
                JobEvent::Output { job_id, data, .. } => {
                    format!("output {job_id} {}", String::from_utf8_lossy(&data))
                }
                JobEvent::Status(row) => {
                    if row.id == carried.id {
                        assert_eq!(row.sealed_env, None);
                    }
                    format!("status {} {}", row.id, row.status)
                }
            });
        }
        assert_eq!(
            seen,
            vec![
                format!("output {} hi", stored.id),
                format!("status {} running", stored.id),
                format!("status {} completed", carried.id),
            ]
        );
    }
}
