//! The `release:` block: a command that runs once per promotion of the
//! release, before any of its processes start, with one service's build,
//! env and definition.
//!
//! ```yaml
//! release:
//!   service: web        # required, a service of this manifest
//!   command: bin/migrate
//!   timeout: 300        # seconds, 1 to 3600; default 300
//! ```

use serde_norway::Value;

use super::super::locate::KeyPath;
use super::super::{ManifestErrorKind, ReleaseCommand, Service};
use super::{Walked, Walker};
use std::collections::BTreeMap;

/// Default `release.timeout`, in seconds.
pub(crate) const DEFAULT_RELEASE_TIMEOUT_SECS: u32 = 300;
/// The longest `release.timeout`, in seconds.
pub(crate) const MAX_RELEASE_TIMEOUT_SECS: u32 = 3600;

impl Walker<'_> {
    /// Reads the `release:` block; `services` must be read already, so the
    /// service it names is checked.
    pub(in super::super) fn release(
        &mut self,
        value: &Value,
        path: &KeyPath,
        services: &BTreeMap<String, Service>,
    ) -> Walked<Option<ReleaseCommand>> {
        let Some(map) = self.mapping(value, path)? else {
            return Ok(None);
        };
        let (mut service, mut command, mut timeout) = (None, None, None);
        for (key, value) in map {
            let name = self.key_str(key, path)?;
            let field = path.key(name);
            match name {
                "service" => {
                    let Some(name) = self.string(value, &field)? else {
                        return Err(self.error(ManifestErrorKind::EmptyValue, &field));
                    };
                    if !services.contains_key(&name) {
                        let known: Vec<&str> = services.keys().map(String::as_str).collect();
                        return Err(self.error(
                            ManifestErrorKind::UnknownService {
                                name,
                                known: known.join(", "),
                            },
                            &field,
                        ));
                    }
                    service = Some((name, field));
                }
                "command" => {
                    command = Some(
                        self.string(value, &field)?
                            .ok_or_else(|| self.error(ManifestErrorKind::EmptyValue, &field))?,
                    );
                }
                "timeout" => timeout = self.whole(value, &field, 1, MAX_RELEASE_TIMEOUT_SECS)?,
                _ => self.ignored.push(field.to_string()),
            }
        }
        let Some((service, _)) = service else {
            return Err(self.error(ManifestErrorKind::Missing { key: "service" }, path));
        };
        let Some(command) = command else {
            return Err(self.error(ManifestErrorKind::Missing { key: "command" }, path));
        };
        Ok(Some(ReleaseCommand {
            service,
            command,
            timeout_secs: timeout.unwrap_or(DEFAULT_RELEASE_TIMEOUT_SECS),
        }))
    }
}

#[cfg(test)]
mod tests {
    use crate::Manifest;

    const SERVICES: &str = "services:\n  web:\n    command: ./web\n";

    fn error(release: &str) -> String {
        Manifest::parse(&format!("{SERVICES}{release}"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn the_release_block_is_read_with_its_default_timeout() {
        let manifest = Manifest::parse(&format!(
            "release:\n  service: web\n  command: bin/migrate --all\n{SERVICES}"
        ))
        .unwrap();
        let release = manifest.release.unwrap();
        assert_eq!(
            (
                release.service.as_str(),
                release.command.as_str(),
                release.timeout_secs
            ),
            ("web", "bin/migrate --all", 300)
        );
        let manifest = Manifest::parse(&format!(
            "{SERVICES}release:\n  service: web\n  command: x\n  timeout: 10\n"
        ))
        .unwrap();
        assert_eq!(manifest.release.unwrap().timeout_secs, 10);
        assert_eq!(Manifest::parse(SERVICES).unwrap().release, None);
    }

    #[test]
    fn mistakes_in_the_release_block_name_their_line() {
        let unknown = error("release:\n  service: worker\n  command: x\n");
        assert!(
            unknown.contains("line 5") && unknown.contains("release.service"),
            "{unknown}"
        );
        assert!(
            unknown.contains("no such service \"worker\" (services: web)"),
            "{unknown}"
        );
        let empty = error("release:\n  service: web\n  command: \"  \"\n");
        assert!(
            empty.contains("line 6") && empty.contains("release.command"),
            "{empty}"
        );
        assert!(empty.contains("must not be empty"), "{empty}");
        let missing = error("release:\n  service: web\n");
        assert!(missing.contains("command is required"), "{missing}");
        for bad in ["0", "3601", "soon"] {
            let timeout = error(&format!(
                "release:\n  service: web\n  command: x\n  timeout: {bad}\n"
            ));
            assert!(
                timeout.contains("line 7") && timeout.contains("from 1 to 3600"),
                "{timeout}"
            );
        }
    }
}
