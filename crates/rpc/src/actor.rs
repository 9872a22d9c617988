//! Who a call is made for, carried in gRPC metadata from the edge (the
//! gateway, the console) to every service, so that each change can be
//! recorded with its actor and source (the audit trail) and announced with
//! them (webhooks).
//!
//! The gateway sets both keys on every outgoing call from the credential it
//! authenticated, never from what the client claims:
//!
//! - [`ACTOR_KEY`] (`slipway-actor`): `password` (the rack password),
//!   `token:NAME` (a scoped token), `console:NAME` (a console login), or a
//!   service's own name for work it does on its own;
//! - [`SOURCE_KEY`] (`slipway-source`): the client's address, `ip` or
//!   `ip:port`.
//!
//! A service that forwards a call on a caller's behalf copies both with
//! [`Actor::insert_into`]. Reading uses [`actor_of`], which falls back to
//! [`UNKNOWN`] when the key is missing (a call from a test or an internal
//! loop) and still reads the older `x-slipway-actor` key.

/// Metadata key naming the actor.
pub const ACTOR_KEY: &str = "slipway-actor";
/// Metadata key carrying the client's address as the gateway saw it.
pub const SOURCE_KEY: &str = "slipway-source";
/// The key used before this module existed; still read, no longer written.
pub const LEGACY_ACTOR_KEY: &str = "x-slipway-actor";

/// The actor of a call that carries none.
pub const UNKNOWN: &str = "unknown";
/// The actor of a call made with the rack password.
pub const PASSWORD: &str = "password";
/// Prefix of a scoped token's actor (`token:ci-web`).
pub const TOKEN_PREFIX: &str = "token:";
/// Prefix of a console login's actor (`console:alice`).
pub const CONSOLE_PREFIX: &str = "console:";

/// Longest actor or source kept; anything longer is cut.
const MAX_LEN: usize = 128;

/// The actor and source of a call.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Actor {
    /// `password`, `token:NAME`, `console:NAME`, a service name, or
    /// [`UNKNOWN`].
    pub name: String,
    /// The client's address, empty when not known.
    pub source: String,
}

impl Actor {
    /// An actor named `name` calling from `source` (either may be empty;
    /// an empty name becomes [`UNKNOWN`]). Both are cut to 128 characters
    /// and anything but printable ASCII becomes `?`, so they always fit in
    /// metadata and in a log line.
    pub fn new(name: &str, source: &str) -> Self {
        let name = clean(name);
        Self {
            name: if name.is_empty() {
                UNKNOWN.to_owned()
            } else {
                name
            },
            source: clean(source),
        }
    }

    /// The rack password's actor.
    pub fn password(source: &str) -> Self {
        Self::new(PASSWORD, source)
    }

    /// A scoped token's actor: `token:NAME`.
    pub fn token(name: &str, source: &str) -> Self {
        Self::new(&format!("{TOKEN_PREFIX}{name}"), source)
    }

    /// A console login's actor: `console:NAME`.
    pub fn console(name: &str, source: &str) -> Self {
        Self::new(&format!("{CONSOLE_PREFIX}{name}"), source)
    }

    /// The actor of a call that carried none.
    pub fn unknown() -> Self {
        Self::new(UNKNOWN, "")
    }

    /// True when the call named no actor.
    pub fn is_unknown(&self) -> bool {
        self.name == UNKNOWN
    }

    /// Sets [`ACTOR_KEY`] and [`SOURCE_KEY`] (when known) on `request`,
    /// replacing what it carried.
    pub fn insert_into<T>(&self, request: &mut tonic::Request<T>) {
        let metadata = request.metadata_mut();
        metadata.remove(LEGACY_ACTOR_KEY);
        if let Ok(value) = self.name.parse() {
            metadata.insert(ACTOR_KEY, value);
        }
        if self.source.is_empty() {
            metadata.remove(SOURCE_KEY);
        } else if let Ok(value) = self.source.parse() {
            metadata.insert(SOURCE_KEY, value);
        }
    }

    /// `message` in a request carrying this actor.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        self.insert_into(&mut request);
        request
    }
}

impl std::fmt::Display for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

/// The actor and source `request` carries; [`UNKNOWN`] and an empty
/// source when it carries none.
pub fn actor_of<T>(request: &tonic::Request<T>) -> Actor {
    let metadata = request.metadata();
    let text = |key: &str| {
        metadata
            .get(key)
            .and_then(|v| v.to_str().ok())
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let name = text(ACTOR_KEY)
        .or_else(|| text(LEGACY_ACTOR_KEY))
        .unwrap_or_default();
    Actor::new(&name, &text(SOURCE_KEY).unwrap_or_default())
}

tokio::task_local! {
    /// The actor of the call being served (see [`ScopeLayer`]).
    static CURRENT: Actor;
}

/// The actor of the call this task is serving, when the server runs
/// [`ScopeLayer`] (every server built by [`crate::serve`] does): what the
/// audit trail records as source, without threading it through every
/// function between the RPC and the transaction. [`Actor::unknown`]
/// outside a call (background loops, tests calling a store directly).
pub fn current() -> Actor {
    CURRENT
        .try_with(Actor::clone)
        .unwrap_or_else(|_| Actor::unknown())
}

/// Runs `future` as serving a call made by `actor` (see [`current`]).
pub async fn scope<F: std::future::Future>(actor: Actor, future: F) -> F::Output {
    CURRENT.scope(actor, future).await
}

/// Sets [`ACTOR_KEY`] and [`SOURCE_KEY`] on an outgoing call from
/// [`current`], unless the call carries an actor already or none is
/// current: every call a service makes while serving one carries that
/// one's actor on (the channel of [`crate::channel`] does this).
pub fn inject_current(headers: &mut http::HeaderMap) {
    if headers.contains_key(ACTOR_KEY) || headers.contains_key(LEGACY_ACTOR_KEY) {
        return;
    }
    let Ok(actor) = CURRENT.try_with(Actor::clone) else {
        return;
    };
    if actor.is_unknown() {
        return;
    }
    if let Ok(value) = http::HeaderValue::from_str(&actor.name) {
        headers.insert(ACTOR_KEY, value);
    }
    if !actor.source.is_empty()
        && let Ok(value) = http::HeaderValue::from_str(&actor.source)
    {
        headers.insert(SOURCE_KEY, value);
    }
}

/// Server layer: each call's handler runs with its actor as [`current`].
#[derive(Clone, Copy, Debug, Default)]
pub struct ScopeLayer;

impl<S> tower::Layer<S> for ScopeLayer {
    type Service = Scope<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Scope { inner }
    }
}

/// See [`ScopeLayer`].
#[derive(Clone, Debug)]
pub struct Scope<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for Scope<S>
where
    S: tower::Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send + 'static>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let headers = request.headers();
        let text = |key: &str| {
            headers
                .get(key)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        let mut name = text(ACTOR_KEY);
        if name.is_empty() {
            name = text(LEGACY_ACTOR_KEY);
        }
        let actor = Actor::new(&name, &text(SOURCE_KEY));
        Box::pin(CURRENT.scope(actor, self.inner.call(request)))
    }
}

/// Printable ASCII only, at most [`MAX_LEN`] characters.
fn clean(text: &str) -> String {
    text.chars()
        .take(MAX_LEN)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_metadata() {
        let actor = Actor::token("ci-web", "10.0.0.7:5123");
        let request = actor.request(());
        assert_eq!(actor_of(&request), actor);
        assert_eq!(actor_of(&request).name, "token:ci-web");
    }

    #[test]
    fn missing_is_unknown_and_legacy_is_read() {
        let request = tonic::Request::new(());
        assert!(actor_of(&request).is_unknown());
        assert_eq!(actor_of(&request).source, "");
        let mut request = tonic::Request::new(());
        request
            .metadata_mut()
            .insert(LEGACY_ACTOR_KEY, "console:bob".parse().unwrap());
        assert_eq!(actor_of(&request).name, "console:bob");
    }

    #[test]
    fn insert_replaces_what_the_request_carried() {
        let mut request = Actor::console("eve", "1.2.3.4").request(());
        request
            .metadata_mut()
            .insert(LEGACY_ACTOR_KEY, "spoofed".parse().unwrap());
        Actor::password("").insert_into(&mut request);
        let actor = actor_of(&request);
        assert_eq!(actor.name, "password");
        assert_eq!(actor.source, "");
        assert!(request.metadata().get(LEGACY_ACTOR_KEY).is_none());
    }

    #[tokio::test]
    async fn the_scope_layer_makes_the_callers_actor_current() {
        use tower::{Layer as _, ServiceExt as _};
        assert!(current().is_unknown());
        let service = ScopeLayer.layer(tower::service_fn(|_: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(current())
        }));
        let request = http::Request::builder()
            .header(ACTOR_KEY, "token:ci")
            .header(SOURCE_KEY, "10.1.2.3:4")
            .body(())
            .unwrap();
        let seen = service.oneshot(request).await.unwrap();
        assert_eq!(seen, Actor::token("ci", "10.1.2.3:4"));
        assert_eq!(
            scope(Actor::password("x"), async { current() }).await,
            Actor::password("x")
        );
    }

    #[tokio::test]
    async fn outgoing_calls_carry_the_current_actor_unless_they_name_one() {
        let mut headers = http::HeaderMap::new();
        inject_current(&mut headers);
        assert!(headers.is_empty(), "no actor outside a call");
        scope(Actor::token("ci", "1.2.3.4:5"), async {
            let mut headers = http::HeaderMap::new();
            inject_current(&mut headers);
            assert_eq!(headers[ACTOR_KEY], "token:ci");
            assert_eq!(headers[SOURCE_KEY], "1.2.3.4:5");
            let mut named = http::HeaderMap::new();
            named.insert(ACTOR_KEY, "password".parse().unwrap());
            inject_current(&mut named);
            assert_eq!(named[ACTOR_KEY], "password");
            assert!(!named.contains_key(SOURCE_KEY));
        })
        .await;
    }

    #[test]
    fn names_are_cut_and_cleaned() {
        let actor = Actor::console("a b\nc\u{e9}", "");
        assert_eq!(actor.name, "console:a?b?c?");
        assert_eq!(Actor::new(&"x".repeat(500), "").name.len(), MAX_LEN);
        assert!(Actor::new("", "").is_unknown());
    }
}
