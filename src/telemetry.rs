//! Logging set-up: tracing-subscriber, `RUST_LOG` or `[log] filter`, text or JSON lines.
//!
//! Whatever the filter says, russh's logs (and its sub-crates', every target starting with
//! `russh`) stop at `debug`: at `trace` they show the plaintext of the packets written,
//! passwords included.

use std::io::IsTerminal;

use tracing::{Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Filter, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, filter::FilterExt};

use crate::settings::{LogFormat, LogSettings};

/// The most verbose level russh's targets are ever logged at.
const SSH_LEVEL_CAP: Level = Level::DEBUG;

/// Install the global subscriber. `RUST_LOG`, when set, wins over the settings' filter.
/// Calling it twice is harmless (the second call does nothing).
///
/// Logs go to stderr. Text lines are coloured only when stderr is a terminal: written to a
/// file or a pipe (a log collector, `journald`, `2>file`) they carry no ANSI escape codes.
pub fn init(settings: &LogSettings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry();
    let _ = match settings.format {
        LogFormat::Json => registry
            .with(layer.json().flatten_event(true).with_filter(capped(filter)))
            .try_init(),
        LogFormat::Text => registry.with(layer.with_filter(capped(filter))).try_init(),
    };
}

/// `filter`, with russh's targets held at [`SSH_LEVEL_CAP`] (no directive can raise them:
/// the cap is a second filter both must pass, not one more directive).
fn capped<S>(filter: EnvFilter) -> impl Filter<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let cap = tracing_subscriber::filter::filter_fn(|meta: &Metadata<'_>| {
        !meta.target().starts_with("russh") || *meta.level() <= SSH_LEVEL_CAP
    });
    filter.and(cap)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Seek};

    use super::*;

    /// What the events below leave in the log under `directives`.
    fn logged(directives: &str) -> String {
        let mut file = tempfile::tempfile().unwrap();
        let layer = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(file.try_clone().unwrap())
            .with_filter(capped(EnvFilter::new(directives)));
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            tracing::trace!(target: "russh::cipher", "plaintext hunter2");
            tracing::trace!(target: "russh_cryptovec", "buffer hunter2");
            tracing::debug!(target: "russh::client", "msg type 50");
            tracing::trace!(target: "job_executor::ssh", "our trace");
        });
        let mut log = String::new();
        file.rewind().unwrap();
        file.read_to_string(&mut log).unwrap();
        log
    }

    #[test]
    fn no_directive_raises_russh_above_debug() {
        for directives in [
            "trace",
            "russh=trace",
            "russh::cipher=trace,russh_cryptovec=trace,trace",
            "info,russh=debug,russh=trace",
        ] {
            let log = logged(directives);
            assert!(!log.contains("hunter2"), "{directives}: {log}");
            assert!(log.contains("msg type 50"), "{directives}: {log}");
        }
        assert!(logged("trace").contains("our trace"));
        assert!(!logged("info").contains("msg type 50"));
    }
}
