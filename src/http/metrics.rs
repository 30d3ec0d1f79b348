//! `GET /metrics` (Prometheus text) and the middleware that counts HTTP requests.
//!
//! `/metrics` needs no token (scrapers do not send one) and shows nothing secret: counts,
//! durations, route patterns, statuses and server ids — no tokens, credentials, host names
//! or users.

use std::time::Instant;

use actix_web::get;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};

use prometheus::{IntGauge, IntGaugeVec, Opts, Registry};

use super::AppState;
use crate::domain::JobStatus;
use crate::metrics;

/// Prometheus metrics
///
/// The Prometheus text exposition: job counts by status, queue depth, HTTP requests and
/// job durations of this process. Needs no token; shows nothing secret.
#[utoipa::path(
    operation_id = "metrics",
    tag = "health",
    security(()),
    responses(
        (status = 200, description = "Prometheus text format 0.0.4.", body = String, content_type = "text/plain"),
    )
)]
#[get(
    "/metrics",
    wrap = "actix_web::middleware::from_fn(super::auth::loopback_guard)",
    wrap = "actix_web::middleware::from_fn(track)"
)]
pub async fn scrape(state: web::Data<AppState>) -> HttpResponse {
    let counts = state.engine.job_counts().await;
    let registry = Registry::new();
    let gauge = |name: &str, help: &str, value: i64| {
        let gauge = metrics::made(name, IntGauge::with_opts(Opts::new(name, help)));
        if let Some(gauge) = gauge.and_then(|g| register(&registry, name, g)) {
            gauge.set(value);
        }
    };
    gauge(
        "jobexec_store_up",
        "1 when the database answered the job counts of this scrape.",
        i64::from(counts.is_ok()),
    );
    match counts {
        Ok(counts) => {
            let name = "jobexec_jobs";
            let help = "Jobs in the database by status (every process sharing it).";
            let vec = IntGaugeVec::new(Opts::new(name, help), &["status"]);
            if let Some(jobs) = metrics::made(name, vec).and_then(|j| register(&registry, name, j))
            {
                for (status, n) in &counts {
                    if let Ok(g) = jobs.get_metric_with_label_values(&[status.as_str()]) {
                        g.set(*n);
                    }
                }
            }
            let queued = counts
                .iter()
                .find(|(s, _)| *s == JobStatus::Queued)
                .map_or(0, |(_, n)| *n);
            gauge(
                "jobexec_queue_depth",
                "Jobs queued in the database, waiting for a worker.",
                queued,
            );
        }
        Err(e) => tracing::warn!(error = %e, "metrics: cannot count the jobs"),
    }
    HttpResponse::Ok()
        .content_type(metrics::CONTENT_TYPE)
        .body(metrics::render(registry.gather()))
}

/// `collector` registered in `registry` (and handed back), or `None` with the reason logged.
fn register<C>(registry: &Registry, name: &str, collector: C) -> Option<C>
where
    C: prometheus::core::Collector + Clone + 'static,
{
    let registered = registry.register(Box::new(collector.clone()));
    metrics::made(name, registered.map(|()| collector))
}

/// Marks a request [`track`] counted, so the app's default service does not count it again.
#[derive(Clone, Copy)]
struct Tracked;

/// Middleware: count the request by route pattern (never the raw path: the label stays
/// bounded), method and status, and time it to the response head.
pub async fn track(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let began = Instant::now();
    let route = req.match_pattern();
    let route = route.as_deref().unwrap_or("unmatched").to_owned();
    let method = method_label(req.method());
    req.extensions_mut().insert(Tracked);
    let res = next.call(req).await;
    let status = match &res {
        Ok(r) => r.status(),
        Err(e) => e.as_response_error().status_code(),
    };
    metrics::HTTP_REQUESTS.inc([&route, method, status.as_str()]);
    metrics::HTTP_DURATION.observe([&route, method], began.elapsed().as_secs_f64());
    res
}

/// Count a request no route (nor [`track`]) saw: the app's JSON 404 (not timed).
pub(super) fn count_unmatched(req: &HttpRequest, status: actix_web::http::StatusCode) {
    if req.extensions().get::<Tracked>().is_none() {
        let method = method_label(req.method());
        metrics::HTTP_REQUESTS.inc(["unmatched", method, status.as_str()]);
    }
}

/// The standard methods by name; anything else is `other` (a client can invent methods).
fn method_label(m: &Method) -> &'static str {
    const STANDARD: [&str; 9] = [
        "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE",
    ];
    (STANDARD.into_iter())
        .find(|name| *name == m.as_str())
        .unwrap_or("other")
}
