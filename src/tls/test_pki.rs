//! Certificates made on the fly for tests (shared with the config tests).

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};

/// A CA and the PEM files of certificates it issued, written into a directory.
pub(crate) struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
    dir: PathBuf,
}

impl Pki {
    /// A fresh CA whose certificate is written to `<dir>/<name>.pem`.
    pub(crate) fn new(dir: &Path, name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), ca.pem()).unwrap();
        Pki {
            ca,
            dir: dir.to_path_buf(),
        }
    }

    /// Issues a leaf certificate with these SANs (DNS names, IPs, or `uri:...`) and common
    /// name; writes `<dir>/<file>.pem` and `<dir>/<file>.key`.
    pub(crate) fn issue(&self, file: &str, sans: &[&str], common_name: &str) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        for san in sans {
            let san = if let Some(uri) = san.strip_prefix("uri:") {
                SanType::URI(uri.try_into().unwrap())
            } else if let Ok(ip) = san.parse() {
                SanType::IpAddress(ip)
            } else {
                SanType::DnsName((*san).try_into().unwrap())
            };
            params.subject_alt_names.push(san);
        }
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        std::fs::write(self.dir.join(format!("{file}.pem")), cert.pem()).unwrap();
        std::fs::write(self.dir.join(format!("{file}.key")), key.serialize_pem()).unwrap();
    }

    /// Issues a leaf for `name` with this serial number; writes `<file>.pem` and `.key`.
    pub(crate) fn issue_serial(&self, file: &str, name: &str, serial: u64) {
        let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.serial_number = Some(serial.into());
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        std::fs::write(self.dir.join(format!("{file}.pem")), cert.pem()).unwrap();
        std::fs::write(self.dir.join(format!("{file}.key")), key.serialize_pem()).unwrap();
    }

    /// Writes `<dir>/<file>` with a PEM CRL revoking these serials, valid from
    /// `from_days` to `until_days` relative to now.
    pub(crate) fn write_crl(&self, file: &str, revoked: &[u64], from_days: i64, until_days: i64) {
        let at = |days: i64| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64;
            let secs = (now + days * 86_400) as u64;
            rcgen::date_time_ymd(1970, 1, 1) + std::time::Duration::from_secs(secs)
        };
        let params = rcgen::CertificateRevocationListParams {
            this_update: at(from_days),
            next_update: at(until_days),
            crl_number: 1u64.into(),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|serial| rcgen::RevokedCertParams {
                    serial_number: (*serial).into(),
                    revocation_time: at(from_days),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.ca).unwrap();
        std::fs::write(self.dir.join(file), crl.pem().unwrap()).unwrap();
    }
}
