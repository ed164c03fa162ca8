//! The files one configuration is built from, loaded and checked: our certificate and key (PEM or
//! PKCS#12), the trusted CAs and the CRLs, with a record of what was loaded for `check`.

use std::path::{Path, PathBuf};

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;

use super::error::{file_error, pki_error, FileProblem, PemRole, TlsError};
use super::pem::{read_certificates, read_private_key_with};
use super::pki::{self, CertificateDates, Crl, Password};
use super::policy::{CrlExpired, Policy};

/// Where our own certificate and key come from: a PEM chain with its (possibly encrypted) PEM
/// key, or a PKCS#12 file (`.p12`/`.pfx`) holding both.
#[derive(Clone, Copy, Debug)]
pub struct Identity<'a> {
    pub cert: &'a Path,
    /// The PEM key; ignored for PKCS#12.
    pub key: Option<&'a Path>,
    /// For an encrypted PKCS#12 file or PEM key.
    pub password: Option<&'a Password>,
}

/// A certificate found while building a configuration, for `check` to report its dates.
#[derive(Clone, Debug)]
pub struct LoadedCertificate {
    pub role: PemRole,
    pub path: PathBuf,
    pub dates: CertificateDates,
}

/// Everything loaded for one configuration that has dates worth reporting.
#[derive(Clone, Debug, Default)]
pub struct Material {
    pub certificates: Vec<LoadedCertificate>,
    /// Each CRL with the file it came from.
    pub crls: Vec<(PathBuf, Crl)>,
}

impl Material {
    fn note(&mut self, role: PemRole, path: &Path, certs: &[CertificateDer<'_>]) {
        for cert in certs {
            if let Some(dates) = pki::certificate_dates(cert) {
                self.certificates.push(LoadedCertificate {
                    role,
                    path: path.to_path_buf(),
                    dates,
                });
            }
        }
    }
}

/// Loads every CRL of the policy and judges its dates: expired or not yet valid is an error
/// with [`CrlExpired::FailClosed`], a logged error with [`CrlExpired::FailOpen`].
pub(super) fn load_crls(policy: &Policy, material: &mut Material) -> Result<Vec<Crl>, TlsError> {
    let now = std::time::SystemTime::now();
    let mut all = Vec::new();
    for path in &policy.crls {
        let crls = pki::read_crls(path).map_err(|p| pki_error(PemRole::Crl, path, p))?;
        for crl in crls {
            if let Some(problem) = crl.validity_problem(now) {
                match policy.crl_expired {
                    CrlExpired::FailClosed => return Err(pki_error(PemRole::Crl, path, problem)),
                    CrlExpired::FailOpen => tracing::error!(
                        file = %path.display(),
                        "CRL file \"{}\" {problem}; still using it because crl_expired is fail-open",
                        path.display()
                    ),
                }
            }
            material.crls.push((path.clone(), crl.clone()));
            all.push(crl);
        }
    }
    Ok(all)
}

/// Loads a certificate chain and its key (PEM or PKCS#12), and checks that they belong together.
pub(super) fn certified_key(
    provider: &CryptoProvider,
    identity: &Identity<'_>,
    material: &mut Material,
) -> Result<CertifiedKey, TlsError> {
    let cert = identity.cert;
    let (chain, key_der, key) = if pki::is_pkcs12(cert) {
        let (chain, key_der) = pki::read_pkcs12(cert, identity.password)
            .map_err(|p| pki_error(PemRole::Certificate, cert, p))?;
        (chain, key_der, cert)
    } else {
        let key = identity.key.ok_or_else(|| TlsError::KeyRequired {
            cert: cert.to_path_buf(),
        })?;
        let chain = read_certificates(cert, PemRole::Certificate)?;
        (chain, read_private_key_with(key, identity.password)?, key)
    };
    material.note(PemRole::Certificate, cert, &chain);
    let signing_key = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| {
            file_error(
                PemRole::PrivateKey,
                key,
                FileProblem::UnusableKey(e.to_string()),
            )
        })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        // A key type that cannot report its public key is not proof of a mismatch.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(certified)
        }
        Err(rustls::Error::InconsistentKeys(_)) => Err(TlsError::KeyMismatch {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        }),
        Err(e) => Err(file_error(
            PemRole::Certificate,
            cert,
            FileProblem::BadCertificate(e.to_string()),
        )),
    }
}

pub(super) fn root_store_noting(
    path: &Path,
    material: &mut Material,
) -> Result<RootCertStore, TlsError> {
    let certs = read_certificates(path, PemRole::TrustedCa)?;
    material.note(PemRole::TrustedCa, path, &certs);
    let mut roots = RootCertStore::empty();
    for (i, cert) in certs.into_iter().enumerate() {
        roots.add(cert).map_err(|e| {
            file_error(
                PemRole::TrustedCa,
                path,
                FileProblem::BadCaCertificate {
                    index: i + 1,
                    detail: e.to_string(),
                },
            )
        })?;
    }
    Ok(roots)
}
