//! `slipway rack` (what the rack is) and `slipway login` (check a rack URL
//! and remember it for commands run without `RACK_URL`).

use std::io::Write as _;

use anyhow::Context as _;
use slipway_client::Client;

use crate::Context;
use crate::output::{Output, info, print};

/// `slipway rack`.
pub(crate) async fn rack(ctx: &Context) -> anyhow::Result<()> {
    let system = ctx.client()?.system().await?;
    let mut rows = vec![("Name", system.name), ("Provider", system.provider)];
    if !system.region.is_empty() {
        rows.push(("Region", system.region));
    }
    if !system.domain.is_empty() {
        rows.push(("Router", system.domain));
    }
    rows.push(("Status", system.status));
    rows.push(("Version", system.version));
    print(&info(&rows))?;
    Ok(())
}

/// `slipway login URL`: checks the URL and its credentials against the
/// rack, then stores it (readable by the user only: it holds the password).
pub(crate) async fn login(ctx: &Context, url: &str) -> anyhow::Result<()> {
    let client = Client::with_tls(url, ctx.tls())?.with_traceparent(ctx.traceparent());
    let file = ctx
        .env
        .rack_file()
        .context("cannot tell where to store the rack URL: set SLIPWAY_CONFIG or HOME, or use RACK_URL instead")?;
    let out = Output::new(false);
    out.start(&format!("Authenticating with {}", client.rack()))?;
    client.system().await?;
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    write_private(&file, &format!("{}\n", url.trim()))
        .with_context(|| format!("store the rack URL in {}", file.display()))?;
    out.ok()?;
    Ok(())
}

/// Writes `text` to `path` with mode 0600.
fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // An existing file keeps its mode on open; make sure it is private.
    use std::os::unix::fs::PermissionsExt as _;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(text.as_bytes())
}
