//! The Controller's certificate authority and the TLS settings of SE sessions.
//!
//! - The cluster has one CA (ECDSA P-256), created when the cluster is
//!   bootstrapped and kept in the replicated state, so every Controller node
//!   can issue certificates and a restored cluster keeps trusting its SEs.
//! - Each Controller node serves SE sessions with a certificate of its own,
//!   issued at start from the CA, naming its IP address.
//! - An SE registers once with a one-time join token: over TLS that checks the
//!   Controller against the CA's SHA-256 fingerprint (given with the token, as
//!   kubeadm's discovery hash), it sends its public key and gets a client
//!   certificate. From then on every session is mutual TLS; the Controller
//!   maps the client certificate's fingerprint to the SE name it was issued to.
//!
//! Randomness (keys, TLS) comes from the OS generator, which madsim makes
//! deterministic in the simulation; time from `rt::unix_ms` (virtual there).

use std::net::IpAddr;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SignatureAlgorithm,
    PKCS_ECDSA_P256_SHA256,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::rt;

/// Why a PKI operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Certificate or key generation failed.
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
    /// TLS settings could not be built.
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
    /// Bad input (PEM, key, fingerprint).
    #[error("{0}")]
    Invalid(String),
}

/// The cluster's CA: certificate and key (PEM), replicated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaMaterial {
    /// Subject common name (needed to sign with it again).
    pub common_name: String,
    /// The CA certificate, PEM.
    pub cert_pem: String,
    /// The CA private key, PKCS#8 PEM.
    pub key_pem: String,
}

/// What an SE needs to register: a one-time join token and the SHA-256
/// fingerprint of the cluster's CA, which it pins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTicket {
    /// The token's secret.
    pub token: String,
    /// SHA-256 (hex) of the CA certificate.
    pub ca_sha256: String,
}

/// A certificate and its key, PEM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertifiedKey {
    /// Certificate, PEM.
    pub cert_pem: String,
    /// Private key, PKCS#8 PEM.
    pub key_pem: String,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn validity(params: &mut CertificateParams, years: i64) {
    let now = (rt::unix_ms() / 1000) as i64;
    let at = |secs| rcgen::date_time_ymd(1970, 1, 1) + std::time::Duration::from_secs(secs as u64);
    params.not_before = at(now.saturating_sub(86_400).max(0));
    params.not_after = at(now + years * 365 * 86_400);
}

/// A new secret (join or API token): 256 bits from the world's generator, hex.
pub fn new_secret() -> String {
    (0..4)
        .map(|_| format!("{:016x}", rt::random_u64()))
        .collect()
}

/// Hex SHA-256 of a DER blob.
pub fn sha256_hex(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn pem_to_der(pem: &str) -> Result<CertificateDer<'static>, PkiError> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| PkiError::Invalid(format!("certificate PEM: {e}")))
}

fn key_to_der(pem: &str) -> Result<PrivateKeyDer<'static>, PkiError> {
    use rustls::pki_types::pem::PemObject;
    PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes())
        .map(PrivateKeyDer::Pkcs8)
        .map_err(|e| PkiError::Invalid(format!("key PEM: {e}")))
}

/// A certificate chain (PEM, leaf first) and its private key (PEM: PKCS#8,
/// PKCS#1 or SEC1) as rustls serves them; an error says what is wrong
/// (unparsable, empty, unsupported key, key not matching the certificate).
pub fn certified_key(
    cert_pem: &str,
    key_pem: &str,
) -> Result<rustls::sign::CertifiedKey, PkiError> {
    use rustls::pki_types::pem::PemObject;
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::Invalid(format!("certificate PEM: {e}")))?;
    if chain.is_empty() {
        return Err(PkiError::Invalid("no certificate in the PEM".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| PkiError::Invalid(format!("key PEM: {e}")))?;
    rustls::sign::CertifiedKey::from_der(chain, key, &provider())
        .map_err(|e| PkiError::Invalid(format!("certificate and key: {e}")))
}

/// A self-signed certificate for `dns_names` with a new P-256 key, as the
/// config object `name`: for demos, drills and tests.
pub fn self_signed(name: &str, dns_names: &[&str]) -> Result<crate::model::Certificate, PkiError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let names = dns_names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    let cert = CertificateParams::new(names)?.self_signed(&key)?;
    Ok(crate::model::Certificate {
        name: name.to_string(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// The DER of the first certificate in `cert_pem`.
pub fn leaf_der(cert_pem: &str) -> Result<Vec<u8>, PkiError> {
    Ok(pem_to_der(cert_pem)?.to_vec())
}

/// SHA-256 fingerprint (hex) of a PEM certificate's DER.
pub fn fingerprint(cert_pem: &str) -> Result<String, PkiError> {
    Ok(sha256_hex(&pem_to_der(cert_pem)?))
}

impl CaMaterial {
    /// A new CA valid for 20 years.
    pub fn generate(common_name: &str) -> Result<CaMaterial, PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let params = Self::params(common_name);
        let cert = params.self_signed(&key)?;
        Ok(CaMaterial {
            common_name: common_name.to_string(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    fn params(common_name: &str) -> CertificateParams {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        validity(&mut params, 20);
        params
    }

    /// SHA-256 fingerprint of the CA certificate (what SEs pin).
    pub fn fingerprint(&self) -> Result<String, PkiError> {
        fingerprint(&self.cert_pem)
    }

    fn sign(
        &self,
        mut params: CertificateParams,
        public_key: &impl PublicKeyData,
    ) -> Result<String, PkiError> {
        let ca_key = KeyPair::from_pem(&self.key_pem)?;
        let issuer = Issuer::new(Self::params(&self.common_name), ca_key);
        validity(&mut params, 5);
        Ok(params.signed_by(public_key, &issuer)?.pem())
    }

    /// A server certificate for a Controller node reachable at `ips`.
    pub fn issue_node_cert(&self, node: &str, ips: &[IpAddr]) -> Result<CertifiedKey, PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, node);
        params.subject_alt_names = ips.iter().map(|ip| SanType::IpAddress(*ip)).collect();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert_pem = self.sign(params, &key)?;
        Ok(CertifiedKey {
            cert_pem,
            key_pem: key.serialize_pem(),
        })
    }

    /// A client certificate for SE `name` holding the P-256 public key
    /// `public_key` (uncompressed point, as [`SeKey::public_key`] gives).
    pub fn issue_se_cert(&self, name: &str, public_key: &[u8]) -> Result<String, PkiError> {
        if public_key.len() != 65 || public_key[0] != 4 {
            return Err(PkiError::Invalid(
                "the SE public key must be an uncompressed P-256 point".into(),
            ));
        }
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params, &RawP256(public_key.to_vec()))
    }

    /// TLS settings of a Controller node's SE listener: its own certificate,
    /// client certificates verified against the CA but optional (an SE
    /// without one may only register).
    pub fn server_config(&self, node: &CertifiedKey) -> Result<Arc<ServerConfig>, PkiError> {
        let provider = provider();
        let ca = pem_to_der(&self.cert_pem)?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone())?;
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .allow_unauthenticated()
                .build()
                .map_err(|e| PkiError::Invalid(e.to_string()))?;
        let config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![pem_to_der(&node.cert_pem)?, ca],
                key_to_der(&node.key_pem)?,
            )?;
        Ok(Arc::new(config))
    }
}

/// A raw P-256 public key, to sign a certificate for a key we do not hold.
struct RawP256(Vec<u8>);

impl PublicKeyData for RawP256 {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}

/// An SE's key pair (kept on the SE's disk).
#[derive(Debug)]
pub struct SeKey(KeyPair);

impl SeKey {
    /// A new P-256 key.
    pub fn generate() -> Result<SeKey, PkiError> {
        Ok(SeKey(KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?))
    }

    /// From PKCS#8 PEM.
    pub fn from_pem(pem: &str) -> Result<SeKey, PkiError> {
        Ok(SeKey(KeyPair::from_pem(pem)?))
    }

    /// PKCS#8 PEM.
    pub fn to_pem(&self) -> String {
        self.0.serialize_pem()
    }

    /// The public key as an uncompressed point.
    pub fn public_key(&self) -> Vec<u8> {
        self.0.public_key_raw().to_vec()
    }
}

/// TLS settings of an SE's sessions: verify the Controller against the CA
/// and present the SE's certificate.
pub fn se_client_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<ClientConfig>, PkiError> {
    let mut roots = RootCertStore::empty();
    roots.add(pem_to_der(ca_pem)?)?;
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![pem_to_der(cert_pem)?], key_to_der(key_pem)?)?;
    Ok(Arc::new(config))
}

/// TLS settings for registration: no client certificate yet; the Controller
/// is trusted if its chain holds a CA with this SHA-256 fingerprint and its
/// certificate verifies under that CA.
pub fn registration_client_config(ca_sha256: &str) -> Result<Arc<ClientConfig>, PkiError> {
    let want = ca_sha256.trim().to_ascii_lowercase();
    if want.len() != 64 || !want.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(PkiError::Invalid(
            "the CA fingerprint must be 64 hex digits (SHA-256)".into(),
        ));
    }
    let verifier = ServerCheck {
        pinned_ca_sha256: Some(want),
        provider: provider(),
    };
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// TLS client settings that accept **any** server certificate, offering
/// `alpn`, with TLS 1.3 (or only 1.2). For drills, benchmarks and tests that
/// look at which certificate a virtual service presents; never for the SE's
/// link to the Controller.
pub fn insecure_client_config(alpn: &[&[u8]], tls12_only: bool) -> Arc<ClientConfig> {
    let provider = provider();
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12_only {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .expect("ring supports TLS 1.2 and 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ServerCheck {
            pinned_ca_sha256: None,
            provider,
        }))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// TLS client settings for an SE's connections to a pool's servers:
/// TLS 1.2 and 1.3, certificates verified against the pool's CAs (or not,
/// with `verify = false`), ALPN `http/1.1` when `http`.
pub fn upstream_client_config(
    tls: &crate::model::PoolTls,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, PkiError> {
    use rustls::pki_types::pem::PemObject;
    if let Some(name) = &tls.server_name {
        ServerName::try_from(name.as_str()).map_err(|_| {
            PkiError::Invalid(format!("server_name `{name}` is not a DNS name or IP"))
        })?;
    }
    let versions = &[&rustls::version::TLS13, &rustls::version::TLS12];
    let builder =
        ClientConfig::builder_with_provider(provider()).with_protocol_versions(versions)?;
    let mut config = if tls.verify {
        let mut roots = RootCertStore::empty();
        for der in CertificateDer::pem_slice_iter(tls.ca_pem.as_bytes()) {
            let der = der.map_err(|e| PkiError::Invalid(format!("ca_pem: {e}")))?;
            roots.add(der)?;
        }
        if roots.is_empty() {
            return Err(PkiError::Invalid(
                "ca_pem: verifying servers needs at least one CA certificate (or verify = false)"
                    .into(),
            ));
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ServerCheck {
                pinned_ca_sha256: None,
                provider: provider(),
            }))
            .with_no_client_auth()
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The server name to verify a Controller by: its IP address.
pub fn server_name(ip: IpAddr) -> ServerName<'static> {
    ServerName::IpAddress(ip.into())
}

/// Checks a server's certificate against a pinned CA (SE registration), or
/// not at all (`insecure_client_config`); handshake signatures are checked
/// either way.
#[derive(Debug)]
struct ServerCheck {
    pinned_ca_sha256: Option<String>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for ServerCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(pin) = &self.pinned_ca_sha256 else {
            return Ok(ServerCertVerified::assertion());
        };
        let ca = intermediates
            .iter()
            .find(|c| sha256_hex(c) == *pin)
            .ok_or_else(|| {
                rustls::Error::General(
                    "the Controller's CA does not match the pinned fingerprint".into(),
                )
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn registration_then_mutual_tls() {
        let ca = CaMaterial::generate("fabric test CA").unwrap();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let node = ca.issue_node_cert("controller-1", &[ip]).unwrap();
        let server = tokio_rustls::TlsAcceptor::from(ca.server_config(&node).unwrap());

        // Registration: pinned CA, no client certificate.
        let reg = tokio_rustls::TlsConnector::from(
            registration_client_config(&ca.fingerprint().unwrap()).unwrap(),
        );
        let (a, b) = tokio::io::duplex(1 << 16);
        let (c, s) = tokio::join!(reg.connect(server_name(ip), a), server.accept(b));
        let (mut c, s) = (c.unwrap(), s.unwrap());
        assert!(s.get_ref().1.peer_certificates().is_none());
        c.write_all(b"hi").await.unwrap();
        c.flush().await.unwrap();
        let mut s = s;
        let mut buf = [0u8; 2];
        s.read_exact(&mut buf).await.unwrap();

        // A wrong pin is refused.
        let wrong =
            tokio_rustls::TlsConnector::from(registration_client_config(&"0".repeat(64)).unwrap());
        let (a, b) = tokio::io::duplex(1 << 16);
        let (c, _) = tokio::join!(wrong.connect(server_name(ip), a), server.accept(b));
        assert!(c.is_err());

        // Mutual TLS with an issued SE certificate: the server sees its fingerprint.
        let key = SeKey::generate().unwrap();
        let cert = ca.issue_se_cert("se-1", &key.public_key()).unwrap();
        let client = tokio_rustls::TlsConnector::from(
            se_client_config(&ca.cert_pem, &cert, &key.to_pem()).unwrap(),
        );
        let (a, b) = tokio::io::duplex(1 << 16);
        let (c, s) = tokio::join!(client.connect(server_name(ip), a), server.accept(b));
        c.unwrap();
        let s = s.unwrap();
        let presented = &s.get_ref().1.peer_certificates().unwrap()[0];
        assert_eq!(sha256_hex(presented), fingerprint(&cert).unwrap());

        // A certificate from another CA is refused by the server.
        let other = CaMaterial::generate("other CA").unwrap();
        let cert = other.issue_se_cert("se-1", &key.public_key()).unwrap();
        let client = tokio_rustls::TlsConnector::from(
            se_client_config(&ca.cert_pem, &cert, &key.to_pem()).unwrap(),
        );
        let (a, b) = tokio::io::duplex(1 << 16);
        let (_, s) = tokio::join!(client.connect(server_name(ip), a), server.accept(b));
        assert!(s.is_err());

        // Garbage input is an error, not a panic.
        assert!(ca.issue_se_cert("se-1", b"nope").is_err());
        assert!(fingerprint("not a pem").is_err());
        assert!(registration_client_config("xyz").is_err());
    }
}
