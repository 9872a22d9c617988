//! The release service's webhook flags (flattened into its `Config`).

use std::time::Duration;

/// How webhooks are delivered.
#[derive(Clone, Debug, clap::Args)]
pub struct WebhookArgs {
    /// The rack's name, sent as `data.rack` in every webhook.
    #[arg(
        long = "rack-name",
        env = "SLIPWAY_RACK_NAME",
        default_value = "slipway"
    )]
    pub rack_name: String,

    /// Deliver webhooks to loopback, private, link-local and other
    /// non-public addresses too. Off by default: a receiver URL must not be
    /// a way into the rack's own network (SSRF).
    #[arg(long, env = "SLIPWAY_WEBHOOK_ALLOW_PRIVATE")]
    pub webhook_allow_private: bool,

    /// Time limit of one delivery attempt (connect, send, response head).
    #[arg(long, env = "SLIPWAY_WEBHOOK_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub webhook_timeout: Duration,

    /// How long a delivery that keeps failing with a retryable result is
    /// retried before it is given up.
    #[arg(long, env = "SLIPWAY_WEBHOOK_RETRY_FOR", default_value = "24h", value_parser = humantime::parse_duration)]
    pub webhook_retry_for: Duration,

    /// Delay before the first retry; it doubles (with jitter) up to an hour.
    #[arg(long, env = "SLIPWAY_WEBHOOK_BACKOFF", default_value = "1s", value_parser = humantime::parse_duration)]
    pub webhook_backoff: Duration,

    /// Attempts in flight to one receiver from this replica.
    #[arg(long, env = "SLIPWAY_WEBHOOK_CONCURRENCY", default_value = "4")]
    pub webhook_concurrency: usize,

    /// How often this replica looks for due deliveries it was not woken for
    /// (events recorded by other replicas, retries).
    #[arg(long, env = "SLIPWAY_WEBHOOK_POLL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub webhook_poll: Duration,
}

impl Default for WebhookArgs {
    fn default() -> Self {
        Self {
            rack_name: "slipway".into(),
            webhook_allow_private: false,
            webhook_timeout: Duration::from_secs(10),
            webhook_retry_for: Duration::from_secs(24 * 3600),
            webhook_backoff: Duration::from_secs(1),
            webhook_concurrency: 4,
            webhook_poll: Duration::from_secs(1),
        }
    }
}

impl WebhookArgs {
    /// Checks the values that can be wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.webhook_timeout < Duration::from_millis(100)
            || self.webhook_timeout > Duration::from_secs(60)
        {
            return Err("--webhook-timeout must be between 100ms and 60s".into());
        }
        if self.webhook_concurrency == 0 || self.webhook_concurrency > 64 {
            return Err("--webhook-concurrency must be between 1 and 64".into());
        }
        if self.webhook_backoff.is_zero() || self.webhook_poll.is_zero() {
            return Err("--webhook-backoff and --webhook-poll must be above zero".into());
        }
        if self.rack_name.is_empty() {
            return Err("--rack-name must not be empty".into());
        }
        Ok(())
    }
}
