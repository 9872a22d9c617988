//! Service-to-service authentication: signed service tokens.
//!
//! Every service that holds the shared key (`--service-token-key`,
//! `SLIPWAY_SERVICE_TOKEN_KEY`) signs a short-lived token for each call it
//! makes and sends it as gRPC metadata `authorization: Bearer <token>`;
//! every server holding the key refuses calls without a valid one with
//! UNAUTHENTICATED. The token is `slw1.<issuer>.<expiry>.<mac>`: the calling
//! service's name, the expiry in Unix seconds and an HMAC-SHA256 over both,
//! base64url. One shared secret rather than mTLS certificates, so operators
//! have one value to distribute and rotate (a Kubernetes Secret), and
//! plaintext health probes keep working.
//!
//! Exempt: `grpc.health.v1.Health` (kubelet and load-balancer probes carry no
//! credentials). Server reflection is *not* exempt: it is part of the API
//! surface, so `grpcurl` needs `-H "authorization: Bearer $(…)"` with a
//! token from [`ServiceKey::sign`].

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::{Hmac, Mac as _};
use sha2::Sha256;
use slipway_domain::Secret;

/// The metadata key carrying the token.
pub const AUTHORIZATION: &str = "authorization";

/// Path prefix of the calls that need no token (health probes).
const EXEMPT_PREFIX: &str = "/grpc.health.v1.Health/";

/// Token format version, the first dot-separated field.
const VERSION: &str = "slw1";

/// How long a token minted for a call stays valid.
const TOKEN_TTL: Duration = Duration::from_secs(60);

/// Clock difference tolerated between services.
const CLOCK_SKEW: Duration = Duration::from_secs(30);

/// The shortest key accepted, in bytes.
pub const MIN_KEY_BYTES: usize = 32;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Why a token was refused. The `Display` goes back to the caller in the
/// UNAUTHENTICATED status, so it names the problem and never the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No `authorization` metadata at all.
    #[error(
        "missing service token: this service requires callers to have the same --service-token-key (SLIPWAY_SERVICE_TOKEN_KEY)"
    )]
    Missing,
    /// Not `Bearer slw1.<issuer>.<expiry>.<mac>`.
    #[error("malformed service token: {0}")]
    Malformed(&'static str),
    /// The MAC does not match: signed with another key, or altered.
    #[error("invalid service token signature (signed with a different --service-token-key?)")]
    BadSignature,
    /// Validly signed, but past its expiry (beyond the tolerated clock skew).
    #[error("service token from {issuer} expired {ago}s ago (check the clocks)")]
    Expired {
        /// The service that signed it.
        issuer: String,
        /// Seconds since it expired.
        ago: u64,
    },
}

/// A refused key setting.
#[derive(Debug, thiserror::Error)]
#[error(
    "--service-token-key must be at least {MIN_KEY_BYTES} bytes (e.g. `openssl rand -base64 32`)"
)]
pub struct KeyTooShort;

/// Who made an authenticated call; put into the request's extensions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceIdentity {
    /// The calling service's name (`gateway`, `release`, …).
    pub issuer: String,
}

/// The shared key: signs tokens for outgoing calls and checks incoming ones.
#[derive(Clone)]
pub struct ServiceKey {
    key: Arc<Secret>,
}

impl std::fmt::Debug for ServiceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServiceKey(<redacted>)")
    }
}

impl ServiceKey {
    /// A key from its secret text (at least [`MIN_KEY_BYTES`] bytes).
    pub fn new(secret: &Secret) -> Result<Self, KeyTooShort> {
        if secret.expose().len() < MIN_KEY_BYTES {
            return Err(KeyTooShort);
        }
        Ok(Self {
            key: Arc::new(secret.clone()),
        })
    }

    fn mac(&self, claim: &str) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.key.expose().as_bytes())
            .expect("HMAC takes keys of any length");
        mac.update(claim.as_bytes());
        mac
    }

    /// A token for `issuer` that expires at `expires` (Unix time).
    pub fn sign(&self, issuer: &str, expires: SystemTime) -> String {
        let exp = expires
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let claim = format!("{VERSION}.{issuer}.{exp}");
        let tag = self.mac(&claim).finalize().into_bytes();
        format!("{claim}.{}", B64.encode(tag))
    }

    /// Checks `token` (without the `Bearer ` prefix) at time `now`.
    pub fn verify_at(&self, token: &str, now: SystemTime) -> Result<ServiceIdentity, TokenError> {
        let (claim, tag) = token
            .rsplit_once('.')
            .ok_or(TokenError::Malformed("no signature"))?;
        let mut fields = claim.splitn(3, '.');
        let (Some(version), Some(issuer), Some(exp)) =
            (fields.next(), fields.next(), fields.next())
        else {
            return Err(TokenError::Malformed(
                "expected slw1.<issuer>.<expiry>.<mac>",
            ));
        };
        if version != VERSION {
            return Err(TokenError::Malformed("unknown version"));
        }
        let tag = B64
            .decode(tag)
            .map_err(|_| TokenError::Malformed("signature is not base64url"))?;
        // Constant-time comparison.
        self.mac(claim)
            .verify_slice(&tag)
            .map_err(|_| TokenError::BadSignature)?;
        let exp: u64 = exp
            .parse()
            .map_err(|_| TokenError::Malformed("expiry is not a number"))?;
        let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        if now > exp.saturating_add(CLOCK_SKEW.as_secs()) {
            return Err(TokenError::Expired {
                issuer: issuer.to_owned(),
                ago: now - exp,
            });
        }
        Ok(ServiceIdentity {
            issuer: issuer.to_owned(),
        })
    }

    /// Checks an `authorization` metadata value (`Bearer <token>`) now.
    pub fn verify_header(&self, value: Option<&[u8]>) -> Result<ServiceIdentity, TokenError> {
        let value = value.ok_or(TokenError::Missing)?;
        let value = std::str::from_utf8(value).map_err(|_| TokenError::Malformed("not text"))?;
        let token = value
            .strip_prefix("Bearer ")
            .ok_or(TokenError::Malformed("expected `Bearer <token>`"))?;
        self.verify_at(token.trim(), SystemTime::now())
    }
}

/// Signs a token for every outgoing call of one service (what
/// [`crate::ChannelOptions::service_token`] holds).
#[derive(Clone, Debug)]
pub struct TokenSigner {
    key: ServiceKey,
    issuer: &'static str,
}

impl TokenSigner {
    /// Tokens naming `issuer` as the caller.
    pub fn new(key: ServiceKey, issuer: &'static str) -> Self {
        Self { key, issuer }
    }

    /// Sets `authorization: Bearer <fresh token>` on an outgoing request.
    pub fn attach(&self, headers: &mut http::HeaderMap) {
        let token = self.key.sign(self.issuer, SystemTime::now() + TOKEN_TTL);
        if let Ok(value) = http::HeaderValue::from_str(&format!("Bearer {token}")) {
            headers.insert(AUTHORIZATION, value);
        }
    }
}

/// Security settings every gRPC service's `Config` flattens in.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct SecurityArgs {
    /// Shared secret (at least 32 bytes) signing the tokens services send
    /// each other; with it, gRPC calls without a valid token are refused.
    /// Every service of a rack needs the same value.
    #[arg(long, env = "SLIPWAY_SERVICE_TOKEN_KEY", value_name = "SECRET")]
    pub service_token_key: Option<Secret>,

    /// Serve gRPC on a non-loopback address without service tokens (any
    /// host that reaches the port may then call every RPC).
    #[arg(long, env = "SLIPWAY_INSECURE_GRPC", value_parser = clap::builder::BoolishValueParser::new())]
    pub insecure_grpc: bool,
}

impl SecurityArgs {
    /// Checks the settings for a server listening on `listen` (`None` for a
    /// binary that only calls out, like the gateway).
    pub fn validate(&self, listen: Option<SocketAddr>) -> Result<(), String> {
        if let Some(key) = &self.service_token_key {
            ServiceKey::new(key).map_err(|e| e.to_string())?;
        }
        if let Some(listen) = listen
            && self.service_token_key.is_none()
            && !self.insecure_grpc
            && !listen.ip().is_loopback()
        {
            return Err(format!(
                "refusing unauthenticated gRPC on non-loopback {listen}: set --service-token-key (SLIPWAY_SERVICE_TOKEN_KEY) or pass --insecure-grpc"
            ));
        }
        Ok(())
    }

    fn key(&self) -> Option<ServiceKey> {
        // Validated at start-up; a short key here means validate was skipped.
        self.service_token_key
            .as_ref()
            .map(|k| ServiceKey::new(k).expect("the service token key was validated at start-up"))
    }

    /// What the server checks calls with (`None`: no key, calls accepted).
    pub fn server_auth(&self) -> Option<ServiceKey> {
        self.key()
    }

    /// What `issuer`'s outgoing calls are signed with (`None`: no key).
    pub fn client_token(&self, issuer: &'static str) -> Option<TokenSigner> {
        self.key().map(|key| TokenSigner::new(key, issuer))
    }
}

/// Refuses calls without a valid service token (except health checks) with
/// UNAUTHENTICATED; passes everything when built without a key. The
/// innermost layer of the server stack, right above the services.
#[derive(Clone, Debug, Default)]
pub struct RequireServiceTokenLayer {
    key: Option<ServiceKey>,
}

impl RequireServiceTokenLayer {
    /// Checks tokens against `key`; `None` lets every call through.
    pub fn new(key: Option<ServiceKey>) -> Self {
        Self { key }
    }
}

impl<S> tower::Layer<S> for RequireServiceTokenLayer {
    type Service = RequireServiceToken<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireServiceToken {
            inner,
            key: self.key.clone(),
        }
    }
}

/// The service of [`RequireServiceTokenLayer`].
#[derive(Clone, Debug)]
pub struct RequireServiceToken<S> {
    inner: S,
    key: Option<ServiceKey>,
}

impl<S, B, R> tower::Service<http::Request<B>> for RequireServiceToken<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        if let Some(key) = &self.key
            && !request.uri().path().starts_with(EXEMPT_PREFIX)
        {
            let header = request.headers().get(AUTHORIZATION).map(|v| v.as_bytes());
            match key.verify_header(header) {
                Ok(identity) => {
                    request.extensions_mut().insert(identity);
                }
                Err(e) => {
                    tracing::debug!(path = request.uri().path(), "refused a call: {e}");
                    let response = tonic::Status::unauthenticated(e.to_string()).into_http();
                    return Box::pin(std::future::ready(Ok(response)));
                }
            }
        }
        // Never forward a caller's token further than this service.
        request.headers_mut().remove(AUTHORIZATION);
        Box::pin(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(text: &str) -> ServiceKey {
        ServiceKey::new(&Secret::new(text.repeat(32))).unwrap()
    }

    #[test]
    fn tokens_verify_only_with_their_key_and_before_expiry() {
        let now = SystemTime::now();
        let a = key("a");
        let token = a.sign("gateway", now + Duration::from_secs(60));
        assert_eq!(a.verify_at(&token, now).unwrap().issuer, "gateway");
        assert_eq!(
            key("b").verify_at(&token, now),
            Err(TokenError::BadSignature)
        );
        let late = now + Duration::from_secs(60 + 31);
        assert!(matches!(
            a.verify_at(&token, late),
            Err(TokenError::Expired { ago: 31, .. })
        ));
        // Altering the issuer or expiry breaks the signature.
        let forged = token.replacen("gateway", "release", 1);
        assert_eq!(a.verify_at(&forged, now), Err(TokenError::BadSignature));
        assert!(matches!(
            a.verify_header(Some(b"Basic abc")),
            Err(TokenError::Malformed(_))
        ));
        assert_eq!(a.verify_header(None), Err(TokenError::Missing));
    }

    #[test]
    fn non_loopback_grpc_needs_a_key_or_the_explicit_flag() {
        let public: SocketAddr = "0.0.0.0:7101".parse().unwrap();
        let err = SecurityArgs::default().validate(Some(public)).unwrap_err();
        assert!(
            err.contains("--service-token-key") && !err.contains('\n'),
            "{err}"
        );
        SecurityArgs::default()
            .validate(Some("127.0.0.1:7101".parse().unwrap()))
            .unwrap();
        let insecure = SecurityArgs {
            insecure_grpc: true,
            ..Default::default()
        };
        insecure.validate(Some(public)).unwrap();
        let short = SecurityArgs {
            service_token_key: Some(Secret::new("short")),
            ..Default::default()
        };
        assert!(short.validate(None).unwrap_err().contains("at least 32"));
        let debug = format!(
            "{:?}",
            SecurityArgs {
                service_token_key: Some(Secret::new("k".repeat(40))),
                ..Default::default()
            }
        );
        assert!(!debug.contains("kkkk"), "{debug}");
    }
}
