//! Test certificates made on the spot with rcgen: a CA per test and leaves it signs. Also used by
//! `examples/demo_certs.rs` to make the demo certificates shipped in `rules/certs/`.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// A certificate authority that signs leaves.
pub struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

/// A leaf certificate: PEM chain (leaf then CA) and PEM private key.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

#[derive(Clone, Copy, PartialEq, Eq)]
#[allow(dead_code)]
pub enum Usage {
    Server,
    Client,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(2124, 1, 1);
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Pki { ca }
    }

    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// A leaf for `name` (its CN and first SAN); `localhost` and 127.0.0.1 are added for servers.
    pub fn leaf(&self, name: &str, usage: Usage) -> Leaf {
        let mut sans = vec![name.to_string()];
        if usage == Usage::Server {
            sans.push("localhost".into());
            sans.push("127.0.0.1".into());
        }
        sans.dedup();
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(2124, 1, 1);
        params.extended_key_usages = vec![match usage {
            Usage::Server => ExtendedKeyUsagePurpose::ServerAuth,
            Usage::Client => ExtendedKeyUsagePurpose::ClientAuth,
        }];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        Leaf {
            cert_pem: format!("{}{}", cert.pem(), self.ca.pem()),
            key_pem: key.serialize_pem(),
        }
    }

    /// Writes `ca.pem` into `dir`.
    pub fn write_ca(&self, dir: &Path, file: &str) -> PathBuf {
        let path = dir.join(file);
        std::fs::write(&path, self.ca_pem()).unwrap();
        path
    }
}

// Used by the TLS policy tests, not by examples/demo_certs.rs (which includes this file).
#[allow(dead_code)]
impl Pki {
    /// A leaf like [`Pki::leaf`] with a chosen serial number and end date (`until_days` from
    /// now; the start date stays in the past).
    pub fn leaf_with(&self, name: &str, usage: Usage, serial: u64, until_days: i64) -> Leaf {
        let mut sans = vec![name.to_string()];
        if usage == Usage::Server {
            sans.push("localhost".into());
            sans.push("127.0.0.1".into());
        }
        sans.dedup();
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.serial_number = Some(serial.into());
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = days_from_now(until_days);
        params.extended_key_usages = vec![match usage {
            Usage::Server => ExtendedKeyUsagePurpose::ServerAuth,
            Usage::Client => ExtendedKeyUsagePurpose::ClientAuth,
        }];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        Leaf {
            cert_pem: format!("{}{}", cert.pem(), self.ca.pem()),
            key_pem: key.serialize_pem(),
        }
    }

    /// A PEM CRL of this CA revoking `serials`, valid from `from_days` to `until_days` from now.
    pub fn crl_pem(&self, serials: &[u64], from_days: i64, until_days: i64) -> String {
        let params = rcgen::CertificateRevocationListParams {
            this_update: days_from_now(from_days),
            next_update: days_from_now(until_days),
            crl_number: 1u64.into(),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|serial| rcgen::RevokedCertParams {
                    serial_number: (*serial).into(),
                    revocation_time: days_from_now(from_days),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        params.signed_by(&self.ca).unwrap().pem().unwrap()
    }
}

impl Leaf {
    /// Writes `<stem>.pem` and `<stem>.key` into `dir`, returning their paths.
    pub fn write(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{stem}.pem"));
        let key = dir.join(format!("{stem}.key"));
        std::fs::write(&cert, &self.cert_pem).unwrap();
        std::fs::write(&key, &self.key_pem).unwrap();
        (cert, key)
    }
}

/// Now plus `days` (negative: in the past).
#[allow(dead_code)]
fn days_from_now(days: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() + time::Duration::days(days)
}
