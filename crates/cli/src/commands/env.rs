//! `slipway env`: print, get, set, unset. Changes go to Slipway's atomic env
//! route as a delta (`{"set":{…},"unset":[…]}`), never as a rewritten whole
//! env, so two people changing different keys at once both win.

use std::collections::BTreeMap;
use std::io::{IsTerminal as _, Read as _};

use anyhow::{Context as _, bail};
use slipway_client::Client;
use slipway_client::types::{EnvChange, Release};

use super::promote::promote;
use crate::Context;
use crate::cli::EnvCommand;
use crate::output::{Output, print};

/// Runs `env` (print everything without a subcommand).
pub(crate) async fn run(ctx: &Context, command: Option<EnvCommand>) -> anyhow::Result<()> {
    let (client, app) = (ctx.client()?, ctx.app()?);
    match command {
        None => {
            // One `KEY=VALUE` line per variable; a value with a newline shows as
            // `$'…'`, which `slipway env get KEY` prints exactly.
            let env = env_of(&newest(&client, &app).await?)?;
            print(&format!("{}\n", env.to_wire()))?;
        }
        Some(EnvCommand::Get { key }) => {
            let env = env_of(&newest(&client, &app).await?)?;
            match env.get(&key) {
                Some(value) => print(&format!("{value}\n"))?,
                None => bail!("env not found: {key}"),
            }
        }
        Some(EnvCommand::Set {
            pairs,
            promote: and_promote,
            id,
            from_active,
        }) => {
            let stdin = std::io::stdin();
            let mut set = if pairs.is_empty() && !stdin.is_terminal() {
                BTreeMap::new()
            } else {
                parse_pairs(&pairs)?
            };
            if !stdin.is_terminal() {
                let mut text = String::new();
                stdin
                    .lock()
                    .read_to_string(&mut text)
                    .context("read KEY=VALUE lines from stdin")?;
                set.extend(stdin_env(&text)?);
            }
            if set.is_empty() {
                bail!("nothing to set: give KEY=VALUE arguments (or lines on stdin)");
            }
            let parent = basis(&client, &app, from_active).await?;
            let out = Output::new(id);
            let keys: Vec<&str> = set.keys().map(String::as_str).collect();
            out.start(&format!("Setting {}", keys.join(", ")))?;
            let change = EnvChange {
                set,
                unset: Vec::new(),
                parent,
            };
            apply(&client, out, &app, &change, and_promote).await?;
        }
        Some(EnvCommand::Unset {
            keys,
            promote: and_promote,
            id,
            from_active,
        }) => {
            let mut keys = keys;
            keys.sort();
            keys.dedup();
            if let Some(bad) = keys.iter().find(|k| k.is_empty() || k.contains('=')) {
                bail!(
                    "invalid environment variable name {bad:?}: give names only, e.g. `slipway env unset FOO`"
                );
            }
            let parent = basis(&client, &app, from_active).await?;
            let out = Output::new(id);
            out.start(&format!("Unsetting {}", keys.join(", ")))?;
            let change = EnvChange {
                set: BTreeMap::new(),
                unset: keys,
                parent,
            };
            apply(&client, out, &app, &change, and_promote).await?;
        }
    }
    Ok(())
}

/// Sends the change, prints `OK` and the new release, promotes on request.
async fn apply(
    client: &Client,
    out: Output,
    app: &str,
    change: &EnvChange,
    and_promote: bool,
) -> anyhow::Result<()> {
    let release = client.env_change(app, change).await?;
    out.ok()?;
    out.line(&format!("Release: {}", release.id))?;
    if and_promote {
        promote(client, out, app, &release.id, false).await?;
    }
    out.id(&release.id)?;
    Ok(())
}

/// The release an env change forks: with `--from-active` the active one;
/// else the newest (as Convox does), saying so first on stderr when that
/// newest is not active and its last promotion rolled back or failed (a
/// fork would promote the broken build again).
async fn basis(client: &Client, app: &str, from_active: bool) -> anyhow::Result<Option<String>> {
    let active = client.app(app).await?.release;
    if from_active {
        if active.is_empty() {
            bail!("app {app} has no active release: --from-active needs one");
        }
        return Ok(Some(active));
    }
    let newest = newest(client, app).await?;
    if active.is_empty() || newest.id.is_empty() || newest.id == active {
        return Ok(None);
    }
    let last = client
        .promotions(app, None)
        .await?
        .into_iter()
        .find(|p| p.release == newest.id);
    let how = match last.as_ref().map(|p| p.state.as_str()) {
        Some("rolled_back") => "rolled back",
        Some("failed") => "failed",
        _ => return Ok(None),
    };
    let build = if newest.build.is_empty() {
        String::new()
    } else {
        format!(" (build {})", newest.build)
    };
    eprintln!(
        "WARNING: based on {}{build}, whose promotion {how}; the active release is {active} \
         (--from-active forks the active release instead)",
        newest.id
    );
    Ok(None)
}

/// The newest release (whose env new releases fork from), or an empty one.
async fn newest(client: &Client, app: &str) -> anyhow::Result<Release> {
    Ok(client
        .releases(app, Some(1))
        .await?
        .into_iter()
        .next()
        .unwrap_or_default())
}

/// `KEY=VALUE` arguments into a map (a later key wins); each must have a
/// non-empty key and an `=`.
fn parse_pairs(pairs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    if pairs.is_empty() {
        bail!("nothing to set: give KEY=VALUE arguments (or lines on stdin)");
    }
    let mut set = BTreeMap::new();
    for pair in pairs {
        match pair.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() => {
                set.insert(key.trim().to_owned(), value.to_owned());
            }
            _ => bail!("invalid environment variable {pair:?}: expected KEY=VALUE"),
        }
    }
    Ok(set)
}

/// `KEY=VALUE` lines from stdin, read as `slipway env` prints them, so
/// `slipway env -a one | slipway env set -a two` copies every value exactly: a
/// `$'…'` value is decoded, blank lines are skipped, a `\r` before a line end
/// is dropped (an env file with CRLF line ends), a malformed line is refused
/// by number.
fn stdin_env(text: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let text: Vec<&str> = text
        .split('\n')
        .map(|line| line.strip_suffix('\r').unwrap_or(line))
        .collect();
    let env = slipway_client::types::Env::parse_wire(&text.join("\n"))
        .context("read KEY=VALUE lines from stdin")?;
    Ok(env.into_map())
}

/// A release's env with its exact values.
fn env_of(release: &Release) -> anyhow::Result<slipway_client::types::Env> {
    release
        .env_vars()
        .with_context(|| format!("read the env of release {}", release.id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_split_at_the_first_equals_and_later_keys_win() {
        let set = parse_pairs(&["A=1".into(), "B=x=y".into(), "A=2".into(), "C=".into()]).unwrap();
        assert_eq!(
            set,
            BTreeMap::from([
                ("A".into(), "2".into()),
                ("B".into(), "x=y".into()),
                ("C".into(), String::new())
            ])
        );
    }

    #[test]
    fn bad_pairs_are_named() {
        let err = parse_pairs(&["FOO".into()]).unwrap_err().to_string();
        assert!(
            err.contains("\"FOO\"") && err.contains("KEY=VALUE"),
            "{err}"
        );
        assert!(parse_pairs(&["=x".into()]).is_err());
        assert!(parse_pairs(&[]).is_err());
    }

    #[test]
    fn stdin_lines_read_what_env_prints() {
        let set = stdin_env("A=1\r\n\nPEM=$'l1\\nl2\\n'\r\nB=x=y\n").unwrap();
        assert_eq!(
            set,
            BTreeMap::from([
                ("A".into(), "1".into()),
                ("B".into(), "x=y".into()),
                ("PEM".into(), "l1\nl2\n".into()),
            ])
        );
        let err = stdin_env("A=1\nsecret").unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "read KEY=VALUE lines from stdin: line 2: expected KEY=VALUE"
        );
    }

    #[test]
    fn env_text_parses_like_convox_and_decodes_quoted_values() {
        let release = Release {
            env: "A=1\nB=2\nC=x=y\nPEM=$'l1\\nl2\\n'".into(),
            ..Default::default()
        };
        let env = env_of(&release).unwrap();
        assert_eq!(
            env.iter().collect::<Vec<_>>(),
            [("A", "1"), ("B", "2"), ("C", "x=y"), ("PEM", "l1\nl2\n")]
        );
        assert_eq!(env.to_wire(), release.env);
    }
}
