//! The OpenAPI document at `GET /api/v1/openapi.json` against the code that serves the API:
//! the document and the router come from one registration (`http::register`);
//! every documented operation answers on the live app; the token requirement it states is
//! the one enforced; and real responses — successes, errors, stream events — have exactly
//! the keys, types and enum values of their documented schemas.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use job_executor::http::API_PREFIX;
use serde_json::{Value, json};

use crate::db_test;
use crate::helpers::{TestApp, TestDb};
use crate::jobs::wait_done;
use crate::stream::Sse;

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

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Whether `value` has exactly the shape `schema` documents: its type (and enum values),
/// for an object every required key and no undocumented key, recursively.
fn conform(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    let schema = resolve(doc, schema);
    if let Some(alts) = schema.get("oneOf").and_then(Value::as_array) {
        let mut errors = Vec::new();
        for alt in alts {
            match conform(doc, alt, value, at) {
                Ok(()) => return Ok(()),
                Err(e) => errors.push(e),
            }
        }
        return Err(format!("{at}: matches no oneOf alternative: {errors:?}"));
    }
    if let Some(types) = schema.get("type") {
        let allowed: Vec<&str> = match types {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
            other => return Err(format!("{at}: odd type {other}")),
        };
        let k = kind(value);
        let ok = allowed.contains(&k) || (k == "integer" && allowed.contains(&"number"));
        if !ok {
            return Err(format!("{at}: {value} is {k}, documented {allowed:?}"));
        }
    }
    if let Some(values) = schema.get("enum").and_then(Value::as_array)
        && !value.is_null()
        && !values.contains(value)
    {
        return Err(format!("{at}: {value} is not one of {values:?}"));
    }
    match value {
        Value::Object(map) => {
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for key in map.keys() {
                    if !props.contains_key(key) {
                        return Err(format!("{at}: key {key:?} is not documented"));
                    }
                }
                for req in schema["required"].as_array().into_iter().flatten() {
                    let req = req.as_str().unwrap_or_default();
                    if !map.contains_key(req) {
                        return Err(format!("{at}: documented as required, {req:?} is absent"));
                    }
                }
                for (key, x) in map {
                    conform(doc, &props[key], x, &format!("{at}.{key}"))?;
                }
            } else if let Some(extra) = schema.get("additionalProperties").filter(|s| s.is_object())
            {
                for (key, x) in map {
                    conform(doc, extra, x, &format!("{at}.{key}"))?;
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, x) in items.iter().enumerate() {
                    conform(doc, item_schema, x, &format!("{at}[{i}]"))?;
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// The documented response of `method path` for `status` (panics if it is not documented).
fn documented_response<'a>(doc: &'a Value, method: &str, path: &str, status: u16) -> &'a Value {
    let op = &doc["paths"][path][method.to_lowercase()];
    assert!(op.is_object(), "{method} {path} is not documented");
    let resp = &op["responses"][status.to_string()];
    assert!(
        resp.is_object(),
        "{method} {path} answered {status}, which its documentation does not list"
    );
    resolve(doc, resp)
}

/// Assert that a JSON response of `method path` matches its documentation.
fn check(doc: &Value, method: &str, path: &str, status: u16, body: &Value) {
    let resp = documented_response(doc, method, path, status);
    let schema = &resp["content"]["application/json"]["schema"];
    assert!(
        schema.is_object(),
        "{method} {path} {status} documents no JSON body: {resp}"
    );
    if let Err(e) = conform(doc, schema, body, "body") {
        panic!("{method} {path} {status} does not match its schema: {e}\nbody: {body:#}");
    }
}

/// Assert that a named component schema describes `value` (stream events).
fn check_schema(doc: &Value, name: &str, value: &Value) {
    let schema = json!({ "$ref": format!("#/components/schemas/{name}") });
    if let Err(e) = conform(doc, &schema, value, name) {
        panic!("{name} does not match: {e}\nvalue: {value:#}");
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
                check(&doc, &method, &path, 401, &body);
            }
        }
        app.stop().await;
    }
);

db_test!(
    real_responses_match_their_documented_schemas,
    |db: TestDb| async move {
        let (app, _host, server) = TestApp::with_host(&db, &[]).await;
        let doc = fetch(&app).await;
        let bound = Duration::from_secs(30);

        let (s, b) = app.get("/health").await;
        check(&doc, "GET", "/health", s, &b);

        // Servers.
        let (s, b) = app.get(&format!("/api/v1/servers/{server}")).await;
        check(&doc, "GET", "/api/v1/servers/{id}", s, &b);
        let (s, b) = app.get("/api/v1/servers").await;
        check(&doc, "GET", "/api/v1/servers", s, &b);
        let (s, b) = app
            .put(
                &format!("/api/v1/servers/{server}"),
                &json!({ "max_concurrent_jobs": 4 }),
            )
            .await;
        check(&doc, "PUT", "/api/v1/servers/{id}", s, &b);
        let (s, b) = app
            .post(&format!("/api/v1/servers/{server}/test"), &json!({}))
            .await;
        assert_eq!(s, 200, "{b}");
        check(&doc, "POST", "/api/v1/servers/{id}/test", s, &b);
        let spare = json!({
            "name": "spare", "hostname": "127.0.0.1", "port": 1, "user": "nobody",
            "password": "not-a-real-password",
        });
        let (s, b) = app.post("/api/v1/servers", &spare).await;
        check(&doc, "POST", "/api/v1/servers", s, &b);
        let spare_id = b["id"].as_str().unwrap().to_string();
        let (s, b) = app.post("/api/v1/servers", &spare).await;
        assert_eq!(s, 409, "{b}");
        check(&doc, "POST", "/api/v1/servers", s, &b);
        let (s, b) = app
            .post(&format!("/api/v1/servers/{spare_id}/test"), &json!({}))
            .await;
        assert_eq!((s, &b["ok"]), (200, &json!(false)), "{b}");
        check(&doc, "POST", "/api/v1/servers/{id}/test", s, &b);
        let (s, b) = app.delete(&format!("/api/v1/servers/{spare_id}")).await;
        check(&doc, "DELETE", "/api/v1/servers/{id}", s, &b);

        // A command job: submit, follow, read.
        let job = json!({
            "command": "printf 'out\\n'; printf 'err\\n' >&2; exit 3",
            "server_id": server, "env": { "A": "1" }, "idempotency_key": "docs-1",
        });
        let (s, b) = app.post("/api/v1/jobs", &job).await;
        assert_eq!(s, 201, "{b}");
        check(&doc, "POST", "/api/v1/jobs", s, &b);
        let id = b["id"].as_str().unwrap().to_string();
        let (s, b) = app.post("/api/v1/jobs", &job).await;
        assert_eq!(s, 200, "the same idempotency key: {b}");
        check(&doc, "POST", "/api/v1/jobs", s, &b);
        let done = wait_done(&app, &id, bound).await;
        assert_eq!(done["status"], "failed", "{done}");
        let (s, b) = app.get(&format!("/api/v1/jobs/{id}")).await;
        check(&doc, "GET", "/api/v1/jobs/{id}", s, &b);
        let (s, b) = app.get(&format!("/api/v1/jobs/{id}/logs")).await;
        assert!(b.is_object(), "{b}");
        check(&doc, "GET", "/api/v1/jobs/{id}/logs", s, &b);
        let (s, b) = app
            .get(&format!("/api/v1/jobs/{id}/logs?format=chunks"))
            .await;
        assert!(b.as_array().is_some_and(|a| !a.is_empty()), "{b}");
        check(&doc, "GET", "/api/v1/jobs/{id}/logs", s, &b);
        let (s, b) = app.get(&format!("/api/v1/jobs/{id}/logs?format=xml")).await;
        assert_eq!(s, 422, "{b}");
        check(&doc, "GET", "/api/v1/jobs/{id}/logs", s, &b);
        for (which, text) in [("stdout", "out\n"), ("stderr", "err\n")] {
            let path = format!("/api/v1/jobs/{{id}}/{which}");
            let resp = app
                .client
                .get(app.url(&format!("/api/v1/jobs/{id}/{which}")))
                .send()
                .await
                .unwrap();
            let ctype = resp.headers()["content-type"].to_str().unwrap().to_string();
            let documented = documented_response(&doc, "GET", &path, 200);
            assert!(
                documented["content"]
                    .as_object()
                    .unwrap()
                    .keys()
                    .any(|k| ctype.starts_with(k.as_str())),
                "{path}: served as {ctype}, documented {documented}"
            );
            assert_eq!(resp.text().await.unwrap(), text);
        }

        // The stream of the finished job: status, output…, complete.
        let documented = documented_response(&doc, "GET", "/api/v1/jobs/{id}/stream", 200);
        assert!(
            documented["content"]["text/event-stream"].is_object(),
            "{documented}"
        );
        let events = Sse::open(&app, &id, None).await.collect().await;
        assert!(events.len() >= 4, "{events:?}");
        for e in &events {
            match e.kind.as_str() {
                "status" | "complete" => check_schema(&doc, "JobView", &e.data),
                "output" => check_schema(&doc, "OutputEvent", &e.data),
                other => panic!("undocumented event type {other:?}"),
            }
        }

        // The list, a duplicate, a script job canceled while it runs.
        let (s, b) = app.get("/api/v1/jobs?limit=10").await;
        check(&doc, "GET", "/api/v1/jobs", s, &b);
        let (s, b) = app
            .post(
                &format!("/api/v1/jobs/{id}/duplicate"),
                &json!({ "timeout": 60 }),
            )
            .await;
        assert_eq!(s, 201, "{b}");
        check(&doc, "POST", "/api/v1/jobs/{id}/duplicate", s, &b);
        let (s, b) = app
            .post(
                "/api/v1/jobs/script",
                &json!({ "script": "sleep 30", "server_id": server }),
            )
            .await;
        assert_eq!(s, 201, "{b}");
        check(&doc, "POST", "/api/v1/jobs/script", s, &b);
        let sleeper = b["id"].as_str().unwrap().to_string();
        let (s, b) = app
            .post(&format!("/api/v1/jobs/{sleeper}/cancel"), &json!({}))
            .await;
        assert_eq!(s, 200, "{b}");
        check(&doc, "POST", "/api/v1/jobs/{id}/cancel", s, &b);
        let (s, b) = app
            .post(&format!("/api/v1/jobs/{id}/cancel"), &json!({}))
            .await;
        assert_eq!(s, 409, "{b}");
        check(&doc, "POST", "/api/v1/jobs/{id}/cancel", s, &b);

        // Errors: 400, 404, 422 (with its field).
        let (s, b) = app
            .raw(reqwest::Method::POST, "/api/v1/jobs", b"{not json".to_vec())
            .await;
        assert_eq!(s, 400, "{b}");
        check(&doc, "POST", "/api/v1/jobs", s, &b);
        let (s, b) = app
            .post(
                "/api/v1/jobs",
                &json!({ "command": "", "server_id": server }),
            )
            .await;
        assert_eq!((s, &b["field"]), (422, &json!("command")), "{b}");
        check(&doc, "POST", "/api/v1/jobs", s, &b);
        let (s, b) = app.get(&format!("/api/v1/jobs/{SOME_ID}")).await;
        assert_eq!(s, 404, "{b}");
        check(&doc, "GET", "/api/v1/jobs/{id}", s, &b);

        // The audit log of all that.
        let (s, b) = app.get("/api/v1/audit?limit=50").await;
        assert!(b["entries"].as_array().is_some_and(|a| a.len() >= 5), "{b}");
        check(&doc, "GET", "/api/v1/audit", s, &b);

        wait_done(&app, &sleeper, bound).await;
        app.stop().await;
    }
);
