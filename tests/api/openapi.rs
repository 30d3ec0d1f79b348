//! The OpenAPI document at `GET /api/v1/openapi.json` against the code that serves the API:
//! the document and the router come from one registration (`http::register`); every
//! documented operation answers on the live app; the token requirement it states is the one
//! enforced. That real responses match their schemas is schemathesis's to show
//! (`conformance`), with every check.

use std::collections::{BTreeSet, HashMap};

use job_executor::http::API_PREFIX;
use serde_json::{Value, json};

use crate::db_test;
use crate::helpers::{TestApp, TestDb};

const SOME_ID: &str = "0195f2a4-3b7c-7d8e-9f00-112233445566";

async fn fetch(app: &TestApp) -> Value {
    let resp = app
        .client
        .get(app.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let ctype = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ctype.starts_with("application/json"), "{ctype}");
    resp.json().await.unwrap()
}

const METHODS: [&str; 8] = [
    "get", "post", "put", "delete", "patch", "head", "options", "trace",
];

/// Every documented operation: (METHOD, path) → operation.
fn operations(doc: &Value) -> HashMap<(String, String), Value> {
    let mut ops = HashMap::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for m in METHODS {
            if let Some(op) = item.get(m) {
                ops.insert((m.to_uppercase(), path.clone()), op.clone());
            }
        }
    }
    ops
}

/// Follow a local `$ref` (`#/components/...`).
fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let pointer = r
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("non-local $ref {r}"));
            let target = doc
                .pointer(pointer)
                .unwrap_or_else(|| panic!("dangling $ref {r}"));
            resolve(doc, target)
        }
        None => v,
    }
}

/// Every `$ref` string in `v`.
fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("$ref", Value::String(r)) => out.push(r.clone()),
                    _ => refs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

/// A concrete path for a documented one.
fn concrete(path: &str) -> String {
    path.replace("{id}", SOME_ID)
}

db_test!(
    every_registered_route_is_documented_and_nothing_else,
    |db: TestDb| async move {
        let app = TestApp::start(&db, &[]).await;
        let doc = fetch(&app).await;
        assert!(
            doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
            "{}",
            doc["openapi"]
        );
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
        let ops = operations(&doc);

        // The router and the document come from one registration: what is documented is
        // what `job_executor::http::routes()` lists.
        let registered: BTreeSet<(String, String)> = job_executor::http::routes()
            .iter()
            .map(|(m, p)| (m.as_str().to_string(), p.clone()))
            .collect();
        let documented: BTreeSet<(String, String)> = ops.keys().cloned().collect();
        assert_eq!(registered, documented);
        assert!(registered.len() >= 20, "{registered:?}");

        // Each operation: a unique id, a summary, a response; its 4xx are the error body;
        // those behind the token say so (and list the 401).
        let mut ids = BTreeSet::new();
        for ((method, path), op) in &ops {
            let id = op["operationId"].as_str().unwrap_or_default();
            assert!(ids.insert(id.to_string()), "operationId {id:?} twice");
            assert!(op["summary"].is_string(), "{method} {path} has no summary");
            let responses = op["responses"].as_object().expect("responses");
            assert!(
                !responses.is_empty(),
                "{method} {path} documents no response"
            );
            assert!(
                responses.keys().any(|s| s.starts_with('2')),
                "{method} {path} documents no success"
            );
            for (status, resp) in responses {
                if status.starts_with('4') {
                    let resp = resolve(&doc, resp);
                    assert_eq!(
                        resp["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorBody",
                        "{method} {path} {status}"
                    );
                }
            }
            if path.starts_with(&format!("{API_PREFIX}/")) {
                assert!(
                    op.get("security").is_none(),
                    "{method} {path} overrides security"
                );
                assert!(
                    responses.contains_key("401"),
                    "{method} {path} lacks its 401"
                );
            } else {
                assert_eq!(op["security"], json!([{}]), "{method} {path} is open");
            }
        }
        assert_eq!(doc["security"], json!([{ "bearer": [] }]));
        let bearer = &doc["components"]["securitySchemes"]["bearer"];
        assert_eq!(bearer["type"], "http");
        assert_eq!(bearer["scheme"], "bearer");

        // The error schema is the one errors send; every $ref resolves.
        let error = &doc["components"]["schemas"]["ErrorBody"];
        assert_eq!(error["required"], json!(["error", "code"]));
        let mut all = Vec::new();
        refs(&doc, &mut all);
        assert!(all.iter().any(|r| r == "#/components/schemas/ErrorBody"));
        for r in &all {
            let pointer = r.strip_prefix('#').expect("local $ref");
            assert!(doc.pointer(pointer).is_some(), "dangling $ref {r}");
        }

        // What a success sends is always sent: every property of a success schema is
        // required (null when unknown), so a response's keys equal its schema's properties.
        let mut seen = BTreeSet::new();
        let mut todo: Vec<String> = Vec::new();
        for op in ops.values() {
            for (status, resp) in op["responses"].as_object().expect("responses") {
                if status.starts_with('2') {
                    refs(resolve(&doc, resp), &mut todo);
                }
            }
        }
        while let Some(r) = todo.pop() {
            if !seen.insert(r.clone()) {
                continue;
            }
            let schema = doc.pointer(r.trim_start_matches('#')).expect("resolves");
            if let Some(props) = schema["properties"].as_object() {
                let required: BTreeSet<&str> = schema["required"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                let optional: Vec<&String> = props
                    .keys()
                    .filter(|k| !required.contains(k.as_str()))
                    .collect();
                assert!(optional.is_empty(), "{r}: not required: {optional:?}");
            }
            refs(schema, &mut todo);
        }

        // Every documented operation answers on the live app (no 404 "no route", no 405).
        // Bodies are empty and ids unknown, so nothing changes.
        for (method, path) in &registered {
            let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            let resp = app
                .client
                .request(m, app.url(&concrete(path)))
                .header("content-type", "application/json")
                .body("{}")
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap();
            assert_ne!(status, 405, "{method} {path}: {text}");
            assert!(
                !text.contains("no route for"),
                "{method} {path} is documented but not served: {status} {text}"
            );
            assert!(
                doc["paths"][path.as_str()][method.to_lowercase()]["responses"][status.to_string()]
                    .is_object(),
                "{method} {path} answered {status}, which is not documented: {text}"
            );
        }
        app.stop().await;
    }
);

db_test!(
    the_documented_token_requirement_is_the_enforced_one,
    |db: TestDb| async move {
        let token = "docs-token-0123456789abcdef";
        let app = TestApp::start(&db, &[("JOBEXEC_API_TOKENS", &format!("docs:{token}"))])
            .await
            .with_token(token);
        let doc = fetch(&app).await;
        let anon = reqwest::Client::new();
        for ((method, path), op) in operations(&doc) {
            let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            let resp = anon
                .request(m, app.url(&concrete(&path)))
                .header("content-type", "application/json")
                .body("{}")
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let open = op["security"] == json!([{}]);
            if open {
                assert_ne!(status, 401, "{method} {path} is documented open");
            } else {
                assert_eq!(
                    status, 401,
                    "{method} {path} is documented behind the token"
                );
                let body: Value = resp.json().await.unwrap();
                assert_eq!(body["code"], "unauthorized", "{method} {path}: {body}");
            }
        }
        app.stop().await;
    }
);

db_test!(
    routing_and_query_errors_are_json_and_filters_take_commas,
    |db: TestDb| async move {
        use std::time::Duration;
        let (app, _host, server) = TestApp::with_host(&db, &[]).await;
        // A method a path does not take: 405 naming the methods it does (from the document).
        for (method, path, allow) in [
            (reqwest::Method::PATCH, "/api/v1/jobs", "GET, POST"),
            (reqwest::Method::GET, "/api/v1/jobs/script", "POST"),
            (reqwest::Method::DELETE, "/health", "GET"),
        ] {
            let resp = app
                .client
                .request(method.clone(), app.url(path))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 405, "{method} {path}");
            assert_eq!(resp.headers()["allow"], allow, "{method} {path}");
            let body: Value = resp.json().await.unwrap();
            assert_eq!(body["code"], "method_not_allowed", "{body}");
        }
        // A query string that does not parse is a JSON 400; an empty value is no value.
        let (status, body) = app.get("/api/v1/jobs?limit=1&limit=2").await;
        assert_eq!(
            (status, body["code"].as_str()),
            (400, Some("bad_request")),
            "{body}"
        );
        for field in ["server_id", "cursor", "limit"] {
            let (status, body) = app.get(&format!("/api/v1/jobs?{field}=")).await;
            assert_eq!(status, 422, "{field}: {body}");
            assert_eq!(body["field"], field, "{body}");
        }
        // A required body is required; an optional one may be absent or null.
        let (status, _) = app
            .raw(
                reqwest::Method::PUT,
                &format!("/api/v1/servers/{server}"),
                Vec::new(),
            )
            .await;
        assert_eq!(status, 400);
        let (status, body) = app
            .raw(
                reqwest::Method::POST,
                &format!("/api/v1/servers/{server}/test"),
                b"null".to_vec(),
            )
            .await;
        assert_eq!((status, body["ok"].as_bool()), (200, Some(true)), "{body}");

        // Filters take commas: one completed job, one running.
        let (_, done) = app
            .post(
                "/api/v1/jobs",
                &json!({"command": "true", "server_id": server}),
            )
            .await;
        let done_id = done["id"].as_str().unwrap().to_string();
        crate::jobs::wait_done(&app, &done_id, Duration::from_secs(30)).await;
        let (_, long) = app
            .post(
                "/api/v1/jobs",
                &json!({"command": "echo up; sleep 30", "server_id": server}),
            )
            .await;
        let long_id = long["id"].as_str().unwrap().to_string();
        crate::jobs::wait_running(&app, &long_id).await;
        let ids = |list: &Value| -> BTreeSet<String> {
            list["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|j| j["id"].as_str().unwrap().to_string())
                .collect()
        };
        let (status, both) = app.get("/api/v1/jobs?status=completed,running").await;
        assert_eq!(status, 200, "{both}");
        assert_eq!(
            ids(&both),
            BTreeSet::from([done_id.clone(), long_id.clone()])
        );
        let (_, one) = app.get("/api/v1/jobs?status=running").await;
        assert_eq!(ids(&one), BTreeSet::from([long_id.clone()]));
        let (status, _) = app.get("/api/v1/jobs?status=running,nope").await;
        assert_eq!(status, 422);
        app.post(&format!("/api/v1/jobs/{long_id}/cancel"), &json!({}))
            .await;
        app.stop().await;
    }
);
