-- The release ledger on PostgreSQL. Times are microseconds since the Unix
-- epoch (the stores share one code path with SQLite).

CREATE TABLE apps (
    id              BIGSERIAL PRIMARY KEY,
    name            TEXT    NOT NULL,
    created_at      BIGINT  NOT NULL,
    deleted_at      BIGINT,
    deadline_secs   BIGINT  NOT NULL,
    -- Sequence number of the app's newest release (0 before the first).
    release_count   BIGINT  NOT NULL DEFAULT 0,
    -- The release of the last successful promotion, and its sequence number.
    active_release  TEXT,
    active_seq      BIGINT
);
-- Names are unique among live apps; a deleted app's ledger stays behind.
CREATE UNIQUE INDEX apps_live_name ON apps (name) WHERE deleted_at IS NULL;

CREATE TABLE releases (
    id                 TEXT    PRIMARY KEY,
    app_id             BIGINT  NOT NULL REFERENCES apps (id),
    seq                BIGINT  NOT NULL,
    build              TEXT    NOT NULL DEFAULT '',
    manifest           TEXT    NOT NULL DEFAULT '',
    build_description  TEXT    NOT NULL DEFAULT '',
    -- JSON object: service -> artifact reference of the build.
    artifacts          TEXT    NOT NULL DEFAULT '{}',
    -- AES-256-GCM sealed env snapshot; never plaintext.
    env_sealed         BYTEA   NOT NULL,
    description        TEXT    NOT NULL DEFAULT '',
    parent             TEXT,
    rollback_of        TEXT,
    actor              TEXT    NOT NULL,
    created_at         BIGINT  NOT NULL,
    CONSTRAINT releases_app_seq UNIQUE (app_id, seq)
);
CREATE INDEX releases_app_build ON releases (app_id, build, seq);

-- The ledger is append-only: refuse any edit or deletion of a release.
CREATE FUNCTION releases_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'releases are append-only';
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER releases_append_only BEFORE UPDATE OR DELETE ON releases
    FOR EACH ROW EXECUTE FUNCTION releases_append_only();

CREATE TABLE promotions (
    id                TEXT    PRIMARY KEY,
    app_id            BIGINT  NOT NULL REFERENCES apps (id),
    release_id        TEXT    NOT NULL REFERENCES releases (id),
    fallback_release  TEXT,
    state             TEXT    NOT NULL,
    reason            TEXT    NOT NULL DEFAULT '',
    deadline_secs     BIGINT  NOT NULL,
    lease_epoch       BIGINT  NOT NULL DEFAULT 0,
    actor             TEXT    NOT NULL,
    created_at        BIGINT  NOT NULL,
    updated_at        BIGINT  NOT NULL,
    finished_at       BIGINT
);
-- One promotion in flight per app, enforced by the database.
CREATE UNIQUE INDEX promotions_one_open_per_app ON promotions (app_id)
    WHERE state IN ('pending', 'rolling_out');
CREATE INDEX promotions_app ON promotions (app_id, created_at);

CREATE TABLE audit_events (
    id       BIGSERIAL PRIMARY KEY,
    at       BIGINT NOT NULL,
    actor    TEXT   NOT NULL,
    action   TEXT   NOT NULL,
    app      TEXT   NOT NULL,
    subject  TEXT   NOT NULL DEFAULT '',
    detail   TEXT   NOT NULL DEFAULT ''
);
CREATE INDEX audit_events_app ON audit_events (app, id);
