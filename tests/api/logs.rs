//! Log lines written to a pipe or a file carry no ANSI colour codes (colour is for terminals).

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::procs::{Service, free_port};

/// The log lines must be there (so the test means something) and free of escape codes.
fn assert_plain(what: &str, logs: &str) {
    assert!(
        logs.contains("INFO"),
        "{what}: no INFO line was logged: {logs:?}"
    );
    assert!(
        !logs.contains("\x1b["),
        "{what}: the logs carry ANSI escape codes: {logs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_to_a_pipe_or_a_file_are_not_coloured() {
    let dir = tempfile::tempdir().unwrap();

    // A file.
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let db = dir.path().join("file.db").display().to_string();
    let log = dir.path().join("service.log");
    let svc = Service::start(
        &["serve"],
        &[
            ("JOBEXEC__DATABASE__URL", &db),
            ("JOBEXEC__HTTP__ADDR", &addr),
            ("JOBEXEC__HTTP__WORKERS", "1"),
            ("RUST_LOG", "info"),
        ],
        port,
        Some(&log),
    )
    .await;
    drop(svc);
    assert_plain("a file", &std::fs::read_to_string(&log).unwrap());

    // A pipe.
    let port = free_port();
    let db = dir.path().join("pipe.db").display().to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_job-executor"))
        .arg("serve")
        .env_remove("DATABASE_URL")
        .env_remove("SERVER_ADDR")
        .env_remove("JOBEXEC_API_TOKENS")
        .env_remove("NO_COLOR")
        .env("JOBEXEC__DATABASE__URL", &db)
        .env("JOBEXEC__HTTP__ADDR", format!("127.0.0.1:{port}"))
        .env("JOBEXEC__HTTP__WORKERS", "1")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let start = Instant::now();
    while client
        .get(format!("http://127.0.0.1:{port}/health"))
        .send()
        .await
        .is_err()
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "serve did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    let mut logs = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    assert_plain("a pipe", &logs);
}
