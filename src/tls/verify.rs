//! Certificate verifiers that wrap the webpki ones: the chain, dates, names and revocation are
//! still decided by webpki; these add two things on top.
//!
//! - A certificate refused as revoked is logged with its serial number and issuer (webpki only
//!   says "revoked"). The CRL entries are indexed by (issuer, serial) so the log names the
//!   certificate of the chain that is actually listed.
//! - `allowed_identities`: after webpki accepted the peer, its leaf must carry one of these SAN
//!   DNS names or URIs (pinning beyond the hostname check).
//!
//! Knows nothing of files, YAML or routes.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};

use super::pki::Crl;

/// The extra checks, shared by both sides.
#[derive(Debug, Default)]
pub(super) struct Checks {
    /// (issuer name DER, serial) of every revoked certificate in the configured CRLs.
    revoked: HashSet<(Vec<u8>, Vec<u8>)>,
    /// `allowed_identities`, DNS names lowercased; empty = no pinning.
    allowed: Vec<String>,
}

impl Checks {
    pub(super) fn new(crls: &[Crl], allowed: &[String]) -> Checks {
        let revoked = crls
            .iter()
            .flat_map(|crl| {
                crl.revoked
                    .iter()
                    .map(|serial| (crl.issuer_der.clone(), serial.clone()))
            })
            .collect();
        Checks {
            revoked,
            allowed: allowed.iter().map(|a| normalise(a)).collect(),
        }
    }

    pub(super) fn is_needed(&self) -> bool {
        !self.revoked.is_empty() || !self.allowed.is_empty()
    }

    /// Runs after webpki's verdict on `end_entity` (with `intermediates`).
    fn after<T>(
        &self,
        side: &'static str,
        verdict: Result<T, Error>,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<T, Error> {
        match verdict {
            Err(Error::InvalidCertificate(CertificateError::Revoked)) => {
                self.log_revoked(side, end_entity, intermediates);
                Err(Error::InvalidCertificate(CertificateError::Revoked))
            }
            Err(err) => Err(err),
            Ok(verified) => {
                self.check_allowed(side, end_entity)?;
                Ok(verified)
            }
        }
    }

    fn log_revoked(
        &self,
        side: &'static str,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) {
        let chain = std::iter::once(end_entity).chain(intermediates.iter());
        let mut first = None;
        for der in chain {
            let Ok((_, cert)) = x509_parser::parse_x509_certificate(der.as_ref()) else {
                continue;
            };
            let key = (cert.issuer().as_raw().to_vec(), cert.raw_serial().to_vec());
            let listed = self.revoked.contains(&key);
            let entry = (
                cert.raw_serial_as_string(),
                cert.issuer().to_string(),
                cert.subject().to_string(),
            );
            if listed {
                first = Some(entry);
                break;
            }
            first.get_or_insert(entry);
        }
        match first {
            Some((serial, issuer, subject)) => tracing::warn!(
                side,
                serial = %serial,
                issuer = %issuer,
                subject = %subject,
                "certificate refused: it is revoked (listed in a configured CRL); serial {serial}, issuer {issuer}"
            ),
            None => tracing::warn!(
                side,
                "certificate refused: it is revoked (listed in a configured CRL); it could not be parsed to name it"
            ),
        }
    }

    fn check_allowed(
        &self,
        side: &'static str,
        end_entity: &CertificateDer<'_>,
    ) -> Result<(), Error> {
        if self.allowed.is_empty() {
            return Ok(());
        }
        let names = san_names(end_entity);
        if names.iter().any(|n| self.allowed.contains(&normalise(n))) {
            return Ok(());
        }
        tracing::warn!(side, names = %names.join(", "), allowed = %self.allowed.join(", "), "certificate refused: it names none of allowed_identities");
        Err(Error::InvalidCertificate(CertificateError::Other(
            rustls::OtherError(Arc::new(NotAllowed(names))),
        )))
    }
}

/// DNS names compare case-insensitively and without a trailing dot; URIs as written.
fn normalise(name: &str) -> String {
    if name.contains(':') {
        name.to_string()
    } else {
        name.trim_end_matches('.').to_ascii_lowercase()
    }
}

/// The SAN DNS names and URIs of a certificate.
fn san_names(der: &CertificateDer<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der.as_ref()) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(n) | GeneralName::URI(n) => Some(n.to_string()),
            _ => None,
        })
        .collect()
}

/// Why a verified certificate was still refused by `allowed_identities`. `Debug` shows the
/// sentence too, since rustls shows this error through `Debug`.
struct NotAllowed(Vec<String>);

impl fmt::Debug for NotAllowed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for NotAllowed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the certificate names [{}], none of which is in allowed_identities",
            self.0.join(", ")
        )
    }
}

impl std::error::Error for NotAllowed {}

/// The listener's client certificate verifier.
#[derive(Debug)]
pub(super) struct ClientVerifier {
    pub(super) inner: Arc<dyn ClientCertVerifier>,
    pub(super) checks: Checks,
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let verdict = self
            .inner
            .verify_client_cert(end_entity, intermediates, now);
        self.checks
            .after("client certificate", verdict, end_entity, intermediates)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The upstream's server certificate verifier.
#[derive(Debug)]
pub(super) struct ServerVerifier {
    pub(super) inner: Arc<dyn ServerCertVerifier>,
    pub(super) checks: Checks,
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let verdict = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        self.checks.after(
            "upstream server certificate",
            verdict,
            end_entity,
            intermediates,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn root_hint_subjects(&self) -> Option<&[DistinguishedName]> {
        self.inner.root_hint_subjects()
    }
}
