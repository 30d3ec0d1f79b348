//! RabbitMQ (lapin): the jobs queue, the control fanout (cancels) and the events topic.
//!
//! One supervisor task owns the connection: it connects (backing off from 0.5 s up to
//! `reconnect_max_secs`), declares the topology, and watches the connection; when it goes,
//! it starts over. It never gives up and never takes the process down. While it is away,
//! publishing fails fast (the job row stays queued and unpublished: the outbox publishes it
//! later) and workers find work by polling the database.
//!
//! - jobs: a durable quorum queue; persistent messages carrying a job id (and its server, in
//!   a `server_id` header); publisher confirms awaited per message (many in flight at once:
//!   each submit awaits its own); consumers with manual acks and a prefetch of the worker's
//!   concurrency. The dispatcher acks after its claim attempt, never after the job, so
//!   `consumer_timeout` never bites.
//! - control: a fanout exchange; every worker binds an exclusive queue; cancels go to all.
//! - events: a topic exchange keyed `job.<id>`; workers publish output and status, every api
//!   process binds an exclusive queue to `job.#` and feeds its local event bus. Events are
//!   transient and unconfirmed: a stream that misses one catches up from the database.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};
use secrecy::ExposeSecret;
use tokio::sync::{RwLock, mpsc};

use super::{Delivered, JobQueue, QueueError, Route};
use crate::settings::RabbitSettings;

/// A message on the control exchange.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlMsg {
    /// Stop this job wherever it runs.
    Cancel {
        /// The job.
        job_id: String,
    },
}

/// An event as it travels between processes.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WireEvent {
    /// The job's status changed: the body is the row as JSON (empty from an older
    /// worker: read the row).
    Status {
        /// The job.
        job_id: String,
    },
    /// An output chunk; the bytes are the message body.
    Output {
        /// The job.
        job_id: String,
        /// Sequence number.
        seq: i64,
        /// 0 stdout, 1 stderr.
        stream: i16,
        /// µs since the epoch.
        at: i64,
    },
}

/// What this process wants from the broker.
#[derive(Debug, Clone, Copy)]
pub struct Roles {
    /// Consume the jobs queue (a worker), with this prefetch.
    pub consume_jobs: Option<u16>,
    /// Receive cancels (a worker).
    pub control: bool,
    /// Receive events (an api process).
    pub events: bool,
}

/// Events received from other processes: what happened, and the output bytes.
pub type EventsRx = mpsc::UnboundedReceiver<(WireEvent, Vec<u8>)>;

struct Live {
    publish: Channel,
    events: Channel,
}

/// The broker connection of one process. Cheap to clone (an `Arc`).
pub struct RabbitBroker {
    settings: RabbitSettings,
    tls: Tls,
    live: RwLock<Option<Live>>,
    up: AtomicBool,
    jobs_rx: std::sync::Mutex<Option<mpsc::UnboundedReceiver<Delivered>>>,
    control_rx: std::sync::Mutex<Option<mpsc::UnboundedReceiver<ControlMsg>>>,
    events_rx: std::sync::Mutex<Option<EventsRx>>,
}

impl std::fmt::Debug for RabbitBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitBroker")
            .field("url", &self.settings.redacted_url())
            .field("up", &self.up.load(Ordering::Relaxed))
            .finish()
    }
}

struct Sinks {
    jobs: mpsc::UnboundedSender<Delivered>,
    control: mpsc::UnboundedSender<ControlMsg>,
    events: mpsc::UnboundedSender<(WireEvent, Vec<u8>)>,
}

/// Why a session with the broker could not be set up.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    /// The broker did not answer the connection within 10 s.
    #[error("connect timed out")]
    Timeout,
    /// The broker refused or failed a step (connect, channel, declare, consume).
    #[error("{}", explain(.0))]
    Broker(#[from] lapin::Error),
}

/// lapin's error, with what a TLS refusal means for the settings.
fn explain(e: &lapin::Error) -> String {
    let text = e.to_string();
    let hint = if text.contains("UnknownIssuer") {
        "the broker's certificate is not signed by a CA in rabbitmq.ca_file or the \
         system's roots: an unknown CA"
    } else if text.contains("NotValidForName") {
        "the URL's host is not among the names of the broker's certificate"
    } else if text.contains("certificate") || text.contains("InvalidCertificate") {
        "the broker's certificate was refused"
    } else {
        return text;
    };
    format!("{text} ({hint})")
}

/// How `amqps://` trusts the broker: the system's roots, and the CA certificates of
/// `rabbitmq.ca_file` when set. Made once at start ([`tls_config`]).
#[derive(Debug, Clone, Default)]
pub struct Tls {
    /// The PEM text of `rabbitmq.ca_file`.
    ca_pem: Option<String>,
}

/// Why the broker's TLS settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// `ca_file` cannot be read, or holds no usable certificate.
    #[error("ca_file {path}: {reason}")]
    CaFile {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `ca_file` is set for a plain-text URL.
    #[error(
        "ca_file is set ({path}) but the URL is not amqps://: the connection would be plain \
         text. Use an amqps:// URL (TLS), or unset ca_file"
    )]
    NotTls {
        /// The file.
        path: String,
    },
}

/// Read and check `rabbitmq.ca_file` (every certificate in it must parse), and refuse it
/// beside a plain `amqp://` URL.
pub fn tls_config(settings: &RabbitSettings) -> Result<Tls, TlsError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let path = settings.ca_file.trim();
    if path.is_empty() {
        return Ok(Tls::default());
    }
    let url = settings.url.expose_secret().trim();
    if !url.is_empty() && !url.starts_with("amqps://") {
        return Err(TlsError::NotTls { path: path.into() });
    }
    let bad = |reason: String| TlsError::CaFile {
        path: path.into(),
        reason,
    };
    let pem = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(bad(
            "holds no certificate (-----BEGIN CERTIFICATE-----)".into()
        ));
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| bad(format!("a certificate that cannot be used as a CA: {e}")))?;
    }
    Ok(Tls { ca_pem: Some(pem) })
}

impl RabbitBroker {
    /// Start the supervisor on the current runtime; returns at once (the broker may be down).
    pub fn start(
        settings: RabbitSettings,
        tls: Tls,
        roles: Roles,
        name: String,
    ) -> Arc<RabbitBroker> {
        let (jobs_tx, jobs_rx) = mpsc::unbounded_channel();
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let broker = Arc::new(RabbitBroker {
            settings,
            tls,
            live: RwLock::new(None),
            up: AtomicBool::new(false),
            jobs_rx: std::sync::Mutex::new(Some(jobs_rx)),
            control_rx: std::sync::Mutex::new(Some(control_rx)),
            events_rx: std::sync::Mutex::new(Some(events_rx)),
        });
        let sinks = Sinks {
            jobs: jobs_tx,
            control: control_tx,
            events: events_tx,
        };
        let weak = Arc::downgrade(&broker);
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(500);
            loop {
                let Some(b) = weak.upgrade() else { return };
                match b.session(roles, &name, &sinks).await {
                    Ok(conn) => {
                        backoff = Duration::from_millis(500);
                        b.up.store(true, Ordering::Release);
                        tracing::info!(broker = %b.settings.redacted_url(), "connected to RabbitMQ");
                        drop(b);
                        // Watch the connection until it goes.
                        loop {
                            tokio::time::sleep(Duration::from_millis(250)).await;
                            if !conn.status().connected() || weak.strong_count() == 0 {
                                break;
                            }
                        }
                        let Some(b) = weak.upgrade() else { return };
                        b.up.store(false, Ordering::Release);
                        *b.live.write().await = None;
                        tracing::warn!("lost the RabbitMQ connection; reconnecting");
                    }
                    Err(e) => {
                        b.up.store(false, Ordering::Release);
                        tracing::warn!(error = %e, retry_in = ?backoff, "RabbitMQ is not reachable");
                        let max = Duration::from_secs(b.settings.reconnect_max_secs.max(1));
                        drop(b);
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(max);
                    }
                }
            }
        });
        broker
    }

    /// True while connected.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Cancels from other processes (taken once, by the dispatcher).
    pub fn take_control(&self) -> Option<mpsc::UnboundedReceiver<ControlMsg>> {
        self.control_rx.lock().ok().and_then(|mut r| r.take())
    }

    /// Events from other processes (taken once, by the event bridge).
    pub fn take_events(&self) -> Option<EventsRx> {
        self.events_rx.lock().ok().and_then(|mut r| r.take())
    }

    /// Connect, declare, consume. Returns the connection to watch.
    async fn session(
        &self,
        roles: Roles,
        name: &str,
        sinks: &Sinks,
    ) -> Result<Connection, SessionError> {
        let s = &self.settings;
        // `amqps://` is TLS (rustls) with the certificate and host name checked; lapin never
        // falls back to plain text.
        let tls = lapin::tcp::OwnedTLSConfig {
            identity: None,
            cert_chain: self.tls.ca_pem.clone(),
        };
        let conn = tokio::time::timeout(
            Duration::from_secs(10),
            Connection::connect_with_config(
                s.url.expose_secret(),
                ConnectionProperties::default().with_connection_name(name.into()),
                tls,
                lapin::runtime::default_runtime()?,
            ),
        )
        .await
        .map_err(|_| SessionError::Timeout)??;
        let publish = conn.create_channel().await?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        publish
            .queue_declare(s.jobs_queue.as_str().into(), durable, args)
            .await?;
        for (exchange, kind) in [
            (&s.control_exchange, ExchangeKind::Fanout),
            (&s.events_exchange, ExchangeKind::Topic),
        ] {
            let durable = ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            };
            publish
                .exchange_declare(
                    exchange.as_str().into(),
                    kind,
                    durable,
                    FieldTable::default(),
                )
                .await?;
        }
        let events = conn.create_channel().await?;

        if let Some(prefetch) = roles.consume_jobs {
            let tag = format!("{name}-jobs");
            let ch = conn.create_channel().await?;
            let mut consumer = consume(&ch, s.jobs_queue.as_str(), &tag, Some(prefetch)).await?;
            let tx = sinks.jobs.clone();
            tokio::spawn(async move {
                while let Some(Ok(delivery)) = consumer.next().await {
                    let job_id = String::from_utf8_lossy(&delivery.data).trim().to_string();
                    let route = route_of(&delivery.properties);
                    let acker = delivery.acker.clone();
                    let ack: super::Ack = Box::new(move || {
                        Box::pin(async move {
                            let _ = acker.ack(BasicAckOptions::default()).await;
                        })
                    });
                    let ack = Some(ack);
                    let delivered = Delivered { job_id, route, ack };
                    if tx.send(delivered).is_err() {
                        return;
                    }
                }
            });
        }
        if roles.control {
            let mut consumer = subscribe(&conn, &s.control_exchange, "").await?;
            let tx = sinks.control.clone();
            tokio::spawn(async move {
                while let Some(Ok(delivery)) = consumer.next().await {
                    if let Ok(msg) = serde_json::from_slice::<ControlMsg>(&delivery.data)
                        && tx.send(msg).is_err()
                    {
                        return;
                    }
                }
            });
        }
        if roles.events {
            let mut consumer = subscribe(&conn, &s.events_exchange, "job.#").await?;
            let tx = sinks.events.clone();
            tokio::spawn(async move {
                while let Some(Ok(delivery)) = consumer.next().await {
                    let Some(text) = header_text(&delivery.properties, EVENT_HEADER) else {
                        continue;
                    };
                    if let Ok(ev) = serde_json::from_slice::<WireEvent>(text)
                        && tx.send((ev, delivery.data)).is_err()
                    {
                        return;
                    }
                }
            });
        }
        *self.live.write().await = Some(Live { publish, events });
        Ok(conn)
    }

    /// Publish a cancel to every worker (confirmed).
    pub async fn publish_control(&self, msg: &ControlMsg) -> Result<(), QueueError> {
        let body = serde_json::to_vec(msg).map_err(|e| QueueError(e.to_string()))?;
        self.confirmed(
            self.settings.control_exchange.clone(),
            String::new(),
            body,
            None,
        )
        .await
    }

    /// Publish an event (transient, unconfirmed, never waits for the broker).
    pub async fn publish_event(&self, ev: &WireEvent, body: Vec<u8>) {
        let live = self.live.read().await;
        let Some(live) = live.as_ref() else { return };
        let job_id = match ev {
            WireEvent::Status { job_id } | WireEvent::Output { job_id, .. } => job_id,
        };
        let Ok(described) = serde_json::to_string(ev) else {
            return;
        };
        let _ = live
            .events
            .basic_publish(
                self.settings.events_exchange.as_str().into(),
                format!("job.{job_id}").as_str().into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default().with_headers(header(EVENT_HEADER, &described)),
            )
            .await;
    }

    /// Publish `body` persistent, with `headers`, and wait for the broker's confirm.
    async fn confirmed(
        &self,
        exchange: String,
        key: String,
        body: Vec<u8>,
        headers: Option<FieldTable>,
    ) -> Result<(), QueueError> {
        let mut properties = BasicProperties::default().with_delivery_mode(2);
        if let Some(headers) = headers {
            properties = properties.with_headers(headers);
        }
        let confirm = {
            let live = self.live.read().await;
            let Some(live) = live.as_ref() else {
                return Err(QueueError("RabbitMQ is not connected".into()));
            };
            live.publish
                .basic_publish(
                    exchange.as_str().into(),
                    key.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    properties,
                )
                .await
                .map_err(|e| QueueError(e.to_string()))?
        };
        let outcome = tokio::time::timeout(Duration::from_secs(10), confirm)
            .await
            .map_err(|_| QueueError("no publisher confirm within 10 s".into()))?
            .map_err(|e| QueueError(e.to_string()))?;
        if outcome.is_ack() {
            Ok(())
        } else {
            Err(QueueError("the broker refused the message (nack)".into()))
        }
    }
}

/// The header of an event message that describes the event ([`WireEvent`], as JSON).
const EVENT_HEADER: &str = "event";

/// The header of a job message that names the job's server.
const SERVER_HEADER: &str = "server_id";

/// Headers holding one text, `value` under `name`.
fn header(name: &str, value: &str) -> FieldTable {
    let mut headers = FieldTable::default();
    headers.insert(name.into(), AMQPValue::LongString(value.into()));
    headers
}

/// The text of header `name`, if the message has one.
fn header_text<'a>(properties: &'a BasicProperties, name: &str) -> Option<&'a [u8]> {
    match properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(text) => Some(text.as_bytes()),
        _ => None,
    }
}

/// The route a job message names (its server), if it names one.
fn route_of(properties: &BasicProperties) -> Option<Route> {
    let server = header_text(properties, SERVER_HEADER)?;
    Some(Route {
        server_id: std::str::from_utf8(server).ok()?.to_string(),
        cap: None,
    })
}

/// A consumer of `queue` on `ch`: with a prefetch, acknowledged by hand;
/// without, acknowledged on delivery.
async fn consume(
    ch: &Channel,
    queue: &str,
    tag: &str,
    prefetch: Option<u16>,
) -> Result<Consumer, lapin::Error> {
    if let Some(n) = prefetch {
        ch.basic_qos(n.max(1), BasicQosOptions::default()).await?;
    }
    let options = BasicConsumeOptions {
        no_ack: prefetch.is_none(),
        ..Default::default()
    };
    ch.basic_consume(queue.into(), tag.into(), options, FieldTable::default())
        .await
}

/// A consumer of an exclusive queue of this process bound to `exchange` with `key`.
async fn subscribe(conn: &Connection, exchange: &str, key: &str) -> Result<Consumer, lapin::Error> {
    let ch = conn.create_channel().await?;
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    let q = ch
        .queue_declare("".into(), exclusive, FieldTable::default())
        .await?;
    let (bind, args) = (QueueBindOptions::default(), FieldTable::default());
    ch.queue_bind(q.name().clone(), exchange.into(), key.into(), bind, args)
        .await?;
    consume(&ch, q.name().as_str(), "", None).await
}

impl JobQueue for RabbitBroker {
    fn kind(&self) -> &'static str {
        "rabbitmq"
    }

    /// The message is the job id; its server, when known, goes in the `server_id` header
    /// (the cap stays here: each worker keeps its own). A consumer that ignores the header
    /// (an older one) reads the job, as before.
    fn publish(
        &self,
        job_id: String,
        route: Option<Route>,
    ) -> BoxFuture<'_, Result<(), QueueError>> {
        let headers = route.map(|r| header(SERVER_HEADER, &r.server_id));
        Box::pin(async move {
            self.confirmed(
                String::new(),
                self.settings.jobs_queue.clone(),
                job_id.into_bytes(),
                headers,
            )
            .await
        })
    }

    fn take_consumer(&self) -> Option<mpsc::UnboundedReceiver<Delivered>> {
        self.jobs_rx.lock().ok().and_then(|mut r| r.take())
    }

    fn is_up(&self) -> bool {
        RabbitBroker::is_up(self)
    }
}
