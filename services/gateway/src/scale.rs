//! Scale and restart (reference part 2 §6): `GET /apps/{app}/services` with
//! each service's desired count, cpu and memory; `PUT
//! /apps/{app}/services/{service}` (form `count`, `cpu`, `memory`) to change
//! them without a new release; `POST /apps/{app}/services/{service}/restart`
//! for a rolling restart. Both changes answer `ok` at once and roll out in
//! the background, as on a Convox rack; the rollout service does the work
//! (`ScaleService`).

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::Response;
use slipway_api::rollout::v1 as opb;
use slipway_convox::types;

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::routes::{form, ok, request};

/// `GET /apps/{app}/services`: the services of the running release, with
/// the desired count (`count`, the DESIRED column of `convox scale`), cpu
/// and memory, and where each is reached.
pub(crate) async fn list_services(
    State(state): State<AppState>,
    Path(app): Path<String>,
) -> ApiResult<Json<Vec<types::Service>>> {
    known(&state, &app).await?;
    let (scales, running) = tokio::try_join!(
        async {
            state
                .scale
                .clone()
                .list_scales(opb::ListScalesRequest { app: app.clone() })
                .await
                .map(|r| r.into_inner().services)
        },
        async {
            state
                .reads
                .rollout
                .read(
                    opb::ListServicesRequest { app: app.clone() },
                    |mut c, m| async move { c.list_services(m).await },
                )
                .await
                .map(|r| r.services)
        },
    )?;
    let mut services: Vec<types::Service> = scales
        .into_iter()
        .map(|s| {
            let address = running
                .iter()
                .find(|r| r.name == s.service)
                .map(|r| r.address.clone())
                .unwrap_or_default();
            service(s.service, address, s.count, s.cpu, s.memory, s.limits_note)
        })
        .collect();
    // Services still running that the release no longer has (stopping).
    for r in running {
        if !services.iter().any(|s| s.name == r.name) {
            services.push(service(r.name, r.address, 0, 0, 0, String::new()));
        }
    }
    Ok(Json(services))
}

/// An unknown app is a 404 in the rack's words (`app not found: X`), not
/// an empty list or "runs no release".
async fn known(state: &AppState, app: &str) -> ApiResult<()> {
    crate::routes::read_app(state, app).await?;
    Ok(())
}

fn service(
    name: String,
    address: String,
    count: u32,
    cpu: u32,
    memory: u32,
    limits_note: String,
) -> types::Service {
    let port = address
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or(0);
    types::Service {
        name,
        domain: address,
        count: i64::from(count),
        cpu: i64::from(cpu),
        memory: i64::from(memory),
        ports: if port > 0 {
            vec![types::ServicePort {
                balancer: 0,
                certificate: String::new(),
                container: port,
            }]
        } else {
            Vec::new()
        },
        limits_note,
        ..Default::default()
    }
}

/// A whole number form field: absent or empty is `None`.
fn number(fields: &crate::routes::Fields, name: &str) -> ApiResult<Option<u32>> {
    match fields.get(name).map(String::as_str) {
        None | Some("") => Ok(None),
        Some(text) => text.parse().map(Some).map_err(|_| {
            ApiError::bad_request(format!(
                "{name} must be a whole number from 0 to {}, got {text:?}",
                u32::MAX
            ))
        }),
    }
}

/// `PUT /apps/{app}/services/{service}`: records the desired count, cpu
/// (millicores) and memory (MiB) and rolls them out on the running
/// release. GPUs and autoscaling ranges are refused: this rack has neither.
pub(crate) async fn update_service(
    State(state): State<AppState>,
    caller: Caller,
    Path((app, service)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    let fields = form(&body);
    let (count, cpu, memory) = (
        number(&fields, "count")?,
        number(&fields, "cpu")?,
        number(&fields, "memory")?,
    );
    if number(&fields, "gpu")?.is_some_and(|g| g > 0) {
        return Err(ApiError::bad_request("gpu: this rack has no GPUs"));
    }
    if ["min", "max"].iter().any(|f| fields.contains_key(*f)) {
        return Err(ApiError::bad_request(
            "--min/--max: this rack does not autoscale; use --count",
        ));
    }
    known(&state, &app).await?;
    state
        .scale
        .clone()
        .set_scale(request(
            &caller,
            opb::SetScaleRequest {
                app,
                service,
                count,
                cpu,
                memory,
            },
        ))
        .await?;
    Ok(ok())
}

/// `POST /apps/{app}/services/{service}/restart`: replaces the service's
/// processes, rolling (new ones healthy before old ones stop).
pub(crate) async fn restart_service(
    State(state): State<AppState>,
    caller: Caller,
    Path((app, service)): Path<(String, String)>,
) -> ApiResult<Response> {
    known(&state, &app).await?;
    state
        .scale
        .clone()
        .restart_service(request(
            &caller,
            opb::RestartServiceRequest { app, service },
        ))
        .await?;
    Ok(ok())
}
