//! Integration tests over real HTTP: one binary, a fresh database per test, test SSH hosts.

mod helpers;

mod health;
mod servers;
mod ssh_test;
