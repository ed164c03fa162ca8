//! The TLS policy keys of a `tls` block (listener and upstream alike) and the upstream's `via`
//! egress proxy.
//!
//! `password_file`, `crl`, `crl_expired`, `min_version`, `cipher_suites`, `allowed_identities`
//! become a [`crate::tls::Policy`] (plus the password); `via` becomes an
//! [`crate::net::egress::Proxy`]. An `impl Validator` block like the rest of the config module:
//! every error is recorded with its YAML path, line and column and a fix, and all are collected
//! before giving up.
//!
//! Knows the policy keys only, not the block around them: the certificate, key and CA files are
//! checked and loaded (through [`crate::tls`]) by `tls_block.rs`, which calls in here.

use std::path::Path;

use serde_saphyr::Spanned;

use super::raw::{RawVia, Text};
use super::scalars::parse_upstream_address;
use super::validator::Validator;
use crate::net::egress::{Credentials, Proxy, ProxyKind};
use crate::tls::pki::{self, Password};
use crate::tls::{self, CrlExpired, MinVersion, Policy};

/// The policy keys as written (a view over the fields of `RawServerTls` / `RawClientTls`).
pub(super) struct RawPolicy<'a> {
    pub(super) crl: &'a Option<Spanned<Vec<Text>>>,
    pub(super) crl_expired: &'a Option<Text>,
    pub(super) min_version: &'a Option<Text>,
    pub(super) cipher_suites: &'a Option<Spanned<Vec<Text>>>,
    pub(super) allowed_identities: &'a Option<Spanned<Vec<Text>>>,
}

impl Validator<'_> {
    /// Reads `password_file` (`p` is the path of the block). `Err(())` when it was given but
    /// cannot be used (the error is recorded).
    pub(super) fn password_file(
        &mut self,
        p: &str,
        raw: &Option<Text>,
    ) -> Result<Option<Password>, ()> {
        let Some(raw) = raw else { return Ok(None) };
        let path = format!("{p}.password_file");
        let file = self.file(path.clone(), raw).ok_or(())?;
        match pki::read_password(&file) {
            Ok(password) => Ok(Some(password)),
            Err(pki::PkiProblem::Read(e)) => {
                let message = self.io_message(raw.value.trim(), &e);
                self.error(path, &raw.referenced, message);
                Err(())
            }
            Err(problem) => {
                self.error(
                    path,
                    &raw.referenced,
                    format!("file \"{}\" {problem}", raw.value.trim()),
                );
                Err(())
            }
        }
    }

    /// The policy keys of a `tls` block at `p`. `None` when any is wrong (errors recorded).
    pub(super) fn tls_policy(&mut self, p: &str, raw: &RawPolicy<'_>) -> Option<Policy> {
        let before = self.errors.len();
        let min_version = self.value(
            format!("{p}.min_version"),
            raw.min_version,
            MinVersion::default(),
            parse_min_version,
        );
        let crl_expired = self.value(
            format!("{p}.crl_expired"),
            raw.crl_expired,
            CrlExpired::default(),
            parse_crl_expired,
        );
        let mut cipher_suites = Vec::new();
        if let Some(list) = raw.cipher_suites {
            if list.value.is_empty() {
                self.error(
                    format!("{p}.cipher_suites"),
                    &list.referenced,
                    "the list is empty; remove `cipher_suites` to allow every suite, or name at least one",
                );
            }
            for (i, name) in list.value.iter().enumerate() {
                match tls::cipher_suite(name.value.trim()) {
                    Some(suite) if cipher_suites.contains(&suite) => self.error(
                        format!("{p}.cipher_suites[{i}]"),
                        &name.referenced,
                        format!("\"{}\" is listed twice; keep one", name.value.trim()),
                    ),
                    Some(suite) => cipher_suites.push(suite),
                    None => self.error(
                        format!("{p}.cipher_suites[{i}]"),
                        &name.referenced,
                        format!(
                            "unknown cipher suite \"{}\"; valid names: {}",
                            name.value.trim(),
                            tls::cipher_suite_names().join(", ")
                        ),
                    ),
                }
            }
            let has_tls13 = cipher_suites
                .iter()
                .any(|s| matches!(s, rustls::SupportedCipherSuite::Tls13(_)));
            if min_version == MinVersion::Tls13 && !cipher_suites.is_empty() && !has_tls13 {
                self.error(
                    format!("{p}.cipher_suites"),
                    &list.referenced,
                    "min_version is \"1.3\" but none of these suites is a TLS 1.3 suite; add e.g. TLS13_AES_256_GCM_SHA384",
                );
            }
        }
        let mut crls = Vec::new();
        if let Some(list) = raw.crl {
            if list.value.is_empty() {
                self.error(
                    format!("{p}.crl"),
                    &list.referenced,
                    "the list is empty; remove `crl` or name at least one CRL file",
                );
            }
            for (i, file) in list.value.iter().enumerate() {
                if let Some(path) = self.file(format!("{p}.crl[{i}]"), file) {
                    crls.push(path);
                }
            }
        }
        let mut allowed_identities = Vec::new();
        if let Some(list) = raw.allowed_identities {
            if list.value.is_empty() {
                self.error(
                    format!("{p}.allowed_identities"),
                    &list.referenced,
                    "an empty list would accept no certificate; remove the key or name at least one SAN DNS name or URI",
                );
            }
            for (i, name) in list.value.iter().enumerate() {
                let written = name.value.trim();
                if written.is_empty() || written.contains(char::is_whitespace) {
                    self.error(
                        format!("{p}.allowed_identities[{i}]"),
                        &name.referenced,
                        format!("\"{written}\" is not a DNS name or URI; write e.g. lab.example.org or urn:lab:1"),
                    );
                } else {
                    allowed_identities.push(written.to_string());
                }
            }
        }
        (self.errors.len() == before).then_some(Policy {
            min_version,
            cipher_suites,
            crls,
            crl_expired,
            allowed_identities,
        })
    }

    /// `via:` of the upstream at `p`. `None` when absent or wrong (errors recorded).
    pub(super) fn via(&mut self, p: &str, raw: &Option<Spanned<RawVia>>) -> Option<Proxy> {
        let raw = raw.as_ref()?;
        let p = format!("{p}.via");
        let v = &raw.value;
        let (kind, address) = match (&v.socks5, &v.http_connect) {
            (Some(a), None) => (ProxyKind::Socks5, a),
            (None, Some(a)) => (ProxyKind::HttpConnect, a),
            (Some(_), Some(b)) => {
                self.error(
                    format!("{p}.http_connect"),
                    &b.referenced,
                    "give either `socks5` or `http_connect`, not both",
                );
                return None;
            }
            (None, None) => {
                self.error(
                    &p,
                    &raw.referenced,
                    "name the proxy: `socks5: host:port` or `http_connect: host:port`",
                );
                return None;
            }
        };
        let key = match kind {
            ProxyKind::Socks5 => "socks5",
            ProxyKind::HttpConnect => "http_connect",
        };
        let address = match parse_upstream_address(&address.value) {
            Ok(a) => Some(a),
            Err(message) => {
                self.error(format!("{p}.{key}"), &address.referenced, message);
                None
            }
        };
        let password = self.password_file(&p, &v.password_file);
        let credentials = match (&v.username, password) {
            (None, Ok(None)) => Some(None),
            (Some(user), Ok(Some(password))) => {
                let name = user.value.trim();
                let too_long = kind == ProxyKind::Socks5
                    && (name.len() > 255 || password.as_str().len() > 255);
                if name.is_empty() {
                    self.error(
                        format!("{p}.username"),
                        &user.referenced,
                        "the username is empty",
                    );
                    None
                } else if too_long {
                    self.error(
                        format!("{p}.username"),
                        &user.referenced,
                        "SOCKS5 allows at most 255 bytes each for username and password",
                    );
                    None
                } else if kind == ProxyKind::HttpConnect && name.contains(':') {
                    self.error(
                        format!("{p}.username"),
                        &user.referenced,
                        "an HTTP basic auth username cannot contain ':'",
                    );
                    None
                } else {
                    Some(Some(Credentials {
                        username: name.to_string(),
                        password,
                    }))
                }
            }
            (Some(user), Ok(None)) => {
                self.error(
                    format!("{p}.username"),
                    &user.referenced,
                    "a proxy username needs its password: add `password_file` (never the password itself)",
                );
                None
            }
            (None, Ok(Some(_))) => {
                let at = v.password_file.as_ref().map(|f| &f.referenced);
                if let Some(at) = at {
                    self.error(
                        format!("{p}.password_file"),
                        at,
                        "`password_file` is set but `username` is not: add the proxy username",
                    );
                }
                None
            }
            (_, Err(())) => None,
        };
        let address = address?;
        Some(Proxy {
            kind,
            host: address.host,
            port: address.port,
            credentials: credentials?,
        })
    }
}

/// The files of a `tls` block that errors may point at, beyond cert/key/CA: the CRLs, in order.
pub(super) fn crl_keys(raw: &Option<Spanned<Vec<Text>>>) -> Vec<(String, &Text)> {
    raw.as_ref()
        .map(|list| {
            list.value
                .iter()
                .enumerate()
                .map(|(i, t)| (format!("crl[{i}]"), t))
                .collect()
        })
        .unwrap_or_default()
}

fn parse_min_version(s: &str) -> Result<MinVersion, String> {
    match s.trim() {
        "1.2" => Ok(MinVersion::Tls12),
        "1.3" => Ok(MinVersion::Tls13),
        other => Err(format!(
            "\"{other}\" is not a TLS version this guard offers; write \"1.2\" or \"1.3\" (TLS 1.0 and 1.1 are never possible)"
        )),
    }
}

fn parse_crl_expired(s: &str) -> Result<CrlExpired, String> {
    match s.trim() {
        "fail-closed" => Ok(CrlExpired::FailClosed),
        "fail-open" => Ok(CrlExpired::FailOpen),
        other => Err(format!(
            "\"{other}\" is not a choice here; write fail-closed (refuse while a CRL is stale, the default) or fail-open (log and keep using it)"
        )),
    }
}

/// A path as given to the TLS layer is resolved; this maps it back to the key that named it.
pub(super) fn same_file(base: &Path, written: &str, path: &Path) -> bool {
    base.join(written.trim()) == path || Path::new(written.trim()) == path
}

#[cfg(test)]
mod tests;
