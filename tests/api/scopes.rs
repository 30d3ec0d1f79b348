//! Scopes on tokens, over real HTTP and a real SSH server: a token scoped to `env=staging`
//! sees the staging server, its jobs and its runs, and nothing of production (404, as if it
//! did not exist: every read, every stream, every action on it); work that would reach a
//! production server is refused whole with 403 naming it and nothing is created; a scoped
//! admin cannot read what spans the fleet (audit log, webhooks) nor place a server outside
//! its scope; a schedule keeps the scope of the token that saved it when it fires.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{Db, TestApp, TestDb, TestHost};
use crate::jobs::wait_done;
use crate::runs::wait_run;

const ADMIN: &str = "admin-token-0123456789";
const SCOPED: &str = "scoped-token-0123456789";
const SCOPED_ADMIN: &str = "scoped-admin-token-0123456789";

fn tokens_file() -> String {
    format!(
        "[[auth.tokens]]\nname = \"root\"\ntoken = \"{ADMIN}\"\nrole = \"admin\"\n\n\
         [[auth.tokens]]\nname = \"ci-staging\"\ntoken = \"{SCOPED}\"\nrole = \"operator\"\n\
         scope = \"env=staging\"\n\n\
         [[auth.tokens]]\nname = \"staging-admin\"\ntoken = \"{SCOPED_ADMIN}\"\nrole = \"admin\"\n\
         scope = \"env=staging\"\n"
    )
}

/// `method path` as `token` with `body` (for a change): the status and the JSON body (`null`
/// for a stream that was allowed, which is not read to its end).
pub async fn call(
    app: &TestApp,
    token: &str,
    method: &str,
    path: &str,
    body: &Value,
) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = reqwest::Client::new()
        .request(method.clone(), app.url(path))
        .bearer_auth(token)
        .timeout(Duration::from_secs(20));
    if method != reqwest::Method::GET {
        req = req.json(body);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let stream = (resp.headers().get("content-type"))
        .is_some_and(|v| v.to_str().unwrap_or("").starts_with("text/event-stream"));
    if stream {
        return (status, Value::Null);
    }
    let text = resp.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The ids of a listing's items, as `[key][i].id`.
fn ids(list: &Value, key: &str) -> Vec<String> {
    (list[key].as_array().unwrap().iter())
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect()
}

/// A job listing holds `job` (its own job on `server`, the other its run's) and nothing
/// that is not on `server`.
fn assert_only_on(list: &Value, server: &str, job: &str) {
    let jobs = list["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 2, "{list}");
    assert!(jobs.iter().all(|j| j["server_id"] == server), "{list}");
    assert!(jobs.iter().any(|j| j["id"] == job), "{list}");
}

/// How many jobs and runs exist, counted as the unscoped admin.
async fn totals(app: &TestApp) -> (usize, usize) {
    let (_, jobs) = app.get("/api/v1/jobs?limit=1000").await;
    let (_, runs) = app.get("/api/v1/runs?limit=1000").await;
    (ids(&jobs, "jobs").len(), ids(&runs, "runs").len())
}

/// An app with the three tokens whose own client is the unscoped admin.
async fn app_as_admin(db: &TestDb) -> TestApp {
    (TestApp::start_with_file(db, &tokens_file(), &[]).await).with_token(ADMIN)
}

/// The servers `stg` (env=staging) and `prd` (env=prod), both `role=web`, on `host`.
async fn two_servers(app: &TestApp, host: &TestHost) -> (String, String) {
    let mut made = Vec::new();
    for (name, env) in [("stg", "staging"), ("prd", "prod")] {
        let (status, body) = app
            .post(
                "/api/v1/servers",
                &json!({"name": name, "hostname": host.host, "port": host.port,
                        "user": host.user, "auth_type": "key",
                        "private_key": host.keys.ed25519_openssh,
                        "labels": {"env": env, "role": "web"}}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        made.push(body["id"].as_str().unwrap().to_string());
    }
    (made[0].clone(), made[1].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scoped_token_sees_and_reaches_only_its_servers() {
    let db = TestDb::create(Db::Sqlite).expect("sqlite");
    let app = app_as_admin(&db).await;
    let host = TestHost::start().await;
    let (stg, prd) = two_servers(&app, &host).await;
    // As the unscoped admin: a job and a run on each side, and two templates.
    let mut job = Vec::new();
    for server in [&stg, &prd] {
        let body = json!({"command": "echo hello", "server_id": server});
        let (status, j) = app.post("/api/v1/jobs", &body).await;
        assert_eq!(status, 201, "{j}");
        let id = j["id"].as_str().unwrap().to_string();
        wait_done(&app, &id, Duration::from_secs(60)).await;
        job.push(id);
    }
    let (stg_job, prd_job) = (&job[0], &job[1]);
    let mut run = Vec::new();
    for selector in ["env=staging", "env=prod"] {
        let body = json!({"command": "echo run", "targets": {"selector": selector}});
        let (status, r) = app.post("/api/v1/runs", &body).await;
        assert_eq!(status, 201, "{r}");
        let id = r["id"].as_str().unwrap().to_string();
        wait_run(&app, &id).await;
        run.push(id);
    }
    let (stg_run, prd_run) = (&run[0], &run[1]);
    for (name, targets) in [
        ("all-web", json!({"selector": "role=web"})),
        ("staging-only", json!({"servers": ["stg"]})),
    ] {
        let body = json!({"name": name, "command": "echo launched", "targets": targets});
        let (status, t) = app.post("/api/v1/templates", &body).await;
        assert_eq!(status, 201, "{t}");
    }

    // Listings: only what is on staging.
    let (status, list) = call(&app, SCOPED, "GET", "/api/v1/servers", &Value::Null).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(ids(&list, "servers"), vec![stg.clone()], "{list}");
    let (_, list) = call(&app, SCOPED, "GET", "/api/v1/jobs", &Value::Null).await;
    assert_only_on(&list, &stg, stg_job);
    let path = format!("/api/v1/jobs?server_id={prd}");
    let (_, list) = call(&app, SCOPED, "GET", &path, &Value::Null).await;
    assert_eq!(ids(&list, "jobs"), Vec::<String>::new(), "{list}");
    let (_, list) = call(&app, SCOPED, "GET", "/api/v1/runs", &Value::Null).await;
    assert_eq!(ids(&list, "runs"), vec![stg_run.clone()], "{list}");

    // The dashboard (a session opened with the scoped token) sees the same.
    let login = reqwest::Client::new()
        .post(app.url("/session"))
        .json(&json!({ "token": SCOPED }))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 204);
    let cookie = login.headers()[reqwest::header::SET_COOKIE]
        .to_str()
        .unwrap();
    let cookie = cookie.split(';').next().unwrap().to_string();
    let dashboard = |path: String| {
        let cookie = cookie.clone();
        let url = app.url(&path);
        async move {
            let resp = reqwest::Client::new()
                .get(url)
                .header(reqwest::header::COOKIE, cookie)
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (status, list) = dashboard("/api/v1/jobs".into()).await;
    assert_eq!(status, 200, "{list}");
    assert_only_on(&list, &stg, stg_job);
    let (status, _) = dashboard(format!("/api/v1/jobs/{prd_job}")).await;
    assert_eq!(status, 404);
    let (status, _) = dashboard(format!("/api/v1/runs/{prd_run}")).await;
    assert_eq!(status, 404);
    let (_, me) = dashboard("/session".into()).await;
    assert_eq!(
        (&me["role"], &me["scope"]),
        (&json!("operator"), &json!("env=staging")),
        "{me}"
    );

    // Everything named on each side: the staging one answers, the production one is not
    // there. Changes that would succeed are made on the staging side only.
    let none = Value::Null;
    let empty = json!({});
    let table: Vec<(&str, &str, &Value, u16, u16)> = vec![
        ("GET", "/api/v1/jobs/{}", &none, 200, 404),
        ("GET", "/api/v1/jobs/{}/logs", &none, 200, 404),
        ("GET", "/api/v1/jobs/{}/stdout", &none, 200, 404),
        ("GET", "/api/v1/jobs/{}/stderr", &none, 200, 404),
        ("GET", "/api/v1/jobs/{}/output", &none, 200, 404),
        ("GET", "/api/v1/jobs/{}/stream", &none, 200, 404),
        ("POST", "/api/v1/jobs/{}/cancel", &empty, 409, 404),
        ("POST", "/api/v1/jobs/{}/duplicate", &empty, 201, 404),
    ];
    for (method, pattern, body, in_scope, outside) in &table {
        for (id, expected) in [(stg_job, in_scope), (prd_job, outside)] {
            let path = pattern.replace("{}", id);
            let (status, answer) = call(&app, SCOPED, method, &path, body).await;
            assert_eq!(status, *expected, "{method} {path}: {answer}");
            if status == 404 {
                assert_eq!(answer["code"], "not_found", "{answer}");
                assert!(!answer.to_string().contains("prd"), "{answer}");
            }
        }
    }
    let table: Vec<(&str, &str, Value, u16, u16)> = vec![
        ("GET", "/api/v1/runs/{}", Value::Null, 200, 404),
        ("GET", "/api/v1/runs/{}/summary", Value::Null, 200, 404),
        ("GET", "/api/v1/runs/{}/stream", Value::Null, 200, 404),
        ("POST", "/api/v1/runs/{}/cancel", json!({}), 409, 404),
        (
            "POST",
            "/api/v1/runs/{}/rerun",
            json!({"only": "all"}),
            201,
            404,
        ),
    ];
    for (method, pattern, body, in_scope, outside) in &table {
        for (id, expected) in [(stg_run, in_scope), (prd_run, outside)] {
            let path = pattern.replace("{}", id);
            let (status, answer) = call(&app, SCOPED, method, &path, body).await;
            assert_eq!(status, *expected, "{method} {path}: {answer}");
        }
    }
    let table: Vec<(&str, &str, u16, u16)> = vec![
        ("GET", "/api/v1/servers/{}", 200, 404),
        ("POST", "/api/v1/servers/{}/test", 200, 404),
    ];
    for (method, pattern, in_scope, outside) in &table {
        for (id, expected) in [(&stg, in_scope), (&prd, outside)] {
            let path = pattern.replace("{}", id);
            let (status, answer) = call(&app, SCOPED, method, &path, &json!({})).await;
            assert_eq!(status, *expected, "{method} {path}: {answer}");
        }
    }

    // Work that reaches production is refused whole, naming it, and nothing is created.
    let before = totals(&app).await;
    let duplicate = format!("/api/v1/jobs/{stg_job}/duplicate");
    let refused = [
        ("/api/v1/jobs", json!({"command": "true", "server_id": prd})),
        (duplicate.as_str(), json!({"server_id": prd})),
        (
            "/api/v1/runs",
            json!({"command": "true", "targets": {"selector": "role=web"}}),
        ),
        (
            "/api/v1/runs",
            json!({"command": "true", "targets": {"servers": ["stg", "prd"]}}),
        ),
        ("/api/v1/templates/all-web/launch", json!({})),
    ];
    for (path, body) in &refused {
        let (status, answer) = call(&app, SCOPED, "POST", path, body).await;
        assert_eq!(status, 403, "{path} {body}: {answer}");
        assert_eq!(answer["code"], "forbidden", "{answer}");
        let message = answer["error"].as_str().unwrap();
        assert!(
            message.contains("env=staging") && message.ends_with("prd"),
            "{message}"
        );
    }
    assert_eq!(
        totals(&app).await,
        before,
        "a refused request created something"
    );
    let (status, answer) = call(
        &app,
        SCOPED,
        "POST",
        "/api/v1/templates/staging-only/launch",
        &json!({}),
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    let body = json!({"command": "true", "targets": {"selector": "role=web,env=staging"}});
    let (status, answer) = call(&app, SCOPED, "POST", "/api/v1/runs", &body).await;
    assert_eq!(status, 201, "{answer}");

    // The refusals are in the audit log, naming the servers.
    let (_, audit) = app
        .get("/api/v1/audit?action=access.denied&limit=100")
        .await;
    let entries: Vec<&Value> = (audit["entries"].as_array().unwrap().iter())
        .filter(|e| e["actor"] == "ci-staging")
        .collect();
    assert_eq!(entries.len(), refused.len(), "{audit}");
    assert!(
        entries
            .iter()
            .all(|e| e["detail"]["servers"] == json!(["prd"])),
        "{audit}"
    );

    // A relabelled server leaves the scope with its jobs: the scope follows labels.
    let (status, _) = app
        .put(
            &format!("/api/v1/servers/{stg}"),
            &json!({"labels": {"env": "retired"}}),
        )
        .await;
    assert_eq!(status, 200);
    let path = format!("/api/v1/jobs/{stg_job}");
    let (status, _) = call(&app, SCOPED, "GET", &path, &Value::Null).await;
    assert_eq!(status, 404);
    let (_, list) = call(&app, SCOPED, "GET", "/api/v1/jobs", &Value::Null).await;
    assert_eq!(ids(&list, "jobs"), Vec::<String>::new(), "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scoped_admin_stays_in_its_scope_and_its_schedules_keep_it() {
    let db = TestDb::create(Db::Sqlite).expect("sqlite");
    let app = app_as_admin(&db).await;
    let host = TestHost::start().await;
    let (stg, prd) = two_servers(&app, &host).await;

    // What spans the fleet is refused whatever the role.
    for (method, path) in [
        ("GET", "/api/v1/audit"),
        ("GET", "/api/v1/webhooks"),
        ("POST", "/api/v1/webhooks"),
    ] {
        let (status, answer) = call(&app, SCOPED_ADMIN, method, path, &json!({})).await;
        assert_eq!(status, 403, "{method} {path}: {answer}");
        assert!(
            (answer["error"].as_str().unwrap()).starts_with("scoped tokens cannot "),
            "{answer}"
        );
    }
    // A server is neither registered nor relabelled outside the scope; production is not
    // there to change or delete.
    let outside = json!({"name": "new", "hostname": "127.0.0.1", "port": 22, "user": "u",
                         "auth_type": "key", "private_key": host.keys.ed25519_openssh,
                         "labels": {"env": "prod"}});
    let (status, answer) = call(&app, SCOPED_ADMIN, "POST", "/api/v1/servers", &outside).await;
    assert_eq!(status, 403, "{answer}");
    let relabel = json!({"labels": {"env": "prod"}});
    let path = format!("/api/v1/servers/{stg}");
    let (status, answer) = call(&app, SCOPED_ADMIN, "PUT", &path, &relabel).await;
    assert_eq!(status, 403, "{answer}");
    for method in ["PUT", "DELETE"] {
        let path = format!("/api/v1/servers/{prd}");
        let (status, answer) = call(&app, SCOPED_ADMIN, method, &path, &json!({})).await;
        assert_eq!(status, 404, "{method}: {answer}");
    }
    let (_, server) = app.get(&format!("/api/v1/servers/{prd}")).await;
    assert_eq!(server["labels"], json!({"env": "prod", "role": "web"}));

    // Two schedules saved by the scoped admin, every second: one on a template over both
    // servers (each fire refused, naming production), one over staging (launched).
    for (name, targets) in [
        ("all-web", json!({"selector": "role=web"})),
        ("staging-only", json!({"selector": "env=staging"})),
    ] {
        let body = json!({"name": name, "command": "echo fired", "targets": targets});
        let (status, t) = app.post("/api/v1/templates", &body).await;
        assert_eq!(status, 201, "{t}");
        let body =
            json!({"name": format!("every-{name}"), "template": name, "cron": "* * * * * *"});
        let (status, s) = call(&app, SCOPED_ADMIN, "POST", "/api/v1/schedules", &body).await;
        assert_eq!(status, 201, "{s}");
        assert_eq!(s["scope"], "env=staging", "{s}");
    }
    let start = Instant::now();
    let (refused, launched) = loop {
        let (_, a) = app.get("/api/v1/schedules/every-all-web").await;
        let (_, b) = app.get("/api/v1/schedules/every-staging-only").await;
        let fires = |s: &Value, status: &str| {
            (s["last_fires"].as_array().unwrap().iter())
                .filter(|f| f["status"] == status)
                .cloned()
                .collect::<Vec<_>>()
        };
        let (refused, launched) = (fires(&a, "failed"), fires(&b, "launched"));
        if !refused.is_empty() && !launched.is_empty() {
            assert!(fires(&a, "launched").is_empty(), "{a}");
            break (refused, launched);
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{a}\n{b}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for name in ["every-all-web", "every-staging-only"] {
        let path = format!("/api/v1/schedules/{name}/pause");
        let (status, _) = app.post(&path, &json!({})).await;
        assert_eq!(status, 200);
    }
    let detail = refused[0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("env=staging") && detail.ends_with("prd"),
        "{detail}"
    );
    let run = launched[0]["run_id"].as_str().unwrap();
    let run = wait_run(&app, run).await;
    let hosts: Vec<&str> = (run["hosts"].as_array().unwrap().iter())
        .map(|h| h["server_id"].as_str().unwrap())
        .collect();
    assert_eq!(hosts, vec![stg.as_str()], "{run}");
    // No run ever touched production.
    let (_, jobs) = app.get(&format!("/api/v1/jobs?server_id={prd}")).await;
    assert_eq!(ids(&jobs, "jobs"), Vec::<String>::new(), "{jobs}");
}
