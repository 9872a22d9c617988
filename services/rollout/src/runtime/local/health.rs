//! HTTP health checks: one `GET <path>` on the process's own port, written
//! by hand over a TCP socket (a status line is all we need, and it keeps an
//! HTTP client out of the dependency tree). 2xx and 3xx are healthy, as for
//! a Kubernetes readiness probe.

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Checks `GET path` on 127.0.0.1:`port` within `timeout`; the error says why it failed.
pub(super) async fn probe(port: u16, path: &str, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, attempt(port, path)).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "timed out after {}",
            humantime::format_duration(timeout)
        )),
    }
}

async fn attempt(port: u16, path: &str) -> Result<(), String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(io_reason)?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: slipway-health\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(io_reason)?;
    let mut head = Vec::with_capacity(64);
    let mut buf = [0u8; 256];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 1024 {
        let n = stream.read(&mut buf).await.map_err(io_reason)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let line = line.lines().next().unwrap_or_default();
    let code = line
        .strip_prefix("HTTP/")
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|code| code.parse::<u16>().ok());
    match code {
        Some(code) if (200..400).contains(&code) => Ok(()),
        Some(code) => Err(format!("status {code}")),
        None if head.is_empty() => Err("connection closed without a response".to_owned()),
        None => Err("not an HTTP response".to_owned()),
    }
}

fn io_reason(e: std::io::Error) -> String {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::ConnectionRefused => "connection refused".to_owned(),
        ErrorKind::ConnectionReset => "connection reset".to_owned(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn serve_once(response: &'static str) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            s.write_all(response.as_bytes()).await.unwrap();
        });
        port
    }

    #[tokio::test]
    async fn status_decides_health() {
        let ok = serve_once("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
        assert_eq!(probe(ok, "/", Duration::from_secs(2)).await, Ok(()));
        let bad = serve_once("HTTP/1.1 503 Service Unavailable\r\n\r\n").await;
        assert_eq!(
            probe(bad, "/", Duration::from_secs(2)).await,
            Err("status 503".into())
        );
        let closed = crate::runtime::local::process::free_port().unwrap();
        assert_eq!(
            probe(closed, "/", Duration::from_secs(2)).await,
            Err("connection refused".into())
        );
    }
}
