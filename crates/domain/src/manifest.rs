//! The convox.yml manifest: the subset Slipway understands, parsed and validated.
//!
//! A manifest arrives with every build and decides what a promotion does: which
//! services run, on which port, how they are health-checked, how many copies run and
//! how fast they are replaced, and which env vars each one needs. A mistake here would
//! otherwise surface minutes later as a failed rollout, so parsing is strict about the
//! values it understands and reports every problem with the file's line and column and
//! the key path (`services.web.port`). Keys it does not understand are kept out of the
//! way and listed in [`Manifest::ignored_keys`] so callers can warn about them; real
//! Convox manifests use many keys (`resources`, `domain`, `scale.targets`, …) that have
//! no meaning here, and refusing them would refuse working apps.
//!
//! The YAML is first read into a generic tree (so syntax errors carry the parser's
//! position), then walked by hand (so every semantic error can say exactly what was
//! expected). Positions for semantic errors come from the `locate` submodule, which
//! scans the text; the tree walk itself lives in the `walk` submodule.

mod locate;
mod walk;

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;
use serde_norway::Value;

use crate::env::{Env, EnvError};
use locate::{KeyPath, Locator, Position};
use walk::{Walker, describe};

/// Largest convox.yml accepted, in bytes. Real manifests take a few KiB; 512 KiB
/// leaves a release (manifest, env, artifacts) well inside one gRPC message, and
/// bounds what parsing one can cost.
pub const MAX_MANIFEST_BYTES: usize = 512 * 1024;

/// Longest allowed service name, in characters.
pub const MAX_SERVICE_NAME_LEN: usize = 30;

/// Default health-check interval in seconds (Convox's default).
pub const DEFAULT_HEALTH_INTERVAL_SECS: u32 = 5;
/// Default number of processes per service.
pub const DEFAULT_SCALE_COUNT: u32 = 1;
/// Default percentage of the count kept healthy during a rollout.
pub const DEFAULT_DEPLOYMENT_MINIMUM: u32 = 50;
/// Default percentage of the count allowed to run in total during a rollout.
pub const DEFAULT_DEPLOYMENT_MAXIMUM: u32 = 200;
/// Default seconds a process gets between SIGTERM and SIGKILL.
pub const DEFAULT_TERMINATION_GRACE_SECS: u32 = 30;
/// Default request timeout in seconds.
pub const DEFAULT_TIMEOUT_SECS: u32 = 60;

/// Largest `scale.cpu`, in millicores (1000 is one CPU).
pub const MAX_CPU_MILLICORES: u32 = 1_000_000;
/// Largest `scale.memory`, in MB (MiB, as Kubernetes' `Mi`): 16 TiB.
pub const MAX_MEMORY_MB: u32 = 16 * 1024 * 1024;
/// Smallest non-zero `scale.memory`, in MB: less cannot start a container.
pub const MIN_MEMORY_MB: u32 = 4;

/// Longest string value echoed back in an error message.
const MAX_ECHO: usize = 60;

/// What was wrong with a manifest. Wrapped in a [`ManifestError`], which adds where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestErrorKind {
    /// The text was empty or only whitespace and comments.
    #[error("manifest is empty")]
    Empty,
    /// The text was longer than [`MAX_MANIFEST_BYTES`].
    #[error("manifest is too large: {len} bytes, the limit is {max} bytes (512 KiB)", max = MAX_MANIFEST_BYTES)]
    TooLarge {
        /// The manifest's length in bytes.
        len: usize,
    },
    /// The text is not valid YAML.
    #[error("{message}")]
    Syntax {
        /// The YAML parser's description, without its position.
        message: String,
    },
    /// The document is a scalar or a list instead of a mapping.
    #[error("the top level must be a mapping of keys, got {got}")]
    TopLevelNotMapping {
        /// What was found instead.
        got: String,
    },
    /// There is no `services` key.
    #[error("a services section is required")]
    MissingServices,
    /// `services` is present but lists no service.
    #[error("at least one service is required")]
    NoServices,
    /// A mapping key is not a string.
    #[error("keys must be strings, got {got}")]
    NonStringKey {
        /// What was found instead.
        got: String,
    },
    /// A service name breaks the naming rule.
    #[error(
        "invalid service name {name:?}: use lowercase letters, digits and '-', starting with a letter and not ending with '-', at most 30 characters"
    )]
    InvalidServiceName {
        /// The rejected name (shortened if very long).
        name: String,
    },
    /// A service has none of `build`, `image` and `command`, so there is nothing to run.
    #[error("a service needs at least one of build, image or command")]
    NothingToRun,
    /// A value had the wrong shape.
    #[error("expected {expected}, got {got}")]
    Expected {
        /// What the key accepts.
        expected: &'static str,
        /// What was found instead.
        got: String,
    },
    /// A number was not a whole number within the allowed range.
    #[error("expected a whole number {range}, got {got}")]
    OutOfRange {
        /// The allowed range in words, e.g. `from 0 to 100`.
        range: String,
        /// What was found instead.
        got: String,
    },
    /// `scale.cpu` or `scale.memory` was not a whole number in its range.
    #[error("expected {unit} as a whole number from {min} to {max}{hint}, got {got}")]
    Resource {
        /// The unit the number is in, e.g. `millicores`.
        unit: &'static str,
        /// The smallest accepted value other than 0 (which means unset).
        min: u32,
        /// The largest accepted value.
        max: u32,
        /// A note on the unit, e.g. ` (1000 is one CPU)`, or nothing.
        hint: &'static str,
        /// What was found instead.
        got: String,
    },
    /// A port was not a number from 1 to 65535, optionally prefixed by `http:`/`https:`.
    #[error("expected a port number 1-65535, got {got}")]
    InvalidPort {
        /// What was found instead.
        got: String,
    },
    /// A string that must say something was empty.
    #[error("must not be empty")]
    EmptyValue,
    /// A health-check path does not start with `/`.
    #[error("expected a path starting with '/', got {got}")]
    InvalidHealthPath {
        /// What was found instead.
        got: String,
    },
    /// A health-check timeout is zero or longer than the interval between checks.
    #[error("must be at least 1 and at most the interval ({interval}), got {timeout}")]
    HealthTimeout {
        /// The timeout in seconds.
        timeout: u32,
        /// The interval in seconds.
        interval: u32,
    },
    /// An `environment` entry has an invalid key.
    #[error("{error}")]
    InvalidEnvKey {
        /// Why the key is invalid.
        error: EnvError,
    },
    /// An `environment` list names a key twice.
    #[error("{key} is listed more than once")]
    DuplicateEnvKey {
        /// The repeated key.
        key: String,
    },
    /// `deployment` minimum and maximum are both 100, so no process can ever be replaced.
    /// `release.service` names a service the manifest does not have.
    #[error("no such service {name:?} (services: {known})")]
    UnknownService {
        /// The name given.
        name: String,
        /// The manifest's services.
        known: String,
    },
    /// A required key is missing.
    #[error("{key} is required")]
    Missing {
        /// The key.
        key: &'static str,
    },
    #[error(
        "minimum 100 and maximum 100 leave no room to replace a process; lower minimum or raise maximum"
    )]
    DeploymentStuck,
}

/// A manifest problem with where it is: the 1-based line and column in the convox.yml
/// text (when known) and the key path, e.g.
/// `convox.yml line 4, column 11: services.web.port: expected a port number 1-65535, got "abc"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    /// 1-based line of the offending text, when it could be found.
    pub line: Option<usize>,
    /// 1-based column of the offending text, when it could be found.
    pub column: Option<usize>,
    /// Dotted key path of the offending value (`services.web.port`); empty for
    /// problems with the document as a whole.
    pub path: String,
    /// What was wrong.
    pub kind: ManifestErrorKind,
}

impl ManifestError {
    fn new(kind: ManifestErrorKind, path: &KeyPath, at: Option<Position>) -> Self {
        Self {
            line: at.map(|p| p.line),
            column: at.map(|p| p.column),
            path: path.to_string(),
            kind,
        }
    }
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("convox.yml")?;
        match (self.line, self.column) {
            (Some(line), Some(column)) => write!(f, " line {line}, column {column}")?,
            (Some(line), None) => write!(f, " line {line}")?,
            _ => {}
        }
        f.write_str(": ")?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        write!(f, "{}", self.kind)
    }
}

// The kind is already part of the message, so it is not reported again as a source.
impl std::error::Error for ManifestError {}

/// A parsed, validated convox.yml.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Manifest {
    /// The services, by name.
    pub services: BTreeMap<String, Service>,
    /// The release command (`release:`), run once per promotion before
    /// anything of the release starts.
    pub release: Option<ReleaseCommand>,
    /// Dotted paths of keys that were present but are not used by Slipway, in
    /// document order (e.g. `resources`, `services.web.domain`), so callers can warn.
    pub ignored_keys: Vec<String>,
    /// The text the manifest was parsed from, stored with releases as is.
    #[serde(skip)]
    source: String,
}

/// The `release:` block: what runs once per promotion, before the release's
/// processes start; the promotion fails if it does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReleaseCommand {
    /// The service whose build, env and definition it runs with.
    pub service: String,
    /// Shell command text.
    pub command: String,
    /// Seconds before it is stopped and the promotion fails (1 to 3600, default 300).
    pub timeout_secs: u32,
}

/// One service: something that runs as a set of identical processes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Service {
    /// The service's name, the key under `services`.
    pub name: String,
    /// How to build the service's image from source, if it is built.
    pub build: Option<BuildSpec>,
    /// A prebuilt image to run instead of (or on top of) a build.
    pub image: Option<String>,
    /// The command to run; otherwise the image's default.
    pub command: Option<String>,
    /// The port the service listens on, if it serves traffic.
    pub port: Option<Port>,
    /// How readiness is checked during a rollout.
    pub health: Health,
    /// Env vars the service declares, required or with a default.
    pub environment: Vec<EnvRequirement>,
    /// How many processes run.
    pub scale: Scale,
    /// How a rollout replaces processes.
    pub deployment: Deployment,
    /// Seconds between SIGTERM and SIGKILL when a process is stopped.
    pub termination_grace_secs: u32,
    /// Request timeout in seconds (not the rollout deadline).
    pub timeout_secs: u32,
}

/// Where a service's source is built from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BuildSpec {
    /// Directory within the app source, e.g. `.`.
    pub path: String,
    /// Build file to use instead of the default `Dockerfile`.
    pub manifest: Option<String>,
}

/// The port a service listens on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Port {
    /// `"http"` or `"https"` when written as `https:3000`; `None` for a bare number.
    pub scheme: Option<String>,
    /// The port number, 1–65535.
    pub number: u16,
}

/// How a service's readiness is checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Health {
    /// HTTP path probed on the service's port.
    pub path: String,
    /// Seconds after start before failures count.
    pub grace_secs: u32,
    /// Seconds between checks.
    pub interval_secs: u32,
    /// Seconds a single check may take; at most the interval.
    pub timeout_secs: u32,
    /// Whether checks are turned off (the process counts as ready once started).
    pub disabled: bool,
}

impl Default for Health {
    fn default() -> Self {
        let interval = DEFAULT_HEALTH_INTERVAL_SECS;
        Self {
            path: "/".to_owned(),
            grace_secs: interval,
            interval_secs: interval,
            timeout_secs: interval - 1,
            disabled: false,
        }
    }
}

/// An env var a service declares in its `environment` list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EnvRequirement {
    /// The variable name.
    pub key: String,
    /// The value used when the release env lacks the key; `None` means required.
    pub default: Option<String>,
}

/// How many processes a service runs, and what each one is given.
///
/// `cpu` and `memory` are what every process of the service reserves: on
/// Kubernetes the container's requests (and memory also its limit), on the
/// local runtime memory is a per-process data limit. Values set by hand
/// with `scale --cpu/--memory` win over these, field by field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Scale {
    /// Number of processes; 0 stops the service.
    pub count: u32,
    /// Millicores each process reserves (1000 is one CPU); `None` (or 0 in
    /// the file) reserves none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<u32>,
    /// MB (MiB) of memory each process reserves and may use at most; `None`
    /// (or 0 in the file) sets no figure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<u32>,
}

impl Default for Scale {
    fn default() -> Self {
        Self {
            count: DEFAULT_SCALE_COUNT,
            cpu: None,
            memory: None,
        }
    }
}

/// Rollout bounds, as percentages of the scale count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Deployment {
    /// Share of the count kept healthy throughout (0–100).
    pub minimum: u32,
    /// Share of the count allowed to run in total, old plus new (100–200).
    pub maximum: u32,
}

impl Default for Deployment {
    fn default() -> Self {
        Self {
            minimum: DEFAULT_DEPLOYMENT_MINIMUM,
            maximum: DEFAULT_DEPLOYMENT_MAXIMUM,
        }
    }
}

/// A required env var that a release does not set.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct MissingEnv {
    /// The service that needs it.
    pub service: String,
    /// The variable name.
    pub key: String,
}

impl fmt::Display for MissingEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "env {} is required by service {}",
            self.key, self.service
        )
    }
}

impl Manifest {
    /// Parses and validates convox.yml text.
    pub fn parse(yaml: &str) -> Result<Self, ManifestError> {
        let root = KeyPath::root();
        if yaml.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::new(
                ManifestErrorKind::TooLarge { len: yaml.len() },
                &root,
                None,
            ));
        }
        if yaml.trim().is_empty() {
            return Err(ManifestError::new(ManifestErrorKind::Empty, &root, None));
        }
        let mut tree: Value = serde_norway::from_str(yaml).map_err(syntax_error)?;
        tree.apply_merge().map_err(syntax_error)?;

        let mut walker = Walker {
            locator: Locator::new(yaml),
            ignored: Vec::new(),
        };
        let top = match tree {
            Value::Mapping(map) => map,
            // A document of nothing but comments.
            Value::Null => return Err(ManifestError::new(ManifestErrorKind::Empty, &root, None)),
            other => {
                return Err(walker.at_top(ManifestErrorKind::TopLevelNotMapping {
                    got: describe(&other),
                }));
            }
        };

        let mut services = None;
        let mut release = None;
        for (key, value) in &top {
            let key = walker.key_str(key, &root)?;
            match key {
                "services" => services = Some(walker.services(value, &root.key("services"))?),
                "release" => release = Some(value),
                _ => walker.ignored.push(key.to_owned()),
            }
        }
        let services = services.ok_or_else(|| walker.at_top(ManifestErrorKind::MissingServices))?;
        let release = match release {
            Some(value) => walker.release(value, &root.key("release"), &services)?,
            None => None,
        };
        Ok(Self {
            services,
            release,
            ignored_keys: walker.ignored,
            source: yaml.to_owned(),
        })
    }

    /// The convox.yml text this manifest was parsed from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The service called `name`, if any.
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.get(name)
    }

    /// Required env vars (declared without a default) that `env` does not set, sorted
    /// by service and then key. An empty value counts as set.
    pub fn missing_env(&self, env: &Env) -> Vec<MissingEnv> {
        let mut missing: Vec<MissingEnv> = self
            .services
            .values()
            .flat_map(|service| {
                service
                    .environment
                    .iter()
                    .filter(|req| req.default.is_none() && !env.contains_key(&req.key))
                    .map(|req| MissingEnv {
                        service: service.name.clone(),
                        key: req.key.clone(),
                    })
            })
            .collect();
        missing.sort();
        missing
    }

    /// The env a process of `service` receives: the release env, plus the service's
    /// declared defaults for keys the release does not set. An unknown service gets
    /// the release env unchanged.
    pub fn env_for(&self, service: &str, env: &Env) -> Env {
        let mut vars = BTreeMap::new();
        if let Some(service) = self.services.get(service) {
            for req in &service.environment {
                if let Some(default) = &req.default {
                    vars.insert(req.key.clone(), default.clone());
                }
            }
        }
        for (key, value) in env.iter() {
            vars.insert(key.to_owned(), value.to_owned());
        }
        // Both sources hold validated keys only.
        Env::from_map(vars).expect("manifest and env keys are validated on the way in")
    }
}

/// Turns a YAML parser error into a positioned manifest error.
fn syntax_error(err: serde_norway::Error) -> ManifestError {
    let at = err.location().map(|loc| Position {
        line: loc.line(),
        column: loc.column(),
    });
    ManifestError::new(
        ManifestErrorKind::Syntax {
            message: strip_positions(&err.to_string()),
        },
        &KeyPath::root(),
        at,
    )
}

/// Removes the parser's ` at line N column M` and ` at position N` phrases, since the
/// position is reported separately.
fn strip_positions(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(i) = rest.find(" at ") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 4..];
        match skip_position(after) {
            Some(remaining) => rest = remaining,
            None => {
                out.push_str(" at ");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// If `text` starts with `line N column M` or `position N`, returns what follows.
fn skip_position(text: &str) -> Option<&str> {
    fn number(text: &str) -> Option<&str> {
        let digits = text.len() - text.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        (digits > 0).then(|| &text[digits..])
    }
    if let Some(rest) = text.strip_prefix("line ") {
        let rest = number(rest)?;
        let rest = rest.strip_prefix(" column ")?;
        number(rest)
    } else {
        number(text.strip_prefix("position ")?)
    }
}

#[cfg(test)]
mod tests;
