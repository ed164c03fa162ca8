//! PKI files beyond plain PEM: PKCS#12 bundles, encrypted PEM keys, password files, CRLs, and
//! what a certificate or CRL says about its own validity dates.
//!
//! Owns reading and decoding these files and wording what is wrong with them (wrong password,
//! no key, unsupported algorithm, expired CRL). It builds no rustls configuration and knows
//! nothing of routes, YAML or MLLP: [`crate::tls`] calls it and [`crate::config`] reports its
//! errors at the YAML key that named the file.
//!
//! - PKCS#12 (`.p12` / `.pfx`) is parsed by `p12-keystore` (pure Rust): modern PBES2/AES files
//!   and legacy 3DES/RC2 ones (`openssl pkcs12 -export -legacy`) alike.
//! - Encrypted PEM keys are PKCS#8 `ENCRYPTED PRIVATE KEY` blocks (PBES2, as `openssl pkcs8
//!   -topk8 -v2 aes-256-cbc` writes them), decrypted by `pkcs8`. The traditional OpenSSL format
//!   with a `Proc-Type: 4,ENCRYPTED` header is not supported (convert it with `openssl pkcs8`).
//! - A password file holds the password on its first line; one trailing newline (LF or CRLF) is
//!   dropped. Passwords never reach `Debug` or logs.

use std::fmt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

/// A password read from a `password_file`. Shows as `Password(..)` in `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub fn new(text: impl Into<String>) -> Password {
        Password(text.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(..)")
    }
}

/// What is wrong with a PKCS#12 file, an encrypted key, a password file or a CRL. Each message
/// reads after the file's name.
#[derive(Debug, thiserror::Error)]
pub enum PkiProblem {
    #[error("cannot be read: {0}")]
    Read(#[source] std::io::Error),
    #[error("cannot be opened with the password from password_file (wrong password)")]
    WrongPassword,
    #[error("is encrypted but no password is configured; add `password_file` next to it")]
    PasswordRequired,
    #[error("holds no private key together with its certificate; export the key and its certificate chain into the PKCS#12 file")]
    NoKey,
    #[error("uses an unsupported algorithm ({0}); export it again with AES (e.g. `openssl pkcs12 -export` or `openssl pkcs8 -topk8 -v2 aes-256-cbc`)")]
    UnsupportedAlgorithm(String),
    #[error("is not a valid PKCS#12 file ({0}); export it again")]
    BadPkcs12(String),
    #[error("holds a private key encrypted in the traditional OpenSSL format (Proc-Type: 4,ENCRYPTED), which is not supported; convert it with `openssl pkcs8 -topk8 -v2 aes-256-cbc`")]
    LegacyEncryptedKey,
    #[error("holds an encrypted private key that cannot be decoded ({0})")]
    BadEncryptedKey(String),
    #[error("is empty; write the password on its first line")]
    EmptyPassword,
    #[error("contains no certificate revocation list (no \"-----BEGIN X509 CRL-----\" block and not a DER CRL)")]
    NoCrl,
    #[error("holds a CRL that cannot be parsed ({0}); download it again")]
    BadCrl(String),
    #[error("holds a CRL of \"{issuer}\" that expired at {next_update} (nextUpdate is in the past); fetch a current CRL from the CA, or set `crl_expired: fail-open` to accept stale lists")]
    CrlExpired { issuer: String, next_update: String },
    #[error("holds a CRL of \"{issuer}\" that is not valid before {this_update} (thisUpdate is in the future); check the clock or the CRL")]
    CrlNotYetValid { issuer: String, this_update: String },
}

/// A time as `2026-11-22T08:00:00Z`.
pub fn show_time(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

fn system_time(timestamp: i64) -> SystemTime {
    match u64::try_from(timestamp) {
        Ok(secs) => SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
        Err(_) => SystemTime::UNIX_EPOCH,
    }
}

/// Reads a password file: the whole text without one trailing newline (LF or CRLF).
pub fn read_password(path: &Path) -> Result<Password, PkiProblem> {
    let text = std::fs::read_to_string(path).map_err(PkiProblem::Read)?;
    let text = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(&text);
    if text.is_empty() {
        return Err(PkiProblem::EmptyPassword);
    }
    Ok(Password(text.to_string()))
}

/// Whether a certificate path names a PKCS#12 file (`.p12` or `.pfx`, any case).
pub fn is_pkcs12(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("p12") || e.eq_ignore_ascii_case("pfx"))
}

/// The certificate chain (leaf first) and private key of a PKCS#12 file. No password means the
/// empty one (`openssl pkcs12 -export -passout pass:`).
pub fn read_pkcs12(
    path: &Path,
    password: Option<&Password>,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), PkiProblem> {
    use p12_keystore::error::Error as P12;
    let bytes = std::fs::read(path).map_err(PkiProblem::Read)?;
    let secret = password.map_or("", Password::as_str);
    let store = p12_keystore::KeyStore::from_pkcs12(
        &bytes,
        secret,
        p12_keystore::Pkcs12ImportPolicy::Strict,
    )
    .map_err(|e| match e {
        // The MAC over the contents is keyed by the password; a wrong one fails it first.
        P12::MacError(_) | P12::UnpadError => {
            if password.is_none() {
                PkiProblem::PasswordRequired
            } else {
                PkiProblem::WrongPassword
            }
        }
        P12::UnsupportedEncryptionScheme | P12::UnsupportedMacAlgorithm => {
            PkiProblem::UnsupportedAlgorithm(e.to_string())
        }
        P12::Pkcs5Error(ref detail) if detail.to_ascii_lowercase().contains("unsupported") => {
            PkiProblem::UnsupportedAlgorithm(detail.clone())
        }
        other => PkiProblem::BadPkcs12(other.to_string()),
    })?;
    let (_, chain) = store.private_key_chain().ok_or(PkiProblem::NoKey)?;
    if chain.certs().is_empty() {
        return Err(PkiProblem::NoKey);
    }
    let certs = chain
        .certs()
        .iter()
        .map(|c| CertificateDer::from(c.as_der().to_vec()))
        .collect();
    let key = PrivateKeyDer::Pkcs8(chain.key().as_der().to_vec().into());
    Ok((certs, key))
}

/// Whether PEM text holds a PKCS#8 `ENCRYPTED PRIVATE KEY` block.
pub fn holds_encrypted_key(bytes: &[u8]) -> bool {
    contains(bytes, b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
}

/// Whether PEM text holds a traditional OpenSSL encrypted key (`Proc-Type: 4,ENCRYPTED`).
pub fn holds_legacy_encrypted_key(bytes: &[u8]) -> bool {
    contains(bytes, b"Proc-Type: 4,ENCRYPTED")
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Decrypts the first `ENCRYPTED PRIVATE KEY` block of PEM text.
pub fn decrypt_pem_key(
    bytes: &[u8],
    password: Option<&Password>,
) -> Result<PrivateKeyDer<'static>, PkiProblem> {
    use pkcs8::der::Decode;
    let password = password.ok_or(PkiProblem::PasswordRequired)?;
    let text = String::from_utf8_lossy(bytes);
    let begin = "-----BEGIN ENCRYPTED PRIVATE KEY-----";
    let end = "-----END ENCRYPTED PRIVATE KEY-----";
    let start = text
        .find(begin)
        .ok_or_else(|| PkiProblem::BadEncryptedKey("no begin line".into()))?;
    let stop = text[start..]
        .find(end)
        .map(|i| start + i + end.len())
        .ok_or_else(|| PkiProblem::BadEncryptedKey(format!("missing the end line \"{end}\"")))?;
    let (_, der) = pkcs8::der::pem::decode_vec(text[start..stop].as_bytes())
        .map_err(|e| PkiProblem::BadEncryptedKey(e.to_string()))?;
    let info = pkcs8::EncryptedPrivateKeyInfoRef::from_der(&der)
        .map_err(|e| PkiProblem::BadEncryptedKey(e.to_string()))?;
    let plain = info.decrypt(password.as_str()).map_err(|e| match e {
        pkcs8::Error::EncryptedPrivateKey(pkcs8::pkcs5::Error::AlgorithmParametersInvalid {
            ..
        })
        | pkcs8::Error::EncryptedPrivateKey(pkcs8::pkcs5::Error::UnsupportedAlgorithm { .. }) => {
            PkiProblem::UnsupportedAlgorithm(e.to_string())
        }
        // PBES2 has no integrity check of its own: a wrong password shows as bad padding or as
        // garbage that is not a private key.
        _ => PkiProblem::WrongPassword,
    })?;
    let der = plain.as_bytes().to_vec();
    if pkcs8::PrivateKeyInfoRef::from_der(&der).is_err() {
        return Err(PkiProblem::WrongPassword);
    }
    Ok(PrivateKeyDer::Pkcs8(der.into()))
}

/// What `mllp-guard check` says about one certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateDates {
    /// The subject, e.g. `CN=guard.example.org`.
    pub subject: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// The subject and validity dates of a DER certificate; `None` when it does not parse.
pub fn certificate_dates(der: &CertificateDer<'_>) -> Option<CertificateDates> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let validity = cert.validity();
    Some(CertificateDates {
        subject: cert.subject().to_string(),
        not_before: system_time(validity.not_before.timestamp()),
        not_after: system_time(validity.not_after.timestamp()),
    })
}

/// One revocation list as loaded.
#[derive(Clone, Debug)]
pub struct Crl {
    pub der: CertificateRevocationListDer<'static>,
    /// The issuer, e.g. `CN=Hospital CA`.
    pub issuer: String,
    /// The issuer name as DER (to match certificates against).
    pub issuer_der: Vec<u8>,
    pub this_update: SystemTime,
    /// `None` when the CRL gives no next update.
    pub next_update: Option<SystemTime>,
    /// The raw serial numbers of the revoked certificates.
    pub revoked: Vec<Vec<u8>>,
}

impl Crl {
    /// Why this CRL is not valid at `now` (expired or not yet valid), if it is not.
    pub fn validity_problem(&self, now: SystemTime) -> Option<PkiProblem> {
        if let Some(next) = self.next_update {
            if next < now {
                return Some(PkiProblem::CrlExpired {
                    issuer: self.issuer.clone(),
                    next_update: show_time(next),
                });
            }
        }
        if self.this_update > now {
            return Some(PkiProblem::CrlNotYetValid {
                issuer: self.issuer.clone(),
                this_update: show_time(self.this_update),
            });
        }
        None
    }
}

/// Every CRL of a file: PEM (`-----BEGIN X509 CRL-----`, several allowed) or one DER CRL.
pub fn read_crls(path: &Path) -> Result<Vec<Crl>, PkiProblem> {
    let bytes = std::fs::read(path).map_err(PkiProblem::Read)?;
    let ders: Vec<CertificateRevocationListDer<'static>> = if contains(&bytes, b"-----BEGIN") {
        CertificateRevocationListDer::pem_slice_iter(&bytes)
            .collect::<Result<_, _>>()
            .map_err(|e| PkiProblem::BadCrl(e.to_string()))?
    } else if bytes.first() == Some(&0x30) {
        vec![CertificateRevocationListDer::from(bytes)]
    } else {
        Vec::new()
    };
    if ders.is_empty() {
        return Err(PkiProblem::NoCrl);
    }
    ders.into_iter().map(parse_crl).collect()
}

fn parse_crl(der: CertificateRevocationListDer<'static>) -> Result<Crl, PkiProblem> {
    let (_, crl) =
        x509_parser::parse_x509_crl(der.as_ref()).map_err(|e| PkiProblem::BadCrl(e.to_string()))?;
    let parsed = Crl {
        issuer: crl.issuer().to_string(),
        issuer_der: crl.issuer().as_raw().to_vec(),
        this_update: system_time(crl.last_update().timestamp()),
        next_update: crl.next_update().map(|t| system_time(t.timestamp())),
        revoked: crl
            .iter_revoked_certificates()
            .map(|r| r.raw_serial().to_vec())
            .collect(),
        der: CertificateRevocationListDer::from(Vec::new()),
    };
    Ok(Crl { der, ..parsed })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_file_loses_one_trailing_newline_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pass");
        std::fs::write(&p, "s3cret \r\n").unwrap();
        assert_eq!(read_password(&p).unwrap().as_str(), "s3cret ");
        std::fs::write(&p, "two\n\n").unwrap();
        assert_eq!(read_password(&p).unwrap().as_str(), "two\n");
        std::fs::write(&p, "\n").unwrap();
        assert!(matches!(read_password(&p), Err(PkiProblem::EmptyPassword)));
        assert_eq!(format!("{:?}", Password::new("x")), "Password(..)");
    }

    #[test]
    fn pkcs12_is_recognised_by_its_extension() {
        assert!(is_pkcs12(Path::new("a/guard.p12")));
        assert!(is_pkcs12(Path::new("guard.PFX")));
        assert!(!is_pkcs12(Path::new("guard.pem")));
    }

    #[test]
    fn a_file_without_a_crl_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.crl");
        std::fs::write(&p, "hello").unwrap();
        assert!(matches!(read_crls(&p), Err(PkiProblem::NoCrl)));
    }
}
