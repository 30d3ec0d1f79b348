//! `ssh::exec` against a real sshd (or the stand-in): the bootstrap's preamble and gate,
//! output, exit codes, environment and directory, scripts over stdin, cancellation by process
//! group, and channel-open retries. Drives the library directly (no HTTP).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use job_executor::domain::{ServerDraft, ServerPatch};
use job_executor::ssh::exec::{self, ExecEnd, ExecEvent, RemoteJob, RemoteWork};
use job_executor::ssh::{Client, SshError, SshOptions, SshTarget, connect};
use tokio::sync::mpsc;

use crate::helpers::TestHost;

/// Bound of any one job in these tests.
const JOB_BOUND: Duration = Duration::from_secs(10);

async fn connect_to(host: &TestHost) -> Client {
    let draft = ServerDraft::create(
        ServerPatch {
            name: Some("exec".into()),
            hostname: Some(host.host.clone()),
            port: Some(i64::from(host.port)),
            user: Some(host.user.clone()),
            auth_type: Some("key".into()),
            private_key: Some(host.keys.ed25519_openssh.clone().into()),
            ..Default::default()
        },
        10,
    )
    .expect("valid server");
    let target = SshTarget::from_server(&draft).expect("target");
    let opts = SshOptions {
        connect_timeout: Duration::from_secs(5),
        keepalive_interval: Duration::from_secs(15),
        keepalive_max: 3,
        known_hosts: None,
    };
    connect(&target, &opts).await.expect("connects").client
}

fn command(line: &str) -> RemoteJob {
    RemoteJob {
        work: RemoteWork::Command { line: line.into() },
        env: BTreeMap::new(),
        secret_env: BTreeMap::new(),
        cwd: None,
    }
}

/// Everything a job produced, in order.
#[derive(Debug)]
struct Outcome {
    events: Vec<ExecEvent>,
    end: Result<ExecEnd, SshError>,
}

impl Outcome {
    fn stdout(&self) -> Vec<u8> {
        self.events
            .iter()
            .filter_map(|e| match e {
                ExecEvent::Stdout(b) => Some(&b[..]),
                _ => None,
            })
            .flatten()
            .copied()
            .collect()
    }

    fn stdout_text(&self) -> String {
        String::from_utf8(self.stdout()).expect("utf-8 stdout")
    }

    fn stderr_text(&self) -> String {
        let bytes: Vec<u8> = self
            .events
            .iter()
            .filter_map(|e| match e {
                ExecEvent::Stderr(b) => Some(&b[..]),
                _ => None,
            })
            .flatten()
            .copied()
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The `Started` event, which must be the first one and the only one.
    fn started(&self) -> (i64, Option<String>) {
        let started: Vec<_> = self
            .events
            .iter()
            .filter(|e| matches!(e, ExecEvent::Started { .. }))
            .collect();
        assert_eq!(started.len(), 1, "{:?}", self.events);
        match self.events.first() {
            Some(ExecEvent::Started { pgid, tmpfile }) => (*pgid, tmpfile.clone()),
            other => panic!("the first event is not Started: {other:?}"),
        }
    }

    fn exit(&self) -> ExecEnd {
        self.end
            .clone()
            .unwrap_or_else(|e| panic!("job failed: {e}"))
    }
}

/// Run `job` on a new channel of `client` and collect what it produced.
async fn run_job(client: &Client, job: &RemoteJob) -> Outcome {
    let work = async {
        let channel = exec::open_channel(client).await.expect("channel opens");
        let (tx, mut rx) = mpsc::channel(16);
        let collect = async {
            let mut events = Vec::new();
            while let Some(e) = rx.recv().await {
                events.push(e);
            }
            events
        };
        let (end, events) = tokio::join!(exec::run(channel, job, tx), collect);
        Outcome { events, end }
    };
    tokio::time::timeout(JOB_BOUND, work)
        .await
        .expect("the job ends in time")
}

async fn run_line(client: &Client, line: &str) -> Outcome {
    run_job(client, &command(line)).await
}

/// Kills a process group locally if a test fails before it is gone (the test hosts are on
/// this machine), so no test leaves processes behind.
struct Reaper(Option<i64>);

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Some(pgid) = self.0.take()
            && pgid > 1
        {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pgid}")])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// On a CPU with AES instructions the connection is encrypted with AES-GCM (hardware on both
/// ends), elsewhere with ChaCha20-Poly1305.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cipher_is_aes_gcm_where_the_cpu_has_aes() {
    let host = TestHost::start().await;
    let client = connect_to(&host).await;
    let expected = if job_executor::ssh::hardware_aes() {
        "aes256-gcm@openssh.com"
    } else {
        "chacha20-poly1305@openssh.com"
    };
    assert_eq!(client.cipher(), Some(expected));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_job_streams_output_env_cwd_and_exit_code() {
    let host = TestHost::start().await;
    let client = connect_to(&host).await;
    let dir = tempfile::Builder::new()
        .prefix("job exec 'dir' ")
        .tempdir()
        .unwrap();
    let cwd = dir.path().display().to_string();
    let greeting = "it's a \"quoted\" value with $HOME, `backticks` and  spaces";
    let odd = "a'b''c\\ $(echo no) \n second line";
    let job = RemoteJob {
        work: RemoteWork::Command {
            line: r#"printf '%s|%s|%s\n' "$GREETING" "$ODD" "$(pwd)"; ps -o pgid= -p $$; echo oops >&2; exit 3"#.into(),
        },
        env: BTreeMap::from([
            ("GREETING".to_string(), greeting.to_string()),
            ("ODD".to_string(), odd.to_string()),
        ]),
        secret_env: BTreeMap::new(),
        cwd: Some(cwd.clone()),
    };
    let out = run_job(&client, &job).await;
    assert_eq!(out.exit(), ExecEnd::Exited(3));
    let (pgid, tmpfile) = out.started();
    assert_eq!(tmpfile, None);
    let stdout = out.stdout_text();
    let (values, pgid_line) = stdout.trim_end().rsplit_once('\n').expect("two parts");
    assert_eq!(values, format!("{greeting}|{odd}|{cwd}"));
    assert_eq!(pgid_line.trim(), pgid.to_string(), "{stdout}");
    assert_eq!(out.stderr_text(), "oops\n");

    // A directory that does not exist: exit 126 and the shell's message, not a protocol error.
    let mut job = command("echo never");
    job.cwd = Some(dir.path().join("missing").display().to_string());
    let out = run_job(&client, &job).await;
    assert_eq!(out.exit(), ExecEnd::Exited(exec::CWD_FAILED));
    assert!(out.stdout().is_empty());
    assert!(!out.stderr_text().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stdin_goes_with_the_exec_and_started_comes_before_any_output() {
    let host = TestHost::start().await;
    let client = connect_to(&host).await;
    let dir = tempfile::tempdir().unwrap();
    // The login may be another account than the test's (CI logs in as a test account).
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let flag = dir.path().join("ran");
    let job = command(&format!("touch '{}'; echo done", flag.display()));
    let channel = exec::open_channel(&client).await.unwrap();
    // A full events buffer holds `run` at its `Started` event, before it has handed on the
    // preamble: the command runs all the same, since its stdin (the gate) went with the exec
    // request instead of waiting for the preamble to come back.
    let (tx, mut rx) = mpsc::channel(1);
    tx.send(ExecEvent::Stdout(b"placeholder"[..].into()))
        .await
        .unwrap();
    let running = tokio::spawn(async move { exec::run(channel, &job, tx).await });
    let start = Instant::now();
    while !flag.exists() {
        assert!(
            start.elapsed() < JOB_BOUND,
            "the command did not run while the client held its preamble"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        rx.recv().await,
        Some(ExecEvent::Stdout(b"placeholder"[..].into()))
    );
    // Started, with the group, comes before the job's first output.
    assert!(matches!(rx.recv().await, Some(ExecEvent::Started { pgid, .. }) if pgid > 1));
    assert_eq!(
        rx.recv().await,
        Some(ExecEvent::Stdout(b"done\n"[..].into()))
    );
    let end = tokio::time::timeout(JOB_BOUND, running)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(end, Ok(ExecEnd::Exited(0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_job_runs_from_a_private_temp_file_that_is_removed() {
    let host = TestHost::start().await;
    let client = connect_to(&host).await;
    let marker = format!("marker-{}", uuid::Uuid::new_v4().simple());
    let script = format!(
        "#!/bin/bash\n# {marker}\necho \"args: [$1] [$2] ($#)\"\necho \"self: $0\"\n\
         echo ready\nsleep 1\necho \"bash: ${{BASH_VERSION:+yes}}\"\nexit 7\n"
    );
    let job = RemoteJob {
        work: RemoteWork::Script {
            shell: "/bin/bash".into(),
            script: script.into_bytes(),
            args: "\"first arg\" second".into(),
        },
        env: BTreeMap::new(),
        secret_env: BTreeMap::new(),
        cwd: None,
    };
    let channel = exec::open_channel(&client).await.unwrap();
    let (tx, mut rx) = mpsc::channel(16);
    let running = tokio::spawn(async move { exec::run(channel, &job, tx).await });

    let tmpfile = match rx.recv().await {
        Some(ExecEvent::Started {
            tmpfile: Some(f), ..
        }) => f,
        other => panic!("expected Started with a temp file, got {other:?}"),
    };
    assert!(tmpfile.contains("/jobexec."), "{tmpfile}");
    let mut stdout = Vec::new();
    while !String::from_utf8_lossy(&stdout).contains("ready\n") {
        match tokio::time::timeout(JOB_BOUND, rx.recv()).await.unwrap() {
            Some(ExecEvent::Stdout(b)) => stdout.extend_from_slice(&b),
            Some(other) => panic!("unexpected {other:?}"),
            None => panic!("ended before ready: {:?}", String::from_utf8_lossy(&stdout)),
        }
    }

    // While it runs: the script's text is in no command line, its file is private.
    let ps = run_line(&client, "ps -eo args").await;
    assert_eq!(ps.exit(), ExecEnd::Exited(0));
    let listing = ps.stdout_text();
    assert!(
        listing.contains(&tmpfile),
        "the job is not in ps: {listing}"
    );
    assert!(!listing.contains(&marker), "the script is visible in ps");
    let mode = run_line(&client, &format!("stat -c %a '{tmpfile}'")).await;
    assert_eq!(mode.stdout_text().trim(), "600");

    while let Some(event) = tokio::time::timeout(JOB_BOUND, rx.recv()).await.unwrap() {
        match event {
            ExecEvent::Stdout(b) => stdout.extend_from_slice(&b),
            ExecEvent::Stderr(b) => panic!("stderr: {}", String::from_utf8_lossy(&b)),
            other => panic!("unexpected {other:?}"),
        }
    }
    let end = running.await.unwrap();
    assert_eq!(end, Ok(ExecEnd::Exited(7)));
    assert_eq!(
        String::from_utf8(stdout).unwrap(),
        format!("args: [first arg] [second] (2)\nself: {tmpfile}\nready\nbash: yes\n")
    );

    let gone = run_line(&client, &format!("test -e '{tmpfile}'")).await;
    assert_eq!(
        gone.exit(),
        ExecEnd::Exited(1),
        "the temp file is still there"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_job_with_env_cwd_and_a_bad_args_syntax() {
    let host = TestHost::start().await;
    let client = connect_to(&host).await;
    let dir = tempfile::tempdir().unwrap();
    let job = RemoteJob {
        work: RemoteWork::Script {
            shell: "/bin/sh".into(),
            script: b"printf '%s %s %s\\n' \"$V\" \"$(pwd)\" \"$1\"".to_vec(),
            args: "'one two'".into(),
        },
        env: BTreeMap::from([("V".to_string(), "x'y".to_string())]),
        secret_env: BTreeMap::new(),
        cwd: Some(dir.path().display().to_string()),
    };
    let out = run_job(&client, &job).await;
    assert_eq!(out.exit(), ExecEnd::Exited(0), "{}", out.stderr_text());
    assert_eq!(
        out.stdout_text(),
        format!("x'y {} one two\n", dir.path().display())
    );

    // A script far larger than the channel window arrives whole.
    let mut big = b"echo \"size=$(wc -c < \"$0\")\"\n".to_vec();
    while big.len() < 3 << 20 {
        big.extend_from_slice(b"# padding padding padding padding padding padding padding\n");
    }
    let size = big.len();
    let job = RemoteJob {
        work: RemoteWork::Script {
            shell: "/bin/sh".into(),
            script: big,
            args: String::new(),
        },
        env: BTreeMap::new(),
        secret_env: BTreeMap::new(),
        cwd: None,
    };
    let out = run_job(&client, &job).await;
    assert_eq!(out.exit(), ExecEnd::Exited(0), "{}", out.stderr_text());
    assert_eq!(out.stdout_text(), format!("size={size}\n"));

    // Unbalanced quotes in the arguments are the user's syntax error, and the file still goes.
    let job = RemoteJob {
        work: RemoteWork::Script {
            shell: "/bin/sh".into(),
            script: b"echo never".to_vec(),
            args: "'unbalanced".into(),
        },
        env: BTreeMap::new(),
        secret_env: BTreeMap::new(),
        cwd: None,
    };
    let out = run_job(&client, &job).await;
    let (_, tmpfile) = out.started();
    assert!(matches!(out.exit(), ExecEnd::Exited(c) if c != 0));
    assert!(!out.stderr_text().is_empty());
    let tmpfile = tmpfile.expect("temp file");
    let gone = run_line(&client, &format!("test -e '{tmpfile}'")).await;
    assert_eq!(
        gone.exit(),
        ExecEnd::Exited(1),
        "the temp file is still there"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_bytes_pass_through_unchanged() {
    let host = TestHost::start().await;
    let client = connect_to(&host).await;
    let out = run_line(&client, r"printf '\377\376abc'; printf '\000\200' >&2").await;
    assert_eq!(out.exit(), ExecEnd::Exited(0));
    assert_eq!(out.stdout(), b"\xff\xfeabc");
    let stderr: Vec<u8> = out
        .events
        .iter()
        .filter_map(|e| match e {
            ExecEvent::Stderr(b) => Some(b.iter().copied()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(stderr, b"\x00\x80");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_group_stops_the_whole_process_group() {
    let host = TestHost::start().await;
    let client = connect_to(&host).await;
    let job = command("trap '' TERM; (sleep 300 & sleep 300 & wait) ; sleep 300");
    let channel = exec::open_channel(&client).await.unwrap();
    let (tx, mut rx) = mpsc::channel(16);
    let running = tokio::spawn(async move { exec::run(channel, &job, tx).await });
    let pgid = match rx.recv().await {
        Some(ExecEvent::Started { pgid, tmpfile }) => {
            assert_eq!(tmpfile, None);
            pgid
        }
        other => panic!("expected Started, got {other:?}"),
    };
    let mut reaper = Reaper(Some(pgid));

    // Wait for the group to be complete: the shell, the subshell and two sleeps.
    let count = format!("ps -eo pgid=,stat= | awk '$1 == {pgid} && $2 !~ /^Z/' | wc -l");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = run_line(&client, &count).await.stdout_text();
        if n.trim().parse::<u32>().unwrap_or(0) >= 4 {
            break;
        }
        assert!(Instant::now() < deadline, "the group never grew: {n}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let started = Instant::now();
    exec::kill_group(&client, pgid, Duration::from_secs(1), None)
        .await
        .expect("kill_group");
    let end = tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("run ends after the kill")
        .unwrap();
    let took = started.elapsed();
    assert!(
        matches!(&end, Ok(ExecEnd::Signaled(s)) if s == "KILL" || s == "TERM"),
        "{end:?}"
    );
    assert!(took < Duration::from_secs(4), "took {took:?}");
    while rx.recv().await.is_some() {}

    // No live process is left in the group (zombies waiting for a slow reaper of orphans,
    // as this machine's init is, are dead already).
    let live = format!("ps -eo pid=,pgid=,stat=,args= | awk '$2 == {pgid} && $3 !~ /^Z/'");
    let left = run_line(&client, &live).await;
    assert_eq!(left.exit(), ExecEnd::Exited(0));
    assert_eq!(left.stdout_text(), "", "left in group {pgid}");
    reaper.0 = None;

    // A group that is already gone is not an error, and the temp file is removed. The file
    // is made by the login (which may be another account than the test's), as a job's is.
    let made = run_line(&client, "mktemp /tmp/jobexec-test.XXXXXX").await;
    let path = made.stdout_text().trim().to_string();
    assert!(std::path::Path::new(&path).exists(), "{path}");
    exec::kill_group(&client, pgid, Duration::from_millis(200), Some(&path))
        .await
        .expect("kill_group on a gone group");
    assert!(!std::path::Path::new(&path).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_syntax_error_is_the_users_failure_not_a_protocol_error() {
    let host = TestHost::start().await;
    let client = connect_to(&host).await;
    let out = run_line(&client, "echo 'unterminated").await;
    out.started();
    assert!(
        matches!(out.exit(), ExecEnd::Exited(c) if c != 0),
        "{:?}",
        out.end
    );
    assert!(!out.stderr_text().is_empty());
    assert!(out.stdout().is_empty());
}

/// A hostile server sends messages for channel ids the client never opened (an open failure,
/// an unsolicited channel, EOF and close of channel 0) while a job runs: nothing panics, the
/// job's own output and exit status stand, and the connection goes on serving jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stray_channel_messages_do_not_touch_the_job() {
    let host = TestHost::start_standin_forging().await;
    let client = connect_to(&host).await;
    for round in 0..2 {
        let out = run_line(&client, "sleep 0.3; echo real; echo oops >&2; exit 3").await;
        out.started();
        assert_eq!(out.exit(), ExecEnd::Exited(3), "round {round}: {out:?}");
        assert_eq!(out.stdout_text(), "real\n", "round {round}");
        assert_eq!(out.stderr_text(), "oops\n", "round {round}");
    }
    assert!(!client.is_closed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twelve_concurrent_jobs_share_one_connection() {
    let host = TestHost::start().await;
    let client = connect_to(&host).await;

    // The host does refuse an 11th session: with ten held, a plain open fails...
    let mut held = Vec::new();
    for _ in 0..10 {
        held.push(exec::open_channel(&client).await.unwrap());
    }
    let refused = client.channel_open_session().await;
    assert!(
        matches!(refused, Err(russh::Error::ChannelOpenFailure(_))),
        "{refused:?}"
    );
    // ...while a job waits for a slot and gets one when they are closed.
    let late = {
        let client = client.clone();
        tokio::spawn(async move { run_line(&client, "echo late").await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!late.is_finished());
    for channel in held {
        channel.close().await.unwrap();
    }
    let late = late.await.unwrap();
    assert_eq!(late.exit(), ExecEnd::Exited(0));
    assert_eq!(late.stdout_text(), "late\n");

    let started = Instant::now();
    let jobs = (0..12).map(|i| {
        let client = client.clone();
        tokio::spawn(async move {
            let out = run_line(&client, &format!("echo job-{i}; sleep 0.5")).await;
            (i, out)
        })
    });
    for job in futures::future::join_all(jobs).await {
        let (i, out) = job.unwrap();
        assert_eq!(out.exit(), ExecEnd::Exited(0), "job {i}");
        assert_eq!(out.stdout_text(), format!("job-{i}\n"));
        out.started();
    }
    assert!(
        started.elapsed() < JOB_BOUND,
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn build_validates_names_shells_and_directories() {
    for bad in ["", "1ABC", "A-B", "A B", "É", "A=B"] {
        let mut job = command("true");
        job.env.insert(bad.into(), "v".into());
        assert!(exec::build(&job).is_err(), "{bad:?} accepted");
    }
    for good in ["A", "_", "a_1", "PATH", "_X9"] {
        let mut job = command("true");
        job.env.insert(good.into(), "v".into());
        assert!(exec::build(&job).is_ok(), "{good:?} refused");
    }
    let script = |shell: &str| RemoteJob {
        work: RemoteWork::Script {
            shell: shell.into(),
            script: b"echo hi".to_vec(),
            args: String::new(),
        },
        env: BTreeMap::new(),
        secret_env: BTreeMap::new(),
        cwd: None,
    };
    assert!(exec::build(&script("bash")).is_err());
    assert!(exec::build(&script("./bin/bash")).is_err());
    assert!(exec::build(&script("")).is_err());
    assert!(exec::build(&script("/bin/bash")).is_ok());

    let mut job = command("true");
    job.cwd = Some(String::new());
    assert!(exec::build(&job).is_err());
    let mut job = command("true");
    job.env.insert("A".into(), "nul\0".into());
    assert!(exec::build(&job).is_err());
    assert!(exec::build(&command("  ")).is_err());
    assert!(exec::build(&command("a\0b")).is_err());
}

#[test]
fn build_quotes_everything_and_keeps_scripts_off_the_command_line() {
    let mut job = command("echo 'it''s' \"$X\"");
    job.env.insert("X".into(), "a'b".into());
    job.cwd = Some("/tmp/it's here".into());
    let (line, payload) = exec::build(&job).unwrap();
    assert!(line.starts_with("exec /bin/sh -c '"), "{line}");
    assert!(line.ends_with('\''), "{line}");
    // A plain command reads no stdin: nothing to send, so nothing waits on sshd's window.
    assert!(payload.is_empty(), "{payload:?}");
    // `export X='a'\''b'` inside the bootstrap, whose every ' is quoted again.
    let export = r"export X='a'\''b'".replace('\'', r"'\''");
    assert!(line.contains(&export), "{line}");
    // Run it with the local /bin/sh: the quoting survives both levels.
    let dir = tempfile::Builder::new().prefix("it's ").tempdir().unwrap();
    let mut job = command(r#"printf '%s|%s|%s' 'it''s' "$X" "$(pwd)""#);
    job.env.insert("X".into(), "a'b \\ $Y `z`".into());
    job.cwd = Some(dir.path().display().to_string());
    let (line, payload) = exec::build(&job).unwrap();
    let out = run_locally(&line, &payload);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    let (preamble, rest) = text.split_once('\n').unwrap();
    assert!(preamble.starts_with("JOBEXEC "), "{text}");
    assert_eq!(rest, format!("its|a'b \\ $Y `z`|{}", dir.path().display()));

    let secret = "SCRIPT-BODY-42";
    let job = RemoteJob {
        work: RemoteWork::Script {
            shell: "/bin/bash".into(),
            script: format!("echo {secret}\n").into_bytes(),
            args: "a b".into(),
        },
        env: BTreeMap::new(),
        secret_env: BTreeMap::new(),
        cwd: None,
    };
    let (line, payload) = exec::build(&job).unwrap();
    assert!(!line.contains(secret), "{line}");
    assert!(line.contains("head -c 20 "), "{line}");
    assert_eq!(payload, format!("\necho {secret}\n").into_bytes());
    let out = run_locally(&line, &payload);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).ends_with(&format!("\n{secret}\n")));
}

/// Run an exec line with the local /bin/sh, `payload` on its stdin.
fn run_locally(line: &str, payload: &[u8]) -> std::process::Output {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(line)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(payload).unwrap();
    child.wait_with_output().unwrap()
}
