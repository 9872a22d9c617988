//! A steady write load through both gateways of a [`Cluster`], and the
//! ledger check after it: the rolling-restart and chaos tests use it.
//!
//! Each write is an env change `POST /apps/{app}/env` setting a variable of
//! its own (`W<writer>_<n>`), shaped as the `convox` CLI's request, with an
//! `Idempotency-Key` of its own. A client pointed at both gateways sends a
//! request that got no answer (connect refused, the connection dropped)
//! again to the other gateway with the same key; every answer, whatever its
//! status, is final.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use tokio::io::AsyncWriteExt as _;

use crate::cluster::{Cluster, PASSWORD};
use crate::read_answer;

/// How many gateways a request without an answer is tried on before it
/// counts as failed (each pair of tries waits a little longer).
const TRIES: usize = 40;

/// One HTTP/1.1 request to a gateway with the rack password; `None` when no
/// answer came (refused, or the connection dropped), the one case a client
/// sends again.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    target: &str,
    body: impl AsRef<[u8]>,
    key: Option<&str>,
) -> Option<(u16, String)> {
    let body = body.as_ref();
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("convox:{PASSWORD}"));
    let key = key.map_or(String::new(), |k| format!("Idempotency-Key: {k}\r\n"));
    let content_type = match body.first() {
        Some(b'{') => "application/json",
        _ if std::str::from_utf8(body).is_ok() => "application/x-www-form-urlencoded",
        _ => "application/octet-stream",
    };
    let head = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Basic {auth}\r\n\
         Content-Type: {content_type}\r\n{key}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.ok()?;
    stream.write_all(body).await.ok()?;
    let (status, body) = tokio::time::timeout(Duration::from_secs(60), read_answer(&mut stream))
        .await
        .unwrap_or((0, String::new()));
    (status != 0).then_some((status, body))
}

/// Sends one request (keyed: `key`), first to `gateways[first]`, again to the other
/// gateway (same key) while no answer comes; the answer and how many times
/// it was resent.
pub async fn send_keyed(
    gateways: [SocketAddr; 2],
    first: usize,
    method: &str,
    target: &str,
    body: &str,
    key: Option<&str>,
) -> (Option<(u16, String)>, usize) {
    send_keyed_retrying(gateways, first, method, target, body, key, &[]).await
}

/// [`send_keyed`] that also sends again (same key, other gateway) on an
/// answer with a status in `also` (say 502/503: the gateway could not reach
/// the service behind it in time).
pub async fn send_keyed_retrying(
    gateways: [SocketAddr; 2],
    first: usize,
    method: &str,
    target: &str,
    body: &str,
    key: Option<&str>,
    also: &[u16],
) -> (Option<(u16, String)>, usize) {
    let mut g = first % 2;
    let mut last = None;
    for attempt in 0..TRIES {
        match send(gateways[g], method, target, body, key).await {
            Some(answer) if also.contains(&answer.0) => last = Some(answer),
            Some(answer) => return (Some(answer), attempt),
            None => {}
        }
        g = 1 - g;
        if attempt % 2 == 1 {
            // Both refused: a gateway is restarting and the other one
            // not back yet (or both are down for a moment).
            tokio::time::sleep(Duration::from_millis(50 * (attempt as u64 + 1).min(10))).await;
        }
    }
    (last, TRIES)
}

/// What the writers saw.
#[derive(Default)]
pub struct Tally {
    /// Variables acknowledged (200), with the release that answered.
    pub acked: Mutex<BTreeMap<String, String>>,
    /// Requests without an answer that were sent again with their key.
    pub resent: AtomicUsize,
    /// Writes that failed: an answer other than 200, or none at all.
    pub failed: Mutex<Vec<String>>,
    /// Latency of each acknowledged write, in completion order.
    pub latencies: Mutex<Vec<Duration>>,
}

impl Tally {
    /// Acknowledged writes so far.
    pub fn acked(&self) -> usize {
        self.acked.lock().expect("tally lock").len()
    }

    /// The failed writes so far.
    pub fn failed(&self) -> Vec<String> {
        self.failed.lock().expect("tally lock").clone()
    }

    /// Records the answer to write `name`, sent at `started`: acknowledged
    /// (200, with the id its JSON body names, and its latency) or failed.
    pub fn record(&self, name: String, answer: Option<(u16, String)>, started: Instant) {
        match answer {
            Some((200, body)) => {
                let id = serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|r| r["id"].as_str().map(str::to_owned))
                    .unwrap_or_default();
                self.latencies
                    .lock()
                    .expect("tally lock")
                    .push(started.elapsed());
                self.acked.lock().expect("tally lock").insert(name, id);
            }
            other => self
                .failed
                .lock()
                .expect("tally lock")
                .push(format!("{name}: {other:?}")),
        }
    }
}

/// Steady env writers through both gateways until [`Load::finish`].
pub struct Load {
    /// What they saw.
    pub tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
    writers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Starts `writers` writers on `app` (which must exist), writer `w`
    /// first to gateway `w % 2`, each pausing `pause` between its writes.
    pub fn start(cluster: &Cluster, app: &str, writers: usize, pause: Duration) -> Self {
        let gateways = [cluster.addr("gateway-a"), cluster.addr("gateway-b")];
        let tally = Arc::new(Tally::default());
        let stop = Arc::new(AtomicBool::new(false));
        let writers = (0..writers)
            .map(|w| {
                let (tally, stop, app) = (tally.clone(), stop.clone(), app.to_owned());
                tokio::spawn(async move {
                    let mut i = 0;
                    while !stop.load(Ordering::SeqCst) {
                        write_once(gateways, &app, w, i, &tally).await;
                        i += 1;
                        tokio::time::sleep(pause).await;
                    }
                })
            })
            .collect();
        Self {
            tally,
            stop,
            writers,
        }
    }

    /// Waits until `more` further writes were acknowledged (at most
    /// `limit`): the load is moving.
    pub async fn progress(&self, more: usize, limit: Duration, what: &str) {
        let target = self.tally.acked() + more;
        crate::eventually(limit, what, || {
            let n = self.tally.acked();
            async move { (n >= target).then_some(()) }
        })
        .await;
    }

    /// Stops the writers after their current write and waits for them.
    pub async fn finish(self) -> Arc<Tally> {
        self.stop.store(true, Ordering::SeqCst);
        for w in self.writers {
            tokio::time::timeout(Duration::from_secs(180), w)
                .await
                .expect("writers finish")
                .expect("a writer panicked");
        }
        self.tally
    }
}

/// One write of writer `w`: `W<w>_<i>=<i>` with its own key.
async fn write_once(gateways: [SocketAddr; 2], app: &str, w: usize, i: usize, tally: &Tally) {
    let var = format!("W{w}_{i}");
    let key = format!("load-{w}-{i}-{}", uuid::Uuid::new_v4().simple());
    let body = format!(r#"{{"set":{{"{var}":"{i}"}},"unset":[]}}"#);
    let started = Instant::now();
    let (answer, resent) = send_keyed(
        gateways,
        w,
        "POST",
        &format!("/apps/{app}/env"),
        &body,
        Some(&key),
    )
    .await;
    tally.resent.fetch_add(resent, Ordering::SeqCst);
    tally.record(var, answer, started);
}

/// The releases of `app` in the ledger, oldest first: (id, description).
pub async fn ledger(cluster: &Cluster, app: &str) -> Vec<(String, String)> {
    release_rows(
        cluster,
        "SELECT r.id, r.description FROM releases r JOIN apps a ON a.id = r.app_id \
         WHERE a.name = $1 ORDER BY r.seq",
        app,
    )
    .await
}

/// The rows `sql` (with `app` as `$1`) gives in the release database.
pub async fn release_rows<T>(cluster: &Cluster, sql: &str, app: &str) -> Vec<T>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::any::AnyRow> + Send + Unpin,
{
    let db = slipway_storage::connect(&cluster.release_db, &Default::default())
        .await
        .expect("connect to the release database");
    let rows = sqlx::query_as(sql)
        .bind(app)
        .fetch_all(&db.pool)
        .await
        .unwrap_or_else(|e| panic!("read the release database ({sql}): {e}"));
    db.pool.close().await;
    rows
}

/// Every acknowledged variable of `tally` is in `app`'s ledger exactly once,
/// as the release that acknowledged it; no `env add:W…` release exists that
/// was not acknowledged unless `unacked_ok` (a write whose answer was lost
/// for good may have applied once); the release each change made carries
/// its variable; and, unless the workload rolled back (a rollback forks an
/// older release's env, so later releases rightly lack what came between),
/// the newest release carries every acknowledged variable. Returns the
/// ledger.
pub async fn check_env_writes(
    cluster: &Cluster,
    app: &str,
    tally: &Tally,
    unacked_ok: bool,
    rolled_back: bool,
) -> Vec<(String, String)> {
    let rows = ledger(cluster, app).await;
    let acked = tally.acked.lock().expect("tally lock").clone();
    for (var, release) in &acked {
        let made: Vec<&String> = rows
            .iter()
            .filter(|(_, d)| d == &format!("env add:{var}"))
            .map(|(id, _)| id)
            .collect();
        assert_eq!(
            made,
            [release],
            "{var} (acknowledged as {release}) is in the ledger {} times",
            made.len()
        );
    }
    let mut seen = std::collections::HashSet::new();
    for (id, description) in &rows {
        if let Some(var) = description.strip_prefix("env add:W") {
            let var = format!("W{var}");
            assert!(
                seen.insert(var.clone()),
                "{var} applied twice (again as {id})"
            );
            assert!(
                unacked_ok || acked.contains_key(&var),
                "{var} was applied ({id}) but never acknowledged"
            );
        }
    }
    let gateways = [cluster.addr("gateway-a"), cluster.addr("gateway-b")];
    let (answer, _) = send_keyed(
        gateways,
        1,
        "GET",
        &format!("/apps/{app}/releases?limit=1"),
        "",
        None,
    )
    .await;
    let (status, newest) = answer.expect("list releases");
    assert_eq!(status, 200, "{newest}");
    for (var, release) in &acked {
        let (answer, _) = send_keyed(
            gateways,
            0,
            "GET",
            &format!("/apps/{app}/releases/{release}"),
            "",
            None,
        )
        .await;
        let (status, made) = answer.expect("release info");
        assert_eq!(status, 200, "{made}");
        assert!(
            made.contains(&format!("{var}=")),
            "{var} missing in {release}, the release its change made: {made}"
        );
        assert!(
            rolled_back || newest.contains(&format!("{var}=")),
            "{var} missing in the newest release: {newest}"
        );
    }
    rows
}

/// The `p`th percentile (0-100) of `latencies`.
pub fn percentile(latencies: &[Duration], p: f64) -> Duration {
    if latencies.is_empty() {
        return Duration::ZERO;
    }
    let mut sorted = latencies.to_vec();
    sorted.sort();
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}
