//! Who the peer is after a handshake, read from its (already verified) leaf certificate.

use rustls::CommonState;
use rustls_pki_types::CertificateDer;

/// Who the peer is, from its leaf certificate: the first DNS or URI subject alternative name,
/// else the subject common name. `None` without a peer certificate or when it names nothing.
///
/// Meant for logs and for rules that match on the sender's TLS identity; the certificate was
/// already verified by the handshake.
pub fn peer_identity(conn: &CommonState) -> Option<String> {
    let leaf = conn.peer_certificates()?.first()?;
    identity_of(leaf)
}

/// Every identity the peer's leaf certificate carries, as RFC 6125 compares them: its SAN DNS
/// names (lower case, without a trailing dot), its SAN URIs prefixed `uri:` (as written; a DNS
/// pattern never matches one), and its subject CN (like a DNS name) only when it has no DNS SAN.
/// Rules match `tls_identity` against any of them. Empty without a certificate.
pub fn peer_identities(conn: &CommonState) -> Vec<String> {
    use x509_parser::extensions::GeneralName;

    let Some(leaf) = conn.peer_certificates().and_then(|certs| certs.first()) else {
        return Vec::new();
    };
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(leaf.as_ref()) else {
        return Vec::new();
    };
    let mut dns = Vec::new();
    let mut uris = Vec::new();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(s) => dns.push(dns_identity(s)),
                GeneralName::URI(s) => uris.push(format!("uri:{s}")),
                _ => {}
            }
        }
    }
    let mut names = Vec::with_capacity(dns.len() + uris.len() + 1);
    let no_dns = dns.is_empty();
    names.extend(dns);
    names.extend(uris);
    if no_dns {
        names.extend(
            parsed
                .subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok().map(dns_identity)),
        );
    }
    names.dedup();
    names
}

/// A DNS identity as RFC 6125 compares it: ASCII lower case, without a trailing dot.
pub fn dns_identity(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
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
