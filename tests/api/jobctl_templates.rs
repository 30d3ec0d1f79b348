//! `jobctl templates`, the real binary against a real service and a test sshd: a template
//! with a string (pattern), integer, boolean, choice and secret parameter over two labelled
//! servers; `launch` types each `-p` value, follows the run like `jobctl run -l` (prefixed
//! lines, the hosts' table, the exit status), shows the service's refusal naming the
//! parameter, reads a secret from a file or stdin and prints it nowhere; `list`, `get`,
//! `create`, `delete` and `launch --detach`.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::jobctl::{Out, jobctl_at};
use crate::helpers::{Db, TestApp, TestDb, TestHost};

/// Run `jobctl args` against `app`, with `stdin` as its stdin (none: /dev/null).
async fn jobctl_with(app: &TestApp, args: &[&str], stdin: Option<&str>) -> Out {
    jobctl_at(&app.base, args, stdin).await
}

async fn jobctl(app: &TestApp, args: &[&str]) -> Out {
    jobctl_with(app, args, None).await
}

/// Poll run `id` until it ended.
async fn wait_run(app: &TestApp, id: &str) -> Value {
    let start = Instant::now();
    loop {
        let (status, run) = app.get(&format!("/api/v1/runs/{id}")).await;
        assert_eq!(status, 200, "{run}");
        if !matches!(run["status"].as_str(), Some("queued" | "running")) {
            return run;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{run}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const SECRET: &str = "tok-5e6f-from-a-file-a81c";

/// The template: it prints what it was given and compares the secret's digest (the secret
/// itself is in no command text, template or request but the launch).
fn deploy() -> Value {
    let digest = ring::digest::digest(&ring::digest::SHA256, SECRET.as_bytes());
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    let command = format!(
        "printf 'version=%s count=%s dry_run=%s env=%s\\n' \"$JOBEXEC_PARAM_VERSION\" \
         \"$JOBEXEC_PARAM_COUNT\" \"$JOBEXEC_PARAM_DRY_RUN\" \"$JOBEXEC_PARAM_ENV\"; \
         if [ \"$(printf '%s' \"$JOBEXEC_PARAM_TOKEN\" | sha256sum | cut -c1-64)\" = {hex} ]; \
         then echo token-ok; else echo token-differs; fi"
    );
    json!({
        "name": "deploy",
        "description": "print what it was given",
        "command": command,
        "targets": {"selector": "role=t"},
        "parameters": [
            {"name": "version", "type": "string", "required": true, "pattern": "v[0-9]+(\\.[0-9]+)*",
             "description": "the release"},
            {"name": "count", "type": "integer", "default": 2},
            {"name": "dry_run", "type": "boolean", "default": false},
            {"name": "env", "type": "choice", "choices": ["staging", "prod"], "required": true},
            {"name": "token", "type": "string", "secret": true, "required": true,
             "pattern": "[a-z0-9-]+"},
        ],
    })
}

/// A service, a test host, servers `t-1` and `t-2` (role=t) on it and the `deploy` template.
async fn setup() -> (TestDb, TestApp, TestHost, Value) {
    let db = TestDb::create(Db::Sqlite).expect("sqlite");
    let app = TestApp::start(&db, &[]).await;
    let host = TestHost::start().await;
    for name in ["t-1", "t-2"] {
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
    let (status, tpl) = app.post("/api/v1/templates", &deploy()).await;
    assert_eq!(status, 201, "{tpl}");
    (db, app, host, tpl)
}

/// A file holding `text` (and the directory that holds it, removed when dropped).
fn file_with(text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("value");
    std::fs::write(&path, text).unwrap();
    (dir, path.to_str().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_types_every_value_follows_the_run_and_hides_the_secret() {
    let (_db, app, _host, tpl) = setup().await;
    let (_dir, secret_file) = file_with(&format!("{SECRET}\n"));
    let token = format!("token=@{secret_file}");
    let launch = |extra: &[&str]| {
        let mut args = vec![
            "templates",
            "launch",
            "deploy",
            "-p",
            "version=v1.2.3",
            "-p",
            "count=5",
            "-p",
            "dry_run=yes",
            "-p",
            "env=prod",
        ];
        args.extend_from_slice(extra);
        args.into_iter().map(str::to_string).collect::<Vec<_>>()
    };
    let args = launch(&["-p", &token]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = jobctl(&app, &args).await;
    assert_eq!(out.code, 0, "{out:?}");
    let line = "version=v1.2.3 count=5 dry_run=true env=prod";
    assert_eq!(
        out.sorted_stdout(),
        [
            "t-1 | token-ok".into(),
            format!("t-1 | {line}"),
            "t-2 | token-ok".into(),
            format!("t-2 | {line}"),
        ],
        "{out:?}"
    );
    for name in ["t-1", "t-2"] {
        assert!(out.host_row(name).contains("completed"), "{out:?}");
    }
    out.assert_hides(SECRET);
    // The run: launched from the template, the values of their types, the secret not shown.
    let id = (out.stderr.lines())
        .find_map(|l| l.strip_prefix("jobctl: run "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no run id on stderr: {out:?}"))
        .to_string();
    let run = wait_run(&app, &id).await;
    assert_eq!(run["template_id"], tpl["id"], "{run}");
    assert_eq!(
        run["parameters"],
        json!({"version": "v1.2.3", "count": 5, "dry_run": true, "env": "prod"}),
        "{run}"
    );

    // The secret from stdin; the targets overridden; -o json: the final run alone.
    let args = launch(&["-p", "token=@-", "--servers", "t-2", "-o", "json"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = jobctl_with(&app, &args, Some(&format!("{SECRET}\n"))).await;
    assert_eq!(out.code, 0, "{out:?}");
    let run = out.json();
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["counts"]["completed"], 1, "{run}");
    assert_eq!(run["targets"]["servers"], json!(["t-2"]), "{run}");
    assert!(out.stderr.contains("t-2 | token-ok"), "{out:?}");
    out.assert_hides(SECRET);

    // Refusals: the service's message, naming the parameter; exit 1, no run.
    let (_bad_dir, bad_file) = file_with("Not A Valid Secret!\n");
    let bad_token = format!("token=@{bad_file}");
    for (args, field) in [
        (
            vec!["-p", "count=two", "-p", token.as_str()],
            "parameters.count",
        ),
        (
            vec!["-p", "dry_run=maybe", "-p", token.as_str()],
            "parameters.dry_run",
        ),
        (
            vec!["-p", "env=dev", "-p", token.as_str()],
            "parameters.env",
        ),
        (
            vec!["-p", "nope=1", "-p", token.as_str()],
            "parameters.nope",
        ),
        (vec!["-p", bad_token.as_str()], "parameters.token"),
    ] {
        let args = launch(&args);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = jobctl(&app, &args).await;
        assert_eq!(out.code, 1, "{out:?}");
        assert!(out.stdout.is_empty(), "{out:?}");
        assert!(
            out.stderr.starts_with(&format!("jobctl: {field}: ")) && out.stderr.contains("422"),
            "{out:?}"
        );
        out.assert_hides(SECRET);
        out.assert_hides("Not A Valid Secret");
    }
    let out = jobctl(
        &app,
        &["templates", "launch", "deploy", "-p", "version=1.0"],
    )
    .await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("parameters.version"), "{out:?}");
    let (_, runs) = app.get("/api/v1/runs").await;
    assert_eq!(runs["runs"].as_array().unwrap().len(), 2, "{runs}");

    // An empty secret, or one read from a file that is not there, is not sent.
    let out = jobctl_with(&app, &args_of(&launch(&["-p", "token=@-"])), Some("")).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("parameter token"), "{out:?}");
    let missing = format!("token=@{secret_file}.missing");
    let out = jobctl(&app, &args_of(&launch(&["-p", &missing]))).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr
            .contains("cannot read the value of parameter token"),
        "{out:?}"
    );
    let out = jobctl(&app, &["templates", "launch", "nope"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("HTTP 404"), "{out:?}");
    app.stop().await;
}

fn args_of(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_are_listed_shown_created_detached_and_deleted() {
    let (_db, app, _host, tpl) = setup().await;
    let out = jobctl(&app, &["templates", "list"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let mut lines = out.stdout.lines();
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("NAME    KIND     TARGETS  PARAMETERS"),
        "{out:?}"
    );
    assert_eq!(
        lines.next().unwrap(),
        "deploy  command  role=t   version*, count, dry_run, env*, token* (secret)  \
         print what it was given",
        "{out:?}"
    );
    let out = jobctl(&app, &["templates", "list", "-o", "json"]).await;
    assert_eq!(out.json()[0]["id"], tpl["id"], "{out:?}");

    for name_or_id in ["deploy", tpl["id"].as_str().unwrap()] {
        let out = jobctl(&app, &["templates", "get", name_or_id]).await;
        assert_eq!(out.code, 0, "{out:?}");
        for expected in [
            "name         deploy",
            "targets      role=t",
            "parameters   5",
            "NAME     TYPE     REQUIRED  DEFAULT  ALLOWED",
        ] {
            assert!(out.stdout.contains(expected), "{expected:?}: {out:?}");
        }
        // A row of the parameters' table (below the listing, whose keys may look alike).
        let row = |name: &str| {
            let mut rows = (out.stdout.lines()).skip_while(|l| !l.starts_with("NAME "));
            (rows.find(|l| l.starts_with(&format!("{name} "))))
                .unwrap_or_else(|| panic!("no row of {name}: {out:?}"))
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(
            row("version"),
            "version string yes - matches v[0-9]+(\\.[0-9]+)* no the release"
        );
        assert_eq!(row("count"), "count integer no 2 - no -");
        assert_eq!(row("dry_run"), "dry_run boolean no false - no -");
        assert_eq!(row("env"), "env choice yes - one of staging, prod no -");
        assert_eq!(row("token"), "token string yes - matches [a-z0-9-]+ yes -");
    }
    let out = jobctl(&app, &["templates", "get", "deploy", "-o", "json"]).await;
    assert_eq!(out.json(), tpl);

    // create -f: the file's JSON, POSTed; a template that fails on its host exits 1.
    let (_dir, file) = file_with(
        &json!({"name": "fails", "command": "echo no; exit 3",
                "targets": {"servers": ["t-1"]}})
        .to_string(),
    );
    let out = jobctl(&app, &["templates", "create", "-f", &file]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("name         fails"), "{out:?}");
    assert!(out.stdout.contains("parameters   none"), "{out:?}");
    let out = jobctl(&app, &["templates", "create", "-f", &file]).await;
    assert_eq!(out.code, 1, "a second one of the name: {out:?}");
    assert!(out.stderr.contains("HTTP 409"), "{out:?}");
    let out = jobctl(&app, &["templates", "launch", "fails"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(out.stdout, "t-1 | no\n", "{out:?}");
    assert!(out.host_row("t-1").contains("failed"), "{out:?}");

    // --detach: the run's id, at once.
    let out = jobctl(
        &app,
        &[
            "templates",
            "launch",
            "deploy",
            "--detach",
            "-p",
            "version=v2",
            "-p",
            "env=staging",
            "-p",
            "token=abc",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    let id = out.stdout.trim_end_matches('\n');
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{out:?}");
    assert!(out.stderr.is_empty(), "{out:?}");
    let run = wait_run(&app, id).await;
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["template_id"], tpl["id"], "{run}");

    let out = jobctl(&app, &["templates", "delete", "deploy"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("deleted"), "{out:?}");
    let out = jobctl(&app, &["templates", "get", "deploy"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("HTTP 404"), "{out:?}");
    let out = jobctl(&app, &["templates", "list", "-o", "json"]).await;
    assert_eq!(out.json().as_array().unwrap().len(), 1, "{out:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_are_listed_shown_paused_resumed_and_previewed() {
    let (_db, app, _host, _tpl) = setup().await;
    let (status, body) = app
        .post(
            "/api/v1/schedules",
            &json!({"name": "nightly", "template": "deploy", "cron": "30 2 * * *",
                    "timezone": "Europe/Berlin",
                    "parameters": {"version": "v1", "env": "prod", "token": "tok-hidden-3f"}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let out = jobctl(&app, &["schedules", "list"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let row = (out.stdout.lines())
        .find(|l| l.starts_with("nightly "))
        .unwrap_or_else(|| panic!("{out:?}"));
    assert!(
        row.contains("30 2 * * *") && row.contains("Europe/Berlin"),
        "{row}"
    );
    let out = jobctl(&app, &["schedules", "pause", "nightly"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let (_, s) = app.get("/api/v1/schedules/nightly").await;
    assert_eq!(s["paused"], true);
    let out = jobctl(&app, &["-o", "json", "schedules", "resume", "nightly"]).await;
    let s: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(s["paused"], false);
    let out = jobctl(&app, &["schedules", "get", "nightly"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    out.assert_hides("tok-hidden-3f");
    // Spring forward in Berlin: 02:30 does not exist; it fires at 03:00 local.
    let args = [
        "schedules",
        "preview",
        "30 2 * * *",
        "-z",
        "Europe/Berlin",
        "--from",
        "2027-03-27T12:00:00Z",
        "-n",
        "1",
    ];
    let out = jobctl(&app, &args).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("2027-03-28T01:00:00"), "{out:?}");
    assert!(out.stdout.contains("2027-03-28T03:00:00+02:00"), "{out:?}");
    let out = jobctl(&app, &["schedules", "preview", "0 25 * * *"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("hour"), "{out:?}");
}
