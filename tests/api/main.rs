//! Integration tests over real HTTP: one binary, a fresh database per test, test SSH hosts.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod helpers;

mod access;
mod browser;
mod browser_logs;
mod conformance;
mod daemon;
mod dashboard;
mod distributed;
mod health;
mod jobctl;
mod jobctl_runs;
mod jobctl_templates;
mod jobs;
mod library;
mod log_range;
mod logs;
mod metrics;
mod openapi;
mod retention;
mod runs;
mod schedules;
mod scopes;
mod security;
mod servers;
mod ssh_exec;
mod ssh_test;
mod stream;
mod templates;
mod tls;
mod webhooks;
