use super::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

/// Reads a request's head (the test's requests have no body).
async fn head(stream: &mut tokio::net::TcpStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") && stream.read(&mut byte).await.unwrap_or(0) == 1 {
        buf.push(byte[0]);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

fn key_of(head: &str) -> Option<String> {
    head.lines()
        .find_map(|l| l.strip_prefix("idempotency-key: "))
        .map(str::to_owned)
}

#[tokio::test]
async fn a_write_goes_past_a_dead_gateway_and_a_lost_answer_with_one_key() {
    // Nothing listens here: refused.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    // Reads the request, then closes without an answer.
    let lost = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ok = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (lost_addr, ok_addr) = (lost.local_addr().unwrap(), ok.local_addr().unwrap());
    let lost_task = tokio::spawn(async move {
        let (mut s, _) = lost.accept().await.unwrap();
        head(&mut s).await
    });
    let ok_task = tokio::spawn(async move {
        let mut heads = Vec::new();
        for _ in 0..2 {
            let (mut s, _) = ok.accept().await.unwrap();
            heads.push(head(&mut s).await);
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
                .await
                .unwrap();
        }
        heads
    });
    let client = Client::new(&format!(
        "http://convox:pw@{dead},http://convox:pw@{lost_addr},http://convox:pw@{ok_addr}"
    ))
    .unwrap();
    client
        .call(Method::POST, &["apps", "x", "cancel"], &[], Body::Empty)
        .await
        .expect("the third gateway answers");
    let lost_head = lost_task.await.unwrap();
    // The client stays with the gateway that answered; a read has no key.
    assert_eq!(client.rack().to_string(), format!("http://{ok_addr}"));
    client
        .call(Method::GET, &["apps"], &[], Body::Empty)
        .await
        .unwrap();
    let ok_heads = ok_task.await.unwrap();
    let key = key_of(&lost_head).expect("a write carries a key");
    assert!(key.starts_with("cli-"), "{key}");
    assert_eq!(key_of(&ok_heads[0]).as_deref(), Some(key.as_str()));
    assert_eq!(key_of(&ok_heads[1]), None, "{}", ok_heads[1]);
}

#[tokio::test]
async fn a_refused_write_fails_after_its_rounds_naming_the_rack() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let client = Client::new(&format!("http://convox:pw@{dead}")).unwrap();
    let err = client
        .call(Method::POST, &["apps"], &[], Body::Empty)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err}");
    assert!(err.to_string().contains(&dead.to_string()), "{err}");
}

#[test]
fn durations_print_like_go() {
    assert_eq!(go_duration(Duration::from_secs(0)), "0s");
    assert_eq!(go_duration(Duration::from_secs(5)), "5s");
    assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
    assert_eq!(go_duration(Duration::from_secs(120)), "2m0s");
    assert_eq!(go_duration(Duration::from_secs(600)), "10m0s");
    assert_eq!(go_duration(Duration::from_secs(3600)), "1h0m0s");
    assert_eq!(go_duration(Duration::from_secs(3725)), "1h2m5s");
}
