//! Per-credential caps on concurrent streams (the websocket routes: build
//! logs, app logs, promotion events), so that one credential cannot hold
//! every connection and every upstream stream of the gateway.
//!
//! Streams are counted per credential: the authenticated credential's
//! name (`password`, `token:NAME`), so that varying the ignored Basic user
//! name does not make a new credential; a refused upgrade by a keyed hash
//! of its `Authorization` header (never the secret itself; the key is
//! random per process). A websocket
//! upgrade over the cap is answered 429 before it upgrades. A stream
//! counts from its request until its connection closes: the count rides
//! on the connection ([`ConnectionSlot`]), which an upgraded stream keeps
//! until it ends. A request that does not upgrade gives its count back at
//! once.

use std::collections::HashMap;
use std::hash::{BuildHasher as _, RandomState};
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};

use crate::error::ApiError;
use crate::serve::ConnectionSlot;

/// Open streams per credential.
pub(crate) struct StreamCaps {
    cap: usize,
    keys: RandomState,
    open: Mutex<HashMap<u64, usize>>,
}

impl StreamCaps {
    /// At most `cap` streams per credential.
    pub(crate) fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            cap,
            keys: RandomState::new(),
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Counts a stream for `credential`, or `None` at the cap.
    fn open(self: &Arc<Self>, credential: &[u8]) -> Option<StreamCount> {
        let key = self.keys.hash_one(credential);
        let mut open = self.open.lock().expect("the count lock is never poisoned");
        let count = open.entry(key).or_insert(0);
        if *count >= self.cap {
            return None;
        }
        *count += 1;
        Some(StreamCount {
            caps: self.clone(),
            key,
        })
    }
}

/// One open stream; gives its place back when dropped.
struct StreamCount {
    caps: Arc<StreamCaps>,
    key: u64,
}

impl Drop for StreamCount {
    fn drop(&mut self) {
        let Ok(mut open) = self.caps.open.lock() else {
            return;
        };
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// Middleware: refuses a websocket upgrade over its credential's cap.
pub(crate) async fn limit(
    State(caps): State<Arc<StreamCaps>>,
    request: Request,
    next: Next,
) -> Response {
    let upgrade = request
        .headers()
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if !upgrade {
        return next.run(request).await;
    }
    let credential = match request.extensions().get::<crate::auth::Caller>() {
        Some(caller) => format!("credential:{}", caller.actor.name).into_bytes(),
        None => request
            .headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes().to_vec())
            .unwrap_or_default(),
    };
    let Some(count) = caps.open(&credential) else {
        return ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: format!(
                "too many open streams for these credentials (at most {}): close a log or event stream and try again",
                caps.cap
            ),
        }
        .into_response();
    };
    let slot = request.extensions().get::<ConnectionSlot>().cloned();
    let response = next.run(request).await;
    if response.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(slot) = slot
    {
        slot.hold(count);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_credential_gets_its_cap_and_no_more_and_others_are_apart() {
        let caps = StreamCaps::new(2);
        let a1 = caps.open(b"Basic a").unwrap();
        let _a2 = caps.open(b"Basic a").unwrap();
        assert!(caps.open(b"Basic a").is_none());
        let _b = caps.open(b"Basic b").unwrap();
        drop(a1);
        assert!(caps.open(b"Basic a").is_some());
    }
}
