//! The dashboard in a real headless Chromium (chromedriver + fantoccini, see
//! `helpers::browser`): a job submitted from the form shows its lines while it runs; a run's
//! host grid follows the run live; the login flow with tokens (a wrong token refused, the
//! cookie HttpOnly and out of `document.cookie`, a cross-origin change refused, logout ends
//! the session); every page renders at 1280 px and 390 px, with a screenshot of each.
//!
//! These run on SQLite only: what they test is the page, and the API underneath is tested on
//! both databases by the other modules.

use std::time::Duration;

use fantoccini::Locator;
use serde_json::{Value, json};

use crate::helpers::browser::Browser;
use crate::helpers::{Db, TestApp, TestDb, TestHost};

const WAIT: Duration = Duration::from_secs(20);
const TOKEN: &str = "ops-browser-token-0123456789";

fn sqlite() -> TestDb {
    TestDb::create(Db::Sqlite).unwrap()
}

/// Type `text` into the element `css` (cleared first).
async fn type_into(b: &Browser, css: &str, text: &str) {
    let el = b
        .client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"));
    el.clear().await.unwrap();
    el.send_keys(text).await.unwrap();
}

/// Click the element `css` (found again if the page re-rendered it meanwhile).
async fn click(b: &Browser, css: &str) {
    let mut tries = 0;
    loop {
        let found = b.client.find(Locator::Css(css)).await;
        let clicked = match found {
            Ok(el) => el.click().await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match clicked {
            Ok(()) => return,
            Err(e) if tries >= 40 => panic!("{css}: {e}"),
            Err(_) => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Every input of the page has a label, and nothing but real buttons and links is clickable.
async fn assert_accessible(b: &Browser, page: &str) {
    let unlabelled = b
        .eval(
            "return [...document.querySelectorAll('main input, main select, main textarea')]
                .filter(i => i.type !== 'hidden' && !(i.labels && i.labels.length))
                .map(i => i.name || i.id)",
        )
        .await;
    assert_eq!(unlabelled, json!([]), "{page}: inputs without a label");
    let fake = b
        // A scrollable region may take focus (so the keyboard scrolls it); nothing else.
        .eval("return [...document.querySelectorAll('[onclick], div[tabindex]:not([role=region]), span[tabindex]')].length")
        .await;
    assert_eq!(fake, json!(0), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_submitted_from_the_form_shows_its_lines_before_it_ends() {
    let Some(b) = Browser::start().await else {
        return;
    };
    let db = sqlite();
    let (app, _host, _server) = TestApp::with_host(&db, &[]).await;
    b.goto(&app.url("/#/submit")).await;
    b.wait_until("document.querySelector('#command')", WAIT)
        .await;
    assert_accessible(&b, "submit").await;
    let shown = b
        .eval("return ['#command', '#script', '#server', '#selector'].map(c => document.querySelector(c).offsetParent !== null)")
        .await;
    assert_eq!(
        shown,
        json!([true, false, true, false]),
        "a command on one server, at first"
    );
    b.screenshot("submit").await;
    type_into(
        &b,
        "#command",
        "for i in 1 2 3 4 5; do echo line$i; sleep 1; done",
    )
    .await;
    click(&b, "#submit-button").await;
    b.wait_until("location.hash.startsWith('#/jobs/')", WAIT)
        .await;
    let id = b.eval("return location.hash.slice('#/jobs/'.length)").await;
    let id = id.as_str().unwrap().to_string();
    // Two lines are on the page while the job still runs.
    b.wait_until(
        "document.querySelectorAll('#log .log-line.stdout').length >= 2",
        WAIT,
    )
    .await;
    let (_, job) = app.get(&format!("/api/v1/jobs/{id}")).await;
    assert_eq!(
        job["status"], "running",
        "the lines came before the end: {job}"
    );
    let state = b
        .eval("return document.querySelector('#log').dataset.state")
        .await;
    assert_ne!(state, json!("done"));
    b.screenshot("job-running").await;
    // Then all five, the end, and the final status in the fields.
    b.wait_until(
        "document.querySelector('#log').dataset.state === 'done'",
        WAIT,
    )
    .await;
    b.wait_until(
        "document.querySelector('main').dataset.jobStatus === 'completed'",
        WAIT,
    )
    .await;
    let lines = b
        .eval("return [...document.querySelectorAll('#log .log-line')].map(l => l.textContent.trim())")
        .await;
    assert_eq!(lines, json!(["line1", "line2", "line3", "line4", "line5"]));
    assert!(
        !b.eval("return document.querySelector('.actions').innerText")
            .await
            .as_str()
            .unwrap()
            .contains("Cancel"),
        "a finished job has no cancel"
    );
    b.screenshot("job").await;
    b.close().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runs_host_grid_updates_live() {
    let Some(b) = Browser::start().await else {
        return;
    };
    let db = sqlite();
    let app = TestApp::start(&db, &[]).await;
    let host = TestHost::start().await;
    for (name, role) in [("web-1", "web"), ("web-2", "web"), ("db-1", "db")] {
        let id = app.add_key_server(name, &host).await;
        let (status, body) = app
            .put(
                &format!("/api/v1/servers/{id}"),
                &json!({"labels": {"role": role}}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    b.goto(&app.url("/#/submit")).await;
    b.wait_until("document.querySelector('#command')", WAIT)
        .await;
    type_into(
        &b,
        "#command",
        "sleep 4; echo done-$JOBEXEC_JOB_ID | cut -c1-4",
    )
    .await;
    click(&b, "#target-selector").await;
    type_into(&b, "#selector", "role=web").await;
    click(&b, "#submit-button").await;
    b.wait_until("location.hash.startsWith('#/runs/')", WAIT)
        .await;
    b.wait_until(
        "document.querySelectorAll('#host-grid .cell').length === 2",
        WAIT,
    )
    .await;
    let names = b
        .eval(
            "return [...document.querySelectorAll('#host-grid .cell')].map(c => c.dataset.server)",
        )
        .await;
    assert_eq!(
        names,
        json!(["web-1", "web-2"]),
        "the selector's servers, not db-1"
    );
    // The page is not reloaded from here on: a marker on the window survives.
    b.eval("window.__same_page = true; return null").await;
    b.wait_until(
        "[...document.querySelectorAll('#host-grid .cell')].some(c => c.dataset.status === 'running')",
        WAIT,
    )
    .await;
    b.screenshot("run-running").await;
    b.wait_until(
        "[...document.querySelectorAll('#host-grid .cell')].every(c => c.dataset.status === 'completed')",
        WAIT,
    )
    .await;
    b.wait_until(
        "document.querySelector('main').dataset.runStatus === 'completed'",
        WAIT,
    )
    .await;
    assert_eq!(
        b.eval("return window.__same_page === true").await,
        json!(true),
        "updated live"
    );
    b.wait_until(
        "document.querySelector('#summary').innerText.includes('web-1, web-2')",
        WAIT,
    )
    .await;
    b.screenshot("run").await;
    // The run's jobs: the jobs list filtered by run (in the URL), the API's run_id filter.
    let run = b.eval("return location.hash.slice('#/runs/'.length)").await;
    let run = run.as_str().unwrap().to_string();
    let (status, jobs) = app.get(&format!("/api/v1/jobs?run_id={run}")).await;
    assert_eq!(status, 200, "{jobs}");
    let jobs = jobs["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 2);
    assert!(jobs.iter().all(|j| j["run_id"] == run.as_str()));
    let (status, none) = app
        .get(&format!("/api/v1/jobs?run_id={}", uuid::Uuid::new_v4()))
        .await;
    assert_eq!((status, none["jobs"].as_array().unwrap().len()), (200, 0));
    let (status, _) = app.get("/api/v1/jobs?run_id=nope").await;
    assert_eq!(status, 422);
    click(&b, &format!("a[href='#/jobs?run_id={run}']")).await;
    b.wait_until(
        "document.querySelectorAll('tr[data-job]').length === 2",
        WAIT,
    )
    .await;
    assert_eq!(
        b.eval("return document.querySelector('#job-filters input[name=run_id]').value")
            .await,
        json!(run)
    );
    b.goto(&app.url("/#/runs")).await;
    b.wait_until(
        "document.querySelectorAll('main tbody tr a').length === 1",
        WAIT,
    )
    .await;
    b.screenshot("runs").await;
    b.close().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_login_flow_with_tokens() {
    let Some(b) = Browser::start().await else {
        return;
    };
    let db = sqlite();
    let app = TestApp::start(&db, &[("JOBEXEC_API_TOKENS", &format!("ops:{TOKEN}"))])
        .await
        .with_token(TOKEN);
    let host = TestHost::start().await;
    let server = app.add_key_server("h", &host).await;
    b.goto(&app.url("/")).await;
    b.wait_until("document.querySelector('#login input[name=token]')", WAIT)
        .await;
    assert_accessible(&b, "login").await;
    let nav = b
        .eval("return document.querySelector('#nav').offsetParent === null")
        .await;
    assert_eq!(nav, json!(true), "no pages before the login");
    b.screenshot("login").await;
    // A wrong token: a visible error, still the login.
    type_into(&b, "#login input[name=token]", "wrong-token-0123456789").await;
    click(&b, "#login button[type=submit]").await;
    b.wait_until("document.querySelector('#login .error')", WAIT)
        .await;
    let error = b
        .eval("return document.querySelector('#login .error').innerText")
        .await;
    assert!(error.as_str().unwrap().contains("not valid"), "{error}");
    b.screenshot("login-refused").await;
    assert!(
        b.client.get_all_cookies().await.unwrap().is_empty(),
        "no cookie for a wrong token"
    );
    // The right one: the dashboard, with an HttpOnly, SameSite=Strict session cookie.
    type_into(&b, "#login input[name=token]", TOKEN).await;
    click(&b, "#login button[type=submit]").await;
    b.wait_until("document.querySelector('main').dataset.page === 'jobs' && document.querySelector('#job-filters')", WAIT)
        .await;
    let cookies = b.client.get_all_cookies().await.unwrap();
    let session = cookies
        .iter()
        .find(|c| c.name() == "jobexec_session")
        .expect("the session cookie");
    assert_eq!(session.http_only(), Some(true), "{session:?}");
    assert_eq!(
        format!("{:?}", session.same_site()),
        "Some(Strict)",
        "{session:?}"
    );
    let cookie = format!("jobexec_session={}", session.value());
    let visible = b.eval("return document.cookie").await;
    assert!(
        !visible.as_str().unwrap().contains("jobexec_session"),
        "{visible}"
    );
    // The token is nowhere the page keeps things.
    let kept = b
        .eval("return location.href + JSON.stringify(localStorage) + JSON.stringify(sessionStorage) + document.body.innerHTML")
        .await;
    assert!(
        !kept.as_str().unwrap().contains(TOKEN),
        "the token is kept somewhere"
    );
    assert_eq!(
        b.eval("return document.querySelector('#who').innerText")
            .await,
        json!("ops · admin")
    );
    b.screenshot("jobs-logged-in").await;
    // A cross-origin POST with the cookie (what another site's page would make): 403.
    let http = reqwest::Client::new(); // no token: only the cookie
    let body = json!({"name": "x", "hostname": "127.0.0.1", "user": "u", "auth_type": "password", "password": "p"});
    let cross = http
        .post(app.url("/api/v1/servers"))
        .header("cookie", &cookie)
        .header("origin", "http://evil.example")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(cross.status(), 403);
    let v: Value = cross.json().await.unwrap();
    assert_eq!(v["code"], "forbidden");
    // The page's own change works (its CSRF token, its origin): create a server in the form.
    b.goto(&app.url("/#/servers/new")).await;
    b.wait_until("document.querySelector('#server-form')", WAIT)
        .await;
    type_into(&b, "#server-form input[name=name]", "from-the-page").await;
    type_into(&b, "#server-form input[name=hostname]", "127.0.0.1").await;
    type_into(&b, "#server-form input[name=user]", "u").await;
    b.eval("document.querySelector('#server-form select[name=auth_type]').value = 'password'; return null").await;
    type_into(&b, "#server-form input[name=password]", "pw-0123").await;
    click(&b, "#server-form button[type=submit]").await;
    b.wait_until("/^#\\/servers\\/[0-9a-f-]{36}$/.test(location.hash)", WAIT)
        .await;
    // The job stream (EventSource) goes with the cookie too.
    let (status, job) = app
        .post(
            "/api/v1/jobs",
            &json!({"command": "echo via-the-cookie", "server_id": server}),
        )
        .await;
    assert_eq!(status, 201, "{job}");
    b.goto(&app.url(&format!("/#/jobs/{}", job["id"].as_str().unwrap())))
        .await;
    b.wait_until("[...document.querySelectorAll('#log .log-line')].some(l => l.textContent.includes('via-the-cookie'))", WAIT)
        .await;
    // Logout ends the session on the server: the old cookie gets 401.
    click(&b, "#logout").await;
    b.wait_until("document.querySelector('#login')", WAIT).await;
    let replay = http
        .get(app.url("/api/v1/jobs"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 401);
    b.close().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_renders_at_desktop_and_phone_width() {
    let Some(b) = Browser::start().await else {
        return;
    };
    let db = sqlite();
    let (app, _host, server) = TestApp::with_host(&db, &[]).await;
    let (status, _) = app
        .put(
            &format!("/api/v1/servers/{server}"),
            &json!({"labels": {"role": "web", "env": "test"}}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = app
        .post(
            "/api/v1/templates",
            &json!({"name": "greet", "description": "Say hello", "targets": {"selector": "role=web"},
                    "command": "echo hello $JOBEXEC_PARAM_WHO $JOBEXEC_PARAM_TIMES",
                    "parameters": [
                        {"name": "who", "type": "string", "required": true, "pattern": "[a-z]+"},
                        {"name": "times", "type": "integer", "default": 1},
                        {"name": "loud", "type": "boolean"},
                        {"name": "tone", "type": "choice", "choices": ["warm", "cold"], "default": "warm"}
                    ]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = app
        .post("/api/v1/schedules", &json!({"name": "nightly", "template": "greet", "cron": "0 3 * * *",
                                            "timezone": "Europe/Paris", "parameters": {"who": "night"}}))
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, job) = app
        .post(
            "/api/v1/jobs",
            &json!({"command": "echo", "args": "hello; echo oops >&2", "server_id": server}),
        )
        .await;
    assert_eq!(status, 201, "{job}");
    let job = job["id"].as_str().unwrap().to_string();

    // The jobs list, with its filters in the URL.
    b.goto(&app.url("/#/jobs")).await;
    b.wait_until(
        &format!("document.querySelector('tr[data-job=\"{job}\"]')"),
        WAIT,
    )
    .await;
    b.wait_until(
        "document.querySelector('#health').classList.contains('ok')",
        WAIT,
    )
    .await;
    assert_accessible(&b, "jobs").await;
    b.screenshot("jobs").await;
    // The keyboard alone: Tab reaches the nav's links, Enter follows one.
    b.client
        .find(Locator::Css("#nav a[href='#/runs']"))
        .await
        .unwrap()
        .send_keys(&fantoccini::key::Key::Enter.to_string())
        .await
        .unwrap();
    b.wait_until(
        "location.hash === '#/runs' && document.querySelector('main').dataset.page === 'runs'",
        WAIT,
    )
    .await;
    let tabbable = b
        .eval("return [...document.querySelectorAll('a[href], button, input, select, textarea')].every(e => e.tabIndex >= 0)")
        .await;
    assert_eq!(tabbable, json!(true), "every control is in the tab order");
    b.goto(&app.url("/#/jobs?status=failed")).await;
    b.wait_until("document.querySelector('#job-filters select[name=status]').value === 'failed' && document.querySelector('td[colspan]')", WAIT)
        .await;
    b.goto(&app.url("/#/jobs?status=completed")).await;
    b.wait_until(
        &format!("document.querySelector('tr[data-job=\"{job}\"]')"),
        WAIT,
    )
    .await;
    // The job, finished.
    click(&b, &format!("tr[data-job=\"{job}\"] a")).await;
    b.wait_until(
        "document.querySelector('#log').dataset.state === 'done'",
        WAIT,
    )
    .await;
    b.wait_until(
        "document.querySelectorAll('#log .log-line').length >= 2",
        WAIT,
    )
    .await;
    assert_accessible(&b, "job").await;
    b.screenshot("job-finished").await;
    // Duplicate with an override: a new job's page.
    type_into(&b, "#duplicate input[name=timeout]", "30").await;
    click(&b, "#duplicate button[type=submit]").await;
    b.wait_until(
        &format!("location.hash.startsWith('#/jobs/') && !location.hash.endsWith('{job}')"),
        WAIT,
    )
    .await;
    b.wait_until("document.querySelector('#job-fields') && document.querySelector('#job-fields').innerText.includes('30 s')", WAIT)
        .await;

    // Servers: the list with labels, the form (secrets never pre-filled), a 422 beside its field.
    b.goto(&app.url("/#/servers")).await;
    b.wait_until("document.querySelector('tr[data-server=h]')", WAIT)
        .await;
    let labels = b
        .eval("return document.querySelector('tr[data-server=h] .labels').innerText")
        .await;
    assert!(labels.as_str().unwrap().contains("role=web"), "{labels}");
    b.screenshot("servers").await;
    b.goto(&app.url(&format!("/#/servers/{server}"))).await;
    b.wait_until("document.querySelector('#server-form')", WAIT)
        .await;
    let secrets = b
        .eval("return ['password', 'private_key', 'private_key_passphrase'].map(n => document.querySelector(`#server-form [name=${n}]`).value)")
        .await;
    assert_eq!(
        secrets,
        json!(["", "", ""]),
        "secret fields are never pre-filled"
    );
    assert_accessible(&b, "server").await;
    click(&b, "main .actions button").await; // Test connection
    b.wait_until(
        "document.querySelector('#test-result').innerText.includes('SHA256:')",
        WAIT,
    )
    .await;
    b.screenshot("server").await;
    type_into(&b, "#server-form input[name=labels]", "Bad Key=x").await;
    click(&b, "#server-form button[type=submit]").await;
    b.wait_until("document.querySelector('#server-form [name=labels]').getAttribute('aria-invalid') === 'true'", WAIT)
        .await;
    let shown = b
        .eval("return document.querySelector('#server-form .error').innerText")
        .await;
    assert!(shown.as_str().unwrap().contains("Bad Key"), "{shown}");
    let (_, kept) = app.get(&format!("/api/v1/servers/{server}")).await;
    assert_eq!(
        kept["labels"],
        json!({"role": "web", "env": "test"}),
        "a refused change changes nothing"
    );

    // Templates: the launch form from the typed parameters, checked in the page.
    b.goto(&app.url("/#/templates")).await;
    b.wait_until("document.querySelector('main tbody a')", WAIT)
        .await;
    b.screenshot("templates").await;
    b.goto(&app.url("/#/templates/greet")).await;
    b.wait_until("document.querySelector('#launch')", WAIT)
        .await;
    let kinds = b
        .eval("return [...document.querySelectorAll('#launch [data-param]')].map(e => [e.dataset.param, e.type, e.required])")
        .await;
    assert_eq!(
        kinds,
        json!([
            ["who", "text", true],
            ["times", "number", false],
            ["loud", "checkbox", false],
            ["tone", "select-one", false]
        ])
    );
    assert_accessible(&b, "template").await;
    type_into(&b, "#launch [data-param=who]", "NOT lower").await;
    click(&b, "#launch button[type=submit]").await;
    let invalid = b.eval("return document.querySelector('#launch [data-param=who]').matches(':invalid') && location.hash").await;
    assert_eq!(
        invalid,
        json!("#/templates/greet"),
        "the pattern is checked before sending"
    );
    b.screenshot("template").await;
    // What the page does not check, the API does: its 422 is shown beside the parameter.
    b.eval("document.querySelector('#launch [data-param=who]').removeAttribute('pattern'); return null")
        .await;
    click(&b, "#launch button[type=submit]").await;
    b.wait_until("document.querySelector('#launch [data-param=who]').getAttribute('aria-invalid') === 'true'", WAIT)
        .await;
    let shown = b
        .eval("return document.querySelector('#launch .error').innerText")
        .await;
    assert!(
        shown.as_str().unwrap().contains("parameters.who"),
        "{shown}"
    );
    let (_, runs) = app.get("/api/v1/runs").await;
    assert_eq!(runs["runs"], json!([]), "nothing was launched");
    type_into(&b, "#launch [data-param=who]", "world").await;
    click(&b, "#launch button[type=submit]").await;
    b.wait_until("location.hash.startsWith('#/runs/')", WAIT)
        .await;
    b.wait_until(
        "document.querySelector('main').dataset.runStatus === 'completed'",
        WAIT,
    )
    .await;

    // Schedules: next fires in local time, pause and resume.
    b.goto(&app.url("/#/schedules")).await;
    b.wait_until(
        "document.querySelector('tr[data-schedule=nightly] .fires li')",
        WAIT,
    )
    .await;
    b.screenshot("schedules").await;
    click(&b, "tr[data-schedule=nightly] button").await;
    b.wait_until(
        "document.querySelector('tr[data-schedule=nightly]').dataset.paused === 'true'",
        WAIT,
    )
    .await;
    let (_, s) = app.get("/api/v1/schedules/nightly").await;
    assert_eq!(s["paused"], true);
    click(&b, "tr[data-schedule=nightly] button").await;
    b.wait_until(
        "document.querySelector('tr[data-schedule=nightly]').dataset.paused === 'false'",
        WAIT,
    )
    .await;

    // A script from the submit form.
    b.goto(&app.url("/#/submit")).await;
    b.wait_until("document.querySelector('#kind-script')", WAIT)
        .await;
    click(&b, "#kind-script").await;
    type_into(&b, "#script", "echo from-a-script \"$1\"").await;
    type_into(&b, "#script-args", "arg-one").await;
    click(&b, "#submit-button").await;
    b.wait_until("location.hash.startsWith('#/jobs/')", WAIT)
        .await;
    b.wait_until(
        "document.querySelector('#log') && document.querySelector('#log').dataset.state === 'done'",
        WAIT,
    )
    .await;
    let lines = b
        .eval("return [...document.querySelectorAll('#log .log-line')].map(l => l.textContent.trim())")
        .await;
    assert_eq!(lines, json!(["from-a-script arg-one"]));

    // A phone's width: no page wider than the screen (tables scroll in their box).
    b.client.set_window_size(390, 844).await.unwrap();
    for (page, ready) in [
        (
            "jobs",
            "document.querySelector('#job-filters') && document.querySelector('tbody tr')",
        ),
        ("submit", "document.querySelector('#submit-form')"),
        ("servers", "document.querySelector('tr[data-server=h]')"),
        ("schedules", "document.querySelector('tr[data-schedule]')"),
    ] {
        b.goto(&app.url(&format!("/#/{page}"))).await;
        b.wait_until(ready, WAIT).await;
        let wide = b.eval("return document.documentElement.scrollWidth - document.documentElement.clientWidth").await;
        assert!(
            wide.as_i64().unwrap() <= 1,
            "{page} is {wide} px wider than a phone"
        );
        b.screenshot(&format!("{page}-phone")).await;
    }
    b.close().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_host_key_is_accepted_deliberately_on_the_server_page() {
    let Some(b) = Browser::start().await else {
        return;
    };
    let db = sqlite();
    let (app, host, server) = TestApp::with_host(&db, &[]).await;
    // Another key is pinned than the one the host presents (as after a reinstall).
    let other = format!("SHA256:{}", "A".repeat(43));
    let (status, body) = app
        .put(
            &format!("/api/v1/servers/{server}"),
            &json!({"host_key": other}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let new_fp = host.host_key_fingerprint.clone();
    b.goto(&app.url(&format!("/#/servers/{server}"))).await;
    b.wait_until("document.querySelector('#server-form')", WAIT)
        .await;
    // The page asks before pinning; the test answers yes.
    b.eval("window.confirm = () => true; return null").await;
    click(&b, "main .actions button").await; // Test connection
    b.wait_until("document.querySelector('#test-result button')", WAIT)
        .await;
    let shown = b
        .eval("return document.querySelector('#test-result').innerText")
        .await;
    let shown = shown.as_str().unwrap();
    assert!(
        shown.contains("host key") && shown.contains(&new_fp),
        "{shown}"
    );
    let (_, s) = app.get(&format!("/api/v1/servers/{server}")).await;
    assert_ne!(
        s["host_key_fingerprint"],
        new_fp.as_str(),
        "a plain test pins nothing"
    );
    b.screenshot("server-host-key-changed").await;
    click(&b, "#test-result button").await;
    b.wait_until(
        "document.querySelector('#test-result').innerText.includes('connected, authenticated')",
        WAIT,
    )
    .await;
    let (_, s) = app.get(&format!("/api/v1/servers/{server}")).await;
    assert_eq!(
        s["host_key_fingerprint"],
        new_fp.as_str(),
        "accepted deliberately"
    );
    b.close().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_a_job_and_a_run_then_rerun_the_failed_hosts_from_their_pages() {
    let Some(b) = Browser::start().await else {
        return;
    };
    let db = sqlite();
    let (app, _host, server) = TestApp::with_host(&db, &[]).await;
    let (status, job) = app
        .post(
            "/api/v1/jobs",
            &json!({"command": "echo started; sleep 60", "server_id": server}),
        )
        .await;
    assert_eq!(status, 201, "{job}");
    let job = job["id"].as_str().unwrap().to_string();
    b.goto(&app.url(&format!("/#/jobs/{job}"))).await;
    b.wait_until(
        "document.querySelector('main').dataset.jobStatus === 'running'",
        WAIT,
    )
    .await;
    b.eval("window.confirm = () => true; return null").await;
    click(&b, "main .actions button.danger").await;
    b.wait_until(
        "document.querySelector('main').dataset.jobStatus === 'canceled'",
        WAIT,
    )
    .await;
    let (_, after) = app.get(&format!("/api/v1/jobs/{job}")).await;
    assert_eq!(after["status"], "canceled", "{after}");

    let (status, run) = app
        .post(
            "/api/v1/runs",
            &json!({"command": "sleep 60", "targets": {"servers": ["h"]}}),
        )
        .await;
    assert_eq!(status, 201, "{run}");
    let run = run["id"].as_str().unwrap().to_string();
    b.goto(&app.url(&format!("/#/runs/{run}"))).await;
    b.wait_until(
        "document.querySelector('#host-grid .cell[data-status=running]')",
        WAIT,
    )
    .await;
    b.eval("window.confirm = () => true; return null").await;
    click(&b, "main .actions button.danger").await;
    b.wait_until(
        "document.querySelector('main').dataset.runStatus === 'canceled'",
        WAIT,
    )
    .await;
    // Rerun the hosts that did not complete: a new run, its page.
    b.wait_until("[...document.querySelectorAll('main .actions button')].some(x => x.textContent === 'Rerun failed')", WAIT)
        .await;
    click(&b, "main .actions button").await;
    b.wait_until(
        &format!("location.hash.startsWith('#/runs/') && !location.hash.endsWith('{run}')"),
        WAIT,
    )
    .await;
    let rerun = b.eval("return location.hash.slice('#/runs/'.length)").await;
    let (_, rerun) = app
        .get(&format!("/api/v1/runs/{}", rerun.as_str().unwrap()))
        .await;
    assert_eq!(rerun["rerun_of"], run.as_str(), "{rerun}");
    let (status, _) = app
        .post(
            &format!("/api/v1/runs/{}/cancel", rerun["id"].as_str().unwrap()),
            &json!({}),
        )
        .await;
    assert_eq!(status, 200);
    b.close().await;
    app.stop().await;
}

/// Log in through the page's form with `token`; wait for the jobs page.
async fn log_in(b: &Browser, app: &TestApp, token: &str) {
    b.goto(&app.url("/")).await;
    b.wait_until("document.querySelector('#login input[name=token]')", WAIT)
        .await;
    type_into(b, "#login input[name=token]", token).await;
    click(b, "#login button[type=submit]").await;
    b.wait_until(
        "document.querySelector('main').dataset.page === 'jobs'",
        WAIT,
    )
    .await;
}

/// Whether the element `css` is shown (found and laid out).
async fn shown(b: &Browser, css: &str) -> bool {
    let js =
        format!("const e = document.querySelector({css:?}); return !!e && e.offsetParent !== null");
    b.eval(&js).await == json!(true)
}

/// Log out; wait for the login form.
async fn log_out(b: &Browser) {
    click(b, "#logout").await;
    b.wait_until("document.querySelector('#login')", WAIT).await;
}

/// Who the header says is logged in.
async fn who(b: &Browser) -> String {
    let js = "return document.querySelector('#who').innerText";
    b.eval(js).await.as_str().unwrap_or_default().to_string()
}

/// What the page of a running job at `url` offers: Cancel, Duplicate, and Submit in the menu.
async fn offered(b: &Browser, url: &str) -> [bool; 3] {
    b.goto(url).await;
    let running = "document.querySelector('main').dataset.jobStatus === 'running'";
    b.wait_until(running, WAIT).await;
    [
        shown(b, ".actions button.danger").await,
        shown(b, "#duplicate").await,
        shown(b, "#nav a[href='#/submit']").await,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_offers_what_the_role_may_do_and_shows_only_the_scope() {
    let Some(b) = Browser::start().await else {
        return;
    };
    let (admin, viewer, scoped) = (
        "admin-browser-0123456789",
        "viewer-browser-0123456789",
        "scoped-browser-0123456789",
    );
    let file = format!(
        "[[auth.tokens]]\nname = \"root\"\ntoken = \"{admin}\"\nrole = \"admin\"\n\n\
         [[auth.tokens]]\nname = \"dash\"\ntoken = \"{viewer}\"\nrole = \"viewer\"\n\n\
         [[auth.tokens]]\nname = \"ci-staging\"\ntoken = \"{scoped}\"\nrole = \"operator\"\n\
         scope = \"env=staging\"\n"
    );
    let db = sqlite();
    let app = TestApp::start_with_file(&db, &file, &[])
        .await
        .with_token(admin);
    let host = TestHost::start().await;
    let server = app.add_key_server("prod-1", &host).await;
    let (status, _) = app
        .put(
            &format!("/api/v1/servers/{server}"),
            &json!({"labels": {"env": "prod"}}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, job) = app
        .post(
            "/api/v1/jobs",
            &json!({"command": "sleep 30", "server_id": server}),
        )
        .await;
    assert_eq!(status, 201, "{job}");
    let job = job["id"].as_str().unwrap().to_string();
    let job_page = app.url(&format!("/#/jobs/{job}"));

    // The admin is offered every action on the running job's page, a viewer none.
    log_in(&b, &app, admin).await;
    assert_eq!(offered(&b, &job_page).await, [true; 3]);
    log_out(&b).await;
    log_in(&b, &app, viewer).await;
    assert_eq!(who(&b).await, "dash · viewer");
    assert_eq!(offered(&b, &job_page).await, [false; 3]);
    b.screenshot("job-as-viewer").await;
    log_out(&b).await;

    // A token scoped to staging: the production job is not there.
    log_in(&b, &app, scoped).await;
    assert_eq!(who(&b).await, "ci-staging · operator · env=staging");
    assert!(shown(&b, "#nav a[href='#/submit']").await);
    b.goto(&job_page).await;
    b.wait_until("document.querySelector('main .error')", WAIT)
        .await;
    let error = b
        .eval("return document.querySelector('main .error').innerText")
        .await;
    assert!(
        error.as_str().unwrap().contains("does not exist"),
        "{error}"
    );
    let (status, _) = app
        .post(&format!("/api/v1/jobs/{job}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 200);
    b.close().await;
    app.stop().await;
}
