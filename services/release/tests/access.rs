//! Tokens and the audit trail on both backends: a token is stored only as
//! its keyed hash and answered once; names are unique among active tokens;
//! revoked and expired tokens leave the gateways' table; last-used reports
//! move times forward only; the trail is append-only, carries the caller's
//! actor and source from metadata, and filters by app and time.

use slipway_api::release::v1 as pb;
use slipway_api::release::v1::audit_service_client::AuditServiceClient;
use slipway_api::release::v1::token_service_client::TokenServiceClient;
use slipway_rpc::actor::Actor;
use tonic::Code;

use crate::helpers::{Backend, TestApp, assert_status};

slipway_storage::both_backends!(
    tokens_are_kept_as_keyed_hashes_and_revoked_by_name,
    the_audit_trail_is_append_only_and_names_actor_and_source,
);

fn clients(
    t: &TestApp,
) -> (
    TokenServiceClient<slipway_rpc::Channel>,
    AuditServiceClient<slipway_rpc::Channel>,
) {
    let channel = slipway_rpc::channel(
        "release",
        std::slice::from_ref(&t.endpoint),
        &Default::default(),
    )
    .unwrap();
    (
        TokenServiceClient::new(channel.clone()),
        AuditServiceClient::new(channel),
    )
}

async fn tokens_are_kept_as_keyed_hashes_and_revoked_by_name(backend: Backend) {
    let t = TestApp::spawn(backend).await;
    let (mut tokens, _) = clients(&t);
    let admin = Actor::password("10.0.0.1:1");
    let created = tokens
        .create_token(admin.request(pb::CreateTokenRequest {
            name: "ci-web".into(),
            role: pb::TokenRole::Deploy as i32,
            apps: vec!["web".into(), "web-*".into()],
            expires_in_seconds: 0,
        }))
        .await
        .unwrap()
        .into_inner();
    let value = created.value.unwrap().value;
    assert!(value.starts_with("slp_"));
    let token = created.token.unwrap();
    assert_eq!(
        (token.name.as_str(), token.created_by.as_str()),
        ("ci-web", "password")
    );
    // Stored: the hash, never the value.
    use sqlx::Row as _;
    let rows = sqlx::query("SELECT name, hash FROM access_tokens")
        .fetch_all(&t.db.db.pool)
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    let hash: String = rows[0].try_get("hash").unwrap();
    assert_eq!(hash.len(), 64);
    assert!(!hash.contains(value.trim_start_matches("slp_")));
    // The table carries the same hash and the key it is made under.
    let table = tokens
        .get_token_table(pb::GetTokenTableRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(table.tokens.len(), 1);
    assert!(!table.hash_key.unwrap().value.is_empty());
    let entry = &table.tokens[0];
    assert_eq!(entry.apps, ["web", "web-*"]);
    assert_eq!(
        entry
            .hash
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>(),
        hash
    );
    // Names are unique among active tokens; bad input names the field.
    assert_status(
        tokens
            .create_token(pb::CreateTokenRequest {
                name: "ci-web".into(),
                role: pb::TokenRole::Read as i32,
                ..Default::default()
            })
            .await,
        Code::AlreadyExists,
        "exists already",
    );
    for (request, needle) in [
        (
            pb::CreateTokenRequest {
                name: "Bad Name".into(),
                role: 1,
                ..Default::default()
            },
            "invalid token name",
        ),
        (
            pb::CreateTokenRequest {
                name: "x".into(),
                role: 0,
                ..Default::default()
            },
            "role",
        ),
        (
            pb::CreateTokenRequest {
                name: "x".into(),
                role: 3,
                apps: vec!["web".into()],
                ..Default::default()
            },
            "admin token applies to every app",
        ),
        (
            pb::CreateTokenRequest {
                name: "x".into(),
                role: 1,
                apps: vec!["We b".into()],
                ..Default::default()
            },
            "invalid app pattern",
        ),
    ] {
        assert_status(
            tokens.create_token(request).await,
            Code::InvalidArgument,
            needle,
        );
    }
    // Last used moves forward only.
    let used = |secs: i64| pb::TouchTokensRequest {
        ids: vec![entry.id],
        used: Some(slipway_api::timestamp(
            chrono::DateTime::from_timestamp(secs, 0).unwrap(),
        )),
    };
    tokens.touch_tokens(used(2_000_000_000 - 10)).await.ok();
    tokens.touch_tokens(used(1_000)).await.unwrap();
    let listed = tokens
        .list_tokens(pb::ListTokensRequest {})
        .await
        .unwrap()
        .into_inner()
        .tokens;
    assert!(listed[0].last_used.as_ref().unwrap().seconds > 1_000);
    // An expired token leaves the table but is still listed.
    tokens
        .create_token(pb::CreateTokenRequest {
            name: "brief".into(),
            role: pb::TokenRole::Read as i32,
            expires_in_seconds: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let table = tokens
            .get_token_table(pb::GetTokenTableRequest {})
            .await
            .unwrap()
            .into_inner();
        if table.tokens.len() == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the expired token is still in the table"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // Revoked: gone from the table and the list; the name is free again.
    tokens
        .revoke_token(admin.request(pb::RevokeTokenRequest {
            name: "ci-web".into(),
        }))
        .await
        .unwrap();
    assert_status(
        tokens
            .revoke_token(pb::RevokeTokenRequest {
                name: "ci-web".into(),
            })
            .await,
        Code::NotFound,
        "no active token named ci-web",
    );
    let table = tokens
        .get_token_table(pb::GetTokenTableRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(table.tokens.is_empty());
    let listed = tokens
        .list_tokens(pb::ListTokensRequest {})
        .await
        .unwrap()
        .into_inner()
        .tokens;
    assert_eq!(
        listed.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
        ["brief"]
    );
    tokens
        .create_token(pb::CreateTokenRequest {
            name: "ci-web".into(),
            role: pb::TokenRole::Read as i32,
            ..Default::default()
        })
        .await
        .unwrap();
}

async fn the_audit_trail_is_append_only_and_names_actor_and_source(backend: Backend) {
    let t = TestApp::spawn(backend).await;
    let (mut tokens, mut audit) = clients(&t);
    // A change the release service makes: audited in its transaction, with
    // the caller's source.
    let mut request = tonic::Request::new(pb::CreateAppRequest {
        name: "web".into(),
        deadline_seconds: 0,
    });
    Actor::token("ci-web", "192.0.2.7:4242").insert_into(&mut request);
    t.client.clone().create_app(request).await.unwrap();
    tokens
        .create_token(
            Actor::console("alice", "192.0.2.8").request(pb::CreateTokenRequest {
                name: "dash".into(),
                role: pb::TokenRole::Read as i32,
                ..Default::default()
            }),
        )
        .await
        .unwrap();
    // Changes other services made, and a refusal, recorded by RPC.
    audit
        .record_audit(
            Actor::token("ci-web", "192.0.2.7:1").request(pb::RecordAuditRequest {
                action: "build.create".into(),
                app: "web".into(),
                target: "BABC".into(),
                outcome: "ok".into(),
                ..Default::default()
            }),
        )
        .await
        .unwrap();
    audit
        .record_audit(
            Actor::token("dash", "192.0.2.9:1").request(pb::RecordAuditRequest {
                action: "denied: deleting apps".into(),
                app: "web".into(),
                outcome: "denied".into(),
                ..Default::default()
            }),
        )
        .await
        .unwrap();
    assert_status(
        audit
            .record_audit(pb::RecordAuditRequest {
                action: "x".into(),
                outcome: "maybe".into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "outcome",
    );
    let all = audit
        .list_audit(pb::ListAuditRequest::default())
        .await
        .unwrap()
        .into_inner()
        .records;
    let summary: Vec<(String, String, String, String, String)> = all
        .iter()
        .map(|r| {
            (
                r.actor.clone(),
                r.source.clone(),
                r.action.clone(),
                r.app.clone(),
                r.outcome.clone(),
            )
        })
        .collect();
    let s = |a: &str| a.to_owned();
    assert_eq!(
        summary,
        [
            (
                s("token:dash"),
                s("192.0.2.9:1"),
                s("denied: deleting apps"),
                s("web"),
                s("denied")
            ),
            (
                s("token:ci-web"),
                s("192.0.2.7:1"),
                s("build.create"),
                s("web"),
                s("ok")
            ),
            (
                s("console:alice"),
                s("192.0.2.8"),
                s("token.create"),
                s(""),
                s("ok")
            ),
            (
                s("token:ci-web"),
                s("192.0.2.7:4242"),
                s("app.create"),
                s("web"),
                s("ok")
            ),
        ]
    );
    // Filters: by app, by time.
    let web = audit
        .list_audit(pb::ListAuditRequest {
            app: "web".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .records;
    assert_eq!(web.len(), 3);
    let future = audit
        .list_audit(pb::ListAuditRequest {
            since: Some(slipway_api::timestamp(
                chrono::Utc::now() + chrono::Duration::hours(1),
            )),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .records;
    assert!(future.is_empty());
    // Append-only: the database refuses edits and deletes.
    for statement in [
        "UPDATE audit_events SET actor = 'x'",
        "DELETE FROM audit_events",
    ] {
        let refused = sqlx::query(statement).execute(&t.db.db.pool).await;
        assert!(refused.is_err(), "{statement} was allowed");
    }
    assert_eq!(t.count("audit_events").await, 4);
}
