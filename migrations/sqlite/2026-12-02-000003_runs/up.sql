-- Labels: a JSON object of string -> string (`{"role": "web"}`), matched by selectors.
ALTER TABLE servers ADD COLUMN labels TEXT NOT NULL DEFAULT '{}';

-- Runs: one command on many servers. The run row holds the request; each target is a
-- `run_hosts` row whose job is made when the strategy admits it.
CREATE TABLE runs (
    id TEXT PRIMARY KEY NOT NULL,
    -- The job every host runs, as a JSON spec (kind, command, args, script, shell, env, …).
    spec TEXT NOT NULL,
    -- The targets as given (`{"selector": …}` or `{"servers": […]}`) and the strategy.
    targets TEXT NOT NULL,
    batch TEXT,
    canary INTEGER NOT NULL DEFAULT 0,
    max_failures TEXT NOT NULL DEFAULT '0',
    keep_going BOOLEAN NOT NULL DEFAULT 0,
    -- `running` until every host has ended (then `completed`, `failed` or `canceled`).
    status TEXT NOT NULL,
    cancel_requested BOOLEAN NOT NULL DEFAULT 0,
    rerun_of TEXT,
    actor TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT
);
CREATE INDEX runs_status_idx ON runs (status, id);

-- One row per target, in the order hosts are admitted. `state` is `pending` until the host
-- is admitted (`job_id` set, the job's status is then the host's) or `skipped`.
CREATE TABLE run_hosts (
    run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    server_id TEXT NOT NULL,
    server_name TEXT NOT NULL,
    state TEXT NOT NULL,
    job_id TEXT UNIQUE,
    PRIMARY KEY (run_id, position)
);

ALTER TABLE jobs ADD COLUMN run_id TEXT;
CREATE INDEX jobs_run_idx ON jobs (run_id) WHERE run_id IS NOT NULL;
