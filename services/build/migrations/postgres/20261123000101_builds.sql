-- Builds on PostgreSQL. Times are microseconds since the Unix epoch (the
-- store shares one code path with SQLite).

CREATE TABLE builds (
    -- Creation order; lists are newest first by it.
    seq            BIGSERIAL PRIMARY KEY,
    id             TEXT    NOT NULL UNIQUE,
    app            TEXT    NOT NULL,
    -- created | running | complete | failed | cancelled
    status         TEXT    NOT NULL,
    reason         TEXT    NOT NULL DEFAULT '',
    description    TEXT    NOT NULL DEFAULT '',
    git_sha        TEXT    NOT NULL DEFAULT '',
    source_url     TEXT    NOT NULL,
    manifest_path  TEXT    NOT NULL,
    manifest       TEXT    NOT NULL DEFAULT '',
    release_id     TEXT    NOT NULL DEFAULT '',
    -- JSON object: service -> artifact reference.
    artifacts      TEXT    NOT NULL DEFAULT '{}',
    -- The replica running the build and when it last said so; a build whose
    -- runner fell silent is failed by any replica.
    runner         TEXT    NOT NULL,
    heartbeat_at   BIGINT  NOT NULL,
    started_at     BIGINT  NOT NULL,
    ended_at       BIGINT
);
CREATE INDEX builds_app_seq ON builds (app, seq);
CREATE INDEX builds_open ON builds (status, heartbeat_at) WHERE status IN ('created', 'running');
