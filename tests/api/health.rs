use crate::db_test;
use crate::helpers::{TestApp, TestDb};

db_test!(health_reports_database_and_queue, |db: TestDb| async move {
    let app = TestApp::start(&db, &[]).await;
    let (status, body) = app.get("/health").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ok");
    assert_eq!(body["database"], "ok");
    assert_eq!(body["queue"], "memory");
    let backend = match db.kind() {
        crate::helpers::Db::Sqlite => "sqlite",
        crate::helpers::Db::Postgres => "postgres",
    };
    assert_eq!(body["database_backend"], backend);
    // Ready: the database answers and no broker is configured.
    let (status, body) = app.get("/health/ready").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        serde_json::json!({"status": "ready", "database": true, "broker": null})
    );
    app.stop().await;
});

db_test!(
    unknown_routes_and_methods_answer_json,
    |db: TestDb| async move {
        let app = TestApp::start(&db, &[]).await;
        let (status, body) = app.get("/api/v1/nothing-here").await;
        assert_eq!(status, 404);
        assert_eq!(body["code"], "not_found");
        let (status, body) = app
            .raw(reqwest::Method::PATCH, "/api/v1/servers", b"{}".to_vec())
            .await;
        assert_eq!(status, 405);
        assert_eq!(body["code"], "method_not_allowed");
        app.stop().await;
    }
);

db_test!(
    several_processes_migrating_a_new_database_at_once_all_start,
    |db: TestDb| async move {
        // An api and its workers started together on a new database race to migrate it.
        let settings = crate::helpers::test_settings(&db.url, &[]);
        let opens = (0..4).map(|_| job_executor::store::Store::open(&settings));
        for store in futures::future::join_all(opens).await {
            let store = store.expect("every process starts");
            store.ping().await.unwrap();
        }
    }
);
