//! What the TLS block restricts beyond the files: the crypto provider narrowed to the configured
//! cipher suites, the protocol versions, and what an expired CRL does.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;

/// The provider narrowed to the policy's cipher suites (all of them when the list is empty).
pub(super) fn provider_for(policy: &Policy) -> Arc<CryptoProvider> {
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
    pub(super) fn versions(self) -> &'static [&'static rustls::SupportedProtocolVersion] {
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
