//! Roles on tokens, over real HTTP: every route of the OpenAPI document × each role, each
//! answered as the rule table below says (a route the table does not name fails the test),
//! refusals as 403 naming the role and the action and recorded in the audit log, `whoami`
//! and `jobctl whoami`, and a role changed by a reload taking effect without a restart.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::helpers::jobctl::jobctl_at;
use crate::helpers::{Db, TestApp, TestDb};

const ADMIN: &str = "admin-token-0123456789";
const OPERATOR: &str = "operator-token-0123456789";
const SCOPED: &str = "scoped-token-0123456789";
const VIEWER: &str = "viewer-token-0123456789";

/// The least role each operation needs. Every operation the document lists must be here.
fn rules() -> BTreeMap<&'static str, &'static str> {
    let viewer = [
        "openapi",
        "whoami",
        "list_jobs",
        "get_job",
        "get_job_logs",
        "get_job_stdout",
        "get_job_stderr",
        "get_job_output_range",
        "stream_job",
        "list_servers",
        "get_server",
        "list_runs",
        "get_run",
        "run_summary",
        "stream_run",
        "list_templates",
        "get_template",
        "list_schedules",
        "preview_schedule",
        "get_schedule",
    ];
    let operator = [
        "submit_command_job",
        "submit_script_job",
        "cancel_job",
        "duplicate_job",
        "test_server",
        "start_run",
        "cancel_run",
        "rerun_run",
        "launch_template",
    ];
    let admin = [
        "list_audit",
        "create_server",
        "update_server",
        "delete_server",
        "create_template",
        "update_template",
        "delete_template",
        "create_schedule",
        "update_schedule",
        "delete_schedule",
        "pause_schedule",
        "resume_schedule",
        "list_webhooks",
        "create_webhook",
        "get_webhook",
        "update_webhook",
        "delete_webhook",
        "list_deliveries",
        "redeliver",
    ];
    let mut rules = BTreeMap::new();
    for (ops, role) in [
        (&viewer[..], "viewer"),
        (&operator, "operator"),
        (&admin, "admin"),
    ] {
        for op in ops {
            assert!(rules.insert(*op, role).is_none(), "{op} has two rules");
        }
    }
    rules
}

fn rank(role: &str) -> u8 {
    match role {
        "viewer" => 0,
        "operator" => 1,
        "admin" => 2,
        other => panic!("no role {other}"),
    }
}

/// The settings file: an admin token as a bare string would be, and tables for the rest.
fn tokens_file(viewer_role: &str) -> String {
    format!(
        "[[auth.tokens]]\nname = \"root\"\ntoken = \"{ADMIN}\"\nrole = \"admin\"\n\n\
         [[auth.tokens]]\nname = \"ci\"\ntoken = \"{OPERATOR}\"\nrole = \"operator\"\n\n\
         [[auth.tokens]]\nname = \"ci-staging\"\ntoken_sha256 = \"{}\"\nrole = \"operator\"\n\
         scope = \"env=staging\"\n\n\
         [[auth.tokens]]\nname = \"dash\"\ntoken = \"{VIEWER}\"\nrole = \"{viewer_role}\"\n",
        job_executor::http::auth::token_digest(SCOPED)
    )
}

/// `method path` with `token` (and `{}` as the body of a change): the status and body.
async fn call(app: &TestApp, method: &str, path: &str, token: &str) -> (u16, Value) {
    crate::scopes::call(app, token, method, path, &json!({})).await
}

/// An instance of a route pattern: ids that name nothing, names that do not exist.
fn instance(pattern: &str) -> String {
    let none = "0195f2a4-3b7c-7d8e-9f00-112233445566";
    pattern
        .replace("{id}", none)
        .replace("{delivery_id}", none)
        .replace("{name_or_id}", "nothing-by-this-name")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_each_role_as_the_rule_table_says() {
    let db = TestDb::create(Db::Sqlite).expect("sqlite");
    let app = TestApp::start_with_file(&db, &tokens_file("viewer"), &[]).await;
    let (status, doc) = call(&app, "GET", "/api/v1/openapi.json", VIEWER).await;
    assert_eq!(status, 200, "{doc}");
    let rules = rules();
    let mut seen = Vec::new();
    let roles = [
        ("viewer", VIEWER),
        ("operator", OPERATOR),
        ("operator", SCOPED),
        ("admin", ADMIN),
    ];
    for (path, item) in doc["paths"].as_object().unwrap() {
        if !path.starts_with("/api/v1/") {
            continue;
        }
        for (method, op) in item.as_object().unwrap() {
            let id = op["operationId"].as_str().unwrap();
            let needs = *rules
                .get(id)
                .unwrap_or_else(|| panic!("{id} ({method} {path}) has no rule in this test"));
            seen.push(id);
            assert!(
                op["responses"]["403"].is_object(),
                "{id}: the document does not list its 403"
            );
            for (role, token) in roles {
                let (status, body) =
                    call(&app, &method.to_uppercase(), &instance(path), token).await;
                assert_ne!(status, 401, "{id} as {role}: {body}");
                if rank(role) < rank(needs) {
                    assert_eq!(status, 403, "{id} as {role}: {body}");
                    assert_eq!(body["code"], "forbidden", "{id} as {role}: {body}");
                    let message = body["error"].as_str().unwrap();
                    assert!(
                        message.starts_with(&format!("{role} tokens cannot ")),
                        "{id} as {role}: {message}"
                    );
                } else {
                    assert_ne!(status, 403, "{id} as {role}: {body}");
                }
            }
        }
    }
    let missing: Vec<_> = rules.keys().filter(|op| !seen.contains(op)).collect();
    assert!(
        missing.is_empty(),
        "rules for routes that do not exist: {missing:?}"
    );

    // The refusals are in the audit log, with who, what and the role.
    let (status, audit) = call(
        &app,
        "GET",
        "/api/v1/audit?action=access.denied&limit=200",
        ADMIN,
    )
    .await;
    assert_eq!(status, 200, "{audit}");
    let entries = audit["entries"].as_array().unwrap();
    let named = |name: &str, action: &str| {
        entries
            .iter()
            .any(|e| e["actor"] == name && e["detail"]["action"] == action)
    };
    assert!(named("dash", "delete servers"), "{audit}");
    assert!(named("ci", "read the audit log"), "{audit}");
    assert!(named("ci-staging", "create webhooks"), "{audit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whoami_says_name_role_and_scope_and_a_reload_changes_a_role_at_once() {
    let db = TestDb::create(Db::Sqlite).expect("sqlite");
    let app = TestApp::start_with_file(&db, &tokens_file("viewer"), &[]).await;
    let (status, me) = call(&app, "GET", "/api/v1/whoami", SCOPED).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(
        me,
        json!({"name": "ci-staging", "role": "operator", "scope": "env=staging",
               "tokens_required": true})
    );
    let mut cmd = crate::helpers::jobctl::command(&app.base, &["whoami"]);
    cmd.env("JOBEXEC_TOKEN", VIEWER);
    let out = cmd.output().await.unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        said.contains("dash") && said.contains("viewer") && said.contains("every server"),
        "{said}"
    );
    let out = jobctl_at(&app.base, &["whoami"], None).await;
    assert_ne!(out.code, 0, "no token: {out:?}");

    // A reload with the viewer made an operator: its next request may submit.
    let (status, _) = call(&app, "POST", "/api/v1/jobs", VIEWER).await;
    assert_eq!(status, 403);
    let settings =
        crate::helpers::test_settings_with_file(&db.url, Some(&tokens_file("operator")), &[]);
    app.reload(&settings).await;
    let (status, body) = call(&app, "POST", "/api/v1/jobs", VIEWER).await;
    assert_eq!(
        status, 422,
        "allowed now, and refused for its empty body: {body}"
    );
    let (_, me) = call(&app, "GET", "/api/v1/whoami", VIEWER).await;
    assert_eq!(me["role"], "operator");
}
