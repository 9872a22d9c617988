//! `slipway scale` (list, or change a service's count, cpu and memory and
//! wait for it), `slipway restart` and `slipway services restart SERVICE`,
//! printed as the `convox` CLI prints them (reference part 2 §6).

use std::time::Duration;

use anyhow::{anyhow, bail};
use slipway_client::types::{Process, Service};
use slipway_client::{Client, LogOptions};

use crate::Context;
use crate::cli::ScaleArgs;
use crate::output::{Output, print, table};

/// How long `scale` waits for the change to run at most.
const WAIT: Duration = Duration::from_secs(600);
/// How often it looks at the processes while waiting.
const POLL: Duration = Duration::from_millis(500);

/// Runs `scale`: a listing without a change, else the change and the wait.
pub(crate) async fn scale(ctx: &Context, args: &ScaleArgs) -> anyhow::Result<()> {
    let (client, app) = (ctx.client()?, ctx.app()?);
    let changing = args.count.is_some() || args.cpu.is_some() || args.memory.is_some();
    if !changing {
        return list(&client, &app, args.service.as_deref()).await;
    }
    let Some(service) = args.service.as_deref() else {
        bail!("service name required");
    };
    let mut form = Vec::new();
    for (name, value) in [
        ("count", args.count),
        ("cpu", args.cpu),
        ("memory", args.memory),
    ] {
        if let Some(v) = value {
            form.push((name, v.to_string()));
        }
    }
    let out = Output::new(false);
    out.line(&format!("Scaling {service}... "))?;
    client.service_update(&app, service, &form).await?;
    wait(&client, &app, service, out).await?;
    out.ok()?;
    Ok(())
}

/// The table of `convox scale`, sorted by name; RUNNING counts every
/// process of the service, whatever its status.
async fn list(client: &Client, app: &str, only: Option<&str>) -> anyhow::Result<()> {
    let (mut services, processes) = tokio::try_join!(client.services(app), client.processes(app))?;
    if let Some(name) = only {
        if !services.iter().any(|s| s.name == name) {
            bail!("service {name:?} not found in app {app}");
        }
        services.retain(|s| s.name == name);
    }
    services.sort_by(|a, b| a.name.cmp(&b.name));
    let rows: Vec<Vec<String>> = services.iter().map(|s| row(s, &processes)).collect();
    print(&table(
        &[
            "SERVICE", "DESIRED", "RUNNING", "CPU", "MEMORY", "GPU", "MIN", "MAX", "STATUS",
        ],
        &rows,
    ))?;
    Ok(())
}

fn row(s: &Service, processes: &[Process]) -> Vec<String> {
    let running = processes.iter().filter(|p| p.name == s.name).count();
    let gpu = if s.gpu == 0 {
        "-".to_owned()
    } else {
        s.gpu.to_string()
    };
    vec![
        s.name.clone(),
        s.count.to_string(),
        running.to_string(),
        s.cpu.to_string(),
        s.memory.to_string(),
        gpu,
        "-".into(),
        "-".into(),
        // Slipway: says so when cpu and memory are set but not enforced.
        s.limits_note.clone(),
    ]
}

/// Waits until the service runs its desired count, every process running
/// (none starting or stopping), printing the app's log meanwhile as the
/// `convox` CLI does.
async fn wait(client: &Client, app: &str, service: &str, out: Output) -> anyhow::Result<()> {
    let logs = {
        let client = client.clone();
        let app = app.to_owned();
        tokio::spawn(async move {
            let options = LogOptions {
                service: None,
                since: Some(Duration::from_secs(5)),
                follow: true,
            };
            if let Ok(mut stream) = client.app_logs(&app, &options).await {
                while let Some(Ok(chunk)) = stream.next().await {
                    if out.write(&chunk).is_err() {
                        break;
                    }
                }
            }
        })
    };
    let result = tokio::time::timeout(WAIT, async {
        loop {
            let (services, processes) =
                tokio::try_join!(client.services(app), client.processes(app))?;
            let desired = services
                .iter()
                .find(|s| s.name == service)
                .map(|s| s.count)
                .ok_or_else(|| anyhow!("service {service:?} not found in app {app}"))?;
            let mine: Vec<&Process> = processes.iter().filter(|p| p.name == service).collect();
            let running = mine.iter().filter(|p| p.status == "running").count();
            if running as i64 == desired && mine.len() == running {
                return Ok::<_, anyhow::Error>(());
            }
            tokio::time::sleep(POLL).await;
        }
    })
    .await;
    logs.abort();
    match result {
        Ok(done) => done,
        Err(_) => bail!("timeout waiting for {service} to scale"),
    }
}

/// `slipway restart`: every service, by name; the first failure stops.
pub(crate) async fn restart_all(ctx: &Context) -> anyhow::Result<()> {
    let (client, app) = (ctx.client()?, ctx.app()?);
    let mut names: Vec<String> = client
        .services(&app)
        .await?
        .into_iter()
        .map(|s| s.name)
        .collect();
    names.sort();
    for name in names {
        restart(&client, &app, &name).await?;
    }
    Ok(())
}

/// `slipway services restart SERVICE`.
pub(crate) async fn restart_one(ctx: &Context, service: &str) -> anyhow::Result<()> {
    let (client, app) = (ctx.client()?, ctx.app()?);
    restart(&client, &app, service).await
}

async fn restart(client: &Client, app: &str, service: &str) -> anyhow::Result<()> {
    let out = Output::new(false);
    out.start(&format!("Restarting {service}"))?;
    client.service_restart(app, service).await?;
    out.ok()?;
    Ok(())
}
