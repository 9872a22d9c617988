-- One database per service: each service runs its own migrations (sqlx keeps one
-- `_sqlx_migrations` table per database), so they must not share one.
CREATE DATABASE slipway_release OWNER slipway;
CREATE DATABASE slipway_rollout OWNER slipway;
CREATE DATABASE slipway_build OWNER slipway;
