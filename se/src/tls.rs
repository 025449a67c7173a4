//! TLS termination: the rustls server settings of a virtual service.
//!
//! - Certificates are chosen by SNI: the first certificate of the virtual
//!   service valid for the name the client asked for (webpki's own name
//!   check, wildcards included); without SNI, or when none is valid, the
//!   first certificate.
//! - TLS 1.3 and 1.2 with rustls' default cipher suites (AEAD only, forward
//!   secret), the ring provider in both worlds (docs/runtime.md).
//! - ALPN offers `h2` and `http/1.1`; a client that offers neither speaks
//!   HTTP/1.1.
//! - Resumption: rustls' in-memory session cache and stateless tickets
//!   (rotating ticket keys).
//! - Reload: the settings are built whole from the config and swapped into
//!   the listener; connections already open keep the settings they began with.

use std::sync::Arc;

use fabric::model::Certificate;
use fabric::pki;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

/// ALPN protocols offered, in order of preference.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// rustls settings for a virtual service offering `certificates` (in order).
pub fn server_config(
    certificates: &[Certificate],
    resumption: bool,
    http: bool,
) -> Result<Arc<ServerConfig>, String> {
    let mut keys = Vec::with_capacity(certificates.len());
    for c in certificates {
        let key = pki::certified_key(&c.cert_pem, &c.key_pem)
            .map_err(|e| format!("certificate `{}`: {e}", c.name))?;
        keys.push(Arc::new(key));
    }
    if keys.is_empty() {
        return Err("no certificate to offer".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(BySni { keys }));
    // ALPN only for HTTP: a TCP virtual service relays whatever the client
    // speaks, and must not agree to h2 on the server's behalf.
    if http {
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    }
    if resumption {
        config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(|e| e.to_string())?;
    } else {
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
    }
    Ok(Arc::new(config))
}

/// Picks a certificate by the client's SNI name.
#[derive(Debug)]
struct BySni {
    keys: Vec<Arc<CertifiedKey>>,
}

impl BySni {
    fn pick(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        let name = sni.and_then(|n| ServerName::try_from(n).ok());
        name.and_then(|name| {
            self.keys
                .iter()
                .find(|k| valid_for(&k.cert[0], &name))
                .cloned()
        })
        .unwrap_or_else(|| self.keys[0].clone())
    }
}

fn valid_for(cert: &CertificateDer<'_>, name: &ServerName<'_>) -> bool {
    webpki::EndEntityCert::try_from(cert)
        .is_ok_and(|ee| ee.verify_is_valid_for_subject_name(name).is_ok())
}

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(name: &str, dns: &[&str]) -> Certificate {
        pki::self_signed(name, dns).unwrap()
    }

    #[test]
    fn sni_picks_the_first_valid_certificate_else_the_first() {
        let certs = [
            self_signed("a", &["a.test"]),
            self_signed("wild", &["*.b.test"]),
            self_signed("a-too", &["a.test", "c.test"]),
        ];
        let keys: Vec<_> = certs
            .iter()
            .map(|c| Arc::new(pki::certified_key(&c.cert_pem, &c.key_pem).unwrap()))
            .collect();
        let r = BySni { keys: keys.clone() };
        let is = |sni: Option<&str>, want: usize| {
            assert_eq!(r.pick(sni).cert, keys[want].cert, "{sni:?}");
        };
        is(Some("a.test"), 0);
        is(Some("A.TEST"), 0);
        is(Some("x.b.test"), 1);
        is(Some("b.test"), 0); // the wildcard does not cover the bare name
        is(Some("c.test"), 2);
        is(Some("nope.test"), 0);
        is(None, 0);
        is(Some("not a name"), 0);
    }

    #[test]
    fn bad_certificates_are_errors() {
        let good = self_signed("a", &["a.test"]);
        let other = self_signed("b", &["b.test"]);
        let mismatched = Certificate {
            key_pem: other.key_pem.clone(),
            ..good.clone()
        };
        let garbage = Certificate {
            cert_pem: "-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n".into(),
            ..good.clone()
        };
        assert!(server_config(std::slice::from_ref(&good), true, true).is_ok());
        assert!(server_config(&[], true, true).is_err());
        let e = server_config(&[mismatched], true, true).unwrap_err();
        assert!(e.contains("certificate `a`"), "{e}");
        assert!(server_config(&[garbage], true, true).is_err());
    }
}
