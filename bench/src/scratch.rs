//! A scratch PostgreSQL database for one bench run: created fresh on the
//! server the admin URL names, dropped afterwards whatever the run's result.

use std::future::Future;

use anyhow::Context as _;
use sqlx::Connection as _;

/// Creates `slipway_bench_<tag>_<pid>` next to `admin_url`'s database,
/// runs `body` with its URL, then drops it (with `FORCE`, so pools the run
/// left open do not keep it alive).
pub(crate) async fn with_scratch_database<T, F, Fut>(
    admin_url: &str,
    tag: &str,
    body: F,
) -> anyhow::Result<T>
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let scratch = format!("slipway_bench_{tag}{}", std::process::id());
    let mut admin = sqlx::PgConnection::connect(admin_url)
        .await
        .context("connect to PostgreSQL (set SLIPWAY_BENCH_DATABASE_URL)")?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {scratch}"))
        .execute(&mut admin)
        .await?;
    sqlx::query(&format!("CREATE DATABASE {scratch}"))
        .execute(&mut admin)
        .await?;
    let base = admin_url
        .rsplit_once('/')
        .map_or(admin_url, |(base, _)| base);
    let result = body(format!("{base}/{scratch}")).await;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {scratch} WITH (FORCE)"))
        .execute(&mut admin)
        .await?;
    result
}
