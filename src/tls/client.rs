//! Upstream side: a rustls `ClientConfig` trusting only the configured CAs, with our optional
//! client certificate and the policy.

use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::sign::SingleCertAndKey;
use rustls::ClientConfig;

use super::error::TlsError;
use super::material::{certified_key, load_crls, root_store_noting, Identity, Material};
use super::policy::{provider_for, CrlExpired, Policy};
use super::verify;

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

/// The system's trusted root certificates (the OS store, e.g. `/etc/ssl/certs`), for https
/// webhooks without a `ca`. An error when none can be loaded.
pub fn system_roots() -> Result<rustls::RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why: Vec<String> = found.errors.iter().map(|e| e.to_string()).collect();
        return Err(format!(
            "no trusted root certificates on this system{}",
            if why.is_empty() {
                String::new()
            } else {
                format!(" ({})", why.join("; "))
            }
        ));
    }
    Ok(roots)
}

/// A client configuration trusting the system's roots (TLS 1.2 and 1.3, the default suites).
pub fn system_client_config() -> Result<Arc<ClientConfig>, String> {
    let roots = system_roots()?;
    let config = ClientConfig::builder_with_provider(provider_for(&Policy::default()))
        .with_protocol_versions(Policy::default().min_version.versions())
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
