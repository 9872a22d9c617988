//! What runs: `slipway logs`, `slipway ps`, `slipway services`.

use anyhow::bail;
use chrono::Utc;
use slipway_client::{LogOptions, stream_error};

use crate::Context;
use crate::cli::LogsArgs;
use crate::humanize::relative;
use crate::output::{Output, print, table};

/// `slipway logs`: copies the stream to stdout until it ends.
pub(crate) async fn logs(ctx: &Context, args: &LogsArgs) -> anyhow::Result<()> {
    let (client, app) = (ctx.client()?, ctx.app()?);
    let options = LogOptions {
        service: args.service.clone(),
        since: args.since,
        follow: !args.no_follow,
    };
    let mut stream = client.app_logs(&app, &options).await?;
    let out = Output::new(false);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        // The rack reports failures (a bad password, an unknown app) in-stream.
        if let Some(message) = stream_error(&chunk) {
            bail!("{message}");
        }
        out.write(&chunk)?;
    }
    Ok(())
}

/// `slipway ps`.
pub(crate) async fn ps(ctx: &Context) -> anyhow::Result<()> {
    let (client, app) = (ctx.client()?, ctx.app()?);
    let processes = client.processes(&app).await?;
    let now = Utc::now();
    let rows: Vec<Vec<String>> = processes
        .into_iter()
        .map(|p| {
            vec![
                p.id,
                p.name,
                p.status,
                p.release,
                relative(p.started, now),
                p.command,
            ]
        })
        .collect();
    print(&table(
        &["ID", "SERVICE", "STATUS", "RELEASE", "STARTED", "COMMAND"],
        &rows,
    ))?;
    Ok(())
}

/// `slipway services`.
pub(crate) async fn services(ctx: &Context) -> anyhow::Result<()> {
    let (client, app) = (ctx.client()?, ctx.app()?);
    let rows: Vec<Vec<String>> = client
        .services(&app)
        .await?
        .into_iter()
        .map(|s| {
            let ports: Vec<String> = s
                .ports
                .iter()
                .map(|p| {
                    if p.balancer == 0 {
                        p.container.to_string()
                    } else {
                        format!("{}:{}", p.balancer, p.container)
                    }
                })
                .collect();
            vec![s.name, s.domain, ports.join(" ")]
        })
        .collect();
    print(&table(&["SERVICE", "DOMAIN", "PORTS"], &rows))?;
    Ok(())
}
