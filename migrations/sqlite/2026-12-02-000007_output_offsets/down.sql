DROP INDEX job_output_offset_idx;
ALTER TABLE job_output DROP COLUMN byte_offset;
