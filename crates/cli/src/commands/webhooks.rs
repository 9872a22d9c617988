//! `slipway webhooks` (list, add, remove, keys, deliveries): receivers of
//! the rack's events, signed with Convox's `Convox-Signature`.

use chrono::Utc;

use crate::Context;
use crate::cli::{WebhookKeysCommand, WebhooksCommand};
use crate::humanize::relative;
use crate::output::{Output, print, table};

/// Runs `webhooks` (a list without a subcommand).
pub(crate) async fn webhooks(
    ctx: &Context,
    command: Option<WebhooksCommand>,
) -> anyhow::Result<()> {
    let client = ctx.client()?;
    let out = Output::new(false);
    let now = Utc::now();
    match command {
        None => {
            let rows: Vec<Vec<String>> = client
                .webhooks()
                .await?
                .into_iter()
                .map(|w| {
                    vec![
                        w.id,
                        w.url,
                        if w.app.is_empty() { "*".into() } else { w.app },
                        if w.events.is_empty() {
                            "*".into()
                        } else {
                            w.events.join(",")
                        },
                        relative(w.created, now),
                    ]
                })
                .collect();
            print(&table(&["ID", "URL", "APP", "EVENTS", "CREATED"], &rows))?;
        }
        Some(WebhooksCommand::Add { url, events }) => {
            let events: Vec<String> = events.into_iter().filter(|e| !e.is_empty()).collect();
            let app = ctx.app_flag.as_deref();
            out.start("Adding webhook")?;
            let created = client.webhook_create(&url, &events, app).await?;
            out.line(&format!("OK, {}", created.webhook.id))?;
            if let Some(key) = created.generated_key {
                // What it is on stderr; the key alone on stdout.
                eprintln!(
                    "Deliveries are signed (Convox-Signature) with a key generated now, {} \
                     (fingerprint {}); it is shown only this once:",
                    key.key.id, key.key.fingerprint
                );
                out.line(&key.secret)?;
            }
        }
        Some(WebhooksCommand::Remove { id }) => {
            out.start(&format!("Removing webhook {id}"))?;
            client.webhook_remove(&id).await?;
            out.ok()?;
        }
        Some(WebhooksCommand::Keys { command }) => keys(ctx, command).await?,
        Some(WebhooksCommand::Deliveries { webhook, limit }) => {
            let rows: Vec<Vec<String>> = client
                .webhook_deliveries(webhook.as_deref(), limit)
                .await?
                .into_iter()
                .map(|d| {
                    let result = match d.state.as_str() {
                        "delivered" => format!("{}", d.last_status),
                        _ if d.last_error.is_empty() => String::new(),
                        _ => d.last_error,
                    };
                    let next = d
                        .next_attempt
                        .map(|t| {
                            if t > now {
                                format!("in {}s", (t - now).num_seconds())
                            } else {
                                "now".into()
                            }
                        })
                        .unwrap_or_default();
                    let recent = recent_attempts(&d.recent_attempts, now);
                    vec![
                        d.id,
                        d.action,
                        d.app,
                        d.state,
                        d.attempts.to_string(),
                        result,
                        next,
                        relative(d.created, now),
                        recent,
                    ]
                })
                .collect();
            print(&table(
                &[
                    "ID",
                    "ACTION",
                    "APP",
                    "STATE",
                    "ATTEMPTS",
                    "RESULT",
                    "NEXT",
                    "CREATED",
                    "RECENT ATTEMPTS",
                ],
                &rows,
            ))?;
        }
    }
    Ok(())
}

/// The last attempts of a delivery, newest first, at most five:
/// `#3 200 (12ms, 1m ago); #2 503; #1 no answer within 10s`.
fn recent_attempts(
    attempts: &[slipway_client::webhook_types::WebhookAttempt],
    now: chrono::DateTime<Utc>,
) -> String {
    attempts
        .iter()
        .take(5)
        .enumerate()
        .map(|(i, a)| {
            let result = if a.status != 0 {
                a.status.to_string()
            } else {
                a.error.clone()
            };
            if i == 0 {
                let when = a.at.map(|t| format!(", {}", relative(t, now)));
                format!(
                    "#{} {result} ({}ms{})",
                    a.number,
                    a.duration_ms,
                    when.unwrap_or_default()
                )
            } else {
                format!("#{} {result}", a.number)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

async fn keys(ctx: &Context, command: Option<WebhookKeysCommand>) -> anyhow::Result<()> {
    let client = ctx.client()?;
    let out = Output::new(false);
    let now = Utc::now();
    match command {
        None | Some(WebhookKeysCommand::List) => {
            let rows: Vec<Vec<String>> = client
                .webhook_keys()
                .await?
                .into_iter()
                .map(|k| vec![k.id, k.fingerprint, relative(k.created, now), k.actor])
                .collect();
            print(&table(&["ID", "FINGERPRINT", "CREATED", "BY"], &rows))?;
        }
        Some(WebhookKeysCommand::Add) => {
            let key = client.webhook_key_create().await?;
            eprintln!(
                "Added signing key {} (fingerprint {}); every delivery now carries one v1= per \
                 active key. It is shown only this once:",
                key.key.id, key.key.fingerprint
            );
            out.line(&key.secret)?;
        }
        Some(WebhookKeysCommand::Remove { id }) => {
            out.start(&format!("Removing signing key {id}"))?;
            client.webhook_key_remove(&id).await?;
            out.ok()?;
        }
    }
    Ok(())
}
