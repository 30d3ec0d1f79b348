//! `POST /servers/:id/test` against real SSH servers: success with the fingerprint, and each
//! kind of failure named, within a bounded time.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::db_test;
use crate::helpers::{TestApp, TestDb, TestHost};

async fn test_server(app: &TestApp, id: &str) -> Value {
    let started = Instant::now();
    let (status, body) = app
        .post(&format!("/api/v1/servers/{id}/test"), &json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "took {:?}",
        started.elapsed()
    );
    assert!(body["latency_ms"].is_u64(), "{body}");
    body
}

/// What a caller is told of every failure to reach the server, whatever the port did.
const UNREACHABLE: &str = "unreachable: no working SSH session could be made with the server";

/// The precise cause of the last connection test, as the audit record keeps it.
async fn last_test_error(app: &TestApp) -> String {
    let (status, log) = app.get("/api/v1/audit?action=server.test").await;
    assert_eq!(status, 200, "{log}");
    log["entries"][0]["detail"]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

async fn add(app: &TestApp, body: Value) -> String {
    let (status, created) = app.post("/api/v1/servers", &body).await;
    assert_eq!(status, 201, "{created}");
    created["id"].as_str().unwrap().to_string()
}

fn key_server(name: &str, host: &TestHost, key: &str) -> Value {
    json!({
        "name": name, "hostname": host.host, "port": host.port, "user": host.user,
        "auth_type": "key", "private_key": key,
    })
}

db_test!(
    key_auth_succeeds_with_fingerprint_and_pins_it,
    |db: TestDb| async move {
        let app = TestApp::start(&db, &[]).await;
        let host = TestHost::start().await;
        let id = add(&app, key_server("ed", &host, &host.keys.ed25519_openssh)).await;
        let report = test_server(&app, &id).await;
        assert_eq!(report["ok"], true, "{report}");
        assert_eq!(report["error"], Value::Null);
        assert_eq!(report["host_key_fingerprint"], host.host_key_fingerprint);
        assert_eq!(report["host_key_pinned"], true);
        let (_, server) = app.get(&format!("/api/v1/servers/{id}")).await;
        assert_eq!(server["host_key_fingerprint"], host.host_key_fingerprint);
        assert!(
            server["host_key"]
                .as_str()
                .unwrap()
                .starts_with("ssh-ed25519 ")
        );
        // Pinned now: the next test verifies against the pin and still succeeds.
        let report = test_server(&app, &id).await;
        assert_eq!(report["ok"], true, "{report}");
        assert_eq!(report["host_key_pinned"], false);
        app.stop().await;
    }
);

db_test!(
    pem_and_encrypted_keys_authenticate,
    |db: TestDb| async move {
        let app = TestApp::start(&db, &[]).await;
        let host = TestHost::start().await;
        let pem = add(&app, key_server("pem", &host, &host.keys.rsa_pem)).await;
        let mut enc = key_server("enc", &host, &host.keys.encrypted_openssh);
        enc["private_key_passphrase"] = json!(host.keys.passphrase);
        let enc = add(&app, enc).await;
        for id in [pem, enc] {
            let report = test_server(&app, &id).await;
            assert_eq!(report["ok"], true, "{report}");
            assert_eq!(report["host_key_fingerprint"], host.host_key_fingerprint);
        }
        app.stop().await;
    }
);

db_test!(
    password_auth_succeeds_and_wrong_password_is_named,
    |db: TestDb| async move {
        let app = TestApp::start(&db, &[]).await;
        let host = TestHost::start_with_password().await;
        let password = host.password.clone().unwrap();
        let good = add(
            &app,
            json!({"name": "pw", "hostname": host.host, "port": host.port, "user": host.user,
               "auth_type": "password", "password": password}),
        )
        .await;
        let report = test_server(&app, &good).await;
        assert_eq!(report["ok"], true, "{report}");
        assert_eq!(report["host_key_fingerprint"], host.host_key_fingerprint);
        let bad = add(
            &app,
            json!({"name": "pw-bad", "hostname": host.host, "port": host.port, "user": host.user,
               "auth_type": "password", "password": "definitely-wrong-pw"}),
        )
        .await;
        let report = test_server(&app, &bad).await;
        assert_eq!(report["ok"], false, "{report}");
        let error = report["error"].as_str().unwrap();
        assert!(error.contains("authentication failed"), "{error}");
        assert!(
            !report.to_string().contains("definitely-wrong-pw"),
            "{report}"
        );
        assert!(!report.to_string().contains(&password), "{report}");
        app.stop().await;
    }
);

db_test!(unauthorized_key_is_rejected, |db: TestDb| async move {
    let app = TestApp::start(&db, &[]).await;
    let host = TestHost::start().await;
    let id = add(
        &app,
        key_server("other", &host, &host.keys.unauthorized_openssh),
    )
    .await;
    let report = test_server(&app, &id).await;
    assert_eq!(report["ok"], false, "{report}");
    assert!(
        report["error"]
            .as_str()
            .unwrap()
            .contains("authentication failed"),
        "{report}"
    );
    app.stop().await;
});

db_test!(refused_port_is_named_quickly, |db: TestDb| async move {
    let app = TestApp::start(&db, &[]).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let id = add(
        &app,
        json!({"name": "nobody", "hostname": "127.0.0.1", "port": port, "user": "u",
               "auth_type": "password", "password": "p"}),
    )
    .await;
    let started = Instant::now();
    let report = test_server(&app, &id).await;
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(report["ok"], false);
    // The caller learns the kind, not the port's state; the audit record keeps the cause.
    assert_eq!(report["error"], UNREACHABLE, "{report}");
    assert!(last_test_error(&app).await.contains("connection refused"));
    app.stop().await;
});

db_test!(
    silent_server_times_out_within_the_bound,
    |db: TestDb| async move {
        let app = TestApp::start(&db, &[("JOBEXEC__SSH__CONNECT_TIMEOUT_SECS", "1")]).await;
        // Accepts TCP and never says a word.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let id = add(
            &app,
            json!({"name": "silent", "hostname": "127.0.0.1", "port": port, "user": "u",
               "auth_type": "password", "password": "p"}),
        )
        .await;
        let started = Instant::now();
        let report = test_server(&app, &id).await;
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(report["ok"], false);
        assert_eq!(report["error"], UNREACHABLE, "{report}");
        assert!(last_test_error(&app).await.contains("timed out"));
        hold.abort();
        app.stop().await;
    }
);

db_test!(unresolvable_host_is_named, |db: TestDb| async move {
    let app = TestApp::start(&db, &[]).await;
    let id = add(
        &app,
        json!({"name": "nx", "hostname": "no-such-host.invalid", "user": "u",
               "auth_type": "password", "password": "p"}),
    )
    .await;
    let report = test_server(&app, &id).await;
    assert_eq!(report["ok"], false);
    assert_eq!(report["error"], UNREACHABLE, "{report}");
    assert!(last_test_error(&app).await.contains("cannot resolve"));
    app.stop().await;
});

db_test!(
    a_different_pinned_key_fails_before_auth,
    |db: TestDb| async move {
        let app = TestApp::start(&db, &[]).await;
        let host = TestHost::start().await;
        let wrong = "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU";
        let mut body = key_server("pinned", &host, &host.keys.ed25519_openssh);
        body["host_key"] = json!(wrong);
        let id = add(&app, body).await;
        let report = test_server(&app, &id).await;
        assert_eq!(report["ok"], false, "{report}");
        let error = report["error"].as_str().unwrap();
        assert!(error.contains("host key mismatch"), "{error}");
        assert!(
            error.contains(wrong) && error.contains(&host.host_key_fingerprint),
            "{error}"
        );
        assert_eq!(report["host_key_fingerprint"], host.host_key_fingerprint);
        // Re-pinning to the real key makes it work.
        let (status, _) = app
            .put(
                &format!("/api/v1/servers/{id}"),
                &json!({"host_key": host.host_key_fingerprint}),
            )
            .await;
        assert_eq!(status, 200);
        let report = test_server(&app, &id).await;
        assert_eq!(report["ok"], true, "{report}");
        // Checks turned off for this server: shown in its record, and a wrong pin no longer
        // stops it.
        let (status, server) = app
            .put(
                &format!("/api/v1/servers/{id}"),
                &json!({"host_key": wrong, "host_key_check": "off",
                        "private_key": host.keys.ed25519_openssh}),
            )
            .await;
        assert_eq!(status, 200, "{server}");
        assert_eq!(server["host_key_check"], "off");
        let report = test_server(&app, &id).await;
        assert_eq!(report["ok"], true, "{report}");
        app.stop().await;
    }
);

db_test!(
    only_allowed_hosts_are_registered_tested_or_connected_to,
    |db: TestDb| async move {
        // A server registered before the setting was made.
        let (app, host, server) = TestApp::with_host(&db, &[]).await;
        app.stop().await;
        let app = TestApp::start(
            &db,
            &[("JOBEXEC__SSH__ALLOWED_HOSTS", "*.example.com,10.1.?.*")],
        )
        .await;
        let body = |name: &str, hostname: &str| {
            json!({"name": name, "hostname": hostname, "user": "u",
                   "auth_type": "password", "password": "p"})
        };
        let (status, err) = app.post("/api/v1/servers", &body("x", "10.0.0.5")).await;
        assert_eq!(status, 422, "{err}");
        assert_eq!(err["field"], "hostname");
        assert!(
            err["error"].as_str().unwrap().contains("allowed_hosts"),
            "{err}"
        );
        let (status, made) = app
            .post("/api/v1/servers", &body("y", "Web.Example.COM"))
            .await;
        assert_eq!(status, 201, "{made}");
        let (status, made) = app.post("/api/v1/servers", &body("z", "10.1.2.3")).await;
        assert_eq!(status, 201, "{made}");
        let path = format!("/api/v1/servers/{}", made["id"].as_str().unwrap());
        let moved = json!({"hostname": "10.2.2.3", "password": "p"});
        let (status, err) = app.put(&path, &moved).await;
        assert_eq!(status, 422, "{err}");
        assert_eq!(err["field"], "hostname");
        // The server from before: neither its test nor its jobs connect to it.
        let report = test_server(&app, &server).await;
        assert_eq!(report["ok"], false, "{report}");
        assert!(
            report["error"].as_str().unwrap().contains("allowed_hosts"),
            "{report}"
        );
        let job = crate::jobs::submit(&app, json!({"command": "true", "server_id": server})).await;
        let done = crate::jobs::wait_done(&app, &job, Duration::from_secs(20)).await;
        assert_eq!(done["status"], "failed", "{done}");
        assert!(
            done["error"].as_str().unwrap().contains("allowed_hosts"),
            "{done}"
        );
        drop(host);
        app.stop().await;
    }
);
