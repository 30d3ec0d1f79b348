//! Phase `link`: the same sshd behind a TCP proxy that delays each direction by 25 ms (a 50 ms
//! round trip; this kernel has no netem), one job at a time and 50 jobs 10-way, ours beside a
//! fresh `ssh host true` and OpenSSH ControlMaster, each also in round trips.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::helpers::{TestApp, TestHost};
use super::{ControlMaster, quantile, ssh_args_on};

/// One way of the link.
pub const ONE_WAY: Duration = Duration::from_millis(25);

/// A loopback TCP proxy to `upstream` that holds every chunk it reads for `delay` before
/// writing it on, in both directions, without limiting the rate (chunks are queued, not
/// waited on one by one). Lives as long as the runtime.
pub async fn delaying_proxy(upstream: u16, delay: Duration) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((down, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(up) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                    return;
                };
                let _ = down.set_nodelay(true);
                let _ = up.set_nodelay(true);
                let (dr, dw) = down.into_split();
                let (ur, uw) = up.into_split();
                tokio::spawn(pump(dr, uw, delay));
                tokio::spawn(pump(ur, dw, delay));
            });
        }
    });
    port
}

/// Copy `from` to `to`, each chunk `delay` after it was read; EOF travels the same way.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if chunk.is_empty() || to.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buf).await.unwrap_or(0);
        let due = tokio::time::Instant::now() + delay;
        if tx.send((due, buf[..n].to_vec())).is_err() || n == 0 {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
}

/// Seconds of one `ssh` run of `true` with `args`.
fn ssh_once(args: &[String]) -> f64 {
    let start = Instant::now();
    let st = Command::new("ssh")
        .args(args)
        .arg("true")
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    start.elapsed().as_secs_f64()
}

/// Seconds for `n` runs of `ssh … true` with `args`, `par` at a time.
fn ssh_parallel(args: &[String], n: usize, par: usize) -> f64 {
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let threads: Vec<_> = (0..par)
        .map(|_| {
            let (args, next) = (args.to_vec(), next.clone());
            std::thread::spawn(move || {
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                    ssh_once(&args);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    start.elapsed().as_secs_f64()
}

/// Submit `true` on `server` and wait (polling every millisecond) for its end: seconds from
/// the request to the client seeing `completed`.
async fn our_job_once(app: &TestApp, server: &str) -> f64 {
    let start = Instant::now();
    let (status, job) = app
        .post(
            "/api/v1/jobs",
            &json!({"command": "true", "server_id": server}),
        )
        .await;
    assert_eq!(status, 201, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    wait_done(app, &id).await;
    start.elapsed().as_secs_f64()
}

async fn wait_done(app: &TestApp, id: &str) {
    let start = Instant::now();
    loop {
        let (_, job) = app.get(&format!("/api/v1/jobs/{id}")).await;
        match job["status"].as_str().unwrap() {
            "queued" | "running" => {}
            "completed" => return,
            other => panic!("job {id} ended {other}: {job}"),
        }
        assert!(start.elapsed() < Duration::from_secs(60), "job {id} hangs");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// `n` jobs `true` submitted at once on `server`: seconds until the last is done.
async fn our_jobs_batch(app: &TestApp, server: &str, n: usize) -> f64 {
    let start = Instant::now();
    let mut ids = Vec::new();
    for _ in 0..n {
        let (status, job) = app
            .post(
                "/api/v1/jobs",
                &json!({"command": "true", "server_id": server}),
            )
            .await;
        assert_eq!(status, 201, "{job}");
        ids.push(job["id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        wait_done(app, id).await;
    }
    start.elapsed().as_secs_f64()
}

/// The median of `runs` calls of `f`.
async fn median_of<F, Fut>(runs: usize, mut f: F) -> f64
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = f64>,
{
    let mut samples = Vec::new();
    for _ in 0..runs {
        samples.push(f().await);
    }
    quantile(&samples, 0.5)
}

pub async fn link_phase(app: &TestApp, host: &TestHost, runs: usize) {
    let rtt = 2.0 * ONE_WAY.as_secs_f64();
    let port = delaying_proxy(host.port, ONE_WAY).await;
    println!(
        "(link: a TCP proxy delaying each direction by {} ms in front of the same sshd: RTT {} ms; medians of {runs})",
        ONE_WAY.as_millis(),
        rtt * 1000.0
    );

    let fresh_args = ssh_args_on(host, port, "none");
    let fresh = median_of(runs.min(3), || {
        let a = fresh_args.clone();
        async move { ssh_once(&a) }
    })
    .await;
    println!(
        "baseline  fresh `ssh host true`                    {:>7.0} ms  ({:.1} RTT)",
        fresh * 1000.0,
        fresh / rtt
    );
    let master = ControlMaster::start(host, port, "link-cm.sock", &[]);
    let cm_args = master.args.clone();
    let cm_one = median_of(runs, || {
        let a = cm_args.clone();
        async move { ssh_once(&a) }
    })
    .await;
    println!(
        "baseline  ControlMaster `ssh -S host true`         {:>7.0} ms  ({:.1} RTT)",
        cm_one * 1000.0,
        cm_one / rtt
    );
    let cm_batch = ssh_parallel(&cm_args, 50, 10);
    println!(
        "baseline  ControlMaster, 50 x true 10-way          {:>7.2} s   ({:.1} RTT)",
        cm_batch,
        cm_batch / rtt
    );
    drop(master);

    let (open, exec) = our_client_once(host, port, runs).await;
    println!(
        "ours      the SSH client alone, warm: open        {:>7.0} ms  ({:.1} RTT); exec `true` {:.0} ms ({:.1} RTT)",
        open * 1000.0,
        open / rtt,
        exec * 1000.0,
        exec / rtt
    );

    let (status, server) = app
        .post(
            "/api/v1/servers",
            &json!({"name": "link", "hostname": host.host, "port": port, "user": host.user,
                    "auth_type": "key", "private_key": host.keys.ed25519_openssh,
                    "max_concurrent_jobs": 10}),
        )
        .await;
    assert_eq!(status, 201, "{server}");
    let server = server["id"].as_str().unwrap().to_string();
    // Warm: the host key pinned, the login shell probed, the pool at its 10-way size.
    our_jobs_batch(app, &server, 20).await;
    let ours_one = median_of(runs, || our_job_once(app, &server)).await;
    println!(
        "ours      one warm job `true`, submit -> completed {:>7.0} ms  ({:.1} RTT; {:.2}x ControlMaster, target <= 1.1x)",
        ours_one * 1000.0,
        ours_one / rtt,
        ours_one / cm_one
    );
    let ours_batch = our_jobs_batch(app, &server, 50).await;
    println!(
        "ours      50 jobs `true`, 10 slots                 {:>7.2} s   ({:.1} RTT; {:.2}x ControlMaster, target <= 1.1x)",
        ours_batch,
        ours_batch / rtt,
        ours_batch / cm_batch
    );
}

/// Our SSH client alone on one warm connection through the proxy at `port`: the medians of
/// `runs` channel opens and of `runs` runs of the job `true` on them (`exec::run`), seconds.
async fn our_client_once(host: &TestHost, port: u16, runs: usize) -> (f64, f64) {
    use job_executor::domain::{ServerDraft, ServerPatch};
    use job_executor::ssh::exec::{self, RemoteJob, RemoteWork};
    use job_executor::ssh::{self, SshOptions, SshTarget};
    let draft = ServerDraft::create(
        ServerPatch {
            name: Some("link-raw".into()),
            hostname: Some(host.host.clone()),
            port: Some(i64::from(port)),
            user: Some(host.user.clone()),
            private_key: Some(host.keys.ed25519_openssh.clone().into()),
            host_key: Some(super::host_key_line(host)),
            ..Default::default()
        },
        10,
    )
    .unwrap();
    let target = SshTarget::from_server(&draft).unwrap();
    let opts = SshOptions {
        connect_timeout: Duration::from_secs(10),
        keepalive_interval: Duration::from_secs(15),
        keepalive_max: 3,
        known_hosts: None,
    };
    let conn = ssh::connect(&target, &opts).await.unwrap();
    let job = RemoteJob {
        work: RemoteWork::Command {
            line: "true".into(),
        },
        env: Default::default(),
        secret_env: Default::default(),
        cwd: None,
    };
    let (mut opens, mut execs) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let start = Instant::now();
        let channel = exec::open_channel(&conn.client).await.unwrap();
        opens.push(start.elapsed().as_secs_f64());
        let (tx, mut rx) = mpsc::channel(64);
        let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
        let start = Instant::now();
        exec::run(channel, &job, tx).await.unwrap();
        execs.push(start.elapsed().as_secs_f64());
        drain.await.unwrap();
    }
    let _ = conn.client.disconnect().await;
    (quantile(&opens, 0.5), quantile(&execs, 0.5))
}
