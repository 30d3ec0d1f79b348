//! Run a job on a server over SSH from a plain tokio program, with no HTTP involved.
//!
//! ```sh
//! JOBEXEC_HOST=10.0.0.5 JOBEXEC_USER=deploy JOBEXEC_KEY_FILE=~/.ssh/id_ed25519 \
//!     cargo run --example embedded -- 'uname -a; echo to stderr >&2'
//! ```
//!
//! `JOBEXEC_PORT` (default 22) and `JOBEXEC_DB` (default `./embedded.db`) are optional. The
//! output is printed as it comes, and the program exits with the job's exit code.

use std::io::Write;

use futures::StreamExt;
use job_executor::domain::OutputStream;
use job_executor::supervisor::{NewJob, NewServer, Supervisor};

fn var(name: &str) -> anyhow::Result<String> {
    std::env::var(name)
        .map_err(|_| anyhow::anyhow!("set {name} (see the top of examples/embedded.rs)"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let command = std::env::args().nth(1).unwrap_or_else(|| "uname -a".into());
    let key = std::fs::read_to_string(var("JOBEXEC_KEY_FILE")?)?;
    let port: u16 = std::env::var("JOBEXEC_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(22);
    let db = std::env::var("JOBEXEC_DB").unwrap_or_else(|_| "./embedded.db".into());

    let sup = Supervisor::builder().database(&db).build().await?;
    sup.upsert_server(
        NewServer::with_key("target", &var("JOBEXEC_HOST")?, &var("JOBEXEC_USER")?, &key)
            .port(port),
    )
    .await?;
    let job = sup.submit(NewJob::command("target", &command)).await?;
    let mut output = sup.output(&job);
    while let Some(chunk) = output.next().await {
        match chunk.stream {
            OutputStream::Stdout => std::io::stdout().write_all(&chunk.data)?,
            OutputStream::Stderr => std::io::stderr().write_all(&chunk.data)?,
        }
    }
    let done = sup.wait(&job).await?;
    sup.shutdown().await;
    if let Some(error) = &done.error {
        eprintln!("job {job}: {} ({error})", done.status);
    }
    std::process::exit(done.exit_code.unwrap_or(1));
}
