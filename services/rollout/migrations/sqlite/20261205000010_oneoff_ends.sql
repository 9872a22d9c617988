-- How one-off processes ended (issue 14): written once, by whichever
-- replica's runtime saw the end first (before a Kubernetes one-off's pod
-- is deleted), so that `ps info` on any replica, or after a restart,
-- tells how a one-off ended once the runtime no longer knows it. What
-- `ps info` shows, never the env. Rows older than 24 hours are not read
-- and are pruned as new ends are written (crate::oneoff_ends::RETENTION).
-- Times are microseconds since the Unix epoch.
CREATE TABLE oneoff_ends (
    app         TEXT    NOT NULL,
    id          TEXT    NOT NULL,
    service     TEXT    NOT NULL,
    release_id  TEXT    NOT NULL,
    command     TEXT    NOT NULL,
    status      TEXT    NOT NULL,
    exit_code   BIGINT,
    started_at  BIGINT  NOT NULL,
    ended_at    BIGINT  NOT NULL,
    PRIMARY KEY (app, id)
);
CREATE INDEX oneoff_ends_ended_at ON oneoff_ends (ended_at);
