//! HTTPS for the gateway: rustls (ring) with a configured certificate and
//! key, or a self-signed certificate generated once into the data directory
//! (as Convox racks do) so that it stays the same across restarts and a
//! client can trust it with `SLIPWAY_CA_FILE`. Plain HTTP is only allowed on
//! a loopback address or with `--insecure-http`.
//!
//! Handshakes run on each connection's own task in the serve loop
//! (`serve.rs`), so a client that stalls mid-handshake never holds up
//! accepting; websockets upgrade over the TLS stream like any other
//! HTTP/1.1 connection.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Transport settings of the HTTP API (flattened into the gateway's and the
/// rack's `Config`).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct TlsArgs {
    /// PEM certificate chain to serve HTTPS with (needs --tls-key).
    #[arg(long, env = "SLIPWAY_TLS_CERT", value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "SLIPWAY_TLS_KEY", value_name = "PEM")]
    pub tls_key: Option<PathBuf>,

    /// Serve HTTPS with a self-signed certificate generated once into
    /// `<data-dir>/tls/` (clients trust it with SLIPWAY_CA_FILE).
    #[arg(long, env = "SLIPWAY_TLS_SELF_SIGNED", value_parser = clap::builder::BoolishValueParser::new())]
    pub tls_self_signed: bool,

    /// Extra host names or IP addresses the self-signed certificate is
    /// valid for (localhost, 127.0.0.1, ::1 and the listen address always are).
    #[arg(
        long = "tls-san",
        env = "SLIPWAY_TLS_SANS",
        value_delimiter = ',',
        value_name = "NAME"
    )]
    pub tls_sans: Vec<String>,

    /// Serve plain HTTP on a non-loopback address (credentials then cross
    /// the network in the clear; only behind a TLS-terminating proxy).
    #[arg(long, env = "SLIPWAY_INSECURE_HTTP", value_parser = clap::builder::BoolishValueParser::new())]
    pub insecure_http: bool,
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file could not be read or parsed.
    #[error("{what} {path}: {reason}")]
    File {
        /// What the file should hold.
        what: &'static str,
        /// The file.
        path: String,
        /// Why it is unusable.
        reason: String,
    },
    /// The self-signed certificate could not be generated or stored.
    #[error("self-signed certificate in {dir}: {reason}")]
    SelfSigned {
        /// The directory it lives in.
        dir: String,
        /// What failed.
        reason: String,
    },
    /// rustls refused the certificate and key.
    #[error("certificate and key do not form a usable TLS identity: {0}")]
    Config(#[from] rustls::Error),
}

impl TlsArgs {
    /// Whether HTTPS is configured.
    pub fn enabled(&self) -> bool {
        self.tls_cert.is_some() || self.tls_self_signed
    }

    /// Checks the combination against the listen address, without I/O.
    pub fn validate(&self, listen: SocketAddr) -> Result<(), String> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) | (None, Some(_)) => {
                return Err(
                    "--tls-cert and --tls-key (SLIPWAY_TLS_CERT, SLIPWAY_TLS_KEY) go together"
                        .into(),
                );
            }
            (Some(_), Some(_)) if self.tls_self_signed => {
                return Err("--tls-self-signed conflicts with --tls-cert/--tls-key".into());
            }
            _ => {}
        }
        // A missing file is a setting error (exit 64), not a failure later.
        for (flag, path) in [("--tls-cert", &self.tls_cert), ("--tls-key", &self.tls_key)] {
            if let Some(path) = path
                && !path.is_file()
            {
                return Err(format!("{flag} {}: no such file", path.display()));
            }
        }
        if self.enabled() && self.insecure_http {
            return Err("--insecure-http conflicts with --tls-cert/--tls-self-signed".into());
        }
        if !self.enabled() && !self.insecure_http && !listen.ip().is_loopback() {
            return Err(format!(
                "refusing plain HTTP on non-loopback {listen}: pass --tls-cert/--tls-key, --tls-self-signed, or --insecure-http"
            ));
        }
        Ok(())
    }

    /// The rustls server configuration, or `None` for plain HTTP. A
    /// self-signed certificate is created in `<data_dir>/tls/` on first use
    /// and read back afterwards.
    pub fn server_config(
        &self,
        data_dir: &Path,
        listen: SocketAddr,
    ) -> Result<Option<Arc<ServerConfig>>, TlsError> {
        let (certs, key) = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => (read_certs(cert)?, read_key(key)?),
            _ if self.tls_self_signed => {
                let (cert, key) = self_signed(&data_dir.join("tls"), listen, &self.tls_sans)?;
                (read_certs(&cert)?, read_key(&key)?)
            }
            _ => return Ok(None),
        };
        let mut config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_no_client_auth()
                .with_single_cert(certs, key)?;
        // The gateway speaks HTTP/1.1 only (as the real rack does).
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Some(Arc::new(config)))
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let failed = |reason: String| TlsError::File {
        what: "certificate",
        path: path.display().to_string(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| failed(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| failed(e.to_string()))?;
    if certs.is_empty() {
        return Err(failed("no PEM certificate in it".into()));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::File {
        what: "private key",
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// The paths of the persisted self-signed certificate and key in `dir`,
/// generating them when absent. An existing pair is reused as is, so
/// clients that trust it keep working across restarts.
pub fn self_signed(
    dir: &Path,
    listen: SocketAddr,
    extra_names: &[String],
) -> Result<(PathBuf, PathBuf), TlsError> {
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    if cert_path.exists() && key_path.exists() {
        return Ok((cert_path, key_path));
    }
    let failed = |reason: String| TlsError::SelfSigned {
        dir: dir.display().to_string(),
        reason,
    };
    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    if !listen.ip().is_unspecified() && !listen.ip().is_loopback() {
        names.push(listen.ip().to_string());
    }
    for name in extra_names
        .iter()
        .map(|n| n.trim())
        .filter(|n| !n.is_empty())
    {
        if !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
    }
    let mut params =
        rcgen::CertificateParams::new(names).map_err(|e| failed(format!("bad name: {e}")))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "slipway rack (self-signed)");
    let key = rcgen::KeyPair::generate().map_err(|e| failed(e.to_string()))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| failed(e.to_string()))?;
    std::fs::create_dir_all(dir).map_err(|e| failed(format!("create: {e}")))?;
    write_private(&key_path, key.serialize_pem().as_bytes())
        .map_err(|e| failed(format!("write {}: {e}", key_path.display())))?;
    std::fs::write(&cert_path, cert.pem())
        .map_err(|e| failed(format!("write {}: {e}", cert_path.display())))?;
    tracing::info!(cert = %cert_path.display(), "generated a self-signed TLS certificate");
    Ok((cert_path, key_path))
}

/// Writes `data` to `path` readable by the owner only.
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> TlsArgs {
        TlsArgs::default()
    }

    #[test]
    fn plain_http_only_on_loopback_or_when_asked() {
        let public: SocketAddr = "0.0.0.0:5443".parse().unwrap();
        let err = args().validate(public).unwrap_err();
        assert!(err.contains("refusing plain HTTP"), "{err}");
        assert!(!err.contains('\n'));
        args().validate("127.0.0.1:5443".parse().unwrap()).unwrap();
        args().validate("[::1]:5443".parse().unwrap()).unwrap();
        let insecure = TlsArgs {
            insecure_http: true,
            ..args()
        };
        insecure.validate(public).unwrap();
        let tls = TlsArgs {
            tls_self_signed: true,
            ..args()
        };
        tls.validate(public).unwrap();
        let half = TlsArgs {
            tls_cert: Some("c.pem".into()),
            ..args()
        };
        assert!(half.validate(public).unwrap_err().contains("go together"));
    }

    #[test]
    fn the_self_signed_certificate_is_generated_once() {
        let dir = tempfile::tempdir().unwrap();
        let listen: SocketAddr = "10.1.2.3:5443".parse().unwrap();
        let (cert, key) = self_signed(dir.path(), listen, &["rack.example".into()]).unwrap();
        let first = std::fs::read(&cert).unwrap();
        let (cert2, _) = self_signed(dir.path(), listen, &[]).unwrap();
        assert_eq!(
            first,
            std::fs::read(cert2).unwrap(),
            "reused, not regenerated"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&key).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "the key is private");
        }
        let tls = TlsArgs {
            tls_self_signed: true,
            ..args()
        };
        assert!(tls.server_config(dir.path(), listen).is_ok());
    }
}
