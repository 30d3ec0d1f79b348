//! Process-wide metrics, exposed at `GET /metrics` in the Prometheus text exposition format
//! (version 0.0.4), kept and written by the `prometheus` crate. Each family is a `static`
//! the code that moves it updates directly: a thin wrapper over a prometheus vector whose
//! label values are a fixed-size array, made on first use.
//!
//! A series appears on first use (an unlabelled family always has its one series). Labels
//! are chosen to stay bounded: route patterns (never raw paths), server ids (one per
//! registered server), statuses, stream names. Nothing secret is ever a label: no tokens, no
//! credentials, no host names or users.
//!
//! What lives here is what *this process* did. The numbers the database knows for every
//! process at once (jobs by status, the queue depth) are read at scrape time by the handler
//! (see [`crate::store::Store::count_jobs_by_status`]) into gauges of that scrape, which
//! [`render`] writes before these. Every process sharing the database reports the same
//! numbers for those: aggregate them with `max`, not `sum`.
//!
//! Servers are labelled by id, not name: an id never changes (a name can be edited) and is
//! not a host name. A server's series stay for the life of the process (at 0 once its
//! connections close), so their number is bounded by the servers this process has used.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `jobexec_jobs` (scrape time, from the database) | gauge | `status` |
//! | `jobexec_queue_depth` (scrape time, from the database) | gauge | |
//! | `jobexec_store_up` (scrape time) | gauge | |
//! | `jobexec_build_info` | gauge | `version` |
//! | [`RUNNING_JOBS`] | gauge | |
//! | [`JOB_DURATION`] | histogram | `status` |
//! | [`SSH_CONNECTIONS_OPEN`] | gauge | `server_id` |
//! | [`SSH_CONNECTS`] | counter | `server_id` |
//! | [`SSH_CONNECT_FAILURES`] | counter | `server_id`, `reason` |
//! | [`SSH_CHANNEL_OPENS`] | counter | `server_id` |
//! | [`OUTPUT_BYTES`] | counter | `stream` |
//! | [`HTTP_REQUESTS`] | counter | `route`, `method`, `status` |
//! | [`HTTP_DURATION`] | histogram | `route`, `method` |
//! | [`PRUNED_ROWS`] | counter | `table` |
//!
//! A family prometheus refuses to make (a bad name or bucket list: the unit tests make every
//! one) is logged and counts nothing: a metric never takes the process down.

use std::sync::{LazyLock, OnceLock};

use prometheus::core::{MetricVec, MetricVecBuilder};
use prometheus::proto::MetricFamily;
use prometheus::{HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// The `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Bucket bounds of [`JOB_DURATION`], in seconds.
pub const JOB_DURATION_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// Bucket bounds of [`HTTP_DURATION`], in seconds.
pub const HTTP_DURATION_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Jobs running in this process (a `JobActor` is alive).
pub static RUNNING_JOBS: GaugeVec<0> =
    GaugeVec::new("jobexec_running_jobs", "Jobs running in this process.", []);

/// How long jobs ran in this process, by final status; observed when this process records
/// the end.
pub static JOB_DURATION: HistogramVec<1> = HistogramVec::new(
    "jobexec_job_duration_seconds",
    "Run time of jobs that ended in this process, by final status.",
    ["status"],
)
.buckets(JOB_DURATION_BUCKETS);

/// SSH connections held in this process's pools, by server id.
pub static SSH_CONNECTIONS_OPEN: GaugeVec<1> = GaugeVec::new(
    "jobexec_ssh_connections_open",
    "SSH connections open in this process's pools, by server id.",
    ["server_id"],
);

/// SSH connections made (authenticated), by server id.
pub static SSH_CONNECTS: CounterVec<1> = CounterVec::new(
    "jobexec_ssh_connects_total",
    "SSH connections made for jobs, by server id.",
    ["server_id"],
);

/// SSH connections that could not be made, by server id and kind of failure.
pub static SSH_CONNECT_FAILURES: CounterVec<2> = CounterVec::new(
    "jobexec_ssh_connect_failures_total",
    "SSH connections for jobs that failed, by server id and reason.",
    ["server_id", "reason"],
);

/// SSH channels opened to run jobs, by server id.
pub static SSH_CHANNEL_OPENS: CounterVec<1> = CounterVec::new(
    "jobexec_ssh_channel_opens_total",
    "SSH channels opened to run jobs, by server id.",
    ["server_id"],
);

/// Output bytes received from jobs, by stream (`stdout`, `stderr`).
pub static OUTPUT_BYTES: CounterVec<1> = CounterVec::new(
    "jobexec_output_bytes_total",
    "Output bytes received from jobs in this process, by stream.",
    ["stream"],
);

/// HTTP requests answered, by route pattern, method and status.
pub static HTTP_REQUESTS: CounterVec<3> = CounterVec::new(
    "jobexec_http_requests_total",
    "HTTP requests answered, by route pattern (\"unmatched\" for none), method and status.",
    ["route", "method", "status"],
);

/// Time to the response head of HTTP requests, by route pattern and method (a stream's body
/// runs on after it).
pub static HTTP_DURATION: HistogramVec<2> = HistogramVec::new(
    "jobexec_http_request_duration_seconds",
    "Time to the response head of HTTP requests, by route pattern and method.",
    ["route", "method"],
)
.buckets(HTTP_DURATION_BUCKETS);

/// Rows the retention prunes of this process deleted, by table (`job_output`, `jobs`,
/// `runs`, `audit_log`, `webhook_deliveries`).
pub static PRUNED_ROWS: CounterVec<1> = CounterVec::new(
    "jobexec_pruned_rows_total",
    "Rows deleted by retention prunes in this process, by table.",
    ["table"],
);

/// The version of the running build, a gauge at 1.
static BUILD_INFO: GaugeVec<1> = GaugeVec::new(
    "jobexec_build_info",
    "The version of the running job-executor.",
    ["version"],
);

/// Every process-wide family, registered on the first scrape.
static REGISTRY: LazyLock<Registry> = LazyLock::new(|| {
    let registry = Registry::new();
    BUILD_INFO.set([env!("CARGO_PKG_VERSION")], 1);
    BUILD_INFO.register(&registry);
    RUNNING_JOBS.register(&registry);
    JOB_DURATION.register(&registry);
    SSH_CONNECTIONS_OPEN.register(&registry);
    SSH_CONNECTS.register(&registry);
    SSH_CONNECT_FAILURES.register(&registry);
    SSH_CHANNEL_OPENS.register(&registry);
    OUTPUT_BYTES.register(&registry);
    HTTP_REQUESTS.register(&registry);
    HTTP_DURATION.register(&registry);
    PRUNED_ROWS.register(&registry);
    registry
});

/// The exposition: the families of `scraped` (made at scrape time), then every
/// process-wide family.
pub fn render(mut scraped: Vec<MetricFamily>) -> String {
    scraped.extend(REGISTRY.gather());
    let mut text = String::new();
    if let Err(e) = prometheus::TextEncoder::new().encode_utf8(&scraped, &mut text) {
        tracing::error!(error = %e, "metrics: cannot encode the exposition");
    }
    text
}

/// `made`, or `None` with the reason logged.
pub fn made<C>(name: &str, made: prometheus::Result<C>) -> Option<C> {
    made.map_err(|e| tracing::error!(metric = name, error = %e, "metrics: cannot make a family"))
        .ok()
}

/// A prometheus vector a [`Family`] holds, made from its options, label names and buckets.
pub trait Vector: Sized {
    /// Make the vector.
    fn make(opts: Opts, labels: &[&str], buckets: &[f64]) -> prometheus::Result<Self>;
}

impl Vector for IntCounterVec {
    fn make(opts: Opts, labels: &[&str], _: &[f64]) -> prometheus::Result<Self> {
        IntCounterVec::new(opts, labels)
    }
}

impl Vector for IntGaugeVec {
    fn make(opts: Opts, labels: &[&str], _: &[f64]) -> prometheus::Result<Self> {
        IntGaugeVec::new(opts, labels)
    }
}

impl Vector for prometheus::HistogramVec {
    fn make(opts: Opts, labels: &[&str], buckets: &[f64]) -> prometheus::Result<Self> {
        let opts = HistogramOpts::from(opts).buckets(buckets.to_vec());
        prometheus::HistogramVec::new(opts, labels)
    }
}

/// A family's name, help, label names (and bucket bounds), made into a prometheus vector on
/// first use.
pub struct Family<const N: usize, V> {
    name: &'static str,
    help: &'static str,
    labels: [&'static str; N],
    buckets: &'static [f64],
    vec: OnceLock<Option<V>>,
}

/// A family of counters: values that only go up.
pub type CounterVec<const N: usize> = Family<N, IntCounterVec>;
/// A family of gauges: values that go up and down.
pub type GaugeVec<const N: usize> = Family<N, IntGaugeVec>;
/// A family of histograms with fixed bucket bounds.
pub type HistogramVec<const N: usize> = Family<N, prometheus::HistogramVec>;

impl<const N: usize, T: MetricVecBuilder + 'static> Family<N, MetricVec<T>>
where
    MetricVec<T>: Vector,
{
    /// A family `name` with the label names `labels`.
    pub const fn new(name: &'static str, help: &'static str, labels: [&'static str; N]) -> Self {
        Self {
            name,
            help,
            labels,
            buckets: &[],
            vec: OnceLock::new(),
        }
    }

    fn vec(&self) -> Option<&MetricVec<T>> {
        self.vec
            .get_or_init(|| {
                let opts = Opts::new(self.name, self.help);
                let made_vec = MetricVec::<T>::make(opts, &self.labels, self.buckets);
                let vec = made(self.name, made_vec)?;
                if N == 0 {
                    // The one series of an unlabelled family is there from the start, at 0.
                    let _ = vec.get_metric_with_label_values::<&str>(&[]);
                }
                Some(vec)
            })
            .as_ref()
    }

    /// The series of `values`, made if new.
    fn series(&self, values: [&str; N]) -> Option<T::M> {
        self.vec()?.get_metric_with_label_values(&values).ok()
    }

    fn register(&self, registry: &Registry) {
        if let Some(vec) = self.vec()
            && let Err(e) = registry.register(Box::new(vec.clone()))
        {
            tracing::error!(metric = self.name, error = %e, "metrics: cannot register a family");
        }
    }

    /// The family alone in the text format.
    #[cfg(test)]
    fn text(&self) -> String {
        let registry = Registry::new();
        self.register(&registry);
        let mut text = String::new();
        let encoded = prometheus::TextEncoder::new().encode_utf8(&registry.gather(), &mut text);
        assert!(encoded.is_ok(), "{encoded:?}");
        text
    }
}

impl<const N: usize> CounterVec<N> {
    /// Add one to the series of `values`.
    pub fn inc(&self, values: [&str; N]) {
        self.inc_by(values, 1);
    }

    /// Add `n` to the series of `values`.
    pub fn inc_by(&self, values: [&str; N], n: u64) {
        if let Some(c) = self.series(values) {
            c.inc_by(n);
        }
    }

    /// The value of the series of `values` (made at 0 if it was never moved).
    pub fn get(&self, values: [&str; N]) -> u64 {
        self.series(values).map_or(0, |c| c.get())
    }
}

impl<const N: usize> GaugeVec<N> {
    /// Set the series of `values` to `value`.
    pub fn set(&self, values: [&str; N], value: i64) {
        if let Some(g) = self.series(values) {
            g.set(value);
        }
    }

    /// The value of the series of `values` (made at 0 if it was never moved).
    pub fn get(&self, values: [&str; N]) -> i64 {
        self.series(values).map_or(0, |g| g.get())
    }

    /// Add one to the series of `values` now, and take it back when the guard is dropped:
    /// for things that are open while a value lives (a connection, a running job).
    pub fn track(&'static self, values: [&str; N]) -> GaugeGuard<N> {
        let gauge = self.series(values);
        if let Some(g) = &gauge {
            g.inc();
        }
        GaugeGuard { gauge }
    }
}

/// One unit of a gauge, given back when dropped (see [`GaugeVec::track`]).
#[derive(Debug)]
pub struct GaugeGuard<const N: usize> {
    gauge: Option<IntGauge>,
}

impl<const N: usize> Drop for GaugeGuard<N> {
    fn drop(&mut self) {
        if let Some(g) = &self.gauge {
            g.dec();
        }
    }
}

impl<const N: usize> HistogramVec<N> {
    /// These (ascending) bucket upper bounds; `+Inf` is implied.
    pub const fn buckets(mut self, bounds: &'static [f64]) -> Self {
        self.buckets = bounds;
        self
    }

    /// Count `value` in the series of `values`.
    pub fn observe(&self, values: [&str; N], value: f64) {
        if let Some(h) = self.series(values) {
            h.observe(value);
        }
    }

    /// Observations so far in the series of `values` (made empty if there were none).
    pub fn count(&self, values: [&str; N]) -> u64 {
        self.series(values).map_or(0, |h| h.get_sample_count())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn counters_escape_label_values_and_sort_series() {
        static C: CounterVec<2> =
            CounterVec::new("t_requests_total", "Help with \\ and\nnewline.", ["a", "b"]);
        C.inc(["z", "1"]);
        C.inc_by(["a\"q\\\n", "2"], 5);
        C.inc(["z", "1"]);
        assert_eq!(C.get(["z", "1"]), 2);
        assert_eq!(
            C.text(),
            "# HELP t_requests_total Help with \\\\ and\\nnewline.\n\
             # TYPE t_requests_total counter\n\
             t_requests_total{a=\"a\\\"q\\\\\\n\",b=\"2\"} 5\n\
             t_requests_total{a=\"z\",b=\"1\"} 2\n"
        );
    }

    #[test]
    fn unlabelled_families_show_zero_before_use_and_guards_give_back() {
        static G: GaugeVec<0> = GaugeVec::new("t_open", "Open things.", []);
        assert_eq!(
            G.text(),
            "# HELP t_open Open things.\n# TYPE t_open gauge\nt_open 0\n"
        );
        let a = G.track([]);
        let b = G.track([]);
        assert_eq!(G.get([]), 2);
        drop(a);
        assert_eq!(G.get([]), 1);
        drop(b);
        assert_eq!(G.get([]), 0);
        G.set([], -3);
        assert!(G.text().ends_with("\nt_open -3\n"));
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_with_inf() {
        static H: HistogramVec<1> =
            HistogramVec::new("t_seconds", "Durations.", ["status"]).buckets(&[0.5, 1.0, 2.5]);
        for v in [0.25, 0.5, 0.75, 2.0, 100.0] {
            H.observe(["ok"], v);
        }
        assert_eq!(H.count(["ok"]), 5);
        assert_eq!(
            H.text(),
            "# HELP t_seconds Durations.\n\
             # TYPE t_seconds histogram\n\
             t_seconds_bucket{status=\"ok\",le=\"0.5\"} 2\n\
             t_seconds_bucket{status=\"ok\",le=\"1\"} 3\n\
             t_seconds_bucket{status=\"ok\",le=\"2.5\"} 4\n\
             t_seconds_bucket{status=\"ok\",le=\"+Inf\"} 5\n\
             t_seconds_sum{status=\"ok\"} 103.5\n\
             t_seconds_count{status=\"ok\"} 5\n"
        );
    }

    #[test]
    fn every_process_family_can_be_made_and_the_unlabelled_ones_always_show() {
        assert!(JOB_DURATION.vec().is_some() && HTTP_DURATION.vec().is_some());
        assert!(RUNNING_JOBS.vec().is_some() && SSH_CONNECTIONS_OPEN.vec().is_some());
        assert!(SSH_CONNECTS.vec().is_some() && SSH_CONNECT_FAILURES.vec().is_some());
        assert!(SSH_CHANNEL_OPENS.vec().is_some() && OUTPUT_BYTES.vec().is_some());
        assert!(HTTP_REQUESTS.vec().is_some() && PRUNED_ROWS.vec().is_some());
        let text = render(Vec::new());
        assert!(text.contains("# TYPE jobexec_running_jobs gauge\njobexec_running_jobs "));
        let version = env!("CARGO_PKG_VERSION");
        assert!(text.contains(&format!("jobexec_build_info{{version=\"{version}\"}} 1\n")));
    }

    #[test]
    fn a_family_prometheus_refuses_counts_nothing() {
        static BAD: CounterVec<1> = CounterVec::new("bad name", "Refused.", ["x"]);
        BAD.inc(["a"]);
        assert_eq!(BAD.get(["a"]), 0);
        assert!(BAD.text().is_empty());
    }
}
