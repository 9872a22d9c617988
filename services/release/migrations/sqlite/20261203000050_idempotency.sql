-- Idempotency keys of mutating calls (issue 17). A keyed call records each
-- step it completed (`release`, `promotion`) with its result (an id, never
-- a value) in the transaction that made the change; the same key again
-- answers from these rows instead of acting twice. `fingerprint` is an
-- HMAC of the request (keyed from the env key, so no value can be guessed
-- from it). Rows older than a day are ignored and swept.
CREATE TABLE idempotency_keys (
    key TEXT NOT NULL,
    method TEXT NOT NULL,
    step TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    result TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (key, method, step)
);

CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
