//! The conformance suite every [`EventBus`] implementation runs: the
//! in-process bus in its unit tests, the Redis Streams bus against a real
//! server. Each check uses its own app and rollout names, so a shared
//! backend (one Redis) can run them side by side.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio_stream::StreamExt as _;

use crate::{Error, Event, EventBus, EventId, EventStream, NewEvent, Topic};

/// How long a check waits for an event that must arrive.
const WAIT: Duration = Duration::from_secs(5);

fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let t = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default();
    format!("{prefix}-{t:x}-{n}")
}

async fn next(stream: &mut EventStream) -> Event {
    match tokio::time::timeout(WAIT, stream.next()).await {
        Ok(Some(Ok(event))) => event,
        Ok(Some(Err(e))) => panic!("stream yielded an error: {e}"),
        Ok(None) => panic!("stream ended"),
        Err(_) => panic!("no event within {WAIT:?}"),
    }
}

async fn nothing_more(stream: &mut EventStream) {
    if let Ok(item) = tokio::time::timeout(Duration::from_millis(200), stream.next()).await {
        panic!("expected no further event, got {item:?}");
    }
}

/// Runs every check of the suite against `bus`.
pub async fn conformance<B: EventBus + ?Sized>(bus: &B) {
    ids_increase(bus).await;
    app_topic_replays_then_follows(bus).await;
    rollout_topic_sees_only_its_rollout(bus).await;
    resume_after_an_id_skips_what_was_seen(bus).await;
    publishing_while_subscribing_loses_nothing(bus).await;
    backlog_is_counted(bus).await;
}

/// Ids grow strictly with every publish.
pub async fn ids_increase<B: EventBus + ?Sized>(bus: &B) {
    let app = unique("ids");
    let mut last = EventId::default();
    for i in 0..50 {
        let id = bus
            .publish(NewEvent::now(&app, "system/test", format!("e{i}")))
            .await
            .unwrap();
        assert!(id > last, "id {id} after {last}");
        last = id;
    }
}

/// An app subscriber gets the app's past events in order, then live ones,
/// and none of other apps.
pub async fn app_topic_replays_then_follows<B: EventBus + ?Sized>(bus: &B) {
    let app = unique("app");
    let other = unique("other");
    bus.publish(NewEvent::now(&app, "system/local/web", "one"))
        .await
        .unwrap();
    bus.publish(NewEvent::now(&other, "system/local/web", "elsewhere"))
        .await
        .unwrap();
    bus.publish(NewEvent::now(&app, "system/local/web", "two"))
        .await
        .unwrap();
    let mut stream = bus.subscribe(Topic::App(app.clone()), None).await.unwrap();
    assert_eq!(next(&mut stream).await.message, "one");
    let two = next(&mut stream).await;
    assert_eq!(
        (two.app.as_str(), two.source.as_str(), two.message.as_str()),
        (app.as_str(), "system/local/web", "two")
    );
    bus.publish(NewEvent::now(&other, "system/local/web", "not mine"))
        .await
        .unwrap();
    let id = bus
        .publish(NewEvent::now(&app, "system/local/web", "three"))
        .await
        .unwrap();
    let three = next(&mut stream).await;
    assert_eq!((three.id, three.message.as_str()), (id, "three"));
    nothing_more(&mut stream).await;
}

/// A rollout subscriber sees its rollout's events and nothing else of the app.
pub async fn rollout_topic_sees_only_its_rollout<B: EventBus + ?Sized>(bus: &B) {
    let app = unique("ro");
    let rollout = unique("P");
    bus.publish(NewEvent::now(&app, "service/web/web-1", "a log line"))
        .await
        .unwrap();
    bus.publish(NewEvent::now(&app, "system/local/web", "before").in_rollout(&rollout))
        .await
        .unwrap();
    let mut stream = bus
        .subscribe(Topic::Rollout(rollout.clone()), None)
        .await
        .unwrap();
    assert_eq!(next(&mut stream).await.message, "before");
    bus.publish(NewEvent::now(&app, "system/local/web", "other").in_rollout(unique("P")))
        .await
        .unwrap();
    bus.publish(NewEvent::now(&app, "system/local/web", "after").in_rollout(&rollout))
        .await
        .unwrap();
    let after = next(&mut stream).await;
    assert_eq!(after.message, "after");
    assert_eq!(after.rollout.as_deref(), Some(rollout.as_str()));
    nothing_more(&mut stream).await;
}

/// Subscribing after an id yields exactly the events after it.
pub async fn resume_after_an_id_skips_what_was_seen<B: EventBus + ?Sized>(bus: &B) {
    let app = unique("resume");
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            bus.publish(NewEvent::now(&app, "system/test", format!("e{i}")))
                .await
                .unwrap(),
        );
    }
    let mut stream = bus
        .subscribe(Topic::App(app.clone()), Some(ids[2]))
        .await
        .unwrap();
    assert_eq!(next(&mut stream).await.message, "e3");
    assert_eq!(next(&mut stream).await.message, "e4");
    nothing_more(&mut stream).await;
    let mut at_end = bus
        .subscribe(Topic::App(app.clone()), Some(ids[4]))
        .await
        .unwrap();
    nothing_more(&mut at_end).await;
    bus.publish(NewEvent::now(&app, "system/test", "e5"))
        .await
        .unwrap();
    assert_eq!(next(&mut at_end).await.message, "e5");
}

/// Events published concurrently with a subscription arrive exactly once,
/// in order.
pub async fn publishing_while_subscribing_loses_nothing<B: EventBus + ?Sized>(bus: &B) {
    let app = unique("race");
    let total = 100;
    let publish = async {
        for i in 0..total {
            bus.publish(NewEvent::now(&app, "system/test", i.to_string()))
                .await
                .unwrap();
            if i % 20 == 0 {
                tokio::task::yield_now().await;
            }
        }
    };
    let subscribe = async {
        tokio::task::yield_now().await;
        bus.subscribe(Topic::App(app.clone()), None).await.unwrap()
    };
    let ((), mut stream) = tokio::join!(publish, subscribe);
    for i in 0..total {
        assert_eq!(next(&mut stream).await.message, i.to_string());
    }
    nothing_more(&mut stream).await;
}

/// A reader resuming from an id older than the retained history is told it
/// missed events, then gets what is retained. `history` is the bus's
/// retention in events.
pub async fn trimmed_history_reports_a_gap<B: EventBus + ?Sized>(bus: &B, history: usize) {
    let app = unique("gap");
    let first = bus
        .publish(NewEvent::now(&app, "system/test", "first"))
        .await
        .unwrap();
    for i in 0..history + 2 {
        bus.publish(NewEvent::now(&app, "system/test", format!("e{i}")))
            .await
            .unwrap();
    }
    let mut stream = bus.subscribe(Topic::App(app), Some(first)).await.unwrap();
    match tokio::time::timeout(WAIT, stream.next()).await {
        Ok(Some(Err(Error::Lagged { .. }))) => {}
        other => panic!("expected a lag report, got {other:?}"),
    }
    assert_eq!(next(&mut stream).await.message, format!("e{}", 2));
}

/// A subscription says how many of its first items are backlog (the
/// topic's retained events after `after`); everything later is live.
pub async fn backlog_is_counted<B: EventBus + ?Sized>(bus: &B) {
    let app = unique("backlog");
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            bus.publish(NewEvent::now(&app, "system/test", format!("e{i}")))
                .await
                .unwrap(),
        );
    }
    bus.publish(NewEvent::now(unique("other"), "system/test", "elsewhere"))
        .await
        .unwrap();
    let sub = bus
        .subscribe_with_backlog(Topic::App(app.clone()), None)
        .await
        .unwrap();
    assert_eq!(sub.backlog, 3);
    let mut stream = sub.events;
    for i in 0..3 {
        assert_eq!(next(&mut stream).await.message, format!("e{i}"));
    }
    bus.publish(NewEvent::now(&app, "system/test", "live"))
        .await
        .unwrap();
    assert_eq!(next(&mut stream).await.message, "live");
    let resumed = bus
        .subscribe_with_backlog(Topic::App(app.clone()), Some(ids[1]))
        .await
        .unwrap();
    assert_eq!(resumed.backlog, 2, "e2 and live after e1");
    let empty = bus
        .subscribe_with_backlog(Topic::Rollout(unique("P")), None)
        .await
        .unwrap();
    assert_eq!(empty.backlog, 0);
}

/// The Redis server every development machine and CI run has (`scripts/test`
/// starts it when it is down); tests share it under key prefixes of their own.
pub const SHARED_REDIS: &str = "redis://127.0.0.1:6379";

/// Fails the test loudly when the shared Redis is not running.
/// (A plain loopback connect: it answers at once either way.)
pub async fn require_shared_redis() {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 6379));
    if let Err(e) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
        panic!("this test needs Redis on 127.0.0.1:6379 (scripts/test starts it): {e}");
    }
}

/// A `redis-server` of the test's own on a unix socket, persisting nothing
/// (like the development machines' Redis): a test can kill and restart it
/// without disturbing the shared server other tests use. Fails the test
/// loudly when `redis-server` is missing or does not come up.
pub struct PrivateRedis {
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl PrivateRedis {
    /// Starts one in a fresh directory.
    pub async fn start() -> Self {
        let mut redis = Self {
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        redis.restart().await;
        redis
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    /// `redis+unix://…` of its socket.
    pub fn url(&self) -> String {
        format!("redis+unix://{}", self.socket().display())
    }

    /// Starts it again on the same socket (empty: it persists nothing).
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let _ = std::fs::remove_file(self.socket());
        let child = Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(self.socket())
            .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test installs it)");
        self.child = Some(child);
        let client = redis::Client::open(self.url()).unwrap();
        let started = Instant::now();
        loop {
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .is_ok()
            {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "private redis-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILLs it (and waits for it); a no-op when it is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}
