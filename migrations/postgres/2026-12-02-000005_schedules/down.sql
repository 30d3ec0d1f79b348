DROP TABLE schedule_fires;
DROP INDEX schedules_template_idx;
DROP TABLE schedules;
