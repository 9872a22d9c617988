//! Sealing secrets at rest: AES-256-GCM with a random nonce per value and
//! caller-chosen associated data, so a sealed value copied onto another
//! record (another release, another app) fails to open instead of silently
//! moving secrets. Used by the release service (env snapshots) and the
//! rollout service (specs carrying decrypted env).
//!
//! Sealed layout: `[version=1][12-byte nonce][ciphertext+tag]`.

use std::fmt;
use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;

const VERSION: u8 = 1;
const NONCE_LEN: usize = 12;

/// Problems with a key or a sealed value. Messages never carry plaintext.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The key is not 32 bytes of base64.
    #[error("the key must be 32 bytes, base64-encoded ({0})")]
    BadKey(String),
    /// The key file could not be read or written.
    #[error("key file {path}: {source}")]
    KeyFile {
        /// Which file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A value did not open: wrong key, wrong associated data, or tampered.
    #[error("sealed value could not be opened (wrong key or tampered record)")]
    Open,
}

/// Seals and opens values with one key. Cheap to clone.
#[derive(Clone)]
pub struct Sealer {
    cipher: Aes256Gcm,
    /// HMAC-SHA256(key, [`DERIVE_SALT`]): the pseudo-random key that
    /// [`Sealer::derive_key`] expands (HKDF's extract step), so the sealing
    /// key itself is never used for anything but sealing.
    derive: [u8; 32],
}

/// The label of the extract step of [`Sealer::derive_key`].
const DERIVE_SALT: &[u8] = b"slipway-seal derive v1";

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sealer(..)")
    }
}

impl Sealer {
    /// A sealer from a base64-encoded 32-byte key.
    pub fn from_base64(key: &str) -> Result<Self, SealError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(key.trim())
            .map_err(|e| SealError::BadKey(e.to_string()))?;
        if bytes.len() != 32 {
            return Err(SealError::BadKey(format!("got {} bytes", bytes.len())));
        }
        Ok(Self::from_key(&bytes))
    }

    fn from_key(key: &[u8]) -> Self {
        Self {
            cipher: Aes256Gcm::new_from_slice(key).expect("a 32-byte key"),
            derive: hmac_sha256(key, DERIVE_SALT),
        }
    }

    /// A 32-byte key for another purpose, derived from this sealer's key
    /// (HKDF-SHA256-like: HMAC of `label` under the extracted key). The same
    /// sealing key and label always give the same key; different labels
    /// give unrelated keys, and none reveals the sealing key.
    pub fn derive_key(&self, label: &str) -> [u8; 32] {
        let mut info = label.as_bytes().to_vec();
        info.push(1);
        hmac_sha256(&self.derive, &info)
    }

    /// A sealer with a fresh random key (tests, throwaway stores).
    pub fn generate() -> Self {
        Self::from_key(&Aes256Gcm::generate_key(aes_gcm::aead::OsRng))
    }

    /// Reads the key from `path`, creating it (mode 0600) with a fresh random
    /// key when it does not exist: the embedded rack's zero-setup default.
    pub fn load_or_create(path: &Path) -> Result<Self, SealError> {
        let io_err = |source| SealError::KeyFile {
            path: path.display().to_string(),
            source,
        };
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_base64(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Aes256Gcm::generate_key(aes_gcm::aead::OsRng);
                let text = base64::engine::general_purpose::STANDARD.encode(key);
                if let Some(dir) = path.parent().filter(|d| !d.exists()) {
                    create_private_dir_all(dir).map_err(io_err)?;
                }
                write_private(path, &text).map_err(io_err)?;
                Self::from_base64(&text)
            }
            Err(e) => Err(io_err(e)),
        }
    }

    /// Seals `plaintext`, bound to `aad`.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let sealed = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// Opens a value sealed with `aad`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        if sealed.len() < 1 + NONCE_LEN || sealed[0] != VERSION {
            return Err(SealError::Open);
        }
        let (nonce, body) = sealed[1..].split_at(NONCE_LEN);
        self.cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: body, aad })
            .map_err(|_| SealError::Open)
    }
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    use hmac::Mac as _;
    let mut mac = <hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(key)
        .expect("HMAC takes keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().into()
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

/// A key's missing directories, owner-only (0700).
#[cfg(unix)]
fn create_private_dir_all(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_private_dir_all(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

#[cfg(not(unix))]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_keys_depend_on_the_key_and_the_label() {
        let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let a = Sealer::from_base64(&key).unwrap();
        let b = Sealer::from_base64(&key).unwrap();
        assert_eq!(a.derive_key("tokens"), b.derive_key("tokens"));
        assert_ne!(a.derive_key("tokens"), a.derive_key("other"));
        assert_ne!(
            a.derive_key("tokens"),
            Sealer::generate().derive_key("tokens")
        );
        assert_ne!(a.derive_key("tokens"), [7u8; 32]);
    }

    #[test]
    fn values_open_only_with_their_associated_data() {
        let sealer = Sealer::generate();
        let sealed = sealer.seal(b"RAAAAAAAAAA", b"DB_PASSWORD=hunter2");
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(
            sealer.open(b"RAAAAAAAAAA", &sealed).unwrap(),
            b"DB_PASSWORD=hunter2"
        );
        assert!(matches!(
            sealer.open(b"RBBBBBBBBBB", &sealed),
            Err(SealError::Open)
        ));
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(sealer.open(b"RAAAAAAAAAA", &tampered).is_err());
        assert!(
            Sealer::generate().open(b"RAAAAAAAAAA", &sealed).is_err(),
            "another key"
        );
    }

    #[test]
    fn a_generated_key_file_is_reused_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/seal.key");
        let sealed = Sealer::load_or_create(&path).unwrap().seal(b"a", b"v");
        assert_eq!(
            Sealer::load_or_create(&path)
                .unwrap()
                .open(b"a", &sealed)
                .unwrap(),
            b"v"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
    }

    #[test]
    fn bad_keys_are_refused() {
        assert!(Sealer::from_base64("not base64!").is_err());
        let short = base64::engine::general_purpose::STANDARD.encode([0u8; 16]);
        assert!(
            Sealer::from_base64(&short)
                .unwrap_err()
                .to_string()
                .contains("16 bytes")
        );
    }
}
