//! The rack URL: `http://user:password@host:port/prefix`, as `RACK_URL`
//! carries it. Credentials become HTTP Basic auth in their percent-escaped
//! form (what the `convox` CLI sends); everything shown to people has the
//! password removed.

use base64::Engine as _;

use crate::Error;

/// A parsed, usable rack URL.
#[derive(Clone, PartialEq, Eq)]
pub struct RackUrl {
    /// The URL without userinfo, query or fragment, path without a trailing `/`.
    base: url::Url,
    /// `user[:password]`, still percent-escaped.
    userinfo: Option<String>,
}

impl RackUrl {
    /// Parses `scheme://[user:password@]host[:port][/prefix]`, `http` or
    /// `https`.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let text = text.trim();
        let invalid = |reason: &str| Error::RackUrl {
            url: redact(text),
            reason: reason.to_owned(),
        };
        let mut url = url::Url::parse(text)
            .map_err(|e| invalid(&format!("{e} (expected http://convox:PASSWORD@HOST:PORT)")))?;
        match url.scheme() {
            "http" | "https" => {}
            other => {
                return Err(invalid(&format!(
                    "unsupported scheme {other:?}; use https:// or http://"
                )));
            }
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(invalid("no host"));
        }
        let userinfo = match (url.username(), url.password()) {
            ("", None) => None,
            (user, None) => Some(user.to_owned()),
            (user, Some(password)) => Some(format!("{user}:{password}")),
        };
        // Infallible for http URLs with a host.
        let _ = url.set_username("");
        let _ = url.set_password(None);
        url.set_query(None);
        url.set_fragment(None);
        let path = url.path().trim_end_matches('/').to_owned();
        url.set_path(&path);
        Ok(Self {
            base: url,
            userinfo,
        })
    }

    /// Parses one rack URL or several, comma-separated (a rack's gateways:
    /// `http://convox:PW@gw-a:5443,http://convox:PW@gw-b:5443`). A list is
    /// split only at a comma followed by `http://` or `https://`, so a comma
    /// inside a password needs no escaping.
    pub fn parse_list(text: &str) -> Result<Vec<Self>, Error> {
        let mut starts = vec![0];
        for (i, _) in text.match_indices(',') {
            let rest = text[i + 1..].trim_start().to_ascii_lowercase();
            if rest.starts_with("http://") || rest.starts_with("https://") {
                starts.push(i + 1);
            }
        }
        starts.push(text.len() + 1);
        starts
            .windows(2)
            .map(|w| &text[w[0]..w[1] - 1])
            .filter(|part| !part.trim().is_empty())
            .map(Self::parse)
            .collect::<Result<Vec<_>, _>>()
            .and_then(|racks| {
                if racks.is_empty() {
                    Err(Error::RackUrl {
                        url: String::new(),
                        reason: "empty (expected http://convox:PASSWORD@HOST:PORT)".to_owned(),
                    })
                } else {
                    Ok(racks)
                }
            })
    }

    /// Whether the rack is `https://` (and its streams `wss://`).
    pub fn is_https(&self) -> bool {
        self.base.scheme() == "https"
    }

    /// The name the rack's certificate must be valid for.
    pub(crate) fn server_name(&self) -> Option<rustls_pki_types::ServerName<'static>> {
        match self.base.host()? {
            url::Host::Domain(name) => rustls_pki_types::ServerName::try_from(name.to_owned()).ok(),
            url::Host::Ipv4(ip) => Some(std::net::IpAddr::V4(ip).into()),
            url::Host::Ipv6(ip) => Some(std::net::IpAddr::V6(ip).into()),
        }
    }

    /// `host:port`, for connecting.
    pub fn authority(&self) -> String {
        let host = self.base.host_str().unwrap_or_default();
        let port = self.base.port_or_known_default().unwrap_or(443);
        format!("{host}:{port}")
    }

    /// The `Authorization` header value, when the URL has credentials.
    pub fn authorization(&self) -> Option<String> {
        self.userinfo.as_ref().map(|userinfo| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(userinfo)
            )
        })
    }

    /// The URL of a route: the prefix, then each segment percent-escaped.
    pub(crate) fn route(&self, segments: &[&str], query: &[(&str, String)]) -> url::Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        if !query.is_empty() {
            url.query_pairs_mut()
                .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        url
    }

    /// The websocket URL of a route (`ws://` for an `http` rack, `wss://`
    /// for `https`).
    pub(crate) fn socket(&self, segments: &[&str]) -> String {
        let url = self.route(segments, &[]);
        format!(
            "ws{}",
            url.as_str().strip_prefix("http").unwrap_or(url.as_str())
        )
    }

    /// The origin (`http://host:port`) sent on websocket handshakes.
    pub(crate) fn origin(&self) -> String {
        self.base.origin().ascii_serialization()
    }
}

/// Shows the rack without its credentials.
impl std::fmt::Display for RackUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.base.as_str().trim_end_matches('/'))
    }
}

/// Debug output never contains the password either.
impl std::fmt::Debug for RackUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RackUrl({self})")
    }
}

/// `text` with anything between `://` and `@` replaced, for error messages.
fn redact(text: &str) -> String {
    let Some(at) = text.rfind('@') else {
        return text.to_owned();
    };
    let scheme = text
        .find("://")
        .filter(|s| *s < at)
        .map_or("", |s| &text[..s + 3]);
    format!("{scheme}***@{}", &text[at + 1..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_names_each_gateway_and_keeps_commas_in_passwords() {
        let racks =
            RackUrl::parse_list("http://convox:a,b@10.0.0.1:5443, https://convox:x@gw-b:443/p")
                .unwrap();
        assert_eq!(racks.len(), 2);
        assert_eq!(racks[0].to_string(), "http://10.0.0.1:5443");
        assert_eq!(
            racks[0].authorization(),
            RackUrl::parse("http://convox:a,b@10.0.0.1:5443")
                .unwrap()
                .authorization()
        );
        assert_eq!(racks[1].to_string(), "https://gw-b/p");
        assert_eq!(
            RackUrl::parse_list("http://convox:pw@h:1").unwrap().len(),
            1
        );
        assert!(RackUrl::parse_list(" ").is_err());
        assert!(RackUrl::parse_list("http://h:1,ftp://x").is_err());
    }

    #[test]
    fn credentials_stay_percent_escaped_and_out_of_display() {
        let rack = RackUrl::parse("http://convox:p%40ss@127.0.0.1:5443/prefix/").unwrap();
        assert_eq!(rack.to_string(), "http://127.0.0.1:5443/prefix");
        assert_eq!(format!("{rack:?}"), "RackUrl(http://127.0.0.1:5443/prefix)");
        let expected = base64::engine::general_purpose::STANDARD.encode("convox:p%40ss");
        assert_eq!(rack.authorization().unwrap(), format!("Basic {expected}"));
        assert_eq!(rack.authority(), "127.0.0.1:5443");
        assert_eq!(
            rack.route(&["apps", "my app"], &[]).as_str(),
            "http://127.0.0.1:5443/prefix/apps/my%20app"
        );
        assert_eq!(
            rack.socket(&["apps", "a", "logs"]),
            "ws://127.0.0.1:5443/prefix/apps/a/logs"
        );
        assert_eq!(rack.origin(), "http://127.0.0.1:5443");
    }

    #[test]
    fn plain_urls_have_no_auth_and_default_ports() {
        let rack = RackUrl::parse("http://localhost").unwrap();
        assert_eq!(rack.authorization(), None);
        assert_eq!(rack.authority(), "localhost:80");
        let q = rack.route(&["apps", "a", "releases"], &[("limit", "3".into())]);
        assert_eq!(q.as_str(), "http://localhost/apps/a/releases?limit=3");
    }

    #[test]
    fn https_racks_use_wss_and_port_443() {
        let rack = RackUrl::parse("https://convox:pw@rack.example/").unwrap();
        assert!(rack.is_https());
        assert_eq!(rack.authority(), "rack.example:443");
        assert_eq!(
            rack.socket(&["apps", "a", "logs"]),
            "wss://rack.example/apps/a/logs"
        );
        assert!(rack.server_name().is_some());
        let ip = RackUrl::parse("https://[::1]:5443").unwrap();
        assert_eq!(ip.authority(), "[::1]:5443");
        assert!(matches!(
            ip.server_name(),
            Some(rustls_pki_types::ServerName::IpAddress(_))
        ));
    }

    #[test]
    fn bad_urls_say_why_without_the_password() {
        let err = RackUrl::parse("ftp://convox:secret@host")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unsupported scheme"), "{err}");
        assert!(!err.contains("secret"), "{err}");
        let err = RackUrl::parse("convox:secret@host:5443")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("secret"), "{err}");
    }
}
