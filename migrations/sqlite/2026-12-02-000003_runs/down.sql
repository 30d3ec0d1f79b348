DROP INDEX jobs_run_idx;
ALTER TABLE jobs DROP COLUMN run_id;
DROP TABLE run_hosts;
DROP TABLE runs;
ALTER TABLE servers DROP COLUMN labels;
