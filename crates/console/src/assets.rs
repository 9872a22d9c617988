//! The console's only static files, embedded in the binary and served at
//! content-hashed paths (`console.<hash>.css`), so browsers may cache them
//! for good and a new build is never served a stale copy.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest as _, Sha256};

const CSS: &str = include_str!("../static/console.css");
const JS: &str = include_str!("../static/console.js");
const FAVICON: &str = include_str!("../static/favicon.svg");

struct Asset {
    path: String,
    name: String,
    body: &'static str,
    content_type: &'static str,
}

fn asset(stem: &str, ext: &str, body: &'static str, content_type: &'static str) -> Asset {
    let digest = Sha256::digest(body.as_bytes());
    let hash: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    let name = format!("{stem}.{hash}.{ext}");
    Asset {
        path: format!("/console/static/{name}"),
        name,
        body,
        content_type,
    }
}

static ASSETS: LazyLock<[Asset; 3]> = LazyLock::new(|| {
    [
        asset("console", "css", CSS, "text/css; charset=utf-8"),
        asset("console", "js", JS, "text/javascript; charset=utf-8"),
        asset("favicon", "svg", FAVICON, "image/svg+xml"),
    ]
});

/// The stylesheet's path.
pub(crate) fn css_path() -> &'static str {
    &ASSETS[0].path
}

/// The script's path.
pub(crate) fn js_path() -> &'static str {
    &ASSETS[1].path
}

/// The icon's path. Declared by every page, so a browser never asks the
/// API for `/favicon.ico` (an unauthenticated API request counts as a
/// failed login against the browser's address).
pub(crate) fn favicon_path() -> &'static str {
    &ASSETS[2].path
}

/// `GET /console/static/{file}`: no session needed (nothing secret).
pub(crate) async fn serve(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|a| a.name == file) {
        Some(a) => (
            [
                (header::CONTENT_TYPE, a.content_type),
                (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
            ],
            a.body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such file").into_response(),
    }
}
