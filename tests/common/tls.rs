//! A private certificate authority for the tests: a CA nobody's system
//! trusts, and a server certificate it issued for 127.0.0.1, so a receiver
//! can serve HTTPS that only a client given the CA (a Webhook's
//! `spec.caBundle`) accepts.

use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

pub struct PrivateCa {
    /// The CA's certificate, PEM: what goes into `spec.caBundle`.
    pub ca_pem: String,
    /// The server's certificate chain and key, for the receiver.
    pub server: Arc<rustls::ServerConfig>,
}

impl PrivateCa {
    /// A fresh CA and a server certificate for 127.0.0.1 signed by it.
    pub fn generate() -> Self {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "ctrlplane test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().unwrap();
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();

        // rcgen makes an IP address SAN of a name that parses as one.
        let server_params = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        let server_key = KeyPair::generate().unwrap();
        let server_cert = server_params.signed_by(&server_key, &ca).unwrap();

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![
                    CertificateDer::from(server_cert.der().to_vec()),
                    ca.der().clone(),
                ],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
            )
            .unwrap();
        Self {
            ca_pem: ca.pem(),
            server: Arc::new(server),
        }
    }
}
