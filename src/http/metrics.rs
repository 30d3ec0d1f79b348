//! `GET /metrics` (Prometheus text) and the middleware that counts HTTP requests.
//!
//! `/metrics` needs no token (scrapers do not send one) and shows nothing secret: counts,
//! durations, route patterns, statuses and server ids — no tokens, credentials, host names
//! or users.

use actix_web::get;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};

use super::AppState;
use crate::domain::JobStatus;
use crate::metrics::{self, Exposition};

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
#[get("/metrics", wrap = "actix_web::middleware::from_fn(track)")]
pub async fn scrape(state: web::Data<AppState>) -> HttpResponse {
    let mut out = Exposition::new();
    let counts = state.engine.store().count_jobs_by_status().await;
    out.family(
        "jobexec_store_up",
        "1 when the database answered the job counts of this scrape.",
        "gauge",
    );
    out.sample("jobexec_store_up", &[], f64::from(u8::from(counts.is_ok())));
    match counts {
        Ok(counts) => {
            out.family(
                "jobexec_jobs",
                "Jobs in the database by status (every process sharing it).",
                "gauge",
            );
            for (status, n) in &counts {
                out.sample("jobexec_jobs", &[("status", status.as_str())], *n as f64);
            }
            let queued = counts
                .iter()
                .find(|(s, _)| *s == JobStatus::Queued)
                .map_or(0, |(_, n)| *n);
            out.family(
                "jobexec_queue_depth",
                "Jobs queued in the database, waiting for a worker.",
                "gauge",
            );
            out.sample("jobexec_queue_depth", &[], queued as f64);
        }
        Err(e) => tracing::warn!(error = %e, "metrics: cannot count the jobs"),
    }
    metrics::render_process(&mut out);
    HttpResponse::Ok()
        .content_type(metrics::CONTENT_TYPE)
        .body(out.finish())
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
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}
