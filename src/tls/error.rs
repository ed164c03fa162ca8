//! The errors of TLS material: which file, what role it plays, what is wrong with it and what to
//! do about it.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use super::pki::PkiProblem;

/// What a PEM file is expected to hold; decides the wording of errors and, in the config layer,
/// which YAML key an error points at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PemRole {
    /// Our own certificate chain, leaf first (`tls.cert`, `upstream.tls.cert`).
    Certificate,
    /// The private key of that certificate (`tls.key`, `upstream.tls.key`).
    PrivateKey,
    /// CA certificates we trust to issue the peer's certificate (`tls.client_ca`,
    /// `upstream.tls.ca`).
    TrustedCa,
    /// A certificate revocation list (`tls.crl`).
    Crl,
    /// The password of a PKCS#12 file or an encrypted key (`tls.password_file`).
    Password,
}

impl fmt::Display for PemRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PemRole::Certificate => "certificate",
            PemRole::PrivateKey => "private key",
            PemRole::TrustedCa => "CA certificate",
            PemRole::Crl => "CRL",
            PemRole::Password => "password",
        })
    }
}

/// Why TLS material could not be turned into a rustls configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file is unreadable or does not hold what its role needs.
    #[error("{role} file \"{}\" {problem}", path.display())]
    File {
        /// What the file was supposed to hold.
        role: PemRole,
        /// The file as it was opened.
        path: PathBuf,
        /// What is wrong with it.
        problem: FileProblem,
    },
    /// A PKCS#12 file, encrypted key, password file or CRL is unreadable or unusable.
    #[error("{role} file \"{}\" {problem}", path.display())]
    Pki {
        /// What the file was supposed to hold.
        role: PemRole,
        /// The file as it was opened.
        path: PathBuf,
        /// What is wrong with it.
        problem: PkiProblem,
    },
    /// A PEM certificate was given without its private key.
    #[error("the certificate \"{}\" is PEM and needs its private key file; give `key` (or use a PKCS#12 file, .p12/.pfx, that holds both)", cert.display())]
    KeyRequired {
        /// The certificate file.
        cert: PathBuf,
    },
    /// The private key is not the one the certificate was issued for.
    #[error(
        "the private key \"{}\" does not match the certificate \"{}\" (their public keys differ); use the key the certificate was issued for",
        key.display(),
        cert.display()
    )]
    KeyMismatch {
        /// The certificate chain file.
        cert: PathBuf,
        /// The private key file.
        key: PathBuf,
    },
    /// A client certificate was given without its key, or a key without its certificate.
    #[error("a client certificate needs both a certificate file and its private key file; give both or neither")]
    IncompleteClientIdentity,
    /// The client certificate verifier could not be built from the CA file.
    #[error("the client CA file \"{}\" cannot be used to verify clients: {source}", path.display())]
    ClientVerifier {
        /// The CA file.
        path: PathBuf,
        /// What rustls reported.
        source: rustls::server::VerifierBuilderError,
    },
    /// The server certificate verifier could not be built from the CA file and CRLs.
    #[error("the CA file \"{}\" cannot be used to verify the upstream: {source}", path.display())]
    ServerVerifier {
        /// The CA file.
        path: PathBuf,
        /// What rustls reported.
        source: rustls::server::VerifierBuilderError,
    },
    /// rustls refused the assembled configuration (unexpected once the files passed the checks).
    #[error("rustls rejected the TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

impl TlsError {
    /// The role and path of the file this error is about, when it is about a single file.
    /// A key mismatch is reported against the key.
    pub fn file(&self) -> Option<(PemRole, &Path)> {
        match self {
            TlsError::File { role, path, .. } | TlsError::Pki { role, path, .. } => {
                Some((*role, path))
            }
            TlsError::KeyRequired { cert } => Some((PemRole::Certificate, cert)),
            TlsError::KeyMismatch { key, .. } => Some((PemRole::PrivateKey, key)),
            TlsError::ClientVerifier { path, .. } | TlsError::ServerVerifier { path, .. } => {
                Some((PemRole::TrustedCa, path))
            }
            TlsError::IncompleteClientIdentity | TlsError::Rustls(_) => None,
        }
    }
}

/// What is wrong with one PEM file. Each message reads after the file's name.
#[derive(Debug, thiserror::Error)]
pub enum FileProblem {
    /// The file could not be read (missing, a directory, permissions, ...).
    #[error("cannot be read: {0}")]
    Read(#[source] io::Error),
    /// No `-----BEGIN` line at all: a DER file, or not a certificate/key at all.
    #[error("is not PEM text (no \"-----BEGIN\" line); convert it to PEM (e.g. with openssl) or point at the right file")]
    NotPem,
    /// A PEM section is damaged.
    #[error("has a malformed PEM section ({0}); export the file again")]
    BadPem(String),
    /// A private key where certificates belong.
    #[error("holds a private key, not a certificate; point this at the certificate PEM (\"-----BEGIN CERTIFICATE-----\")")]
    KeyInsteadOfCertificate,
    /// PEM text without any certificate.
    #[error("contains no certificate (no \"-----BEGIN CERTIFICATE-----\" block)")]
    NoCertificate,
    /// A certificate where the private key belongs.
    #[error("holds a certificate, not a private key; point this at the private key PEM (\"-----BEGIN PRIVATE KEY-----\")")]
    CertificateInsteadOfKey,
    /// PEM text without any private key.
    #[error("contains no private key (no \"-----BEGIN PRIVATE KEY-----\", \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\" block)")]
    NoPrivateKey,
    /// The key was found but the crypto provider cannot sign with it.
    #[error("holds a private key that cannot be used ({0}); use an RSA (2048 bits or more), ECDSA P-256/P-384 or Ed25519 key")]
    UnusableKey(String),
    /// The first certificate of the chain is not a parsable X.509 certificate.
    #[error("holds a certificate that cannot be parsed ({0}); export the certificate again")]
    BadCertificate(String),
    /// A certificate in a CA file cannot serve as a trust anchor.
    #[error("holds a certificate (number {index} in the file) that cannot be used as a trust anchor ({detail}); keep only CA certificates in this file")]
    BadCaCertificate {
        /// 1-based position in the file.
        index: usize,
        /// What webpki reported.
        detail: String,
    },
}

pub(super) fn pki_error(role: PemRole, path: &Path, problem: PkiProblem) -> TlsError {
    TlsError::Pki {
        role,
        path: path.to_path_buf(),
        problem,
    }
}

pub(super) fn file_error(role: PemRole, path: &Path, problem: FileProblem) -> TlsError {
    TlsError::File {
        role,
        path: path.to_path_buf(),
        problem,
    }
}
