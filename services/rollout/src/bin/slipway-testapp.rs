//! `slipway-testapp`: the app the rollout tests deploy. It serves HTTP on
//! `$PORT` (every path answers `200` with the release id) and behaves as
//! `TESTAPP_MODE` says:
//! - `healthy` (default): serves at once (after `TESTAPP_DELAY_MS`, if set);
//! - `exit`: prints a line and exits with status 1 at start;
//! - `never-healthy`: runs but never listens.
//!
//! On SIGTERM it stops accepting, finishes the requests in flight and exits 0,
//! as a well-behaved app does.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{SignalKind, signal};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let mode = std::env::var("TESTAPP_MODE").unwrap_or_else(|_| "healthy".into());
    let release = std::env::var("SLIPWAY_RELEASE").unwrap_or_default();
    let mut term = signal(SignalKind::terminate())?;
    println!("testapp {release} starting in mode {mode}");
    match mode.as_str() {
        "exit" => {
            eprintln!("boom: cannot start (release {release})");
            std::process::exit(1);
        }
        "never-healthy" => {
            term.recv().await;
            return Ok(());
        }
        _ => {}
    }
    if let Some(delay) = std::env::var("TESTAPP_DELAY_MS")
        .ok()
        .and_then(|d| d.parse().ok())
    {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| std::io::Error::other("PORT is not set"))?;
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    println!("testapp {release} listening on {port}");
    let in_flight = Arc::new(AtomicUsize::new(0));
    let body: Arc<str> = format!("release={release}\n").into();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                in_flight.fetch_add(1, Ordering::AcqRel);
                let (in_flight, body) = (in_flight.clone(), body.clone());
                tokio::spawn(async move {
                    let _ = serve(stream, &body).await;
                    in_flight.fetch_sub(1, Ordering::AcqRel);
                });
            }
            _ = term.recv() => break,
        }
    }
    drop(listener);
    for _ in 0..500 {
        if in_flight.load(Ordering::Acquire) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!("testapp {release} stopped");
    Ok(())
}

async fn serve(mut stream: TcpStream, body: &str) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}
