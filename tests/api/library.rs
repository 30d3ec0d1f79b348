//! The library API without HTTP: a `Supervisor` in this (plain tokio) test registers a server,
//! runs command and script jobs on a real sshd, follows their output as a stream, waits for
//! their end, cancels one, and shuts down leaving nothing running.

use std::time::{Duration, Instant};

use futures::StreamExt;
use job_executor::domain::{Actor, JobKind, JobRequest, JobStatus, OutputStream};
use job_executor::domain::{HostStatus, RunStatus};
use job_executor::supervisor::{
    Error, JobId, NewJob, NewRun, NewServer, OutputChunk, RunOutput, Supervisor,
};

use crate::db_test;
use crate::helpers::{TestDb, TestHost, secret_key_env};

fn text(chunks: &[OutputChunk], stream: OutputStream) -> String {
    chunks
        .iter()
        .filter(|c| c.stream == stream)
        .map(|c| String::from_utf8_lossy(&c.data).into_owned())
        .collect()
}

async fn wait_running(sup: &Supervisor, job: &JobId) {
    let start = Instant::now();
    while sup.job(job).await.unwrap().status != JobStatus::Running {
        assert!(start.elapsed() < Duration::from_secs(20), "never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

db_test!(
    a_supervisor_runs_follows_waits_and_cancels_without_http,
    |db: TestDb| async move {
        let host = TestHost::start().await;
        let mut builder = Supervisor::builder()
            .database(&db.url)
            .concurrency(8)
            .settings(|s| s.worker.shutdown_grace_secs = 1);
        if let Some((_, key)) = secret_key_env(&db.url) {
            builder = builder.secret_key(key);
        }
        let sup = builder.build().await.unwrap();
        let server = NewServer::with_key("h", &host.host, &host.user, &host.keys.ed25519_openssh)
            .port(host.port);
        let first = sup.upsert_server(server).await.unwrap();
        // The same name again updates it.
        let again = sup
            .upsert_server(
                NewServer::with_key("h", &host.host, &host.user, &host.keys.ed25519_openssh)
                    .port(host.port)
                    .max_concurrent_jobs(4),
            )
            .await
            .unwrap();
        assert_eq!(first.id, again.id);
        assert_eq!(again.max_concurrent_jobs, 4);
        assert_eq!(sup.servers().await.unwrap().len(), 1);

        // A command: output followed live from the start, then the end.
        let job = sup
            .submit(NewJob::command(
                "h",
                "echo one; sleep 0.2; echo two >&2; exit 3",
            ))
            .await
            .unwrap();
        let chunks: Vec<OutputChunk> = sup.output(&job).collect().await;
        assert_eq!(text(&chunks, OutputStream::Stdout), "one\n");
        assert_eq!(text(&chunks, OutputStream::Stderr), "two\n");
        assert!(chunks.windows(2).all(|w| w[0].seq < w[1].seq));
        let done = sup.wait(&job).await.unwrap();
        assert_eq!(done.status, JobStatus::Failed);
        assert_eq!(done.exit_code, Some(3));

        // A script with arguments and environment, by server id.
        let job = sup
            .submit(
                NewJob::script(&first.id, "echo \"$1-$GREETING\"")
                    .args("x")
                    .env("GREETING", "hi")
                    .timeout(Duration::from_secs(30)),
            )
            .await
            .unwrap();
        let done = sup.wait(&job).await.unwrap();
        assert!(done.succeeded(), "{done:?}");
        // Followed after the end: replayed whole.
        let chunks: Vec<OutputChunk> = sup.output(&job).collect().await;
        assert_eq!(text(&chunks, OutputStream::Stdout), "x-hi\n");

        // Cancel stops a running job.
        let job = sup.run_command("h", "sleep 30").await.unwrap();
        wait_running(&sup, &job).await;
        let started = Instant::now();
        sup.cancel(&job).await.unwrap();
        let done = sup.wait(&job).await.unwrap();
        assert_eq!(done.status, JobStatus::Canceled);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?} {done:?}",
            started.elapsed()
        );
        assert!(matches!(
            sup.cancel(&job).await,
            Err(Error::Engine(
                job_executor::engine::Error::AlreadyEnded { .. }
            ))
        ));

        // Refusals say why, as the API would.
        let err = sup.run_command("nope", "true").await.unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
        let err = sup
            .submit(NewJob::command("h", "true").timeout(Duration::from_secs(10_000_000)))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("timeout"), "{err}");

        // Shutdown with a job running leaves nothing running.
        let job = sup.run_command("h", "sleep 30").await.unwrap();
        wait_running(&sup, &job).await;
        let store = job_executor::store::Store::open(&crate::helpers::test_settings(&db.url, &[]))
            .await
            .unwrap();
        sup.shutdown().await;
        let row = store.get_job(job.0).await.unwrap();
        assert_ne!(row.status, JobStatus::Running, "{row:?}");
    }
);

/// The HTTP API mounts in an embedding program's own actix-web app, beside its own routes,
/// and acts on the same engine as the library calls.
#[actix_web::test]
async fn the_routes_mount_in_an_embedding_programs_own_actix_web_app() {
    use actix_web::{App, test, web};
    let db = TestDb::create(crate::helpers::Db::Sqlite).unwrap();
    let sup = Supervisor::builder()
        .database(&db.url)
        .build()
        .await
        .unwrap();
    let app = test::init_service(
        App::new()
            .app_data(web::Data::new(
                job_executor::http::AppState::new(sup.engine().clone()).unwrap(),
            ))
            .configure(job_executor::http::configure)
            .route("/hello", web::get().to(|| async { "ours" })),
    )
    .await;
    let req = test::TestRequest::post()
        .uri("/api/v1/servers")
        .set_json(
            serde_json::json!({"name": "web", "hostname": "127.0.0.1", "user": "u",
            "auth_type": "password", "password": "p"}),
        )
        .to_request();
    let resp = test::call_service(&app, req).await;
    assert_eq!(resp.status(), 201);
    // Registered through HTTP, seen by the library.
    let servers = sup.servers().await.unwrap();
    assert_eq!(servers.len(), 1);
    assert_eq!(servers[0].name, "web");
    let resp = test::call_service(&app, test::TestRequest::get().uri("/hello").to_request()).await;
    assert_eq!(resp.status(), 200);
    let resp = test::call_service(
        &app,
        test::TestRequest::get().uri("/api/v1/nothing").to_request(),
    )
    .await;
    assert_eq!(resp.status(), 404);
    sup.shutdown().await;
}

db_test!(
    idempotency_keys_are_each_callers_own,
    |db: TestDb| async move {
        let mut builder = Supervisor::builder().database(&db.url);
        if let Some((_, key)) = secret_key_env(&db.url) {
            builder = builder.secret_key(key);
        }
        let sup = builder.build().await.unwrap();
        // Nothing listens on port 1: the jobs fail at once, which does not matter here.
        let server = NewServer::with_password("i", "127.0.0.1", "u", "p").port(1);
        let server = sup.upsert_server(server).await.unwrap().id;
        let engine = sup.engine();
        let submit = |caller: &str, key: &str| {
            let caller = Actor {
                name: caller.to_string(),
                peer: None,
                access: job_executor::domain::Access::admin(),
            };
            let request = JobRequest {
                command: Some("true".into()),
                server_id: Some(server.clone()),
                idempotency_key: Some(key.to_string()),
                ..Default::default()
            };
            async move {
                engine
                    .submit(&caller, JobKind::Command, request)
                    .await
                    .unwrap()
            }
        };
        let a = submit("a", "k").await;
        let b = submit("b", "k").await;
        assert!(a.created && b.created, "another caller's key is not mine");
        assert_ne!(a.job.id, b.job.id);
        let again = submit("a", "k").await;
        assert!(!again.created);
        assert_eq!(again.job.id, a.job.id);
        // Names and keys do not run into each other.
        let c = submit("a:b", "c").await;
        let d = submit("a", "b:c").await;
        assert!(c.created && d.created);
        assert_eq!(a.job.caller_idempotency_key(), Some("k"));
        assert_eq!(d.job.caller_idempotency_key(), Some("b:c"));
        sup.shutdown().await;
    }
);

#[test]
fn redacted_urls_leave_out_the_query() {
    use job_executor::settings::redact_url;
    assert_eq!(
        redact_url("postgres://u:pw@db:5432/jobs?sslpassword=hunter2&sslmode=require"),
        "postgres://u:***@db:5432/jobs"
    );
    assert_eq!(
        redact_url("amqp://mq:5672/%2f?auth=plain&password=hunter2#x"),
        "amqp://mq:5672/%2f"
    );
    assert_eq!(
        redact_url("sqlite://./jobs.db?key=hunter2"),
        "sqlite://./jobs.db"
    );
    assert_eq!(redact_url("./jobs.db"), "./jobs.db");
}

db_test!(
    a_supervisor_runs_one_command_on_many_servers,
    |db: TestDb| async move {
        let host = TestHost::start().await;
        let mut builder = Supervisor::builder().database(&db.url).concurrency(8);
        if let Some((_, key)) = secret_key_env(&db.url) {
            builder = builder.secret_key(key);
        }
        let sup = builder.build().await.unwrap();
        for name in ["lib-1", "lib-2", "lib-3"] {
            let server =
                NewServer::with_key(name, &host.host, &host.user, &host.keys.ed25519_openssh)
                    .port(host.port)
                    .label("role", "lib");
            sup.upsert_server(server).await.unwrap();
        }
        let run = sup
            .run(
                NewRun::command("echo hi; sleep 0.2; echo bye")
                    .on("role=lib")
                    .batch(2),
            )
            .await
            .unwrap();
        let output: Vec<RunOutput> = run.output().collect().await;
        for name in ["lib-1", "lib-2", "lib-3"] {
            let text: String = (output.iter())
                .filter(|o| o.server_name == name)
                .map(|o| String::from_utf8_lossy(&o.chunk.data).into_owned())
                .collect();
            assert_eq!(text, "hi\nbye\n", "{name}");
        }
        let done = run.wait().await.unwrap();
        assert_eq!(done.row.status, RunStatus::Completed);
        assert!(
            done.hosts
                .iter()
                .all(|h| h.status() == HostStatus::Completed)
        );
        // Cancel: the running host stops, the waiting one is skipped.
        let run = sup
            .run(
                NewRun::command("sleep 30")
                    .on_servers(&["lib-1", "lib-2"])
                    .batch(1),
            )
            .await
            .unwrap();
        let start = Instant::now();
        while run.get().await.unwrap().hosts[0].status() != HostStatus::Running {
            assert!(start.elapsed() < Duration::from_secs(20), "never ran");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        run.cancel().await.unwrap();
        let done = run.wait().await.unwrap();
        assert_eq!(done.row.status, RunStatus::Canceled);
        let statuses: Vec<HostStatus> = done.hosts.iter().map(|h| h.status()).collect();
        assert_eq!(statuses, [HostStatus::Canceled, HostStatus::Skipped]);
        // Bad input is the engine's typed error.
        let err = sup
            .run(NewRun::command("true").on("role=none"))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Engine(job_executor::engine::Error::Invalid(f)) if f.field == "targets.selector"),
            "{err}"
        );
        sup.shutdown().await;
    }
);

db_test!(
    a_supervisor_told_to_act_as_a_scoped_operator_is_held_to_it,
    |db: TestDb| async move {
        use job_executor::domain::{Access, Role, Selector};
        let host = TestHost::start().await;
        let scope = Selector::parse("scope", "env=staging").unwrap();
        let mut builder = Supervisor::builder().database(&db.url).acting_as(
            "deployer",
            Access {
                role: Role::Operator,
                scope: Some(scope),
            },
        );
        if let Some((_, key)) = secret_key_env(&db.url) {
            builder = builder.secret_key(key);
        }
        let sup = builder.build().await.unwrap();
        let server = |name: &str, env: &str| {
            NewServer::with_key(name, &host.host, &host.user, &host.keys.ed25519_openssh)
                .port(host.port)
                .label("env", env)
        };
        // An operator registers no server; the engine, asked as the library, does.
        let refused = sup.upsert_server(server("stg", "staging")).await;
        assert!(
            matches!(&refused, Err(Error::Engine(job_executor::engine::Error::Forbidden(m))) if m == "operator tokens cannot create servers"),
            "{refused:?}"
        );
        let engine = sup.engine();
        for (name, env) in [("stg", "staging"), ("prd", "prod")] {
            let patch = server(name, env).into_patch();
            engine
                .upsert_server(&Actor::library(), patch)
                .await
                .unwrap();
        }
        let names: Vec<String> = (sup.servers().await.unwrap().into_iter())
            .map(|s| s.name)
            .collect();
        assert_eq!(names, vec!["stg"]);
        let job = sup.run_command("stg", "echo in-scope").await.unwrap();
        assert!(sup.wait(&job).await.unwrap().succeeded());
        let refused = sup.run_command("prd", "echo outside").await;
        assert!(
            matches!(&refused, Err(Error::Engine(job_executor::engine::Error::Forbidden(m))) if m.ends_with("prd")),
            "{refused:?}"
        );
        // A job on production, submitted as the library, is not there for the supervisor.
        let prd = engine.server_id_of("prd").await.unwrap();
        let request = JobRequest {
            command: Some("true".into()),
            server_id: Some(prd.to_string()),
            ..Default::default()
        };
        let other = (engine
            .submit(&Actor::library(), JobKind::Command, request)
            .await)
            .unwrap()
            .job;
        let other = JobId::of_row(&other.id).unwrap();
        for result in [
            sup.job(&other).await.map(drop),
            sup.wait(&other).await.map(drop),
        ] {
            assert!(
                matches!(
                    result,
                    Err(Error::Engine(job_executor::engine::Error::NotFound(_)))
                ),
                "{result:?}"
            );
        }
        sup.shutdown().await;
    }
);
