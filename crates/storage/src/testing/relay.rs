//! A relay between a service and PostgreSQL that a test cuts (every
//! connection dropped, new ones answered in turn as by a PostgreSQL starting
//! up and by one going down: hung up halfway through the handshake) and
//! restores: PostgreSQL unreachable, without stopping the machine's
//! PostgreSQL, which other tests use. Point a service's `--database-url`
//! at [`through`]`(url, relay.addr)`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A relay to PostgreSQL that can be cut (every connection dropped, new
/// ones answered in turn with "starting up" and with a hang-up mid
/// handshake, counted) and restored.
pub struct Relay {
    /// Where the relay listens: the address services connect to.
    pub addr: SocketAddr,
    upstream: String,
    task: Mutex<Option<JoinHandle<()>>>,
    /// Connections closed unanswered while cut (a pool trying to reconnect).
    pub refused: Arc<AtomicUsize>,
}

impl Relay {
    /// A relay to `upstream` (`host:port`), forwarding.
    pub async fn start(upstream: String) -> Arc<Self> {
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
                    // Both answers of a server that is not there: sqlx's
                    // pool retries the first by itself, not the second.
                    let nth = refused.fetch_add(1, Ordering::SeqCst);
                    conns.spawn(async move {
                        if nth.is_multiple_of(2) {
                            let _ = starting_up(&mut inbound).await;
                        } else {
                            let _ = hang_up(inbound).await;
                        }
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
    pub async fn cut(&self) {
        self.rebind(false).await;
    }

    /// PostgreSQL back.
    pub async fn restore(&self) {
        self.rebind(true).await;
    }

    /// Waits (up to 10 s, else panics) until [`Relay::refused`] reaches
    /// `count`: a pool has tried to reconnect while the relay is cut.
    pub async fn await_refused(&self, count: usize) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.refused.load(Ordering::SeqCst) < count {
            assert!(
                std::time::Instant::now() < deadline,
                "the pool never tried to reconnect ({} of {count} connections refused)",
                self.refused.load(Ordering::SeqCst)
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}

/// Answers a connection as a PostgreSQL that is starting up does: the
/// startup message (after refusing TLS) gets FATAL 57P03, which drivers
/// retry.
async fn starting_up(stream: &mut TcpStream) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt as _;
    loop {
        let body = read_message(stream).await?;
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

/// Answers a connection as a PostgreSQL going down does: reads the first
/// message and closes the connection unanswered.
async fn hang_up(mut stream: TcpStream) -> std::io::Result<()> {
    read_message(&mut stream).await.map(drop)
}

/// Reads one untyped message of a connection's start (a length that counts
/// itself, then the body) and returns its body.
async fn read_message(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt as _;
    let len = stream.read_u32().await? as usize;
    let mut body = vec![0; len.saturating_sub(4)];
    stream.read_exact(&mut body).await?;
    Ok(body)
}

/// `url` with its `host:port` replaced by `addr`.
pub fn through(url: &str, addr: SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let (userinfo, rest) = rest.rsplit_once('@').map_or(("", rest), |(u, r)| (u, r));
    let path = rest.find('/').map_or("", |i| &rest[i..]);
    let at = if userinfo.is_empty() { "" } else { "@" };
    format!("{scheme}://{userinfo}{at}{addr}{path}")
}

/// The host:port PostgreSQL for tests listens on.
pub fn postgres_addr() -> String {
    let url = super::postgres_admin_url();
    let rest = url.split_once("://").unwrap().1;
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    rest.split('/').next().unwrap().to_owned()
}
