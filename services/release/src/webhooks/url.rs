//! Receiver URLs: only `http`/`https`, shown with their secrets replaced
//! (user info and query may carry tokens, as Slack's and many others' do),
//! and, unless `--webhook-allow-private`, only public addresses: a receiver
//! URL must not reach the rack's own network (SSRF). Host names are checked
//! on the addresses they resolve to, at every connection ([`GuardedResolver`],
//! so a name that later resolves to 127.0.0.1 is refused too); address
//! literals are checked before sending. Redirects are never followed.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::Name;

/// Longest URL accepted.
const MAX_URL_BYTES: usize = 2048;

/// A receiver URL, checked.
#[derive(Clone)]
pub struct WebhookUrl {
    url: url::Url,
}

impl std::fmt::Debug for WebhookUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display())
    }
}

impl WebhookUrl {
    /// Parses and checks `text`. Errors never repeat the URL (it may carry
    /// credentials).
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.len() > MAX_URL_BYTES {
            return Err(format!("webhook URL is longer than {MAX_URL_BYTES} bytes"));
        }
        let url = url::Url::parse(text.trim())
            .map_err(|e| format!("webhook URL is not a valid URL: {e}"))?;
        match url.scheme() {
            "http" | "https" => {}
            other => {
                return Err(format!(
                    "webhook URL must be http:// or https://, not {other}://"
                ));
            }
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err("webhook URL has no host".into());
        }
        if url.fragment().is_some() {
            return Err("webhook URL must not have a #fragment".into());
        }
        Ok(Self { url })
    }

    /// The whole URL, secrets included: only for sending and sealing.
    pub fn expose(&self) -> &str {
        self.url.as_str()
    }

    /// The URL with user info and query replaced by `***`: for lists, logs
    /// and errors.
    pub fn display(&self) -> String {
        let mut shown = self.url.clone();
        if !shown.username().is_empty() || shown.password().is_some() {
            let _ = shown.set_username("***");
            let _ = shown.set_password(None);
        }
        if shown.query().is_some() {
            shown.set_query(Some("***"));
        }
        shown.to_string()
    }

    /// The host when it is an address literal.
    pub fn ip_literal(&self) -> Option<IpAddr> {
        match self.url.host()? {
            url::Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
            url::Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
            url::Host::Domain(_) => None,
        }
    }

    /// Refuses an address literal that is not public (unless allowed).
    pub fn check_literal(&self, allow_private: bool) -> Result<(), String> {
        match self.ip_literal() {
            Some(ip) if !allow_private && !is_public(ip) => Err(refusal(ip)),
            _ => Ok(()),
        }
    }
}

/// Why an address is refused.
pub fn refusal(ip: IpAddr) -> String {
    format!(
        "address {ip} is not public (loopback, private, link-local or reserved); \
         the release service delivers there only with --webhook-allow-private"
    )
}

/// Whether `ip` is a public unicast address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return public_v4(v4);
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80 // link-local
                || (first & 0xffc0) == 0xfec0 // site-local (deprecated)
                || v6 == Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0) // NAT64 base
                || (first == 0x2001 && v6.segments()[1] == 0x0db8)) // documentation
        }
    }
}

fn public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local() // 169.254/16, cloud metadata included
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // carrier-grade NAT
        || (a == 192 && b == 0 && ip.octets()[2] == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240) // reserved
}

/// A resolver for hyper's connector that drops addresses that are not
/// public (unless allowed), failing the connection when none is left.
#[derive(Clone, Debug)]
pub struct GuardedResolver {
    /// Deliver to non-public addresses too.
    pub allow_private: bool,
}

/// The resolved addresses of a name.
pub type Addrs = std::vec::IntoIter<SocketAddr>;

impl tower::Service<Name> for GuardedResolver {
    type Response = Addrs;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Addrs, std::io::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            let kept: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|a| allow_private || is_public(a.ip()))
                .collect();
            if kept.is_empty() {
                let shown = found.first().map(|a| a.ip());
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    match shown {
                        Some(ip) => refusal(ip),
                        None => "the name resolved to no address".into(),
                    },
                ));
            }
            Ok(kept.into_iter())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_and_https() {
        for bad in [
            "ftp://h/x",
            "file:///etc/passwd",
            "gopher://h",
            "javascript:alert(1)",
        ] {
            let err = WebhookUrl::parse(bad).unwrap_err();
            assert!(err.contains("http:// or https://"), "{bad}: {err}");
        }
        assert!(
            WebhookUrl::parse("not a url")
                .unwrap_err()
                .contains("not a valid URL")
        );
        assert!(WebhookUrl::parse("https://h/x#frag").is_err());
        WebhookUrl::parse("https://hooks.example.com/x").unwrap();
        WebhookUrl::parse("http://127.0.0.1:8080/x").unwrap();
    }

    #[test]
    fn secrets_are_not_displayed() {
        let url =
            WebhookUrl::parse("https://user:pa55@hooks.example.com/services/T0?token=s3cr3t&x=1")
                .unwrap();
        let shown = url.display();
        assert!(
            !shown.contains("pa55") && !shown.contains("s3cr3t") && !shown.contains("user"),
            "{shown}"
        );
        assert_eq!(shown, "https://***@hooks.example.com/services/T0?***");
        assert!(!format!("{url:?}").contains("s3cr3t"));
        assert_eq!(
            WebhookUrl::parse("https://h.example/p").unwrap().display(),
            "https://h.example/p"
        );
        // A refusal never repeats the URL.
        let err = WebhookUrl::parse("ftp://u:pa55@h/?k=s3cr3t").unwrap_err();
        assert!(!err.contains("pa55") && !err.contains("s3cr3t"), "{err}");
    }

    #[test]
    fn non_public_addresses_are_refused() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
        let url = WebhookUrl::parse("http://169.254.169.254/latest/meta-data").unwrap();
        assert!(
            url.check_literal(false)
                .unwrap_err()
                .contains("--webhook-allow-private")
        );
        url.check_literal(true).unwrap();
        WebhookUrl::parse("http://[::1]:80/")
            .unwrap()
            .check_literal(false)
            .unwrap_err();
    }
}
