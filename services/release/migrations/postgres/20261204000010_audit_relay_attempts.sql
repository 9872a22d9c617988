-- Audit records relayed from other services' audit outboxes (the build and
-- rollout services write theirs in the transaction of each change) carry
-- the outbox row's id: appended once per id, however often relayed. NULL
-- for the release service's own records (unique ignores NULLs).
ALTER TABLE audit_events ADD COLUMN dedup_key TEXT;
CREATE UNIQUE INDEX audit_events_dedup_key ON audit_events (dedup_key);

-- Who asked to cancel a promotion while it was rolling out (NULL: nobody).
-- The rollout then reverts and reports ROLLED_BACK; the end is announced
-- as `app:promote:cancelled`, by this actor.
ALTER TABLE promotions ADD COLUMN cancelled_by TEXT;

-- Every attempt of a webhook delivery (the deliveries view shows the
-- recent ones). Pruned with their deliveries: see DEVELOPING.md, "Outbox
-- retention". Times are microseconds since the Unix epoch.
CREATE TABLE webhook_attempts (
    delivery_id  TEXT    NOT NULL,
    number       BIGINT  NOT NULL,
    at           BIGINT  NOT NULL,
    status       BIGINT  NOT NULL DEFAULT 0,
    error        TEXT    NOT NULL DEFAULT '',
    duration_ms  BIGINT  NOT NULL DEFAULT 0,
    PRIMARY KEY (delivery_id, number)
);
CREATE INDEX webhook_attempts_at ON webhook_attempts (at);
-- Finished deliveries by age, for pruning.
CREATE INDEX webhook_deliveries_finished ON webhook_deliveries (updated_at) WHERE state <> 'pending';
