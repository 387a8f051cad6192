//! The TLS client side of an upstream: which certificate authorities are trusted (the
//! system's, or only those in `ca_file`), and a note of the certificate chain the upstream
//! presented, kept even when it does not verify, so `upstream check` can say what it was.

use crate::config::UpstreamConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::sync::{Arc, Mutex};
use tokio_rustls::TlsConnector;

/// The certificates of the last handshake, leaf first.
pub type SeenChain = Arc<Mutex<Vec<CertificateDer<'static>>>>;

/// Builds the connector delivery uses; `seen` gets each presented chain.
pub(super) fn connector(config: &UpstreamConfig, seen: SeenChain) -> Result<TlsConnector, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let inner: Arc<dyn ServerCertVerifier> = match &config.ca_file {
        None => Arc::new(
            rustls_platform_verifier::Verifier::new(provider.clone())
                .map_err(|e| format!("cannot load the system's certificate authorities: {e}"))?,
        ),
        Some(path) => {
            use rustls_pki_types::pem::PemObject;
            let bad =
                |e: &dyn std::fmt::Display| format!("upstream.ca_file {}: {e}", path.display());
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(&e))? {
                roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
            }
            if roots.is_empty() {
                return Err(bad(&"holds no PEM certificate"));
            }
            rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                provider.clone(),
            )
            .build()
            .map_err(|e| bad(&e))?
        }
    };
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Noting { inner, seen }))
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(tls)))
}

/// Notes the chain, then lets the real verifier decide: it verifies exactly as the
/// verifier alone would.
#[derive(Debug)]
struct Noting {
    inner: Arc<dyn ServerCertVerifier>,
    seen: SeenChain,
}

impl ServerCertVerifier for Noting {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut chain = vec![end_entity.clone().into_owned()];
        chain.extend(intermediates.iter().map(|c| c.clone().into_owned()));
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = chain;
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }

    fn root_hint_subjects(&self) -> Option<&[rustls::DistinguishedName]> {
        self.inner.root_hint_subjects()
    }
}

/// What `upstream check` prints about a certificate.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CertificateFacts {
    pub subject: String,
    pub issuer: String,
    /// Subject alternative names: DNS names and IP addresses.
    pub names: Vec<String>,
    /// RFC 3339, UTC.
    pub not_after: String,
    pub expires_in_days: i64,
}

/// Reads the fields an operator checks from a DER certificate; None if it does not parse.
pub fn certificate_facts(der: &[u8], now_unix: u64) -> Option<CertificateFacts> {
    use x509_cert::der::Decode;
    use x509_cert::ext::pkix::name::GeneralName;
    use x509_cert::ext::pkix::SubjectAltName;
    let cert = x509_cert::Certificate::from_der(der).ok()?;
    let tbs = &cert.tbs_certificate();
    let mut names = Vec::new();
    if let Ok(Some((_, san))) = tbs.get_extension::<SubjectAltName>() {
        for name in san.0 {
            match name {
                GeneralName::DnsName(n) => names.push(n.to_string()),
                GeneralName::IpAddress(ip) => {
                    let b = ip.as_bytes();
                    if let Ok(v4) = <[u8; 4]>::try_from(b) {
                        names.push(std::net::Ipv4Addr::from(v4).to_string());
                    } else if let Ok(v6) = <[u8; 16]>::try_from(b) {
                        names.push(std::net::Ipv6Addr::from(v6).to_string());
                    }
                }
                _ => {}
            }
        }
    }
    let not_after = tbs.validity().not_after.to_unix_duration().as_secs();
    let days = (i128::from(not_after) - i128::from(now_unix)) / 86_400;
    Some(CertificateFacts {
        subject: tbs.subject().to_string(),
        issuer: tbs.issuer().to_string(),
        names,
        not_after: tbs.validity().not_after.to_string(),
        expires_in_days: i64::try_from(days).unwrap_or(i64::MAX),
    })
}
