DROP INDEX runs_template_idx;
ALTER TABLE jobs DROP COLUMN sealed_env;
ALTER TABLE runs DROP COLUMN sealed_env;
ALTER TABLE runs DROP COLUMN parameters;
ALTER TABLE runs DROP COLUMN template_id;
DROP TABLE templates;
