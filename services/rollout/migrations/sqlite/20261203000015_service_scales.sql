-- Scale set by hand (`convox scale`), per app and service: it overrides the
-- manifest's `scale.count` for every later rollout of the app (a count left
-- NULL keeps the manifest's), and cpu (millicores) and memory (MiB), 0 when
-- unset. The audit log keeps every change, with who made it.
CREATE TABLE service_scales (
    app         TEXT    NOT NULL,
    service     TEXT    NOT NULL,
    count       BIGINT,
    cpu         BIGINT  NOT NULL DEFAULT 0,
    memory      BIGINT  NOT NULL DEFAULT 0,
    updated_at  BIGINT  NOT NULL,
    PRIMARY KEY (app, service)
);

CREATE TABLE service_scale_audit (
    app         TEXT    NOT NULL,
    service     TEXT    NOT NULL,
    -- `scale` or `restart`.
    action      TEXT    NOT NULL,
    -- What was asked, e.g. `count=3 memory=512`.
    detail      TEXT    NOT NULL,
    actor       TEXT    NOT NULL,
    -- The settled rollout record the change rolled out under.
    rollout_id  TEXT    NOT NULL,
    at          BIGINT  NOT NULL
);
CREATE INDEX service_scale_audit_app ON service_scale_audit (app, at);
