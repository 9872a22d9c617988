//! The dispatcher: every replica runs one. It claims due deliveries (woken
//! at once by its own commits, else every `--webhook-poll`), posts each on
//! a task of its own and records the result under its claim. A receiver
//! has at most `--webhook-concurrency` attempts in flight from a replica,
//! each bounded by `--webhook-timeout`, so a slow or dead receiver holds
//! only its own deliveries back; requests never wait for any of this.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use slipway_storage::now_micros;
use tokio_util::sync::CancellationToken;

use super::retry::{Attempt, Verdict, verdict};
use super::url::{GuardedResolver, WebhookUrl};
use super::{WebhookArgs, new_id, payload, sign};
use crate::store::{AttemptRecord, Claimed, Store};

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector<GuardedResolver>>, Full<Bytes>>;

/// Most deliveries claimed in one round.
const CLAIM_BATCH: usize = 256;
/// How much of a receiver's answer is read (then dropped), so the
/// connection can be reused.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// A claim outlives its attempt's timeout by this much before the delivery
/// is due again (a worker killed mid-attempt).
const LEASE_MARGIN: Duration = Duration::from_secs(10);
/// How often a replica prunes the webhook outbox.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// Delivers the outbox.
pub struct Dispatcher {
    store: Store,
    args: WebhookArgs,
    client: HttpClient,
    /// Receivers' URLs, opened once (a URL never changes; a removed
    /// receiver's deliveries are cancelled).
    urls: Mutex<HashMap<String, WebhookUrl>>,
    /// Receivers with attempts in flight from this replica.
    busy: Mutex<HashMap<String, usize>>,
    /// Notified when an attempt ends (its receiver may take more).
    finished: tokio::sync::Notify,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher").finish_non_exhaustive()
    }
}

impl Dispatcher {
    /// A dispatcher over `store`.
    pub fn new(store: Store, args: WebhookArgs) -> anyhow::Result<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new_with_resolver(GuardedResolver {
            allow_private: args.webhook_allow_private,
        });
        http.set_connect_timeout(Some(args.webhook_timeout));
        http.set_nodelay(true);
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(Self {
            store,
            args,
            client,
            urls: Mutex::default(),
            busy: Mutex::default(),
            finished: tokio::sync::Notify::new(),
        })
    }

    /// Deletes finished deliveries, attempts and events older than the
    /// outbox retention (7 days; pending deliveries stay).
    async fn prune(&self) {
        let cutoff = now_micros() - slipway_storage::outbox::RETENTION.as_micros() as i64;
        match self.store.prune_webhooks(cutoff).await {
            Ok(p) if p == Default::default() => {}
            Ok(p) => tracing::info!(
                deliveries = p.deliveries,
                attempts = p.attempts,
                events = p.events,
                "pruned webhook deliveries finished over 7 days ago"
            ),
            Err(e) => tracing::warn!("failed to prune webhook deliveries: {e}"),
        }
    }

    /// Claims and delivers until `stop` is cancelled.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let wake = self.store.outbox_signal();
        let mut failing = false;
        let mut pruned_at: Option<tokio::time::Instant> = None;
        loop {
            if stop.is_cancelled() {
                return;
            }
            if pruned_at.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
                pruned_at = Some(tokio::time::Instant::now());
                self.prune().await;
            }
            let claimed = match self.claim_round().await {
                Ok(n) => {
                    if failing {
                        tracing::info!("webhook outbox readable again");
                        failing = false;
                    }
                    n
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!("failed to claim webhook deliveries: {e}");
                        failing = true;
                    }
                    0
                }
            };
            if claimed == CLAIM_BATCH {
                continue;
            }
            let mut wait = self.args.webhook_poll;
            if let Ok(Some(due)) = self.store.next_delivery_due().await {
                let until = (due - now_micros()).max(0) as u64;
                wait = wait.min(Duration::from_micros(until));
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = wake.notified() => {}
                () = self.finished.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One round: claims what is due and starts an attempt for each.
    async fn claim_round(self: &Arc<Self>) -> crate::error::Result<usize> {
        let busy: Vec<String> = self
            .busy
            .lock()
            .expect("busy lock")
            .keys()
            .cloned()
            .collect();
        let token = new_id('C');
        let lease = self.args.webhook_timeout + LEASE_MARGIN;
        let lease_until = now_micros() + lease.as_micros() as i64;
        let claimed = self
            .store
            .claim_deliveries(
                &token,
                lease_until,
                self.args.webhook_concurrency,
                CLAIM_BATCH,
                &busy,
            )
            .await?;
        if claimed.is_empty() {
            return Ok(0);
        }
        let keys = Arc::new(self.store.signing_keys().await?);
        let n = claimed.len();
        {
            let mut busy = self.busy.lock().expect("busy lock");
            for c in &claimed {
                *busy.entry(c.webhook.clone()).or_default() += 1;
            }
        }
        for c in claimed {
            let this = self.clone();
            let keys = keys.clone();
            let token = token.clone();
            tokio::spawn(async move {
                let webhook = c.webhook.clone();
                this.attempt(c, &keys, &token).await;
                {
                    let mut busy = this.busy.lock().expect("busy lock");
                    if let Some(n) = busy.get_mut(&webhook) {
                        *n -= 1;
                        if *n == 0 {
                            busy.remove(&webhook);
                        }
                    }
                }
                this.finished.notify_one();
            });
        }
        Ok(n)
    }

    /// One attempt of one delivery, and its record.
    async fn attempt(&self, claimed: Claimed, keys: &[Vec<u8>], token: &str) {
        let url = match self.url(&claimed.webhook).await {
            Ok(Some(url)) => url,
            // Removed: its deliveries were cancelled with it.
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(webhook = %claimed.webhook, "failed to read a webhook's URL: {e}");
                return;
            }
        };
        let body = payload::body(&claimed.event, &claimed.delivery, &self.args.rack_name);
        let started = std::time::Instant::now();
        let attempt = self.post(&url, &claimed.delivery, body, keys).await;
        let duration_ms = u32::try_from(started.elapsed().as_millis()).unwrap_or(u32::MAX);
        let now = now_micros();
        let age = Duration::from_micros((now - claimed.created_micros).max(0) as u64);
        let decided = verdict(
            &attempt,
            claimed.attempts + 1,
            age,
            self.args.webhook_retry_for,
            self.args.webhook_backoff,
            rand::random::<f64>(),
        );
        let (status, error) = match &attempt {
            Attempt::Status(code) if (200..300).contains(code) => (*code, String::new()),
            Attempt::Status(code) => (*code, format!("answered {code}")),
            Attempt::Timeout => (
                0,
                format!(
                    "no answer within {}",
                    humantime::format_duration(self.args.webhook_timeout)
                ),
            ),
            Attempt::Connection(why) => (0, format!("connection failed: {why}")),
            Attempt::Refused(why) => (0, format!("not sent: {why}")),
        };
        let record = match decided {
            Verdict::Delivered => AttemptRecord {
                state: "delivered",
                status,
                error,
                next_attempt_micros: now,
                duration_ms,
            },
            Verdict::Retry(delay) => AttemptRecord {
                state: "pending",
                status,
                error,
                next_attempt_micros: now + delay.as_micros() as i64,
                duration_ms,
            },
            Verdict::GiveUp => {
                tracing::warn!(
                    webhook = %claimed.webhook,
                    delivery = %claimed.delivery,
                    url = %url.display(),
                    attempts = claimed.attempts + 1,
                    "webhook delivery given up: {error}"
                );
                AttemptRecord {
                    state: "failed",
                    status,
                    error,
                    next_attempt_micros: now,
                    duration_ms,
                }
            }
        };
        match self
            .store
            .record_attempt(&claimed.delivery, token, &record)
            .await
        {
            Ok(true) => {}
            Ok(false) => tracing::info!(
                delivery = %claimed.delivery,
                "webhook attempt not recorded: its claim ran out or the webhook was removed"
            ),
            // The claim runs out and the delivery is tried again: at least once.
            Err(e) => {
                tracing::warn!(delivery = %claimed.delivery, "failed to record a webhook attempt: {e}")
            }
        }
    }

    async fn url(&self, webhook: &str) -> crate::error::Result<Option<WebhookUrl>> {
        if let Some(url) = self.urls.lock().expect("urls lock").get(webhook) {
            return Ok(Some(url.clone()));
        }
        let url = self.store.webhook_url(webhook).await?;
        if let Some(url) = &url {
            self.urls
                .lock()
                .expect("urls lock")
                .insert(webhook.to_owned(), url.clone());
        }
        Ok(url)
    }

    /// Posts `body`, signed with `keys`, within the timeout.
    async fn post(
        &self,
        url: &WebhookUrl,
        delivery: &str,
        body: Vec<u8>,
        keys: &[Vec<u8>],
    ) -> Attempt {
        if let Err(why) = url.check_literal(self.args.webhook_allow_private) {
            return Attempt::Refused(why);
        }
        let (target, authorization) = match split_credentials(url) {
            Ok(parts) => parts,
            Err(why) => return Attempt::Refused(why),
        };
        let t = chrono::Utc::now().timestamp();
        let mut request = http::Request::post(target)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("slipway-webhooks/", env!("CARGO_PKG_VERSION")),
            )
            .header(payload::DELIVERY_HEADER, delivery);
        if !keys.is_empty() {
            request = request.header(sign::HEADER, sign::signature(t, &body, keys));
        }
        if let Some(value) = authorization {
            request = request.header(http::header::AUTHORIZATION, value);
        }
        let request = match request.body(Full::new(Bytes::from(body))) {
            Ok(r) => r,
            Err(_) => return Attempt::Refused("the URL is not usable in a request".into()),
        };
        let deadline = tokio::time::Instant::now() + self.args.webhook_timeout;
        let response = match tokio::time::timeout_at(deadline, self.client.request(request)).await {
            Err(_) => return Attempt::Timeout,
            Ok(Err(e)) => return classify(&e),
            Ok(Ok(response)) => response,
        };
        let status = response.status().as_u16();
        // Read a little of the answer so the connection can be reused; its
        // content does not matter.
        let _ = tokio::time::timeout_at(
            deadline,
            Limited::new(response.into_body(), MAX_ANSWER_BYTES).collect(),
        )
        .await;
        Attempt::Status(status)
    }
}

/// The URL without user info, and that user info as a Basic
/// `Authorization` value (what browsers and curl do with it).
fn split_credentials(url: &WebhookUrl) -> Result<(String, Option<String>), String> {
    use base64::Engine as _;
    let mut parsed = url::Url::parse(url.expose()).map_err(|e| e.to_string())?;
    if parsed.username().is_empty() && parsed.password().is_none() {
        return Ok((parsed.to_string(), None));
    }
    let decode = |s: &str| {
        url::form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    let user = decode(parsed.username());
    let password = parsed.password().map(decode).unwrap_or_default();
    let value = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    );
    let _ = parsed.set_username("");
    let _ = parsed.set_password(None);
    Ok((parsed.to_string(), Some(value)))
}

/// What a client error means: refused by the address guard, or a
/// connection failure described by its innermost cause (which names no URL).
fn classify(error: &hyper_util::client::legacy::Error) -> Attempt {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    let mut innermost = None;
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::PermissionDenied
        {
            return Attempt::Refused(io.to_string());
        }
        innermost = Some(e);
        source = e.source();
    }
    Attempt::Connection(match innermost {
        Some(e) => e.to_string(),
        None if error.is_connect() => "could not connect".into(),
        None => "the connection broke".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_info_becomes_basic_auth() {
        let url = WebhookUrl::parse("https://bot:p%40ss@hooks.example.com/x?k=1").unwrap();
        let (target, auth) = split_credentials(&url).unwrap();
        assert_eq!(target, "https://hooks.example.com/x?k=1");
        // base64("bot:p@ss")
        assert_eq!(auth.as_deref(), Some("Basic Ym90OnBAc3M="));
        let url = WebhookUrl::parse("https://hooks.example.com/x").unwrap();
        assert_eq!(split_credentials(&url).unwrap().1, None);
    }
}
