//! Test SSH hosts: a real OpenSSH `sshd` on a free loopback port, with keys made for the
//! test, when `/usr/sbin/sshd` exists; otherwise the in-process stand-in (`standin.rs`) behind
//! the same interface. Under `CI=true` a missing sshd is a failure, not a fallback.
//!
//! Password logins need a system account with a password, which tests do not create:
//! `.ci/run` makes one and passes it as `JOBEXEC_TEST_SSH_USER` / `JOBEXEC_TEST_SSH_PASSWORD`.
//! Without them, [`TestHost::start_with_password`] uses the stand-in.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::in_ci;
use super::standin::{StandIn, StandInConfig};

const SSHD: &str = "/usr/sbin/sshd";

/// Client keys made for one test host.
#[derive(Clone)]
pub struct TestKeys {
    /// Authorized ed25519 key, OpenSSH format.
    pub ed25519_openssh: String,
    /// Authorized RSA key, PEM (PKCS#1) format.
    pub rsa_pem: String,
    /// Authorized ed25519 key, OpenSSH format, encrypted with `passphrase`.
    pub encrypted_openssh: String,
    /// Passphrase of `encrypted_openssh`.
    pub passphrase: String,
    /// A valid key that is NOT authorized.
    pub unauthorized_openssh: String,
}

/// What is behind a test host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKind {
    OpenSsh,
    StandIn,
}

enum Inner {
    OpenSsh { child: Child },
    StandIn(#[allow(dead_code)] StandIn),
}

/// A running SSH server for one test.
pub struct TestHost {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub keys: TestKeys,
    pub kind: HostKind,
    /// `SHA256:…` of the host key.
    pub host_key_fingerprint: String,
    pub dir: tempfile::TempDir,
    inner: Option<Inner>,
}

fn have_sshd() -> bool {
    let present = Path::new(SSHD).exists() && Path::new("/usr/bin/ssh-keygen").exists();
    if !present && in_ci() {
        panic!("CI=true but {SSHD} (openssh-server) is missing: .ci/run installs it");
    }
    present
}

fn keygen(dir: &Path, name: &str, args: &[&str]) -> PathBuf {
    let path = dir.join(name);
    let status = Command::new("ssh-keygen")
        .args(args)
        .arg("-q")
        .arg("-f")
        .arg(&path)
        .args(["-C", name])
        .stdout(Stdio::null())
        .status()
        .expect("run ssh-keygen");
    assert!(status.success(), "ssh-keygen {args:?} failed");
    path
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn fingerprint_of_pub(path: &Path) -> String {
    let line = read(path);
    let key = russh::keys::PublicKey::from_openssh(line.trim()).expect("public key");
    key.fingerprint(russh::keys::HashAlg::Sha256).to_string()
}

/// Make client keys and a host key in `dir` with ssh-keygen, or load the committed
/// fallbacks when ssh-keygen is absent.
fn make_keys(dir: &Path) -> (TestKeys, Vec<String>) {
    if Path::new("/usr/bin/ssh-keygen").exists() {
        let ed = keygen(dir, "id_ed25519", &["-t", "ed25519", "-N", ""]);
        let rsa = keygen(
            dir,
            "id_rsa",
            &["-t", "rsa", "-b", "2048", "-m", "PEM", "-N", ""],
        );
        let enc = keygen(dir, "id_enc", &["-t", "ed25519", "-N", "open sesame"]);
        let other = keygen(dir, "id_other", &["-t", "ed25519", "-N", ""]);
        let authorized = vec![
            read(&ed.with_extension("pub")),
            read(&rsa.with_extension("pub")),
            read(&enc.with_extension("pub")),
        ];
        let _ = other;
        (
            TestKeys {
                ed25519_openssh: read(&ed),
                rsa_pem: read(&rsa),
                encrypted_openssh: read(&enc),
                passphrase: "open sesame".into(),
                unauthorized_openssh: read(&dir.join("id_other")),
            },
            authorized,
        )
    } else {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keys");
        let authorized = ["id_ed25519.pub", "id_rsa.pub", "id_enc.pub"]
            .iter()
            .map(|f| read(&fixtures.join(f)))
            .collect();
        (
            TestKeys {
                ed25519_openssh: read(&fixtures.join("id_ed25519")),
                rsa_pem: read(&fixtures.join("id_rsa")),
                encrypted_openssh: read(&fixtures.join("id_enc")),
                passphrase: "open sesame".into(),
                unauthorized_openssh: read(&fixtures.join("id_other")),
            },
            authorized,
        )
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn current_user() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(|| {
            Command::new("id")
                .arg("-un")
                .output()
                .ok()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        })
        .unwrap_or_else(|| "root".into())
}

impl TestHost {
    /// A host accepting the test keys. On the real sshd the login is
    /// `JOBEXEC_TEST_SSH_USER` when set (CI makes that account, with `/bin/sh` as its shell, so
    /// no rc file of the current user's shell runs before every command), else the current
    /// user.
    pub async fn start() -> TestHost {
        if have_sshd() {
            let user = std::env::var("JOBEXEC_TEST_SSH_USER")
                .ok()
                .filter(|u| !u.is_empty());
            Self::start_openssh(None, user).await
        } else {
            Self::start_standin(None).await
        }
    }

    /// A real sshd accepting the test keys for `user`.
    pub async fn start_as(user: &str) -> TestHost {
        assert!(have_sshd(), "needs {SSHD}");
        Self::start_openssh(None, Some(user.to_string())).await
    }

    /// A host that also accepts a password: real sshd with the CI-made account, else the
    /// stand-in.
    pub async fn start_with_password() -> TestHost {
        let account = std::env::var("JOBEXEC_TEST_SSH_USER")
            .ok()
            .zip(std::env::var("JOBEXEC_TEST_SSH_PASSWORD").ok());
        match account {
            Some(account) if have_sshd() => Self::start_openssh(Some(account), None).await,
            None if in_ci() => panic!(
                "CI=true but JOBEXEC_TEST_SSH_USER/JOBEXEC_TEST_SSH_PASSWORD are not set: \
                 .ci/run makes the password account"
            ),
            _ => Self::start_standin(Some("correct horse battery".into())).await,
        }
    }

    /// Always the in-process stand-in.
    pub async fn start_standin(password: Option<String>) -> TestHost {
        Self::standin(password, false).await
    }

    /// The stand-in playing a hostile server: in the middle of every job it sends messages
    /// for channels the client never opened.
    pub async fn start_standin_forging() -> TestHost {
        Self::standin(None, true).await
    }

    async fn standin(password: Option<String>, forge_stray_messages: bool) -> TestHost {
        let dir = tempfile::tempdir().expect("tempdir");
        let (keys, authorized) = make_keys(dir.path());
        let host_key = russh::keys::PrivateKey::random(
            &mut russh::keys::key::safe_rng(),
            russh::keys::Algorithm::Ed25519,
        )
        .expect("host key");
        let fp = host_key
            .public_key()
            .fingerprint(russh::keys::HashAlg::Sha256)
            .to_string();
        let user = current_user();
        let standin = StandIn::start(StandInConfig {
            user: user.clone(),
            password: password.clone(),
            authorized_keys: authorized
                .iter()
                .map(|l| russh::keys::PublicKey::from_openssh(l.trim()).expect("pub"))
                .collect(),
            host_key,
            forge_stray_messages,
        })
        .await
        .expect("stand-in starts");
        TestHost {
            host: "127.0.0.1".into(),
            port: standin.port,
            user,
            password,
            keys,
            kind: HostKind::StandIn,
            host_key_fingerprint: fp,
            dir,
            inner: Some(Inner::StandIn(standin)),
        }
    }

    async fn start_openssh(account: Option<(String, String)>, user: Option<String>) -> TestHost {
        let dir = tempfile::tempdir().expect("tempdir");
        let (keys, authorized) = make_keys(dir.path());
        let host_key = keygen(dir.path(), "host_ed25519", &["-t", "ed25519", "-N", ""]);
        let fp = fingerprint_of_pub(&host_key.with_extension("pub"));
        let mut host = TestHost {
            host: "127.0.0.1".into(),
            port: 0,
            user: account
                .as_ref()
                .map(|a| a.0.clone())
                .or(user)
                .unwrap_or_else(current_user),
            password: account.as_ref().map(|a| a.1.clone()),
            keys,
            kind: HostKind::OpenSsh,
            host_key_fingerprint: fp,
            dir,
            inner: None,
        };
        std::fs::write(host.dir.path().join("authorized_keys"), authorized.concat())
            .expect("authorized_keys");
        // sshd reads authorized_keys as the login user, who may not be the one running the
        // test: let everyone read it (it holds public keys only).
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(host.dir.path(), std::fs::Permissions::from_mode(0o755));
        let _ = std::fs::set_permissions(
            host.dir.path().join("authorized_keys"),
            std::fs::Permissions::from_mode(0o644),
        );
        host.spawn_sshd(&host_key).await;
        host
    }

    /// (Re)start sshd on this host's port with `host_key`.
    async fn spawn_sshd(&mut self, host_key: &Path) {
        let _ = std::fs::create_dir_all("/run/sshd");
        let dir = self.dir.path().to_path_buf();
        let dir = dir.as_path();
        let password = if self.password.is_some() { "yes" } else { "no" };
        for attempt in 0..5 {
            let port = if self.port == 0 || attempt > 0 && self.inner.is_none() {
                free_port()
            } else {
                self.port
            };
            let config = dir.join("sshd_config");
            std::fs::write(
                &config,
                format!(
                    "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nPidFile {pid}\n\
                     AuthorizedKeysFile {ak}\nStrictModes no\nPasswordAuthentication {password}\n\
                     KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nPermitRootLogin yes\n\
                     UsePAM no\nLogLevel VERBOSE\nAcceptEnv *\nPermitUserEnvironment no\n",
                    hk = host_key.display(),
                    pid = dir.join("sshd.pid").display(),
                    ak = dir.join("authorized_keys").display(),
                ),
            )
            .expect("sshd_config");
            let child = Command::new(SSHD)
                .arg("-D")
                .arg("-E")
                .arg(dir.join("sshd.log"))
                .arg("-f")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn sshd");
            let pid = child.id();
            self.port = port;
            self.inner = Some(Inner::OpenSsh { child });
            // A banner alone may come from another test's server that took the port first
            // (our sshd then exits, unable to bind): sshd writes its pid file only once it
            // listens, so the banner counts only with our pid there.
            let pid_file = dir.join("sshd.pid");
            if wait_for_banner(port, Duration::from_secs(5)).await
                && wait_for_pid_file(&pid_file, pid, Duration::from_secs(5)).await
            {
                return;
            }
            self.kill();
        }
        panic!("sshd did not start on a loopback port");
    }

    fn kill(&mut self) {
        if let Some(Inner::OpenSsh { mut child }) = self.inner.take() {
            let _ = child.kill();
            let _ = child.wait();
        } else {
            self.inner = None;
        }
    }

    /// Cut every open connection abruptly (SIGKILL to the per-connection sshd processes),
    /// leaving the listener up: what a crashed or rebooted host looks like mid-job.
    pub fn kill_connections(&self) {
        let Some(Inner::OpenSsh { child }) = &self.inner else {
            panic!("needs the real sshd");
        };
        let out = Command::new("ps")
            .args(["-eo", "pid=,ppid=,comm="])
            .output()
            .expect("ps");
        let table: Vec<(u32, u32, String)> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                Some((
                    f.next()?.parse().ok()?,
                    f.next()?.parse().ok()?,
                    f.next()?.to_string(),
                ))
            })
            .collect();
        let mut parents = vec![child.id()];
        let mut doomed = Vec::new();
        while let Some(p) = parents.pop() {
            for (pid, ppid, comm) in &table {
                if *ppid == p && comm.starts_with("sshd") {
                    doomed.push(*pid);
                    parents.push(*pid);
                }
            }
        }
        for pid in doomed {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }

    /// What the real sshd logged so far (LogLevel VERBOSE: every authentication attempt).
    pub fn log(&self) -> String {
        assert_eq!(self.kind, HostKind::OpenSsh, "needs the real sshd");
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    /// Stop the server (connections then fail with "refused").
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Restart the same sshd on the same port with a NEW host key; returns its fingerprint.
    pub async fn restart_with_new_host_key(&mut self) -> String {
        assert_eq!(self.kind, HostKind::OpenSsh, "needs the real sshd");
        self.kill();
        let name = format!("host_ed25519_{}", uuid::Uuid::new_v4().simple());
        let key = keygen(self.dir.path(), &name, &["-t", "ed25519", "-N", ""]);
        self.host_key_fingerprint = fingerprint_of_pub(&key.with_extension("pub"));
        self.spawn_sshd(&key).await;
        self.host_key_fingerprint.clone()
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether `file` comes to hold `pid` within `bound`.
async fn wait_for_pid_file(file: &Path, pid: u32, bound: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < bound {
        let written = std::fs::read_to_string(file).unwrap_or_default();
        if written.trim().parse::<u32>().ok() == Some(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

async fn wait_for_banner(port: u16, bound: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let start = Instant::now();
    while start.elapsed() < bound {
        if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            let mut buf = [0u8; 8];
            if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await
                && n >= 4
                && &buf[..4] == b"SSH-"
            {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}
