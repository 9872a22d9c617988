//! Specs sealed at rest with AES-256-GCM. A spec carries the release's
//! decrypted env, so the rollout service must not store it in plain text
//! (`rollouts.target_spec`/`fallback_spec`, `local_apps.spec`). Each sealed
//! spec is bound to its app (associated data): copied onto another app's
//! row, it fails to open instead of moving secrets between apps.
//!
//! Stored form: `sealed1:` + base64 of `[12-byte random nonce][ciphertext+tag]`
//! (the columns are TEXT). The same scheme as the release service's env
//! snapshots, with its own key.

use std::fmt;
use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;

const PREFIX: &str = "sealed1:";
const NONCE_LEN: usize = 12;

/// Problems with the key or a sealed value. Messages never carry plaintext.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The configured key is not 32 bytes of base64.
    #[error("the spec encryption key must be 32 bytes, base64-encoded ({0})")]
    BadKey(String),
    /// The key file could not be read or written.
    #[error("spec key file {path}: {source}")]
    KeyFile {
        /// Which file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A sealed spec did not open: wrong key, or the row was tampered with.
    #[error("stored spec of app {0} could not be decrypted (wrong key or tampered row)")]
    Open(String),
}

/// Seals and opens stored specs. Cheap to clone.
#[derive(Clone)]
pub struct SpecCipher {
    cipher: Aes256Gcm,
}

impl fmt::Debug for SpecCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SpecCipher(..)")
    }
}

impl SpecCipher {
    /// A cipher from a base64-encoded 32-byte key.
    pub fn from_base64(key: &str) -> Result<Self, CryptoError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(key.trim())
            .map_err(|e| CryptoError::BadKey(e.to_string()))?;
        if bytes.len() != 32 {
            return Err(CryptoError::BadKey(format!("got {} bytes", bytes.len())));
        }
        Ok(Self {
            cipher: Aes256Gcm::new_from_slice(&bytes).expect("length checked above"),
        })
    }

    /// A cipher with a fresh random key (tests, throwaway stores).
    pub fn generate() -> Self {
        Self {
            cipher: Aes256Gcm::new(&Aes256Gcm::generate_key(aes_gcm::aead::OsRng)),
        }
    }

    /// Reads the key from `path`, creating it (mode 0600) with a fresh
    /// random key when it does not exist: the embedded rack's default.
    pub fn load_or_create(path: &Path) -> Result<Self, CryptoError> {
        let io_err = |source| CryptoError::KeyFile {
            path: path.display().to_string(),
            source,
        };
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_base64(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Aes256Gcm::generate_key(aes_gcm::aead::OsRng);
                let text = base64::engine::general_purpose::STANDARD.encode(key);
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(io_err)?;
                }
                write_private(path, &text).map_err(io_err)?;
                Self::from_base64(&text)
            }
            Err(e) => Err(io_err(e)),
        }
    }

    /// Seals the spec JSON of `app`.
    pub fn seal(&self, app: &str, json: &str) -> String {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let sealed = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: json.as_bytes(),
                    aad: app.as_bytes(),
                },
            )
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        let mut bytes = Vec::with_capacity(NONCE_LEN + sealed.len());
        bytes.extend_from_slice(&nonce);
        bytes.extend_from_slice(&sealed);
        format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        )
    }

    /// Opens a stored spec of `app`. A row written before specs were sealed
    /// (plain JSON) is returned as is; the next write seals it.
    pub fn open(&self, app: &str, stored: &str) -> Result<String, CryptoError> {
        let fail = || CryptoError::Open(app.to_owned());
        let Some(encoded) = stored.strip_prefix(PREFIX) else {
            if stored.starts_with('{') {
                return Ok(stored.to_owned());
            }
            return Err(fail());
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| fail())?;
        if bytes.len() < NONCE_LEN {
            return Err(fail());
        }
        let (nonce, body) = bytes.split_at(NONCE_LEN);
        let plain = self
            .cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: body,
                    aad: app.as_bytes(),
                },
            )
            .map_err(|_| fail())?;
        String::from_utf8(plain).map_err(|_| fail())
    }
}

#[cfg(unix)]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)
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
        assert_eq!(cipher.open("shop", "{\"x\":1}").unwrap(), "{\"x\":1}");
        assert!(SpecCipher::from_base64("c2hvcnQ=").is_err());
    }
}
