//! Logging set-up: tracing-subscriber, `RUST_LOG` or `[log] filter`, text or JSON lines.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::settings::{LogFormat, LogSettings};

/// Install the global subscriber. `RUST_LOG`, when set, wins over the settings' filter.
/// Calling it twice is harmless (the second call does nothing).
///
/// Logs go to stderr. Text lines are coloured only when stderr is a terminal: written to a
/// file or a pipe (a log collector, `journald`, `2>file`) they carry no ANSI escape codes.
pub fn init(settings: &LogSettings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match settings.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
