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
//!
//! Files: `error.rs` the errors, `policy.rs` versions, suites and CRL expiry, `pem.rs` reading
//! PEM files, `material.rs` loading an identity, CAs and CRLs, `server.rs` and `client.rs` the
//! two configurations, `peer.rs` the peer's identity after a handshake.

mod client;
mod error;
mod material;
mod peer;
mod pem;
pub mod pki;
mod policy;
mod server;
#[cfg(test)]
pub(crate) mod test_pki;
mod verify;

pub use self::client::{client_config, client_config_with, system_client_config, system_roots};
pub use self::error::{FileProblem, PemRole, TlsError};
pub use self::material::{Identity, LoadedCertificate, Material};
pub use self::peer::{peer_identities, peer_identity};
pub use self::pem::{read_certificates, read_private_key, read_private_key_with};
pub use self::policy::{cipher_suite, cipher_suite_names, CrlExpired, MinVersion, Policy};
pub use self::server::{server_config, server_config_with, ClientVerifierRef};

#[cfg(test)]
mod tests;
