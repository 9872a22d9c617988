//! `slipway apps`: list, create, info, delete, cancel.

use crate::Context;
use crate::cli::AppsCommand;
use crate::output::{Output, info, print, table};

/// Runs `apps` (a list without a subcommand).
pub(crate) async fn run(ctx: &Context, command: Option<AppsCommand>) -> anyhow::Result<()> {
    let client = ctx.client()?;
    let out = Output::new(false);
    match command {
        None => {
            let apps = client.apps().await?;
            let rows: Vec<Vec<String>> = apps
                .into_iter()
                .map(|a| vec![a.name, a.status, a.release])
                .collect();
            print(&table(&["APP", "STATUS", "RELEASE"], &rows))?;
        }
        Some(AppsCommand::Create { name, timeout }) => {
            let app = ctx.app_or(name.as_deref())?;
            out.start(&format!("Creating {app}"))?;
            client.app_create(&app, timeout).await?;
            out.ok()?;
        }
        Some(AppsCommand::Info { name }) => {
            let app = client.app(&ctx.app_or(name.as_deref())?).await?;
            let mut rows = vec![("Name", app.name), ("Status", app.status)];
            if !app.generation.is_empty() {
                rows.push(("Generation", app.generation));
            }
            rows.push(("Locked", app.locked.to_string()));
            rows.push(("Release", app.release));
            if !app.router.is_empty() {
                rows.push(("Router", app.router));
            }
            print(&info(&rows))?;
        }
        Some(AppsCommand::Delete { name }) => {
            let app = ctx.app_or(name.as_deref())?;
            out.start(&format!("Deleting {app}"))?;
            client.app_delete(&app).await?;
            out.ok()?;
        }
        Some(AppsCommand::Cancel { name }) => {
            let app = ctx.app_or(name.as_deref())?;
            out.start(&format!("Cancelling deployment of {app}"))?;
            client.app_cancel(&app).await?;
            out.ok()?;
        }
    }
    Ok(())
}
