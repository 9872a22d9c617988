-- The build service's webhook outbox: `build:create` events (a build
-- started, or failed), written in the transaction that records the build
-- or its failure, then relayed to the release service's
-- PublishWebhookEvent (idempotent by id), which fans them out to the
-- receivers. `next_attempt_at` with `claim` is a relay's lease, so two
-- replicas never relay one row at once and a killed relay's claim expires.
-- Times are microseconds since the Unix epoch.
CREATE TABLE build_outbox (
    id               TEXT    PRIMARY KEY,
    action           TEXT    NOT NULL,
    status           TEXT    NOT NULL,
    app              TEXT    NOT NULL,
    actor            TEXT    NOT NULL,
    subject          TEXT    NOT NULL,
    message          TEXT    NOT NULL DEFAULT '',
    created_at       BIGINT  NOT NULL,
    next_attempt_at  BIGINT  NOT NULL,
    claim            TEXT    NOT NULL DEFAULT '',
    attempts         BIGINT  NOT NULL DEFAULT 0,
    last_error       TEXT    NOT NULL DEFAULT '',
    published_at     BIGINT
);
CREATE INDEX build_outbox_due ON build_outbox (next_attempt_at) WHERE published_at IS NULL;
CREATE INDEX build_outbox_subject ON build_outbox (subject);
