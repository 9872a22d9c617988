//! Failed logins: counted per source address in a token bucket, so a
//! source that keeps guessing is slowed to the refill rate (its requests
//! answered 429 without their credentials being looked at), and logged
//! with the peer address at most once a minute per source (with how many
//! failures the line stands for). Never the password.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;
use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::time::Instant;

use crate::auth::{Failure, source_of};

/// How often one source's failures are logged.
const LOG_EVERY: Duration = Duration::from_secs(60);
/// Sources remembered before full buckets are forgotten.
const REMEMBERED: usize = 10_000;

/// The failed-login policy: `burst` failures at once, then `per_minute`.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    /// Failures a source may make in a row.
    pub burst: u32,
    /// Failures a source regains per minute.
    pub per_minute: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            burst: 10,
            per_minute: 30,
        }
    }
}

/// Failed logins per source.
pub struct Logins {
    policy: Policy,
    sources: Mutex<HashMap<IpAddr, Bucket>>,
}

struct Bucket {
    tokens: f64,
    updated: Instant,
    logged: Option<Instant>,
    unlogged: u32,
}

impl Logins {
    /// No failures yet.
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            sources: Mutex::new(HashMap::new()),
        }
    }

    fn per_second(&self) -> f64 {
        f64::from(self.policy.per_minute) / 60.0
    }

    /// How long `peer` must wait before its credentials are looked at
    /// again, if it failed too often.
    pub fn throttled(&self, peer: Option<IpAddr>) -> Option<Duration> {
        let key = key(peer);
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        let bucket = sources.get_mut(&key)?;
        self.refill(bucket);
        if bucket.tokens >= 1.0 {
            return None;
        }
        let missing = 1.0 - bucket.tokens;
        let rate = self.per_second();
        Some(if rate > 0.0 {
            Duration::from_secs_f64(missing / rate)
        } else {
            Duration::from_secs(3600)
        })
    }

    /// Counts a failed login of `peer` and logs it (rate-limited).
    pub fn failed(&self, peer: Option<IpAddr>, failure: Failure) {
        let key = key(peer);
        let now = Instant::now();
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        if sources.len() >= REMEMBERED && !sources.contains_key(&key) {
            let burst = f64::from(self.policy.burst);
            sources.retain(|_, b| {
                self.refill(b);
                b.tokens < burst
            });
            if sources.len() >= REMEMBERED {
                // Past this many guessing sources at once, memory wins.
                sources.clear();
            }
        }
        let bucket = sources.entry(key).or_insert_with(|| Bucket {
            tokens: f64::from(self.policy.burst),
            updated: now,
            logged: None,
            unlogged: 0,
        });
        self.refill(bucket);
        bucket.tokens = (bucket.tokens - 1.0).max(0.0);
        bucket.unlogged += 1;
        if bucket
            .logged
            .is_none_or(|at| now.duration_since(at) >= LOG_EVERY)
        {
            let peer = peer.map_or_else(|| "an unknown address".to_owned(), |p| p.to_string());
            tracing::warn!(
                peer = %peer,
                failures = bucket.unlogged,
                "failed login from {peer} ({}); {} failure(s) since the last report",
                failure.describe(),
                bucket.unlogged
            );
            bucket.logged = Some(now);
            bucket.unlogged = 0;
        }
    }

    fn refill(&self, bucket: &mut Bucket) {
        let now = Instant::now();
        let gained = now.duration_since(bucket.updated).as_secs_f64() * self.per_second();
        bucket.tokens = (bucket.tokens + gained).min(f64::from(self.policy.burst));
        bucket.updated = now;
    }
}

fn key(peer: Option<IpAddr>) -> IpAddr {
    peer.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), source_of)
}

/// A request refused before its credentials were checked.
#[derive(Debug)]
pub enum Refusal {
    /// The source failed to log in too often.
    TooManyFailures {
        /// Until its next attempt is looked at.
        wait: Duration,
    },
    /// A browser sent it on another site's behalf.
    CrossSite {
        /// The header that gave it away.
        what: String,
    },
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Self::TooManyFailures { wait } => {
                let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                let mut response = (
                    StatusCode::TOO_MANY_REQUESTS,
                    format!(
                        "too many failed logins from this address: try again in {seconds}s with the right password\n"
                    ),
                )
                    .into_response();
                if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                    response.headers_mut().insert(header::RETRY_AFTER, value);
                }
                response
            }
            Self::CrossSite { what } => (
                StatusCode::FORBIDDEN,
                format!(
                    "cross-site request refused ({what} is not this rack): use the rack from its own address\n"
                ),
            )
                .into_response(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_guessing_source_is_slowed_to_the_refill_rate() {
        let logins = Logins::new(Policy {
            burst: 3,
            per_minute: 60,
        });
        let guesser = Some("10.0.0.9".parse().unwrap());
        let other = Some("10.0.0.10".parse().unwrap());
        for _ in 0..3 {
            assert_eq!(logins.throttled(guesser), None);
            logins.failed(guesser, Failure::WrongPassword);
        }
        let wait = logins
            .throttled(guesser)
            .expect("throttled after the burst");
        assert!(wait <= Duration::from_secs(1), "{wait:?}");
        // Another source is not affected.
        assert_eq!(logins.throttled(other), None);
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert_eq!(logins.throttled(guesser), None, "one token regained");
        logins.failed(guesser, Failure::WrongPassword);
        assert!(logins.throttled(guesser).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn memory_stays_bounded_under_many_sources() {
        let logins = Logins::new(Policy::default());
        for i in 0..(REMEMBERED as u32 + 50) {
            let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
            logins.failed(Some(ip), Failure::Missing);
        }
        assert!(logins.sources.lock().unwrap().len() <= REMEMBERED);
    }

    #[test]
    fn refusals_name_the_cause_and_the_wait() {
        let response = Refusal::TooManyFailures {
            wait: Duration::from_millis(1500),
        }
        .into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
    }
}
