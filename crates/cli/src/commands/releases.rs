//! `slipway releases`: list, info, manifest, promote, rollback.

use anyhow::bail;
use chrono::{SecondsFormat, Utc};
use slipway_client::types::go_time;

use super::promote::{follow, promote};
use crate::Context;
use crate::cli::ReleasesCommand;
use crate::humanize::relative;
use crate::output::{Output, info, print, table};

/// Runs `releases` (a list without a subcommand).
pub(crate) async fn run(
    ctx: &Context,
    limit: Option<u32>,
    command: Option<ReleasesCommand>,
) -> anyhow::Result<()> {
    let (client, app) = (ctx.client()?, ctx.app()?);
    match command {
        None => {
            let (active, releases) =
                tokio::try_join!(client.app(&app), client.releases(&app, limit))?;
            let now = Utc::now();
            let rows: Vec<Vec<String>> = releases
                .into_iter()
                .map(|r| {
                    let status = if r.id == active.release { "active" } else { "" };
                    vec![
                        r.id,
                        status.to_owned(),
                        r.build,
                        relative(r.created, now),
                        r.description,
                    ]
                })
                .collect();
            print(&table(
                &["ID", "STATUS", "BUILD", "CREATED", "DESCRIPTION"],
                &rows,
            ))?;
        }
        Some(ReleasesCommand::Info { id }) => {
            let release = client.release(&app, &id).await?;
            let created = if go_time::is_zero(&release.created) {
                String::new()
            } else {
                release.created.to_rfc3339_opts(SecondsFormat::Secs, true)
            };
            print(&info(&[
                ("Id", release.id),
                ("Build", release.build),
                ("Created", created),
                ("Description", release.description),
                ("Env", release.env),
            ]))?;
        }
        Some(ReleasesCommand::Manifest { id }) => {
            let release = client.release(&app, &id).await?;
            let manifest = if !release.manifest.trim().is_empty() {
                release.manifest
            } else if release.build.is_empty() {
                bail!("no build for release: {}", release.id);
            } else {
                client.build(&app, &release.build).await?.manifest
            };
            print(&format!("{}\n", manifest.trim()))?;
        }
        Some(ReleasesCommand::Promote { id, force }) => {
            let id = match id {
                Some(id) => id,
                None => match client.releases(&app, Some(1)).await?.into_iter().next() {
                    Some(newest) => newest.id,
                    None => bail!("no releases to promote"),
                },
            };
            promote(&client, Output::new(false), &app, &id, force).await?;
        }
        Some(ReleasesCommand::Rollback { id, id_only }) => {
            let out = Output::new(id_only);
            out.start(&format!("Rolling back to {id}"))?;
            let rollback = client.release_rollback(&app, &id).await?;
            out.line(&format!("OK, {}", rollback.release.id))?;
            follow(&client, out, &app, &rollback.promotion).await?;
            out.id(&rollback.release.id)?;
        }
    }
    Ok(())
}
