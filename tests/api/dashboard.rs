//! The dashboard over plain HTTP (no browser): its assets and their headers, the session
//! endpoints, and the rules on a session cookie at `/api/v1` (CSRF, same origin, logout).
//! The browser's side is in `browser`.

use reqwest::header;
use serde_json::{Value, json};

use crate::db_test;
use crate::helpers::{Db, TestApp, TestDb, test_settings};

const TOKEN: &str = "ops-dashboard-token-0123456789";

async fn with_tokens(db: &TestDb) -> TestApp {
    TestApp::start(db, &[("JOBEXEC_API_TOKENS", &format!("ops:{TOKEN}"))]).await
}

/// Log in: the session cookie's `name=value`, and the whole `Set-Cookie`.
async fn login(app: &TestApp) -> (String, String) {
    let resp = reqwest::Client::new()
        .post(app.url("/session"))
        .json(&json!({ "token": TOKEN }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let set = resp.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_string();
    let pair = set.split(';').next().unwrap().to_string();
    (pair, set)
}

/// `GET /session` with the cookie.
async fn session(app: &TestApp, cookie: &str) -> Value {
    let resp = reqwest::Client::new()
        .get(app.url("/session"))
        .header(header::COOKIE, cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()[header::CACHE_CONTROL], "no-store");
    resp.json().await.unwrap()
}

db_test!(
    the_dashboard_is_served_compiled_in_with_strict_headers,
    |db: TestDb| async move {
        let app = TestApp::start(&db, &[]).await;
        let http = reqwest::Client::new();
        let resp = http.get(app.url("/")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let h = resp.headers().clone();
        assert_eq!(h[header::CONTENT_TYPE], "text/html; charset=utf-8");
        let csp = h[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        for part in [
            "default-src 'self'",
            "script-src 'self'",
            "frame-ancestors 'none'",
            "object-src 'none'",
        ] {
            assert!(csp.contains(part), "{csp}");
        }
        assert!(
            !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
            "{csp}"
        );
        assert_eq!(h[header::X_FRAME_OPTIONS], "DENY");
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        let etag = h[header::ETAG].to_str().unwrap().to_string();
        let html = resp.text().await.unwrap();
        assert!(
            html.contains(r#"<script type="module" src="/assets/app.js"></script>"#),
            "{html}"
        );
        assert!(
            !html.contains("http://") && !html.contains("https://"),
            "no external resource"
        );
        // A browser holding this version revalidates and gets a 304.
        let again = http
            .get(app.url("/"))
            .header(header::IF_NONE_MATCH, &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304);
        for (asset, ctype) in [
            ("app.js", "text/javascript; charset=utf-8"),
            ("api.js", "text/javascript; charset=utf-8"),
            ("logview.js", "text/javascript; charset=utf-8"),
            ("app.css", "text/css; charset=utf-8"),
        ] {
            let resp = http
                .get(app.url(&format!("/assets/{asset}")))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "{asset}");
            assert_eq!(resp.headers()[header::CONTENT_TYPE], ctype, "{asset}");
            assert!(resp.headers().contains_key(header::CONTENT_SECURITY_POLICY));
            let etag = resp.headers()[header::ETAG].clone();
            assert!(!resp.bytes().await.unwrap().is_empty(), "{asset}");
            let again = http
                .get(app.url(&format!("/assets/{asset}")))
                .header(header::IF_NONE_MATCH, etag)
                .send()
                .await
                .unwrap();
            assert_eq!(again.status(), 304, "{asset}");
        }
        let (status, body) = app.get("/assets/nothing.js").await;
        assert_eq!(
            (status, body["code"].as_str()),
            (404, Some("not_found")),
            "{body}"
        );
        let (status, _) = app.get("/assets/..%2FCargo.toml").await;
        assert_eq!(status, 404);
        // Not part of the API's document; unknown API paths are still the API's 404.
        let (_, doc) = app.get("/api/v1/openapi.json").await;
        let paths = doc["paths"].as_object().unwrap();
        assert!(
            paths.keys().all(|p| p.starts_with("/api/v1")
                || matches!(p.as_str(), "/health" | "/health/ready" | "/metrics")),
            "{:?}",
            paths.keys()
        );
        let (status, body) = app.get("/api/v1/nothing").await;
        assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));
        // Without tokens the page opens directly, on loopback names only.
        let (status, state) = app.get("/session").await;
        assert_eq!(status, 200);
        assert_eq!(
            state,
            json!({"authenticated": true, "tokens_required": false, "name": "anonymous", "role": "admin", "scope": null, "csrf_token": null})
        );
        let (status, _) = app.post("/session", &json!({"token": TOKEN})).await;
        assert_eq!(status, 409, "nothing to log in to");
        let foreign = http
            .get(app.url("/"))
            .header(header::HOST, "rebind.evil.example")
            .send()
            .await
            .unwrap();
        assert_eq!(foreign.status(), 403);
        app.stop().await;
    }
);

db_test!(
    a_session_opens_with_a_token_and_ends_on_the_server,
    |db: TestDb| async move {
        let app = with_tokens(&db).await;
        let http = reqwest::Client::new();
        // The page is public; the API is not.
        assert_eq!(http.get(app.url("/")).send().await.unwrap().status(), 200);
        let state: Value = http
            .get(app.url("/session"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            state,
            json!({"authenticated": false, "tokens_required": true, "name": null, "role": null, "scope": null, "csrf_token": null})
        );
        // A wrong token: 401 JSON, no cookie.
        let wrong = http
            .post(app.url("/session"))
            .json(&json!({ "token": "not-the-token-0123456789" }))
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401);
        assert!(!wrong.headers().contains_key(header::SET_COOKIE));
        let body: Value = wrong.json().await.unwrap();
        assert_eq!(body["code"], "unauthorized", "{body}");
        assert!(!body.to_string().contains("not-the-token"), "{body}");
        let bad = http
            .post(app.url("/session"))
            .json(&json!({ "token": 12345 }))
            .send()
            .await
            .unwrap();
        assert_eq!(bad.status(), 422);
        assert!(!bad.text().await.unwrap().contains("12345"));
        // A login from another origin is refused.
        let cross = http
            .post(app.url("/session"))
            .header(header::ORIGIN, "http://evil.example")
            .json(&json!({ "token": TOKEN }))
            .send()
            .await
            .unwrap();
        assert_eq!(cross.status(), 403);
        assert!(!cross.headers().contains_key(header::SET_COOKIE));

        let (cookie, set) = login(&app).await;
        assert_eq!(
            set,
            format!("{cookie}; HttpOnly; SameSite=Strict; Path=/"),
            "no Secure without TLS"
        );
        let id = cookie.strip_prefix("jobexec_session=").unwrap();
        assert_eq!(id.len(), 43, "32 random bytes, base64url: {id}");
        assert!(!id.contains(TOKEN));
        let (other, _) = login(&app).await;
        assert_ne!(other, cookie, "each login its own session");
        let state = session(&app, &cookie).await;
        assert_eq!(state["authenticated"], true);
        assert_eq!(
            (&state["name"], &state["role"]),
            (&json!("ops"), &json!("admin"))
        );
        let csrf = state["csrf_token"].as_str().unwrap().to_string();
        assert_eq!(csrf.len(), 43);
        assert!(
            !state.to_string().contains(id),
            "the session id is never in a body"
        );
        // The cookie authenticates the API (reads need nothing else).
        let jobs = http
            .get(app.url("/api/v1/jobs"))
            .header(header::COOKIE, &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(jobs.status(), 200);
        // Logout ends it on the server: the same cookie replayed is worthless.
        let out = http
            .delete(app.url("/session"))
            .header(header::COOKIE, &cookie)
            .header(header::ORIGIN, &app.base)
            .header("x-csrf-token", &csrf)
            .send()
            .await
            .unwrap();
        assert_eq!(out.status(), 204);
        assert!(
            out.headers()[header::SET_COOKIE]
                .to_str()
                .unwrap()
                .contains("Max-Age=0")
        );
        let replay = http
            .get(app.url("/api/v1/jobs"))
            .header(header::COOKIE, &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(replay.status(), 401);
        let body: Value = replay.json().await.unwrap();
        assert_eq!(body["code"], "unauthorized");
        assert_eq!(session(&app, &cookie).await["authenticated"], false);
        // The other session lives on.
        assert_eq!(session(&app, &other).await["authenticated"], true);
        let forged = http
            .get(app.url("/api/v1/jobs"))
            .header(
                header::COOKIE,
                "jobexec_session=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            )
            .send()
            .await
            .unwrap();
        assert_eq!(forged.status(), 401);
        app.stop().await;
    }
);

db_test!(
    a_change_with_the_cookie_needs_the_same_origin_and_the_csrf_token,
    |db: TestDb| async move {
        let app = with_tokens(&db).await;
        let (cookie, _) = login(&app).await;
        let csrf = session(&app, &cookie).await["csrf_token"]
            .as_str()
            .unwrap()
            .to_string();
        let http = reqwest::Client::new();
        let server = |name: &str| json!({"name": name, "hostname": "127.0.0.1", "user": "u", "auth_type": "password", "password": "pw-secret"});
        let own = app.base.clone();
        let refused: Vec<(&str, Vec<(&str, &str)>)> = vec![
            ("no origin, no token", vec![]),
            ("no CSRF token", vec![("origin", own.as_str())]),
            (
                "a wrong CSRF token",
                vec![("origin", own.as_str()), ("x-csrf-token", "AAAA")],
            ),
            (
                "another origin",
                vec![
                    ("origin", "http://evil.example"),
                    ("x-csrf-token", csrf.as_str()),
                ],
            ),
            (
                "a cross-site fetch",
                vec![
                    ("sec-fetch-site", "cross-site"),
                    ("x-csrf-token", csrf.as_str()),
                ],
            ),
        ];
        for (why, headers) in refused {
            let mut req = http
                .post(app.url("/api/v1/servers"))
                .header(header::COOKIE, &cookie)
                .json(&server("refused"));
            for (k, v) in headers {
                req = req.header(k, v);
            }
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 403, "{why}");
            let body: Value = resp.json().await.unwrap();
            assert_eq!(body["code"], "forbidden", "{why}: {body}");
        }
        let listed: Value = http
            .get(app.url("/api/v1/servers"))
            .header(header::COOKIE, &cookie)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(listed["servers"], json!([]), "nothing refused happened");
        // The dashboard's own requests pass: Origin or Sec-Fetch-Site, and the token.
        for (name, (k, v)) in [
            ("by-origin", ("origin", own.as_str())),
            ("by-fetch-site", ("sec-fetch-site", "same-origin")),
        ] {
            let resp = http
                .post(app.url("/api/v1/servers"))
                .header(header::COOKIE, &cookie)
                .header(k, v)
                .header("x-csrf-token", &csrf)
                .json(&server(name))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 201, "{name}");
        }
        // The bearer token alone needs none of it (no browser sends it by itself).
        let app = app.with_token(TOKEN);
        let (status, _) = app.post("/api/v1/servers", &server("by-token")).await;
        assert_eq!(status, 201);
        // The audit names the token behind the session.
        let (_, audit) = app.get("/api/v1/audit?action=server.create").await;
        let actors: Vec<&str> = audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["actor"].as_str().unwrap())
            .collect();
        assert_eq!(actors, ["ops", "ops", "ops"], "{audit}");
        app.stop().await;
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_tls_the_session_cookie_is_secure() {
    let dir = tempfile::tempdir().unwrap();
    let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.key_pair.serialize_pem()).unwrap();
    let db = TestDb::create(Db::Sqlite).unwrap();
    let (cert_s, key_s) = (cert.display().to_string(), key.display().to_string());
    let tokens = format!("ops:{TOKEN}");
    let settings = test_settings(
        &db.url,
        &[
            ("JOBEXEC__HTTP__TLS_CERT", &cert_s),
            ("JOBEXEC__HTTP__TLS_KEY", &key_s),
            ("JOBEXEC_API_TOKENS", &tokens),
        ],
    );
    let app = job_executor::App::start(settings, job_executor::Role::Serve)
        .await
        .unwrap();
    let addr = app.local_addr().unwrap();
    let http = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(made.cert.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let resp = http
        .post(format!("https://{addr}/session"))
        .json(&json!({ "token": TOKEN }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let set = resp.headers()[header::SET_COOKIE].to_str().unwrap();
    assert!(
        set.ends_with("; HttpOnly; SameSite=Strict; Path=/; Secure"),
        "{set}"
    );
    app.stop().await;
}

db_test!(
    a_session_outlives_a_restart_and_ends_with_its_token,
    |db: TestDb| async move {
        let app = with_tokens(&db).await;
        let (cookie, _) = login(&app).await;
        app.stop().await;
        // Kept in the database: the next process knows it.
        let app = with_tokens(&db).await;
        let state = session(&app, &cookie).await;
        assert_eq!(
            (state["authenticated"].as_bool(), state["name"].as_str()),
            (Some(true), Some("ops"))
        );
        app.stop().await;
        // Its token is no longer configured: the session is over.
        let app = TestApp::start(
            &db,
            &[("JOBEXEC_API_TOKENS", "ci:another-token-0123456789")],
        )
        .await;
        let resp = reqwest::Client::new()
            .get(app.url("/api/v1/jobs"))
            .header(header::COOKIE, &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
        assert_eq!(session(&app, &cookie).await["authenticated"], false);
        app.stop().await;
        // And it stays over when the token comes back.
        let app = with_tokens(&db).await;
        assert_eq!(session(&app, &cookie).await["authenticated"], false);
        app.stop().await;
    }
);

db_test!(
    logins_are_rate_limited_per_address,
    |db: TestDb| async move {
        let app = TestApp::start(
            &db,
            &[
                ("JOBEXEC_API_TOKENS", &format!("ops:{TOKEN}")),
                ("JOBEXEC__LIMITS__SUBMISSIONS_PER_MINUTE", "1"),
                ("JOBEXEC__LIMITS__SUBMISSION_BURST", "2"),
            ],
        )
        .await;
        let http = reqwest::Client::new();
        let attempt = |token: &'static str| {
            http.post(app.url("/session"))
                .json(&json!({ "token": token }))
                .send()
        };
        assert_eq!(attempt("guess-one-0123456789").await.unwrap().status(), 401);
        assert_eq!(attempt("guess-two-0123456789").await.unwrap().status(), 401);
        let limited = attempt(TOKEN).await.unwrap();
        assert_eq!(limited.status(), 429, "even the right token waits its turn");
        assert!(limited.headers().contains_key(header::RETRY_AFTER));
        assert!(!limited.headers().contains_key(header::SET_COOKIE));
        app.stop().await;
    }
);
