//! Walks the parsed YAML tree of a convox.yml and builds the typed [`Service`]s.
//!
//! Each field has its own small reader so that every accepted shape, every default and
//! every error message sits next to the others for that field. Keys that are not
//! understood are recorded (as dotted paths) rather than rejected; see the parent
//! module for why.

mod release;

use std::collections::{BTreeMap, BTreeSet};

use serde_norway::{Mapping, Value};

use super::locate::{KeyPath, Locator};
use super::{
    BuildSpec, DEFAULT_HEALTH_INTERVAL_SECS, DEFAULT_TERMINATION_GRACE_SECS, DEFAULT_TIMEOUT_SECS,
    Deployment, EnvRequirement, Health, MAX_CPU_MILLICORES, MAX_ECHO, MAX_MEMORY_MB,
    MAX_SERVICE_NAME_LEN, MIN_MEMORY_MB, ManifestError, ManifestErrorKind, Port, Scale, Service,
};
use crate::env;

/// Describes a YAML value for an error message without dumping large structures.
pub(super) fn describe(value: &Value) -> String {
    match value {
        Value::Null => "nothing".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) if s.chars().count() > MAX_ECHO => {
            let short: String = s.chars().take(MAX_ECHO).collect();
            format!("{:?}", format!("{short}…"))
        }
        Value::String(s) => format!("{s:?}"),
        Value::Sequence(_) => "a list".to_owned(),
        Value::Mapping(_) => "a mapping".to_owned(),
        Value::Tagged(tagged) => format!("a value tagged {}", tagged.tag),
    }
}

/// Whether `name` is a valid service name.
fn valid_service_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && name.len() <= MAX_SERVICE_NAME_LEN
        && !name.ends_with('-')
}

/// Walks the YAML tree, building typed values and positioned errors.
pub(super) struct Walker<'a> {
    pub(super) locator: Locator<'a>,
    pub(super) ignored: Vec<String>,
}

/// Shorthand for the results the walker produces.
type Walked<T> = Result<T, ManifestError>;

impl Walker<'_> {
    /// An error located at `path`.
    fn error(&self, kind: ManifestErrorKind, path: &KeyPath) -> ManifestError {
        ManifestError::new(kind, path, self.locator.find(path))
    }

    /// An error about the document as a whole, pointing at its first line.
    pub(super) fn at_top(&self, kind: ManifestErrorKind) -> ManifestError {
        ManifestError::new(kind, &KeyPath::root(), self.locator.first_content())
    }

    fn expected(&self, expected: &'static str, got: &Value, path: &KeyPath) -> ManifestError {
        self.error(
            ManifestErrorKind::Expected {
                expected,
                got: describe(got),
            },
            path,
        )
    }

    pub(super) fn key_str<'v>(&self, key: &'v Value, parent: &KeyPath) -> Walked<&'v str> {
        key.as_str().ok_or_else(|| {
            self.error(
                ManifestErrorKind::NonStringKey { got: describe(key) },
                parent,
            )
        })
    }

    /// The entries of a mapping; `null` (a key with nothing under it) counts as empty.
    fn mapping<'v>(&self, value: &'v Value, path: &KeyPath) -> Walked<Option<&'v Mapping>> {
        match value {
            Value::Null => Ok(None),
            Value::Mapping(map) => Ok(Some(map)),
            other => Err(self.expected("a mapping", other, path)),
        }
    }

    /// An optional non-empty string.
    fn string(&self, value: &Value, path: &KeyPath) -> Walked<Option<String>> {
        match value {
            Value::Null => Ok(None),
            Value::String(s) if s.trim().is_empty() => {
                Err(self.error(ManifestErrorKind::EmptyValue, path))
            }
            Value::String(s) => Ok(Some(s.clone())),
            other => Err(self.expected("a string", other, path)),
        }
    }

    /// An optional whole number in `min..=max`; numeric strings are accepted too.
    fn whole(&self, value: &Value, path: &KeyPath, min: u32, max: u32) -> Walked<Option<u32>> {
        let number = match value {
            Value::Null => return Ok(None),
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.trim().parse::<u64>().ok(),
            _ => None,
        };
        match number {
            Some(n) if n >= u64::from(min) && n <= u64::from(max) => {
                Ok(Some(u32::try_from(n).expect("bounded by a u32 maximum")))
            }
            _ => {
                let range = if max == u32::MAX {
                    format!("of at least {min}")
                } else {
                    format!("from {min} to {max}")
                };
                Err(self.error(
                    ManifestErrorKind::OutOfRange {
                        range,
                        got: describe(value),
                    },
                    path,
                ))
            }
        }
    }

    fn bool(&self, value: &Value, path: &KeyPath) -> Walked<Option<bool>> {
        match value {
            Value::Null => Ok(None),
            Value::Bool(b) => Ok(Some(*b)),
            other => Err(self.expected("true or false", other, path)),
        }
    }

    pub(super) fn services(
        &mut self,
        value: &Value,
        path: &KeyPath,
    ) -> Walked<BTreeMap<String, Service>> {
        let Some(map) = self.mapping(value, path)? else {
            return Err(self.error(ManifestErrorKind::NoServices, path));
        };
        if map.is_empty() {
            return Err(self.error(ManifestErrorKind::NoServices, path));
        }
        let mut services = BTreeMap::new();
        for (key, value) in map {
            let name = self.key_str(key, path)?;
            let service_path = path.key(name);
            if !valid_service_name(name) {
                let shown = if name.chars().count() > MAX_ECHO {
                    let short: String = name.chars().take(MAX_ECHO).collect();
                    format!("{short}…")
                } else {
                    name.to_owned()
                };
                return Err(self.error(
                    ManifestErrorKind::InvalidServiceName { name: shown },
                    &service_path,
                ));
            }
            let service = self.service(name, value, &service_path)?;
            services.insert(name.to_owned(), service);
        }
        Ok(services)
    }

    fn service(&mut self, name: &str, value: &Value, path: &KeyPath) -> Walked<Service> {
        let mut service = Service {
            name: name.to_owned(),
            build: None,
            image: None,
            command: None,
            port: None,
            health: Health::default(),
            environment: Vec::new(),
            scale: Scale::default(),
            deployment: Deployment::default(),
            termination_grace_secs: DEFAULT_TERMINATION_GRACE_SECS,
            timeout_secs: DEFAULT_TIMEOUT_SECS,
        };
        if let Some(map) = self.mapping(value, path)? {
            for (key, value) in map {
                let key = self.key_str(key, path)?;
                let field = path.key(key);
                match key {
                    "build" => service.build = self.build(value, &field)?,
                    "image" => service.image = self.string(value, &field)?,
                    "command" => service.command = self.string(value, &field)?,
                    "port" => service.port = self.port(value, &field)?,
                    "health" => service.health = self.health(value, &field)?,
                    "environment" => service.environment = self.environment(value, &field)?,
                    "scale" => service.scale = self.scale(value, &field)?,
                    "deployment" => service.deployment = self.deployment(value, &field)?,
                    "termination" => {
                        service.termination_grace_secs = self.termination(value, &field)?;
                    }
                    "timeout" => {
                        if let Some(secs) = self.whole(value, &field, 1, u32::MAX)? {
                            service.timeout_secs = secs;
                        }
                    }
                    _ => self.ignored.push(field.to_string()),
                }
            }
        }
        if service.build.is_none() && service.image.is_none() && service.command.is_none() {
            return Err(self.error(ManifestErrorKind::NothingToRun, path));
        }
        Ok(service)
    }

    fn build(&mut self, value: &Value, path: &KeyPath) -> Walked<Option<BuildSpec>> {
        const EXPECTED: &str = "a path or a mapping with path and manifest";
        match value {
            Value::Null => Ok(None),
            Value::String(_) => Ok(self.string(value, path)?.map(|path| BuildSpec {
                path,
                manifest: None,
            })),
            Value::Mapping(map) => {
                let mut spec = BuildSpec {
                    path: ".".to_owned(),
                    manifest: None,
                };
                for (key, value) in map {
                    let key = self.key_str(key, path)?;
                    let field = path.key(key);
                    match key {
                        "path" => {
                            if let Some(p) = self.string(value, &field)? {
                                spec.path = p;
                            }
                        }
                        "manifest" => spec.manifest = self.string(value, &field)?,
                        _ => self.ignored.push(field.to_string()),
                    }
                }
                Ok(Some(spec))
            }
            other => Err(self.expected(EXPECTED, other, path)),
        }
    }

    fn port(&self, value: &Value, path: &KeyPath) -> Walked<Option<Port>> {
        let invalid = || {
            self.error(
                ManifestErrorKind::InvalidPort {
                    got: describe(value),
                },
                path,
            )
        };
        let number = |n: u64| u16::try_from(n).ok().filter(|n| *n > 0);
        match value {
            Value::Null => Ok(None),
            Value::Number(n) => {
                let number = n.as_u64().and_then(number).ok_or_else(invalid)?;
                Ok(Some(Port {
                    scheme: None,
                    number,
                }))
            }
            Value::String(s) => {
                let s = s.trim();
                let (scheme, digits) = match s.split_once(':') {
                    Some((scheme @ ("http" | "https"), digits)) => {
                        (Some(scheme.to_owned()), digits)
                    }
                    Some(_) => return Err(invalid()),
                    None => (None, s),
                };
                let number = digits
                    .parse::<u64>()
                    .ok()
                    .and_then(number)
                    .ok_or_else(invalid)?;
                Ok(Some(Port { scheme, number }))
            }
            _ => Err(invalid()),
        }
    }

    fn health(&mut self, value: &Value, path: &KeyPath) -> Walked<Health> {
        let mut health = Health::default();
        let (mut given_path, mut grace, mut interval, mut timeout) = (None, None, None, None);
        let mut disabled = None;
        match value {
            Value::Null => return Ok(health),
            Value::String(_) => given_path = Some((value, path.clone())),
            Value::Mapping(map) => {
                for (key, value) in map {
                    let key = self.key_str(key, path)?;
                    let field = path.key(key);
                    match key {
                        "path" => given_path = Some((value, field)),
                        "grace" => grace = self.whole(value, &field, 0, u32::MAX)?,
                        "interval" => interval = self.whole(value, &field, 1, u32::MAX)?,
                        "timeout" => {
                            timeout = self.whole(value, &field, 1, u32::MAX)?.map(|t| (t, field))
                        }
                        "disable" => disabled = self.bool(value, &field)?,
                        _ => self.ignored.push(field.to_string()),
                    }
                }
            }
            other => {
                return Err(self.expected(
                    "a path or a mapping with path, grace, interval, timeout and disable",
                    other,
                    path,
                ));
            }
        }
        if let Some((value, field)) = given_path
            && let Some(p) = self.string(value, &field)?
        {
            if !p.starts_with('/') {
                return Err(self.error(
                    ManifestErrorKind::InvalidHealthPath {
                        got: describe(value),
                    },
                    &field,
                ));
            }
            health.path = p;
        }
        let interval = interval.unwrap_or(DEFAULT_HEALTH_INTERVAL_SECS);
        health.interval_secs = interval;
        health.grace_secs = grace.unwrap_or(interval);
        health.timeout_secs = match timeout {
            Some((timeout, field)) => {
                if timeout > interval {
                    return Err(self.error(
                        ManifestErrorKind::HealthTimeout { timeout, interval },
                        &field,
                    ));
                }
                timeout
            }
            None => interval.saturating_sub(1).max(1),
        };
        health.disabled = disabled.unwrap_or(false);
        Ok(health)
    }

    fn environment(&self, value: &Value, path: &KeyPath) -> Walked<Vec<EnvRequirement>> {
        let items = match value {
            Value::Null => return Ok(Vec::new()),
            Value::Sequence(items) => items,
            other => return Err(self.expected("a list of KEY or KEY=default", other, path)),
        };
        let mut seen = BTreeSet::new();
        let mut requirements = Vec::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            let item_path = path.index(index);
            let Value::String(text) = item else {
                return Err(self.expected("a string KEY or KEY=default", item, &item_path));
            };
            let (key, default) = match text.split_once('=') {
                Some((key, default)) => (key, Some(default.to_owned())),
                None => (text.as_str(), None),
            };
            env::validate_key(key).map_err(|error| {
                self.error(ManifestErrorKind::InvalidEnvKey { error }, &item_path)
            })?;
            if !seen.insert(key.to_owned()) {
                return Err(self.error(
                    ManifestErrorKind::DuplicateEnvKey {
                        key: key.to_owned(),
                    },
                    &item_path,
                ));
            }
            requirements.push(EnvRequirement {
                key: key.to_owned(),
                default,
            });
        }
        Ok(requirements)
    }

    fn scale(&mut self, value: &Value, path: &KeyPath) -> Walked<Scale> {
        let mut scale = Scale::default();
        let Some(map) = self.mapping(value, path)? else {
            return Ok(scale);
        };
        for (key, value) in map {
            let key = self.key_str(key, path)?;
            let field = path.key(key);
            match key {
                "count" => {
                    if let Some(count) = self.count(value, &field)? {
                        scale.count = count;
                    }
                }
                "cpu" => {
                    let hint = " (1000 is one CPU), or 0 for none";
                    scale.cpu =
                        self.resource(value, &field, "millicores", 1, MAX_CPU_MILLICORES, hint)?;
                }
                "memory" => {
                    let hint = " (MiB), or 0 for none";
                    scale.memory =
                        self.resource(value, &field, "MB", MIN_MEMORY_MB, MAX_MEMORY_MB, hint)?;
                }
                // targets (autoscaling), …: meaningful to Convox, not to Slipway.
                _ => self.ignored.push(field.to_string()),
            }
        }
        Ok(scale)
    }

    /// `scale.cpu` or `scale.memory`: a whole number in `min..=max`, or 0
    /// (like nothing) for none. Numeric strings are accepted, as for every
    /// number; units (`512Mi`, `0.5`) are not, since the unit is fixed.
    fn resource(
        &self,
        value: &Value,
        path: &KeyPath,
        unit: &'static str,
        min: u32,
        max: u32,
        hint: &'static str,
    ) -> Walked<Option<u32>> {
        let number = match value {
            Value::Null => return Ok(None),
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.trim().parse::<u64>().ok(),
            _ => None,
        };
        match number {
            Some(0) => Ok(None),
            Some(n) if n >= u64::from(min) && n <= u64::from(max) => {
                Ok(Some(u32::try_from(n).expect("bounded by a u32 maximum")))
            }
            _ => Err(self.error(
                ManifestErrorKind::Resource {
                    unit,
                    min,
                    max,
                    hint,
                    got: describe(value),
                },
                path,
            )),
        }
    }

    /// `count` is a number, or a Convox autoscaling range `min-max`, whose minimum is
    /// used since Slipway does not autoscale.
    fn count(&self, value: &Value, path: &KeyPath) -> Walked<Option<u32>> {
        if let Value::String(s) = value
            && let Some((low, high)) = s.split_once('-')
        {
            if let (Ok(low), Ok(high)) = (low.trim().parse::<u32>(), high.trim().parse::<u32>())
                && low <= high
            {
                return Ok(Some(low));
            }
            return Err(self.error(
                ManifestErrorKind::OutOfRange {
                    range: "of at least 0, or a range like 1-3".to_owned(),
                    got: describe(value),
                },
                path,
            ));
        }
        self.whole(value, path, 0, u32::MAX)
    }

    fn deployment(&mut self, value: &Value, path: &KeyPath) -> Walked<Deployment> {
        let mut deployment = Deployment::default();
        let Some(map) = self.mapping(value, path)? else {
            return Ok(deployment);
        };
        for (key, value) in map {
            let key = self.key_str(key, path)?;
            let field = path.key(key);
            match key {
                "minimum" => {
                    if let Some(min) = self.whole(value, &field, 0, 100)? {
                        deployment.minimum = min;
                    }
                }
                "maximum" => {
                    if let Some(max) = self.whole(value, &field, 100, 200)? {
                        deployment.maximum = max;
                    }
                }
                _ => self.ignored.push(field.to_string()),
            }
        }
        if deployment.minimum == 100 && deployment.maximum == 100 {
            return Err(self.error(ManifestErrorKind::DeploymentStuck, path));
        }
        Ok(deployment)
    }

    fn termination(&mut self, value: &Value, path: &KeyPath) -> Walked<u32> {
        let mut grace = DEFAULT_TERMINATION_GRACE_SECS;
        let Some(map) = self.mapping(value, path)? else {
            return Ok(grace);
        };
        for (key, value) in map {
            let key = self.key_str(key, path)?;
            let field = path.key(key);
            if key == "grace" {
                if let Some(secs) = self.whole(value, &field, 0, u32::MAX)? {
                    grace = secs;
                }
            } else {
                self.ignored.push(field.to_string());
            }
        }
        Ok(grace)
    }
}
