-- Idempotency keys of the build service's writes (issue 17): CreateBuild
-- records step `build` with the build's id in the transaction that inserts
-- the build; CancelBuild records `cancel` with the build's id after the
-- cancel (cancelling twice changes nothing). The same key again answers the
-- build as it is now instead of making another; the same key with another
-- request is refused. `fingerprint` is a SHA-256 of the request's fields
-- (a build request holds no secret). Rows older than a day are ignored and
-- swept. The same table as the release service's, read and written by
-- `slipway_storage::idempotency`.
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
