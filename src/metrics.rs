//! Process-wide metrics, exposed at `GET /metrics` in the Prometheus text exposition format
//! (version 0.0.4). Hand-rolled: a few families of counters, gauges and fixed-bucket
//! histograms, each a `static` the code that moves it updates directly.
//!
//! A family holds one series per combination of label values, created on first use and kept
//! sorted (a lookup is a binary search, no allocation once the series exists). Labels are
//! chosen to stay bounded: route patterns (never raw paths), server ids (one per registered
//! server), statuses, stream names. Nothing secret is ever a label: no tokens, no
//! credentials, no host names or users.
//!
//! What lives here is what *this process* did. The numbers the database knows for every
//! process at once (jobs by status, the queue depth) are read at scrape time by the handler
//! (see [`crate::store::Store::count_jobs_by_status`]) and written with the same
//! [`Exposition`] writer. Every process sharing the database reports the same numbers for
//! those: aggregate them with `max`, not `sum`.
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
//!
//! A poisoned lock (a panic while a series was being updated) is taken over as is: a metric
//! is at worst one update off, and never takes the process down.

use std::fmt::Write as _;
use std::sync::{Mutex, MutexGuard, PoisonError};

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
    JOB_DURATION_BUCKETS,
);

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
    HTTP_DURATION_BUCKETS,
);

/// Write every process-wide family into `out`.
pub fn render_process(out: &mut Exposition) {
    out.family(
        "jobexec_build_info",
        "The version of the running job-executor.",
        "gauge",
    );
    out.sample(
        "jobexec_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1.0,
    );
    RUNNING_JOBS.render(out);
    JOB_DURATION.render(out);
    SSH_CONNECTIONS_OPEN.render(out);
    SSH_CONNECTS.render(out);
    SSH_CONNECT_FAILURES.render(out);
    SSH_CHANNEL_OPENS.render(out);
    OUTPUT_BYTES.render(out);
    HTTP_REQUESTS.render(out);
    HTTP_DURATION.render(out);
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A text exposition being written: `# HELP`, `# TYPE` and sample lines, escaped.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    /// An empty exposition.
    pub fn new() -> Self {
        Self::default()
    }

    /// Start a family: its `# HELP` and `# TYPE` lines (`kind` is `counter`, `gauge` or
    /// `histogram`).
    pub fn family(&mut self, name: &str, help: &str, kind: &str) {
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// One sample line: `name{label="value",...} value`, the values escaped.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        self.out.push(' ');
        self.out.push_str(&format_value(value));
        self.out.push('\n');
    }

    /// The text.
    pub fn finish(self) -> String {
        self.out
    }
}

/// A label value as the format wants it: `\`, `"` and newlines escaped.
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A `# HELP` text as the format wants it: `\` and newlines escaped.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A sample value: Go's spelling of infinities and NaN, plain decimals otherwise.
fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

/// The series of one family: label values (in the family's label order) and a value, kept
/// sorted by the label values.
struct Family<const N: usize, V> {
    name: &'static str,
    help: &'static str,
    labels: [&'static str; N],
    series: Mutex<Vec<([String; N], V)>>,
}

impl<const N: usize, V: Default + Clone> Family<N, V> {
    const fn new(name: &'static str, help: &'static str, labels: [&'static str; N]) -> Self {
        Self {
            name,
            help,
            labels,
            series: Mutex::new(Vec::new()),
        }
    }

    /// Apply `f` to the series of `values`, made (default) if new.
    fn with<R>(&self, values: [&str; N], f: impl FnOnce(&mut V) -> R) -> R {
        let mut series = lock(&self.series);
        let at = series.binary_search_by(|(k, _)| k.iter().map(String::as_str).cmp(values));
        let i = match at {
            Ok(i) => i,
            Err(i) => {
                series.insert(i, (values.map(str::to_owned), V::default()));
                i
            }
        };
        match series.get_mut(i) {
            Some((_, v)) => f(v),
            None => f(&mut V::default()),
        }
    }

    /// `f` of the series of `values`, if it exists (nothing is made).
    fn read<R>(&self, values: [&str; N], f: impl FnOnce(&V) -> R) -> Option<R> {
        let series = lock(&self.series);
        let at = series.binary_search_by(|(k, _)| k.iter().map(String::as_str).cmp(values));
        at.ok().and_then(|i| series.get(i)).map(|(_, v)| f(v))
    }

    /// A copy of every series; an unlabelled family always has its one series.
    fn snapshot(&self) -> Vec<([String; N], V)> {
        let series = lock(&self.series).clone();
        if N == 0 && series.is_empty() {
            return vec![(std::array::from_fn(|_| String::new()), V::default())];
        }
        series
    }

    fn label_pairs<'a>(&'a self, values: &'a [String; N]) -> Vec<(&'a str, &'a str)> {
        self.labels
            .iter()
            .copied()
            .zip(values.iter().map(String::as_str))
            .collect()
    }
}

/// A family of counters: values that only go up.
pub struct CounterVec<const N: usize>(Family<N, u64>);

impl<const N: usize> CounterVec<N> {
    /// A family `name` with the label names `labels`.
    pub const fn new(name: &'static str, help: &'static str, labels: [&'static str; N]) -> Self {
        Self(Family::new(name, help, labels))
    }

    /// Add one to the series of `values`.
    pub fn inc(&self, values: [&str; N]) {
        self.inc_by(values, 1);
    }

    /// Add `n` to the series of `values`.
    pub fn inc_by(&self, values: [&str; N], n: u64) {
        self.0.with(values, |v| *v = v.saturating_add(n));
    }

    /// The value of the series of `values` (0 if it was never moved).
    pub fn get(&self, values: [&str; N]) -> u64 {
        self.0.read(values, |v| *v).unwrap_or(0)
    }

    /// Write the family into `out`.
    pub fn render(&self, out: &mut Exposition) {
        let f = &self.0;
        out.family(f.name, f.help, "counter");
        for (values, v) in f.snapshot() {
            out.sample(f.name, &f.label_pairs(&values), v as f64);
        }
    }
}

/// A family of gauges: values that go up and down.
pub struct GaugeVec<const N: usize>(Family<N, i64>);

impl<const N: usize> GaugeVec<N> {
    /// A family `name` with the label names `labels`.
    pub const fn new(name: &'static str, help: &'static str, labels: [&'static str; N]) -> Self {
        Self(Family::new(name, help, labels))
    }

    /// Add `delta` (may be negative) to the series of `values`.
    pub fn add(&self, values: [&str; N], delta: i64) {
        self.0.with(values, |v| *v = v.saturating_add(delta));
    }

    /// Set the series of `values` to `value`.
    pub fn set(&self, values: [&str; N], value: i64) {
        self.0.with(values, |v| *v = value);
    }

    /// The value of the series of `values` (0 if it was never moved).
    pub fn get(&self, values: [&str; N]) -> i64 {
        self.0.read(values, |v| *v).unwrap_or(0)
    }

    /// Add one to the series of `values` now, and take it back when the guard is dropped:
    /// for things that are open while a value lives (a connection, a running job).
    pub fn track(&'static self, values: [&str; N]) -> GaugeGuard<N> {
        self.add(values, 1);
        GaugeGuard {
            gauge: self,
            values: values.map(str::to_owned),
        }
    }

    /// Write the family into `out`.
    pub fn render(&self, out: &mut Exposition) {
        let f = &self.0;
        out.family(f.name, f.help, "gauge");
        for (values, v) in f.snapshot() {
            out.sample(f.name, &f.label_pairs(&values), v as f64);
        }
    }
}

/// One unit of a gauge, given back when dropped (see [`GaugeVec::track`]).
pub struct GaugeGuard<const N: usize> {
    gauge: &'static GaugeVec<N>,
    values: [String; N],
}

impl<const N: usize> std::fmt::Debug for GaugeGuard<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GaugeGuard")
            .field("gauge", &self.gauge.0.name)
            .field("values", &self.values)
            .finish()
    }
}

impl<const N: usize> Drop for GaugeGuard<N> {
    fn drop(&mut self) {
        let values: [&str; N] = std::array::from_fn(|i| self.values[i].as_str());
        self.gauge.add(values, -1);
    }
}

/// The observations of one histogram series: per-bucket counts (not cumulative; the last
/// slot is past the highest bound), their sum and count.
#[derive(Debug, Clone, Default)]
struct Observations {
    buckets: Vec<u64>,
    sum: f64,
    count: u64,
}

/// A family of histograms with fixed bucket bounds.
pub struct HistogramVec<const N: usize> {
    family: Family<N, Observations>,
    bounds: &'static [f64],
}

impl<const N: usize> HistogramVec<N> {
    /// A family `name` with the label names `labels` and the (ascending) bucket upper
    /// bounds `bounds`; `+Inf` is implied.
    pub const fn new(
        name: &'static str,
        help: &'static str,
        labels: [&'static str; N],
        bounds: &'static [f64],
    ) -> Self {
        Self {
            family: Family::new(name, help, labels),
            bounds,
        }
    }

    /// Count `value` in the series of `values`.
    pub fn observe(&self, values: [&str; N], value: f64) {
        let slot = self
            .bounds
            .iter()
            .position(|b| value <= *b)
            .unwrap_or(self.bounds.len());
        let slots = self.bounds.len() + 1;
        self.family.with(values, |o| {
            if o.buckets.len() != slots {
                o.buckets = vec![0; slots];
            }
            if let Some(b) = o.buckets.get_mut(slot) {
                *b += 1;
            }
            o.sum += value;
            o.count += 1;
        });
    }

    /// Observations so far in the series of `values`.
    pub fn count(&self, values: [&str; N]) -> u64 {
        self.family.read(values, |o| o.count).unwrap_or(0)
    }

    /// Write the family into `out`: cumulative `_bucket` lines ending with `le="+Inf"`,
    /// then `_sum` and `_count`.
    pub fn render(&self, out: &mut Exposition) {
        let f = &self.family;
        out.family(f.name, f.help, "histogram");
        let bucket = format!("{}_bucket", f.name);
        let sum = format!("{}_sum", f.name);
        let count = format!("{}_count", f.name);
        for (values, o) in f.snapshot() {
            let mut labels = f.label_pairs(&values);
            let mut cumulative = 0u64;
            for (i, bound) in self.bounds.iter().enumerate() {
                cumulative += o.buckets.get(i).copied().unwrap_or(0);
                let le = format_value(*bound);
                let mut with_le = labels.clone();
                with_le.push(("le", &le));
                out.sample(&bucket, &with_le, cumulative as f64);
            }
            labels.push(("le", "+Inf"));
            out.sample(&bucket, &labels, o.count as f64);
            labels.pop();
            out.sample(&sum, &labels, o.sum);
            out.sample(&count, &labels, o.count as f64);
        }
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
        assert_eq!(C.get(["never", "used"]), 0, "reading makes no series");
        let mut out = Exposition::new();
        C.render(&mut out);
        assert_eq!(
            out.finish(),
            "# HELP t_requests_total Help with \\\\ and\\nnewline.\n\
             # TYPE t_requests_total counter\n\
             t_requests_total{a=\"a\\\"q\\\\\\n\",b=\"2\"} 5\n\
             t_requests_total{a=\"z\",b=\"1\"} 2\n"
        );
    }

    #[test]
    fn unlabelled_families_show_zero_before_use_and_guards_give_back() {
        static G: GaugeVec<0> = GaugeVec::new("t_open", "Open things.", []);
        let mut out = Exposition::new();
        G.render(&mut out);
        assert_eq!(
            out.finish(),
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
        let mut out = Exposition::new();
        G.render(&mut out);
        assert!(out.finish().ends_with("\nt_open -3\n"));
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_with_inf() {
        static H: HistogramVec<1> =
            HistogramVec::new("t_seconds", "Durations.", ["status"], &[0.5, 1.0, 2.5]);
        for v in [0.25, 0.5, 0.75, 2.0, 100.0] {
            H.observe(["ok"], v);
        }
        assert_eq!(H.count(["ok"]), 5);
        let mut out = Exposition::new();
        H.render(&mut out);
        assert_eq!(
            out.finish(),
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
    fn special_values_use_go_spelling() {
        let mut out = Exposition::new();
        out.sample("x", &[], f64::INFINITY);
        out.sample("x", &[], f64::NEG_INFINITY);
        out.sample("x", &[], f64::NAN);
        out.sample("x", &[("l", "")], 0.25);
        assert_eq!(out.finish(), "x +Inf\nx -Inf\nx NaN\nx{l=\"\"} 0.25\n");
    }

    #[test]
    fn a_poisoned_series_keeps_counting() {
        static C: CounterVec<0> = CounterVec::new("t_poison_total", "Poisoned.", []);
        C.inc([]);
        let _ = std::thread::spawn(|| {
            let _guard = C.0.series.lock();
            panic!("poison the lock");
        })
        .join();
        assert!(C.0.series.is_poisoned());
        C.inc([]);
        assert_eq!(C.get([]), 2);
    }
}
