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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_the_server_closed_is_replaced() {
    use diesel::prelude::*;
    let Some(db) = TestDb::create(crate::helpers::Db::Postgres) else {
        return;
    };
    let settings = crate::helpers::test_settings(&db.url, &[("JOBEXEC__DATABASE__POOL_SIZE", "2")]);
    let store = job_executor::store::Store::open(&settings).await.unwrap();
    let name = db.url.rsplit('/').next().unwrap().to_string();
    let mut admin = diesel::PgConnection::establish(&crate::helpers::postgres_admin_url()).unwrap();
    let mut terminate = || {
        diesel::sql_query(format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
        ))
        .execute(&mut admin)
        .unwrap()
    };
    // Idle for longer than a connection stays fresh: tested on checkout, replaced, and the
    // caller never sees the closed one.
    store.ping().await.unwrap();
    assert!(terminate() >= 1);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    for _ in 0..4 {
        store
            .ping()
            .await
            .expect("a closed idle connection is replaced");
    }
    // Closed just after it answered: handed out untested, so one call may fail; that
    // failure has the connection tested at its next checkout, and the calls after succeed.
    store.ping().await.unwrap();
    terminate();
    let failed = {
        let mut failed = 0;
        for _ in 0..3 {
            failed += usize::from(store.ping().await.is_err());
        }
        failed
    };
    assert!(failed <= 2, "{failed} calls failed on a pool of 2");
    for _ in 0..4 {
        store
            .ping()
            .await
            .expect("the closed connections were replaced");
    }
}
