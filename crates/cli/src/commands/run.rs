//! One-off processes: `slipway run`, `slipway exec`, `slipway ps info` and
//! `slipway ps stop`, printed as the `convox` CLI prints them.
//!
//! An attached `run` starts the one-off with its command and attaches to
//! it at once (no holder, no polling: Slipway's `Attach` extension), pipes
//! stdin through and ends the remote stdin at EOF, prints the output byte
//! for byte, and exits with the remote command's status. Ctrl-C stops the
//! remote process before exiting (130).

use std::io::Write as _;

use anyhow::bail;
use chrono::Utc;
use slipway_client::{Client, ExecOutcome, ExecSession, RunOptions};

use crate::Context;
use crate::cli::{PsCommand, RunArgs};
use crate::humanize::relative;
use crate::output::{Output, info, print};
use crate::stdio::Stdio;

/// `slipway run SERVICE COMMAND...`.
pub(crate) async fn run(ctx: &Context, args: &RunArgs) -> anyhow::Result<()> {
    let (client, app) = (ctx.client()?, ctx.app()?);
    // Listening from the start: a Ctrl-C that comes while the process
    // starts still stops it.
    let interrupt = interrupt()?;
    let command = args.command.join(" ");
    let options = RunOptions {
        release: args.release.clone(),
        timeout: args.timeout,
        attach: !args.detach,
    };
    if args.detach {
        let out = Output::new(false);
        out.start("Running detached process")?;
        let process = client
            .process_run(&app, &args.service, &command, &options)
            .await?;
        return Ok(out.line(&format!("OK, {}", process.id))?);
    }
    let process = client
        .process_run(&app, &args.service, &command, &options)
        .await?;
    let session = match client.process_attach(&app, &process.id).await {
        Ok(session) => session,
        Err(e) => {
            let _ = client.process_stop(&app, &process.id).await;
            return Err(e.into());
        }
    };
    let code = attached(&client, &app, Some(&process.id), session, interrupt).await?;
    exit(code)
}

/// SIGINT as a stream, registered now.
fn interrupt() -> anyhow::Result<tokio::signal::unix::Signal> {
    Ok(tokio::signal::unix::signal(
        tokio::signal::unix::SignalKind::interrupt(),
    )?)
}

/// `slipway exec PID COMMAND...`.
pub(crate) async fn exec(ctx: &Context, pid: &str, command: &[String]) -> anyhow::Result<()> {
    let (client, app) = (ctx.client()?, ctx.app()?);
    let interrupt = interrupt()?;
    let session = client.process_exec(&app, pid, &command.join(" ")).await?;
    // Ctrl-C ends the session, which kills the command, not the process.
    let code = attached(&client, &app, None, session, interrupt).await?;
    exit(code)
}

/// Runs a session to its end; on Ctrl-C, stops the one-off `stop` (if
/// any) and gives 130.
async fn attached(
    client: &Client,
    app: &str,
    stop: Option<&str>,
    session: ExecSession,
    mut interrupt: tokio::signal::unix::Signal,
) -> anyhow::Result<i32> {
    // Dropped (the pipes' flags put back) before the CLI exits.
    let Stdio {
        input,
        output,
        flags: _flags,
    } = Stdio::open();
    tokio::select! {
        outcome = session.run(input, output) => {
            let ExecOutcome { code, error } = outcome?;
            if let Some(message) = error {
                bail!("{message}");
            }
            Ok(code)
        }
        _ = interrupt.recv() => {
            if let Some(pid) = stop {
                let _ = client.process_stop(app, pid).await;
            }
            Ok(130)
        }
    }
}

/// Exits with the remote status (mod 256, as the `convox` CLI does), once
/// stdout is flushed; the stdin reader may still be blocked in a read.
fn exit(code: i32) -> anyhow::Result<()> {
    let _ = std::io::stdout().flush();
    std::process::exit(code & 0xff)
}

/// `slipway ps info PID`, `slipway ps stop PID`.
pub(crate) async fn ps(ctx: &Context, command: PsCommand) -> anyhow::Result<()> {
    let (client, app) = (ctx.client()?, ctx.app()?);
    match command {
        PsCommand::Info { pid } => {
            let p = client.process(&app, &pid).await?;
            print(&info(&[
                ("Id", p.id),
                ("App", p.app),
                ("Command", p.command),
                ("Instance", p.instance),
                ("Release", p.release),
                ("Service", p.name),
                ("Started", relative(p.started, Utc::now())),
                ("Status", p.status),
            ]))?;
        }
        PsCommand::Stop { pid } => {
            let out = Output::new(false);
            out.start(&format!("Stopping {pid}"))?;
            client.process_stop(&app, &pid).await?;
            out.ok()?;
        }
    }
    Ok(())
}
