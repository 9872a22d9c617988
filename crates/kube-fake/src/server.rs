//! The fake API server's HTTP side: routes `/api/v1/...` and
//! `/apis/apps/v1/...` the way the real one does, serves discovery and
//! `/version` (what `kubectl` asks first), records every request, applies
//! scripted faults (RBAC denials, 5xx/429 for the next N calls), and
//! streams watches as JSON lines. `/fake/v1/...` is the fake's own: the
//! recorded requests, and pausing the controllers, for tests that run the
//! fake as a separate process.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use super::Shared;
use super::store::{ApiError, Key, RESOURCES, matches_fields, matches_selector, resource};

/// One request as the fake received it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Recorded {
    /// `GET`, `PATCH`, …
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The query string.
    pub query: String,
    /// The `Content-Type` header.
    pub content_type: String,
    /// The body, parsed as JSON (`Null` when empty).
    pub body: Value,
}

/// What a path names.
struct Target {
    resource: &'static str,
    group: &'static str,
    namespace: String,
    name: Option<String>,
    status: bool,
}

fn parse_path(path: &str) -> Option<Target> {
    let (group, rest) = if let Some(rest) = path.strip_prefix("/api/v1/") {
        ("v1", rest)
    } else if let Some(rest) = path.strip_prefix("/apis/apps/v1/") {
        ("apps/v1", rest)
    } else if let Some(rest) = path.strip_prefix("/apis/networking.k8s.io/v1/") {
        ("networking.k8s.io/v1", rest)
    } else {
        return None;
    };
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let (res, namespace, name, sub) = match segs.as_slice() {
        ["namespaces"] => ("namespaces", "", None, None),
        [r] => (*r, "", None, None),
        ["namespaces", n] if group == "v1" => ("namespaces", "", Some(*n), None),
        ["namespaces", ns, r] => (*r, *ns, None, None),
        ["namespaces", ns, r, n] => (*r, *ns, Some(*n), None),
        ["namespaces", ns, r, n, s] => (*r, *ns, Some(*n), Some(*s)),
        _ => return None,
    };
    let (resource, g, _, _) = resource(res)?;
    if g != group || !matches!(sub, None | Some("status")) {
        return None;
    }
    if segs.len() > 2 && resource == "namespaces" {
        return None;
    }
    Some(Target {
        resource,
        group: g,
        namespace: namespace.to_owned(),
        name: name.map(str::to_owned),
        status: sub.is_some(),
    })
}

fn error(e: &ApiError) -> Response {
    let code = StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, axum::Json(e.body())).into_response()
}

/// The one handler: every request comes here.
pub(crate) async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let parsed: Value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body)
            .or_else(|_| serde_norway::from_slice(&body))
            .unwrap_or(Value::Null)
    };
    if let Some(answer) = discovery(uri.path(), &headers) {
        return answer;
    }
    if let Some(answer) = admin(&shared, &method, uri.path(), &query) {
        return answer;
    }
    shared.lock().requests.push(Recorded {
        method: method.to_string(),
        path: uri.path().to_owned(),
        query: uri.query().unwrap_or_default().to_owned(),
        content_type: content_type.clone(),
        body: parsed.clone(),
    });
    let Some(target) = parse_path(uri.path()) else {
        return error(&ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ));
    };
    // kubectl writes built-in kinds as protobuf; the fake decodes JSON and
    // YAML only (reads are JSON whatever the client accepts).
    if content_type.contains("protobuf") {
        return error(&ApiError::new(
            415,
            "UnsupportedMediaType",
            "the fake API server decodes JSON and YAML bodies only",
        ));
    }
    let watch = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    let verb = match (&method, target.name.is_some()) {
        (&Method::GET, false) if watch => "watch",
        (&Method::GET, false) => "list",
        (&Method::GET, true) => "get",
        (&Method::PATCH, _) => "patch",
        (&Method::PUT, _) => "update",
        (&Method::POST, _) => "create",
        (&Method::DELETE, false) => "deletecollection",
        (&Method::DELETE, _) => "delete",
        _ => {
            return error(&ApiError::new(
                405,
                "MethodNotAllowed",
                "method not allowed",
            ));
        }
    };
    {
        let mut state = shared.lock();
        if state
            .denied
            .iter()
            .any(|(v, r)| v == verb && r == target.resource)
        {
            let group = if target.group == "v1" {
                "\"\""
            } else {
                "\"apps\""
            };
            let what = match &target.name {
                Some(n) => format!(
                    "{}.{} \"{n}\"",
                    target.resource,
                    target.group.trim_end_matches("/v1").trim_end_matches("v1")
                ),
                None => target.resource.to_owned(),
            };
            return error(&ApiError::new(
                403,
                "Forbidden",
                format!(
                    "{what} is forbidden: User \"system:serviceaccount:slipway:rollout\" cannot {verb} resource \"{}\" in API group {group} in the namespace \"{}\"",
                    target.resource, target.namespace
                ),
            ));
        }
        if let Some(code) = (verb != "watch")
            .then(|| state.faults.pop_front())
            .flatten()
        {
            let reason = if code == 429 {
                "TooManyRequests"
            } else {
                "InternalError"
            };
            return error(&ApiError::new(code, reason, "scripted fault"));
        }
    }
    if verb == "watch" {
        return watch_response(shared, target, &query).await;
    }
    let key: Key = (
        target.resource.to_owned(),
        target.namespace.clone(),
        target.name.clone().unwrap_or_default(),
    );
    let mut state = shared.lock();
    let store = &mut state.store;
    let result = match verb {
        "list" => {
            let selector = query
                .get("labelSelector")
                .map(String::as_str)
                .unwrap_or_default();
            let fields = query
                .get("fieldSelector")
                .map(String::as_str)
                .unwrap_or_default();
            let (_, _, kind, _) = resource(target.resource).expect("parsed resources exist");
            let items = store.list_fields(target.resource, &target.namespace, selector, fields);
            Ok(json!({
                "apiVersion": target.group, "kind": format!("{kind}List"),
                "metadata": {"resourceVersion": store.rv.to_string()}, "items": items,
            }))
        }
        "get" => store
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&key)),
        "patch" => {
            if content_type != "application/apply-patch+yaml" {
                Err(ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    format!("the fake serves server-side apply only, not {content_type}"),
                ))
            } else if target.status {
                Err(ApiError::new(
                    405,
                    "MethodNotAllowed",
                    "status is written by the controller",
                ))
            } else {
                match query.get("fieldManager") {
                    None => Err(ApiError::new(
                        400,
                        "BadRequest",
                        "PatchOptions.meta.k8s.io is invalid: fieldManager: Required value",
                    )),
                    Some(manager) => store.apply(key, manager, parsed),
                }
            }
        }
        "update" => store.replace(key, target.status, parsed),
        "create" => {
            let name = parsed["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            store.create((key.0, key.1, name), parsed)
        }
        "delete" => {
            let grace = query
                .get("gracePeriodSeconds")
                .and_then(|g| g.parse().ok())
                .or_else(|| parsed["gracePeriodSeconds"].as_i64());
            store.delete_with(key, grace)
        }
        "deletecollection" => {
            let selector = query
                .get("labelSelector")
                .map(String::as_str)
                .unwrap_or_default();
            let doomed: Vec<Key> = store
                .objects
                .iter()
                .filter(|(k, v)| {
                    k.0 == target.resource
                        && k.1 == target.namespace
                        && matches_selector(v, selector)
                })
                .map(|(k, _)| k.clone())
                .collect();
            let mut items = Vec::new();
            for k in doomed {
                if let Ok(gone) = store.delete_with(k, None) {
                    items.push(gone);
                }
            }
            Ok(
                json!({"apiVersion": target.group, "kind": "Status", "status": "Success", "metadata": {}, "items": items}),
            )
        }
        _ => unreachable!("verbs are matched above"),
    };
    match result {
        Ok(object) => {
            let code = if verb == "create" {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            (code, axum::Json(object)).into_response()
        }
        Err(e) => error(&e),
    }
}

/// A watch: replays history after `resourceVersion` (or the current
/// objects as ADDED when none is given), then streams live changes until
/// the timeout, a scripted drop, or the client leaving. A version older
/// than the compaction floor gets one ERROR event with code 410.
async fn watch_response(
    shared: Arc<Shared>,
    target: Target,
    query: &HashMap<String, String>,
) -> Response {
    // A test may hold new watches back (to make changes while none runs).
    let mut hold = shared.hold.subscribe();
    while *hold.borrow_and_update() {
        if hold.changed().await.is_err() {
            break;
        }
    }
    let selector = query.get("labelSelector").cloned().unwrap_or_default();
    let fields = query.get("fieldSelector").cloned().unwrap_or_default();
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .map_or(Duration::from_secs(3600), Duration::from_secs);
    let from: Option<u64> = query
        .get("resourceVersion")
        .filter(|v| !v.is_empty() && *v != "0")
        .and_then(|v| v.parse().ok());
    let matches = {
        let resource = target.resource;
        let ns = target.namespace.clone();
        move |key: &Key, object: &Value| {
            key.0 == resource
                && (ns.is_empty() || key.1 == ns)
                && matches_selector(object, &selector)
                && matches_fields(object, &fields)
        }
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1024);
    let line = |kind: &str, object: &Value| {
        let mut text =
            serde_json::to_string(&json!({"type": kind, "object": object})).expect("json");
        text.push('\n');
        Ok(Bytes::from(text))
    };
    let (mut live, mut last) = {
        let state = shared.lock();
        let store = &state.store;
        let live = store.changes.subscribe();
        match from {
            Some(rv) if rv < store.floor => {
                let gone = ApiError::new(
                    410,
                    "Expired",
                    format!("too old resource version: {rv} ({})", store.floor),
                );
                let _ = tx.try_send(line("ERROR", &gone.body()));
                drop(tx);
                return Response::new(Body::from_stream(
                    tokio_stream::wrappers::ReceiverStream::new(rx),
                ));
            }
            Some(rv) => {
                // History is in version order: start at the first change after rv.
                let first = store.history.partition_point(|c| c.rv <= rv);
                for c in store
                    .history
                    .range(first..)
                    .filter(|c| matches(&c.key, &c.object))
                {
                    let _ = tx.try_send(line(c.kind, &c.object));
                }
            }
            None => {
                for v in store
                    .objects
                    .iter()
                    .filter(|(k, v)| matches(k, v))
                    .map(|(_, v)| v)
                {
                    let _ = tx.try_send(line("ADDED", v));
                }
            }
        }
        (live, store.rv)
    };
    let mut drops = shared.drops.subscribe();
    drops.borrow_and_update();
    shared.lock().open_watches += 1;
    let counter = shared.clone();
    tokio::spawn(async move {
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                () = &mut deadline => break,
                _ = drops.changed() => break,
                () = tx.closed() => break,
                change = live.recv() => match change {
                    Ok(c) if c.rv > last && matches(&c.key, &c.object) => {
                        last = c.rv;
                        if tx.send(line(c.kind, &c.object)).await.is_err() {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) | Err(RecvError::Closed) => break,
                },
            }
        }
        counter.lock().open_watches -= 1;
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
        .expect("a valid response")
}

fn json(value: Value) -> Response {
    (StatusCode::OK, axum::Json(value)).into_response()
}

/// Legacy discovery (a client asking for the aggregated kind accepts it
/// too), `/version`, and a 404 for the OpenAPI documents, which `kubectl`
/// only needs for `apply` and `explain`.
fn discovery(path: &str, _headers: &HeaderMap) -> Option<Response> {
    let groups = [
        ("", "v1"),
        ("apps", "apps/v1"),
        ("networking.k8s.io", "networking.k8s.io/v1"),
    ];
    let resources = |gv: &str| -> Value {
        let list: Vec<Value> = RESOURCES
            .iter()
            .filter(|r| r.1 == gv)
            .flat_map(|(plural, _, kind, namespaced)| {
                let verbs = json!(["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]);
                let short: Vec<&str> = match *plural {
                    "pods" => vec!["po"],
                    "services" => vec!["svc"],
                    "deployments" => vec!["deploy"],
                    "replicasets" => vec!["rs"],
                    "namespaces" => vec!["ns"],
                    "events" => vec!["ev"],
                    "networkpolicies" => vec!["netpol"],
                    _ => vec![],
                };
                let singular = kind.to_ascii_lowercase();
                let mut out = vec![json!({
                    "name": plural, "singularName": singular, "namespaced": namespaced,
                    "kind": kind, "verbs": verbs, "shortNames": short,
                    "categories": if matches!(*plural, "pods" | "services" | "deployments" | "replicasets") { json!(["all"]) } else { json!([]) },
                })];
                if matches!(*plural, "deployments" | "replicasets" | "pods" | "namespaces") {
                    out.push(json!({
                        "name": format!("{plural}/status"), "singularName": "", "namespaced": namespaced,
                        "kind": kind, "verbs": ["get", "patch", "update"],
                    }));
                }
                out
            })
            .collect();
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list})
    };
    let answer = match path {
        "/version" => json!({
            "major": "1", "minor": "33", "gitVersion": "v1.33.0-slipway-fake",
            "gitCommit": "", "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
            "goVersion": "", "compiler": "gc", "platform": "linux/amd64",
        }),
        "/api" => json!({"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}]}),
        "/apis" => json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups
            .iter()
            .filter(|(name, _)| !name.is_empty())
            .map(|(name, gv)| json!({"name": name,
                "versions": [{"groupVersion": gv, "version": "v1"}],
                "preferredVersion": {"groupVersion": gv, "version": "v1"}}))
            .collect::<Vec<_>>()}),
        "/api/v1" => resources("v1"),
        "/apis/apps/v1" => resources("apps/v1"),
        "/apis/networking.k8s.io/v1" => resources("networking.k8s.io/v1"),
        "/apis/apps" | "/apis/networking.k8s.io" => {
            let (name, gv) = groups
                .iter()
                .find(|(n, _)| path.ends_with(n))
                .expect("matched above");
            json!({"kind": "APIGroup", "apiVersion": "v1", "name": name,
                "versions": [{"groupVersion": gv, "version": "v1"}],
                "preferredVersion": {"groupVersion": gv, "version": "v1"}})
        }
        p if p.starts_with("/openapi/") => {
            return Some(error(&ApiError::new(
                404,
                "NotFound",
                "the fake serves no OpenAPI document",
            )));
        }
        _ => return None,
    };
    Some(json(answer))
}

/// The fake's own endpoints, for a test driving it as another process:
/// `GET /fake/v1/requests` (every recorded request, as JSON) and
/// `POST /fake/v1/controller?paused=true|false`.
fn admin(
    shared: &Arc<Shared>,
    method: &Method,
    path: &str,
    query: &HashMap<String, String>,
) -> Option<Response> {
    match (method, path) {
        (&Method::GET, "/fake/v1/requests") => {
            let requests = serde_json::to_value(&shared.lock().requests).unwrap_or_default();
            Some(json(requests))
        }
        (&Method::POST, "/fake/v1/controller") => {
            let paused = query.get("paused").is_some_and(|p| p == "true");
            shared
                .paused
                .store(paused, std::sync::atomic::Ordering::SeqCst);
            Some(json(json!({"paused": paused})))
        }
        _ => None,
    }
}
