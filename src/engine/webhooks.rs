//! Webhooks: create, read, list, replace, delete, their deliveries and redelivery, and the
//! deliverer every process runs.
//!
//! Deliveries are written by the store in the transaction of the change that causes them
//! (the outbox: `store::webhooks`). The deliverer claims due ones, one process per delivery
//! at a time, posts `{"event", "delivery_id", "at", "data"}` with `X-JobExec-Event`,
//! `X-JobExec-Delivery` (the same on every attempt) and, when the webhook has a secret,
//! `X-JobExec-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`. A
//! connection error, a timeout or a non-2xx answer is retried with exponential backoff and
//! jitter up to `webhooks.max_attempts`, then the delivery is `failed`. Attempts run on
//! their own tasks, at most `webhooks.concurrency` at once and `webhooks.per_webhook` per
//! receiver, each bounded by `webhooks.timeout_secs`: a slow receiver delays nothing else.
//! Redirects are not followed.

use crate::domain::{Action, Area};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::json;

use super::views::{JobView, RunView};
use super::{Actor, Engine, Error, Subject};
use crate::domain::{FieldError, Micros, RunId, Selector};
use crate::store::{Attempt, DeliveryRow, StoreError, WebhookRow, envelope};

/// The events a webhook can want.
pub const EVENTS: [&str; 7] = [
    "job.completed",
    "job.failed",
    "job.timed_out",
    "job.canceled",
    "job.recovered",
    "run.finished",
    "schedule.fire_skipped",
];

/// How often each process looks for due deliveries.
const TICK: Duration = Duration::from_millis(250);
/// The longest wait between two attempts.
const MAX_BACKOFF_MS: u64 = 3_600_000;

/// `filter` of a webhook: both optional.
#[derive(Debug, Default, Clone, serde::Deserialize, serde::Serialize, utoipa::ToSchema)]
pub struct WebhookFilter {
    /// Only jobs and runs on servers this selector matches (`role=web,env=prod`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Only jobs and runs of this template (name or id), and its schedules' skipped fires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
}

/// `POST /webhooks`, `PUT /webhooks/{name_or_id}`.
#[derive(Default, Clone, serde::Deserialize, utoipa::ToSchema)]
pub struct WebhookRequest {
    /// Unique name: 1 to 128 of letters, digits, `.`, `_`, `-`.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,128}$")]
    pub name: Option<String>,
    /// Where deliveries are posted: an `http://` or `https://` URL (loopback and private
    /// addresses are allowed).
    #[schema(max_length = 2048)]
    pub url: Option<String>,
    /// The events it wants (at least one).
    #[schema(min_items = 1)]
    pub events: Option<Vec<String>>,
    /// Which jobs and runs.
    pub filter: Option<WebhookFilter>,
    /// The signing secret (write-only; on a replace, left as it was when not given).
    #[schema(max_length = 1024)]
    pub secret: Option<String>,
    /// Whether events are delivered (default true).
    pub active: Option<bool>,
}

impl std::fmt::Debug for WebhookRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookRequest")
            .field("name", &self.name)
            .field("url", &self.url.as_deref().map(crate::settings::redact_url))
            .field("events", &self.events)
            .field("filter", &self.filter)
            .field("secret", &self.secret.as_ref().map(|_| "[redacted]"))
            .field("active", &self.active)
            .finish()
    }
}

fn invalid(field: &'static str, message: impl Into<String>) -> Error {
    Error::Invalid(FieldError::new(field, message))
}

/// Whether `url` is one deliveries can be posted to.
fn check_url(url: &str) -> Result<(), Error> {
    if url.len() > 2048 {
        return Err(invalid("url", "is longer than 2048 characters"));
    }
    let parsed =
        reqwest::Url::parse(url).map_err(|e| invalid("url", format!("is not a URL ({e})")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid("url", "must be an http:// or https:// URL"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(invalid("url", "has no host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(invalid(
            "url",
            "must not carry credentials; sign deliveries with `secret`",
        ));
    }
    Ok(())
}

/// The hex HMAC-SHA256 of `"<t>.<body>"` under `secret`: what `v1=` carries.
pub fn signature(secret: &str, t: i64, body: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(&key, format!("{t}.{body}").as_bytes());
    tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The wait before attempt `attempts + 1`: `base` doubled per attempt made, ±25%.
fn backoff(base_ms: u64, attempts: u32) -> Duration {
    let exp = base_ms.saturating_mul(1u64 << attempts.saturating_sub(1).min(30));
    let capped = exp.min(MAX_BACKOFF_MS);
    // 75% to 125%, from a random number.
    let jitter = 750 + (uuid::Uuid::new_v4().as_u128() % 501) as u64;
    Duration::from_millis(capped.saturating_mul(jitter) / 1000)
}

/// A delivery the deliverer works on, with the webhook it goes to.
struct Job {
    delivery: DeliveryRow,
    hook: WebhookRow,
}

/// Attempts in flight per webhook, in this process.
#[derive(Default)]
struct InFlight(Mutex<HashMap<String, usize>>);

impl InFlight {
    fn take(&self, hook: &str, max: usize) -> bool {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let n = map.entry(hook.to_string()).or_default();
        if *n >= max {
            return false;
        }
        *n += 1;
        true
    }

    fn give(&self, hook: &str) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = map.get_mut(hook) {
            *n = n.saturating_sub(1);
        }
    }
}

/// A webhook request's fields, checked as far as they can be without the database (the
/// template its filter names is looked up when it is saved).
#[derive(Debug)]
struct CheckedWebhook {
    name: String,
    url: String,
    events: Vec<String>,
    selector: Option<String>,
    template: Option<String>,
    secret: Option<String>,
    active: bool,
}

/// Check a webhook request whole, without the database: `check-config` and the settings
/// file's tables use it as the API does.
pub fn check_webhook(request: WebhookRequest) -> Result<(), Error> {
    checked(request).map(drop)
}

fn checked(request: WebhookRequest) -> Result<CheckedWebhook, Error> {
    let name = request.name.ok_or_else(|| invalid("name", "is required"))?;
    if !crate::domain::valid_template_name(&name) {
        return Err(invalid(
            "name",
            "must be 1 to 128 of letters, digits, '.', '_' and '-'",
        ));
    }
    let url = request.url.ok_or_else(|| invalid("url", "is required"))?;
    check_url(&url)?;
    let events = request
        .events
        .ok_or_else(|| invalid("events", "is required"))?;
    if events.is_empty() {
        return Err(invalid("events", "is empty: name at least one event"));
    }
    if let Some(bad) = events.iter().find(|e| !EVENTS.contains(&e.as_str())) {
        return Err(invalid(
            "events",
            format!(
                "unknown event {bad:?}; expected any of {}",
                EVENTS.join(", ")
            ),
        ));
    }
    let filter = request.filter.unwrap_or_default();
    let selector = (filter.selector.as_deref())
        .map(|s| Selector::parse("filter.selector", s).map(|s| s.to_string()))
        .transpose()?;
    if request.secret.as_ref().is_some_and(|s| s.len() > 1024) {
        return Err(invalid("secret", "is longer than 1024 bytes"));
    }
    Ok(CheckedWebhook {
        name,
        url,
        events,
        selector,
        template: filter.template,
        secret: request.secret,
        active: request.active.unwrap_or(true),
    })
}

impl Engine {
    /// Check a webhook request whole (`old`: the row it replaces) and make its row.
    pub(super) async fn webhook_row(
        &self,
        request: WebhookRequest,
        old: Option<&WebhookRow>,
    ) -> Result<WebhookRow, Error> {
        let CheckedWebhook {
            name,
            url,
            events,
            selector,
            template,
            secret,
            active,
        } = checked(request)?;
        let template_id = match template.as_deref() {
            None => None,
            Some(t) => Some(
                self.store
                    .get_template(t.to_string())
                    .await
                    .map_err(|e| match e {
                        StoreError::NotFound => {
                            invalid("filter.template", format!("template {t:?} does not exist"))
                        }
                        other => other.into(),
                    })?
                    .id,
            ),
        };
        let now = Micros::now().0;
        let id = old.map_or_else(|| uuid::Uuid::now_v7().to_string(), |o| o.id.clone());
        let sealed_secret = match (secret.as_deref(), old) {
            (Some(""), _) => None,
            (Some(s), _) => Some(self.store.seal_webhook_secret(&id, s)?),
            (None, Some(o)) => o.sealed_secret.clone(),
            (None, None) => None,
        };
        Ok(WebhookRow {
            id,
            name,
            url,
            events: serde_json::to_string(&events).unwrap_or_default(),
            selector,
            template_id,
            sealed_secret,
            active,
            created_at: old.map_or(now, |o| o.created_at),
            updated_at: now,
        })
    }

    /// Save a new webhook.
    pub async fn create_webhook(
        &self,
        actor: &Actor,
        request: WebhookRequest,
    ) -> Result<WebhookRow, Error> {
        self.allow(actor, Action::Create(Area::Webhooks)).await?;
        let row = self.webhook_row(request, None).await?;
        let row = self.store.insert_webhook(row).await?;
        self.audit(actor, "webhook.create", &row.id, json!({"name": row.name}))
            .await;
        Ok(row)
    }

    /// One webhook, by name or id, for `actor`.
    pub async fn webhook(&self, actor: &Actor, name_or_id: &str) -> Result<WebhookRow, Error> {
        self.allow(actor, Action::Read(Area::Webhooks)).await?;
        self.find_webhook(name_or_id).await
    }

    /// One webhook, by name or id.
    async fn find_webhook(&self, name_or_id: &str) -> Result<WebhookRow, Error> {
        self.store
            .get_webhook(name_or_id.to_string())
            .await
            .map_err(Error::store(|| Subject::Webhook(name_or_id.to_string())))
    }

    /// Every webhook, by name.
    pub async fn webhooks(&self, actor: &Actor) -> Result<Vec<WebhookRow>, Error> {
        self.allow(actor, Action::Read(Area::Webhooks)).await?;
        Ok(self.store.list_webhooks().await?)
    }

    /// Replace a webhook's definition (its secret stays unless one is given; `""` removes it).
    pub async fn update_webhook(
        &self,
        actor: &Actor,
        name_or_id: &str,
        request: WebhookRequest,
    ) -> Result<WebhookRow, Error> {
        self.allow(actor, Action::Update(Area::Webhooks)).await?;
        let old = self.find_webhook(name_or_id).await?;
        let secret_given = request.secret.is_some();
        let row = self.webhook_row(request, Some(&old)).await?;
        let row = self.store.update_webhook(row).await?;
        let detail = json!({"name": row.name, "secret_changed": secret_given});
        self.audit(actor, "webhook.update", &row.id, detail).await;
        Ok(row)
    }

    /// Delete a webhook and its deliveries.
    pub async fn delete_webhook(&self, actor: &Actor, name_or_id: &str) -> Result<(), Error> {
        self.allow(actor, Action::Delete(Area::Webhooks)).await?;
        let row = self.find_webhook(name_or_id).await?;
        self.store.delete_webhook(row.id.clone()).await?;
        self.audit(actor, "webhook.delete", &row.id, json!({"name": row.name}))
            .await;
        Ok(())
    }

    /// A webhook's last `limit` deliveries, newest first.
    pub async fn deliveries(
        &self,
        actor: &Actor,
        name_or_id: &str,
        limit: i64,
    ) -> Result<Vec<DeliveryRow>, Error> {
        let row = self.webhook(actor, name_or_id).await?;
        Ok(self.store.list_deliveries(row.id, limit).await?)
    }

    /// Attempt a delivery again, now, with its attempts counted afresh (same delivery id).
    pub async fn redeliver(
        &self,
        actor: &Actor,
        name_or_id: &str,
        delivery_id: &str,
    ) -> Result<DeliveryRow, Error> {
        self.allow(actor, Action::Redeliver).await?;
        let row = self.find_webhook(name_or_id).await?;
        let delivery = self
            .store
            .redeliver(row.id.clone(), delivery_id.to_string())
            .await
            .map_err(Error::store(|| Subject::Delivery(delivery_id.to_string())))?;
        self.audit(
            actor,
            "webhook.redeliver",
            &row.id,
            json!({"delivery_id": delivery_id}),
        )
        .await;
        Ok(delivery)
    }

    /// The body a delivery posts: fixed at its first attempt.
    async fn delivery_body(&self, d: &DeliveryRow) -> Result<String, Error> {
        if let Some(body) = &d.body {
            return Ok(body.clone());
        }
        let data = if d.event.starts_with("job.") {
            let id = (d.subject_id.parse())
                .map_err(|_| Error::NotFound(Subject::Job(d.subject_id.clone())))?;
            serde_json::to_value(JobView::of(&self.store.get_job(id).await?))
        } else {
            let id = (d.subject_id.parse())
                .map_err(|_| Error::NotFound(Subject::Run(d.subject_id.clone())))?;
            serde_json::to_value(RunView::of(&self.load_run(RunId(id)).await?))
        }
        .unwrap_or_default();
        let body = envelope(&d.event, &d.id, d.at, data);
        self.store
            .set_delivery_body(d.id.clone(), body.clone())
            .await?;
        Ok(body)
    }

    /// One attempt of a claimed delivery, recorded.
    async fn attempt(&self, client: &reqwest::Client, job: Job) {
        let Job { delivery: d, hook } = job;
        let settings = &self.settings.webhook_delivery;
        let outcome = self.post(client, &d, &hook).await;
        let attempts = u32::try_from(d.attempts)
            .unwrap_or(u32::MAX)
            .saturating_add(1);
        let (status_code, error) = match outcome {
            Ok(code) if (200..300).contains(&code) => (Some(code), None),
            Ok(code) => (Some(code), Some(format!("the receiver answered {code}"))),
            Err(e) => (None, Some(e)),
        };
        let retry_at = (error.is_some() && attempts < settings.max_attempts).then(|| {
            let wait = backoff(settings.retry_base_ms, attempts);
            Micros::now().0 + i64::try_from(wait.as_micros()).unwrap_or(i64::MAX)
        });
        match &error {
            None => tracing::debug!(delivery = %d.id, webhook = %hook.name, "delivered"),
            Some(e) => tracing::info!(delivery = %d.id, webhook = %hook.name, attempt = attempts,
                error = %e, retry = retry_at.is_some(), "webhook delivery failed"),
        }
        let attempt = Attempt {
            status_code,
            error,
            retry_at,
        };
        if let Err(e) = self.store.settle_delivery(d.id.clone(), attempt).await {
            tracing::warn!(delivery = %d.id, error = %e, "cannot record the delivery attempt");
        }
    }

    /// Post a delivery: the receiver's status, or why there is none.
    async fn post(
        &self,
        client: &reqwest::Client,
        d: &DeliveryRow,
        hook: &WebhookRow,
    ) -> Result<i32, String> {
        if !hook.active {
            return Err("the webhook is not active".into());
        }
        let body = (self.delivery_body(d).await).map_err(|e| format!("cannot render: {e}"))?;
        let mut request = client
            .post(&hook.url)
            .header("content-type", "application/json")
            .header(
                "user-agent",
                concat!("job-executor/", env!("CARGO_PKG_VERSION")),
            )
            .header("x-jobexec-event", &d.event)
            .header("x-jobexec-delivery", &d.id);
        match self.store.webhook_secret(hook) {
            Ok(Some(secret)) => {
                let t = Micros::now().0 / 1_000_000;
                let v1 = signature(&secret, t, &body);
                request = request.header("x-jobexec-signature", format!("t={t},v1={v1}"));
            }
            Ok(None) => {}
            Err(e) => return Err(format!("cannot open the webhook's secret: {e}")),
        }
        let answer = request.body(body).send().await.map_err(|e| {
            // Without the URL: it may hold a token in its query.
            let e = e.without_url();
            if e.is_timeout() {
                "the receiver did not answer in time".to_string()
            } else if e.is_connect() {
                format!("cannot connect: {e}")
            } else {
                e.to_string()
            }
        })?;
        Ok(i32::from(answer.status().as_u16()))
    }

    /// Deliver from this process: every [`TICK`], claim what is due and attempt it on a
    /// task of its own.
    pub(crate) fn spawn_deliverer(&self) {
        let engine = self.clone();
        let settings = self.settings.webhook_delivery.clone();
        actix::spawn(async move {
            let client = match reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(settings.timeout_secs.max(1)))
                .build()
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, "no webhook client: deliveries wait");
                    return;
                }
            };
            let slots = Arc::new(tokio::sync::Semaphore::new(settings.concurrency.max(1)));
            let in_flight = Arc::new(InFlight::default());
            let claim_for = i64::try_from(settings.timeout_secs.max(1) + 30).unwrap_or(60);
            let mut tick = tokio::time::interval(TICK);
            loop {
                tick.tick().await;
                let limit = i64::try_from(settings.concurrency.max(1) * 4).unwrap_or(32);
                let due = match engine.store.due_deliveries(limit).await {
                    Ok(due) => due,
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot read the deliveries");
                        continue;
                    }
                };
                let mut hooks: HashMap<String, Option<WebhookRow>> = HashMap::new();
                for delivery in due {
                    let Ok(permit) = slots.clone().try_acquire_owned() else {
                        break;
                    };
                    let hook = match hooks.get(&delivery.webhook_id) {
                        Some(h) => h.clone(),
                        None => {
                            let h = engine
                                .store
                                .get_webhook(delivery.webhook_id.clone())
                                .await
                                .ok();
                            hooks.insert(delivery.webhook_id.clone(), h.clone());
                            h
                        }
                    };
                    let Some(hook) = hook else { continue };
                    if !in_flight.take(&hook.id, settings.per_webhook.max(1)) {
                        continue;
                    }
                    let until = Micros::now().0 + claim_for * 1_000_000;
                    if !matches!(
                        engine
                            .store
                            .claim_delivery(delivery.id.clone(), until)
                            .await,
                        Ok(true)
                    ) {
                        in_flight.give(&hook.id);
                        continue;
                    }
                    let (engine, client, in_flight) =
                        (engine.clone(), client.clone(), in_flight.clone());
                    actix::spawn(async move {
                        let hook_id = hook.id.clone();
                        engine.attempt(&client, Job { delivery, hook }).await;
                        in_flight.give(&hook_id);
                        drop(permit);
                    });
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_over_t_dot_body() {
        // RFC 4231 test case 2 ("Jefe"), with the message split as "<t>.<body>".
        let sig = signature("Jefe", 0, "what do ya want for nothing?");
        assert_eq!(sig.len(), 64);
        let whole = {
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"Jefe");
            let tag = ring::hmac::sign(&key, b"0.what do ya want for nothing?");
            tag.as_ref()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        assert_eq!(sig, whole);
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        for attempts in 1..=5u32 {
            let d = backoff(1000, attempts).as_millis() as u64;
            let mid = 1000u64 << (attempts - 1);
            assert!(d >= mid * 3 / 4 && d <= mid * 5 / 4, "{attempts}: {d}");
        }
        assert!(backoff(1000, 40).as_millis() as u64 <= MAX_BACKOFF_MS * 5 / 4);
    }

    #[test]
    fn urls_are_checked() {
        assert!(check_url("http://127.0.0.1:9/hook").is_ok());
        assert!(check_url("https://10.0.0.1/x?y=z").is_ok());
        for bad in [
            "ftp://x/",
            "not a url",
            "http://user:pw@h/",
            "file:///etc/passwd",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }
}
