//! Reading certificates and private keys from PEM files, through
//! `rustls_pki_types::pem::PemObject`. Each file is read once and checked for what it holds, so a
//! key given where a certificate belongs (or the reverse) is named as such.

use std::path::Path;

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::error::{file_error, pki_error, FileProblem, PemRole, TlsError};
use super::pki::{self, Password, PkiProblem};

fn read_pem_text(path: &Path, role: PemRole) -> Result<Vec<u8>, TlsError> {
    let bytes = std::fs::read(path).map_err(|e| file_error(role, path, FileProblem::Read(e)))?;
    if !bytes.windows(10).any(|w| w == b"-----BEGIN") {
        return Err(file_error(role, path, FileProblem::NotPem));
    }
    Ok(bytes)
}

fn describe_pem_error(err: pem::Error) -> String {
    match err {
        pem::Error::MissingSectionEnd { end_marker } => format!(
            "missing the end line \"{}\"",
            String::from_utf8_lossy(&end_marker).trim()
        ),
        pem::Error::IllegalSectionStart { line } => format!(
            "malformed begin line \"{}\"",
            String::from_utf8_lossy(&line).trim()
        ),
        pem::Error::Base64Decode(e) => format!("bad base64: {e}"),
        other => other.to_string(),
    }
}

fn holds_private_key(bytes: &[u8]) -> bool {
    PrivateKeyDer::from_pem_slice(bytes).is_ok()
}

fn holds_certificate(bytes: &[u8]) -> bool {
    CertificateDer::pem_slice_iter(bytes).any(|c| c.is_ok())
}

/// Reads every certificate of a PEM file, in file order.
///
/// Fails when the file is unreadable, is not PEM, has a damaged section, or holds no certificate
/// (naming a private key when that is what it holds instead).
pub fn read_certificates(
    path: &Path,
    role: PemRole,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_pem_text(path, role)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(role, path, FileProblem::BadPem(describe_pem_error(e))))?;
    if certs.is_empty() {
        let problem = if holds_private_key(&bytes) {
            FileProblem::KeyInsteadOfCertificate
        } else {
            FileProblem::NoCertificate
        };
        return Err(file_error(role, path, problem));
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
///
/// Fails when the file is unreadable, is not PEM, has a damaged section, or holds no key (naming
/// a certificate when that is what it holds instead).
pub fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    read_private_key_with(path, None)
}

/// Like [`read_private_key`], and decrypts a PKCS#8 `ENCRYPTED PRIVATE KEY` with `password`.
pub fn read_private_key_with(
    path: &Path,
    password: Option<&Password>,
) -> Result<PrivateKeyDer<'static>, TlsError> {
    let role = PemRole::PrivateKey;
    let bytes = read_pem_text(path, role)?;
    if pki::holds_encrypted_key(&bytes) {
        return pki::decrypt_pem_key(&bytes, password).map_err(|p| pki_error(role, path, p));
    }
    if pki::holds_legacy_encrypted_key(&bytes) {
        return Err(pki_error(role, path, PkiProblem::LegacyEncryptedKey));
    }
    match PrivateKeyDer::from_pem_slice(&bytes) {
        Ok(key) => Ok(key),
        Err(pem::Error::NoItemsFound) => {
            let problem = if holds_certificate(&bytes) {
                FileProblem::CertificateInsteadOfKey
            } else {
                FileProblem::NoPrivateKey
            };
            Err(file_error(role, path, problem))
        }
        Err(e) => Err(file_error(
            role,
            path,
            FileProblem::BadPem(describe_pem_error(e)),
        )),
    }
}
