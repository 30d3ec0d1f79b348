//! Per-caller limits: a rate for job submissions (governor's keyed GCRA limiter), a count
//! of open streams; and for everyone, a bound on the output reads streamed at once.
//!
//! Counted per process: an api behind a load balancer with N processes admits N times the
//! rate, which is what a limit meant to stop a runaway script needs.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use governor::clock::Clock as _;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;
use crate::settings::LimitSettings;

/// Callers the submission limiter remembers before it forgets those whose rate has fully
/// refilled (they are indistinguishable from new).
const RETAIN_ABOVE: usize = 10_000;

/// Job outputs (`/logs`, `/stdout`, `/stderr`) read at once; more wait their turn. Each
/// holds a page of chunks and a few frames (see `output`), so this bounds their memory.
const HEAVY_READS: usize = 4;

/// The limits of one process.
pub struct Limits {
    config: RwLock<Config>,
    streams: Arc<Mutex<HashMap<String, usize>>>,
    heavy_reads: Arc<Semaphore>,
}

#[derive(Clone)]
struct Config {
    /// The submission rate and its limiter; `None`: no limit.
    submissions: Option<(Quota, Arc<DefaultKeyedRateLimiter<String>>)>,
    per_minute: u32,
    burst: u32,
    max_streams: usize,
}

impl Config {
    /// The settings' limits; `previous`'s limiter (and so every caller's state) is kept
    /// when the rate did not change.
    fn new(s: &LimitSettings, previous: Option<&Config>) -> Self {
        let burst = NonZeroU32::new(s.submission_burst).unwrap_or(NonZeroU32::MIN);
        let submissions = NonZeroU32::new(s.submissions_per_minute).map(|rate| {
            let quota = Quota::per_minute(rate).allow_burst(burst);
            let limiter = previous
                .and_then(|p| p.submissions.as_ref())
                .filter(|(q, _)| *q == quota)
                .map_or_else(|| Arc::new(RateLimiter::keyed(quota)), |(_, l)| l.clone());
            (quota, limiter)
        });
        Config {
            submissions,
            per_minute: s.submissions_per_minute,
            burst: burst.get(),
            max_streams: s.max_streams_per_client,
        }
    }
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = self.config();
        f.debug_struct("Limits")
            .field("submissions_per_minute", &c.per_minute)
            .field("submission_burst", &c.burst)
            .field("max_streams", &c.max_streams)
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
            config: RwLock::new(Config::new(s, None)),
            streams: Arc::new(Mutex::new(HashMap::new())),
            heavy_reads: Arc::new(Semaphore::new(HEAVY_READS)),
        }
    }

    fn config(&self) -> Config {
        self.config
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Apply new settings (a reload). Open streams carry over, and so do the callers'
    /// submission rates unless the rate or burst changed (then every caller starts afresh).
    pub fn reconfigure(&self, s: &LimitSettings) {
        let mut c = self.config.write().unwrap_or_else(PoisonError::into_inner);
        let next = Config::new(s, Some(&c));
        *c = next;
    }

    /// Take one submission from `key`'s rate, or say when to come back (429).
    pub fn submit(&self, key: &str) -> Result<(), ApiError> {
        let config = self.config();
        let Some((_, limiter)) = &config.submissions else {
            return Ok(());
        };
        if limiter.len() > RETAIN_ABOVE {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        let Err(not_until) = limiter.check_key(&key.to_string()) else {
            return Ok(());
        };
        let wait = not_until.wait_time_from(limiter.clock().now());
        // Whole seconds, rounded up: coming back after `Retry-After` is never too early.
        let secs = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
        Err(ApiError::TooManyRequests {
            message: format!(
                "too many job submissions: at most {} per minute (burst {}); try again in {secs} s",
                config.per_minute, config.burst,
            ),
            retry_after_secs: secs,
        })
    }

    /// A turn to stream a job's output, held until dropped; waits while `HEAVY_READS` (4)
    /// are under way.
    pub async fn heavy_read(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        (self.heavy_reads.clone().acquire_owned().await)
            .map_err(|_| ApiError::Internal("the output read limiter is closed".into()))
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

    #[test]
    fn a_reload_keeps_the_rate_unless_it_changed() {
        let settings = |per_minute, burst| LimitSettings {
            submissions_per_minute: per_minute,
            submission_burst: burst,
            max_streams_per_client: 0,
        };
        let l = limits(6, 1, 0);
        l.submit("a").unwrap();
        match l.submit("a") {
            Err(ApiError::TooManyRequests {
                retry_after_secs, ..
            }) => assert!((9..=10).contains(&retry_after_secs), "{retry_after_secs}"),
            other => panic!("{other:?}"),
        }
        l.reconfigure(&settings(6, 1));
        assert!(
            l.submit("a").is_err(),
            "the same rate: the caller's state carries over"
        );
        l.reconfigure(&settings(6, 2));
        l.submit("a").unwrap();
        l.submit("a").unwrap();
        assert!(l.submit("a").is_err());
        l.reconfigure(&settings(0, 2));
        l.submit("a").unwrap();
        assert!(format!("{l:?}").contains("submission_burst: 2"));
    }
}
