//! Env snapshots sealed at rest (through `slipway_seal`, AES-256-GCM). Each
//! snapshot is bound to its release id, so a sealed env copied onto another
//! row fails to open instead of silently moving secrets between releases.
//! The plaintext is the env as a JSON object, so any value survives.

use std::collections::BTreeMap;
use std::path::Path;

use slipway_domain::Env;
use slipway_seal::{SealError, Sealer};

/// Problems with the key or with a sealed value. Messages never carry
/// plaintext.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The env key is unusable.
    #[error("env encryption key: {0}")]
    Key(#[source] SealError),
    /// A sealed env did not open: wrong key, or the row was tampered with.
    #[error("env snapshot of {0} could not be decrypted (wrong key or tampered row)")]
    Open(String),
    /// Another sealed secret (a webhook URL or key) did not open.
    #[error("sealed {0} could not be decrypted (wrong key or tampered row)")]
    OpenSecret(String),
}

/// Seals and opens env snapshots.
#[derive(Clone, Debug)]
pub struct EnvCipher {
    sealer: Sealer,
}

impl EnvCipher {
    /// A cipher from a base64-encoded 32-byte key.
    pub fn from_base64(key: &str) -> Result<Self, CryptoError> {
        Sealer::from_base64(key)
            .map(|sealer| Self { sealer })
            .map_err(CryptoError::Key)
    }

    /// Reads the key from `path`, creating it (mode 0600) with a fresh random
    /// key when it does not exist: the embedded rack's zero-setup default.
    pub fn load_or_create(path: &Path) -> Result<Self, CryptoError> {
        Sealer::load_or_create(path)
            .map(|sealer| Self { sealer })
            .map_err(CryptoError::Key)
    }

    /// Seals `env` for release `release_id`.
    pub fn seal(&self, release_id: &str, env: &Env) -> Vec<u8> {
        let plaintext = serde_json::to_vec(env.as_map()).expect("a string map always serialises");
        self.sealer.seal(release_id.as_bytes(), &plaintext)
    }

    /// A 32-byte key for `label`, derived from the env key (see
    /// `Sealer::derive_key`): the same on every replica sharing the key.
    pub fn derive_key(&self, label: &str) -> [u8; 32] {
        self.sealer.derive_key(label)
    }

    /// Opens a value sealed for `release_id`.
    pub fn open(&self, release_id: &str, sealed: &[u8]) -> Result<Env, CryptoError> {
        let fail = || CryptoError::Open(release_id.to_owned());
        let plaintext = self
            .sealer
            .open(release_id.as_bytes(), sealed)
            .map_err(|_| fail())?;
        let map: BTreeMap<String, String> =
            serde_json::from_slice(&plaintext).map_err(|_| fail())?;
        Env::from_map(map).map_err(|_| fail())
    }

    /// Seals a secret that is not an env (a webhook URL or signing key),
    /// bound to `context` (`webhook-url:W…`, `webhook-key:K…`; never a
    /// release id, so no sealed value opens in another role).
    pub fn seal_secret(&self, context: &str, plaintext: &[u8]) -> Vec<u8> {
        self.sealer.seal(context.as_bytes(), plaintext)
    }

    /// Opens a value sealed by [`EnvCipher::seal_secret`] for `context`.
    pub fn open_secret(&self, context: &str, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.sealer
            .open(context.as_bytes(), sealed)
            .map_err(|_| CryptoError::OpenSecret(context.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Env {
        Env::parse_wire("DB_PASSWORD=hunter2\nFOO=bar").unwrap()
    }

    #[test]
    fn sealed_env_opens_only_for_its_release() {
        let dir = tempfile::tempdir().unwrap();
        let cipher = EnvCipher::load_or_create(&dir.path().join("env.key")).unwrap();
        let sealed = cipher.seal("RAAAAAAAAAA", &env());
        assert!(
            !sealed.windows(7).any(|w| w == b"hunter2"),
            "plaintext leaked into the sealed value"
        );
        assert_eq!(cipher.open("RAAAAAAAAAA", &sealed).unwrap(), env());
        let err = cipher.open("RBBBBBBBBBB", &sealed).unwrap_err().to_string();
        assert!(
            err.contains("RBBBBBBBBBB") && !err.contains("hunter2"),
            "{err}"
        );
    }

    #[test]
    fn bad_keys_are_refused_with_the_reason() {
        let err = EnvCipher::from_base64("c2hvcnQ=").unwrap_err().to_string();
        assert!(
            err.contains("env encryption key") && err.contains("5 bytes"),
            "{err}"
        );
    }
}
