//! `slipway builds`: list, info, logs (live while the build runs), as the
//! `convox` CLI prints them (reference part 2 §5).

use anyhow::bail;
use chrono::{DateTime, Utc};
use slipway_client::stream_error;
use slipway_client::types::{Build, go_time};

use crate::Context;
use crate::cli::BuildsCommand;
use crate::humanize::relative;
use crate::output::{Output, info, print, table};

/// Runs `builds` (a list without a subcommand).
pub(crate) async fn run(
    ctx: &Context,
    limit: Option<u32>,
    command: Option<BuildsCommand>,
) -> anyhow::Result<()> {
    let (client, app) = (ctx.client()?, ctx.app()?);
    match command {
        None => {
            // Server order (newest first); the CLI neither sorts nor trims.
            let builds = client.builds(&app, limit).await?;
            let now = Utc::now();
            let rows: Vec<Vec<String>> = builds
                .into_iter()
                .map(|b| {
                    vec![
                        b.id.clone(),
                        b.status.clone(),
                        b.release.clone(),
                        relative(b.started, now),
                        elapsed(&b),
                        b.description,
                    ]
                })
                .collect();
            print(&table(
                &[
                    "ID",
                    "STATUS",
                    "RELEASE",
                    "STARTED",
                    "ELAPSED",
                    "DESCRIPTION",
                ],
                &rows,
            ))?;
        }
        Some(BuildsCommand::Info { id }) => {
            let build = client.build(&app, &id).await?;
            let elapsed = elapsed(&build);
            print(&info(&[
                ("Id", build.id),
                ("Status", build.status),
                ("Release", build.release),
                ("Description", build.description),
                ("Started", relative(build.started, Utc::now())),
                ("Elapsed", elapsed),
            ]))?;
        }
        Some(BuildsCommand::Logs { id }) => {
            let mut stream = client.build_logs(&app, &id).await?;
            let out = Output::new(false);
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                // An unknown build (or a refused login) is reported in-stream.
                if let Some(message) = stream_error(&chunk) {
                    bail!("{message}");
                }
                out.write(&chunk)?;
            }
        }
        Some(BuildsCommand::Export { id, file }) => {
            super::build_archive::export(&client, &app, &id, file.as_deref()).await?;
        }
        Some(BuildsCommand::Import { file, id }) => {
            super::build_archive::import(&client, &app, file.as_deref(), id).await?;
        }
    }
    Ok(())
}

/// `ended - started` as the `convox` CLI prints it (`1m5s`, `7s`,
/// `1h2m3s`), truncated to the second; empty while the build runs.
fn elapsed(build: &Build) -> String {
    if go_time::is_zero(&build.ended) || go_time::is_zero(&build.started) {
        return String::new();
    }
    duration(build.started, build.ended)
}

fn duration(started: DateTime<Utc>, ended: DateTime<Utc>) -> String {
    let total = (ended - started).num_seconds().max(0);
    let (h, m, s) = (total / 3600, (total / 60) % 60, total % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, m) => format!("{m}m{s}s"),
        (h, m) => format!("{h}h{m}m{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone as _;

    #[test]
    fn elapsed_prints_like_convox() {
        let at = |s: i64| Utc.timestamp_opt(1_700_000_000 + s, 0).unwrap();
        assert_eq!(duration(at(0), at(7)), "7s");
        assert_eq!(duration(at(0), at(65)), "1m5s");
        assert_eq!(duration(at(0), at(120)), "2m0s");
        assert_eq!(duration(at(0), at(3723)), "1h2m3s");
        assert_eq!(duration(at(0), at(0)), "0s");
    }
}
