//! Promoting a release and following its rollout, shared by `deploy`,
//! `releases promote`, `releases rollback` and `env set/unset --promote`.
//!
//! Unlike the `convox` CLI, which polls the app every 5 s, this follows the
//! promotion's typed event stream (printing each `<time> system/... ` line
//! as it arrives) and returns the moment it ends: its last frame carries
//! the promotion's result, which decides between `OK` and an error that
//! says why. A stream that breaks before its result is resumed after the
//! last event printed; only then is the promotion's state read.

use std::time::Duration;

use anyhow::bail;
use slipway_client::types::Promotion;
use slipway_client::{Client, PromotionFrame};

use crate::output::Output;

/// Consecutive failures to open (or keep) the event stream of a promotion
/// still in flight before giving up on following it.
const MAX_STREAM_FAILURES: u32 = 30;
/// The wait before reopening a stream that broke, doubled on each failure
/// in a row up to [`MAX_BACKOFF`]. A stream that ends with its result (the
/// usual case) is never reopened.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// `Promoting R...`, the promote call, then [`follow`].
pub(crate) async fn promote(
    client: &Client,
    out: Output,
    app: &str,
    id: &str,
    force: bool,
) -> anyhow::Result<()> {
    out.line(&format!("Promoting {id}..."))?;
    let promotion = client.release_promote(app, id, force).await?;
    follow(client, out, app, &promotion).await
}

/// Prints the promotion's events until its rollout ends, then `OK`, or fails
/// with the reason it did not succeed.
pub(crate) async fn follow(
    client: &Client,
    out: Output,
    app: &str,
    promotion: &Promotion,
) -> anyhow::Result<()> {
    if promotion.noop || promotion.id.is_empty() {
        if !promotion.message.is_empty() {
            out.line(&promotion.message)?;
        }
        return finish(out, &promotion.id, &promotion.state, &promotion.reason);
    }
    // The id of the last event printed: a reopened stream resumes after it.
    let mut after = String::new();
    let mut at_line_start = true;
    let (mut failures, mut backoff) = (0u32, FIRST_BACKOFF);
    loop {
        let failure = match client.promotion_follow(app, &promotion.id, &after).await {
            Ok(mut stream) => loop {
                match stream.next().await {
                    Some(Ok(PromotionFrame::Event { id, line })) => {
                        out.write(&line)?;
                        at_line_start = line.ends_with('\n');
                        after = id;
                        (failures, backoff) = (0, FIRST_BACKOFF);
                    }
                    Some(Ok(PromotionFrame::Result(result))) => {
                        stream.close().await;
                        if !at_line_start {
                            out.write("\n")?;
                        }
                        return finish(out, &promotion.id, &result.state, &result.reason);
                    }
                    Some(Err(e)) => break Some(e.to_string()),
                    // Ended without its result: the connection dropped.
                    None => break None,
                }
            },
            Err(e) => Some(e.to_string()),
        };
        // No result came: the gateway restarted, the connection dropped, or
        // a rollout still being set up does not stream yet. The promotion
        // may have ended meanwhile.
        let current = client.promotion(app, &promotion.id).await?;
        if !matches!(current.state.as_str(), "pending" | "rolling_out") {
            if !at_line_start {
                out.write("\n")?;
            }
            return finish(out, &current.id, &current.state, &current.reason);
        }
        failures += 1;
        if failures >= MAX_STREAM_FAILURES {
            bail!(
                "cannot follow promotion {} (still {}): {}",
                promotion.id,
                current.state,
                failure.unwrap_or_else(|| "the stream keeps ending early".into())
            );
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// `OK` for a promotion that succeeded (`state`), else the error saying why
/// not.
fn finish(out: Output, id: &str, state: &str, reason: &str) -> anyhow::Result<()> {
    let because = |what: &str| {
        if reason.is_empty() {
            what.to_owned()
        } else {
            format!("{what}: {reason}")
        }
    };
    match state {
        "succeeded" => Ok(out.ok()?),
        "rolled_back" => bail!(because("rollback")),
        "failed" => bail!(because("promotion failed")),
        "cancelled" => bail!(because("promotion cancelled")),
        other => bail!("promotion {id} ended in an unexpected state {other:?}"),
    }
}
