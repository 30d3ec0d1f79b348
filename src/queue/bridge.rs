//! The broker's background duties beside the queue itself:
//!
//! - workers (and `serve`) forward their local events (output, status) to the events exchange,
//!   so every api process can stream any job;
//! - api processes feed events from the exchange into their local bus;
//! - the outbox: processes that accept jobs publish the queued jobs the broker has not
//!   confirmed (it was away when they were submitted), once it is back.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;

use super::JobQueue;
use super::rabbit::{RabbitBroker, WireEvent};
use crate::domain::OutputStream;
use crate::events::{EventBus, JobEvent};
use crate::store::Store;

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

/// Start `duties`.
pub fn spawn(
    duties: Duties,
    broker: Arc<RabbitBroker>,
    store: Store,
    events: EventBus,
    poll_secs: u64,
) {
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
                        b.publish_event(
                            &WireEvent::Status {
                                job_id: row.id.clone(),
                            },
                            Vec::new(),
                        )
                        .await;
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
            while let Some((ev, body)) = rx.recv().await {
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
                    WireEvent::Status { job_id } => {
                        if let Ok(id) = uuid::Uuid::parse_str(&job_id)
                            && let Ok(row) = store.get_job(id).await
                        {
                            events.publish(JobEvent::Status(Arc::new(row)));
                        }
                    }
                }
            }
        });
    }
    if duties.outbox {
        tokio::spawn(async move {
            let every = Duration::from_secs(poll_secs.max(1));
            loop {
                tokio::time::sleep(every).await;
                if !broker.is_up() {
                    continue;
                }
                let ids = store
                    .unpublished_job_ids(1_000_000, 500)
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
                        let _ = store.mark_published(id).await;
                    }
                }
            }
        });
    }
}
