//! PostgreSQL unreachable (issue 17): the release service's pool reaches
//! PostgreSQL through a TCP relay the test cuts (every connection dropped,
//! new ones refused) and restores. Stopping the shared PostgreSQL itself is
//! not possible on a machine other tests use. A call during a short outage
//! waits and succeeds once the database answers; one outliving the pool's
//! wait fails with UNAVAILABLE "database unavailable, retrying"; the same
//! replica serves again afterwards without a restart, and every
//! acknowledged write is there once.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use slipway_api::release::v1 as pb;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::helpers::{Backend, MANIFEST, TestApp};

/// A relay to PostgreSQL that can be cut (every connection dropped, new
/// ones answered as by a PostgreSQL starting up, counted) and restored.
struct Relay {
    addr: SocketAddr,
    upstream: String,
    task: Mutex<Option<JoinHandle<()>>>,
    /// Connections closed unanswered while cut.
    refused: Arc<AtomicUsize>,
}

impl Relay {
    async fn start(upstream: String) -> Arc<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay = Arc::new(Self {
            addr: listener.local_addr().unwrap(),
            upstream,
            task: Mutex::new(None),
            refused: Arc::default(),
        });
        relay.serve(listener, true);
        relay
    }

    fn serve(&self, listener: TcpListener, forward: bool) {
        let upstream = self.upstream.clone();
        let refused = self.refused.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !forward {
                    refused.fetch_add(1, Ordering::SeqCst);
                    conns.spawn(async move {
                        let _ = starting_up(&mut inbound).await;
                    });
                    continue;
                }
                let upstream = upstream.clone();
                conns.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        *self.task.lock().unwrap() = Some(task);
    }

    async fn rebind(&self, forward: bool) {
        let task = self.task.lock().unwrap().take().expect("relay running");
        task.abort();
        let _ = task.await;
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener, forward);
    }

    /// PostgreSQL gone.
    async fn cut(&self) {
        self.rebind(false).await;
    }

    /// PostgreSQL back.
    async fn restore(&self) {
        self.rebind(true).await;
    }
}

/// Answers a connection as a PostgreSQL that is starting up does: the
/// startup message (after refusing TLS) gets FATAL 57P03, which drivers
/// retry.
async fn starting_up(stream: &mut TcpStream) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    loop {
        let len = stream.read_u32().await? as usize;
        let mut body = vec![0; len.saturating_sub(4)];
        stream.read_exact(&mut body).await?;
        // SSLRequest and GSSENCRequest: no.
        if body.len() == 4
            && matches!(
                u32::from_be_bytes(body[..4].try_into().unwrap()),
                80877103 | 80877104
            )
        {
            stream.write_all(b"N").await?;
            continue;
        }
        break;
    }
    let mut fields = Vec::new();
    for (tag, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', "57P03"),
        (b'M', "the database system is starting up"),
    ] {
        fields.push(tag);
        fields.extend_from_slice(value.as_bytes());
        fields.push(0);
    }
    fields.push(0);
    let mut message = vec![b'E'];
    message.extend_from_slice(&((fields.len() + 4) as u32).to_be_bytes());
    message.extend_from_slice(&fields);
    stream.write_all(&message).await?;
    stream.shutdown().await
}

/// `url` with its `host:port` replaced by `addr`.
fn through(url: &str, addr: SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let (userinfo, rest) = rest.rsplit_once('@').map_or(("", rest), |(u, r)| (u, r));
    let path = rest.find('/').map_or("", |i| &rest[i..]);
    let at = if userinfo.is_empty() { "" } else { "@" };
    format!("{scheme}://{userinfo}{at}{addr}{path}")
}

/// The host:port PostgreSQL for tests listens on.
fn postgres_addr() -> String {
    let url = std::env::var("SLIPWAY_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let rest = url.split_once("://").unwrap().1;
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    rest.split('/').next().unwrap().to_owned()
}

fn change(app: &str, key: &str) -> pb::ChangeEnvRequest {
    pb::ChangeEnvRequest {
        app: app.into(),
        set: [(key.to_owned(), "1".to_owned())].into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_unreachable_then_back() {
    let relay = Relay::start(postgres_addr()).await;
    let addr = relay.addr;
    let t = TestApp::spawn_with(Backend::Postgres, |config| {
        let url = config
            .store
            .database_url
            .as_ref()
            .unwrap()
            .expose()
            .to_owned();
        config.store.database_url = Some(through(&url, addr).into());
    })
    .await;
    t.create_app("myapp").await;
    t.build_release("myapp", MANIFEST).await;
    let mut client = t.client.clone();
    client.change_env(change("myapp", "BEFORE")).await.unwrap();

    // A short outage: the call waits for the database and succeeds.
    relay.cut().await;
    let waiting = tokio::spawn({
        let mut client = client.clone();
        async move { client.change_env(change("myapp", "DURING")).await }
    });
    // The pool tries to reconnect while the call waits.
    let deadline = Instant::now() + Duration::from_secs(10);
    while relay.refused.load(Ordering::SeqCst) < 2 {
        assert!(
            Instant::now() < deadline,
            "the pool never tried to reconnect"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        !waiting.is_finished(),
        "answered with PostgreSQL unreachable"
    );
    relay.restore().await;
    let during = waiting
        .await
        .unwrap()
        .expect("the call waited out a short outage");

    // A long one: the call fails within its deadline, with the clear error.
    relay.cut().await;
    let started = Instant::now();
    let status = client
        .change_env(change("myapp", "LOST"))
        .await
        .expect_err("no database, no change");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("database unavailable, retrying"),
        "{status:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "failed past the deadline"
    );

    // Back: the same replica serves again, no restart.
    relay.restore().await;
    let after = client
        .change_env(change("myapp", "AFTER"))
        .await
        .expect("the pool recovered")
        .into_inner()
        .release
        .unwrap();
    for key in ["BEFORE", "DURING", "AFTER"] {
        assert!(
            after.env_vars.contains_key(key),
            "{key} lost: {:?}",
            after.env_vars.keys()
        );
    }
    assert!(
        !after.env_vars.contains_key("LOST"),
        "an unacknowledged write applied"
    );
    assert_eq!(
        during.into_inner().release.unwrap().description,
        "env add:DURING"
    );
    let descriptions: Vec<String> = t
        .releases("myapp", 100)
        .await
        .into_iter()
        .map(|r| r.description)
        .collect();
    for key in ["BEFORE", "DURING", "AFTER"] {
        let n = descriptions
            .iter()
            .filter(|d| **d == format!("env add:{key}"))
            .count();
        assert_eq!(n, 1, "{key} applied {n} times: {descriptions:?}");
    }
}
