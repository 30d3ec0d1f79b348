DROP TABLE job_output;
DROP TABLE jobs;
DROP TABLE servers;
