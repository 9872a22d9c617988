-- Builds on SQLite (the embedded rack). Same shape as the PostgreSQL schema;
-- times are microseconds since the Unix epoch.

CREATE TABLE builds (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    id             TEXT    NOT NULL UNIQUE,
    app            TEXT    NOT NULL,
    status         TEXT    NOT NULL,
    reason         TEXT    NOT NULL DEFAULT '',
    description    TEXT    NOT NULL DEFAULT '',
    git_sha        TEXT    NOT NULL DEFAULT '',
    source_url     TEXT    NOT NULL,
    manifest_path  TEXT    NOT NULL,
    manifest       TEXT    NOT NULL DEFAULT '',
    release_id     TEXT    NOT NULL DEFAULT '',
    artifacts      TEXT    NOT NULL DEFAULT '{}',
    runner         TEXT    NOT NULL,
    heartbeat_at   INTEGER NOT NULL,
    started_at     INTEGER NOT NULL,
    ended_at       INTEGER
);
CREATE INDEX builds_app_seq ON builds (app, seq);
CREATE INDEX builds_open ON builds (status, heartbeat_at) WHERE status IN ('created', 'running');
