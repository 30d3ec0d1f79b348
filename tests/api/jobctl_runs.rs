//! `jobctl` and runs (one command on many servers), the real binary: against a real service
//! with several named servers on one test sshd (and one on a closed port, unreachable), and
//! against a small fake service for the run stream's reconnection.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::helpers::jobctl::{Out, command, jobctl_at};
use crate::helpers::procs::free_port;
use crate::helpers::{Db, TestApp, TestDb, TestHost};

async fn jobctl(app: &TestApp, args: &[&str]) -> Out {
    jobctl_at(&app.base, args, None).await
}

/// Register a key server named `name` on `host` (or, with `port`, on that port of it) with
/// `labels`; returns its id.
async fn add_server(
    app: &TestApp,
    name: &str,
    host: &TestHost,
    port: u16,
    labels: Value,
) -> String {
    let (status, body) = app
        .post(
            "/api/v1/servers",
            &json!({
                "name": name, "hostname": host.host, "port": port, "user": host.user,
                "auth_type": "key", "private_key": host.keys.ed25519_openssh, "labels": labels,
            }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().unwrap().to_string()
}

/// A service, a test host, and servers `web-1`..`web-3` (role=web) and `db-1` (role=db) on
/// it; with `unreachable`, `web-3` is on a closed port.
async fn setup(unreachable: bool) -> (TestDb, TestApp, TestHost) {
    let db = TestDb::create(Db::Sqlite).expect("sqlite");
    let app = TestApp::start(&db, &[("JOBEXEC__JOBS__KILL_GRACE_SECS", "1")]).await;
    let host = TestHost::start().await;
    for (name, role) in [
        ("web-1", "web"),
        ("web-2", "web"),
        ("web-3", "web"),
        ("db-1", "db"),
    ] {
        let port = if unreachable && name == "web-3" {
            free_port()
        } else {
            host.port
        };
        add_server(
            &app,
            name,
            &host,
            port,
            json!({"role": role, "env": "test"}),
        )
        .await;
    }
    (db, app, host)
}

/// Poll run `id` until it ended.
async fn wait_run(app: &TestApp, id: &str) -> Value {
    let start = Instant::now();
    loop {
        let (status, run) = app.get(&format!("/api/v1/runs/{id}")).await;
        assert_eq!(status, 200, "{run}");
        if !matches!(run["status"].as_str(), Some("queued" | "running")) {
            return run;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "run {id} still going: {run}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The id the `jobctl: run ID on N servers` line of stderr names.
fn run_id(out: &Out) -> String {
    let line = out.stderr_row("jobctl: run ");
    line.split_whitespace().nth(2).unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_on_labelled_servers_prefixes_every_line() {
    let (_db, app, _host) = setup(false).await;
    let out = jobctl(&app, &["run", "-l", "role=web", "--", "echo", "hi"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        out.sorted_stdout(),
        ["web-1 | hi", "web-2 | hi", "web-3 | hi"],
        "{out:?}"
    );
    assert!(
        !out.stdout.contains('\x1b') && !out.stderr.contains('\x1b'),
        "no colour when piped"
    );
    // The table (on stderr): every host completed with 0.
    for name in ["web-1", "web-2", "web-3"] {
        let row = out.host_row(name);
        assert!(row.contains("completed"), "{row}");
    }
    assert!(!out.stderr.contains("db-1"), "{out:?}");
    let id = run_id(&out);
    let run = wait_run(&app, &id).await;
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["targets"]["selector"], "role=web");

    // Names of several lengths are padded to the longest; stderr lines go to stderr, each
    // line whole even when the command writes it in parts.
    let out = jobctl(
        &app,
        &[
            "run",
            "--servers",
            "web-1,db-1",
            "--",
            "printf 'par'; sleep 0.3; printf 'tial\\nout\\n'; echo err >&2",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        out.sorted_stdout(),
        [
            "db-1  | out",
            "db-1  | partial",
            "web-1 | out",
            "web-1 | partial"
        ],
        "{out:?}"
    );
    assert!(
        out.stderr.contains("web-1 | err\n") && out.stderr.contains("db-1  | err\n"),
        "{out:?}"
    );

    // -o json: stdout is the final run object alone.
    let out = jobctl(
        &app,
        &["run", "-l", "role=web", "-o", "json", "--", "echo", "hi"],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    let run = out.json();
    assert_eq!(run["status"], "completed");
    assert_eq!(run["counts"]["completed"], 3);
    assert!(
        out.stderr.contains("web-2 | hi"),
        "the lines go to stderr: {out:?}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_fails_the_run() {
    let (_db, app, _host) = setup(true).await;
    let out = jobctl(
        &app,
        &[
            "run",
            "-l",
            "role=web",
            "--keep-going",
            "--summary",
            "--",
            "echo",
            "hi",
        ],
    )
    .await;
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(out.sorted_stdout(), ["web-1 | hi", "web-2 | hi"], "{out:?}");
    let row = out.host_row("web-3");
    assert!(
        row.contains("failed") && row.contains("unreachable"),
        "{out:?}"
    );
    assert!(out.host_row("web-1").contains("completed"), "{out:?}");
    // The summary groups the two that said hi, their sample indented.
    let group = out.stderr_row("web-1, web-2 (2): completed, exit 0");
    assert!(!group.is_empty());
    assert!(out.stderr.contains("\n    hi\n"), "{out:?}");
    let id = run_id(&out);
    let run = wait_run(&app, &id).await;
    assert_eq!(run["status"], "failed");
    let web3 = run["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["server_name"] == "web-3");
    assert_eq!(web3.unwrap()["failure"], "unreachable", "{run}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_list_get_rerun_summary_and_cancel() {
    let (_db, app, _host) = setup(true).await;
    let out = jobctl(
        &app,
        &["run", "-l", "role=web", "--keep-going", "--", "echo", "hi"],
    )
    .await;
    assert_eq!(out.code, 1, "{out:?}");
    let first = run_id(&out);

    let out = jobctl(&app, &["runs", "list"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(
        lines[0].starts_with("ID ") && lines[0].contains("STATUS"),
        "{out:?}"
    );
    assert!(
        lines[1].starts_with(&first) && lines[1].contains("failed"),
        "{out:?}"
    );
    assert!(
        lines[1].contains("2 completed, 1 failed") && lines[1].contains("role=web"),
        "{out:?}"
    );
    let list = jobctl(&app, &["runs", "list", "-o", "json"]).await.json();
    assert_eq!(list[0]["id"], first.as_str());
    let none = jobctl(
        &app,
        &["runs", "list", "--status", "running,queued", "-o", "json"],
    )
    .await;
    assert_eq!(none.json(), json!([]), "{none:?}");

    let out = jobctl(&app, &["runs", "get", &first]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains("role=web") && out.stdout.contains("echo hi"),
        "{out:?}"
    );
    let web3 = out
        .stdout
        .lines()
        .find(|l| l.starts_with("web-3 "))
        .unwrap();
    assert!(web3.contains("unreachable"), "{out:?}");
    let got = jobctl(&app, &["runs", "get", &first, "-o", "json"])
        .await
        .json();
    assert_eq!(got["id"], first.as_str());

    let out = jobctl(&app, &["runs", "summary", &first]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains("web-1, web-2 (2): completed, exit 0"),
        "{out:?}"
    );
    assert!(out.stdout.contains("web-3 (1): failed"), "{out:?}");
    let groups = jobctl(&app, &["runs", "summary", &first, "-o", "json"])
        .await
        .json();
    assert_eq!(groups.as_array().unwrap().len(), 2, "{groups}");

    // A rerun: only the failed host by default, every host with --all.
    let second = jobctl(&app, &["runs", "rerun", &first]).await.line();
    uuid::Uuid::parse_str(&second).expect("a bare id");
    let rerun = wait_run(&app, &second).await;
    assert_eq!(rerun["rerun_of"], first.as_str());
    let names: Vec<&Value> = rerun["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| &h["server_name"])
        .collect();
    assert_eq!(names, [&json!("web-3")], "{rerun}");
    let third = jobctl(&app, &["runs", "rerun", &first, "--all", "-o", "json"])
        .await
        .json();
    assert_eq!(third["rerun_of"], first.as_str());
    assert_eq!(third["hosts"].as_array().unwrap().len(), 3, "{third}");
    wait_run(&app, third["id"].as_str().unwrap()).await;

    // A finished run cannot be canceled (409); a running one can.
    let out = jobctl(&app, &["runs", "cancel", &first]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.starts_with("jobctl: ") && out.stderr.contains("409"),
        "{out:?}"
    );
    let (status, run) = app
        .post(
            "/api/v1/runs",
            &json!({"command": "sleep 30", "targets": {"servers": ["web-1", "web-2"]}}),
        )
        .await;
    assert_eq!(status, 201, "{run}");
    let id = run["id"].as_str().unwrap();
    let out = jobctl(&app, &["runs", "cancel", id]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.starts_with(id) && out.stdout.contains("cancel requested"),
        "{out:?}"
    );
    assert_eq!(wait_run(&app, id).await["status"], "canceled");

    // Following a finished run replays it and exits like `run`.
    let out = jobctl(&app, &["runs", "follow", &first]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(out.sorted_stdout(), ["web-1 | hi", "web-2 | hi"], "{out:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_ctrl_c_cancels_the_run() {
    let (_db, app, _host) = setup(false).await;
    let mut child = command(
        &app.base,
        &[
            "run",
            "--servers",
            "web-1,web-2",
            "--",
            "echo started; sleep 30",
        ],
    )
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(15), lines.next_line())
        .await
        .expect("output in time")
        .unwrap()
        .unwrap_or_default();
    assert!(first.ends_with("| started"), "{first}");
    let pid = child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("jobctl ends after Ctrl-C")
        .unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .await
        .unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("canceling run"), "{stderr}");
    let mut table = stderr.lines().skip_while(|l| !l.starts_with("SERVER "));
    assert!(
        table.any(|l| l.starts_with("web-1 ") && l.contains("canceled")),
        "{stderr}"
    );
    let (_, list) = app.get("/api/v1/runs").await;
    assert_eq!(list["runs"][0]["status"], "canceled", "{list}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_carry_labels() {
    let db = TestDb::create(Db::Sqlite).expect("sqlite");
    let app = TestApp::start(&db, &[]).await;
    let host = TestHost::start().await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("id");
    std::fs::write(&key, &host.keys.ed25519_openssh).unwrap();
    let port = host.port.to_string();
    let add = |name: &'static str, labels: &'static [&'static str]| {
        let mut args = vec![
            "servers",
            "add",
            name,
            "--host",
            &host.host,
            "--port",
            &port,
            "--user",
            &host.user,
            "--key-file",
            key.to_str().unwrap(),
        ];
        for l in labels {
            args.extend(["--label", l]);
        }
        args.into_iter()
            .map(str::to_string)
            .collect::<Vec<String>>()
    };
    let args = add("web-1", &["role=web", "env=prod"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = jobctl(&app, &[&args[..], &["-o", "json"]].concat()).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json()["labels"], json!({"role": "web", "env": "prod"}));
    let args = add("db-1", &["role=db"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = jobctl(&app, &args).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("role=db"), "{out:?}");

    let out = jobctl(&app, &["servers", "list", "--labels", "role=web"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{out:?}");
    assert!(lines[0].contains("LABELS"), "{out:?}");
    assert!(
        lines[1].contains("web-1") && lines[1].ends_with("env=prod,role=web"),
        "{out:?}"
    );
    let all = jobctl(&app, &["servers", "list", "-o", "json"])
        .await
        .json();
    assert_eq!(all.as_array().unwrap().len(), 2);
    let none = jobctl(
        &app,
        &["servers", "list", "-l", "role=web,env!=prod", "-o", "json"],
    )
    .await;
    assert_eq!(none.json(), json!([]), "{none:?}");
    let out = jobctl(&app, &["servers", "list", "--labels", "bad key=x"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("422") && out.stderr.contains("labels"),
        "{out:?}"
    );

    let out = jobctl(&app, &["servers", "get", "web-1"]).await;
    let labels = out
        .stdout
        .lines()
        .find(|l| l.starts_with("labels "))
        .unwrap();
    assert!(labels.ends_with("env=prod,role=web"), "{out:?}");

    // Update replaces the labels whole; --clear-labels removes them.
    let out = jobctl(
        &app,
        &[
            "servers", "update", "web-1", "--label", "role=api", "-o", "json",
        ],
    )
    .await;
    assert_eq!(out.json()["labels"], json!({"role": "api"}), "{out:?}");
    let out = jobctl(
        &app,
        &[
            "servers",
            "update",
            "web-1",
            "--max-jobs",
            "2",
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(
        out.json()["labels"],
        json!({"role": "api"}),
        "kept: {out:?}"
    );
    let out = jobctl(
        &app,
        &["servers", "update", "web-1", "--clear-labels", "-o", "json"],
    )
    .await;
    assert_eq!(out.json()["labels"], json!({}), "{out:?}");
    let out = jobctl(
        &app,
        &[
            "servers",
            "add",
            "x",
            "--host",
            "h",
            "--user",
            "u",
            "--password-stdin",
            "--label",
            "nokey",
        ],
    )
    .await;
    assert_eq!(out.code, 2, "usage error: {out:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_errors_exit_2() {
    for args in [
        &["run", "--batch", "2", "--", "true"][..],
        &["run", "-l", "role=web", "--servers", "a", "--", "true"],
        &["run", "-l", "role=web", "--batch", "0", "--", "true"],
        &["run", "-l", "role=web", "-s", "h", "--", "true"],
        &["runs", "get"],
    ] {
        let out = jobctl_at("http://127.0.0.1:1", args, None).await;
        assert_eq!(out.code, 2, "{args:?}: {out:?}");
    }
}

// ---- a fake service: what the real one cannot be made to do on demand ----

/// Read a request head and its body (by `content-length`).
async fn read_request(s: &mut TcpStream) -> (String, String) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).await.unwrap() == 0 {
            break;
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let len = head
        .lines()
        .find_map(|l| {
            l.to_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse::<usize>().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.unwrap();
    (head, String::from_utf8_lossy(&body).into_owned())
}

async fn respond_json(s: &mut TcpStream, status: &str, body: &Value) {
    let body = body.to_string();
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body.as_bytes()).await.unwrap();
    s.shutdown().await.ok();
}

const SSE_HEAD: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";

fn host(pos: i64, name: &str, status: &str, exit: Value) -> Value {
    json!({"position": pos, "server_id": format!("00000000-0000-0000-0000-00000000000{pos}"),
           "server_name": name, "job_id": null, "status": status, "exit_code": exit,
           "failure": if status == "failed" { json!("failed") } else { Value::Null },
           "error": null, "started_at": null, "finished_at": null})
}

fn output_event(id: &str, pos: i64, name: &str, seq: i64, stream: &str, text: &str) -> String {
    let data = json!({"position": pos, "server_name": name, "seq": seq, "stream": stream,
                      "is_stderr": stream == "stderr", "output": text});
    format!("id: {id}\nevent: output\ndata: {data}\n\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_stream_reconnects_and_joins_split_lines() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let id = uuid::Uuid::new_v4().to_string();
    let queued = json!({"id": id, "status": "queued", "counts": {"queued": 2},
        "hosts": [host(0, "a", "queued", Value::Null), host(1, "web-10", "queued", Value::Null)]});
    let done = json!({"id": id, "status": "failed", "counts": {"completed": 1, "failed": 1},
        "hosts": [host(0, "a", "completed", json!(0)), host(1, "web-10", "failed", json!(3))]});
    let server = tokio::spawn(async move {
        let mut requests = Vec::new();
        // The run's creation.
        let (mut s, _) = listener.accept().await.unwrap();
        let (head, body) = read_request(&mut s).await;
        requests.push((head, body));
        respond_json(&mut s, "201 Created", &queued).await;
        // First stream: lines split across events, then the connection drops mid-event.
        let (mut s, _) = listener.accept().await.unwrap();
        requests.push(read_request(&mut s).await);
        s.write_all(SSE_HEAD).await.unwrap();
        let run = format!("id: r0\nevent: run\ndata: {queued}\n\n");
        for part in [
            run,
            ": keep-alive\n\n".to_string(),
            output_event("e1", 0, "a", 0, "stdout", "hel"),
            output_event("e2", 1, "web-10", 0, "stdout", "one\ntw"),
            output_event("e3", 0, "a", 1, "stderr", "warn"),
            output_event("e4", 0, "a", 2, "stdout", "lo\n"),
            "id: e5\nevent: output\ndata: {\"position\": 1, \"se".to_string(),
        ] {
            s.write_all(part.as_bytes()).await.unwrap();
            s.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        drop(s);
        // Second: the rest, from after the last event received (e4).
        let (mut s, _) = listener.accept().await.unwrap();
        requests.push(read_request(&mut s).await);
        s.write_all(SSE_HEAD).await.unwrap();
        let host_done = json!({"position": 0, "server_name": "a", "job": {"status": "completed"}});
        let rest = [
            output_event("e5", 1, "web-10", 1, "stdout", "o\n"),
            output_event("e6", 1, "web-10", 2, "stderr", "bad\n"),
            format!("id: e7\nevent: host_complete\ndata: {host_done}\n\n"),
            output_event("e8", 1, "web-10", 3, "stdout", "no end"),
            format!("id: e9\nevent: complete\ndata: {done}\n\n"),
        ];
        s.write_all(rest.concat().as_bytes()).await.unwrap();
        drop(s);
        requests
    });
    let out = jobctl_at(
        &base,
        &[
            "run",
            "-l",
            "role=web",
            "--batch",
            "50%",
            "--keep-going",
            "--token",
            "t0k",
            "--",
            "echo",
            "hi",
        ],
        None,
    )
    .await;
    assert_eq!(out.code, 1, "a host failed: {out:?}");
    assert_eq!(
        out.stdout, "web-10 | one\na      | hello\nweb-10 | two\nweb-10 | no end\n",
        "{out:?}"
    );
    assert!(
        out.stderr.contains("web-10 | bad\na      | warn\n"),
        "{out:?}"
    );
    assert!(
        out.stderr
            .starts_with(&format!("jobctl: run {id} on 2 servers\n")),
        "{out:?}"
    );
    assert!(out.host_row("web-10").contains("failed"), "{out:?}");
    let requests = server.await.unwrap();
    let (head, body) = &requests[0];
    assert!(head.starts_with("POST /api/v1/runs "), "{head}");
    assert!(
        head.to_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    let body: Value = serde_json::from_str(body).unwrap();
    assert_eq!(
        body,
        json!({"command": "echo", "args": "hi", "targets": {"selector": "role=web"},
               "strategy": {"batch": "50%", "keep_going": true}})
    );
    let (head, _) = &requests[1];
    assert!(
        head.starts_with(&format!("GET /api/v1/runs/{id}/stream ")),
        "{head}"
    );
    assert!(!head.to_lowercase().contains("last-event-id"), "{head}");
    let (head, _) = &requests[2];
    assert!(
        head.to_lowercase().contains("last-event-id: e4\r\n"),
        "{head}"
    );
    for (head, _) in &requests {
        assert!(
            head.to_lowercase()
                .contains("authorization: bearer t0k\r\n"),
            "{head}"
        );
    }
}
