//! Listener side: a rustls `ServerConfig` from our identity, the client CAs and the policy.

use std::path::Path;
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::sign::SingleCertAndKey;
use rustls::ServerConfig;

use super::error::TlsError;
use super::material::{certified_key, load_crls, root_store_noting, Identity, Material};
use super::policy::{provider_for, CrlExpired, Policy};
use super::verify;

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
/// the policy's CRLs). Also returns what was loaded, for `check`, and the client certificate
/// verifier (with `client_ca`), so that a reload can check connections already open.
pub fn server_config_with(
    identity: &Identity<'_>,
    client_ca: Option<&Path>,
    policy: &Policy,
) -> Result<(Arc<ServerConfig>, Material, Option<ClientVerifierRef>), TlsError> {
    let provider = provider_for(policy);
    let mut material = Material::default();
    let certified = certified_key(&provider, identity, &mut material)?;
    let crls = load_crls(policy, &mut material)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(policy.min_version.versions())?;
    let mut client_verifier: Option<ClientVerifierRef> = None;
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
            let verifier: ClientVerifierRef = if checks.is_needed() {
                Arc::new(verify::ClientVerifier { inner, checks })
            } else {
                inner
            };
            client_verifier = Some(verifier.clone());
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder.with_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
    Ok((Arc::new(config), material, client_verifier))
}

/// The verifier a listener checks its clients' certificates with.
pub type ClientVerifierRef = Arc<dyn rustls::server::danger::ClientCertVerifier>;
