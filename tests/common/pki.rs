//! Test certificates made with rcgen, and TLS acceptors for the fake upstream: a private
//! CA and servers it signs, a self-signed server, a CA certificate used as a server's.

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

pub struct Ca {
    pub pem: String,
    cert: rcgen::Certificate,
    key: KeyPair,
}

pub fn ca() -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "dkim-relay test CA");
    let cert = params.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        cert,
        key,
    }
}

fn acceptor(cert: &rcgen::Certificate, key: &KeyPair) -> TlsAcceptor {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    TlsAcceptor::from(Arc::new(config))
}

impl Ca {
    /// A server certificate for `names`, signed by this CA.
    pub fn server(&self, names: &[&str]) -> TlsAcceptor {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &self.cert, &self.key)
            .unwrap();
        acceptor(&cert, &key)
    }
}

/// A self-signed server certificate for 127.0.0.1 (not a CA); returns it as PEM too.
pub fn self_signed() -> (TlsAcceptor, String) {
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (acceptor(&cert, &key), cert.pem())
}

/// A self-signed certificate marked as a CA, presented as the server's own (what
/// `openssl req -x509` makes by default); returns it as PEM too.
pub fn ca_as_server() -> (TlsAcceptor, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap();
    (acceptor(&cert, &key), cert.pem())
}

/// A CA and a server certificate for 127.0.0.1 and localhost signed by it.
pub struct Pki {
    pub ca_pem: String,
    pub acceptor: TlsAcceptor,
}

pub fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap()
        .signed_by(&server_key, &ca, &ca_key)
        .unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![server.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into()),
        )
        .unwrap();
    Pki {
        ca_pem: ca.pem(),
        acceptor: TlsAcceptor::from(Arc::new(config)),
    }
}
