-- The rollout service's audit outbox: one row per change this service makes
-- for a caller (who, from where, what), written in the transaction that
-- records the change, then relayed to the release service's RecordAudit
-- with the row's id as the dedup key (the release service appends each id
-- once) and marked published only after it answered. `next_attempt_at`
-- with `claim` is a relay's lease (slipway_storage::outbox): two replicas
-- never relay one row at once and a killed relay's claim expires. Published
-- rows are pruned after 7 days; unpublished rows are never dropped.
-- Times are microseconds since the Unix epoch.
CREATE TABLE rollout_audit_outbox (
    id               TEXT    PRIMARY KEY,
    actor            TEXT    NOT NULL,
    source           TEXT    NOT NULL DEFAULT '',
    action           TEXT    NOT NULL,
    app              TEXT    NOT NULL,
    target           TEXT    NOT NULL DEFAULT '',
    outcome          TEXT    NOT NULL DEFAULT 'ok',
    detail           TEXT    NOT NULL DEFAULT '',
    created_at       INTEGER  NOT NULL,
    next_attempt_at  INTEGER  NOT NULL,
    claim            TEXT    NOT NULL DEFAULT '',
    attempts         INTEGER  NOT NULL DEFAULT 0,
    last_error       TEXT    NOT NULL DEFAULT '',
    published_at     INTEGER
);
CREATE INDEX rollout_audit_outbox_due ON rollout_audit_outbox (next_attempt_at) WHERE published_at IS NULL;
CREATE INDEX rollout_audit_outbox_published ON rollout_audit_outbox (published_at) WHERE published_at IS NOT NULL;
