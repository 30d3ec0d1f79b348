-- Where each output chunk starts in the job's combined output (stdout and stderr
-- interleaved in sequence order), in bytes: a range read by byte offset finds its first
-- chunk through the index instead of adding up every chunk before it.
ALTER TABLE job_output ADD COLUMN byte_offset BIGINT NOT NULL DEFAULT 0;
UPDATE job_output SET byte_offset = placed.start
FROM (
    SELECT job_id, seq,
           SUM(length(data)) OVER (PARTITION BY job_id ORDER BY seq) - length(data) AS start
    FROM job_output
) AS placed
WHERE job_output.job_id = placed.job_id AND job_output.seq = placed.seq;
CREATE INDEX job_output_offset_idx ON job_output (job_id, byte_offset);
