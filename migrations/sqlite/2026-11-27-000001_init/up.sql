-- Servers: the SSH targets. Secrets are write-only over the API.
CREATE TABLE servers (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL UNIQUE,
    hostname TEXT NOT NULL,
    port INTEGER NOT NULL,
    username TEXT NOT NULL,
    auth_type TEXT NOT NULL,
    -- Secret columns hold bytes; `secret_version` says how they are sealed (0 = not sealed).
    password BLOB,
    private_key BLOB,
    private_key_passphrase BLOB,
    secret_version INTEGER NOT NULL DEFAULT 0,
    -- Pinned host key: an OpenSSH public key line or a `SHA256:` fingerprint.
    host_key TEXT,
    host_key_check TEXT NOT NULL DEFAULT 'tofu',
    max_concurrent_jobs INTEGER NOT NULL,
    is_active BOOLEAN NOT NULL DEFAULT 1,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- Jobs: the row is the truth. Times are microseconds since the Unix epoch.
CREATE TABLE jobs (
    id TEXT PRIMARY KEY NOT NULL,
    kind TEXT NOT NULL,
    command TEXT,
    args TEXT,
    script TEXT,
    shell TEXT,
    server_id TEXT NOT NULL,
    timeout_secs BIGINT NOT NULL,
    env TEXT NOT NULL DEFAULT '{}',
    cwd TEXT,
    idempotency_key TEXT UNIQUE,
    retry_safe BOOLEAN NOT NULL DEFAULT 0,
    status TEXT NOT NULL,
    exit_code INTEGER,
    error TEXT,
    created_at BIGINT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT,
    duplicated_from TEXT,
    -- Claim and lease: the worker that owns a running job and until when.
    worker TEXT,
    lease_expires_at BIGINT,
    attempts INTEGER NOT NULL DEFAULT 0,
    cancel_requested BOOLEAN NOT NULL DEFAULT 0,
    -- Outbox: a queued job not yet handed to the broker.
    published BOOLEAN NOT NULL DEFAULT 0,
    -- Remote process group id, learnt before the user's command starts.
    remote_pgid BIGINT,
    output_bytes BIGINT NOT NULL DEFAULT 0,
    output_truncated BOOLEAN NOT NULL DEFAULT 0,
    -- Next event sequence number (output chunks and status events share it).
    next_seq BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX jobs_status_idx ON jobs (status, id);
CREATE INDEX jobs_server_idx ON jobs (server_id, status);
CREATE INDEX jobs_lease_idx ON jobs (lease_expires_at) WHERE status = 'running';
CREATE INDEX jobs_outbox_idx ON jobs (id) WHERE status = 'queued' AND published = 0;

-- Output chunks: bytes as they came; stdout (0) and stderr (1) share one sequence per job.
CREATE TABLE job_output (
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    seq BIGINT NOT NULL,
    stream SMALLINT NOT NULL,
    data BLOB NOT NULL,
    at BIGINT NOT NULL,
    PRIMARY KEY (job_id, seq)
);
