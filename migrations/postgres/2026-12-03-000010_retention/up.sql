-- Retention: when a job's output was deleted by a prune (null: it was not), the indexes the
-- prune's selections walk, and the lease that lets one process at a time prune.
ALTER TABLE jobs ADD COLUMN output_pruned_at BIGINT;
CREATE INDEX jobs_finished_idx ON jobs (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX jobs_server_id_idx ON jobs (server_id, id);
CREATE INDEX audit_log_at_idx ON audit_log (at, id);
CREATE INDEX webhook_deliveries_created ON webhook_deliveries (created_at, id);

-- One row per lease: the process that holds it and until when (microseconds since the
-- epoch). Claimed and renewed with a conditional update, so two processes cannot both hold it.
CREATE TABLE retention_lease (
    name TEXT PRIMARY KEY NOT NULL,
    holder TEXT NOT NULL DEFAULT '',
    held_until BIGINT NOT NULL DEFAULT 0
);
INSERT INTO retention_lease (name, holder, held_until) VALUES ('prune', '', 0);
