DROP INDEX schedule_fires_status;
