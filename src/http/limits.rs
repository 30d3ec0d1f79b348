//! Per-caller limits: a token bucket for job submissions, a count of open streams.
//!
//! Counted per process: an api behind a load balancer with N processes admits N times the
//! rate, which is what a limit meant to stop a runaway script needs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::ApiError;
use crate::settings::LimitSettings;

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The limits of one process.
pub struct Limits {
    config: std::sync::RwLock<Config>,
    buckets: Mutex<HashMap<String, Bucket>>,
    streams: Arc<Mutex<HashMap<String, usize>>>,
}

#[derive(Debug, Clone, Copy)]
struct Config {
    per_sec: f64,
    burst: f64,
    max_streams: usize,
}

impl Config {
    fn new(s: &LimitSettings) -> Self {
        Config {
            per_sec: f64::from(s.submissions_per_minute) / 60.0,
            burst: f64::from(s.submission_burst.max(1)),
            max_streams: s.max_streams_per_client,
        }
    }
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("config", &self.config())
            .finish_non_exhaustive()
    }
}

/// An open stream, counted until dropped.
pub struct StreamSlot {
    key: String,
    streams: Arc<Mutex<HashMap<String, usize>>>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.streams.lock()
            && let Some(n) = open.get_mut(&self.key)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

impl Limits {
    /// Limits from the settings.
    pub fn new(s: &LimitSettings) -> Self {
        Self {
            config: std::sync::RwLock::new(Config::new(s)),
            buckets: Mutex::new(HashMap::new()),
            streams: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn config(&self) -> Config {
        match self.config.read() {
            Ok(c) => *c,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }

    /// Apply new settings (a reload); buckets and open streams carry over.
    pub fn reconfigure(&self, s: &LimitSettings) {
        match self.config.write() {
            Ok(mut c) => *c = Config::new(s),
            Err(poisoned) => *poisoned.into_inner() = Config::new(s),
        }
    }

    /// Take one submission from `key`'s bucket, or say when to come back (429).
    pub fn submit(&self, key: &str) -> Result<(), ApiError> {
        let Config {
            per_sec,
            burst,
            max_streams: _,
        } = self.config();
        if per_sec <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut buckets = self
            .buckets
            .lock()
            .map_err(|_| ApiError::Internal("the rate limiter is poisoned".into()))?;
        if buckets.len() > 10_000 {
            // Forget callers whose buckets have refilled: they are indistinguishable from new.
            buckets
                .retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * per_sec < burst);
        }
        let bucket = buckets.entry(key.to_string()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let refill = now.duration_since(bucket.at).as_secs_f64() * per_sec;
        bucket.tokens = (bucket.tokens + refill).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let wait = Duration::from_secs_f64((1.0 - bucket.tokens) / per_sec);
        Err(ApiError::TooManyRequests {
            message: format!(
                "too many job submissions: at most {:.0} per minute (burst {:.0}); try again in {} s",
                per_sec * 60.0,
                burst,
                wait.as_secs().max(1)
            ),
            retry_after_secs: wait.as_secs().max(1),
        })
    }

    /// Count a stream opened by `key`, or refuse it (429) at the cap.
    pub fn open_stream(&self, key: &str) -> Result<StreamSlot, ApiError> {
        let mut open = self
            .streams
            .lock()
            .map_err(|_| ApiError::Internal("the stream counter is poisoned".into()))?;
        let max_streams = self.config().max_streams;
        let n = open.entry(key.to_string()).or_insert(0);
        if max_streams > 0 && *n >= max_streams {
            return Err(ApiError::TooManyRequests {
                message: format!(
                    "too many open streams: at most {} per caller; close one first",
                    max_streams
                ),
                retry_after_secs: 1,
            });
        }
        *n += 1;
        Ok(StreamSlot {
            key: key.to_string(),
            streams: self.streams.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_minute: u32, burst: u32, streams: usize) -> Limits {
        Limits::new(&LimitSettings {
            submissions_per_minute: per_minute,
            submission_burst: burst,
            max_streams_per_client: streams,
        })
    }

    #[test]
    fn a_burst_then_the_rate() {
        let l = limits(60, 3, 0);
        for _ in 0..3 {
            l.submit("a").unwrap();
        }
        match l.submit("a") {
            Err(ApiError::TooManyRequests {
                retry_after_secs, ..
            }) => assert_eq!(retry_after_secs, 1),
            other => panic!("{other:?}"),
        }
        // Another caller has its own bucket.
        l.submit("b").unwrap();
        // No limit at 0.
        let free = limits(0, 1, 0);
        for _ in 0..1000 {
            free.submit("a").unwrap();
        }
    }

    #[test]
    fn streams_are_counted_until_dropped() {
        let l = limits(0, 1, 2);
        let one = l.open_stream("a").unwrap();
        let _two = l.open_stream("a").unwrap();
        assert!(l.open_stream("a").is_err());
        let _other = l.open_stream("b").unwrap();
        drop(one);
        let _three = l.open_stream("a").unwrap();
    }
}
