//! Promoting a release and following its rollout, shared by `deploy`,
//! `releases promote`, `releases rollback` and `env set/unset --promote`.
//!
//! Unlike the `convox` CLI, which polls the app every 5 s, this follows the
//! promotion's event stream (printing each `<time> system/... ` line as it
//! arrives) and returns the moment it ends; the promotion's final state then
//! decides between `OK` and an error that says why.

use std::time::Duration;

use anyhow::bail;
use slipway_client::types::Promotion;
use slipway_client::{Client, stream_error};

use crate::output::Output;

/// Consecutive failures to open (or keep) the event stream of a promotion
/// still in flight, one second apart, before giving up on following it.
const MAX_STREAM_FAILURES: u32 = 30;

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
        return finish(out, promotion);
    }
    // Bytes of the event stream already printed: a reconnect replays from
    // the start, so only what lies past this is new.
    let mut shown = 0usize;
    let mut at_line_start = true;
    let mut failures = 0u32;
    loop {
        let mut stream_failure = None;
        match client.promotion_events(app, &promotion.id).await {
            Ok(mut stream) => {
                let mut offset = 0usize;
                while let Some(chunk) = stream.next().await {
                    let chunk = match chunk {
                        Ok(chunk) => chunk,
                        Err(e) => {
                            stream_failure = Some(e.to_string());
                            break;
                        }
                    };
                    if let Some(message) = stream_error(&chunk) {
                        stream_failure = Some(message.to_owned());
                        break;
                    }
                    let bytes = chunk.as_bytes();
                    let end = offset + bytes.len();
                    if end > shown {
                        let new = &bytes[shown.saturating_sub(offset)..];
                        out.write_bytes(new)?;
                        at_line_start = new.ends_with(b"\n");
                        shown = end;
                    }
                    offset = end;
                }
            }
            Err(e) => stream_failure = Some(e.to_string()),
        }
        let current = client.promotion(app, &promotion.id).await?;
        if matches!(current.state.as_str(), "pending" | "rolling_out") {
            if let Some(failure) = stream_failure {
                // A rollout that is still being set up may not stream yet;
                // one that never streams is reported rather than awaited blindly.
                failures += 1;
                if failures >= MAX_STREAM_FAILURES {
                    bail!(
                        "cannot follow promotion {} (still {}): {failure}",
                        promotion.id,
                        current.state
                    );
                }
            } else {
                failures = 0;
            }
            // The stream ended early (a gateway restart, a dropped
            // connection): pick it up again.
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        if !at_line_start {
            out.write("\n")?;
        }
        return finish(out, &current);
    }
}

/// `OK` for a promotion that succeeded, else the error saying why not.
fn finish(out: Output, promotion: &Promotion) -> anyhow::Result<()> {
    let because = |what: &str| {
        if promotion.reason.is_empty() {
            what.to_owned()
        } else {
            format!("{what}: {}", promotion.reason)
        }
    };
    match promotion.state.as_str() {
        "succeeded" => Ok(out.ok()?),
        "rolled_back" => bail!(because("rollback")),
        "failed" => bail!(because("promotion failed")),
        "cancelled" => bail!(because("promotion cancelled")),
        other => bail!(
            "promotion {} ended in an unexpected state {other:?}",
            promotion.id
        ),
    }
}
