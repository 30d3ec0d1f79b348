-- The scope of the token that created or last changed a schedule: its runs are started
-- within it (null: every server).
ALTER TABLE schedules ADD COLUMN scope TEXT;
