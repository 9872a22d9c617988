//! Idempotency keys on mutating calls, carried as gRPC metadata
//! (`idempotency-key`), not as proto fields: every mutating RPC gets one the
//! same way, and no message changes. The gateway sets one per HTTP request
//! (the client's `Idempotency-Key` header, else a fresh one); a service that
//! records it answers the same key with the first result instead of acting
//! twice (see DEVELOPING.md, "Faults"). Services record keys through
//! `slipway_storage::idempotency`, for a day.
//!
//! A caller that makes its calls on behalf of one request of its own (the
//! gateway for an HTTP request) runs them in [`with_key`]: every call a
//! [`crate::Channel`] sends within carries the key unless it set one itself.

use std::future::Future;

use tonic::Status;

tokio::task_local! {
    static AMBIENT: String;
}

/// Runs `f` with `key` on every call its channels send (calls that set a
/// key of their own keep it).
pub async fn with_key<F: Future>(key: String, f: F) -> F::Output {
    AMBIENT.scope(key, f).await
}

/// Puts the key of the [`with_key`] scope, if any, on an outgoing call.
pub(crate) fn attach(headers: &mut http::HeaderMap) {
    if headers.contains_key(KEY) {
        return;
    }
    let _ = AMBIENT.try_with(|key| {
        if let Ok(value) = http::HeaderValue::from_str(key) {
            headers.insert(KEY, value);
        }
    });
}

/// The metadata key (and, capitalised, the HTTP header) of an idempotency key.
pub const KEY: &str = "idempotency-key";

/// Methods whose servers record idempotency keys: a keyed call to one of
/// them that was sent and lost its answer (the replica died mid-call) is
/// sent again, to another replica, by [`crate::Channel`]. Add a method only
/// once its server answers a repeated key with the first result.
pub const HONOURED: &[&str] = &[
    "/slipway.release.v1.ReleaseService/ChangeEnv",
    "/slipway.release.v1.ReleaseService/CreateRelease",
    "/slipway.release.v1.ReleaseService/PromoteRelease",
    "/slipway.release.v1.ReleaseService/RollbackRelease",
    "/slipway.release.v1.ReleaseService/CancelPromotion",
    "/slipway.build.v1.BuildService/CreateBuild",
    "/slipway.build.v1.BuildService/CancelBuild",
    "/slipway.build.v1.BuildArchiveService/ImportBuild",
];

/// Whether `request` carries a key for a method in [`HONOURED`].
pub(crate) fn honoured<B>(request: &http::Request<B>) -> bool {
    request.headers().contains_key(KEY) && HONOURED.contains(&request.uri().path())
}

/// Longest key accepted.
pub const MAX_KEY_LEN: usize = 128;

/// Checks a key's shape: 1 to [`MAX_KEY_LEN`] characters of `A-Z a-z 0-9 - _ . :`.
pub fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(format!(
            "an idempotency key is 1 to {MAX_KEY_LEN} characters long"
        ));
    }
    if !key
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
    {
        return Err(
            "an idempotency key holds only letters, digits and - _ . : characters".to_owned(),
        );
    }
    Ok(())
}

/// The call's idempotency key, if it has one; a malformed one is
/// INVALID_ARGUMENT.
pub fn key_of<T>(request: &tonic::Request<T>) -> Result<Option<String>, Status> {
    let Some(value) = request.metadata().get(KEY) else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .map_err(|_| Status::invalid_argument("idempotency-key is not text"))?;
    check_key(key).map_err(Status::invalid_argument)?;
    Ok(Some(key.to_owned()))
}

/// Sets `key` on an outgoing request.
pub fn set_key<T>(request: &mut tonic::Request<T>, key: &str) {
    if let Ok(value) = key.parse() {
        request.metadata_mut().insert(KEY, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_short_plain_text() {
        assert!(check_key("6f1c2a7e-0d7b-4c1e-9a51-3f0b8f7e2d10").is_ok());
        assert!(check_key("build:B0123.release").is_ok());
        assert!(check_key("").is_err());
        assert!(check_key(&"a".repeat(MAX_KEY_LEN + 1)).is_err());
        assert!(check_key("a b").is_err());
        let mut request = tonic::Request::new(());
        assert_eq!(key_of(&request).unwrap(), None);
        set_key(&mut request, "k-1");
        assert_eq!(key_of(&request).unwrap().as_deref(), Some("k-1"));
        request.metadata_mut().insert(KEY, "a/b".parse().unwrap());
        assert!(key_of(&request).is_err());
    }
}
