//! Secure by default, over real HTTP and a real sshd: API tokens, the loopback-only default,
//! sealed secrets (absent from responses, the database's bytes and the debug log), pinned host
//! keys (a changed key fails the job before any password is sent; accepting it deliberately
//! works), known_hosts, limits (413/422/429), the audit log and key rotation.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::db_test;
use crate::helpers::procs::{Service, free_port};
use crate::helpers::sshd::HostKind;
use crate::helpers::{Db, TestApp, TestDb, TestHost, in_ci, test_settings};
use crate::jobs::{submit, wait_done};

const OPS: &str = "ops-token-6f1d2c3b4a59e8";
const CI_TOKEN: &str = "ci-token-0a9b8c7d6e5f41";

fn tokens() -> String {
    format!("ops:{OPS},ci:{CI_TOKEN}")
}

async fn audit(app: &TestApp, query: &str) -> Vec<Value> {
    let (status, body) = app.get(&format!("/api/v1/audit{query}")).await;
    assert_eq!(status, 200, "{body}");
    body["entries"].as_array().unwrap().clone()
}

db_test!(
    tokens_guard_every_api_route_and_health_stays_open,
    |db: TestDb| async move {
        let app = TestApp::start(&db, &[("JOBEXEC_API_TOKENS", &tokens())]).await;
        let anon = reqwest::Client::new();
        let some_id = "0195f2a4-3b7c-7d8e-9f00-112233445566";
        // Every route of the route table under /api/v1 (ids filled in), and an unknown one:
        // nothing about the API is learnt without a token.
        let mut routes: Vec<(Method, String)> = job_executor::http::routes()
            .iter()
            .filter(|(_, path)| path.starts_with("/api/v1/"))
            .map(|(method, path)| {
                let method = Method::from_bytes(method.as_str().as_bytes()).unwrap();
                (method, path.replace("{id}", some_id))
            })
            .collect();
        assert!(routes.len() >= 14, "{routes:?}");
        routes.push((Method::GET, "/api/v1/no-such-route".into()));
        let wrong = [
            None,
            Some("Bearer not-a-token-at-all-000".to_string()),
            Some(format!("Bearer {OPS}x")),
            Some(format!("Basic {OPS}")),
            Some("Bearer ".to_string()),
        ];
        let body = json!({"name": "x", "hostname": "127.0.0.1", "user": "u", "auth_type": "password", "password": "p", "command": "true"});
        for (method, path) in &routes {
            for auth in &wrong {
                let mut req = anon.request(method.clone(), app.url(path)).json(&body);
                if let Some(a) = auth {
                    req = req.header("authorization", a);
                }
                let resp = req.send().await.unwrap();
                assert_eq!(resp.status(), 401, "{method} {path} with {auth:?}");
                assert_eq!(
                    resp.headers()["www-authenticate"],
                    "Bearer",
                    "{method} {path}"
                );
                let err: Value = resp.json().await.unwrap();
                assert_eq!(err["code"], "unauthorized", "{err}");
                assert!(!err.to_string().contains(OPS), "{err}");
            }
        }
        // Nothing the refused requests asked for happened.
        let ops = TestApp::start(&db, &[("JOBEXEC_API_TOKENS", &tokens())])
            .await
            .with_token(OPS);
        let (status, list) = ops.get("/api/v1/servers").await;
        assert_eq!(status, 200);
        assert_eq!(list["servers"].as_array().unwrap().len(), 0, "{list}");
        // Each configured token works.
        let (status, _) = ops.post("/api/v1/servers", &body).await;
        assert_eq!(status, 201);
        let ci = app.with_token(CI_TOKEN);
        let (status, list) = ci.get("/api/v1/servers").await;
        assert_eq!(status, 200);
        assert_eq!(list["servers"].as_array().unwrap().len(), 1);
        // /health needs no token and shows nothing secret.
        let resp = anon.get(ci.url("/health")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let text = resp.text().await.unwrap();
        assert!(!text.contains(OPS) && !text.contains("ops-token"), "{text}");
        ci.stop().await;
        ops.stop().await;
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tokens_it_refuses_to_listen_beyond_loopback() {
    let db = TestDb::create(Db::Sqlite).unwrap();
    let open = test_settings(&db.url, &[("JOBEXEC__HTTP__ADDR", "0.0.0.0:0")]);
    let err = job_executor::App::start(open, job_executor::Role::Serve)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("0.0.0.0:0") && err.contains("JOBEXEC_API_TOKENS"),
        "{err}"
    );
    // A worker listens on nothing, so it needs no tokens.
    let worker = test_settings(&db.url, &[("JOBEXEC__HTTP__ADDR", "0.0.0.0:0")]);
    job_executor::App::start(worker, job_executor::Role::Worker)
        .await
        .unwrap()
        .stop()
        .await;
    // With tokens it listens there.
    let with_tokens = test_settings(
        &db.url,
        &[
            ("JOBEXEC__HTTP__ADDR", "0.0.0.0:0"),
            ("JOBEXEC_API_TOKENS", &tokens()),
        ],
    );
    let app = job_executor::App::start(with_tokens, job_executor::Role::Serve)
        .await
        .unwrap();
    assert!(app.local_addr().unwrap().ip().is_unspecified());
    app.stop().await;
    // The binary, given the seed's SERVER_ADDR=":0", says why and exits non-zero.
    let out = Command::new(env!("CARGO_BIN_EXE_job-executor"))
        .arg("serve")
        .env("SERVER_ADDR", ":0")
        .env("DATABASE_URL", &db.url)
        .env_remove("JOBEXEC_API_TOKENS")
        .env_remove("JOBEXEC__AUTH__TOKENS")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refusing to listen on 0.0.0.0:0"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_sealed_at_rest_and_absent_from_responses_and_the_debug_log() {
    let host = TestHost::start_with_password().await;
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("jobs.db").display().to_string();
    let port = free_port().to_string();
    let addr = format!("127.0.0.1:{port}");
    let svc = Service::start(
        &["serve"],
        &[
            ("DATABASE_URL", &db_path),
            ("JOBEXEC__HTTP__ADDR", &addr),
            ("JOBEXEC__HTTP__WORKERS", "1"),
            ("RUST_LOG", "debug"),
        ],
        port.parse().unwrap(),
        Some(&dir.path().join("service.log")),
    )
    .await;
    let password = host.password.clone().unwrap();
    let key = host.keys.encrypted_openssh.clone();
    let passphrase = host.keys.passphrase.clone();
    // A distinctive piece of the key's body (its second line).
    let key_piece = key.lines().nth(1).unwrap().to_string();
    let secrets = [password.as_str(), passphrase.as_str(), key_piece.as_str()];
    let mut seen = String::new();

    let (status, body) = svc
        .call(
            Method::POST,
            "/api/v1/servers",
            None,
            Some(
                json!({"name": "pw", "hostname": host.host, "port": host.port,
                "user": host.user, "auth_type": "password", "password": password}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let pw_id = serde_json::from_str::<Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    seen.push_str(&body);
    let (status, body) = svc
        .call(
            Method::POST,
            "/api/v1/servers",
            None,
            Some(
                json!({"name": "key", "hostname": host.host, "port": host.port,
                "user": host.user, "auth_type": "key", "private_key": key,
                "private_key_passphrase": passphrase}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let key_id = serde_json::from_str::<Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    seen.push_str(&body);
    // Use both: connection tests, jobs, an update, reads.
    for id in [&pw_id, &key_id] {
        let (status, body) = svc
            .call(
                Method::POST,
                &format!("/api/v1/servers/{id}/test"),
                None,
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        // On a failure, say why: the precise cause is in the service's log, the server's
        // side in sshd's.
        let why = || {
            let log = std::fs::read_to_string(dir.path().join("service.log")).unwrap_or_default();
            let ours: Vec<&str> = log
                .lines()
                .filter(|l| {
                    l.contains("connection test") || l.contains("WARN") || l.contains("ERROR")
                })
                .collect();
            let sshd = match host.kind {
                HostKind::OpenSsh => host.log(),
                _ => String::new(),
            };
            format!("service:\n{}\nsshd:\n{sshd}", ours.join("\n"))
        };
        assert!(body.contains("\"ok\":true"), "{body}\n{}", why());
        seen.push_str(&body);
        let (status, body) = svc
            .call(
                Method::POST,
                "/api/v1/jobs",
                None,
                Some(json!({"command": "echo ran", "server_id": id})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let job = serde_json::from_str::<Value>(&body).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        let start = Instant::now();
        loop {
            let (_, body) = svc
                .call(Method::GET, &format!("/api/v1/jobs/{job}"), None, None)
                .await;
            if body.contains("\"status\":\"completed\"") {
                seen.push_str(&body);
                break;
            }
            assert!(!body.contains("\"status\":\"failed\""), "{body}");
            assert!(start.elapsed() < Duration::from_secs(20), "{body}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let (status, body) = svc
        .call(
            Method::PUT,
            &format!("/api/v1/servers/{pw_id}"),
            None,
            Some(json!({"password": password})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    seen.push_str(&body);
    for path in [
        "/api/v1/servers".to_string(),
        format!("/api/v1/servers/{pw_id}"),
        format!("/api/v1/servers/{key_id}"),
        "/api/v1/audit".into(),
        "/api/v1/jobs".into(),
    ] {
        let (status, body) = svc.call(Method::GET, &path, None, None).await;
        assert_eq!(status, 200, "{body}");
        seen.push_str(&body);
    }
    assert!(seen.contains("\"has_password\":true"), "{seen}");
    drop(svc);

    let log = std::fs::read_to_string(dir.path().join("service.log")).unwrap();
    assert!(
        log.contains("DEBUG"),
        "the service did not log at debug level: {log}"
    );
    let mut database = Vec::new();
    for name in ["jobs.db", "jobs.db-wal"] {
        if let Ok(bytes) = std::fs::read(dir.path().join(name)) {
            database.extend(bytes);
        }
    }
    assert!(database.len() > 4096);
    for secret in secrets {
        assert!(!seen.contains(secret), "a response holds a secret");
        assert!(!log.contains(secret), "the log holds a secret");
        assert!(
            !database
                .windows(secret.len())
                .any(|w| w == secret.as_bytes()),
            "the database holds a secret in plain text"
        );
    }
    // The key that sealed them sits beside the database, readable by its owner only.
    let key_file = dir.path().join("jobs.db.key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

/// A server's `secret_version`, `password` and `private_key` columns as stored.
type StoredSecrets = (i32, Option<Vec<u8>>, Option<Vec<u8>>);

/// The raw secret columns of every server, read with plain SQL.
fn stored_secrets(db: &TestDb) -> Vec<StoredSecrets> {
    use diesel::prelude::*;
    use diesel::sql_types::{Binary, Integer, Nullable};
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = Integer)]
        secret_version: i32,
        #[diesel(sql_type = Nullable<Binary>)]
        password: Option<Vec<u8>>,
        #[diesel(sql_type = Nullable<Binary>)]
        private_key: Option<Vec<u8>>,
    }
    let q = "SELECT secret_version, password, private_key FROM servers ORDER BY name";
    let rows: Vec<Row> = match db.kind() {
        Db::Sqlite => {
            let mut c = diesel::SqliteConnection::establish(&db.url).unwrap();
            diesel::sql_query(q).load(&mut c).unwrap()
        }
        Db::Postgres => {
            let mut c = diesel::PgConnection::establish(&db.url).unwrap();
            diesel::sql_query(q).load(&mut c).unwrap()
        }
    };
    rows.into_iter()
        .map(|r| (r.secret_version, r.password, r.private_key))
        .collect()
}

db_test!(
    stored_secrets_are_sealed_and_rotate_key_reseals_them,
    |db: TestDb| async move {
        let (app, host, server) = TestApp::with_host(&db, &[]).await;
        let (status, _) = app
            .post(
                "/api/v1/servers",
                &json!({"name": "pw", "hostname": "127.0.0.1", "user": "u",
                    "auth_type": "password", "password": "a-password-to-seal"}),
            )
            .await;
        assert_eq!(status, 201);
        let before = stored_secrets(&db);
        assert_eq!(before.len(), 2);
        for (version, password, key) in &before {
            assert_eq!(*version, 1);
            let bytes = password.as_ref().or(key.as_ref()).unwrap();
            let text = String::from_utf8_lossy(bytes);
            assert!(
                !text.contains("a-password-to-seal") && !text.contains("OPENSSH"),
                "{text}"
            );
        }
        app.stop().await;

        // rotate-key adds version 2 and re-seals every row under it.
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_job-executor"));
        cmd.arg("rotate-key").env("DATABASE_URL", &db.url);
        if let Some((k, v)) = crate::helpers::secret_key_env(&db.url) {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let after = stored_secrets(&db);
        assert!(after.iter().all(|(v, _, _)| *v == 2), "not re-sealed");
        for (b, a) in before.iter().zip(&after) {
            assert_ne!(
                (&b.1, &b.2),
                (&a.1, &a.2),
                "the same bytes after re-sealing"
            );
        }
        // With an inline key (PostgreSQL here), the new keyring is printed for the operator;
        // with a key file (SQLite), the file now holds both versions.
        let keyring = match db.kind() {
            Db::Postgres => {
                let printed = String::from_utf8_lossy(&out.stdout).trim().to_string();
                assert!(printed.starts_with("1:") && printed.contains(",2:"));
                printed
            }
            Db::Sqlite => {
                let text = std::fs::read_to_string(format!("{}.key", db.url)).unwrap();
                assert_eq!(text.lines().count(), 2, "{}", text.lines().count());
                String::new()
            }
        };
        // The service, restarted with the new key, still runs jobs on the server.
        let extra: Vec<(&str, &str)> = if keyring.is_empty() {
            vec![]
        } else {
            vec![("JOBEXEC__SECRETS__KEY", keyring.as_str())]
        };
        let app = TestApp::start(&db, &extra).await;
        let id = submit(&app, json!({"command": "echo sealed", "server_id": server})).await;
        let job = wait_done(&app, &id, Duration::from_secs(20)).await;
        assert_eq!(job["status"], "completed", "{job}");
        app.stop().await;
        drop(host);
    }
);

db_test!(
    a_changed_host_key_fails_the_job_before_any_password_and_accepting_it_works_again,
    |db: TestDb| async move {
        let mut host = TestHost::start_with_password().await;
        if host.kind != HostKind::OpenSsh {
            assert!(!in_ci(), "CI runs this on the real sshd");
            eprintln!("skipped: restarting with a new host key needs the real sshd");
            return;
        }
        let app = TestApp::start(&db, &[]).await;
        let (status, created) = app
            .post(
                "/api/v1/servers",
                &json!({"name": "pw", "hostname": host.host, "port": host.port,
                    "user": host.user, "auth_type": "password", "password": host.password}),
            )
            .await;
        assert_eq!(status, 201, "{created}");
        let server = created["id"].as_str().unwrap().to_string();
        let run = |cmd: &'static str| {
            let app = &app;
            let server = server.clone();
            async move {
                let id = submit(app, json!({"command": cmd, "server_id": server})).await;
                wait_done(app, &id, Duration::from_secs(30)).await
            }
        };
        assert_eq!(run("echo first").await["status"], "completed");
        let old_fp = host.host_key_fingerprint.clone();
        let (_, s) = app.get(&format!("/api/v1/servers/{server}")).await;
        assert_eq!(
            s["host_key_fingerprint"],
            old_fp.as_str(),
            "pinned on first use"
        );

        // The host is reinstalled: its connections die and it comes back with a new key.
        host.kill_connections();
        let new_fp = host.restart_with_new_host_key().await;
        let seen_before = host.log().len();
        let job = run("echo second").await;
        assert_eq!(job["status"], "failed", "{job}");
        let error = job["error"].as_str().unwrap();
        assert!(
            error.contains("host key changed")
                && error.contains(&old_fp)
                && error.contains(&new_fp),
            "{error}"
        );
        let log = host.log();
        let since = &log[seen_before.min(log.len())..];
        assert!(
            since.contains("Connection from"),
            "sshd saw no connection: {since}"
        );
        assert!(
            !since.contains("password for"),
            "a password was sent to the changed host: {since}"
        );

        // A plain test reports the change and pins nothing.
        let (_, report) = app
            .post(&format!("/api/v1/servers/{server}/test"), &json!({}))
            .await;
        assert_eq!(report["ok"], false, "{report}");
        assert_eq!(report["host_key_fingerprint"], new_fp.as_str());
        // Accepting it deliberately re-pins, and jobs run again.
        let (status, report) = app
            .post(
                &format!("/api/v1/servers/{server}/test"),
                &json!({"accept_host_key": true}),
            )
            .await;
        assert_eq!(status, 200);
        assert_eq!(report["ok"], true, "{report}");
        assert_eq!(report["host_key_pinned"], true);
        let (_, s) = app.get(&format!("/api/v1/servers/{server}")).await;
        assert_eq!(s["host_key_fingerprint"], new_fp.as_str());
        assert_eq!(run("echo third").await["status"], "completed");
        let changes = audit(&app, "?action=server.host_key_changed").await;
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert_eq!(changes[0]["detail"]["old_fingerprint"], old_fp.as_str());
        assert_eq!(changes[0]["detail"]["new_fingerprint"], new_fp.as_str());
        app.stop().await;
    }
);

db_test!(
    known_hosts_decides_for_servers_with_no_pinned_key,
    |db: TestDb| async move {
        let host = TestHost::start().await;
        let other = TestHost::start().await;
        // A known_hosts file listing the host's port with the OTHER host's key.
        let dir = tempfile::tempdir().unwrap();
        let known = dir.path().join("known_hosts");
        let key_of = |h: &TestHost| {
            let app_dir = h.dir.path();
            std::fs::read_dir(app_dir)
                .unwrap()
                .filter_map(Result::ok)
                .map(|e| e.path())
                .find(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("host_"))
                        && p.extension().is_some_and(|e| e == "pub")
                })
                .map(|p| std::fs::read_to_string(p).unwrap())
        };
        let (Some(wrong), Some(right)) = (key_of(&other), key_of(&host)) else {
            assert!(!in_ci(), "CI runs this on the real sshd");
            eprintln!("skipped: the stand-in has no host key file");
            return;
        };
        let line = |k: &str| {
            let mut f = k.split_whitespace();
            format!(
                "[127.0.0.1]:{} {} {}\n",
                host.port,
                f.next().unwrap(),
                f.next().unwrap()
            )
        };
        std::fs::write(&known, line(&wrong)).unwrap();
        let path = known.display().to_string();
        let app = TestApp::start(&db, &[("JOBEXEC__SSH__KNOWN_HOSTS_FILE", &path)]).await;
        let server = app.add_key_server("h", &host).await;
        let id = submit(&app, json!({"command": "true", "server_id": server})).await;
        let job = wait_done(&app, &id, Duration::from_secs(20)).await;
        assert_eq!(job["status"], "failed", "{job}");
        let error = job["error"].as_str().unwrap();
        assert!(error.contains("known_hosts"), "{error}");
        let (_, s) = app.get(&format!("/api/v1/servers/{server}")).await;
        assert!(s["host_key"].is_null(), "nothing pinned: {s}");
        // With the right entry, it connects (and pins).
        std::fs::write(&known, line(&right)).unwrap();
        let id = submit(&app, json!({"command": "true", "server_id": server})).await;
        let job = wait_done(&app, &id, Duration::from_secs(20)).await;
        assert_eq!(job["status"], "completed", "{job}");
        app.stop().await;
    }
);

db_test!(limits_answer_413_422_and_429, |db: TestDb| async move {
    let (app, _host, server) = TestApp::with_host(
        &db,
        &[
            ("JOBEXEC__JOBS__MAX_SCRIPT_BYTES", "1000"),
            ("JOBEXEC__JOBS__MAX_COMMAND_BYTES", "100"),
            ("JOBEXEC__JOBS__MAX_ENV_ENTRIES", "2"),
            ("JOBEXEC__JOBS__MAX_TIMEOUT_SECS", "3600"),
        ],
    )
    .await;
    // A 20 MB script: 413, whatever Content-Length says.
    let script = "x".repeat(20 * 1024 * 1024);
    let big = serde_json::to_vec(&json!({"script": script, "server_id": server})).unwrap();
    let (status, err) = app.raw(Method::POST, "/api/v1/jobs/script", big).await;
    assert_eq!(status, 413, "{err}");
    assert_eq!(err["code"], "payload_too_large");
    for (body, field) in [
        (
            json!({"script": "y".repeat(2000), "server_id": server}),
            "script",
        ),
        (
            json!({"command": "z".repeat(200), "server_id": server}),
            "command",
        ),
        (
            json!({"command": "true", "server_id": server, "env": {"A": "1", "B": "2", "C": "3"}}),
            "env",
        ),
        (
            json!({"command": "true", "server_id": server, "timeout": -1}),
            "timeout",
        ),
        (
            json!({"command": "true", "server_id": server, "timeout": 3601}),
            "timeout",
        ),
    ] {
        let path = if body.get("script").is_some() {
            "/api/v1/jobs/script"
        } else {
            "/api/v1/jobs"
        };
        let (status, err) = app.post(path, &body).await;
        assert_eq!(status, 422, "{field}: {err}");
        assert_eq!(err["field"], field, "{err}");
    }
    let (_, jobs) = app.get("/api/v1/jobs").await;
    assert_eq!(
        jobs["jobs"].as_array().unwrap().len(),
        0,
        "nothing was queued"
    );
    app.stop().await;

    // Rate: a burst of 3, then one per 10 s; streams: 2 per caller.
    let app = TestApp::start(
        &db,
        &[
            ("JOBEXEC__LIMITS__SUBMISSIONS_PER_MINUTE", "6"),
            ("JOBEXEC__LIMITS__SUBMISSION_BURST", "3"),
            ("JOBEXEC__LIMITS__MAX_STREAMS_PER_CLIENT", "2"),
        ],
    )
    .await;
    let long = submit(&app, json!({"command": "sleep 30", "server_id": server})).await;
    let stream = |app: &TestApp| {
        app.client
            .get(app.url(&format!("/api/v1/jobs/{long}/stream")))
            .send()
    };
    let one = stream(&app).await.unwrap();
    let two = stream(&app).await.unwrap();
    assert_eq!((one.status().as_u16(), two.status().as_u16()), (200, 200));
    let three = stream(&app).await.unwrap();
    assert_eq!(three.status(), 429);
    assert!(three.headers().contains_key("retry-after"));
    // A closed stream frees its place.
    drop(one);
    let start = Instant::now();
    loop {
        let again = stream(&app).await.unwrap();
        if again.status() == 200 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "the closed stream still counts"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    submit(&app, json!({"command": "true", "server_id": server})).await;
    submit(&app, json!({"command": "true", "server_id": server})).await;
    let resp = app
        .client
        .post(app.url("/api/v1/jobs"))
        .json(&json!({"command": "true", "server_id": server}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=10).contains(&retry), "{retry}");
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["code"], "too_many_requests");
    let (status, _) = app
        .post(&format!("/api/v1/jobs/{long}/duplicate"), &json!({}))
        .await;
    assert_eq!(status, 429, "duplicates count too");
    let (_, jobs) = app.get("/api/v1/jobs").await;
    assert_eq!(jobs["jobs"].as_array().unwrap().len(), 3);
    app.post(&format!("/api/v1/jobs/{long}/cancel"), &json!({}))
        .await;
    app.stop().await;
});

db_test!(
    the_audit_log_says_who_did_what_when_and_from_where,
    |db: TestDb| async move {
        let host = TestHost::start().await;
        let ops = TestApp::start(&db, &[("JOBEXEC_API_TOKENS", &tokens())])
            .await
            .with_token(OPS);
        let server = ops.add_key_server("h", &host).await;
        let ci = TestApp::start(&db, &[("JOBEXEC_API_TOKENS", &tokens())])
            .await
            .with_token(CI_TOKEN);
        let (status, _) = ci
            .post(&format!("/api/v1/servers/{server}/test"), &json!({}))
            .await;
        assert_eq!(status, 200);
        let (status, _) = ops
            .put(
                &format!("/api/v1/servers/{server}"),
                &json!({"max_concurrent_jobs": 3, "private_key": host.keys.ed25519_openssh}),
            )
            .await;
        assert_eq!(status, 200);
        let job = submit(&ci, json!({"command": "sleep 20", "server_id": server})).await;
        let (status, dup) = ci
            .post(&format!("/api/v1/jobs/{job}/duplicate"), &json!({}))
            .await;
        assert_eq!(status, 201);
        let copy = dup["new_job"]["id"].as_str().unwrap().to_string();
        for id in [&job, &copy] {
            let (status, _) = ops
                .post(&format!("/api/v1/jobs/{id}/cancel"), &json!({}))
                .await;
            assert_eq!(status, 200);
        }
        for id in [&job, &copy] {
            wait_done(&ops, id, Duration::from_secs(20)).await;
        }
        let (status, _) = ops.delete(&format!("/api/v1/servers/{server}")).await;
        assert_eq!(status, 200);

        let entries = audit(&ops, "").await;
        let actions: Vec<(&str, &str)> = entries
            .iter()
            .rev()
            .map(|e| (e["actor"].as_str().unwrap(), e["action"].as_str().unwrap()))
            .collect();
        assert_eq!(
            actions,
            [
                ("ops", "server.create"),
                ("ci", "server.host_key_pinned"),
                ("ci", "server.test"),
                ("ops", "server.update"),
                ("ci", "job.submit"),
                ("ci", "job.duplicate"),
                ("ops", "job.cancel"),
                ("ops", "job.cancel"),
                ("ops", "server.delete"),
            ]
        );
        for e in &entries {
            assert_eq!(e["peer"], "127.0.0.1", "{e}");
            assert!(e["at"].as_str().unwrap().ends_with('Z'), "{e}");
        }
        let update = &entries[entries.len() - 4];
        assert_eq!(
            update["detail"]["fields"],
            json!(["private_key", "max_concurrent_jobs"])
        );
        assert!(!update.to_string().contains("OPENSSH"), "{update}");
        assert_eq!(entries[4]["target_id"], job.as_str());
        // Paged, newest first, and filtered by target.
        let page = audit(&ops, "?limit=4").await;
        assert_eq!(page.len(), 4);
        let (_, first) = ops.get("/api/v1/audit?limit=4").await;
        let cursor = first["next_cursor"].as_str().unwrap();
        let next = audit(&ops, &format!("?limit=4&cursor={cursor}")).await;
        assert_eq!(next[0]["id"], entries[4]["id"]);
        let about_job = audit(&ops, &format!("?target_id={job}")).await;
        assert_eq!(about_job.len(), 2, "{about_job:?}");
        let (status, err) = ops.get("/api/v1/audit?limit=0").await;
        assert_eq!(status, 422, "{err}");
        ci.stop().await;
        ops.stop().await;
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_certificate_the_api_speaks_tls_only() {
    let dir = tempfile::tempdir().unwrap();
    let made =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".into()])
            .unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.key_pair.serialize_pem()).unwrap();
    let db = TestDb::create(Db::Sqlite).unwrap();
    let (cert_s, key_s) = (cert.display().to_string(), key.display().to_string());
    let settings = test_settings(
        &db.url,
        &[
            ("JOBEXEC__HTTP__TLS_CERT", &cert_s),
            ("JOBEXEC__HTTP__TLS_KEY", &key_s),
        ],
    );
    let app = job_executor::App::start(settings, job_executor::Role::Serve)
        .await
        .unwrap();
    let addr = app.local_addr().unwrap();
    let trusted = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(made.cert.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let resp = trusted
        .get(format!("https://{addr}/api/v1/servers"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Plain HTTP on the same port gets no answer; an untrusting client refuses the certificate.
    assert!(
        reqwest::Client::new()
            .get(format!("http://{addr}/health"))
            .send()
            .await
            .is_err()
    );
    assert!(
        reqwest::Client::builder()
            .use_rustls_tls()
            .build()
            .unwrap()
            .get(format!("https://{addr}/health"))
            .send()
            .await
            .is_err()
    );
    // jobctl with --ca-cert.
    let out = Command::new(env!("CARGO_BIN_EXE_jobctl"))
        .args(["--url", &format!("https://{addr}"), "--ca-cert", &cert_s])
        .args(["-o", "json", "servers", "list"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    app.stop().await;
    // A key that does not match the certificate: refused at start, naming the files only.
    let other = rcgen::generate_simple_self_signed(vec!["x".to_string()]).unwrap();
    let wrong = dir.path().join("wrong.pem");
    std::fs::write(&wrong, other.key_pair.serialize_pem()).unwrap();
    let wrong_s = wrong.display().to_string();
    let settings = test_settings(
        &db.url,
        &[
            ("JOBEXEC__HTTP__TLS_CERT", &cert_s),
            ("JOBEXEC__HTTP__TLS_KEY", &wrong_s),
        ],
    );
    let err = job_executor::App::start(settings, job_executor::Role::Serve)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("TLS") && err.contains("wrong.pem"), "{err}");
    assert!(!err.contains("PRIVATE KEY"), "{err}");
}

db_test!(
    without_tokens_a_web_page_can_neither_change_nor_read_anything,
    |db: TestDb| async move {
        let app = TestApp::start(&db, &[]).await;
        let client = reqwest::Client::new();
        let port = app.addr.port();
        let server = json!({"name": "s", "hostname": "127.0.0.1", "user": "u", "auth_type": "password", "password": "p"});
        let send =
            |method: Method, path: &str, headers: &[(&str, String)], body: Option<&Value>| {
                let mut req = client.request(method, app.url(path));
                for (name, value) in headers {
                    req = req.header(*name, value);
                }
                if let Some(body) = body {
                    req = req.body(body.to_string());
                }
                async move {
                    let resp = req.send().await.unwrap();
                    let status = resp.status().as_u16();
                    let body: Value = resp.json().await.unwrap();
                    (status, body)
                }
            };
        let text = ("content-type", "text/plain".to_string());
        let json_type = ("content-type", "application/json".to_string());
        // A "simple" cross-origin form post (text/plain: no CORS preflight): not JSON.
        let evil = ("origin", "http://evil.example".to_string());
        let (status, err) = send(
            Method::POST,
            "/api/v1/servers",
            &[text.clone(), evil.clone()],
            Some(&server),
        )
        .await;
        assert_eq!(status, 403, "{err}");
        // Without an Origin (a client that is no browser) the body is still not JSON.
        let (status, err) = send(
            Method::POST,
            "/api/v1/servers",
            std::slice::from_ref(&text),
            Some(&server),
        )
        .await;
        assert_eq!(status, 415, "{err}");
        assert_eq!(err["code"], "unsupported_media_type");
        // No type at all is not JSON either.
        let (status, err) = send(Method::POST, "/api/v1/servers", &[], Some(&server)).await;
        assert_eq!(status, 415, "{err}");
        // JSON from a foreign origin: refused.
        let (status, err) = send(
            Method::POST,
            "/api/v1/servers",
            &[json_type.clone(), evil.clone()],
            Some(&server),
        )
        .await;
        assert_eq!(status, 403, "{err}");
        assert_eq!(err["code"], "forbidden");
        for origin in [
            "null",
            "http://localhost:1",
            "http://127.0.0.1.evil.example",
        ] {
            let (status, err) = send(
                Method::DELETE,
                "/api/v1/servers/0195f2a4-3b7c-7d8e-9f00-112233445566",
                &[("origin", origin.into())],
                None,
            )
            .await;
            assert_eq!(status, 403, "{origin}: {err}");
        }
        // DNS rebinding: a foreign name for 127.0.0.1 reads nothing, not even /health.
        let rebound = ("host", format!("rebind.evil.example:{port}"));
        for path in [
            "/api/v1/servers",
            "/api/v1/jobs",
            "/health",
            "/api/v1/openapi.json",
        ] {
            let (status, err) = send(Method::GET, path, std::slice::from_ref(&rebound), None).await;
            assert_eq!(status, 403, "{path}: {err}");
            assert_eq!(err["code"], "forbidden", "{path}");
        }
        let resp = client
            .get(app.url("/metrics"))
            .header("host", "rebind.evil.example")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 403);
        let (status, list) = app.get("/api/v1/servers").await;
        assert_eq!(status, 200);
        assert_eq!(list["servers"], json!([]), "nothing refused was done");
        // What a local client sends is served: loopback names, its own origin, JSON with a
        // charset, an optional body left out without a type.
        for host in [
            format!("localhost:{port}"),
            format!("127.0.0.1:{port}"),
            "[::1]".into(),
        ] {
            let (status, body) = send(
                Method::GET,
                "/api/v1/servers",
                &[("host", host.clone())],
                None,
            )
            .await;
            assert_eq!(status, 200, "{host}: {body}");
        }
        let own = ("origin", format!("http://127.0.0.1:{port}"));
        let utf8 = (
            "content-type",
            "application/json; charset=utf-8".to_string(),
        );
        let (status, created) =
            send(Method::POST, "/api/v1/servers", &[utf8, own], Some(&server)).await;
        assert_eq!(status, 201, "{created}");
        let id = created["id"].as_str().unwrap();
        let (status, body) = send(
            Method::POST,
            &format!("/api/v1/servers/{id}/test"),
            &[],
            None,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        app.stop().await;

        // With tokens a page has no credential: the host name is not checked, the type is.
        let app = TestApp::start(&db, &[("JOBEXEC_API_TOKENS", &tokens())])
            .await
            .with_token(OPS);
        let resp = app
            .client
            .get(app.url("/api/v1/servers"))
            .header("host", "api.example")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let resp = app
            .client
            .post(app.url("/api/v1/servers"))
            .header("content-type", "text/plain")
            .body(server.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 415);
        app.stop().await;
    }
);

db_test!(
    a_wrong_typed_secret_is_not_quoted_back,
    |db: TestDb| async move {
        let app = TestApp::start(&db, &[]).await;
        for (field, value) in [
            ("password", json!(12345678)),
            ("password", json!(31415.9265)),
            ("private_key_passphrase", json!(87654321)),
            ("private_key", json!(true)),
        ] {
            let mut server = json!({"name": "s", "hostname": "127.0.0.1", "user": "u", "auth_type": "password", "password": "p"});
            server[field] = value.clone();
            let (status, err) = app.post("/api/v1/servers", &server).await;
            assert_eq!(status, 422, "{err}");
            assert_eq!(err["field"], field, "{err}");
            assert!(!err.to_string().contains(&value.to_string()), "{err}");
        }
        app.stop().await;
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_names_the_class_of_a_database_failure_not_its_detail() {
    use diesel::prelude::*;
    let Some(db) = TestDb::create(Db::Postgres) else {
        return;
    };
    let app = TestApp::start(&db, &[]).await;
    let name = db.url.rsplit('/').next().unwrap().to_string();
    let mut admin = diesel::PgConnection::establish(&crate::helpers::postgres_admin_url()).unwrap();
    let sql = |q: String, c: &mut diesel::PgConnection| diesel::sql_query(q).execute(c).unwrap();
    sql(
        format!("ALTER DATABASE {name} WITH ALLOW_CONNECTIONS false"),
        &mut admin,
    );
    sql(
        format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"),
        &mut admin,
    );
    let (status, body) = app.get("/health").await;
    sql(
        format!("ALTER DATABASE {name} WITH ALLOW_CONNECTIONS true"),
        &mut admin,
    );
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "unavailable");
    assert_eq!(body["database"], "error: database unreachable", "{body}");
    for detail in [name.as_str(), "127.0.0.1", "5432", "FATAL"] {
        assert!(!body.to_string().contains(detail), "{detail}: {body}");
    }
    app.stop().await;
}

db_test!(
    a_large_output_is_streamed_in_bounded_frames,
    |db: TestDb| async move {
        use futures::StreamExt;
        let (app, _host, server) = TestApp::with_host(&db, &[]).await;
        const N: usize = 16 * 1024 * 1024;
        let id = submit(
            &app,
            json!({"command": format!("head -c {N} /dev/zero | tr '\\0' '\\1'"), "server_id": server, "timeout": 300}),
        )
        .await;
        let job = wait_done(&app, &id, Duration::from_secs(240)).await;
        assert_eq!(job["status"], "completed", "{job}");
        assert_eq!(job["output_bytes"], N, "{job}");
        // The body arrives in frames as it is read (no Content-Length: nothing was built
        // whole), each frame small, and is exactly the JSON the route always sent.
        let resp = app
            .client
            .get(app.url(&format!("/api/v1/jobs/{id}/logs")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "application/json");
        assert!(resp.content_length().is_none(), "{:?}", resp.headers());
        let (mut body, mut frames) = (Vec::new(), 0);
        let mut stream = resp.bytes_stream();
        while let Some(frame) = stream.next().await {
            body.extend_from_slice(&frame.unwrap());
            frames += 1;
        }
        assert!(frames > 100, "{frames} frames");
        let logs: Value = serde_json::from_slice(&body).unwrap();
        let text = "\u{1}".repeat(N);
        assert!(logs["stdout"] == text.as_str() && logs["output"] == text.as_str());
        let field = |name: &str| logs[name].to_string();
        let expected = format!(
            "{{\"job_id\":\"{id}\",\"status\":\"completed\",\"exit_code\":0,\"stdout\":{t},\"stderr\":\"\",\"output\":{t},\"started_at\":{},\"finished_at\":{},\"duration\":{},\"truncated\":false,\"output_pruned_at\":null}}",
            field("started_at"),
            field("finished_at"),
            field("duration"),
            t = serde_json::to_string(&text).unwrap(),
        );
        assert!(
            body == expected.as_bytes(),
            "the body differs from the whole encoding"
        );
        // The raw stream too, and the chunks.
        let resp = app
            .client
            .get(app.url(&format!("/api/v1/jobs/{id}/stdout")))
            .send()
            .await
            .unwrap();
        assert!(resp.content_length().is_none());
        let raw = resp.bytes().await.unwrap();
        assert!(raw.len() == N && raw.iter().all(|b| *b == 1));
        let (status, chunks) = app
            .get(&format!("/api/v1/jobs/{id}/logs?format=chunks"))
            .await;
        assert_eq!(status, 200);
        let total: usize = chunks
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["data"].as_str().unwrap().len())
            .sum();
        assert_eq!(total, N);
        app.stop().await;
    }
);
