//! Production connections: PostgreSQL over TLS (a private cluster started here with
//! `ssl = on` and a certificate made here), RabbitMQ over TLS (a TLS-terminating proxy made
//! here in front of the machine's broker), and a process that listens before its database
//! is up. The processes are the real binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::procs::{Proc, Service, Vhost, free_port};
use crate::helpers::{Db, TEST_SECRET_KEY, TestDb, TestHost, in_ci};

/// A certificate authority made for one test.
struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    /// A server certificate for `names` (PEM certificate, PEM key), signed by this CA.
    fn issue(&self, names: &[&str]) -> (String, String) {
        let names = names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let params = rcgen::CertificateParams::new(names).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// The CA certificate written to `dir/file`.
    fn write(&self, dir: &Path, file: &str) -> String {
        let path = dir.join(file);
        std::fs::write(&path, self.cert.pem()).unwrap();
        path.display().to_string()
    }
}

/// Whether this process runs as root (PostgreSQL's tools then run as `postgres`).
fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// The newest PostgreSQL server binaries of the machine (`/usr/lib/postgresql/N/bin`).
fn pg_bin() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// A PostgreSQL cluster of one test, on a port of its own, with `ssl = on` and a
/// certificate for `localhost` signed by [`PgCluster::ca`]. Made stopped: [`PgCluster::start`].
struct PgCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    ca: Ca,
}

impl PgCluster {
    /// `None` (with a note) where the machine has no PostgreSQL server binaries; under CI
    /// that fails instead.
    fn init() -> Option<PgCluster> {
        let Some(bin) = pg_bin() else {
            assert!(
                !in_ci(),
                "CI: the PostgreSQL server binaries (/usr/lib/postgresql/N/bin) are needed"
            );
            eprintln!("skipped: no PostgreSQL server binaries under /usr/lib/postgresql");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("job-executor test database CA");
        let (cert, key) = ca.issue(&["localhost"]);
        std::fs::write(dir.path().join("server.crt"), cert).unwrap();
        std::fs::write(dir.path().join("server.key"), key).unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path, m| {
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
            };
            mode(dir.path(), 0o755);
            mode(&dir.path().join("server.key"), 0o600);
        }
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(
                status.success(),
                "chown the cluster's directory to postgres"
            );
        }
        let cluster = PgCluster {
            port: free_port(),
            bin,
            dir,
            ca,
        };
        let data = cluster.data();
        let out = cluster
            .tool("initdb")
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(&data)
            .output()
            .unwrap();
        assert!(out.status.success(), "initdb: {out:?}");
        let d = cluster.dir.path().display();
        let conf = format!(
            "\nport = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{d}'\n\
             ssl = on\nssl_cert_file = '{d}/server.crt'\nssl_key_file = '{d}/server.key'\n\
             fsync = off\nmax_connections = 40\n",
            cluster.port
        );
        use std::io::Write;
        std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .unwrap()
            .write_all(conf.as_bytes())
            .unwrap();
        Some(cluster)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// One of PostgreSQL's programs, as the cluster's owner.
    fn tool(&self, name: &str) -> Command {
        let program = self.bin.join(name);
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        };
        cmd.stdin(Stdio::null());
        cmd
    }

    fn start(&self) {
        self.start_with("")
    }

    /// Start with server `options` (`pg_ctl -o`, e.g. `-c ssl=off`).
    fn start_with(&self, options: &str) {
        let log = self.dir.path().join("log");
        let out = self
            .tool("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(&log)
            .args(["-o", options, "-w", "-t", "30", "start"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start: {out:?}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    fn stop(&self) {
        let _ = self
            .tool("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// The cluster's URL with `host` and the URL's query `query`.
    fn url(&self, host: &str, query: &str) -> String {
        format!("postgres://postgres@{host}:{}/postgres?{query}", self.port)
    }

    /// How many of the connections of the service (every one but this query's own) use
    /// TLS, and how many do not.
    fn connections_by_tls(&self) -> (i64, i64) {
        use diesel::{Connection, RunQueryDsl};
        #[derive(diesel::QueryableByName)]
        struct Row {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            tls: i64,
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            plain: i64,
        }
        let mut c =
            diesel::PgConnection::establish(&self.url("127.0.0.1", "sslmode=disable")).unwrap();
        let r: Row = diesel::sql_query(
            "SELECT count(*) FILTER (WHERE s.ssl) AS tls, count(*) FILTER (WHERE NOT s.ssl) \
             AS plain FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.backend_type = 'client backend' AND a.pid <> pg_backend_pid()",
        )
        .get_result(&mut c)
        .unwrap();
        (r.tls, r.plain)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Run `job-executor serve` with `env` to its end (at most 30 s): its exit status and what
/// it printed.
fn run_to_exit(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_job-executor"))
        .arg("serve")
        .env_remove("DATABASE_URL")
        .env_remove("RABBITMQ_URL")
        .env("JOBEXEC__HTTP__ADDR", format!("127.0.0.1:{}", free_port()))
        .env("JOBEXEC__SECRETS__KEY", TEST_SECRET_KEY)
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// GET `path` until it answers `status` (at most `bound`); its body.
async fn wait_for(svc: &Service, path: &str, status: u16, bound: Duration) -> Value {
    let start = Instant::now();
    loop {
        let (got, body) = svc.call_json(reqwest::Method::GET, path, None, None).await;
        if got == status {
            return body;
        }
        assert!(
            start.elapsed() < bound,
            "{path} answers {got}, not {status}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `serve` on the database at `url`, logging at `level` to `log`, once it is ready.
async fn serve_ready(url: &str, level: &str, log: &std::path::Path) -> Service {
    let env = [
        ("DATABASE_URL", url),
        ("JOBEXEC__SECRETS__KEY", TEST_SECRET_KEY),
        ("RUST_LOG", level),
    ];
    let svc = Service::start(&["serve"], &env, free_port(), Some(log)).await;
    wait_for(&svc, "/health/ready", 200, Duration::from_secs(30)).await;
    svc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_with_verify_full_is_encrypted_and_a_wrong_name_or_ca_is_refused_with_why() {
    let Some(pg) = PgCluster::init() else { return };
    pg.start();
    let dir = tempfile::tempdir().unwrap();
    let ca = pg.ca.write(dir.path(), "db-ca.pem");

    // verify-full by the certificate's name, with the CA that signed it: the service runs on
    // it, every one of its connections encrypted.
    let url = pg.url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    let log = dir.path().join("serve.log");
    let svc = serve_ready(&url, "info", &log).await;
    let (status, server) = svc
        .call_json(
            reqwest::Method::POST,
            "/api/v1/servers",
            None,
            Some(
                json!({"name": "tls-db", "hostname": "127.0.0.1", "user": "u",
                        "auth_type": "password", "password": "pw"}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{server}");
    let (tls, plain) = pg.connections_by_tls();
    assert!(
        tls >= 1 && plain == 0,
        "{tls} TLS and {plain} plain connections"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("the PostgreSQL connection is encrypted") && text.contains("TLSv1."),
        "{text}"
    );
    drop(svc);

    // The same server by an address its certificate does not name: refused at start, and
    // the message names both.
    let (code, text) = run_to_exit(&[(
        "DATABASE_URL",
        &pg.url(
            "127.0.0.1",
            &format!("sslmode=verify-full&sslrootcert={ca}"),
        ),
    )]);
    assert_ne!(code, Some(0), "{text}");
    assert!(code.is_some(), "still running after 30 s: {text}");
    assert!(
        text.contains("\"localhost\"")
            && text.contains("\"127.0.0.1\"")
            && text.contains("verify-full"),
        "{text}"
    );

    // A CA that did not sign the server's certificate: refused, "unknown CA".
    let other = Ca::new("another CA").write(dir.path(), "other-ca.pem");
    let (code, text) = run_to_exit(&[(
        "DATABASE_URL",
        &pg.url(
            "localhost",
            &format!("sslmode=verify-ca&sslrootcert={other}"),
        ),
    )]);
    assert!(code.is_some_and(|c| c != 0), "{code:?}: {text}");
    assert!(
        text.contains("unknown CA") && text.contains(&other),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_tls_is_refused_under_require_and_a_plain_fallback_is_not_silent() {
    let Some(pg) = PgCluster::init() else { return };
    pg.start_with("-c ssl=off");
    // TLS required: refused, saying so.
    let (code, text) = run_to_exit(&[("DATABASE_URL", &pg.url("127.0.0.1", "sslmode=require"))]);
    assert!(code.is_some_and(|c| c != 0), "{code:?}: {text}");
    assert!(text.contains("server does not support SSL"), "{text}");
    // libpq's default (prefer) falls back to plain text: it runs, and the log says so.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("serve.log");
    let _svc = serve_ready(&pg.url("127.0.0.1", ""), "warn", &log).await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("the PostgreSQL connection is NOT encrypted")
            && text.contains("sslmode=verify-full"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_started_before_its_database_listens_and_is_ready_once_it_is_up() {
    let Some(pg) = PgCluster::init() else { return };
    let port = free_port();
    let url = pg.url("127.0.0.1", "sslmode=require");
    // The database is not running yet.
    let svc = Service::start(
        &["serve"],
        &[
            ("DATABASE_URL", url.as_str()),
            ("JOBEXEC__SECRETS__KEY", TEST_SECRET_KEY),
        ],
        port,
        None,
    )
    .await;
    let (status, ready) = svc
        .call_json(reqwest::Method::GET, "/health/ready", None, None)
        .await;
    assert_eq!(
        (status, ready),
        (
            503,
            json!({"status": "not ready", "database": false, "broker": null})
        )
    );
    let (status, health) = svc
        .call_json(reqwest::Method::GET, "/health", None, None)
        .await;
    assert_eq!(status, 503, "{health}");
    assert_eq!(health["database_backend"], "postgres");
    let (status, jobs) = svc
        .call_json(reqwest::Method::GET, "/api/v1/jobs", None, None)
        .await;
    assert_eq!(
        (status, &jobs["code"]),
        (503, &json!("unavailable")),
        "{jobs}"
    );

    pg.start();
    let ready = wait_for(&svc, "/health/ready", 200, Duration::from_secs(30)).await;
    assert_eq!(
        ready,
        json!({"status": "ready", "database": true, "broker": null})
    );
    let (status, jobs) = svc
        .call_json(reqwest::Method::GET, "/api/v1/jobs", None, None)
        .await;
    assert_eq!(status, 200, "{jobs}");
    let (status, _) = svc
        .call_json(reqwest::Method::GET, "/health", None, None)
        .await;
    assert_eq!(status, 200);
}

/// A TLS listener made for one test, in front of `upstream` (the machine's broker), with a
/// certificate for `names` signed by `ca`: what a managed broker's `amqps://` port is.
async fn tls_proxy(ca: &Ca, names: &[&str], upstream: &'static str) -> u16 {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let (cert, key) = ca.issue(names);
    let certs = CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(socket).await else {
                    return;
                };
                if let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
                }
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_over_amqps_runs_jobs_with_the_right_ca_and_is_refused_with_a_wrong_one() {
    // The distributed tests stop and start the shared broker: not while this one runs.
    let _serial = crate::distributed::SERIAL.lock().await;
    let Some(vhost) = Vhost::create() else { return };
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("job-executor test broker CA");
    let ca_file = ca.write(dir.path(), "broker-ca.pem");
    let proxy = tls_proxy(&ca, &["localhost"], "127.0.0.1:5672").await;
    let amqps = vhost
        .url()
        .replace("amqp://", "amqps://")
        .replace("127.0.0.1:5672", &format!("localhost:{proxy}"));
    let host = TestHost::start().await;

    // The CA that signed the listener's certificate: an api and a worker connect through
    // it (publish and confirm, the jobs queue, the control and the events exchanges), and a
    // job goes from one to the other.
    let Some(pg) = TestDb::create(Db::Postgres) else {
        return;
    };
    let tls_env = [
        ("RABBITMQ_URL", amqps.as_str()),
        ("JOBEXEC__RABBITMQ__CA_FILE", ca_file.as_str()),
    ];
    let port = free_port();
    let _api = Proc::spawn_with("api", "api", &pg, &vhost, port, &tls_env);
    let _worker = Proc::spawn_with("worker", "w1", &pg, &vhost, free_port(), &tls_env);
    let api = Service::attach(port).await;
    let ready = wait_for(&api, "/health/ready", 200, Duration::from_secs(30)).await;
    assert_eq!(ready["broker"], true, "{ready}");
    vhost.wait_consumers(1).await;
    let (status, server) = api
        .call_json(
            reqwest::Method::POST,
            "/api/v1/servers",
            None,
            Some(
                json!({"name": "h", "hostname": host.host, "port": host.port,
                        "user": host.user, "auth_type": "key",
                        "private_key": host.keys.ed25519_openssh}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{server}");
    let (status, job) = api
        .call_json(
            reqwest::Method::POST,
            "/api/v1/jobs",
            None,
            Some(json!({"command": "echo over-amqps", "server_id": server["id"]})),
        )
        .await;
    assert_eq!(status, 201, "{job}");
    let path = format!("/api/v1/jobs/{}", job["id"].as_str().unwrap());
    let start = Instant::now();
    let job = loop {
        let (_, job) = api.call_json(reqwest::Method::GET, &path, None, None).await;
        if job["status"] == "completed" {
            break job;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{job}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        (&job["exit_code"], &job["worker"]),
        (&json!(0), &json!("w1")),
        "{job}"
    );
    // Published through the broker (confirmed), not found by the database poll.
    {
        use diesel::{Connection, RunQueryDsl};
        #[derive(diesel::QueryableByName)]
        struct Row {
            #[diesel(sql_type = diesel::sql_types::Bool)]
            published: bool,
        }
        let mut c = diesel::PgConnection::establish(&pg.url).unwrap();
        let r: Row = diesel::sql_query(format!(
            "SELECT published FROM jobs WHERE id = '{}'",
            job["id"].as_str().unwrap()
        ))
        .get_result(&mut c)
        .unwrap();
        assert!(r.published, "{job}");
    }
    let db = dir.path().join("jobs.db").display().to_string();

    // A CA that did not sign it: never connected, not ready, and the log says why.
    let other = Ca::new("another CA").write(dir.path(), "other-ca.pem");
    let port = free_port();
    let log = dir.path().join("wrong-ca.log");
    let svc = Service::start(
        &["serve"],
        &[
            ("DATABASE_URL", db.as_str()),
            ("RABBITMQ_URL", amqps.as_str()),
            ("JOBEXEC__RABBITMQ__CA_FILE", other.as_str()),
            ("RUST_LOG", "warn"),
        ],
        port,
        Some(&log),
    )
    .await;
    let start = Instant::now();
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("RabbitMQ is not reachable") {
            break text;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(text.contains("unknown CA"), "{text}");
    let (status, ready) = svc
        .call_json(reqwest::Method::GET, "/health/ready", None, None)
        .await;
    assert_eq!((status, &ready["broker"]), (503, &json!(false)), "{ready}");
    drop(svc);

    // A CA file beside a plain amqp:// URL would look like TLS and not be: refused at start.
    let (code, text) = run_to_exit(&[
        ("DATABASE_URL", db.as_str()),
        ("RABBITMQ_URL", &vhost.url()),
        ("JOBEXEC__RABBITMQ__CA_FILE", ca_file.as_str()),
    ]);
    assert!(code.is_some_and(|c| c != 0), "{code:?}: {text}");
    assert!(text.contains("not amqps://"), "{text}");
}
