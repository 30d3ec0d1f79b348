//! Templates over real HTTP and a real sshd: save, read, replace, delete; launch with every
//! parameter type and every refusal; values that look like shell arrive as data; secret
//! values reach the command but no response and no byte of the database.

use serde_json::{Value, json};

use crate::db_test;
use crate::helpers::{TestApp, TestDb, TestHost};
use crate::runs::{stdout, wait_run};

const SECRET: &str = "s3cret-0f-the-template-9d2c";

fn deploy() -> Value {
    json!({
        "name": "deploy",
        "description": "print what it was given",
        "script": "printf '%s|%s|%s|%s|%s\\n' \"$JOBEXEC_PARAM_VERSION\" \"$JOBEXEC_PARAM_COUNT\" \
                   \"$JOBEXEC_PARAM_DRY_RUN\" \"$JOBEXEC_PARAM_ENV\" \"$JOBEXEC_PARAM_NOTE\"; \
                   [ \"$JOBEXEC_PARAM_TOKEN\" = \"$EXPECT\" ] && echo token-ok",
        "env": {"EXPECT": SECRET},
        "targets": {"selector": "role=t"},
        "strategy": {"batch": 1},
        "parameters": [
            {"name": "version", "type": "string", "required": true, "pattern": "v[0-9]+(\\.[0-9]+)*"},
            {"name": "count", "type": "integer", "default": 2},
            {"name": "dry_run", "type": "boolean", "default": false},
            {"name": "env", "type": "choice", "choices": ["staging", "prod"], "required": true},
            {"name": "note", "type": "string", "description": "free text"},
            {"name": "token", "type": "string", "secret": true, "required": true},
        ],
    })
}

db_test!(
    a_launch_passes_every_type_as_data_and_refuses_what_does_not_fit,
    |db: TestDb| async move {
        let app = TestApp::start(&db, &[]).await;
        let host = TestHost::start().await;
        for name in ["t1", "t2"] {
            let (status, body) = app
                .post(
                    "/api/v1/servers",
                    &json!({"name": name, "hostname": host.host, "port": host.port,
                            "user": host.user, "auth_type": "key",
                            "private_key": host.keys.ed25519_openssh, "labels": {"role": "t"}}),
                )
                .await;
            assert_eq!(status, 201, "{body}");
        }
        // The template's own env holds the expected secret only so the command can compare;
        // a real one would not. Templates are what a launch checks against.
        let (status, tpl) = app.post("/api/v1/templates", &deploy()).await;
        assert_eq!(status, 201, "{tpl}");
        assert_eq!(tpl["parameters"][5]["secret"], true);
        assert!(tpl["parameters"][5]["default"].is_null());
        let evil = "x; touch /tmp/jobexec-injected; $(id) `id` '\"";
        let (status, run) = app
            .post(
                "/api/v1/templates/deploy/launch",
                &json!({"parameters": {"version": "v1.2.3", "env": "prod", "note": evil,
                                       "token": SECRET, "dry_run": true}}),
            )
            .await;
        assert_eq!(status, 201, "{run}");
        assert_eq!(run["template_id"], tpl["id"]);
        assert_eq!(run["parameters"]["version"], "v1.2.3");
        assert_eq!(run["parameters"]["count"], 2);
        assert!(run["parameters"].get("token").is_none(), "{run}");
        let run = wait_run(&app, run["id"].as_str().unwrap()).await;
        assert_eq!(run["status"], "completed", "{run}");
        for host in run["hosts"].as_array().unwrap() {
            let out = stdout(&app, host["job_id"].as_str().unwrap()).await;
            assert_eq!(out, format!("v1.2.3|2|true|prod|{evil}\ntoken-ok\n"));
            let (_, job) = app
                .get(&format!(
                    "/api/v1/jobs/{}",
                    host["job_id"].as_str().unwrap()
                ))
                .await;
            assert_eq!(job["run_id"], run["id"]);
            assert!(job["env"].get("JOBEXEC_PARAM_TOKEN").is_none(), "{job}");
            assert_eq!(job["env"]["JOBEXEC_PARAM_NOTE"], evil);
        }
        assert!(!std::path::Path::new("/tmp/jobexec-injected").exists());
        // The jobs it launched, by the template's name or id.
        for t in ["deploy", tpl["id"].as_str().unwrap()] {
            let (status, jobs) = app.get(&format!("/api/v1/jobs?template={t}")).await;
            assert_eq!(status, 200, "{jobs}");
            assert_eq!(jobs["jobs"].as_array().unwrap().len(), 2, "{jobs}");
        }
        let (status, err) = app.get("/api/v1/jobs?template=nope").await;
        assert_eq!(
            (status, err["field"].as_str()),
            (422, Some("template")),
            "{err}"
        );

        let ok = json!({"version": "v1", "env": "prod", "token": "t"});
        let with = |k: &str, v: Value| {
            let mut p = ok.clone();
            p[k] = v;
            json!({ "parameters": p })
        };
        let without = |k: &str| {
            let mut p = ok.clone();
            p.as_object_mut().unwrap().remove(k);
            json!({ "parameters": p })
        };
        let cases = [
            (without("version"), "parameters.version"),
            (without("token"), "parameters.token"),
            (with("version", json!("1.0")), "parameters.version"),
            (with("count", json!("two")), "parameters.count"),
            (with("count", json!(1.5)), "parameters.count"),
            (with("dry_run", json!("yes")), "parameters.dry_run"),
            (with("env", json!("dev")), "parameters.env"),
            (with("token", json!(5)), "parameters.token"),
            (with("other", json!("x")), "parameters.other"),
        ];
        for (body, field) in cases {
            let (status, err) = app.post("/api/v1/templates/deploy/launch", &body).await;
            assert_eq!(
                (status, err["field"].as_str()),
                (422, Some(field)),
                "{body}: {err}"
            );
        }
        let (_, runs) = app.get("/api/v1/runs").await;
        assert_eq!(
            runs["runs"].as_array().unwrap().len(),
            1,
            "a refused launch made a run"
        );
        let (status, _) = app.post("/api/v1/templates/nope/launch", &json!({})).await;
        assert_eq!(status, 404);
    }
);

db_test!(
    secret_values_are_in_no_response_and_no_database_byte,
    |db: TestDb| async move {
        let app = TestApp::start(&db, &[]).await;
        let host = TestHost::start().await;
        let (status, body) = app
            .post(
                "/api/v1/servers",
                &json!({"name": "s1", "hostname": host.host, "port": host.port, "user": host.user,
                        "auth_type": "key", "private_key": host.keys.ed25519_openssh}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let secret = "hunter2-secret-param-71b4e0";
        // The command compares digests: the secret itself is nowhere but in the launch.
        let digest = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
        let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        let command = format!(
            "[ \"$(printf '%s' \"$JOBEXEC_PARAM_PASSWORD\" | sha256sum | cut -c1-64)\" = {hex} ] && echo same"
        );
        let (status, tpl) = app
            .post(
                "/api/v1/templates",
                &json!({"name": "uses-secret", "targets": {"servers": ["s1"]},
                        "command": command,
                        "parameters": [{"name": "password", "type": "string", "secret": true, "required": true}]}),
            )
            .await;
        assert_eq!(status, 201, "{tpl}");
        let (status, run) = app
            .post(
                "/api/v1/templates/uses-secret/launch",
                &json!({"parameters": {"password": secret}}),
            )
            .await;
        assert_eq!(status, 201, "{run}");
        let id = run["id"].as_str().unwrap().to_string();
        let run = wait_run(&app, &id).await;
        assert_eq!(run["status"], "completed", "{run}");
        let job = &run["hosts"][0]["job_id"];
        assert_eq!(stdout(&app, job.as_str().unwrap()).await, "same\n");
        // A rerun keeps the secret (sealed again for the new run).
        let (status, rerun) = app
            .post(&format!("/api/v1/runs/{id}/rerun"), &json!({"only": "all"}))
            .await;
        assert_eq!(status, 201, "{rerun}");
        let rerun = wait_run(&app, rerun["id"].as_str().unwrap()).await;
        assert_eq!(
            stdout(&app, rerun["hosts"][0]["job_id"].as_str().unwrap()).await,
            "same\n"
        );
        let job = job.as_str().unwrap();
        for path in [
            format!("/api/v1/runs/{id}"),
            format!("/api/v1/jobs/{job}"),
            format!("/api/v1/jobs/{job}/logs"),
            "/api/v1/runs".to_string(),
            "/api/v1/jobs".to_string(),
            "/api/v1/templates".to_string(),
            "/api/v1/audit".to_string(),
        ] {
            let resp = app.client.get(app.url(&path)).send().await.unwrap();
            let text = resp.text().await.unwrap();
            assert!(!text.contains(secret), "{path}: {text}");
        }
        // Nor any byte of the database.
        if db.kind() == crate::helpers::Db::Sqlite {
            app.stop().await;
            let mut all = Vec::new();
            for suffix in ["", "-wal"] {
                if let Ok(bytes) = std::fs::read(format!("{}{suffix}", db.url)) {
                    all.extend(bytes);
                }
            }
            let found = all.windows(secret.len()).any(|w| w == secret.as_bytes());
            assert!(!found, "the secret is in the database file");
        }
    }
);

db_test!(
    templates_are_saved_replaced_and_deleted,
    |db: TestDb| async move {
        let app = TestApp::start(&db, &[]).await;
        let (status, tpl) = app
            .post(
                "/api/v1/templates",
                &json!({"name": "t", "command": "uptime", "targets": {"selector": "role=web"}}),
            )
            .await;
        assert_eq!(status, 201, "{tpl}");
        let id = tpl["id"].as_str().unwrap();
        let (status, _) = app
            .post(
                "/api/v1/templates",
                &json!({"name": "t", "command": "x", "targets": {"selector": "a"}}),
            )
            .await;
        assert_eq!(status, 409);
        let (_, by_name) = app.get("/api/v1/templates/t").await;
        let (_, by_id) = app.get(&format!("/api/v1/templates/{id}")).await;
        assert_eq!(by_name, by_id);
        let (status, updated) = app
            .put(
                "/api/v1/templates/t",
                &json!({"name": "t2", "script": "echo hi", "targets": {"servers": ["a"]},
                    "strategy": {"batch": "50%"}}),
            )
            .await;
        assert_eq!(status, 200, "{updated}");
        assert_eq!(
            (updated["id"].as_str(), updated["kind"].as_str()),
            (Some(id), Some("script"))
        );
        assert_eq!(updated["strategy"]["batch"], "50%");
        assert!(updated["targets"]["selector"].is_null());
        let (_, list) = app.get("/api/v1/templates").await;
        assert_eq!(list["templates"].as_array().unwrap().len(), 1);
        for (body, field) in [
            (
                json!({"command": "x", "targets": {"selector": "a"}}),
                "name",
            ),
            (
                json!({"name": "a b", "command": "x", "targets": {"selector": "a"}}),
                "name",
            ),
            (
                json!({"name": "n", "targets": {"selector": "a"}}),
                "command",
            ),
            (json!({"name": "n", "command": "x"}), "targets"),
            (
                json!({"name": "n", "command": "x", "targets": {"selector": "a"},
                "parameters": [{"name": "s", "type": "string", "secret": true, "default": "x"}]}),
                "parameters",
            ),
            (
                json!({"name": "n", "command": "x", "targets": {"selector": "a"},
                "parameters": [{"name": "c", "type": "choice"}]}),
                "parameters",
            ),
        ] {
            let (status, err) = app.post("/api/v1/templates", &body).await;
            assert_eq!(
                (status, err["field"].as_str()),
                (422, Some(field)),
                "{body}: {err}"
            );
        }
        let (status, _) = app.delete("/api/v1/templates/t2").await;
        assert_eq!(status, 200);
        let (status, _) = app.get(&format!("/api/v1/templates/{id}")).await;
        assert_eq!(status, 404);
    }
);
