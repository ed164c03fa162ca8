//! The `tls:` block of a listener ([`ServerTls`]) and of an upstream ([`ClientTls`]): its
//! certificate, key and CA files, loaded and checked through [`crate::tls`], with a
//! [`TlsError`] pinned back to the YAML key that named the file it is about.
//!
//! An `impl Validator` block. The block's policy keys (`password_file`, `crl`, `min_version`,
//! `cipher_suites`, `allowed_identities`) are read by `tls_policy.rs`; this file only hands
//! them over and uses the result.

use std::path::Path;

use rustls_pki_types::ServerName;
use serde_saphyr::{Location, Spanned};

use super::model::{ClientTls, ServerTls, UpstreamAddress};
use super::raw::{RawClientTls, RawServerTls, Text};
use super::scalars::parse_server_name;
use super::tls_policy::{crl_keys, same_file, RawPolicy};
use super::validator::Validator;
use crate::tls::{self, PemRole, TlsError};

impl Validator<'_> {
    /// Records a [`TlsError`] against the YAML key that named the file it is about.
    fn tls_error(
        &mut self,
        err: TlsError,
        p: &str,
        tls_at: &Location,
        files: &[(PemRole, String, &Text)],
    ) {
        let target = err.file().and_then(|(role, path)| {
            files
                .iter()
                .find(|(r, _, raw)| *r == role && same_file(self.base_dir, &raw.value, path))
                .or_else(|| files.iter().find(|(r, _, _)| *r == role))
        });
        let (path, at, written) = match target {
            Some((_, key, raw)) => (
                format!("{p}.{key}"),
                &raw.referenced,
                Some(raw.value.trim()),
            ),
            None => (p.to_string(), tls_at, None),
        };
        let message = match (&err, written) {
            (TlsError::File { problem, .. }, Some(written)) => match problem {
                tls::FileProblem::Read(e) => self.io_message(written, e),
                problem => format!("file \"{written}\" {problem}"),
            },
            (TlsError::Pki { problem, .. }, Some(written)) => match problem {
                tls::pki::PkiProblem::Read(e) => self.io_message(written, e),
                problem => format!("file \"{written}\" {problem}"),
            },
            (TlsError::KeyMismatch { .. }, Some(written)) => {
                let cert = files
                    .iter()
                    .find(|(r, _, _)| *r == PemRole::Certificate)
                    .map_or("", |(_, _, raw)| raw.value.trim());
                format!(
                    "the private key \"{written}\" does not match the certificate \"{cert}\" (their public keys differ); use the key the certificate was issued for"
                )
            }
            _ => err.to_string(),
        };
        self.error(path, at, message);
    }

    pub(super) fn server_tls(&mut self, p: &str, raw: &Spanned<RawServerTls>) -> Option<ServerTls> {
        let t = &raw.value;
        let cert = self.file(format!("{p}.cert"), &t.cert);
        let pkcs12 = tls::pki::is_pkcs12(Path::new(t.cert.value.trim()));
        let key = match (&t.key, pkcs12) {
            (Some(k), false) => self.file(format!("{p}.key"), k),
            (None, true) => cert.clone(),
            (Some(k), true) => {
                self.error(
                    format!("{p}.key"),
                    &k.referenced,
                    format!(
                        "`key` is not used with a PKCS#12 certificate (the key is inside \"{}\"); remove it",
                        t.cert.value.trim()
                    ),
                );
                None
            }
            (None, false) => {
                self.error(
                    p,
                    &raw.referenced,
                    "missing required key `key`; add `key: path/to/key.pem` (the certificate's private key), or give a PKCS#12 file (.p12/.pfx) as `cert`",
                );
                None
            }
        };
        let password = self.password_file(p, &t.password_file);
        let client_ca = match &t.client_ca {
            Some(ca) => Some(self.file(format!("{p}.client_ca"), ca)?),
            None => None,
        };
        let policy = self.tls_policy(p, &server_policy_keys(t));
        if client_ca.is_none() {
            let needs_ca = [
                ("crl", t.crl.as_ref().map(|c| &c.referenced)),
                (
                    "allowed_identities",
                    t.allowed_identities.as_ref().map(|a| &a.referenced),
                ),
            ];
            for (name, at) in needs_ca {
                if let Some(at) = at {
                    self.error(
                        format!("{p}.{name}"),
                        at,
                        format!("`{name}` applies to client certificates, which this listener does not ask for; set `client_ca` too, or remove `{name}`"),
                    );
                }
            }
            if t.crl.is_some() || t.allowed_identities.is_some() {
                return None;
            }
        }
        let (cert, key, password, policy) = (cert?, key?, password.ok()?, policy?);
        let mut files = vec![(PemRole::Certificate, "cert".to_string(), &t.cert)];
        if let Some(k) = &t.key {
            files.push((PemRole::PrivateKey, "key".to_string(), k));
        }
        if let Some(ca) = &t.client_ca {
            files.push((PemRole::TrustedCa, "client_ca".to_string(), ca));
        }
        for (key, raw) in crl_keys(&t.crl) {
            files.push((PemRole::Crl, key, raw));
        }
        let identity = tls::Identity {
            cert: &cert,
            key: Some(&key),
            password: password.as_ref(),
        };
        match tls::server_config_with(&identity, client_ca.as_deref(), &policy) {
            Ok((config, material, client_verifier)) => Some(ServerTls {
                cert,
                key,
                client_ca,
                policy,
                material,
                config,
                client_verifier,
            }),
            Err(err) => {
                self.tls_error(err, p, &raw.referenced, &files);
                None
            }
        }
    }

    pub(super) fn client_tls(
        &mut self,
        p: &str,
        raw: &Spanned<RawClientTls>,
        address: Option<&UpstreamAddress>,
    ) -> Option<ClientTls> {
        let t = &raw.value;
        let server_name = match &t.server_name {
            Some(name) => match parse_server_name(&name.value) {
                Ok(server_name) => Some(server_name),
                Err(message) => {
                    self.error(format!("{p}.server_name"), &name.referenced, message);
                    None
                }
            },
            // The address host was validated as a DNS name or an IP address already.
            None => address.and_then(|a| ServerName::try_from(a.host.clone()).ok()),
        };
        let ca = self.file(format!("{p}.ca"), &t.ca);
        let cert = t.cert.as_ref().map(|c| self.file(format!("{p}.cert"), c));
        let pkcs12 = t
            .cert
            .as_ref()
            .is_some_and(|c| tls::pki::is_pkcs12(Path::new(c.value.trim())));
        let key = match (&t.key, pkcs12) {
            (Some(k), true) => {
                self.error(
                    format!("{p}.key"),
                    &k.referenced,
                    "`key` is not used with a PKCS#12 certificate (the key is inside it); remove it",
                );
                Some(None)
            }
            (None, true) => cert.clone(),
            (k, false) => k.as_ref().map(|k| self.file(format!("{p}.key"), k)),
        };
        match (&t.cert, &t.key) {
            (Some(c), None) if !pkcs12 => self.error(
                format!("{p}.cert"),
                &c.referenced,
                "a client certificate needs its private key: add `key` next to `cert`",
            ),
            (None, Some(k)) => self.error(
                format!("{p}.key"),
                &k.referenced,
                "`key` is set but `cert` is not: add the client certificate as `cert`, or remove `key`",
            ),
            _ => {}
        }
        let password = self.password_file(p, &t.password_file);
        let policy = self.tls_policy(p, &client_policy_keys(t));
        let (cert, key) = match (cert, key) {
            (Some(cert), Some(key)) => (Some(cert?), Some(key?)),
            (None, None) => (None, None),
            _ => return None,
        };
        let ca = ca?;
        let server_name = server_name?;
        let (password, policy) = (password.ok()?, policy?);
        let mut files = vec![(PemRole::TrustedCa, "ca".to_string(), &t.ca)];
        if let Some(c) = &t.cert {
            files.push((PemRole::Certificate, "cert".to_string(), c));
        }
        if let Some(k) = &t.key {
            files.push((PemRole::PrivateKey, "key".to_string(), k));
        }
        for (key, raw) in crl_keys(&t.crl) {
            files.push((PemRole::Crl, key, raw));
        }
        let identity = cert.as_deref().map(|cert| tls::Identity {
            cert,
            key: key.as_deref(),
            password: password.as_ref(),
        });
        match tls::client_config_with(&ca, identity.as_ref(), &policy) {
            Ok((config, material)) => Some(ClientTls {
                ca,
                server_name,
                cert,
                key,
                policy,
                material,
                config,
            }),
            Err(err) => {
                self.tls_error(err, p, &raw.referenced, &files);
                None
            }
        }
    }
}

fn server_policy_keys(t: &RawServerTls) -> RawPolicy<'_> {
    RawPolicy {
        crl: &t.crl,
        crl_expired: &t.crl_expired,
        min_version: &t.min_version,
        cipher_suites: &t.cipher_suites,
        allowed_identities: &t.allowed_identities,
    }
}

fn client_policy_keys(t: &RawClientTls) -> RawPolicy<'_> {
    RawPolicy {
        crl: &t.crl,
        crl_expired: &t.crl_expired,
        min_version: &t.min_version,
        cipher_suites: &t.cipher_suites,
        allowed_identities: &t.allowed_identities,
    }
}
