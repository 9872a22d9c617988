-- Rollouts, their durable event log, and the local runtime's records, on
-- SQLite. Times are microseconds since the Unix epoch; flags are 0/1
-- (the store shares one code path with PostgreSQL).

CREATE TABLE rollouts (
    -- The promotion id: one rollout per promotion.
    id                TEXT    PRIMARY KEY,
    app               TEXT    NOT NULL,
    release_id        TEXT    NOT NULL,
    fallback_release  TEXT,
    -- Specs as JSON: what to run, and what to return to.
    target_spec       TEXT    NOT NULL,
    fallback_spec     TEXT,
    phase             TEXT    NOT NULL,
    reason            TEXT    NOT NULL DEFAULT '',
    deadline_secs     BIGINT  NOT NULL,
    -- Deadline of the current phase (a rollback gets a fresh one).
    deadline_at       BIGINT  NOT NULL,
    -- Owner lease: the replica driving the rollout, until when, and the
    -- fencing epoch every write is conditional on.
    owner             TEXT,
    lease_expires     BIGINT  NOT NULL DEFAULT 0,
    epoch             BIGINT  NOT NULL DEFAULT 0,
    cancel_requested  BIGINT  NOT NULL DEFAULT 0,
    -- Whether the release service acknowledged the outcome.
    reported          BIGINT  NOT NULL DEFAULT 0,
    created_at        BIGINT  NOT NULL,
    finished_at       BIGINT
);
CREATE INDEX rollouts_app ON rollouts (app, created_at);
-- One rollout in flight per app.
CREATE UNIQUE INDEX rollouts_one_open_per_app ON rollouts (app) WHERE finished_at IS NULL;
CREATE INDEX rollouts_unreported ON rollouts (lease_expires) WHERE reported = 0;

CREATE TABLE rollout_events (
    rollout_id  TEXT    NOT NULL REFERENCES rollouts (id),
    seq         BIGINT  NOT NULL,
    time        BIGINT  NOT NULL,
    source      TEXT    NOT NULL,
    message     TEXT    NOT NULL,
    PRIMARY KEY (rollout_id, seq)
);

-- The local runtime: what each app should run, its stable ports, and the
-- processes it started (so a restarted service re-adopts them).
CREATE TABLE local_apps (
    app         TEXT    PRIMARY KEY,
    spec        TEXT    NOT NULL,
    rollout_id  TEXT    NOT NULL,
    updated_at  BIGINT  NOT NULL
);

CREATE TABLE local_ports (
    app      TEXT    NOT NULL,
    service  TEXT    NOT NULL,
    port     BIGINT  NOT NULL,
    PRIMARY KEY (app, service)
);
CREATE UNIQUE INDEX local_ports_port ON local_ports (port);

CREATE TABLE local_processes (
    id          TEXT    PRIMARY KEY,
    app         TEXT    NOT NULL,
    service     TEXT    NOT NULL,
    release_id  TEXT    NOT NULL,
    -- NULL between recording the process and spawning it.
    pid         BIGINT,
    port        BIGINT  NOT NULL,
    started_at  BIGINT  NOT NULL
);
CREATE INDEX local_processes_app ON local_processes (app);
