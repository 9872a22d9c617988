//! What each request needs: the role and app of every route, decided from
//! the method and path before any handler runs (so no route is forgotten:
//! anything not listed needs admin when it changes something and read when
//! it does not), and the per-credential cap on requests in flight.
//!
//! - read: every GET and stream (but exec);
//! - deploy: builds, source uploads, releases, env changes, promote,
//!   rollback, cancel, one-off processes (run, exec, stop), scale and
//!   restart, on the apps in the token's scope;
//! - admin: creating and deleting apps, tokens, the whole audit trail.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::http::Method;
use slipway_domain::access::{Need, Role};

/// What `method path?query` needs.
pub fn need(method: &Method, path: &str, query: Option<&str>) -> Need {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let reading = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    let rack = |role, what| Need {
        role,
        app: None,
        what,
    };
    match segments.as_slice() {
        ["apps"] if reading => rack(Role::Read, "listing apps"),
        ["apps"] => rack(Role::Admin, "creating apps"),
        ["apps", app] if *method == Method::DELETE => on(app, Role::Admin, "deleting apps"),
        ["apps", app, "processes", _, "exec"] => {
            on(app, Role::Deploy, "running commands in processes")
        }
        ["apps", app, ..] if reading => on(app, Role::Read, "reading apps"),
        ["apps", app, rest @ ..] => on(app, Role::Deploy, deploy_action(method, rest)),
        ["tokens", ..] => rack(Role::Admin, "managing tokens"),
        ["webhooks", ..] => rack(Role::Admin, "managing webhooks"),
        ["audit"] if reading => match query_app(query) {
            Some(app) => Need {
                role: Role::Read,
                app: Some(app),
                what: "reading the audit trail",
            },
            None => rack(Role::Admin, "reading the whole rack's audit trail"),
        },
        _ if reading => rack(Role::Read, "reading"),
        _ => rack(Role::Admin, "this request"),
    }
}

fn on(app: &str, role: Role, what: &'static str) -> Need {
    Need {
        role,
        app: Some(
            percent_encoding::percent_decode_str(app)
                .decode_utf8_lossy()
                .into_owned(),
        ),
        what,
    }
}

/// The words for a change to an app (after `/apps/{app}/`).
fn deploy_action(method: &Method, rest: &[&str]) -> &'static str {
    match rest {
        [] => "changing apps",
        ["cancel"] => "cancelling promotions",
        ["builds", ..] => "building",
        ["objects", ..] => "uploading sources",
        ["releases", _, "promote"] => "promoting releases",
        ["releases", _, "rollback"] => "rolling back",
        ["releases", ..] => "creating releases",
        ["env"] => "changing env",
        ["services", _, "restart"] => "restarting services",
        ["services", _, "processes"] => "running processes",
        ["services", _] => "scaling services",
        ["processes", ..] if *method == Method::DELETE => "stopping processes",
        _ => "changing apps",
    }
}

/// The `app` query parameter, when given.
fn query_app(query: Option<&str>) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == "app")
        .map(|(_, v)| v.into_owned())
        .filter(|v| !v.is_empty())
}

/// Requests in flight per credential, each at most `cap`: the gateway's
/// concurrency limit applied per credential too, so one runaway CI token
/// cannot take every slot from the console and the other tokens.
pub struct InFlight {
    cap: usize,
    open: Mutex<HashMap<String, usize>>,
}

impl InFlight {
    /// At most `cap` requests at once per credential.
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            cap,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// The cap.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Counts a request of `credential`, or `None` at the cap.
    pub fn enter(self: &Arc<Self>, credential: &str) -> Option<InFlightGuard> {
        let mut open = self.open.lock().expect("the count lock is never poisoned");
        let count = open.entry(credential.to_owned()).or_insert(0);
        if *count >= self.cap {
            return None;
        }
        *count += 1;
        Some(InFlightGuard {
            counts: self.clone(),
            credential: credential.to_owned(),
        })
    }
}

/// One request in flight; gives its place back when dropped.
pub struct InFlightGuard {
    counts: Arc<InFlight>,
    credential: String,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let Ok(mut open) = self.counts.open.lock() else {
            return;
        };
        if let Some(count) = open.get_mut(&self.credential) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.credential);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_need_what_the_issue_says() {
        let n = |m: Method, p: &str| need(&m, p, None);
        assert_eq!(n(Method::GET, "/apps").role, Role::Read);
        assert_eq!(n(Method::POST, "/apps").role, Role::Admin);
        let delete = n(Method::DELETE, "/apps/web");
        assert_eq!(
            (delete.role, delete.app.as_deref()),
            (Role::Admin, Some("web"))
        );
        assert_eq!(delete.what, "deleting apps");
        for (m, p) in [
            (Method::POST, "/apps/web/builds"),
            (Method::POST, "/apps/web/objects/tmp/x.tgz"),
            (Method::POST, "/apps/web/releases"),
            (Method::POST, "/apps/web/releases/R1/promote"),
            (Method::POST, "/apps/web/releases/R1/rollback"),
            (Method::POST, "/apps/web/env"),
            (Method::POST, "/apps/web/cancel"),
            (Method::PUT, "/apps/web/services/api"),
            (Method::POST, "/apps/web/services/api/restart"),
            (Method::POST, "/apps/web/services/api/processes"),
            (Method::DELETE, "/apps/web/processes/p1"),
            (Method::GET, "/apps/web/processes/p1/exec"),
        ] {
            let need = n(m.clone(), p);
            assert_eq!(need.role, Role::Deploy, "{m} {p}");
            assert_eq!(need.app.as_deref(), Some("web"), "{m} {p}");
        }
        for p in [
            "/apps/web",
            "/apps/web/releases",
            "/apps/web/logs",
            "/apps/web/builds/B1/logs",
            "/apps/web/promotions/P1/events",
            "/system",
        ] {
            assert_eq!(n(Method::GET, p).role, Role::Read, "{p}");
        }
        assert_eq!(n(Method::GET, "/tokens").role, Role::Admin);
        assert_eq!(n(Method::POST, "/tokens").role, Role::Admin);
        assert_eq!(n(Method::DELETE, "/tokens/ci").role, Role::Admin);
        assert_eq!(n(Method::GET, "/audit").role, Role::Admin);
        let scoped = need(&Method::GET, "/audit", Some("app=web&since=1h"));
        assert_eq!(
            (scoped.role, scoped.app.as_deref()),
            (Role::Read, Some("web"))
        );
        // Unknown changes need admin.
        assert_eq!(n(Method::POST, "/whatever").role, Role::Admin);
    }

    #[test]
    fn the_per_credential_cap_counts_apart_and_gives_back() {
        let counts = InFlight::new(2);
        let a1 = counts.enter("token:a").unwrap();
        let _a2 = counts.enter("token:a").unwrap();
        assert!(counts.enter("token:a").is_none());
        assert!(counts.enter("password").is_some());
        drop(a1);
        assert!(counts.enter("token:a").is_some());
    }
}
