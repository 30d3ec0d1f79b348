-- Dashboard sessions, keyed by the SHA-256 (hex) of the session id: the id itself, which only
-- the browser's HttpOnly cookie holds, is never stored. `token_hash` is the SHA-256 of the
-- token the session was opened with (the session ends when that token is no longer
-- configured); times are microseconds since the epoch.
CREATE TABLE dashboard_sessions (
    id_hash TEXT PRIMARY KEY NOT NULL,
    token_hash TEXT NOT NULL,
    name TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    seen_at BIGINT NOT NULL
);
CREATE INDEX dashboard_sessions_seen_idx ON dashboard_sessions (seen_at);
