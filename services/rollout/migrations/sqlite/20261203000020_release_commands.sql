-- The release command of a promotion (convox.yml `release:`): recorded
-- before it starts and when it ends, so that it runs at most once per
-- rollout even when the replica running it dies; a start without an end
-- fails the promotion instead of running the command again.
CREATE TABLE release_commands (
    rollout_id  TEXT    PRIMARY KEY,
    process_id  TEXT    NOT NULL DEFAULT '',
    started_at  BIGINT  NOT NULL,
    ended_at    BIGINT,
    exit_code   BIGINT
);
