//! Call deadlines, on both ends, with an exemption for client streams that
//! bound themselves by progress instead (a source upload may take as long
//! as it keeps moving; it fails when it stalls).
//!
//! The client sets `grpc-timeout` on every call unless its method is
//! exempt; tonic's channel enforces that header on the client side and the
//! server honours it too, so the server stops work its caller gave up on.
//! The server's own bound is [`DeadlineLayer`], which skips the same
//! exempt methods (tonic's `Server::timeout` cannot).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::HeaderValue;

/// The request header carrying a gRPC deadline.
const GRPC_TIMEOUT: &str = "grpc-timeout";

/// Sets `grpc-timeout` to `timeout` on `request` unless its method is one of
/// `exempt` or the caller set a deadline of its own.
pub(crate) fn set_deadline<B>(request: &mut http::Request<B>, timeout: Duration, exempt: &[&str]) {
    if exempt.contains(&request.uri().path()) || request.headers().contains_key(GRPC_TIMEOUT) {
        return;
    }
    request.headers_mut().insert(GRPC_TIMEOUT, encode(timeout));
}

/// The deadline `request` carries in `grpc-timeout`, if any (and valid):
/// what a balanced call's retries and an in-process call are bounded by.
pub(crate) fn timeout_of<B>(request: &http::Request<B>) -> Option<Duration> {
    let value = request.headers().get(GRPC_TIMEOUT)?.to_str().ok()?;
    let (digits, unit) = value.split_at_checked(value.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A `grpc-timeout` value: at most eight digits and a unit, rounded up so
/// that a deadline is never shorter than asked.
fn encode(timeout: Duration) -> HeaderValue {
    const MAX: u128 = 99_999_999;
    let millis = timeout.as_nanos().div_ceil(1_000_000).max(1);
    let value = [(1, 'm'), (1_000, 'S'), (60_000, 'M'), (3_600_000, 'H')]
        .into_iter()
        .find_map(|(per, unit)| {
            let n = millis.div_ceil(per);
            (n <= MAX).then(|| format!("{n}{unit}"))
        })
        .unwrap_or_else(|| format!("{MAX}H"));
    HeaderValue::from_str(&value).expect("digits and a unit are a valid header value")
}

/// Bounds every call by `timeout` except the `exempt` methods (full paths,
/// `/package.Service/Method`), answering CANCELLED "Timeout expired" as
/// tonic's own server timeout does.
#[derive(Clone, Debug)]
pub struct DeadlineLayer {
    timeout: Duration,
    exempt: &'static [&'static str],
}

impl DeadlineLayer {
    /// A layer bounding calls by `timeout`, except `exempt`.
    pub fn new(timeout: Duration, exempt: &'static [&'static str]) -> Self {
        Self { timeout, exempt }
    }
}

impl<S> tower::Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Deadline {
            inner,
            timeout: self.timeout,
            exempt: self.exempt,
        }
    }
}

/// The service of [`DeadlineLayer`].
#[derive(Clone, Debug)]
pub struct Deadline<S> {
    inner: S,
    timeout: Duration,
    exempt: &'static [&'static str],
}

impl<S, B, R> tower::Service<http::Request<B>> for Deadline<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    R: Default + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let exempt = self.exempt.contains(&request.uri().path());
        let timeout = self.timeout;
        let response = self.inner.call(request);
        if exempt {
            return Box::pin(response);
        }
        Box::pin(async move {
            match tokio::time::timeout(timeout, response).await {
                Ok(response) => response,
                Err(_) => Ok(tonic::Status::cancelled("Timeout expired").into_http()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_encode_in_eight_digits_never_shorter() {
        assert_eq!(encode(Duration::from_secs(60)), "60000m");
        assert_eq!(encode(Duration::from_micros(1500)), "2m");
        assert_eq!(encode(Duration::ZERO), "1m");
        assert_eq!(encode(Duration::from_secs(200_000)), "200000S");
        assert_eq!(encode(Duration::MAX).to_str().unwrap().len(), 9);
    }

    #[test]
    fn timeouts_read_back_as_set() {
        for timeout in [
            Duration::from_secs(60),
            Duration::from_millis(1),
            Duration::from_secs(200_000),
        ] {
            let mut request = http::Request::new(());
            request.headers_mut().insert(GRPC_TIMEOUT, encode(timeout));
            assert_eq!(timeout_of(&request), Some(timeout));
        }
        for (text, want) in [
            ("250m", Duration::from_millis(250)),
            ("30S", Duration::from_secs(30)),
            ("2M", Duration::from_secs(120)),
            ("1H", Duration::from_secs(3600)),
            ("7u", Duration::from_micros(7)),
            ("9n", Duration::from_nanos(9)),
        ] {
            let mut request = http::Request::new(());
            request
                .headers_mut()
                .insert(GRPC_TIMEOUT, HeaderValue::from_static(text));
            assert_eq!(timeout_of(&request), Some(want), "{text}");
        }
        for bad in ["", "5", "m", "123456789m", "5x", "-5m"] {
            let mut request = http::Request::new(());
            request
                .headers_mut()
                .insert(GRPC_TIMEOUT, HeaderValue::from_static(bad));
            assert_eq!(timeout_of(&request), None, "{bad:?}");
        }
        assert_eq!(timeout_of(&http::Request::new(())), None);
    }

    #[test]
    fn exempt_methods_and_callers_deadlines_are_left_alone() {
        let mut request = http::Request::new(());
        *request.uri_mut() = "/a.B/Up".parse().unwrap();
        set_deadline(&mut request, Duration::from_secs(1), &["/a.B/Up"]);
        assert!(request.headers().get(GRPC_TIMEOUT).is_none());
        *request.uri_mut() = "/a.B/Get".parse().unwrap();
        set_deadline(&mut request, Duration::from_secs(1), &["/a.B/Up"]);
        assert_eq!(request.headers()[GRPC_TIMEOUT], "1000m");
        set_deadline(&mut request, Duration::from_secs(9), &[]);
        assert_eq!(request.headers()[GRPC_TIMEOUT], "1000m");
    }
}
