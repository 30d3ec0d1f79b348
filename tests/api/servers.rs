//! The server registry: CRUD, validation, the error contract, persistence.

use serde_json::{Value, json};

use crate::db_test;
use crate::helpers::{TestApp, TestDb};

fn password_server(name: &str) -> Value {
    json!({
        "name": name,
        "hostname": "10.0.0.5",
        "port": 2222,
        "user": "deploy",
        "auth_type": "password",
        "password": "s3cret-pw-value",
    })
}

/// No response may carry a secret.
fn assert_no_secrets(body: &Value) {
    let text = body.to_string();
    for secret in ["s3cret-pw-value", "PRIVATE KEY", "open sesame"] {
        assert!(!text.contains(secret), "a secret leaked: {text}");
    }
    for field in [
        "password",
        "private_key",
        "private_key_passphrase",
        "pem_file",
    ] {
        assert!(body.get(field).is_none(), "{field} in {text}");
    }
}

db_test!(create_get_list_update_delete, |db: TestDb| async move {
    let app = TestApp::start(&db, &[]).await;
    let (status, created) = app.post("/api/v1/servers", &password_server("web-1")).await;
    assert_eq!(status, 201, "{created}");
    assert_no_secrets(&created);
    assert_eq!(created["name"], "web-1");
    assert_eq!(created["port"], 2222);
    assert_eq!(created["user"], "deploy");
    assert_eq!(created["auth_type"], "password");
    assert_eq!(created["has_password"], true);
    assert_eq!(created["has_private_key"], false);
    assert_eq!(created["is_active"], true);
    assert_eq!(created["max_concurrent_jobs"], 10);
    let id = created["id"].as_str().unwrap().to_string();

    let (status, got) = app.get(&format!("/api/v1/servers/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(got, created);

    let (status, list) = app.get("/api/v1/servers").await;
    assert_eq!(status, 200);
    assert_eq!(list["servers"].as_array().unwrap().len(), 1);
    assert_no_secrets(&list["servers"][0]);

    // Partial update: omitted fields keep their value, the password stays set.
    let (status, updated) = app
        .put(
            &format!("/api/v1/servers/{id}"),
            &json!({"max_concurrent_jobs": 3, "is_active": false}),
        )
        .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["port"], 2222);
    assert_eq!(updated["max_concurrent_jobs"], 3);
    assert_eq!(updated["is_active"], false);
    assert_eq!(updated["hostname"], "10.0.0.5");
    assert_eq!(updated["has_password"], true);
    assert_no_secrets(&updated);

    let (status, body) = app.delete(&format!("/api/v1/servers/{id}")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["message"].as_str().unwrap().contains(&id));
    let (status, body) = app.get(&format!("/api/v1/servers/{id}")).await;
    assert_eq!(status, 404);
    assert_eq!(body["code"], "not_found");
    app.stop().await;
});

db_test!(
    invalid_fields_get_422_naming_the_field,
    |db: TestDb| async move {
        let app = TestApp::start(&db, &[]).await;
        let base = password_server("v");
        let with = |k: &str, v: Value| {
            let mut b = base.clone();
            b[k] = v;
            b
        };
        let without = |k: &str| {
            let mut b = base.clone();
            b.as_object_mut().unwrap().remove(k);
            b
        };
        let cases = [
            (with("port", json!(70000)), "port"),
            (with("port", json!(0)), "port"),
            (with("port", json!(-1)), "port"),
            (with("port", json!("22")), "port"),
            (with("hostname", json!("")), "hostname"),
            (with("hostname", json!("bad host")), "hostname"),
            (without("hostname"), "hostname"),
            (without("password"), "password"),
            (with("password", json!("")), "password"),
            (with("auth_type", json!("kerberos")), "auth_type"),
            (with("name", json!("  ")), "name"),
            (without("name"), "name"),
            (without("user"), "user"),
            (with("is_active", json!("yes")), "is_active"),
            (with("max_concurrent_jobs", json!(0)), "max_concurrent_jobs"),
            (with("host_key", json!("not a key")), "host_key"),
            (
                json!({"name": "k", "hostname": "h", "user": "u", "auth_type": "key"}),
                "private_key",
            ),
            (
                json!({"name": "k", "hostname": "h", "user": "u", "auth_type": "key", "private_key": "garbage"}),
                "private_key",
            ),
        ];
        for (body, field) in cases {
            let (status, err) = app.post("/api/v1/servers", &body).await;
            assert_eq!(status, 422, "{body} -> {err}");
            assert_eq!(err["code"], "invalid_field", "{err}");
            assert_eq!(err["field"], field, "{body} -> {err}");
            assert!(err["error"].as_str().unwrap().contains(field), "{err}");
            assert!(!err.to_string().contains("s3cret-pw-value"), "{err}");
        }
        // Nothing was created by any of them.
        let (_, list) = app.get("/api/v1/servers").await;
        assert_eq!(list["servers"].as_array().unwrap().len(), 0);
        app.stop().await;
    }
);

db_test!(
    malformed_bodies_get_400_and_oversized_413,
    |db: TestDb| async move {
        let app = TestApp::start(&db, &[("JOBEXEC__HTTP__MAX_BODY_BYTES", "4096")]).await;
        for body in [&b"{\"name\": "[..], b"not json", b"[1,2]", b"\"str\""] {
            let (status, err) = app
                .raw(reqwest::Method::POST, "/api/v1/servers", body.to_vec())
                .await;
            assert_eq!(status, 400, "{err}");
            assert_eq!(err["code"], "bad_request");
        }
        let mut big = password_server("big");
        big["password"] = json!("x".repeat(8192));
        let (status, err) = app.post("/api/v1/servers", &big).await;
        assert_eq!(status, 413, "{err}");
        assert_eq!(err["code"], "payload_too_large");
        // Update with bad JSON changes nothing.
        let (_, created) = app.post("/api/v1/servers", &password_server("keep")).await;
        let id = created["id"].as_str().unwrap();
        let (status, _) = app
            .raw(
                reqwest::Method::PUT,
                &format!("/api/v1/servers/{id}"),
                b"{oops".to_vec(),
            )
            .await;
        assert_eq!(status, 400);
        let (status, err) = app
            .put(&format!("/api/v1/servers/{id}"), &json!({"port": 123456}))
            .await;
        assert_eq!(status, 422);
        assert_eq!(err["field"], "port");
        let (_, after) = app.get(&format!("/api/v1/servers/{id}")).await;
        assert_eq!(after, created);
        app.stop().await;
    }
);

db_test!(unknown_ids_get_404, |db: TestDb| async move {
    let app = TestApp::start(&db, &[]).await;
    let missing = "0195f2a4-3b7c-7d8e-9f00-112233445566";
    for path in [
        format!("/api/v1/servers/{missing}"),
        "/api/v1/servers/not-a-uuid".to_string(),
    ] {
        let (status, err) = app.get(&path).await;
        assert_eq!(status, 404, "{err}");
        assert_eq!(err["code"], "not_found");
        let (status, _) = app.put(&path, &json!({"port": 22})).await;
        assert_eq!(status, 404);
        let (status, _) = app.delete(&path).await;
        assert_eq!(status, 404);
        let (status, _) = app.post(&format!("{path}/test"), &json!({})).await;
        assert_eq!(status, 404);
    }
    app.stop().await;
});

db_test!(names_are_unique, |db: TestDb| async move {
    let app = TestApp::start(&db, &[]).await;
    let (status, _) = app.post("/api/v1/servers", &password_server("dup")).await;
    assert_eq!(status, 201);
    let (status, err) = app.post("/api/v1/servers", &password_server("dup")).await;
    assert_eq!(status, 409, "{err}");
    assert_eq!(err["code"], "conflict");
    let (_, other) = app.post("/api/v1/servers", &password_server("other")).await;
    let id = other["id"].as_str().unwrap();
    let (status, _) = app
        .put(&format!("/api/v1/servers/{id}"), &json!({"name": "dup"}))
        .await;
    assert_eq!(status, 409);
    app.stop().await;
});

db_test!(
    key_auth_forms_and_pem_file_synonym,
    |db: TestDb| async move {
        let app = TestApp::start(&db, &[]).await;
        let host = crate::helpers::TestHost::start().await;
        let base = json!({"hostname": "127.0.0.1", "user": "u", "auth_type": "key"});
        let make = |name: &str, extra: Value| {
            let mut b = base.clone();
            b["name"] = json!(name);
            for (k, v) in extra.as_object().unwrap() {
                b[k] = v.clone();
            }
            b
        };
        let (s, body) = app
            .post(
                "/api/v1/servers",
                &make("ed", json!({"private_key": host.keys.ed25519_openssh})),
            )
            .await;
        assert_eq!(s, 201, "{body}");
        assert_eq!(body["has_private_key"], true);
        assert_no_secrets(&body);
        let (s, body) = app
            .post(
                "/api/v1/servers",
                &make("pem", json!({"pem_file": host.keys.rsa_pem})),
            )
            .await;
        assert_eq!(s, 201, "{body}");
        assert_eq!(body["has_private_key"], true);
        // Without auth_type, a key implies key auth.
        let (s, body) = app
        .post(
            "/api/v1/servers",
            &json!({"name": "implied", "hostname": "h", "user": "u", "private_key": host.keys.ed25519_openssh}),
        )
        .await;
        assert_eq!(s, 201, "{body}");
        assert_eq!(body["auth_type"], "key");
        let (s, err) = app
            .post(
                "/api/v1/servers",
                &make("enc", json!({"private_key": host.keys.encrypted_openssh})),
            )
            .await;
        assert_eq!(s, 422, "{err}");
        assert_eq!(err["field"], "private_key_passphrase");
        let (s, err) = app
        .post(
            "/api/v1/servers",
            &make("enc", json!({"private_key": host.keys.encrypted_openssh, "private_key_passphrase": "wrong"})),
        )
        .await;
        assert_eq!(s, 422, "{err}");
        assert_eq!(err["field"], "private_key_passphrase");
        let (s, body) = app
        .post(
            "/api/v1/servers",
            &make("enc", json!({"private_key": host.keys.encrypted_openssh, "private_key_passphrase": host.keys.passphrase})),
        )
        .await;
        assert_eq!(s, 201, "{body}");
        assert_eq!(body["has_private_key_passphrase"], true);
        assert_no_secrets(&body);
        app.stop().await;
    }
);

db_test!(data_survives_a_restart, |db: TestDb| async move {
    let app = TestApp::start(&db, &[]).await;
    let (_, created) = app
        .post("/api/v1/servers", &password_server("durable"))
        .await;
    app.stop().await;
    let app = TestApp::start(&db, &[]).await;
    let id = created["id"].as_str().unwrap();
    let (status, got) = app.get(&format!("/api/v1/servers/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(got, created);
    app.stop().await;
});

db_test!(
    changing_where_the_secret_goes_needs_the_secret_again,
    |db: TestDb| async move {
        let app = TestApp::start(&db, &[]).await;
        let mut body = password_server("moving");
        body["host_key"] = json!("SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU");
        let (status, created) = app.post("/api/v1/servers", &body).await;
        assert_eq!(status, 201, "{created}");
        let path = format!("/api/v1/servers/{}", created["id"].as_str().unwrap());
        // Each of these would send the stored password elsewhere (or to an unverified host).
        for (change, field) in [
            (json!({"hostname": "attacker.example"}), "hostname"),
            (json!({"port": 22}), "port"),
            (json!({"user": "root"}), "user"),
            (json!({"host_key_check": "off"}), "host_key_check"),
            (json!({"host_key": ""}), "host_key"),
        ] {
            let (status, err) = app.put(&path, &change).await;
            assert_eq!(status, 422, "{change}: {err}");
            assert_eq!(err["field"], "password", "{err}");
            assert!(err["error"].as_str().unwrap().contains(field), "{err}");
        }
        let (_, now) = app.get(&path).await;
        assert_eq!(now, created, "nothing changed");
        // The same values again are no change; other fields need no secret.
        let same =
            json!({"hostname": "10.0.0.5", "port": 2222, "user": "deploy", "is_active": true});
        let (status, body) = app.put(&path, &same).await;
        assert_eq!(status, 200, "{body}");
        // With the password re-entered the move is made, and the audit says so.
        let moved = json!({"hostname": "10.0.0.6", "port": 22, "password": "s3cret-pw-value"});
        let (status, updated) = app.put(&path, &moved).await;
        assert_eq!(status, 200, "{updated}");
        assert_eq!(updated["hostname"], "10.0.0.6");
        assert_no_secrets(&updated);
        let (status, log) = app.get("/api/v1/audit?action=server.update").await;
        assert_eq!(status, 200, "{log}");
        let last = &log["entries"][0];
        assert_eq!(last["detail"]["secret_reentered"], true, "{last}");
        assert_eq!(
            last["detail"]["destination_changed"],
            json!(["hostname", "port"]),
            "{last}"
        );
        app.stop().await;
    }
);

#[tokio::test]
async fn delete_is_refused_while_jobs_are_queued_or_running() {
    use diesel::prelude::*;
    let db = crate::helpers::TestDb::create(crate::helpers::Db::Sqlite).unwrap();
    let app = TestApp::start(&db, &[]).await;
    let (_, created) = app.post("/api/v1/servers", &password_server("busy")).await;
    let id = created["id"].as_str().unwrap().to_string();
    // The job routes arrive with the engine; put a queued job in the table directly.
    let mut conn = SqliteConnection::establish(&db.url).unwrap();
    // Wait for the service's write lock, as its own connections do.
    diesel::sql_query("PRAGMA busy_timeout = 10000")
        .execute(&mut conn)
        .unwrap();
    diesel::sql_query(format!(
        "INSERT INTO jobs (id, kind, command, server_id, timeout_secs, status, created_at) \
         VALUES ('{}', 'command', 'true', '{id}', 60, 'queued', 0)",
        uuid::Uuid::now_v7()
    ))
    .execute(&mut conn)
    .unwrap();
    let (status, err) = app.delete(&format!("/api/v1/servers/{id}")).await;
    assert_eq!(status, 409, "{err}");
    assert!(err["error"].as_str().unwrap().contains("queued or running"));
    diesel::sql_query("UPDATE jobs SET status = 'completed'")
        .execute(&mut conn)
        .unwrap();
    let (status, _) = app.delete(&format!("/api/v1/servers/{id}")).await;
    assert_eq!(status, 200);
    app.stop().await;
}
