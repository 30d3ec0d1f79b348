//! `jobctl`, the real binary, against a real service and a real sshd; and against small fake
//! services for the stream's reconnection and the polling fallback.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::helpers::jobctl::{Out, command, jobctl_at};
use crate::helpers::procs::free_port;
use crate::helpers::{Db, TestApp, TestDb, TestHost};
use crate::jobs::wait_done;

async fn jobctl(app: &TestApp, args: &[&str]) -> Out {
    jobctl_at(&app.base, args, None).await
}

fn sqlite() -> TestDb {
    TestDb::create(Db::Sqlite).expect("sqlite")
}

/// A service, a test host, and a key server named `h` on it.
async fn setup() -> (TestDb, TestApp, TestHost, String) {
    let db = sqlite();
    let app = TestApp::start(&db, &[("JOBEXEC__JOBS__KILL_GRACE_SECS", "1")]).await;
    let host = TestHost::start().await;
    let server = app.add_key_server("h", &host).await;
    (db, app, host, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_mirrors_output_and_exit_code() {
    let (_db, app, _host, server) = setup().await;
    let out = jobctl(
        &app,
        &[
            "run",
            "--server",
            "h",
            "--",
            "echo hello; echo oops >&2; exit 3",
        ],
    )
    .await;
    assert_eq!(out.code, 3, "{out:?}");
    assert_eq!(out.stdout, "hello\n");
    assert_eq!(out.stderr, "oops\n");

    // Several words are joined into the command line; env and cwd reach the command; the
    // server may be named by id.
    let out = jobctl(
        &app,
        &[
            "run",
            "-s",
            &server,
            "--env",
            "GREET=hi there",
            "--cwd",
            "/tmp",
            "--",
            "echo",
            "\"$GREET\";",
            "pwd",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout, "hi there\n/tmp\n");

    // JSON: one event per line, ending with `complete`.
    let out = jobctl(&app, &["run", "-s", "h", "-o", "json", "--", "echo", "x"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let events: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "output" && e["data"]["output"] == "x\n"),
        "{events:?}"
    );
    let last = events.last().unwrap();
    assert_eq!(last["event"], "complete");
    assert_eq!(last["data"]["status"], "completed");

    // A job that times out exits 124 and says so.
    let out = jobctl(
        &app,
        &["run", "-s", "h", "--timeout", "1", "--", "sleep 20"],
    )
    .await;
    assert_eq!(out.code, 124, "{out:?}");
    assert!(out.stderr.contains("timed_out"), "{out:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_ctrl_c_cancels_the_job() {
    let (_db, app, _host, _) = setup().await;
    let mut child = command(
        &app.base,
        &["run", "-s", "h", "--", "echo started; sleep 30"],
    )
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(15), lines.next_line())
        .await
        .expect("output in time")
        .unwrap();
    assert_eq!(first.as_deref(), Some("started"));
    let pid = child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
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
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("canceling job"), "{stderr}");
    let (_, list) = app.get("/api/v1/jobs").await;
    let job = &list["jobs"][0];
    assert_eq!(job["status"], "canceled", "{job}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_get_and_list() {
    let (_db, app, _host, server) = setup().await;
    let out = jobctl(
        &app,
        &["submit", "-s", "h", "-o", "json", "--", "echo", "one"],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    let job = out.json();
    assert_eq!(job["command"], "echo");
    assert_eq!(job["args"], "one");
    assert_eq!(job["server_id"], server.as_str());
    let first = job["id"].as_str().unwrap().to_string();

    let args = [
        "submit",
        "-s",
        "h",
        "--idempotency-key",
        "k-1",
        "--",
        "echo two",
    ];
    let second = jobctl(&app, &args).await.line();
    uuid::Uuid::parse_str(&second).expect("a bare id");
    assert_eq!(
        jobctl(&app, &args).await.line(),
        second,
        "same key, same job"
    );
    wait_done(&app, &first, Duration::from_secs(15)).await;
    wait_done(&app, &second, Duration::from_secs(15)).await;

    let out = jobctl(&app, &["get", &first, "-o", "json"]).await;
    assert_eq!(out.json()["status"], "completed");
    let out = jobctl(&app, &["get", &first]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("completed"), "{}", out.stdout);
    assert!(
        out.stdout.contains(&format!("h ({server})")),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("echo one"), "{}", out.stdout);

    let out = jobctl(&app, &["list", "-o", "json"]).await;
    let jobs = out.json();
    assert_eq!(jobs.as_array().unwrap().len(), 2, "{jobs}");
    assert_eq!(jobs[0]["id"], second.as_str(), "newest first");

    let out = jobctl(&app, &["list"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", out.stdout);
    assert!(lines[0].starts_with("ID ") && lines[0].contains("STATUS"));
    assert!(lines[1].starts_with(&second) && lines[1].contains("completed"));
    assert!(lines[2].starts_with(&first) && lines[2].contains(" h "));
    // Columns are aligned: STATUS starts at the same place on every line.
    let col = lines[0].find("STATUS").unwrap();
    assert!(lines[1..].iter().all(|l| l[col..].starts_with("completed")));

    let filtered = jobctl(
        &app,
        &[
            "list",
            "--status",
            "completed",
            "--server",
            "h",
            "-o",
            "json",
        ],
    )
    .await
    .json();
    assert_eq!(filtered.as_array().unwrap().len(), 2);
    let none = jobctl(&app, &["list", "--status", "failed", "-o", "json"])
        .await
        .json();
    assert_eq!(none, json!([]));
    let page = jobctl(&app, &["list", "--limit", "1", "-o", "json"])
        .await
        .json();
    assert_eq!(page.as_array().unwrap().len(), 1);
    let all = jobctl(&app, &["list", "--limit", "1", "--all", "-o", "json"])
        .await
        .json();
    assert_eq!(
        all.as_array().unwrap().len(),
        2,
        "--all follows next_cursor"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_from_a_file_and_stdin() {
    let (_db, app, _host, _) = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("job.sh");
    std::fs::write(&file, "#!/bin/bash\necho \"a=$1 b=$2\"\n").unwrap();
    let out = jobctl(
        &app,
        &[
            "script",
            file.to_str().unwrap(),
            "-s",
            "h",
            "--shell",
            "/bin/bash",
            "--",
            "one",
            "two",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    let id = out.line();
    let out = jobctl(&app, &["wait", &id]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let out = jobctl(&app, &["logs", &id]).await;
    assert_eq!(out.stdout, "a=one b=two\n");
    let (_, job) = app.get(&format!("/api/v1/jobs/{id}")).await;
    assert_eq!(job["kind"], "script");
    assert_eq!(job["args"], "one two");

    let out = jobctl_at(
        &app.base,
        &["script", "-", "-s", "h", "-o", "json"],
        Some("echo from-stdin\nexit 2\n"),
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    let id = out.json()["id"].as_str().unwrap().to_string();
    let out = jobctl(&app, &["logs", "--follow", &id]).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert_eq!(out.stdout, "from-stdin\n");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_duplicate() {
    let (_db, app, _host, _) = setup().await;
    let id = jobctl(&app, &["submit", "-s", "h", "--", "sleep 30"])
        .await
        .line();
    let out = jobctl(&app, &["cancel", &id]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.starts_with(&id), "{out:?}");
    let job = wait_done(&app, &id, Duration::from_secs(15)).await;
    assert_eq!(job["status"], "canceled");

    let out = jobctl(&app, &["cancel", &id]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.starts_with("jobctl: ") && out.stderr.contains("409"));

    // Copies with a shorter timeout: they time out, and `wait` exits 124.
    let out = jobctl(
        &app,
        &[
            "duplicate",
            &id,
            "--timeout",
            "1",
            "--server",
            "h",
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    let copy = out.json();
    assert_eq!(copy["duplicated_from"], id.as_str());
    assert_eq!(copy["timeout"], 1);
    let copy_id = copy["id"].as_str().unwrap();
    let other = jobctl(&app, &["duplicate", &id, "-t", "1"]).await.line();
    assert!(other != id && other != copy_id);
    let out = jobctl(&app, &["wait", copy_id, "-o", "json"]).await;
    assert_eq!(out.code, 124, "{out:?}");
    assert_eq!(out.json()["status"], "timed_out");
    let out = jobctl(&app, &["wait", &other]).await;
    assert_eq!(out.code, 124, "{out:?}");
    assert!(out.stdout.contains("timed_out"), "{out:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_and_wait() {
    let (_db, app, _host, server) = setup().await;
    let (status, job) = app
        .post(
            "/api/v1/jobs",
            &json!({"command": "echo out; echo err >&2; exit 4", "server_id": server}),
        )
        .await;
    assert_eq!(status, 201);
    let id = job["id"].as_str().unwrap().to_string();
    let out = jobctl(&app, &["wait", &id]).await;
    assert_eq!(out.code, 4, "{out:?}");
    assert!(out.stdout.contains("failed"), "{out:?}");
    let out = jobctl(&app, &["wait", &id, "-o", "json"]).await;
    assert_eq!(out.code, 4);
    assert_eq!(out.json()["exit_code"], 4);

    let out = jobctl(&app, &["logs", &id]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout, "out\n");
    assert_eq!(out.stderr, "err\n");
    let chunks = jobctl(&app, &["logs", &id, "-o", "json"]).await.json();
    assert_eq!(chunks[0]["data"], "out\n");

    // On a finished job, --follow replays the output and mirrors the exit code.
    let out = jobctl(&app, &["logs", "--follow", &id]).await;
    assert_eq!(out.code, 4, "{out:?}");
    assert_eq!(out.stdout, "out\n");
    assert_eq!(out.stderr, "err\n");

    // On a running job it prints as the output comes.
    let (_, job) = app
        .post(
            "/api/v1/jobs",
            &json!({"command": "echo one; sleep 1; echo two", "server_id": server}),
        )
        .await;
    let id = job["id"].as_str().unwrap();
    let out = jobctl(&app, &["logs", "-f", id]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout, "one\ntwo\n");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_commands() {
    let db = sqlite();
    let app = TestApp::start(&db, &[]).await;
    let host = TestHost::start().await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("id");
    std::fs::write(&key, &host.keys.ed25519_openssh).unwrap();
    let port = host.port.to_string();
    let out = jobctl(
        &app,
        &[
            "servers",
            "add",
            "k",
            "--host",
            &host.host,
            "--port",
            &port,
            "--user",
            &host.user,
            "--key-file",
            key.to_str().unwrap(),
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    let k = out.json();
    assert_eq!(k["auth_type"], "key");
    assert_eq!(k["has_private_key"], true);
    let k_id = k["id"].as_str().unwrap().to_string();

    // An encrypted key with its passphrase on stdin.
    let enc = dir.path().join("id_enc");
    std::fs::write(&enc, &host.keys.encrypted_openssh).unwrap();
    let stdin = format!("{}\n", host.keys.passphrase);
    let out = jobctl_at(
        &app.base,
        &[
            "servers",
            "add",
            "enc",
            "--host",
            &host.host,
            "--port",
            &port,
            "--user",
            &host.user,
            "--key-file",
            enc.to_str().unwrap(),
            "--passphrase-stdin",
        ],
        Some(&stdin),
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("key (passphrase)"), "{}", out.stdout);
    let out = jobctl(&app, &["servers", "test", "enc"]).await;
    assert_eq!(out.code, 0, "{out:?}");

    // A password from one line of stdin, never argv.
    let dead = free_port().to_string();
    let out = jobctl_at(
        &app.base,
        &[
            "servers",
            "add",
            "p",
            "--host",
            "127.0.0.1",
            "--port",
            &dead,
            "--user",
            "u",
            "--password-stdin",
            "--max-jobs",
            "2",
            "-o",
            "json",
        ],
        Some("s3cret\n"),
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    let p = out.json();
    assert_eq!(p["auth_type"], "password");
    assert_eq!(p["has_password"], true);
    assert_eq!(p["max_concurrent_jobs"], 2);

    let out = jobctl(&app, &["servers", "list"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines[0].starts_with("ID ") && lines[0].contains("NAME"));
    assert_eq!(lines.len(), 4, "{}", out.stdout);
    assert!(out.stdout.contains(&format!("127.0.0.1:{dead}")));
    let list = jobctl(&app, &["servers", "list", "-o", "json"])
        .await
        .json();
    assert_eq!(list.as_array().unwrap().len(), 3);

    let out = jobctl(&app, &["servers", "get", "k"]).await;
    assert!(out.stdout.contains(&k_id), "{out:?}");
    let got = jobctl(&app, &["servers", "get", &k_id, "-o", "json"])
        .await
        .json();
    assert_eq!(got["name"], "k");

    let out = jobctl(&app, &["servers", "test", "k"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains(&host.host_key_fingerprint), "{out:?}");
    assert!(out.stdout.lines().next().unwrap().ends_with("yes"));
    let report = jobctl(&app, &["servers", "test", "k", "-o", "json"])
        .await
        .json();
    assert_eq!(report["ok"], true);
    let out = jobctl(&app, &["servers", "test", "p"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.contains("unreachable"), "{out:?}");

    let updated = jobctl(
        &app,
        &[
            "servers",
            "update",
            "k",
            "--max-jobs",
            "3",
            "--inactive",
            "-o",
            "json",
        ],
    )
    .await
    .json();
    assert_eq!(updated["max_concurrent_jobs"], 3);
    assert_eq!(updated["is_active"], false);
    assert_eq!(updated["hostname"], host.host.as_str(), "unchanged");
    let out = jobctl(
        &app,
        &["servers", "update", "k", "--active", "--name", "k2"],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    let out = jobctl(&app, &["servers", "update", "k2"]).await;
    assert_eq!(out.code, 1, "nothing to change: {out:?}");

    let out = jobctl(&app, &["servers", "delete", "p"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("deleted"));
    let out = jobctl(&app, &["servers", "get", "p"]).await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("no server is named \"p\""), "{out:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_server_added_from_stdin_passes_the_test() {
    let db = sqlite();
    let app = TestApp::start(&db, &[]).await;
    let host = TestHost::start_with_password().await;
    let password = format!("{}\n", host.password.clone().unwrap());
    let port = host.port.to_string();
    let out = jobctl_at(
        &app.base,
        &[
            "servers",
            "add",
            "pw",
            "--host",
            &host.host,
            "--port",
            &port,
            "--user",
            &host.user,
            "--password-stdin",
        ],
        Some(&password),
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    let out = jobctl(&app, &["servers", "test", "pw"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_and_usage() {
    for shell in ["bash", "zsh", "fish"] {
        let out = jobctl_at("http://127.0.0.1:1", &["completions", shell], None).await;
        assert_eq!(out.code, 0, "{out:?}");
        assert!(out.stdout.contains("jobctl"), "{shell}");
        assert!(out.stdout.contains("servers"), "{shell}");
    }
    let out = jobctl_at("http://127.0.0.1:1", &["run"], None).await;
    assert_eq!(out.code, 2, "usage error: {out:?}");
    let out = jobctl_at(
        "http://127.0.0.1:1",
        &["run", "--env", "NOEQUALS", "true"],
        None,
    )
    .await;
    assert_eq!(out.code, 2, "{out:?}");
    let out = jobctl_at(
        "http://127.0.0.1:1",
        &["servers", "add", "x", "--host", "h"],
        None,
    )
    .await;
    assert_eq!(out.code, 2, "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_one_line_and_exit_1() {
    let db = sqlite();
    let app = TestApp::start(&db, &[]).await;
    let missing = uuid::Uuid::new_v4().to_string();
    for args in [
        vec!["get", missing.as_str()],
        vec!["logs", "-f", missing.as_str()],
        vec!["wait", missing.as_str()],
    ] {
        let out = jobctl(&app, &args).await;
        assert_eq!(out.code, 1, "{out:?}");
        assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
        assert!(out.stderr.starts_with("jobctl: "), "{out:?}");
        assert!(
            out.stderr.contains("404") && out.stderr.contains("does not exist"),
            "{out:?}"
        );
        assert!(out.stdout.is_empty());
    }
    let out = jobctl(&app, &["run", "-s", "nowhere", "--", "true"]).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("no server is named \"nowhere\""),
        "{out:?}"
    );
    // A 422 names the field.
    let out = jobctl(&app, &["list", "--status", "bogus"]).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("status") && out.stderr.contains("422"),
        "{out:?}"
    );

    let url = format!("http://127.0.0.1:{}", free_port());
    let out = jobctl_at(&url, &["list"], None).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
    assert!(
        out.stderr.contains(&url) && out.stderr.contains("not reachable"),
        "{out:?}"
    );
    app.stop().await;
}

// ---- fake services: what the real one cannot be made to do on demand ----

/// Read a request head; returns it as text.
async fn read_head(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).await.unwrap() == 0 {
            break;
        }
        buf.push(byte[0]);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

const SSE_HEAD: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_reconnects_with_last_event_id() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let id = uuid::Uuid::new_v4().to_string();
    let server = tokio::spawn(async move {
        let mut heads = Vec::new();
        // First connection: a status, output split across writes (mid-event and mid-line),
        // a keep-alive, then the connection drops in the middle of an event.
        let (mut s, _) = listener.accept().await.unwrap();
        heads.push(read_head(&mut s).await);
        s.write_all(SSE_HEAD).await.unwrap();
        for part in [
            &b": keep-alive\n\nid: -1\nevent: status\ndata: {\"status\":\"running\"}\n\nid: 0\nevent: out"[..],
            b"put\ndata: {\"seq\":0,\"stream\":\"stdout\",\"is_stderr\":false,\"output\":\"a\"}\n\n",
            b"id: 1\r\nevent: output\r\ndata: {\"seq\":1,\"stream\":\"stderr\",\"is_stderr\":true,\"output\":\"e\\n\"}\r\n\r\n",
            b": keep-alive\n\nid: 2\nevent: output\ndata: {\"seq\":2,\"stream\":\"stdout\",\"out",
        ] {
            s.write_all(part).await.unwrap();
            s.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        drop(s);
        // Second: the rest, from after the last event id received (1).
        let (mut s, _) = listener.accept().await.unwrap();
        heads.push(read_head(&mut s).await);
        s.write_all(SSE_HEAD).await.unwrap();
        s.write_all(
            b"id: 1\nevent: status\ndata: {\"status\":\"running\"}\n\n\
              id: 2\nevent: output\ndata: {\"seq\":2,\"stream\":\"stdout\",\"is_stderr\":false,\"output\":\"b\\n\"}\n\n\
              id: 2\nevent: complete\ndata: {\"status\":\"failed\",\"exit_code\":5}\n\n",
        )
        .await
        .unwrap();
        drop(s);
        heads
    });
    let out = jobctl_at(&base, &["logs", "--follow", &id, "--token", "t0k"], None).await;
    assert_eq!(out.code, 5, "{out:?}");
    assert_eq!(out.stdout, "ab\n");
    assert_eq!(out.stderr, "e\n");
    let heads = server.await.unwrap();
    assert!(
        heads[0].starts_with(&format!("GET /api/v1/jobs/{id}/stream ")),
        "{}",
        heads[0]
    );
    assert!(!heads[0].to_lowercase().contains("last-event-id"));
    for head in &heads {
        assert!(
            head.to_lowercase()
                .contains("authorization: bearer t0k\r\n"),
            "{head}"
        );
    }
    assert!(
        heads[1].to_lowercase().contains("last-event-id: 1\r\n"),
        "{}",
        heads[1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_stream_route_jobs_are_polled() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let id = uuid::Uuid::new_v4().to_string();
    let job_id = id.clone();
    let server = tokio::spawn(async move {
        let mut gets = 0;
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let head = read_head(&mut s).await;
            let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
            if path.ends_with("/stream") {
                respond_json(
                    &mut s,
                    "404 Not Found",
                    &json!({"error": "no route for GET", "code": "not_found"}),
                )
                .await;
            } else if path.ends_with("/logs?format=chunks") {
                let mut chunks =
                    vec![json!({"seq": 0, "stream": "stdout", "data": "x\n", "at": null})];
                if gets >= 3 {
                    chunks.push(json!({"seq": 1, "stream": "stderr", "data": "y\n", "at": null}));
                }
                respond_json(&mut s, "200 OK", &json!(chunks)).await;
            } else if path == format!("/api/v1/jobs/{job_id}") {
                gets += 1;
                let job = if gets < 3 {
                    json!({"id": job_id, "status": "running", "exit_code": null, "output_bytes": gets})
                } else {
                    json!({"id": job_id, "status": "failed", "exit_code": 6, "output_bytes": 4})
                };
                respond_json(&mut s, "200 OK", &job).await;
            } else {
                respond_json(&mut s, "404 Not Found", &json!({"error": "nope"})).await;
            }
        }
    });
    let out = jobctl_at(&base, &["logs", "--follow", &id], None).await;
    assert_eq!(out.code, 6, "{out:?}");
    assert_eq!(out.stdout, "x\n");
    assert_eq!(out.stderr, "y\n");
    server.abort();
}
