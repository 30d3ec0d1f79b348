ALTER TABLE schedules DROP COLUMN scope;
