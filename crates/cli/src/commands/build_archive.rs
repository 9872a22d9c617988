//! `slipway builds export ID [-f FILE]` and `slipway builds import [-f FILE]
//! [--id]`, as the `convox` CLI runs them (reference part 2 §5.4, §5.5).

use std::io::{IsTerminal as _, Read as _, Write as _};
use std::path::Path;

use anyhow::{Context as _, bail};
use slipway_client::Client;

use crate::output::Output;

/// Writes build `id` to `file`, or to stdout when it is not a terminal
/// (progress then goes to stderr).
pub(crate) async fn export(
    client: &Client,
    app: &str,
    id: &str,
    file: Option<&Path>,
) -> anyhow::Result<()> {
    let Some(path) = file else {
        if std::io::stdout().is_terminal() {
            bail!("pipe this command into a file or specify --file");
        }
        let out = Output::new(true);
        out.start("Exporting build")?;
        let archive = client.build_export(app, id).await?;
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(&archive)?;
        stdout.flush()?;
        out.ok()?;
        return Ok(());
    };
    // Created first, as the convox CLI does, even if the request then fails.
    let mut target =
        std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    let out = Output::new(false);
    out.start("Exporting build")?;
    let archive = client.build_export(app, id).await?;
    target
        .write_all(&archive)
        .and_then(|()| target.sync_all())
        .with_context(|| format!("write {}", path.display()))?;
    out.ok()?;
    Ok(())
}

/// Imports the archive in `file` (or stdin, when it is not a terminal) into
/// `app`: `Importing build... OK, R…`; with `--id`, only the release id on
/// stdout.
pub(crate) async fn import(
    client: &Client,
    app: &str,
    file: Option<&Path>,
    id_only: bool,
) -> anyhow::Result<()> {
    let archive = match file {
        Some(path) => std::fs::read(path).with_context(|| format!("read {}", path.display()))?,
        None => {
            let mut stdin = std::io::stdin();
            if stdin.is_terminal() {
                bail!("pipe a file into this command or specify --file");
            }
            let mut bytes = Vec::new();
            stdin.read_to_end(&mut bytes).context("read stdin")?;
            bytes
        }
    };
    let out = Output::new(id_only);
    out.start("Importing build")?;
    let build = client.build_import(app, archive).await?;
    out.line(&format!("OK, {}", build.release))?;
    out.id(&build.release)?;
    Ok(())
}
