DROP INDEX dashboard_sessions_seen_idx;
DROP TABLE dashboard_sessions;
