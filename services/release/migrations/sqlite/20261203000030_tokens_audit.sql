-- Scoped access tokens and the audit trail's source and outcome.
-- Times are microseconds since the Unix epoch.

-- A token is kept only as HMAC-SHA256(key, token) in hex, never itself.
-- Revoked tokens stay (with who revoked them) so the trail can name them;
-- a name is unique among the tokens not revoked.
CREATE TABLE access_tokens (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    name          TEXT    NOT NULL,
    role          TEXT    NOT NULL CHECK (role IN ('read', 'deploy', 'admin')),
    -- Comma-separated app patterns (`web,web-*`); '' for every app.
    apps          TEXT    NOT NULL DEFAULT '',
    hash          TEXT    NOT NULL UNIQUE,
    created_at    INTEGER NOT NULL,
    created_by    TEXT    NOT NULL,
    expires_at    INTEGER,
    revoked_at    INTEGER,
    revoked_by    TEXT,
    last_used_at  INTEGER
);
CREATE UNIQUE INDEX access_tokens_active_name ON access_tokens (name)
    WHERE revoked_at IS NULL;

-- Where a change came from and how it ended (`ok`, or `denied` for a
-- refusal recorded at the edge).
ALTER TABLE audit_events ADD COLUMN source  TEXT NOT NULL DEFAULT '';
ALTER TABLE audit_events ADD COLUMN outcome TEXT NOT NULL DEFAULT 'ok';
CREATE INDEX audit_events_at ON audit_events (at);

-- The trail is append-only, like the ledger.
CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'the audit trail is append-only');
END;
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'the audit trail is append-only');
END;
