//! Calls to the API server with Slipway's error policy: 409, 429, 5xx and
//! dropped connections are retried with backoff (the call is rebuilt each
//! time, so a conflict is retried against fresh state); 401/403 say which
//! verb on which resource was refused; 404 is `NotFound`; 422 shows the
//! invalid field.

use std::future::Future;
use std::time::Duration;

use super::super::RuntimeError;

/// Attempts of one call before its error is returned.
const ATTEMPTS: u32 = 5;

/// What a call does, for error messages: `patch deployments web in
/// namespace prod-myapp`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Op<'a> {
    /// The API verb (`get`, `list`, `patch`, `delete`, `watch`).
    pub(crate) verb: &'static str,
    /// The resource, plural (`deployments`).
    pub(crate) resource: &'static str,
    /// The namespace, for namespaced resources.
    pub(crate) namespace: Option<&'a str>,
    /// The object's name, when the call names one.
    pub(crate) name: Option<&'a str>,
}

impl std::fmt::Display for Op<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.verb, self.resource)?;
        if let Some(name) = self.name {
            write!(f, " {name}")?;
        }
        if let Some(ns) = self.namespace {
            write!(f, " in namespace {ns}")?;
        }
        Ok(())
    }
}

/// Whether an error is worth another attempt.
pub(crate) fn is_transient(err: &kube::Error) -> bool {
    match err {
        kube::Error::Api(status) => matches!(status.code, 409 | 429 | 500..=599),
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

/// The HTTP status of an API error, if it is one.
pub(crate) fn code(err: &kube::Error) -> Option<u16> {
    match err {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// Turns an API error into a runtime error that says what was refused.
pub(crate) fn map_error(op: Op<'_>, err: kube::Error) -> RuntimeError {
    let kube::Error::Api(status) = &err else {
        return RuntimeError::Backend(format!("kubernetes: cannot {op}: {err}"));
    };
    match status.code {
        401 => RuntimeError::Backend(format!(
            "kubernetes refused the rollout service's credentials (401 Unauthorized) to {op}: {}",
            status.message
        )),
        403 => RuntimeError::Backend(format!(
            "kubernetes RBAC forbids the rollout service to {op} (403 Forbidden; grant verb {:?} on resource {:?}): {}",
            op.verb, op.resource, status.message
        )),
        404 => RuntimeError::NotFound(format!("kubernetes: cannot {op}: not found")),
        422 => {
            let fields: Vec<String> = status
                .details
                .iter()
                .flat_map(|d| d.causes.iter())
                .map(|c| format!("{}: {}", c.field, c.message))
                .collect();
            let detail = if fields.is_empty() {
                status.message.clone()
            } else {
                fields.join("; ")
            };
            RuntimeError::Backend(format!(
                "kubernetes rejected an invalid object (422) to {op}: {detail}"
            ))
        }
        code => RuntimeError::Backend(format!(
            "kubernetes: cannot {op} ({code} {}): {}",
            status.reason, status.message
        )),
    }
}

/// Backoff before attempt `n` (1-based): 100ms, 200ms, … up to 2s.
pub(crate) fn backoff(n: u32) -> Duration {
    Duration::from_millis(100u64 << n.saturating_sub(1).min(5)).min(Duration::from_secs(2))
}

/// Runs `call` (rebuilt per attempt) with the retry policy; maps the final
/// error with [`map_error`].
pub(crate) async fn call<T, F, Fut>(op: Op<'_>, mut call: F) -> Result<T, RuntimeError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, kube::Error>>,
{
    let mut attempt = 1;
    loop {
        match call().await {
            Ok(value) => return Ok(value),
            Err(err) if attempt < ATTEMPTS && is_transient(&err) => {
                tracing::debug!(%op, attempt, "kubernetes call failed, retrying: {err}");
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
            }
            Err(err) => return Err(map_error(op, err)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_names_verb_and_resource() {
        let status: kube::core::Status = serde_json::from_value(serde_json::json!({
            "code": 403, "message": "deployments.apps \"web\" is forbidden", "reason": "Forbidden", "status": "Failure"
        }))
        .unwrap();
        let op = Op {
            verb: "patch",
            resource: "deployments",
            namespace: Some("r-a"),
            name: Some("web"),
        };
        let text = map_error(op, kube::Error::Api(Box::new(status))).to_string();
        assert!(
            text.contains("forbids the rollout service to patch deployments web in namespace r-a"),
            "{text}"
        );
    }
}
