//! `slipway tokens` (list, create, revoke) and `slipway audit`.

use chrono::Utc;

use crate::Context;
use crate::cli::{AuditArgs, TokensCommand};
use crate::humanize::relative;
use crate::output::{Output, print, table};

/// Runs `tokens` (a list without a subcommand).
pub(crate) async fn tokens(ctx: &Context, command: Option<TokensCommand>) -> anyhow::Result<()> {
    let client = ctx.client()?;
    let out = Output::new(false);
    let now = Utc::now();
    match command {
        None => {
            let rows: Vec<Vec<String>> = client
                .tokens()
                .await?
                .into_iter()
                .map(|t| {
                    vec![
                        t.name,
                        t.role,
                        if t.apps.is_empty() {
                            "*".to_owned()
                        } else {
                            t.apps.join(",")
                        },
                        t.created.map(|c| relative(c, now)).unwrap_or_default(),
                        t.last_used
                            .map(|u| relative(u, now))
                            .unwrap_or_else(|| "never".to_owned()),
                        t.expires
                            .map(|e| e.format("%Y-%m-%d %H:%M UTC").to_string())
                            .unwrap_or_else(|| "never".to_owned()),
                    ]
                })
                .collect();
            print(&table(
                &["NAME", "ROLE", "APPS", "CREATED", "LAST USED", "EXPIRES"],
                &rows,
            ))?;
        }
        Some(TokensCommand::Create {
            name,
            role,
            apps,
            expires,
        }) => {
            let created = client
                .token_create(&slipway_client::NewToken {
                    name,
                    role,
                    apps: apps.into_iter().filter(|a| !a.is_empty()).collect(),
                    expires,
                })
                .await?;
            // The value on stdout alone, so `$(slipway tokens create …)`
            // captures it; what it is on stderr.
            eprintln!(
                "Created token {} (role {}{}); it is shown only this once:",
                created.token.name,
                created.token.role,
                if created.token.apps.is_empty() {
                    String::new()
                } else {
                    format!(" on {}", created.token.apps.join(","))
                }
            );
            out.write(&format!("{}\n", created.value))?;
        }
        Some(TokensCommand::Revoke { name }) => {
            out.start(&format!("Revoking token {name}"))?;
            client.token_revoke(&name).await?;
            out.ok()?;
        }
    }
    Ok(())
}

/// Runs `audit`.
pub(crate) async fn audit(ctx: &Context, args: &AuditArgs) -> anyhow::Result<()> {
    let client = ctx.client()?;
    let records = client
        .audit(ctx.app_flag(), args.since.as_deref(), args.limit)
        .await?;
    let rows: Vec<Vec<String>> = records
        .into_iter()
        .map(|r| {
            vec![
                r.time
                    .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                    .unwrap_or_default(),
                r.actor,
                r.action,
                r.app,
                r.target,
                r.outcome,
                r.source,
                r.detail,
            ]
        })
        .collect();
    print(&table(
        &[
            "TIME", "ACTOR", "ACTION", "APP", "TARGET", "OUTCOME", "SOURCE", "DETAIL",
        ],
        &rows,
    ))?;
    Ok(())
}
