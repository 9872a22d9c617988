//! TLS for `https://` racks (and `wss://` streams): rustls on ring, trusting
//! the system's roots plus, optionally, a CA file (a rack's self-signed
//! certificate). Skipping verification, as the `convox` CLI always does, is
//! possible but only when asked for explicitly ([`TlsOptions::insecure`]).

use std::path::PathBuf;
use std::sync::Arc;

use rustls::ClientConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::Error;

/// How an `https://` rack's certificate is checked.
#[derive(Clone, Debug, Default)]
pub struct TlsOptions {
    /// A PEM file of extra trusted certificates (e.g. the rack's
    /// self-signed certificate), in addition to the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Accept any certificate (self-signed, expired, another host's): the
    /// connection is encrypted but anyone in the middle can read it.
    pub insecure: bool,
}

/// The rustls configuration for `options`. `https` is false for an
/// `http://` rack, whose configuration is never used: it then skips
/// loading the system's roots.
pub(crate) fn client_config(options: &TlsOptions, https: bool) -> Result<Arc<ClientConfig>, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?;
    let config = if options.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        if https {
            // Unreadable system stores are skipped; a CA file may still do.
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
        if let Some(path) = &options.ca_file {
            let unusable = |reason: String| {
                Error::Tls(format!(
                    "CA file {} (SLIPWAY_CA_FILE): {reason}",
                    path.display()
                ))
            };
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| unusable(e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| unusable(e.to_string()))?;
            if certs.is_empty() {
                return Err(unusable("no PEM certificate in it".into()));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| unusable(e.to_string()))?;
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(Arc::new(config))
}

/// The certificate problem somewhere in `error`'s chain, if that is why a
/// connection failed.
pub(crate) fn certificate_problem(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = current {
        let rustls_error = e.downcast_ref::<rustls::Error>().or_else(|| {
            e.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if let Some(rustls::Error::InvalidCertificate(problem)) = rustls_error {
            return Some(describe(problem));
        }
        // Boxed on the way up (hyper's connector errors), the rustls error
        // can no longer be downcast, but its text says what it was.
        let text = e.to_string();
        if let Some(rest) = text.split("invalid peer certificate: ").nth(1) {
            return Some(describe_text(rest));
        }
        current = e.source();
    }
    None
}

fn describe_text(debug: &str) -> String {
    let name = debug
        .split(|c: char| !c.is_ascii_alphanumeric())
        .next()
        .unwrap_or_default();
    match name {
        "UnknownIssuer" => describe(&rustls::CertificateError::UnknownIssuer),
        "NotValidForName" | "NotValidForNameContext" => {
            describe(&rustls::CertificateError::NotValidForName)
        }
        "Expired" | "ExpiredContext" => describe(&rustls::CertificateError::Expired),
        "NotValidYet" | "NotValidYetContext" => describe(&rustls::CertificateError::NotValidYet),
        "Revoked" => describe(&rustls::CertificateError::Revoked),
        _ => debug.to_owned(),
    }
}

fn describe(problem: &rustls::CertificateError) -> String {
    use rustls::CertificateError as C;
    match problem {
        C::UnknownIssuer => "it is not signed by a trusted authority (self-signed?)".into(),
        C::NotValidForName | C::NotValidForNameContext { .. } => {
            "it is not valid for this host name".into()
        }
        C::Expired | C::ExpiredContext { .. } => "it has expired".into(),
        C::NotValidYet | C::NotValidYetContext { .. } => "it is not valid yet".into(),
        C::Revoked => "it has been revoked".into(),
        other => format!("{other:?}"),
    }
}

/// What `--insecure` installs: any certificate is accepted, but the
/// handshake signatures are still checked (so the connection is at least
/// encrypted to whoever holds the presented key).
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
