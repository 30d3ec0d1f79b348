-- Schedules: a template launched on a cron timer, in a time zone. The secret parameters'
-- values are sealed (key version first); the others are plain JSON.
CREATE TABLE schedules (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL UNIQUE,
    template_id TEXT NOT NULL,
    parameters TEXT NOT NULL DEFAULT '{}',
    sealed_params BLOB,
    cron TEXT NOT NULL,
    timezone TEXT NOT NULL,
    overlap TEXT NOT NULL,
    catch_up_secs BIGINT NOT NULL DEFAULT 0,
    paused BOOLEAN NOT NULL DEFAULT 0,
    -- The last fire time handled (claimed, skipped or missed on purpose): fires after it are
    -- due. Set to now on create and resume, so nothing before is made up.
    cursor_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX schedules_template_idx ON schedules (template_id);

-- Each fire time of a schedule, claimed once: the primary key is what makes two processes
-- fire it once. `status`: launched (run_id), skipped (overlap), queued (waits for the
-- previous run), failed (the launch was refused; detail says why).
CREATE TABLE schedule_fires (
    schedule_id TEXT NOT NULL REFERENCES schedules (id) ON DELETE CASCADE,
    fire_at BIGINT NOT NULL,
    status TEXT NOT NULL,
    run_id TEXT,
    detail TEXT,
    claimed_by TEXT NOT NULL,
    claimed_at BIGINT NOT NULL,
    PRIMARY KEY (schedule_id, fire_at)
);
