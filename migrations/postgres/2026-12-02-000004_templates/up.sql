-- Templates: a saved run request (the job, its targets and strategy, as JSON) with typed
-- parameters. Nothing secret is stored here: secret parameters take no default.
CREATE TABLE templates (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL UNIQUE,
    description TEXT,
    spec TEXT NOT NULL,
    targets TEXT NOT NULL,
    strategy TEXT NOT NULL DEFAULT '{}',
    parameters TEXT NOT NULL DEFAULT '[]',
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- What launched a run (its jobs name it in run_id): the template and its values that are
-- not secret. The secret values are sealed (the key version first, then the sealed JSON),
-- on the run and on each of its jobs (whose worker opens them).
ALTER TABLE runs ADD COLUMN template_id TEXT;
ALTER TABLE runs ADD COLUMN parameters TEXT;
ALTER TABLE runs ADD COLUMN sealed_env BYTEA;
ALTER TABLE jobs ADD COLUMN sealed_env BYTEA;
CREATE INDEX runs_template_idx ON runs (template_id) WHERE template_id IS NOT NULL;
