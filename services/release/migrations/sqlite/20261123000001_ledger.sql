-- The release ledger on SQLite (the embedded rack). Same shape as the
-- PostgreSQL schema; times are microseconds since the Unix epoch.

CREATE TABLE apps (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    name            TEXT    NOT NULL,
    created_at      INTEGER NOT NULL,
    deleted_at      INTEGER,
    deadline_secs   INTEGER NOT NULL,
    release_count   INTEGER NOT NULL DEFAULT 0,
    active_release  TEXT,
    active_seq      INTEGER
);
CREATE UNIQUE INDEX apps_live_name ON apps (name) WHERE deleted_at IS NULL;

CREATE TABLE releases (
    id                 TEXT    PRIMARY KEY,
    app_id             INTEGER NOT NULL REFERENCES apps (id),
    seq                INTEGER NOT NULL,
    build              TEXT    NOT NULL DEFAULT '',
    manifest           TEXT    NOT NULL DEFAULT '',
    build_description  TEXT    NOT NULL DEFAULT '',
    -- JSON object: service -> artifact reference of the build.
    artifacts          TEXT    NOT NULL DEFAULT '{}',
    env_sealed         BLOB    NOT NULL,
    description        TEXT    NOT NULL DEFAULT '',
    parent             TEXT,
    rollback_of        TEXT,
    actor              TEXT    NOT NULL,
    created_at         INTEGER NOT NULL,
    CONSTRAINT releases_app_seq UNIQUE (app_id, seq)
);
CREATE INDEX releases_app_build ON releases (app_id, build, seq);

CREATE TRIGGER releases_no_update BEFORE UPDATE ON releases
BEGIN
    SELECT RAISE(ABORT, 'releases are append-only');
END;
CREATE TRIGGER releases_no_delete BEFORE DELETE ON releases
BEGIN
    SELECT RAISE(ABORT, 'releases are append-only');
END;

CREATE TABLE promotions (
    id                TEXT    PRIMARY KEY,
    app_id            INTEGER NOT NULL REFERENCES apps (id),
    release_id        TEXT    NOT NULL REFERENCES releases (id),
    fallback_release  TEXT,
    state             TEXT    NOT NULL,
    reason            TEXT    NOT NULL DEFAULT '',
    deadline_secs     INTEGER NOT NULL,
    lease_epoch       INTEGER NOT NULL DEFAULT 0,
    actor             TEXT    NOT NULL,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL,
    finished_at       INTEGER
);
CREATE UNIQUE INDEX promotions_one_open_per_app ON promotions (app_id)
    WHERE state IN ('pending', 'rolling_out');
CREATE INDEX promotions_app ON promotions (app_id, created_at);

CREATE TABLE audit_events (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    at       INTEGER NOT NULL,
    actor    TEXT    NOT NULL,
    action   TEXT    NOT NULL,
    app      TEXT    NOT NULL,
    subject  TEXT    NOT NULL DEFAULT '',
    detail   TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX audit_events_app ON audit_events (app, id);
