//! The JSON shapes of the Convox rack API (`pkg/structs` field names and
//! types), shared by the gateway that produces them and the SDK that reads
//! them. Types matter: the `convox` CLI decodes with Go's `encoding/json`,
//! for which a string where an int is expected is a hard error.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// `GET /system`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct System {
    /// Number of instances (always 1 for the embedded rack).
    #[serde(default)]
    pub count: i64,
    /// Router domain; empty on the local runtime.
    #[serde(default)]
    pub domain: String,
    /// Rack name.
    #[serde(default)]
    pub name: String,
    /// `local` or `k8s`.
    #[serde(default)]
    pub provider: String,
    /// Rack API domain.
    #[serde(default, rename = "rack-domain")]
    pub rack_domain: String,
    /// Region; empty here.
    #[serde(default)]
    pub region: String,
    /// Internal router; empty here.
    #[serde(default, rename = "router-internal")]
    pub router_internal: String,
    /// `running`.
    #[serde(default)]
    pub status: String,
    /// Rack type.
    #[serde(default, rename = "type")]
    pub kind: String,
    /// Must compare greater than `20180708231844` as a string, or the
    /// `convox` CLI switches to legacy routes.
    #[serde(default)]
    pub version: String,
    /// Extra outputs (unused).
    #[serde(default)]
    pub outputs: BTreeMap<String, String>,
    /// Parameters (unused).
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
}

/// An app (`GET /apps`, `GET /apps/{app}`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct App {
    /// `"3"` like a v3 rack.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub generation: String,
    /// Always false here.
    #[serde(default)]
    pub locked: bool,
    /// The name.
    #[serde(default)]
    pub name: String,
    /// The active release; empty before the first promotion.
    #[serde(default)]
    pub release: String,
    /// Router domain.
    #[serde(default)]
    pub router: String,
    /// `running`, `updating` or `rollback`.
    #[serde(default)]
    pub status: String,
    /// Parameters (unused).
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
}

/// The answer of an object upload.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Object {
    /// `object://<app>/<key>`; the Go struct has no json tag, hence `Url`.
    #[serde(rename = "Url", alias = "url")]
    pub url: String,
}

/// A build.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Build {
    /// `B` + 10 letters.
    #[serde(default)]
    pub id: String,
    /// The app.
    #[serde(default)]
    pub app: String,
    /// What the build is.
    #[serde(default)]
    pub description: String,
    /// Unused.
    #[serde(default)]
    pub entrypoint: String,
    /// The commit built.
    #[serde(default, rename = "git-sha")]
    pub git_sha: String,
    /// Unused (logs stream over a socket).
    #[serde(default)]
    pub logs: String,
    /// The convox.yml of the build.
    #[serde(default)]
    pub manifest: String,
    /// Unused.
    #[serde(default)]
    pub process: String,
    /// The release the build created, once complete.
    #[serde(default)]
    pub release: String,
    /// Why it failed.
    #[serde(default)]
    pub reason: String,
    /// Unused.
    #[serde(default)]
    pub repository: String,
    /// `created`, `running`, `complete`, `failed` (or `cancelled`).
    #[serde(default)]
    pub status: String,
    /// When it started.
    #[serde(default = "zero_time", with = "go_time")]
    pub started: DateTime<Utc>,
    /// When it ended; the zero time while running.
    #[serde(default = "zero_time", with = "go_time")]
    pub ended: DateTime<Utc>,
}

/// A release. Its `Debug` shows the env's keys only: values are secrets.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
pub struct Release {
    /// `R` + 10 letters.
    #[serde(default)]
    pub id: String,
    /// The app.
    #[serde(default)]
    pub app: String,
    /// The build it runs.
    #[serde(default)]
    pub build: String,
    /// `K=V` lines, sorted, no trailing newline; a value with a newline or a
    /// carriage return is quoted as `$'…'`. [`Release::env_vars`] decodes it.
    #[serde(default)]
    pub env: String,
    /// The build's convox.yml.
    #[serde(default)]
    pub manifest: String,
    /// What changed.
    #[serde(default)]
    pub description: String,
    /// When it was created.
    #[serde(default = "zero_time", with = "go_time")]
    pub created: DateTime<Utc>,
}

pub use slipway_domain::{Env, EnvError};

impl std::fmt::Debug for Release {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<&str> = self
            .env
            .split('\n')
            .filter_map(|line| line.split_once('=').map(|(k, _)| k))
            .collect();
        f.debug_struct("Release")
            .field("id", &self.id)
            .field("app", &self.app)
            .field("build", &self.build)
            .field("env_keys", &keys)
            .field("description", &self.description)
            .field("created", &self.created)
            .finish_non_exhaustive()
    }
}

impl Release {
    /// The env's exact values, decoded from [`Release::env`] (the Convox text;
    /// see `slipway_domain::env::Env::parse_wire`).
    pub fn env_vars(&self) -> Result<Env, EnvError> {
        Env::parse_wire(&self.env)
    }
}

/// A process (`GET /apps/{app}/processes`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Process {
    /// Process id, e.g. `web-4f2a9c1d`.
    #[serde(default)]
    pub id: String,
    /// The app.
    #[serde(default)]
    pub app: String,
    /// The command.
    #[serde(default)]
    pub command: String,
    /// CPU share (unused).
    #[serde(default)]
    pub cpu: f64,
    /// GPUs (unused).
    #[serde(default)]
    pub gpu: i64,
    /// Host address.
    #[serde(default)]
    pub host: String,
    /// Image (or artifact).
    #[serde(default)]
    pub image: String,
    /// Instance.
    #[serde(default)]
    pub instance: String,
    /// Memory (unused).
    #[serde(default)]
    pub memory: f64,
    /// The service name.
    #[serde(default)]
    pub name: String,
    /// Ports.
    #[serde(default)]
    pub ports: Vec<String>,
    /// The release it runs.
    #[serde(default)]
    pub release: String,
    /// When it started.
    #[serde(default = "zero_time", with = "go_time")]
    pub started: DateTime<Utc>,
    /// `running`, `pending`, …
    #[serde(default)]
    pub status: String,
}

/// A port of a service.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ServicePort {
    /// The balancer port (0 when none).
    #[serde(default)]
    pub balancer: i64,
    /// Certificate (unused).
    #[serde(default)]
    pub certificate: String,
    /// The port the service listens on.
    #[serde(default)]
    pub container: i64,
}

/// A service (`GET /apps/{app}/services`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Service {
    /// The name.
    #[serde(default)]
    pub name: String,
    /// Where clients reach it (`127.0.0.1:PORT` on the local runtime).
    #[serde(default)]
    pub domain: String,
    /// Desired processes.
    #[serde(default)]
    pub count: i64,
    /// CPU in millicores (0 when not set).
    #[serde(default)]
    pub cpu: i64,
    /// Memory in MiB (0 when not set).
    #[serde(default)]
    pub memory: i64,
    /// GPUs (unused).
    #[serde(default)]
    pub gpu: i64,
    /// GPU vendor (unused).
    #[serde(default, rename = "gpu-vendor")]
    pub gpu_vendor: String,
    /// Ports.
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    /// Slipway: why cpu and memory are not enforced, when they are set
    /// and the runtime does not enforce them (absent otherwise).
    #[serde(
        default,
        rename = "limits-note",
        skip_serializing_if = "String::is_empty"
    )]
    pub limits_note: String,
}

/// A promotion, as Slipway's own routes report it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Promotion {
    /// Promotion id (also the rollout id).
    #[serde(default)]
    pub id: String,
    /// The app.
    #[serde(default)]
    pub app: String,
    /// The release promoted.
    #[serde(default)]
    pub release: String,
    /// The release an automatic rollback returns to.
    #[serde(default)]
    pub fallback: String,
    /// `pending`, `rolling_out`, `succeeded`, `rolled_back`, `failed`, `cancelled`.
    #[serde(default)]
    pub state: String,
    /// Why it did not succeed.
    #[serde(default)]
    pub reason: String,
    /// True when the release was already active and nothing was started.
    #[serde(default)]
    pub noop: bool,
    /// A message for people (e.g. "release R… is already active").
    #[serde(default)]
    pub message: String,
}

/// The answer of Slipway's rollback route: the copy and its promotion.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Rollback {
    /// The new release, a copy of the one rolled back to.
    #[serde(default)]
    pub release: Release,
    /// The promotion of the copy.
    #[serde(default)]
    pub promotion: Promotion,
}

/// The body of Slipway's atomic env change route.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct EnvChange {
    /// Keys to set.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Keys to remove.
    #[serde(default)]
    pub unset: Vec<String>,
    /// The release to fork (default: the app's newest), e.g. the active
    /// one when the newest failed to promote.
    #[serde(
        default,
        rename = "parent-release",
        skip_serializing_if = "Option::is_none"
    )]
    pub parent: Option<String>,
}

// Hand-written defaults: a derived one would make times the Unix epoch,
// not Go's zero time ("unset").
impl Default for Build {
    fn default() -> Self {
        Self {
            id: String::new(),
            app: String::new(),
            description: String::new(),
            entrypoint: String::new(),
            git_sha: String::new(),
            logs: String::new(),
            manifest: String::new(),
            process: String::new(),
            release: String::new(),
            reason: String::new(),
            repository: String::new(),
            status: String::new(),
            started: go_time::ZERO,
            ended: go_time::ZERO,
        }
    }
}

impl Default for Release {
    fn default() -> Self {
        Self {
            id: String::new(),
            app: String::new(),
            build: String::new(),
            env: String::new(),
            manifest: String::new(),
            description: String::new(),
            created: go_time::ZERO,
        }
    }
}

impl Default for Process {
    fn default() -> Self {
        Self {
            id: String::new(),
            app: String::new(),
            command: String::new(),
            cpu: 0.0,
            gpu: 0,
            host: String::new(),
            image: String::new(),
            instance: String::new(),
            memory: 0.0,
            name: String::new(),
            ports: Vec::new(),
            release: String::new(),
            started: go_time::ZERO,
            status: String::new(),
        }
    }
}

fn zero_time() -> DateTime<Utc> {
    go_time::ZERO
}

/// Go `time.Time` in JSON: RFC 3339 (nanoseconds trimmed), with
/// `0001-01-01T00:00:00Z` meaning "unset".
pub mod go_time {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    /// Go's zero time.
    pub const ZERO: DateTime<Utc> = DateTime::<Utc>::MIN_UTC;

    /// True for the zero time (or anything before year 2).
    pub fn is_zero(t: &DateTime<Utc>) -> bool {
        t.timestamp() < -62_135_596_800 + 86_400
    }

    /// Serialises like Go does.
    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        if is_zero(t) {
            s.serialize_str("0001-01-01T00:00:00Z")
        } else {
            s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
        }
    }

    /// Accepts any RFC 3339 time; null or the zero time give [`ZERO`].
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        match text.as_deref() {
            None | Some("") | Some("0001-01-01T00:00:00Z") => Ok(ZERO),
            Some(t) => DateTime::parse_from_rfc3339(t)
                .map(|t| t.with_timezone(&Utc))
                .map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn release_debug_hides_env_values() {
        let r = super::Release {
            env: "PEM=$'s3cret\\nmore'\nTOKEN=abc123".into(),
            ..Default::default()
        };
        let text = format!("{r:?}");
        assert!(text.contains("PEM") && text.contains("TOKEN"), "{text}");
        assert!(
            !text.contains("s3cret") && !text.contains("abc123"),
            "{text}"
        );
    }

    use super::*;

    #[test]
    fn builds_serialise_with_go_names_and_zero_times() {
        let build = Build {
            id: "BABCDEFGHIJ".into(),
            git_sha: "abc".into(),
            ..Default::default()
        };
        let json = serde_json::to_value(&build).unwrap();
        assert_eq!(json["git-sha"], "abc");
        assert_eq!(json["ended"], "0001-01-01T00:00:00Z");
        let back: Build = serde_json::from_value(json).unwrap();
        assert!(go_time::is_zero(&back.ended));
    }

    #[test]
    fn objects_use_the_untagged_go_field_name() {
        let json = serde_json::to_string(&Object {
            url: "object://a/b".into(),
        })
        .unwrap();
        assert_eq!(json, r#"{"Url":"object://a/b"}"#);
        let back: Object = serde_json::from_str(r#"{"url":"x"}"#).unwrap();
        assert_eq!(back.url, "x");
    }

    #[test]
    fn times_keep_their_fraction_and_zone() {
        let release: Release =
            serde_json::from_str(r#"{"id":"R","created":"2026-11-23T06:22:44.261Z"}"#).unwrap();
        let json = serde_json::to_value(&release).unwrap();
        assert_eq!(json["created"], "2026-11-23T06:22:44.261Z");
    }
}
