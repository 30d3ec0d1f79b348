DROP TABLE retention_lease;
DROP INDEX webhook_deliveries_created;
DROP INDEX audit_log_at_idx;
DROP INDEX jobs_server_id_idx;
DROP INDEX jobs_finished_idx;
ALTER TABLE jobs DROP COLUMN output_pruned_at;
