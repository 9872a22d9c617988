-- The unprivileged user each app's processes run as on the local runtime
-- when the rack runs as root: one uid (and gid of the same number) per app,
-- kept across restarts so an app's files stay its own.
CREATE TABLE local_app_users (
    app  TEXT    PRIMARY KEY,
    uid  BIGINT  NOT NULL
);
CREATE UNIQUE INDEX local_app_users_uid ON local_app_users (uid);
