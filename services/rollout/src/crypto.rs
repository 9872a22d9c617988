//! Specs sealed at rest. A spec carries the release's decrypted env, so the
//! rollout service never stores it in plain text (`rollouts.target_spec`/
//! `fallback_spec`, `local_apps.spec`). Each sealed spec is bound to its app:
//! copied onto another app's row, it fails to open.
//!
//! Stored form (the columns are TEXT): `sealed1:` + base64 of the
//! `slipway_seal` layout. Anything else is refused, plain JSON included.

use std::path::Path;

use base64::Engine as _;
use slipway_seal::{SealError, Sealer};

const PREFIX: &str = "sealed1:";

/// Problems with the key or a sealed value. Messages never carry plaintext.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The spec key is unusable.
    #[error("spec encryption key: {0}")]
    Key(#[source] SealError),
    /// A sealed spec did not open: wrong key, or the row was tampered with.
    #[error("stored spec of app {0} could not be decrypted (wrong key or tampered row)")]
    Open(String),
}

/// Seals and opens stored specs. Cheap to clone.
#[derive(Clone, Debug)]
pub struct SpecCipher {
    sealer: Sealer,
}

impl SpecCipher {
    /// A cipher from a base64-encoded 32-byte key.
    pub fn from_base64(key: &str) -> Result<Self, CryptoError> {
        Sealer::from_base64(key)
            .map(|sealer| Self { sealer })
            .map_err(CryptoError::Key)
    }

    /// A cipher with a fresh random key (tests, throwaway stores).
    pub fn generate() -> Self {
        Self {
            sealer: Sealer::generate(),
        }
    }

    /// Reads the key from `path`, creating it (mode 0600) when missing.
    pub fn load_or_create(path: &Path) -> Result<Self, CryptoError> {
        Sealer::load_or_create(path)
            .map(|sealer| Self { sealer })
            .map_err(CryptoError::Key)
    }

    /// Seals the spec JSON of `app`.
    pub fn seal(&self, app: &str, json: &str) -> String {
        let sealed = self.sealer.seal(app.as_bytes(), json.as_bytes());
        format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode(sealed)
        )
    }

    /// Opens a stored spec of `app`.
    pub fn open(&self, app: &str, stored: &str) -> Result<String, CryptoError> {
        let fail = || CryptoError::Open(app.to_owned());
        let encoded = stored.strip_prefix(PREFIX).ok_or_else(fail)?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| fail())?;
        let plain = self
            .sealer
            .open(app.as_bytes(), &bytes)
            .map_err(|_| fail())?;
        String::from_utf8(plain).map_err(|_| fail())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_specs_open_only_for_their_app_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spec.key");
        let cipher = SpecCipher::load_or_create(&path).unwrap();
        let sealed = cipher.seal("shop", r#"{"env":{"DB_PASSWORD":"hunter2"}}"#);
        assert!(!sealed.contains("hunter2") && sealed.starts_with(PREFIX));
        let again = SpecCipher::load_or_create(&path).unwrap();
        assert!(again.open("shop", &sealed).unwrap().contains("hunter2"));
        assert!(again.open("other", &sealed).is_err());
        assert!(SpecCipher::generate().open("shop", &sealed).is_err());
        assert!(
            cipher.open("shop", "{\"x\":1}").is_err(),
            "plain rows are refused"
        );
        assert!(SpecCipher::from_base64("c2hvcnQ=").is_err());
    }
}
