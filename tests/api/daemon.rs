//! The config-file daemon: `job-executor --config FILE serve` with everything in the file,
//! `[[servers]]` applied by name at start, SIGHUP reloading servers and tokens while a job
//! runs, and `check-config` naming what is wrong with its line.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::procs::{Service, free_port};
use crate::helpers::{TEST_SECRET_KEY, TestHost};

/// The servers the daemon lists.
async fn list_servers(d: &Service, token: Option<&str>) -> Vec<Value> {
    let (status, body) = d
        .call_json(reqwest::Method::GET, "/api/v1/servers", token, None)
        .await;
    assert_eq!(status, 200, "{body}");
    body["servers"].as_array().unwrap().clone()
}

fn config(port: u16, db: &str, host: &TestHost, key_file: &str, extra: &str) -> String {
    format!(
        "[http]\naddr = \"127.0.0.1:{port}\"\nworkers = 1\n\n[database]\nurl = \"{db}\"\n\n\
         [secrets]\nkey = \"{TEST_SECRET_KEY}\"\n\n\
         [[servers]]\nname = \"web\"\nhostname = \"{h}\"\nport = {p}\nuser = \"{u}\"\n\
         private_key_file = \"{key_file}\"\nmax_concurrent_jobs = 2\n{extra}",
        h = host.host,
        p = host.port,
        u = host.user,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_from_a_config_file_serves_its_servers_and_reloads_on_sighup() {
    let host = TestHost::start().await;
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("id_ed25519");
    std::fs::write(&key_file, &host.keys.ed25519_openssh).unwrap();
    let key_file = key_file.display().to_string();
    let db = dir.path().join("jobs.db").display().to_string();
    let port = free_port();
    let file = dir.path().join("job-executor.toml");
    std::fs::write(&file, config(port, &db, &host, &key_file, "")).unwrap();

    let check = Command::new(env!("CARGO_BIN_EXE_job-executor"))
        .arg("check-config")
        .arg(&file)
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");

    let file_arg = file.display().to_string();
    let d = Service::start(&["--config", &file_arg, "serve"], &[], port, None).await;
    let pid = d.pid();
    let servers = list_servers(&d, None).await;
    assert_eq!(servers.len(), 1);
    assert_eq!(servers[0]["name"], "web");
    assert_eq!(servers[0]["max_concurrent_jobs"], 2);
    assert_eq!(servers[0]["has_private_key"], true);
    let web = servers[0]["id"].as_str().unwrap().to_string();

    // A job running across the reload.
    let (status, job) = d
        .call_json(
            reqwest::Method::POST,
            "/api/v1/jobs",
            None,
            Some(json!({"command": "sleep 2; echo survived", "server_id": web})),
        )
        .await;
    assert_eq!(status, 201, "{job}");
    let job = job["id"].as_str().unwrap().to_string();

    // The file changes: web gets 5 slots, a second server appears, tokens are required.
    let extra = format!(
        "\n[[servers]]\nname = \"db\"\nhostname = \"{}\"\nport = {}\nuser = \"{}\"\n\
         private_key_file = \"{key_file}\"\nlabels = {{ role = \"db\", env = \"prod\" }}\n\n[auth]\ntokens = [\"ops:reloaded-token-0123456789\"]\n\n\
         [limits]\nsubmissions_per_minute = 6\nsubmission_burst = 1\n",
        host.host, host.port, host.user
    );
    let text = config(port, &db, &host, &key_file, &extra)
        .replace("max_concurrent_jobs = 2", "max_concurrent_jobs = 5");
    std::fs::write(&file, text).unwrap();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    let token = Some("reloaded-token-0123456789");
    let start = Instant::now();
    loop {
        let (status, _) = d
            .call(reqwest::Method::GET, "/api/v1/servers", None, None)
            .await;
        if status == 401 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the reload did not take"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let servers = list_servers(&d, token).await;
    let names: Vec<&str> = servers
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["db", "web"]);
    let web_now = servers.iter().find(|s| s["name"] == "web").unwrap();
    assert_eq!(
        web_now["id"],
        web.as_str(),
        "updated in place, not re-created"
    );
    assert_eq!(web_now["max_concurrent_jobs"], 5);
    let db_now = servers.iter().find(|s| s["name"] == "db").unwrap();
    assert_eq!(db_now["labels"], json!({"role": "db", "env": "prod"}));

    // The running job was not dropped.
    let start = Instant::now();
    let done = loop {
        let (_, j) = d
            .call_json(
                reqwest::Method::GET,
                &format!("/api/v1/jobs/{job}"),
                token,
                None,
            )
            .await;
        if !matches!(j["status"].as_str(), Some("queued" | "running")) {
            break j;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{j}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(done["status"], "completed", "{done}");
    let (_, logs) = d
        .call_json(
            reqwest::Method::GET,
            &format!("/api/v1/jobs/{job}/logs"),
            token,
            None,
        )
        .await;
    assert!(logs.to_string().contains("survived"), "{logs}");
    // The reloaded limits hold: a burst of one, then 429.
    let submit = || {
        d.call_json(
            reqwest::Method::POST,
            "/api/v1/jobs",
            token,
            Some(json!({"command": "true", "server_id": web})),
        )
    };
    assert_eq!(submit().await.0, 201);
    assert_eq!(submit().await.0, 429);

    // A bad file: check-config names the problem and its line; a reload with it changes
    // nothing and the daemon keeps serving.
    std::fs::write(
        &file,
        "[http]\naddr = \"127.0.0.1:1\"\n[worker]\nconcurrancy = 3\n",
    )
    .unwrap();
    let check = Command::new(env!("CARGO_BIN_EXE_job-executor"))
        .arg("check-config")
        .arg(&file)
        .output()
        .unwrap();
    assert!(!check.status.success());
    let err = String::from_utf8_lossy(&check.stderr);
    assert!(err.contains(":4:") && err.contains("concurrancy"), "{err}");
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, _) = d
        .call_json(reqwest::Method::GET, "/api/v1/servers", None, None)
        .await;
    assert_eq!(status, 401, "the refused reload dropped the tokens");
    assert_eq!(list_servers(&d, token).await.len(), 2);
}

/// A secret that the bad files below hold, and that no output may show.
const SECRET: &str = "hunter2-s3cr3t-0123456789";

/// Files the settings refuse, each holding [`SECRET`] (or `12345678`) where it is wrong: a
/// syntax error on its line, wrong types, an unknown value, a token given twice, a bad secret key.
fn files_with_secrets() -> Vec<(&'static str, String)> {
    vec![
        (
            "syntax",
            format!("[database]\nurl = \"postgres://u:{SECRET}@h/db\n"),
        ),
        ("unquoted key", format!("[secrets]\nkey = 1:{SECRET}\n")),
        (
            "wrong type",
            format!("[worker]\nconcurrency = \"{SECRET}\"\n"),
        ),
        (
            "tokens not a list",
            format!("[auth]\ntokens = \"ops:{SECRET}\"\n"),
        ),
        ("unknown value", format!("[log]\nformat = \"{SECRET}\"\n")),
        (
            "token twice",
            format!("[auth]\ntokens = [\"a:{SECRET}\", \"b:{SECRET}\"]\n"),
        ),
        (
            "bad secret key",
            format!("[secrets]\nkey = \"1:{SECRET}\"\n"),
        ),
        (
            "wrong-typed password",
            "[[servers]]\nname = \"a\"\nhostname = \"h\"\nuser = \"u\"\npassword = 12345678\n"
                .to_string(),
        ),
    ]
}

/// What a process wrote, for the assertions below.
fn output_of(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_errors_name_line_column_and_key_never_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("jobs.db").display().to_string();
    for (what, text) in files_with_secrets() {
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, &text).unwrap();
        let check = Command::new(env!("CARGO_BIN_EXE_job-executor"))
            .arg("check-config")
            .arg(&file)
            .output()
            .unwrap();
        let said = output_of(&check);
        assert!(!check.status.success(), "{what}: {said}");
        assert!(
            said.contains("bad.toml:2:") || said.contains("bad.toml:5:"),
            "{what}: {said}"
        );
        assert!(
            !said.contains(SECRET) && !said.contains("12345678"),
            "{what}: {said}"
        );
        // A daemon (and a worker) started with the file: what the settings refuse at load
        // (the wrong-typed password is taken as text there, and refused by no one).
        if what == "wrong-typed password" {
            continue;
        }
        for role in ["serve", "worker"] {
            let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_job-executor"))
                .arg("--config")
                .arg(&file)
                .arg(role)
                .env("DATABASE_URL", &db)
                .env_remove("RABBITMQ_URL")
                .env_remove("SERVER_ADDR")
                .env_remove("JOBEXEC_SECRET_KEY")
                .env_remove("JOBEXEC_API_TOKENS")
                .kill_on_drop(true)
                .output();
            let out = tokio::time::timeout(Duration::from_secs(30), run)
                .await
                .unwrap_or_else(|_| panic!("{what}: {role} did not stop"))
                .unwrap();
            let said = output_of(&out);
            assert!(!out.status.success(), "{what}: {said}");
            assert!(!said.contains(SECRET), "{what}: {role}: {said}");
            if said.contains("invalid settings") || said.contains("not valid TOML") {
                assert!(said.contains("bad.toml:2:"), "{what}: {role}: {said}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_reload_logs_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("jobs.db").display().to_string();
    let port = free_port();
    let good = format!(
        "[http]\naddr = \"127.0.0.1:{port}\"\nworkers = 1\n[database]\nurl = \"{db}\"\n\
         [secrets]\nkey = \"{TEST_SECRET_KEY}\"\n"
    );
    let file = dir.path().join("job-executor.toml");
    std::fs::write(&file, &good).unwrap();
    let log = dir.path().join("daemon.log");
    let file_arg = file.display().to_string();
    let d = Service::start(&["--config", &file_arg, "serve"], &[], port, Some(&log)).await;
    for (what, text) in files_with_secrets() {
        std::fs::write(&file, &text).unwrap();
        let before = std::fs::read_to_string(&log).unwrap().len();
        assert!(
            Command::new("kill")
                .args(["-HUP", &d.pid().to_string()])
                .status()
                .unwrap()
                .success()
        );
        let start = Instant::now();
        while std::fs::read_to_string(&log).unwrap().len() == before {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{what}: no reload logged"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (status, _) = d.call(reqwest::Method::GET, "/health", None, None).await;
        assert_eq!(status, 200, "{what}");
    }
    // Give the last reload's lines time to land.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("reload refused"), "{logged}");
    assert!(
        !logged.contains(SECRET) && !logged.contains("12345678"),
        "{logged}"
    );
}
