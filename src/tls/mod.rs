//! TLS material: rustls server and client configurations built from PEM or PKCS#12 files and a
//! [`Policy`] (versions, cipher suites, CRLs, pinned identities).
//!
//! Owns everything between "a path in the config" and "an `Arc<rustls::ServerConfig>` /
//! `Arc<rustls::ClientConfig>` ready for a handshake", plus reading who the peer is after one.
//! It knows nothing of MLLP or of allowlists. PKCS#12, encrypted keys and CRL files are decoded
//! by [`crate::tls::pki`]; `verify` wraps the webpki verifiers to log revocations and pin identities.
//!
//! - One crypto provider: aws-lc-rs (`rustls::crypto::aws_lc_rs::default_provider()`), TLS 1.2
//!   minimum (TLS 1.3 preferred), no ALPN. `min_version` can raise the minimum to 1.3 and
//!   `cipher_suites` narrows the provider's suites to a list, in that order of preference.
//!   rustls implements neither TLS 1.0/1.1 nor suites without forward secrecy, so no setting
//!   can enable them.
//! - CRLs: a peer certificate listed in a configured CRL is refused (every CA of the chain up
//!   to the trust anchor needs its CRL: an unknown revocation status is refused too). A CRL past
//!   its nextUpdate (or before its thisUpdate) is an error when the configuration is built, and
//!   with [`CrlExpired::FailClosed`] (the default) webpki also refuses every handshake once a
//!   loaded CRL expires; [`CrlExpired::FailOpen`] logs an error and keeps using the stale list.
//! - Server side: the certificate chain and its private key; with a client CA file every client
//!   must present a certificate issued by that CA (no anonymous clients).
//! - Client side: trust comes from the configured CA file only. Hospital networks run their own
//!   PKI, so the public web roots are deliberately not trusted.
//! - PEM is read through `rustls_pki_types::pem::PemObject` (the archived `rustls-pemfile` is not
//!   used). Each file is read once and checked for what it holds, so a key given where a
//!   certificate belongs (or the reverse) is named as such instead of "no items found".
//!
//! Errors say which file, what is wrong with it and what to do. [`TlsError::File`] carries the
//! file's role so the config layer can point at the YAML key that named the file.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{ClientConfig, CommonState, RootCertStore, ServerConfig};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use self::pki::{CertificateDates, Crl, Password, PkiProblem};

pub mod pki;
#[cfg(test)]
pub(crate) mod test_pki;
mod verify;

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

/// The provider narrowed to the policy's cipher suites (all of them when the list is empty).
fn provider_for(policy: &Policy) -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    if !policy.cipher_suites.is_empty() {
        provider.cipher_suites = policy.cipher_suites.clone();
    }
    Arc::new(provider)
}

/// TLS 1.3 preferred, TLS 1.2 the minimum.
const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// TLS 1.3 only.
const VERSIONS_1_3: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// `min_version`: the oldest TLS version offered and accepted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MinVersion {
    /// `"1.2"` (the default): TLS 1.2 and 1.3.
    #[default]
    Tls12,
    /// `"1.3"`: TLS 1.3 only.
    Tls13,
}

impl MinVersion {
    fn versions(self) -> &'static [&'static rustls::SupportedProtocolVersion] {
        match self {
            MinVersion::Tls12 => VERSIONS,
            MinVersion::Tls13 => VERSIONS_1_3,
        }
    }
}

/// `crl_expired`: what a CRL past its nextUpdate (or before its thisUpdate) does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CrlExpired {
    /// `fail-closed` (the default): an error at start; once running, handshakes are refused
    /// while a loaded CRL is expired.
    #[default]
    FailClosed,
    /// `fail-open`: an error is logged and the stale list is still used (certificates it lists
    /// stay refused).
    FailOpen,
}

/// What the TLS block restricts beyond the files: versions, suites, revocation, pinning.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// `min_version`.
    pub min_version: MinVersion,
    /// `cipher_suites`, in order of preference; empty = every suite of the provider.
    pub cipher_suites: Vec<rustls::SupportedCipherSuite>,
    /// `crl`: revocation list files.
    pub crls: Vec<PathBuf>,
    /// `crl_expired`.
    pub crl_expired: CrlExpired,
    /// `allowed_identities`: the peer's leaf must carry one of these SAN DNS names or URIs;
    /// empty = no pinning.
    pub allowed_identities: Vec<String>,
}

/// The cipher suite of this name (as rustls spells it, e.g. `TLS13_AES_256_GCM_SHA384`).
pub fn cipher_suite(name: &str) -> Option<rustls::SupportedCipherSuite> {
    rustls::crypto::aws_lc_rs::ALL_CIPHER_SUITES
        .iter()
        .find(|s| s.suite().as_str() == Some(name))
        .copied()
}

/// The names `cipher_suites` accepts, TLS 1.3 suites first.
pub fn cipher_suite_names() -> Vec<&'static str> {
    rustls::crypto::aws_lc_rs::ALL_CIPHER_SUITES
        .iter()
        .filter_map(|s| s.suite().as_str())
        .collect()
}

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

fn pki_error(role: PemRole, path: &Path, problem: PkiProblem) -> TlsError {
    TlsError::Pki {
        role,
        path: path.to_path_buf(),
        problem,
    }
}

/// Loads every CRL of the policy and judges its dates: expired or not yet valid is an error
/// with [`CrlExpired::FailClosed`], a logged error with [`CrlExpired::FailOpen`].
fn load_crls(policy: &Policy, material: &mut Material) -> Result<Vec<Crl>, TlsError> {
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

fn file_error(role: PemRole, path: &Path, problem: FileProblem) -> TlsError {
    TlsError::File {
        role,
        path: path.to_path_buf(),
        problem,
    }
}

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

/// Loads a certificate chain and its key (PEM or PKCS#12), and checks that they belong together.
fn certified_key(
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

fn root_store_noting(path: &Path, material: &mut Material) -> Result<RootCertStore, TlsError> {
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

/// A server (listener) configuration: our chain `cert` with its `key`; with `client_ca`, every
/// client must present a certificate issued by one of the CAs in that file.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let identity = Identity {
        cert,
        key: Some(key),
        password: None,
    };
    Ok(server_config_with(&identity, client_ca, &Policy::default())?.0)
}

/// A server (listener) configuration from `identity` under `policy`; with `client_ca`, every
/// client must present a certificate issued by one of the CAs in that file (and not revoked by
/// the policy's CRLs). Also returns what was loaded, for `check`.
pub fn server_config_with(
    identity: &Identity<'_>,
    client_ca: Option<&Path>,
    policy: &Policy,
) -> Result<(Arc<ServerConfig>, Material), TlsError> {
    let provider = provider_for(policy);
    let mut material = Material::default();
    let certified = certified_key(&provider, identity, &mut material)?;
    let crls = load_crls(policy, &mut material)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(policy.min_version.versions())?;
    let builder = match client_ca {
        Some(ca) => {
            let roots = root_store_noting(ca, &mut material)?;
            let mut verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .with_crls(crls.iter().map(|c| c.der.clone()));
            if policy.crl_expired == CrlExpired::FailClosed {
                verifier = verifier.enforce_revocation_expiration();
            }
            let inner = verifier
                .build()
                .map_err(|source| TlsError::ClientVerifier {
                    path: ca.to_path_buf(),
                    source,
                })?;
            let checks = verify::Checks::new(&crls, &policy.allowed_identities);
            if checks.is_needed() {
                builder
                    .with_client_cert_verifier(Arc::new(verify::ClientVerifier { inner, checks }))
            } else {
                builder.with_client_cert_verifier(inner)
            }
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder.with_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
    Ok((Arc::new(config), material))
}

/// A client (upstream) configuration trusting only the CAs in `ca`; with `cert` and `key` we
/// present that client certificate when the server asks for one.
pub fn client_config(
    ca: &Path,
    cert: Option<&Path>,
    key: Option<&Path>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let identity = match (cert, key) {
        (Some(cert), Some(key)) => Some(Identity {
            cert,
            key: Some(key),
            password: None,
        }),
        (None, None) => None,
        _ => return Err(TlsError::IncompleteClientIdentity),
    };
    Ok(client_config_with(ca, identity.as_ref(), &Policy::default())?.0)
}

/// A client (upstream) configuration under `policy`, trusting only the CAs in `ca`; with
/// `identity` we present that client certificate when the server asks for one. Also returns
/// what was loaded, for `check`.
pub fn client_config_with(
    ca: &Path,
    identity: Option<&Identity<'_>>,
    policy: &Policy,
) -> Result<(Arc<ClientConfig>, Material), TlsError> {
    let provider = provider_for(policy);
    let mut material = Material::default();
    let roots = Arc::new(root_store_noting(ca, &mut material)?);
    let identity = match identity {
        Some(identity) => Some(certified_key(&provider, identity, &mut material)?),
        None => None,
    };
    let crls = load_crls(policy, &mut material)?;
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(policy.min_version.versions())?;
    let checks = verify::Checks::new(&crls, &policy.allowed_identities);
    let builder = if crls.is_empty() && !checks.is_needed() {
        builder.with_root_certificates(roots)
    } else {
        let mut verifier = WebPkiServerVerifier::builder_with_provider(roots, provider)
            .with_crls(crls.iter().map(|c| c.der.clone()));
        if policy.crl_expired == CrlExpired::FailClosed {
            verifier = verifier.enforce_revocation_expiration();
        }
        let inner = verifier
            .build()
            .map_err(|source| TlsError::ServerVerifier {
                path: ca.to_path_buf(),
                source,
            })?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verify::ServerVerifier { inner, checks }))
    };
    let config = match identity {
        Some(certified) => {
            builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(certified)))
        }
        None => builder.with_no_client_auth(),
    };
    Ok((Arc::new(config), material))
}

/// Who the peer is, from its leaf certificate: the first DNS or URI subject alternative name,
/// else the subject common name. `None` without a peer certificate or when it names nothing.
///
/// Meant for logs and for rules that match on the sender's TLS identity; the certificate was
/// already verified by the handshake.
pub fn peer_identity(conn: &CommonState) -> Option<String> {
    let leaf = conn.peer_certificates()?.first()?;
    identity_of(leaf)
}

/// Every identity the peer's leaf certificate carries: its SAN DNS names and URIs, then its
/// CN. Rules match `tls_identity` against any of them. Empty without a certificate.
pub fn peer_identities(conn: &CommonState) -> Vec<String> {
    use x509_parser::extensions::GeneralName;

    let Some(leaf) = conn.peer_certificates().and_then(|certs| certs.first()) else {
        return Vec::new();
    };
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(leaf.as_ref()) else {
        return Vec::new();
    };
    let mut names = Vec::new();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(s) | GeneralName::URI(s) = name {
                names.push(s.to_string());
            }
        }
    }
    names.extend(
        parsed
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok().map(str::to_string)),
    );
    names.dedup();
    names
}

fn identity_of(cert: &CertificateDer<'_>) -> Option<String> {
    use x509_parser::extensions::GeneralName;

    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        let name = san.value.general_names.iter().find_map(|name| match name {
            GeneralName::DNSName(s) | GeneralName::URI(s) => Some(s.to_string()),
            _ => None,
        });
        if name.is_some() {
            return name;
        }
    }
    let common_name = parsed
        .subject()
        .iter_common_name()
        .find_map(|cn| cn.as_str().ok().map(str::to_string));
    common_name
}

#[cfg(test)]
mod tests;
