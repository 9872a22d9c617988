//! A browser's HTTP as far as the handler tests need it: a cookie jar,
//! forms, chosen headers, and server-sent event streams read as they
//! arrive; one HTTP/1.1 request per connection.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// One answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    /// Every value of header `name`.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.all(name).into_iter().next()
    }

    /// The `Location` of a redirect.
    pub fn location(&self) -> &str {
        self.header("location").unwrap_or_default()
    }

    /// The value of the first hidden `csrf` field in the page.
    pub fn csrf(&self) -> String {
        hidden(&self.body, "csrf").unwrap_or_else(|| panic!("no csrf field in {}", self.body))
    }
}

/// The value of the first `<input … name="NAME" value="…">` in `html`.
pub fn hidden(html: &str, name: &str) -> Option<String> {
    let needle = format!("name=\"{name}\" value=\"");
    let at = html.find(&needle)? + needle.len();
    let rest = &html[at..];
    Some(rest[..rest.find('"')?].to_owned())
}

/// A browser: the console's address and its cookie jar.
#[derive(Clone)]
pub struct Browser {
    pub addr: SocketAddr,
    pub cookies: BTreeMap<String, String>,
}

impl Browser {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            cookies: BTreeMap::new(),
        }
    }

    /// The same browser (its cookies) pointed at another address: another
    /// gateway replica of the same rack.
    pub fn at(&self, addr: SocketAddr) -> Self {
        Self {
            addr,
            cookies: self.cookies.clone(),
        }
    }

    fn cookie_header(&self) -> Option<String> {
        (!self.cookies.is_empty()).then(|| {
            self.cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }

    fn keep_cookies(&mut self, answer: &Answer) {
        for set in answer.all("set-cookie") {
            let pair = set.split(';').next().unwrap_or_default();
            let Some((name, value)) = pair.split_once('=') else {
                continue;
            };
            if set.contains("Max-Age=0") {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_owned(), value.to_owned());
            }
        }
    }

    /// GET with the jar's cookies.
    pub async fn get(&mut self, path: &str) -> Answer {
        self.get_with(path, &[]).await
    }

    /// GET with the jar's cookies and extra headers.
    pub async fn get_with(&mut self, path: &str, headers: &[(&str, &str)]) -> Answer {
        let answer = request(self.addr, "GET", path, self.cookie_header(), headers, None).await;
        self.keep_cookies(&answer);
        answer
    }

    /// A same-origin form POST, as a browser sends it from a console page.
    pub async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Answer {
        let origin = format!("http://{}", self.addr);
        self.post_with(
            path,
            fields,
            &[("origin", &origin), ("sec-fetch-site", "same-origin")],
        )
        .await
    }

    /// A form POST with exactly these extra headers.
    pub async fn post_with(
        &mut self,
        path: &str,
        fields: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> Answer {
        let body = form(fields);
        let answer = request(
            self.addr,
            "POST",
            path,
            self.cookie_header(),
            headers,
            Some(body.as_bytes()),
        )
        .await;
        self.keep_cookies(&answer);
        answer
    }

    /// Logs in (as `name`) and returns the session's CSRF token.
    pub async fn login(&mut self, password: &str, name: &str) -> String {
        let page = self.get("/console/login").await;
        assert_eq!(page.status, 200, "{page:?}");
        let answer = self
            .post(
                "/console/login",
                &[
                    ("csrf", &page.csrf()),
                    ("password", password),
                    ("name", name),
                    ("next", "/console/"),
                ],
            )
            .await;
        assert_eq!(answer.status, 303, "{answer:?}");
        self.get("/console/").await.csrf()
    }
}

/// `application/x-www-form-urlencoded` text.
pub fn form(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn encode(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    cookie: Option<String>,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(cookie) = cookie {
        head.push_str(&format!("Cookie: {cookie}\r\n"));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(body) = body {
        head.push_str(&format!(
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.expect("write");
    if let Some(body) = body {
        stream.write_all(body).await.expect("write body");
    }
    stream
}

/// One request, the whole answer.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    cookie: Option<String>,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Answer {
    let mut stream = send(addr, method, path, cookie, headers, body).await;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut raw))
        .await
        .expect("an answer within a minute")
        .expect("read");
    let (head, body) = split_head(&raw).expect("an HTTP answer");
    let body = if head.chunked {
        let mut decoder = Chunks::default();
        decoder.feed(body);
        decoder.out
    } else {
        body.to_vec()
    };
    Answer {
        status: head.status,
        headers: head.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

struct Head {
    status: u16,
    headers: Vec<(String, String)>,
    chunked: bool,
}

fn split_head(raw: &[u8]) -> Option<(Head, &[u8])> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let text = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = text.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    Some((
        Head {
            status,
            headers,
            chunked,
        },
        &raw[end + 4..],
    ))
}

/// An incremental `Transfer-Encoding: chunked` decoder.
#[derive(Default)]
struct Chunks {
    pending: Vec<u8>,
    out: Vec<u8>,
}

impl Chunks {
    fn feed(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
        loop {
            let Some(eol) = self.pending.windows(2).position(|w| w == b"\r\n") else {
                return;
            };
            let size_text = String::from_utf8_lossy(&self.pending[..eol]).into_owned();
            let Ok(size) =
                usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            else {
                return;
            };
            if self.pending.len() < eol + 2 + size + 2 {
                return;
            }
            self.out
                .extend_from_slice(&self.pending[eol + 2..eol + 2 + size]);
            self.pending.drain(..eol + 2 + size + 2);
            if size == 0 {
                return;
            }
        }
    }
}

/// One server-sent event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

/// An open event stream.
pub struct EventStream {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    stream: TcpStream,
    chunks: Chunks,
    parsed: usize,
    ended: bool,
}

impl EventStream {
    /// Opens `path` with the jar's cookies and extra headers.
    pub async fn open(browser: &Browser, path: &str, headers: &[(&str, &str)]) -> Self {
        let mut stream = send(
            browser.addr,
            "GET",
            path,
            browser.cookie_header(),
            headers,
            None,
        )
        .await;
        let mut raw = Vec::new();
        let mut buf = [0u8; 8192];
        let head = loop {
            if let Some((head, rest)) = split_head(&raw) {
                let mut chunks = Chunks::default();
                chunks.feed(rest);
                break (head, chunks);
            }
            let n = stream.read(&mut buf).await.expect("read");
            assert!(n > 0, "the stream closed before its head");
            raw.extend_from_slice(&buf[..n]);
        };
        let (head, chunks) = head;
        Self {
            status: head.status,
            headers: head.headers,
            stream,
            chunks,
            parsed: 0,
            ended: false,
        }
    }

    /// The next event (keep-alive comments skipped); `None` when the
    /// stream ended.
    pub async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(event) = self.take_event() {
                return Some(event);
            }
            if self.ended {
                return None;
            }
            let mut buf = [0u8; 8192];
            let n = tokio::time::timeout(Duration::from_secs(120), self.stream.read(&mut buf))
                .await
                .expect("an event within two minutes")
                .unwrap_or(0);
            if n == 0 {
                self.ended = true;
            } else {
                self.chunks.feed(&buf[..n]);
            }
        }
    }

    fn take_event(&mut self) -> Option<SseEvent> {
        loop {
            let text = &self.chunks.out[self.parsed..];
            let end = text.windows(2).position(|w| w == b"\n\n")?;
            let block = String::from_utf8_lossy(&text[..end]).into_owned();
            self.parsed += end + 2;
            let mut event = SseEvent::default();
            let mut data: Vec<String> = Vec::new();
            for line in block.split('\n') {
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "id" => event.id = Some(value.to_owned()),
                    "event" => event.event = Some(value.to_owned()),
                    "data" => data.push(value.to_owned()),
                    _ => {}
                }
            }
            if data.is_empty() {
                continue;
            }
            event.data = data.join("\n");
            return Some(event);
        }
    }

    /// Every event until the stream ends.
    pub async fn collect(mut self) -> Vec<SseEvent> {
        let mut all = Vec::new();
        while let Some(event) = self.next().await {
            all.push(event);
        }
        all
    }
}
