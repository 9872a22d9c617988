//! What an attempt's result means for its delivery, decided in pure code:
//! delivered, retried later (timeouts, connection errors, 408, 429, 5xx),
//! or given up (any other status, or retried for the whole retry window).

use std::time::Duration;

/// How an attempt ended, as far as the receiver is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// The receiver answered with this HTTP status.
    Status(u16),
    /// No answer within the timeout.
    Timeout,
    /// The connection could not be made or broke (refused, reset, DNS, TLS).
    Connection(String),
    /// The rack refused to send it (a non-public address without
    /// `--webhook-allow-private`); retried like a connection error, since
    /// DNS may change.
    Refused(String),
}

/// What to do with the delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Done.
    Delivered,
    /// Try again after this delay.
    Retry(Duration),
    /// Give up.
    GiveUp,
}

/// Longest wait between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// Whether a result is worth another attempt.
pub fn retryable(attempt: &Attempt) -> bool {
    match attempt {
        Attempt::Status(code) => matches!(code, 408 | 429 | 500..=599),
        Attempt::Timeout | Attempt::Connection(_) | Attempt::Refused(_) => true,
    }
}

/// Decides the next step after attempt number `attempts` (1 for the first)
/// of a delivery that is `age` old, retried for `retry_for` at most, with
/// first delay `base`. `jitter` in [0, 1) picks the delay within the upper
/// half of the doubled window, so replicas and receivers do not retry in
/// lockstep.
pub fn verdict(
    attempt: &Attempt,
    attempts: u32,
    age: Duration,
    retry_for: Duration,
    base: Duration,
    jitter: f64,
) -> Verdict {
    if let Attempt::Status(code) = attempt
        && (200..300).contains(code)
    {
        return Verdict::Delivered;
    }
    if !retryable(attempt) {
        return Verdict::GiveUp;
    }
    let exponent = attempts.saturating_sub(1).min(30);
    let window = base
        .checked_mul(1u32 << exponent)
        .unwrap_or(MAX_BACKOFF)
        .min(MAX_BACKOFF);
    let delay = window.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0));
    if age + delay > retry_for {
        return Verdict::GiveUp;
    }
    Verdict::Retry(delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);
    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn statuses_and_errors_are_classified() {
        let cases = [
            (Attempt::Status(200), Some(Verdict::Delivered)),
            (Attempt::Status(204), Some(Verdict::Delivered)),
            (Attempt::Status(301), Some(Verdict::GiveUp)),
            (Attempt::Status(400), Some(Verdict::GiveUp)),
            (Attempt::Status(401), Some(Verdict::GiveUp)),
            (Attempt::Status(404), Some(Verdict::GiveUp)),
            (Attempt::Status(410), Some(Verdict::GiveUp)),
            (Attempt::Status(408), None),
            (Attempt::Status(429), None),
            (Attempt::Status(500), None),
            (Attempt::Status(503), None),
            (Attempt::Timeout, None),
            (Attempt::Connection("refused".into()), None),
            (Attempt::Refused("private".into()), None),
        ];
        for (attempt, expected) in cases {
            let got = verdict(&attempt, 1, Duration::ZERO, DAY, S, 0.0);
            match expected {
                Some(v) => assert_eq!(got, v, "{attempt:?}"),
                None => assert!(matches!(got, Verdict::Retry(_)), "{attempt:?}: {got:?}"),
            }
        }
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let delay = |n, jitter| match verdict(&Attempt::Timeout, n, Duration::ZERO, DAY, S, jitter)
        {
            Verdict::Retry(d) => d,
            other => panic!("{other:?}"),
        };
        assert_eq!(delay(1, 0.0), Duration::from_millis(500));
        assert_eq!(delay(1, 1.0), S);
        assert_eq!(delay(2, 1.0), 2 * S);
        assert_eq!(delay(4, 1.0), 8 * S);
        assert!(delay(3, 0.3) >= 2 * S && delay(3, 0.3) <= 4 * S);
        assert_eq!(delay(20, 1.0), MAX_BACKOFF);
        assert_eq!(delay(200, 1.0), MAX_BACKOFF);
    }

    #[test]
    fn retries_stop_after_the_window() {
        let almost = DAY - Duration::from_secs(10);
        assert_eq!(
            verdict(&Attempt::Status(503), 30, almost, DAY, S, 0.5),
            Verdict::GiveUp
        );
        assert!(matches!(
            verdict(&Attempt::Status(503), 1, almost, DAY, S, 0.5),
            Verdict::Retry(_)
        ));
        // A success is a success however late.
        assert_eq!(
            verdict(&Attempt::Status(200), 99, 2 * DAY, DAY, S, 0.5),
            Verdict::Delivered
        );
    }
}
