//! Env snapshots sealed at rest with AES-256-GCM. Each snapshot is bound to
//! its release id (associated data), so a sealed env copied onto another
//! row fails to open instead of silently moving secrets between releases.
//!
//! Layout of a sealed value: `[version=1][12-byte random nonce][ciphertext+tag]`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use slipway_domain::Env;

const VERSION: u8 = 1;
const NONCE_LEN: usize = 12;

/// Problems with the key or with a sealed value. Messages never carry
/// plaintext.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The configured key is not 32 bytes of base64.
    #[error("the env encryption key must be 32 bytes, base64-encoded ({0})")]
    BadKey(String),
    /// The key file could not be read or written.
    #[error("env key file {path}: {source}")]
    KeyFile {
        /// Which file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A sealed env did not open: wrong key, or the row was tampered with.
    #[error("env snapshot of {0} could not be decrypted (wrong key or tampered row)")]
    Open(String),
}

/// Seals and opens env snapshots.
#[derive(Clone)]
pub struct EnvCipher {
    cipher: Aes256Gcm,
}

impl fmt::Debug for EnvCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EnvCipher(..)")
    }
}

impl EnvCipher {
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

    /// Reads the key from `path`, creating it (mode 0600) with a fresh random
    /// key when it does not exist: the embedded rack's zero-setup default.
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

    /// Seals `env` for release `release_id`.
    pub fn seal(&self, release_id: &str, env: &Env) -> Vec<u8> {
        let plaintext = serde_json::to_vec(env.as_map()).expect("a string map always serialises");
        let nonce_bytes: [u8; NONCE_LEN] = rand::random();
        let sealed = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce_bytes),
                Payload {
                    msg: &plaintext,
                    aad: release_id.as_bytes(),
                },
            )
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(&sealed);
        out
    }

    /// Opens a value sealed for `release_id`.
    pub fn open(&self, release_id: &str, sealed: &[u8]) -> Result<Env, CryptoError> {
        let fail = || CryptoError::Open(release_id.to_owned());
        if sealed.len() < 1 + NONCE_LEN || sealed[0] != VERSION {
            return Err(fail());
        }
        let (nonce, body) = sealed[1..].split_at(NONCE_LEN);
        let plaintext = self
            .cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: body,
                    aad: release_id.as_bytes(),
                },
            )
            .map_err(|_| fail())?;
        let map: BTreeMap<String, String> =
            serde_json::from_slice(&plaintext).map_err(|_| fail())?;
        Env::from_map(map).map_err(|_| fail())
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
    fn the_generated_key_is_reused_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("env.key");
        let first = EnvCipher::load_or_create(&path).unwrap();
        let sealed = first.seal("RAAAAAAAAAA", &env());
        let second = EnvCipher::load_or_create(&path).unwrap();
        assert_eq!(second.open("RAAAAAAAAAA", &sealed).unwrap(), env());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
    }

    #[test]
    fn bad_keys_are_refused() {
        assert!(EnvCipher::from_base64("not base64!").is_err());
        let short = base64::engine::general_purpose::STANDARD.encode([0u8; 16]);
        let err = EnvCipher::from_base64(&short).unwrap_err().to_string();
        assert!(err.contains("16 bytes"), "{err}");
    }

    #[test]
    fn a_tampered_value_does_not_open() {
        let cipher =
            EnvCipher::from_base64(&base64::engine::general_purpose::STANDARD.encode([7u8; 32]))
                .unwrap();
        let mut sealed = cipher.seal("RAAAAAAAAAA", &env());
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert!(cipher.open("RAAAAAAAAAA", &sealed).is_err());
    }
}
