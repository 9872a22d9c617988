//! `slipway build` and `slipway deploy`: package the source, upload it,
//! start a build, stream its log, wait for it, then print the build and
//! release ids (and, for deploy, promote the release).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use slipway_client::types::Build;
use slipway_client::{BuildOptions, Client};

use super::promote::promote;
use crate::Context;
use crate::cli::{BuildArgs, DeployArgs};
use crate::output::Output;
use crate::package::package;

/// How long a build may take before the CLI stops waiting (as Convox).
const BUILD_TIMEOUT: Duration = Duration::from_secs(60 * 60);

/// `slipway build`.
pub(crate) async fn build(ctx: &Context, args: &BuildArgs) -> anyhow::Result<()> {
    let (client, app) = (ctx.client()?, ctx.app()?);
    let out = Output::new(args.id);
    let build = run_build(ctx, &client, out, &app, args).await?;
    out.line(&format!("Build: {}", build.id))?;
    out.line(&format!("Release: {}", build.release))?;
    out.id(&build.release)?;
    Ok(())
}

/// `slipway deploy`: build, then promote the build's release.
pub(crate) async fn deploy(ctx: &Context, args: &DeployArgs) -> anyhow::Result<()> {
    let (client, app) = (ctx.client()?, ctx.app()?);
    let out = Output::new(args.build.id);
    let build = run_build(ctx, &client, out, &app, &args.build).await?;
    out.line(&format!("Build: {}", build.id))?;
    out.line(&format!("Release: {}", build.release))?;
    if build.release.is_empty() {
        bail!(
            "no release to promote: build {} completed without creating one",
            build.id
        );
    }
    promote(&client, out, &app, &build.release, args.force).await?;
    out.id(&build.release)?;
    Ok(())
}

/// Everything up to a completed build.
async fn run_build(
    ctx: &Context,
    client: &Client,
    out: Output,
    app: &str,
    args: &BuildArgs,
) -> anyhow::Result<Build> {
    let dir = absolute(&ctx.env.cwd, &args.dir);
    if !dir.is_dir() {
        bail!("cannot build {}: not a directory", dir.display());
    }
    let options = BuildOptions {
        // Like the `convox` CLI, the default comes from the current directory's git tree.
        description: args
            .description
            .clone()
            .or_else(|| git_description(&ctx.env.cwd)),
        git_sha: git_sha(&dir),
        manifest: args.manifest.clone(),
        no_cache: args.no_cache,
    };

    out.start("Packaging source")?;
    let tarball = package(&dir).with_context(|| format!("package {}", dir.display()))?;
    out.ok()?;

    out.start("Uploading source")?;
    let key = format!("tmp/{}.tgz", random_hex());
    let object = client.object_store(app, &key, tarball).await?;
    out.ok()?;

    out.start("Starting build")?;
    let build = client.build_create(app, &object.url, &options).await?;
    out.ok()?;

    let mut log = LogProgress {
        at_line_start: true,
        ..Default::default()
    };
    log.stream(client, out, app, &build.id).await?;
    let started = Instant::now();
    // The log usually ends as the build does, but its status may be recorded
    // a moment later: look again soon, then less often (a live stream that
    // broke leaves a build still running).
    let mut wait = Duration::from_millis(10);
    let build = loop {
        let current = client.build(app, &build.id).await?;
        match current.status.as_str() {
            "created" | "running" if started.elapsed() < BUILD_TIMEOUT => {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(1));
            }
            "created" | "running" => bail!("build {} timed out after 60 minutes", build.id),
            "complete" => break current,
            "failed" | "cancelled" => {
                log.catch_up(client, out, app, &build.id).await?;
                let what = format!("build {}", current.status);
                bail!(if current.reason.is_empty() {
                    what
                } else {
                    format!("{what}: {}", current.reason)
                });
            }
            other => bail!("unexpected build status: {other}"),
        }
    };
    log.catch_up(client, out, app, &build.id).await?;
    Ok(build)
}

/// What of a build's log has been printed.
#[derive(Default)]
struct LogProgress {
    /// Bytes printed.
    shown: usize,
    /// The live stream ended cleanly, so everything was printed.
    complete: bool,
    /// The last byte printed was a newline (or nothing was printed).
    at_line_start: bool,
}

impl LogProgress {
    /// Prints the live log until it ends.
    async fn stream(
        &mut self,
        client: &Client,
        out: Output,
        app: &str,
        build: &str,
    ) -> anyhow::Result<()> {
        let Ok(mut stream) = client.build_logs(app, build).await else {
            return Ok(());
        };
        let mut offset = 0usize;
        while let Some(chunk) = stream.next().await {
            let Ok(chunk) = chunk else {
                return Ok(());
            };
            // A replay (after a broken stream) starts at byte 0 again.
            let bytes = chunk.as_bytes();
            let end = offset + bytes.len();
            if end > self.shown {
                let new = &bytes[self.shown.saturating_sub(offset)..];
                out.write_bytes(new)?;
                self.at_line_start = new.ends_with(b"\n");
                self.shown = end;
            }
            offset = end;
        }
        self.complete = true;
        Ok(())
    }

    /// After the build ended: if the live stream broke, replays the log and
    /// prints what was missed; then makes sure the next line starts afresh.
    async fn catch_up(
        &mut self,
        client: &Client,
        out: Output,
        app: &str,
        build: &str,
    ) -> anyhow::Result<()> {
        if !self.complete {
            self.stream(client, out, app, build).await?;
        }
        if !self.at_line_start {
            out.write("\n")?;
            self.at_line_start = true;
        }
        Ok(())
    }
}

/// `path` against `cwd` unless it is absolute.
fn absolute(cwd: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_owned()
    } else {
        cwd.join(path)
    }
}

/// 30 lowercase hex characters, for the upload's object key.
fn random_hex() -> String {
    rand::random::<[u8; 15]>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `build <sha10> <subject>` for a clean git tree in `cwd` (no unstaged
/// changes to tracked files), else nothing: the server then uses its own.
fn git_description(cwd: &Path) -> Option<String> {
    let clean = Command::new("git")
        .args(["diff", "--quiet"])
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !clean {
        return None;
    }
    let log = git(cwd, &["log", "-n", "1", "--pretty=%h %s", "--abbrev=10"])?;
    Some(format!("build {log}"))
}

/// The full sha of `dir`'s HEAD, when it is in a git repository.
fn git_sha(dir: &Path) -> Option<String> {
    git(dir, &["rev-parse", "HEAD"])
        .filter(|sha| sha.len() == 40 && sha.chars().all(|c| c.is_ascii_hexdigit()))
}

/// A git command's trimmed output, when it succeeds with some.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    (output.status.success() && !text.is_empty()).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_keys_are_30_lowercase_hex_characters() {
        let hex = random_hex();
        assert_eq!(hex.len(), 30);
        assert!(
            hex.chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)),
            "{hex}"
        );
    }

    #[test]
    fn outside_git_there_is_no_description_or_sha() {
        let dir = tempfile::tempdir().unwrap();
        // A temp dir is not inside a repository (unless TMPDIR is, which CI's is not).
        if git(dir.path(), &["rev-parse", "--git-dir"]).is_none() {
            assert_eq!(git_description(dir.path()), None);
            assert_eq!(git_sha(dir.path()), None);
        }
    }
}
