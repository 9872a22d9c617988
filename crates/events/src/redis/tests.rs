//! The Redis bus against real Redis: the shared server on 127.0.0.1:6379
//! (a unique key prefix per test) for the conformance suite, the replicas
//! and the id guards, and a private `redis-server` on a unix socket of its
//! own for the restarts, so killing it disturbs no other test.

use std::time::{Duration, Instant};

use tokio_stream::StreamExt as _;

use super::*;
use crate::EventStream;
use crate::testing::{PrivateRedis, SHARED_REDIS as SHARED};

/// How long a test waits for what must happen.
const WAIT: Duration = Duration::from_secs(10);

fn unique_prefix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = Utc::now().timestamp_nanos_opt().unwrap_or_default();
    format!(
        "test-events-{}-{t:x}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A raw connection to the shared Redis; panics (the test fails loudly)
/// when it is not running.
async fn shared_redis() -> MultiplexedConnection {
    let client = redis::Client::open(SHARED).unwrap();
    let mut conn = match tokio::time::timeout(
        Duration::from_secs(5),
        client.get_multiplexed_async_connection(),
    )
    .await
    {
        Ok(Ok(conn)) => conn,
        other => {
            panic!("these tests need Redis on 127.0.0.1:6379 (scripts/test starts it): {other:?}")
        }
    };
    let pong: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
    assert_eq!(pong, "PONG");
    conn
}

fn config(url: &str) -> RedisConfig {
    RedisConfig {
        block: Duration::from_millis(200),
        ..RedisConfig::new(url, unique_prefix())
    }
}

async fn shared_bus() -> RedisBus {
    shared_redis().await;
    RedisBus::new(config(SHARED)).unwrap()
}

async fn next(stream: &mut EventStream) -> Result<Event, Error> {
    match tokio::time::timeout(WAIT, stream.next()).await {
        Ok(Some(item)) => item,
        Ok(None) => panic!("stream ended"),
        Err(_) => panic!("nothing within {WAIT:?}"),
    }
}

async fn next_event(stream: &mut EventStream) -> Event {
    next(stream).await.expect("an event, not an error")
}

/// Adds an entry with an explicit id, as another writer (or an earlier
/// Redis) would have.
async fn raw_add(
    conn: &mut MultiplexedConnection,
    key: &str,
    id: EventId,
    app: &str,
    message: &str,
) {
    let _: String = redis::cmd("XADD")
        .arg(key)
        .arg(id.to_string())
        .arg("t")
        .arg(Utc::now().timestamp_nanos_opt().unwrap())
        .arg("a")
        .arg(app)
        .arg("s")
        .arg("system/test")
        .arg("m")
        .arg(message)
        .query_async(conn)
        .await
        .unwrap();
}

fn hour_ahead() -> EventId {
    EventId {
        ms: u64::try_from(Utc::now().timestamp_millis()).unwrap() + 3_600_000,
        seq: 0,
    }
}

#[tokio::test]
async fn passes_the_conformance_suite() {
    crate::testing::conformance(&shared_bus().await).await;
}

#[tokio::test]
async fn resuming_before_trimmed_history_reports_a_gap() {
    shared_redis().await;
    let bus = RedisBus::new(RedisConfig {
        max_len: 3,
        exact_trim: true,
        ..config(SHARED)
    })
    .unwrap();
    crate::testing::trimmed_history_reports_a_gap(&bus, 3).await;
}

#[tokio::test]
async fn streams_are_bounded_and_expire() {
    let mut conn = shared_redis().await;
    let bus = RedisBus::new(RedisConfig {
        max_len: 5,
        exact_trim: true,
        ttl: Duration::from_secs(600),
        ..config(SHARED)
    })
    .unwrap();
    for i in 0..20 {
        bus.publish(NewEvent::now("capped", "system/test", format!("e{i}")).in_rollout("P1"))
            .await
            .unwrap();
    }
    for key in [
        bus.key(&Topic::App("capped".into())),
        bus.key(&Topic::Rollout("P1".into())),
    ] {
        assert!(key.contains(":v1:"), "{key}");
        let len: usize = redis::cmd("XLEN")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(len, 5, "{key}");
        let ttl: i64 = redis::cmd("TTL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!((590..=600).contains(&ttl), "{key} ttl {ttl}");
    }
}

/// A backlog longer than one page is read whole, in order, and counted.
#[tokio::test]
async fn a_long_backlog_is_paged_in_order() {
    let bus = shared_bus().await;
    let total = PAGE * 2 + 7;
    let mut ids = Vec::with_capacity(total);
    for i in 0..total {
        ids.push(
            bus.publish(NewEvent::now("long", "system/test", i.to_string()))
                .await
                .unwrap(),
        );
    }
    let sub = bus
        .subscribe_with_backlog(Topic::App("long".into()), None)
        .await
        .unwrap();
    assert_eq!(sub.backlog, total);
    let mut stream = sub.events;
    for (i, id) in ids.iter().enumerate() {
        let event = next_event(&mut stream).await;
        assert_eq!((event.id, event.message), (*id, i.to_string()));
    }
    let resumed = bus
        .subscribe_with_backlog(Topic::App("long".into()), Some(ids[PAGE]))
        .await
        .unwrap();
    assert_eq!(resumed.backlog, total - PAGE - 1);
}

/// Two replicas (two buses on one Redis): each sees what the other
/// publishes, on app and rollout topics, so any gateway replica can stream
/// any rollout.
#[tokio::test]
async fn two_replicas_see_each_others_events() {
    let a = shared_bus().await;
    let b = RedisBus::new(RedisConfig {
        prefix: a.inner.config.prefix.clone(),
        ..config(SHARED)
    })
    .unwrap();
    let from_a = a
        .publish(NewEvent::now("shared", "system/local/web", "from a").in_rollout("PX"))
        .await
        .unwrap();
    let mut on_b = b
        .subscribe(Topic::Rollout("PX".into()), None)
        .await
        .unwrap();
    let mut on_a = a
        .subscribe(Topic::App("shared".into()), None)
        .await
        .unwrap();
    let seen = next_event(&mut on_b).await;
    assert_eq!((seen.id, seen.message.as_str()), (from_a, "from a"));
    assert_eq!(next_event(&mut on_a).await.id, from_a);
    let from_b = b
        .publish(NewEvent::now("shared", "system/local/web", "from b").in_rollout("PX"))
        .await
        .unwrap();
    assert!(from_b > from_a);
    let seen = next_event(&mut on_a).await;
    assert_eq!((seen.id, seen.message.as_str()), (from_b, "from b"));
    assert_eq!(next_event(&mut on_b).await.message, "from b");
}

/// A Redis that lost a stream whose ids were ahead of its clock: the next
/// publish still goes above every id this bus handed out or delivered.
#[tokio::test]
async fn ids_never_go_below_what_the_bus_saw() {
    let mut conn = shared_redis().await;
    let bus = RedisBus::new(config(SHARED)).unwrap();
    let key = bus.key(&Topic::App("ahead".into()));
    let future = hour_ahead();
    raw_add(&mut conn, &key, future, "ahead", "from the future").await;
    let mut stream = bus
        .subscribe(Topic::App("ahead".into()), None)
        .await
        .unwrap();
    assert_eq!(next_event(&mut stream).await.id, future);
    let _: i64 = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    let id = bus
        .publish(NewEvent::now("ahead", "system/test", "after the loss"))
        .await
        .unwrap();
    assert!(id > future, "{id} must follow {future}");
    let other = bus
        .publish(NewEvent::now("another-app", "system/test", "elsewhere"))
        .await
        .unwrap();
    assert!(other > id, "ids of one bus grow across streams too");
}

/// A reader whose stream was reset below what it saw (no publisher that
/// knew the old ids wrote since): a lag report, then the new stream from its
/// start, rather than waiting for the clock to catch up.
#[tokio::test]
async fn a_reader_of_a_reset_stream_reports_a_lag_and_reads_the_new_stream() {
    let mut conn = shared_redis().await;
    let reader = RedisBus::new(config(SHARED)).unwrap();
    let key = reader.key(&Topic::App("reset".into()));
    raw_add(&mut conn, &key, hour_ahead(), "reset", "old").await;
    let mut stream = reader
        .subscribe(Topic::App("reset".into()), None)
        .await
        .unwrap();
    assert_eq!(next_event(&mut stream).await.message, "old");
    let _: i64 = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    let fresh = RedisBus::new(RedisConfig {
        prefix: reader.inner.config.prefix.clone(),
        ..config(SHARED)
    })
    .unwrap();
    fresh
        .publish(NewEvent::now("reset", "system/test", "new"))
        .await
        .unwrap();
    assert!(matches!(next(&mut stream).await, Err(Error::Lagged { .. })));
    assert_eq!(next_event(&mut stream).await.message, "new");
    fresh
        .publish(NewEvent::now("reset", "system/test", "newer"))
        .await
        .unwrap();
    assert_eq!(next_event(&mut stream).await.message, "newer");
}

/// Publishing while Redis is down fails `Unavailable` at once; what was
/// published before the crash and read is not read again, what is published
/// after the restart is read, by the old readers and by new ones resuming.
#[tokio::test]
async fn readers_go_on_across_a_redis_restart_without_duplicates() {
    let mut server = PrivateRedis::start().await;
    let bus = RedisBus::new(config(&server.url())).unwrap();
    let topic = Topic::App("restart".into());
    let mut stream = bus.subscribe(topic.clone(), None).await.unwrap();
    let mut rollout = bus
        .subscribe(Topic::Rollout("PR".into()), None)
        .await
        .unwrap();
    let mut ids = Vec::new();
    for i in 0..5 {
        let event = NewEvent::now("restart", "system/test", format!("e{i}")).in_rollout("PR");
        ids.push(bus.publish(event).await.unwrap());
    }
    for i in 0..5 {
        assert_eq!(next_event(&mut stream).await.message, format!("e{i}"));
        assert_eq!(next_event(&mut rollout).await.message, format!("e{i}"));
    }

    server.kill();
    let started = Instant::now();
    let down = bus
        .publish(NewEvent::now("restart", "system/test", "lost"))
        .await;
    assert!(matches!(down, Err(Error::Unavailable(_))), "{down:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let sub = bus.subscribe(topic.clone(), None).await;
    assert!(
        matches!(sub, Err(Error::Unavailable(_))),
        "subscribing while down fails"
    );

    server.restart().await;
    for i in 5..10 {
        let event = NewEvent::now("restart", "system/test", format!("e{i}")).in_rollout("PR");
        ids.push(bus.publish(event).await.unwrap());
    }
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids grow across the restart: {ids:?}"
    );
    for reader in [&mut stream, &mut rollout] {
        let mut got = Vec::new();
        while got.len() < 5 {
            match next(reader).await {
                // Redis lost the stream: the reader may say so.
                Err(Error::Lagged { .. }) => {}
                Err(e) => panic!("unexpected error {e}"),
                Ok(event) => got.push((event.id, event.message)),
            }
        }
        let want: Vec<_> = (5..10).map(|i| (ids[i], format!("e{i}"))).collect();
        assert_eq!(got, want);
        if let Ok(item) = tokio::time::timeout(Duration::from_millis(500), reader.next()).await {
            panic!("nothing more expected, got {item:?}");
        }
    }
    let resumed = bus
        .subscribe_with_backlog(topic, Some(ids[4]))
        .await
        .unwrap();
    assert_eq!(resumed.backlog, 5);
}

#[tokio::test]
async fn redis_down_fails_fast_and_never_hangs() {
    // Nothing listens: refused at once.
    let dir = tempfile::tempdir().unwrap();
    let url = format!("redis+unix://{}", dir.path().join("none.sock").display());
    let bus = RedisBus::new(config(&url)).unwrap();
    let started = Instant::now();
    let result = bus.publish(NewEvent::now("down", "system/test", "x")).await;
    assert!(matches!(result, Err(Error::Unavailable(_))), "{result:?}");
    let result = bus.subscribe(Topic::App("down".into()), None).await;
    assert!(matches!(result, Err(Error::Unavailable(_))));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );

    // Something accepts connections but never answers: bounded by the timeout.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let bus = RedisBus::new(RedisConfig {
        timeout: Duration::from_millis(300),
        ..config(&format!("redis://{addr}"))
    })
    .unwrap();
    let started = Instant::now();
    let result = bus.publish(NewEvent::now("down", "system/test", "x")).await;
    assert!(matches!(result, Err(Error::Unavailable(_))), "{result:?}");
    let result = bus.subscribe(Topic::App("down".into()), None).await;
    assert!(matches!(result, Err(Error::Unavailable(_))));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    silent.abort();
}

#[test]
fn settings_are_checked_and_passwords_stay_out_of_debug() {
    assert!(matches!(
        RedisBus::new(RedisConfig::new("http://nope", "p")),
        Err(Error::InvalidConfig(_))
    ));
    assert!(matches!(
        RedisBus::new(RedisConfig::new(SHARED, "a:b")),
        Err(Error::InvalidConfig(_))
    ));
    let bus = RedisBus::new(RedisConfig::new(
        "redis://user:s3cret@127.0.0.1:6379/0",
        "rollout",
    ))
    .unwrap();
    let shown = format!("{bus:?}");
    assert!(
        !shown.contains("s3cret") && shown.contains("127.0.0.1:6379"),
        "{shown}"
    );
    assert_eq!(bus.key(&Topic::App("myapp".into())), "rollout:v1:app:myapp");
    assert_eq!(
        bus.key(&Topic::Rollout("PABC".into())),
        "rollout:v1:rollout:PABC"
    );
}

/// The first publish after a restart nobody noticed (no call while Redis
/// was down) succeeds: the dropped connection is replaced at once.
#[tokio::test]
async fn the_first_publish_after_an_unnoticed_restart_succeeds() {
    let mut server = PrivateRedis::start().await;
    let bus = RedisBus::new(config(&server.url())).unwrap();
    let before = bus
        .publish(NewEvent::now("quiet", "system/test", "before"))
        .await
        .unwrap();
    server.kill();
    server.restart().await;
    let after = bus
        .publish(NewEvent::now("quiet", "system/test", "after"))
        .await
        .expect("a fresh connection on the restarted Redis");
    assert!(after > before);
}
