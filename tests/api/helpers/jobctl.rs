//! Running the `jobctl` binary in tests: against a service's base URL, with or without
//! stdin, and what it did.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_jobctl");

/// What one `jobctl` invocation did.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    /// stdout as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    /// The single line of stdout (an id).
    pub fn line(&self) -> String {
        let line = self.stdout.trim_end_matches('\n');
        assert!(!line.is_empty() && !line.contains('\n'), "{self:?}");
        line.to_string()
    }

    /// The lines of stdout, sorted (hosts run at once: their lines interleave).
    pub fn sorted_stdout(&self) -> Vec<&str> {
        let mut lines: Vec<&str> = self.stdout.lines().collect();
        lines.sort_unstable();
        lines
    }

    /// The first line of stderr that starts with `prefix`.
    pub fn stderr_row(&self, prefix: &str) -> &str {
        (self.stderr.lines().find(|l| l.starts_with(prefix)))
            .unwrap_or_else(|| panic!("no stderr line starts with {prefix:?}: {self:?}"))
    }

    /// The row of server `name` in the hosts' table on stderr.
    pub fn host_row(&self, name: &str) -> &str {
        let mut lines = (self.stderr.lines()).skip_while(|l| !l.starts_with("SERVER "));
        (lines.find(|l| l.starts_with(&format!("{name} "))))
            .unwrap_or_else(|| panic!("no row of {name} in the table: {self:?}"))
    }

    /// Neither stdout nor stderr holds `secret`.
    pub fn assert_hides(&self, secret: &str) {
        assert!(
            !self.stdout.contains(secret) && !self.stderr.contains(secret),
            "the secret is printed: {self:?}"
        );
    }
}

/// `jobctl args` against `base`: no token, no `NO_COLOR`, stdin from /dev/null, output piped.
pub fn command(base: &str, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .env("JOBEXEC_URL", base)
        .env_remove("JOBEXEC_TOKEN")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    c
}

/// Run `jobctl args` against `base` to its end (60 s at most), `stdin` as its stdin.
pub async fn jobctl_at(base: &str, args: &[&str], stdin: Option<&str>) -> Out {
    let mut c = command(base, args);
    if stdin.is_some() {
        c.stdin(Stdio::piped());
    }
    let mut child = c.spawn().expect("spawn jobctl");
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(text.as_bytes()).await.unwrap();
        drop(pipe);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("jobctl {args:?} did not end in 60s"))
        .unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
