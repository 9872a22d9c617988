//! The app's services and processes (`/console/apps/{app}/processes`), as
//! the runtime reports them now: every service with its address and
//! healthy count, every process with its release, status and start. With
//! JavaScript the page follows the processes stream and renders afresh when
//! they change; without it, it has a Refresh link.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::Utc;

use crate::Console;
use crate::auth::Viewer;
use crate::grpc::PageError;
use crate::live;
use crate::views::{self, Chrome, When};

struct ServiceRow {
    name: String,
    address: String,
    healthy: u32,
    running: usize,
}

struct ProcessRow {
    id: String,
    service: String,
    release: String,
    status: String,
    tone: &'static str,
    started: When,
    pid: String,
    port: String,
    command: String,
    active: bool,
}

#[derive(Template)]
#[template(path = "processes.html")]
struct ProcessesPage {
    chrome: Chrome,
    app: String,
    active: String,
    services: Vec<ServiceRow>,
    processes: Vec<ProcessRow>,
}

/// `GET /console/apps/{app}/processes`.
pub(crate) async fn page(
    State(console): State<Console>,
    Path(app): Path<String>,
    viewer: Viewer,
) -> Result<Response, PageError> {
    let found = console.app(&app).await?;
    let (services, mut processes) = live::processes_of(&console, &app).await?;
    let version = live::processes_version(&services, &processes);
    processes.sort_by(|a, b| (&a.service, &a.id).cmp(&(&b.service, &b.id)));
    let now = Utc::now();
    let services = services
        .into_iter()
        .map(|s| ServiceRow {
            running: processes.iter().filter(|p| p.service == s.name).count(),
            name: s.name,
            address: s.address,
            healthy: s.count,
        })
        .collect();
    let processes = processes
        .into_iter()
        .map(|p| ProcessRow {
            tone: match p.status.as_str() {
                "running" => "good",
                "starting" | "stopping" => "busy",
                "unhealthy" => "bad",
                _ => "",
            },
            started: When::of(p.started.as_ref(), now),
            pid: if p.pid == 0 {
                String::new()
            } else {
                p.pid.to_string()
            },
            port: if p.port == 0 {
                String::new()
            } else {
                p.port.to_string()
            },
            active: p.release == found.release,
            id: p.id,
            service: p.service,
            release: p.release,
            status: p.status,
            command: p.command,
        })
        .collect();
    let mut chrome = Chrome::new(format!("Processes of {app}"), &viewer.session);
    chrome.live = Some(views::Live {
        stream: format!("/console/apps/{app}/processes/stream"),
        version,
    });
    let page = ProcessesPage {
        chrome,
        active: found.release,
        services,
        processes,
        app,
    };
    Ok(views::html(&page, StatusCode::OK))
}
