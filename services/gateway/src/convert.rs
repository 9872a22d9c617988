//! Proto messages into the Convox JSON shapes of `slipway_convox::types`.

use chrono::{DateTime, Utc};
use slipway_api::build::v1 as bpb;
use slipway_api::release::v1 as rpb;
use slipway_api::rollout::v1 as opb;
use slipway_convox::types;

pub(crate) fn time(t: Option<&prost_types::Timestamp>) -> DateTime<Utc> {
    match t {
        Some(t) if t.seconds > 0 => slipway_api::from_timestamp(t),
        _ => types::go_time::ZERO,
    }
}

/// A Convox app. `status` is the release service's, unless the caller
/// learned better from the rollout (`rollback` while reverting).
pub(crate) fn app(app: rpb::App) -> types::App {
    types::App {
        generation: "3".into(),
        locked: false,
        name: app.name,
        release: app.release,
        router: String::new(),
        status: app.status,
        parameters: Default::default(),
    }
}

/// A Convox release. Its env becomes Convox `KEY=VALUE` text here, at the edge
/// that speaks it; values with a newline travel as `$'…'` (see
/// `slipway_domain::env::Env::to_wire`).
pub(crate) fn release(release: rpb::Release) -> types::Release {
    let env = slipway_domain::env::wire_text(&release.env_vars.into_iter().collect());
    types::Release {
        created: time(release.created.as_ref()),
        id: release.id,
        app: release.app,
        build: release.build,
        env,
        manifest: release.manifest,
        description: release.description,
    }
}

/// A Convox build.
pub(crate) fn build(build: bpb::Build) -> types::Build {
    let status = match bpb::BuildStatus::try_from(build.status) {
        Ok(bpb::BuildStatus::Created) => "created",
        Ok(bpb::BuildStatus::Running) => "running",
        Ok(bpb::BuildStatus::Complete) => "complete",
        Ok(bpb::BuildStatus::Failed) => "failed",
        Ok(bpb::BuildStatus::Cancelled) => "cancelled",
        _ => "unknown",
    };
    types::Build {
        started: time(build.started.as_ref()),
        ended: time(build.ended.as_ref()),
        id: build.id,
        app: build.app,
        description: build.description,
        git_sha: build.git_sha,
        manifest: build.manifest,
        release: build.release,
        reason: build.reason,
        status: status.into(),
        ..Default::default()
    }
}

/// A Slipway promotion.
pub(crate) fn promotion(p: rpb::Promotion) -> types::Promotion {
    let state = slipway_api::promotion::promotion_state(p.state)
        .map_or("unknown", slipway_domain::PromotionState::as_str);
    types::Promotion {
        id: p.id,
        app: p.app,
        release: p.release,
        fallback: p.fallback_release,
        state: state.into(),
        reason: p.reason,
        noop: false,
        message: String::new(),
    }
}

/// A Convox process.
pub(crate) fn process(app: &str, p: opb::Process) -> types::Process {
    types::Process {
        started: time(p.started.as_ref()),
        id: p.id,
        app: app.to_owned(),
        name: p.service.clone(),
        release: p.release,
        status: p.status,
        command: p.command,
        host: "127.0.0.1".into(),
        ports: if p.port > 0 {
            vec![p.port.to_string()]
        } else {
            Vec::new()
        },
        ..Default::default()
    }
}

/// One event line in the seed's form: `<time> <source> <message>\n`
/// (shared with the console and the CLI's output, `slipway_api::events`).
pub(crate) fn event_line(event: &opb::Event) -> String {
    slipway_api::events::event_line(event)
}
