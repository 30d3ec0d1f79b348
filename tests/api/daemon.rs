//! The config-file daemon: `job-executor --config FILE serve` with everything in the file,
//! `[[servers]]` applied by name at start, SIGHUP reloading servers and tokens while a job
//! runs, and `check-config` naming what is wrong with its line.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::procs::{Service, free_port};
use crate::helpers::{TEST_SECRET_KEY, TestHost, in_ci};

/// The servers the daemon lists.
async fn list_servers(d: &Service, token: Option<&str>) -> Vec<Value> {
    let (status, body) = d
        .call_json(reqwest::Method::GET, "/api/v1/servers", token, None)
        .await;
    assert_eq!(status, 200, "{body}");
    body["servers"].as_array().unwrap().clone()
}

/// What a daemon test starts from: a test host, a directory with its key file, a database
/// path, a free port and the settings file's path.
struct Daemon {
    host: TestHost,
    dir: tempfile::TempDir,
    key_file: String,
    db: String,
    port: u16,
    file: std::path::PathBuf,
}

impl Daemon {
    async fn prepare() -> Daemon {
        let host = TestHost::start().await;
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("id_ed25519");
        std::fs::write(&key_file, &host.keys.ed25519_openssh).unwrap();
        Daemon {
            key_file: key_file.display().to_string(),
            db: dir.path().join("jobs.db").display().to_string(),
            port: free_port(),
            file: dir.path().join("job-executor.toml"),
            host,
            dir,
        }
    }
}

/// `job-executor check-config FILE`.
fn check_config(file: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_job-executor"))
        .arg("check-config")
        .arg(file)
        .output()
        .unwrap()
}

/// Ask the daemon `pid` to reload its settings file.
fn sighup(pid: u32) {
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
}

fn config(port: u16, db: &str, host: &TestHost, key_file: &str, extra: &str) -> String {
    format!(
        "[http]\naddr = \"127.0.0.1:{port}\"\nworkers = 1\n\n[database]\nurl = \"{db}\"\n\n\
         [secrets]\nkey = \"{TEST_SECRET_KEY}\"\n\n\
         [[servers]]\nname = \"web\"\nhostname = \"{h}\"\nport = {p}\nuser = \"{u}\"\n\
         private_key_file = \"{key_file}\"\nmax_concurrent_jobs = 2\n{extra}",
        h = host.host,
        p = host.port,
        u = host.user,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_from_a_config_file_serves_its_servers_and_reloads_on_sighup() {
    let Daemon {
        host,
        dir: _dir,
        key_file,
        db,
        port,
        file,
    } = Daemon::prepare().await;
    std::fs::write(&file, config(port, &db, &host, &key_file, "")).unwrap();

    let check = check_config(&file);
    assert!(check.status.success(), "{check:?}");

    let file_arg = file.display().to_string();
    let d = Service::start(&["--config", &file_arg, "serve"], &[], port, None).await;
    let pid = d.pid();
    let servers = list_servers(&d, None).await;
    assert_eq!(servers.len(), 1);
    assert_eq!(servers[0]["name"], "web");
    assert_eq!(servers[0]["max_concurrent_jobs"], 2);
    assert_eq!(servers[0]["has_private_key"], true);
    let web = servers[0]["id"].as_str().unwrap().to_string();

    // A job running across the reload.
    let (status, job) = d
        .call_json(
            reqwest::Method::POST,
            "/api/v1/jobs",
            None,
            Some(json!({"command": "sleep 2; echo survived", "server_id": web})),
        )
        .await;
    assert_eq!(status, 201, "{job}");
    let job = job["id"].as_str().unwrap().to_string();

    // The file changes: web gets 5 slots, a second server appears, tokens are required.
    let extra = format!(
        "\n[[servers]]\nname = \"db\"\nhostname = \"{}\"\nport = {}\nuser = \"{}\"\n\
         private_key_file = \"{key_file}\"\nlabels = {{ role = \"db\", env = \"prod\" }}\n\n[auth]\ntokens = [\"ops:reloaded-token-0123456789\"]\n\n\
         [limits]\nsubmissions_per_minute = 6\nsubmission_burst = 1\n",
        host.host, host.port, host.user
    );
    let text = config(port, &db, &host, &key_file, &extra)
        .replace("max_concurrent_jobs = 2", "max_concurrent_jobs = 5");
    std::fs::write(&file, text).unwrap();
    sighup(pid);
    let token = Some("reloaded-token-0123456789");
    let start = Instant::now();
    loop {
        let (status, _) = d
            .call(reqwest::Method::GET, "/api/v1/servers", None, None)
            .await;
        if status == 401 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the reload did not take"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let servers = list_servers(&d, token).await;
    let names: Vec<&str> = servers
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["db", "web"]);
    let web_now = servers.iter().find(|s| s["name"] == "web").unwrap();
    assert_eq!(
        web_now["id"],
        web.as_str(),
        "updated in place, not re-created"
    );
    assert_eq!(web_now["max_concurrent_jobs"], 5);
    let db_now = servers.iter().find(|s| s["name"] == "db").unwrap();
    assert_eq!(db_now["labels"], json!({"role": "db", "env": "prod"}));

    // The running job was not dropped.
    let start = Instant::now();
    let done = loop {
        let (_, j) = d
            .call_json(
                reqwest::Method::GET,
                &format!("/api/v1/jobs/{job}"),
                token,
                None,
            )
            .await;
        if !matches!(j["status"].as_str(), Some("queued" | "running")) {
            break j;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{j}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(done["status"], "completed", "{done}");
    let (_, logs) = d
        .call_json(
            reqwest::Method::GET,
            &format!("/api/v1/jobs/{job}/logs"),
            token,
            None,
        )
        .await;
    assert!(logs.to_string().contains("survived"), "{logs}");
    // The reloaded limits hold: a burst of one, then 429.
    let submit = || {
        d.call_json(
            reqwest::Method::POST,
            "/api/v1/jobs",
            token,
            Some(json!({"command": "true", "server_id": web})),
        )
    };
    assert_eq!(submit().await.0, 201);
    assert_eq!(submit().await.0, 429);

    // A bad file: check-config names the problem and its line; a reload with it changes
    // nothing and the daemon keeps serving.
    std::fs::write(
        &file,
        "[http]\naddr = \"127.0.0.1:1\"\n[worker]\nconcurrancy = 3\n",
    )
    .unwrap();
    let check = check_config(&file);
    assert!(!check.status.success());
    let err = String::from_utf8_lossy(&check.stderr);
    assert!(err.contains(":4:") && err.contains("concurrancy"), "{err}");
    sighup(pid);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, _) = d
        .call_json(reqwest::Method::GET, "/api/v1/servers", None, None)
        .await;
    assert_eq!(status, 401, "the refused reload dropped the tokens");
    assert_eq!(list_servers(&d, token).await.len(), 2);
}

/// A secret that the bad files below hold, and that no output may show.
const SECRET: &str = "hunter2-s3cr3t-0123456789";

/// Files the settings refuse, each holding [`SECRET`] (or `12345678`) where it is wrong: a
/// syntax error on its line, wrong types, an unknown value, a token given twice, a bad secret key.
fn files_with_secrets() -> Vec<(&'static str, String)> {
    vec![
        (
            "syntax",
            format!("[database]\nurl = \"postgres://u:{SECRET}@h/db\n"),
        ),
        ("unquoted key", format!("[secrets]\nkey = 1:{SECRET}\n")),
        (
            "wrong type",
            format!("[worker]\nconcurrency = \"{SECRET}\"\n"),
        ),
        (
            "tokens not a list",
            format!("[auth]\ntokens = \"ops:{SECRET}\"\n"),
        ),
        ("unknown value", format!("[log]\nformat = \"{SECRET}\"\n")),
        (
            "token twice",
            format!("[auth]\ntokens = [\"a:{SECRET}\", \"b:{SECRET}\"]\n"),
        ),
        (
            "bad secret key",
            format!("[secrets]\nkey = \"1:{SECRET}\"\n"),
        ),
        (
            "wrong-typed password",
            "[[servers]]\nname = \"a\"\nhostname = \"h\"\nuser = \"u\"\npassword = 12345678\n"
                .to_string(),
        ),
    ]
}

/// What a process wrote, for the assertions below.
fn output_of(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_errors_name_line_column_and_key_never_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("jobs.db").display().to_string();
    for (what, text) in files_with_secrets() {
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, &text).unwrap();
        let check = Command::new(env!("CARGO_BIN_EXE_job-executor"))
            .arg("check-config")
            .arg(&file)
            .output()
            .unwrap();
        let said = output_of(&check);
        assert!(!check.status.success(), "{what}: {said}");
        assert!(
            said.contains("bad.toml:2:") || said.contains("bad.toml:5:"),
            "{what}: {said}"
        );
        assert!(
            !said.contains(SECRET) && !said.contains("12345678"),
            "{what}: {said}"
        );
        // A daemon (and a worker) started with the file: what the settings refuse at load
        // (the wrong-typed password is taken as text there, and refused by no one).
        if what == "wrong-typed password" {
            continue;
        }
        for role in ["serve", "worker"] {
            let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_job-executor"))
                .arg("--config")
                .arg(&file)
                .arg(role)
                .env("DATABASE_URL", &db)
                .env_remove("RABBITMQ_URL")
                .env_remove("SERVER_ADDR")
                .env_remove("JOBEXEC_SECRET_KEY")
                .env_remove("JOBEXEC_API_TOKENS")
                .kill_on_drop(true)
                .output();
            let out = tokio::time::timeout(Duration::from_secs(30), run)
                .await
                .unwrap_or_else(|_| panic!("{what}: {role} did not stop"))
                .unwrap();
            let said = output_of(&out);
            assert!(!out.status.success(), "{what}: {said}");
            assert!(!said.contains(SECRET), "{what}: {role}: {said}");
            if said.contains("invalid settings") || said.contains("not valid TOML") {
                assert!(said.contains("bad.toml:2:"), "{what}: {role}: {said}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_reload_logs_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("jobs.db").display().to_string();
    let port = free_port();
    let good = format!(
        "[http]\naddr = \"127.0.0.1:{port}\"\nworkers = 1\n[database]\nurl = \"{db}\"\n\
         [secrets]\nkey = \"{TEST_SECRET_KEY}\"\n"
    );
    let file = dir.path().join("job-executor.toml");
    std::fs::write(&file, &good).unwrap();
    let log = dir.path().join("daemon.log");
    let file_arg = file.display().to_string();
    let d = Service::start(&["--config", &file_arg, "serve"], &[], port, Some(&log)).await;
    for (what, text) in files_with_secrets() {
        std::fs::write(&file, &text).unwrap();
        let before = std::fs::read_to_string(&log).unwrap().len();
        assert!(
            Command::new("kill")
                .args(["-HUP", &d.pid().to_string()])
                .status()
                .unwrap()
                .success()
        );
        let start = Instant::now();
        while std::fs::read_to_string(&log).unwrap().len() == before {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{what}: no reload logged"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (status, _) = d.call(reqwest::Method::GET, "/health", None, None).await;
        assert_eq!(status, 200, "{what}");
    }
    // Give the last reload's lines time to land.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("reload refused"), "{logged}");
    assert!(
        !logged.contains(SECRET) && !logged.contains("12345678"),
        "{logged}"
    );
}

/// `[[templates]]` and `[[schedules]]` for [`config`]: a script template with a checked
/// parameter, and a schedule of it (`cron` and `more` vary between reloads).
fn declared(cron: &str, more: &str) -> String {
    format!(
        "\n[[templates]]\nname = \"greet\"\ndescription = \"says hello\"\n\
         script = 'echo \"$GREETING $JOBEXEC_PARAM_WHO\"'\nenv = {{ GREETING = \"hello\" }}\n\
         targets = {{ servers = [\"web\"] }}\n\
         parameters = [{{ name = \"who\", type = \"string\", required = true, pattern = \"[a-z]+\" }}]\n\n\
         [[schedules]]\nname = \"nightly\"\ntemplate = \"greet\"\nparameters = {{ who = \"night\" }}\n\
         cron = \"{cron}\"\ntimezone = \"Europe/Berlin\"\ncatch_up = \"1h\"\n{more}"
    )
}

/// SIGHUP `pid`, then wait until `done` holds of what `path` answers.
async fn reload_until(d: &Service, pid: u32, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    sighup(pid);
    let start = Instant::now();
    loop {
        let (_, body) = d.call_json(reqwest::Method::GET, path, None, None).await;
        if done(&body) {
            return body;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the reload did not take: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_and_schedules_from_the_file_are_applied_by_name_and_kept_across_reloads() {
    let Daemon {
        host,
        dir: _dir,
        key_file,
        db,
        port,
        file,
    } = Daemon::prepare().await;
    let write = |cron: &str, more: &str| {
        let text = config(port, &db, &host, &key_file, &declared(cron, more));
        std::fs::write(&file, text).unwrap();
    };
    write("0 30 2 * * *", "");
    let check = check_config(&file);
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{check:?}");
    assert!(said.contains("1 template(s), 1 schedule(s)"), "{said}");

    let file_arg = file.display().to_string();
    let d = Service::start(&["--config", &file_arg, "serve"], &[], port, None).await;
    let pid = d.pid();
    let d = &d;
    let get = |path: String| async move {
        let (status, body) = d.call_json(reqwest::Method::GET, &path, None, None).await;
        assert_eq!(status, 200, "{path}: {body}");
        body
    };
    let tpl = get("/api/v1/templates/greet".into()).await;
    assert_eq!(tpl["description"], "says hello");
    assert_eq!(tpl["parameters"][0]["pattern"], "[a-z]+");
    // Keys keep their case: the environment variable is GREETING, not greeting.
    assert_eq!(tpl["env"], json!({"GREETING": "hello"}));
    let nightly = get("/api/v1/schedules/nightly".into()).await;
    assert_eq!(
        (&nightly["cron"], &nightly["timezone"], &nightly["template"]),
        (
            &json!("0 30 2 * * *"),
            &json!("Europe/Berlin"),
            &json!("greet")
        )
    );
    assert_eq!(nightly["catch_up_secs"], 3600);
    assert!(
        (nightly["next_fire_local"].as_str().unwrap()).contains("T02:30:00+0"),
        "{nightly}"
    );

    // A launch of the file's template checks its parameter and runs it.
    let launch = |who: &'static str| {
        d.call_json(
            reqwest::Method::POST,
            "/api/v1/templates/greet/launch",
            None,
            Some(json!({"parameters": {"who": who}})),
        )
    };
    let (status, err) = launch("Robert'); DROP").await;
    assert_eq!(
        (status, err["field"].as_str()),
        (422, Some("parameters.who"))
    );
    let (status, run) = launch("world").await;
    assert_eq!(status, 201, "{run}");
    let start = Instant::now();
    let run = loop {
        let run = get(format!("/api/v1/runs/{}", run["id"].as_str().unwrap())).await;
        if !matches!(run["status"].as_str(), Some("queued" | "running")) {
            break run;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{run}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(run["status"], "completed", "{run}");
    let job = run["hosts"][0]["job_id"].as_str().unwrap();
    let (_, out) = d
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/jobs/{job}/stdout"),
            None,
            None,
        )
        .await;
    assert_eq!(out, "hello world\n");

    // Paused through the API; a reload of the same file leaves it paused, and writes
    // nothing: the schedule is not made to fire "from now on" (its cursor is kept).
    let (status, _) = d
        .call_json(
            reqwest::Method::POST,
            "/api/v1/schedules/nightly/pause",
            None,
            None,
        )
        .await;
    assert_eq!(status, 200);
    let paused = get("/api/v1/schedules/nightly".into()).await;
    write(
        "0 30 2 * * *",
        "\n[[templates]]\nname = \"second\"\ncommand = \"true\"\n\
         targets = { selector = \"role=none\" }\n",
    );
    reload_until(d, pid, "/api/v1/templates", |b| {
        b["templates"].as_array().is_some_and(|t| t.len() == 2)
    })
    .await;
    let same = get("/api/v1/schedules/nightly".into()).await;
    assert_eq!(same["paused"], true);
    assert_eq!(
        same["updated_at"], paused["updated_at"],
        "an unchanged table was rewritten"
    );
    let audit = get("/api/v1/audit?limit=100".into()).await.to_string();
    assert_eq!(audit.matches("template.update").count(), 0, "{audit}");

    // A changed table is updated in place; `paused = false` in the file resumes it.
    write("*/10 * * * *", "paused = false\n");
    let changed = reload_until(d, pid, "/api/v1/schedules/nightly", |b| {
        b["cron"] == "*/10 * * * *"
    })
    .await;
    assert_eq!(
        changed["id"], nightly["id"],
        "re-created instead of updated"
    );
    assert_eq!(changed["paused"], false);

    // A bad file: check-config names each problem with its line; a reload with it is
    // refused whole (the good template in it is not applied either).
    let bad = config(port, &db, &host, &key_file, &declared("61 * * * *", ""))
        .replace("says hello", "says hi")
        + "\n[[schedules]]\nname = \"loud\"\ntemplate = \"greet\"\ncron = \"* * * * *\"\n\
           parameters = { who = \"NIGHT\" }\n\
           \n[[schedules]]\nname = \"tz\"\ntemplate = \"greet\"\ncron = \"* * * * *\"\n\
           timezone = \"Mars/Olympus\"\nparameters = { who = \"x\" }\nevery = 1\n";
    std::fs::write(&file, &bad).unwrap();
    let check = check_config(&file);
    assert!(!check.status.success());
    let err = String::from_utf8_lossy(&check.stderr);
    let line_of = |needle: &str| 1 + bad.lines().position(|l| l.contains(needle)).unwrap();
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "unknown keys come first, alone: {err}");
    assert!(
        lines[0].contains(&format!(":{}:", line_of("every = 1")))
            && lines[0].contains("[[schedules]] has no key \"every\""),
        "{err}"
    );
    std::fs::write(&file, bad.replace("every = 1\n", "")).unwrap();
    let check = check_config(&file);
    let err = String::from_utf8_lossy(&check.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 3, "{err}");
    assert!(
        lines[0].contains(&format!(":{}:", line_of("cron = \"61"))) && lines[0].contains("minute"),
        "{err}"
    );
    assert!(
        lines[1].contains(&format!(":{}:", line_of("who = \"NIGHT\"")))
            && lines[1].contains("parameters.who"),
        "{err}"
    );
    assert!(
        lines[2].contains(&format!(":{}:", line_of("Mars/Olympus")))
            && lines[2].contains("timezone"),
        "{err}"
    );
    sighup(pid);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        get("/api/v1/templates/greet".into()).await["description"],
        "says hello"
    );
    assert_eq!(
        get("/api/v1/schedules/nightly".into()).await["cron"],
        "*/10 * * * *"
    );
    let (status, _) = d
        .call_json(reqwest::Method::GET, "/api/v1/schedules/tz", None, None)
        .await;
    assert_eq!(status, 404);
}

/// `[[webhooks]]` for [`config`]: one webhook of job ends posting to `port` on loopback, its
/// secret in `secret_file`, retried every 300 ms or so.
fn declared_webhook(port: u16, secret_file: &str, events: &str) -> String {
    format!(
        "\n[[webhooks]]\nname = \"ops\"\nurl = \"http://127.0.0.1:{port}/hook?token=in-the-query\"\n\
         events = [{events}]\nfilter = {{ selector = \"role=web\" }}\nsecret_file = \"{secret_file}\"\n\n\
         [webhook_delivery]\nretry_base_ms = 300\nmax_attempts = 100\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_from_the_file_are_applied_by_name_and_their_pending_deliveries_survive_a_kill() {
    use crate::webhooks::{assert_signed, receiver_on, wait_for};
    let Daemon {
        host,
        dir,
        key_file,
        db,
        port,
        file,
    } = Daemon::prepare().await;
    let secret_file = dir.path().join("webhook.secret");
    std::fs::write(&secret_file, "whsec-declared\n").unwrap();
    let secret_file = secret_file.display().to_string();
    // The receiver's port, chosen now and listened on only after the kill.
    let hook_port = free_port();
    let write = |events: &str| {
        let extra = format!(
            "labels = {{ role = \"web\" }}\n{}",
            declared_webhook(hook_port, &secret_file, events)
        );
        std::fs::write(&file, config(port, &db, &host, &key_file, &extra)).unwrap();
    };
    write("\"job.completed\"");
    let check = check_config(&file);
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{check:?}");
    assert!(said.contains("1 webhook(s)"), "{said}");

    let file_arg = file.display().to_string();
    let d = Service::start(&["--config", &file_arg, "serve"], &[], port, None).await;
    let (_, hook) = d
        .call_json(reqwest::Method::GET, "/api/v1/webhooks/ops", None, None)
        .await;
    assert_eq!(
        (
            &hook["events"],
            &hook["has_secret"],
            &hook["filter"]["selector"]
        ),
        (&json!(["job.completed"]), &json!(true), &json!("role=web")),
        "{hook}"
    );
    assert!(!hook.to_string().contains("in-the-query"), "{hook}");

    // A job ends while the receiver is down: its delivery waits, attempted and pending.
    let (status, servers) = d
        .call_json(reqwest::Method::GET, "/api/v1/servers", None, None)
        .await;
    assert_eq!(status, 200);
    let server = servers["servers"][0]["id"].clone();
    let (status, job) = d
        .call_json(
            reqwest::Method::POST,
            "/api/v1/jobs",
            None,
            Some(json!({"command": "echo hi", "server_id": server})),
        )
        .await;
    assert_eq!(status, 201, "{job}");
    let start = Instant::now();
    let pending = loop {
        let (_, list) = d
            .call_json(
                reqwest::Method::GET,
                "/api/v1/webhooks/ops/deliveries",
                None,
                None,
            )
            .await;
        let first = list["deliveries"][0].clone();
        if first["attempts"].as_i64().unwrap_or(0) >= 1 {
            break first;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{list}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(pending["status"], "pending", "{pending}");
    assert!(
        (pending["last_error"].as_str().unwrap()).contains("cannot connect"),
        "{pending}"
    );
    assert!(!pending.to_string().contains("in-the-query"), "{pending}");
    drop(d); // SIGKILL

    // The receiver comes up; a new process on the same database delivers what waited.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", hook_port))
        .await
        .unwrap();
    let (_, got) = receiver_on(listener, vec![]);
    let d = Service::start(&["--config", &file_arg, "serve"], &[], port, None).await;
    let pid = d.pid();
    let all = wait_for(&got, 1, Duration::from_secs(20)).await;
    assert_eq!(all[0].header("x-jobexec-delivery"), pending["delivery_id"]);
    assert_eq!(all[0].header("x-jobexec-event"), "job.completed");
    assert_signed(&all[0], "whsec-declared");
    let body: Value = serde_json::from_str(&all[0].body).unwrap();
    assert_eq!(body["data"]["id"], job["id"]);

    // A changed table is updated in place; an unchanged one is not rewritten.
    write("\"job.completed\", \"job.failed\"");
    let changed = reload_until(&d, pid, "/api/v1/webhooks/ops", |b| {
        b["events"].as_array().is_some_and(|e| e.len() == 2)
    })
    .await;
    assert_eq!(changed["id"], hook["id"], "re-created instead of updated");
    sighup(pid);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (_, audit) = d
        .call_json(reqwest::Method::GET, "/api/v1/audit?limit=100", None, None)
        .await;
    let audit = audit.to_string();
    assert_eq!(audit.matches("webhook.update").count(), 1, "{audit}");
    assert_eq!(audit.matches("webhook.create").count(), 1, "{audit}");
    assert!(!audit.contains("whsec-declared"), "{audit}");

    // check-config names a bad table at its line, and the old [webhooks] section by name.
    let bad = config(
        port,
        &db,
        &host,
        &key_file,
        "\n[[webhooks]]\nname = \"x\"\nurl = \"ftp://h/\"\nevents = [\"job.exploded\"]\n\
         secret_file = \"/nonexistent/secret\"\n",
    );
    std::fs::write(&file, bad).unwrap();
    let out = output_of(&check_config(&file));
    assert!(out.contains("/nonexistent/secret"), "{out}");
    assert!(out.contains("must be an http:// or https:// URL"), "{out}");
    assert!(!out.contains("whsec"), "{out}");
    let old = config(
        port,
        &db,
        &host,
        &key_file,
        "\n[webhooks]\nmax_attempts = 3\n",
    );
    std::fs::write(&file, old).unwrap();
    let out = output_of(&check_config(&file));
    assert!(out.contains("[webhook_delivery]"), "{out}");
    let lines = out.lines().count();
    assert_eq!(lines, 1, "{out}");
}

/// The next datagram on `socket`, within `bound`.
fn datagram(socket: &std::os::unix::net::UnixDatagram, bound: Duration) -> String {
    socket.set_read_timeout(Some(bound)).unwrap();
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf).expect("a datagram in time");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_manager_hears_ready_once_it_listens_and_stopping_when_it_stops() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    let port = free_port();
    let db = dir.path().join("jobs.db").display().to_string();
    let addr = format!("127.0.0.1:{port}");
    let notify = socket_path.display().to_string();
    let svc = Service::start(
        &["serve"],
        &[
            ("DATABASE_URL", &db),
            ("JOBEXEC__HTTP__ADDR", &addr),
            ("NOTIFY_SOCKET", &notify),
        ],
        port,
        None,
    )
    .await;
    assert_eq!(datagram(&socket, Duration::from_secs(10)), "READY=1");
    let (status, _) = svc.call(reqwest::Method::GET, "/health", None, None).await;
    assert_eq!(status, 200);
    let status = Command::new("kill")
        .args(["-TERM", &svc.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(datagram(&socket, Duration::from_secs(10)), "STOPPING=1");
}

#[test]
fn the_unit_file_is_one_systemd_accepts() {
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        assert!(
            !in_ci(),
            "CI=true but systemd-analyze is missing: .ci/run installs systemd"
        );
        eprintln!("systemd-analyze is not installed: the unit file is not verified");
        return;
    };
    assert!(out.status.success());
    // As installed, but starting the binary built here (verify checks that it exists).
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/job-executor.service"
    ))
    .unwrap();
    for needed in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "User=job-executor",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "StateDirectory=job-executor",
        "PrivateTmp=yes",
    ] {
        assert!(unit.contains(needed), "the unit lacks {needed}");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("job-executor.service");
    let unit = unit.replace(
        "/usr/local/bin/job-executor",
        env!("CARGO_BIN_EXE_job-executor"),
    );
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
}
