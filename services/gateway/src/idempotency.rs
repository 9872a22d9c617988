//! One idempotency key per state-changing HTTP request: the client's
//! `Idempotency-Key` header (the `slipway` CLI sends its own, so its retries
//! are safe too), else a fresh one. Every gRPC call the request makes
//! carries it (`slipway_rpc::idempotency::with_key`), so a write the gateway
//! sent and got no answer for can be sent again without applying twice,
//! and a client that repeats a request with the same key gets the first
//! result (the same key with a different body: 409).

use axum::extract::Request;
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use slipway_rpc::idempotency::{KEY, check_key, with_key};

/// Runs the request within its idempotency key (reads need none).
pub(crate) async fn scope(request: Request, next: Next) -> Response {
    if matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    ) {
        return next.run(request).await;
    }
    let key = match request.headers().get(KEY) {
        Some(value) => match value
            .to_str()
            .map_err(|_| "not text".to_owned())
            .and_then(|k| {
                check_key(k)?;
                Ok(k.to_owned())
            }) {
            Ok(key) => key,
            Err(why) => {
                return (
                    StatusCode::BAD_REQUEST,
                    format!("invalid Idempotency-Key: {why}\n"),
                )
                    .into_response();
            }
        },
        None => fresh_key(),
    };
    with_key(key, next.run(request)).await
}

/// A key no other request gets: 128 bits from the thread's CSPRNG.
fn fresh_key() -> String {
    format!("gw-{:032x}", rand::random::<u128>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_keys_are_valid_and_differ() {
        let (a, b) = (fresh_key(), fresh_key());
        assert_ne!(a, b);
        check_key(&a).unwrap();
    }
}
