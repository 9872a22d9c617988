-- Webhooks: receivers, signing keys, and the durable outbox. An event row
-- and its deliveries are written in the transaction that records what the
-- event announces (an app, a release, a promotion's start or end), so an
-- event is never lost nor announced for something that did not happen.
-- Times are microseconds since the Unix epoch.

CREATE TABLE webhooks (
    id           TEXT    PRIMARY KEY,
    -- AES-256-GCM sealed URL (it may carry credentials); never plaintext.
    url_sealed   BYTEA   NOT NULL,
    -- The URL with user info and query replaced by `***`.
    url_display  TEXT    NOT NULL,
    -- '' for every app.
    app          TEXT    NOT NULL DEFAULT '',
    -- ',action,action,' or '' for every action (matched with LIKE).
    events       TEXT    NOT NULL DEFAULT '',
    actor        TEXT    NOT NULL,
    created_at   BIGINT  NOT NULL,
    deleted_at   BIGINT
);

CREATE TABLE webhook_keys (
    id           TEXT    PRIMARY KEY,
    key_sealed   BYTEA   NOT NULL,
    fingerprint  TEXT    NOT NULL,
    actor        TEXT    NOT NULL,
    created_at   BIGINT  NOT NULL,
    deleted_at   BIGINT
);

-- One row per event (the outbox); the body is rendered from it at send time,
-- the same bytes on every attempt.
CREATE TABLE webhook_events (
    id          TEXT    PRIMARY KEY,
    action      TEXT    NOT NULL,
    status      TEXT    NOT NULL,
    app         TEXT    NOT NULL,
    actor       TEXT    NOT NULL,
    subject     TEXT    NOT NULL DEFAULT '',
    message     TEXT    NOT NULL DEFAULT '',
    created_at  BIGINT  NOT NULL
);

-- One row per (event, receiver). `next_attempt_at` is also the lease: a
-- worker claims a due row by moving it past its own attempt's timeout and
-- setting `claim`; a worker killed mid-attempt leaves a row that falls due
-- again when that time passes. Results are recorded only under the claim.
CREATE TABLE webhook_deliveries (
    id               TEXT    PRIMARY KEY,
    event_id         TEXT    NOT NULL REFERENCES webhook_events (id),
    webhook_id       TEXT    NOT NULL REFERENCES webhooks (id),
    -- pending | delivered | failed | cancelled
    state            TEXT    NOT NULL,
    attempts         BIGINT  NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT  NOT NULL,
    claim            TEXT    NOT NULL DEFAULT '',
    last_status      BIGINT  NOT NULL DEFAULT 0,
    last_error       TEXT    NOT NULL DEFAULT '',
    created_at       BIGINT  NOT NULL,
    updated_at       BIGINT  NOT NULL,
    delivered_at     BIGINT
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_webhook ON webhook_deliveries (webhook_id, created_at);
CREATE INDEX webhook_deliveries_created ON webhook_deliveries (created_at);
