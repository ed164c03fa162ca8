use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};
use rustls_pki_types::PrivateKeyDer;

use super::material::root_store_noting;
use super::pki::Password;
use super::test_pki::Pki;
use super::*;

/// The one crypto provider of the crate.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Builds a trust store from every certificate of a CA file.
fn root_store(path: &Path) -> Result<RootCertStore, TlsError> {
    root_store_noting(path, &mut Material::default())
}

struct Dir(tempfile::TempDir);

impl Dir {
    fn new() -> Dir {
        Dir(tempfile::tempdir().unwrap())
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }
    fn show(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
}

/// Drives a handshake between two in-memory connections, then checks application data flows.
fn handshake(
    client: &mut ClientConnection,
    server: &mut ServerConnection,
) -> Result<(), rustls::Error> {
    for _ in 0..20 {
        let mut buf = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut buf).unwrap();
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            server.read_tls(&mut rd).unwrap();
            server.process_new_packets()?;
        }
        let mut buf = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut buf).unwrap();
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            client.read_tls(&mut rd).unwrap();
            client.process_new_packets()?;
        }
        if !client.is_handshaking() && !server.is_handshaking() {
            return Ok(());
        }
    }
    panic!("handshake did not finish");
}

fn mtls_fixture() -> Dir {
    let dir = Dir::new();
    let servers = Pki::new(dir.0.path(), "server-ca");
    servers.issue("guard", &["guard.example.org"], "guard");
    let clients = Pki::new(dir.0.path(), "client-ca");
    clients.issue(
        "lab",
        &["lab-analyzer.example.org", "uri:urn:lab:1"],
        "Lab Analyzer",
    );
    clients.issue("nosan", &[], "Legacy Sender");
    dir
}

#[test]
fn server_and_client_configs_complete_an_mtls_handshake_and_name_the_client() {
    let dir = mtls_fixture();
    let server = server_config(
        &dir.path("guard.pem"),
        &dir.path("guard.key"),
        Some(&dir.path("client-ca.pem")),
    )
    .unwrap();
    let client = client_config(
        &dir.path("server-ca.pem"),
        Some(&dir.path("lab.pem")),
        Some(&dir.path("lab.key")),
    )
    .unwrap();
    assert!(server.alpn_protocols.is_empty());
    let name = ServerName::try_from("guard.example.org").unwrap();
    let mut c = ClientConnection::new(client, name).unwrap();
    let mut s = ServerConnection::new(server).unwrap();
    handshake(&mut c, &mut s).unwrap();
    assert_eq!(
        peer_identity(&s).as_deref(),
        Some("lab-analyzer.example.org")
    );
    assert_eq!(peer_identity(&c).as_deref(), Some("guard.example.org"));

    // Application data flows both ways.
    use std::io::{Read, Write};
    c.writer().write_all(b"\x0bMSH|^~\\&\x1c\r").unwrap();
    let mut buf = Vec::new();
    c.write_tls(&mut buf).unwrap();
    s.read_tls(&mut &buf[..]).unwrap();
    s.process_new_packets().unwrap();
    let mut got = [0u8; 11];
    s.reader().read_exact(&mut got).unwrap();
    assert_eq!(&got, b"\x0bMSH|^~\\&\x1c\r");
}

#[test]
fn peer_identity_falls_back_to_the_common_name_without_sans() {
    let dir = mtls_fixture();
    let server = server_config(
        &dir.path("guard.pem"),
        &dir.path("guard.key"),
        Some(&dir.path("client-ca.pem")),
    )
    .unwrap();
    let client = client_config(
        &dir.path("server-ca.pem"),
        Some(&dir.path("nosan.pem")),
        Some(&dir.path("nosan.key")),
    )
    .unwrap();
    let name = ServerName::try_from("guard.example.org").unwrap();
    let mut c = ClientConnection::new(client, name).unwrap();
    let mut s = ServerConnection::new(server).unwrap();
    handshake(&mut c, &mut s).unwrap();
    assert_eq!(peer_identity(&s).as_deref(), Some("Legacy Sender"));
}

#[test]
fn a_server_requiring_client_certificates_refuses_an_anonymous_client() {
    let dir = mtls_fixture();
    let server = server_config(
        &dir.path("guard.pem"),
        &dir.path("guard.key"),
        Some(&dir.path("client-ca.pem")),
    )
    .unwrap();
    let client = client_config(&dir.path("server-ca.pem"), None, None).unwrap();
    let name = ServerName::try_from("guard.example.org").unwrap();
    let mut c = ClientConnection::new(client, name).unwrap();
    let mut s = ServerConnection::new(server).unwrap();
    let err = handshake(&mut c, &mut s).unwrap_err();
    assert_eq!(err, rustls::Error::NoCertificatesPresented);
    assert_eq!(peer_identity(&s), None);
}

#[test]
fn a_client_certificate_from_another_ca_is_refused() {
    let dir = mtls_fixture();
    let server = server_config(
        &dir.path("guard.pem"),
        &dir.path("guard.key"),
        Some(&dir.path("client-ca.pem")),
    )
    .unwrap();
    // guard.pem is issued by server-ca, which the server does not trust for clients.
    let client = client_config(
        &dir.path("server-ca.pem"),
        Some(&dir.path("guard.pem")),
        Some(&dir.path("guard.key")),
    )
    .unwrap();
    let name = ServerName::try_from("guard.example.org").unwrap();
    let mut c = ClientConnection::new(client, name).unwrap();
    let mut s = ServerConnection::new(server).unwrap();
    let err = handshake(&mut c, &mut s).unwrap_err();
    assert_eq!(
        err,
        rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
    );
}

#[test]
fn a_plain_tls_handshake_without_client_auth_succeeds_with_tls_1_3() {
    let dir = mtls_fixture();
    let server = server_config(&dir.path("guard.pem"), &dir.path("guard.key"), None).unwrap();
    let client = client_config(&dir.path("server-ca.pem"), None, None).unwrap();
    let name = ServerName::try_from("guard.example.org").unwrap();
    let mut c = ClientConnection::new(client, name).unwrap();
    let mut s = ServerConnection::new(server).unwrap();
    handshake(&mut c, &mut s).unwrap();
    assert_eq!(c.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
    assert_eq!(peer_identity(&s), None);
}

#[test]
fn a_tls_1_2_only_client_is_still_served() {
    let dir = mtls_fixture();
    let server = server_config(&dir.path("guard.pem"), &dir.path("guard.key"), None).unwrap();
    let roots = root_store(&dir.path("server-ca.pem")).unwrap();
    let client = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from("guard.example.org").unwrap();
    let mut c = ClientConnection::new(Arc::new(client), name).unwrap();
    let mut s = ServerConnection::new(server).unwrap();
    handshake(&mut c, &mut s).unwrap();
    assert_eq!(s.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_2));
}

#[test]
fn a_key_that_does_not_match_its_certificate_is_named() {
    let dir = mtls_fixture();
    let err = server_config(&dir.path("guard.pem"), &dir.path("lab.key"), None).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "the private key \"{}\" does not match the certificate \"{}\" (their public keys differ); use the key the certificate was issued for",
            dir.show("lab.key"),
            dir.show("guard.pem")
        )
    );
    assert_eq!(
        err.file(),
        Some((PemRole::PrivateKey, dir.path("lab.key").as_path()))
    );
}

#[test]
fn a_ca_file_with_garbage_is_not_pem() {
    let dir = mtls_fixture();
    std::fs::write(
        dir.path("garbage.pem"),
        b"\x30\x82\x01\x0a this is not a certificate",
    )
    .unwrap();
    let err = client_config(&dir.path("garbage.pem"), None, None).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "CA certificate file \"{}\" is not PEM text (no \"-----BEGIN\" line); convert it to PEM (e.g. with openssl) or point at the right file",
            dir.show("garbage.pem")
        )
    );
}

#[test]
fn a_ca_file_with_damaged_base64_says_so() {
    let dir = mtls_fixture();
    std::fs::write(
        dir.path("damaged.pem"),
        "-----BEGIN CERTIFICATE-----\nnot*base64!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let err = client_config(&dir.path("damaged.pem"), None, None).unwrap_err();
    let TlsError::File {
        role: PemRole::TrustedCa,
        problem: FileProblem::BadPem(detail),
        ..
    } = &err
    else {
        panic!("unexpected error {err:?}");
    };
    assert!(detail.starts_with("bad base64: "), "{detail}");
}

#[test]
fn a_ca_file_holding_a_non_certificate_is_refused_as_trust_anchor() {
    let dir = mtls_fixture();
    std::fs::write(
        dir.path("junk-ca.pem"),
        "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let err = client_config(&dir.path("junk-ca.pem"), None, None).unwrap_err();
    assert!(
        err.to_string().starts_with(&format!(
            "CA certificate file \"{}\" holds a certificate (number 1 in the file) that cannot be used as a trust anchor (",
            dir.show("junk-ca.pem")
        )),
        "{err}"
    );
}

#[test]
fn a_certificate_file_that_holds_a_key_is_named_as_such() {
    let dir = mtls_fixture();
    let err = server_config(&dir.path("guard.key"), &dir.path("guard.key"), None).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "certificate file \"{}\" holds a private key, not a certificate; point this at the certificate PEM (\"-----BEGIN CERTIFICATE-----\")",
            dir.show("guard.key")
        )
    );
}

#[test]
fn a_key_file_that_holds_a_certificate_is_named_as_such() {
    let dir = mtls_fixture();
    let err = server_config(&dir.path("guard.pem"), &dir.path("guard.pem"), None).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "private key file \"{}\" holds a certificate, not a private key; point this at the private key PEM (\"-----BEGIN PRIVATE KEY-----\")",
            dir.show("guard.pem")
        )
    );
}

#[test]
fn a_combined_pem_with_chain_and_key_serves_as_both_cert_and_key() {
    let dir = mtls_fixture();
    let mut combined = std::fs::read(dir.path("guard.pem")).unwrap();
    combined.extend(std::fs::read(dir.path("guard.key")).unwrap());
    std::fs::write(dir.path("combined.pem"), combined).unwrap();
    server_config(&dir.path("combined.pem"), &dir.path("combined.pem"), None).unwrap();
}

#[test]
fn a_missing_file_is_reported_with_its_role_and_path() {
    let dir = Dir::new();
    let err = client_config(&dir.path("nope.pem"), None, None).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "CA certificate file \"{}\" cannot be read: No such file or directory (os error 2)",
            dir.show("nope.pem")
        )
    );
}

#[test]
fn a_client_certificate_without_its_key_is_refused() {
    let dir = mtls_fixture();
    let err =
        client_config(&dir.path("server-ca.pem"), Some(&dir.path("lab.pem")), None).unwrap_err();
    assert_eq!(
        err.to_string(),
        "a client certificate needs both a certificate file and its private key file; give both or neither"
    );
}

/// `ca.pem` issued `guard` (server, serial 7), `lab` (client, serial 8) and `revoked`
/// (client, serial 9); `ca.crl` revokes serial 9.
fn crl_fixture() -> Dir {
    let dir = Dir::new();
    let ca = Pki::new(dir.0.path(), "ca");
    ca.issue_serial("guard", "guard.example.org", 7);
    ca.issue_serial("lab", "lab.example.org", 8);
    ca.issue_serial("revoked", "revoked.example.org", 9);
    ca.write_crl("ca.crl", &[9], -1, 7);
    dir
}

fn identity<'a>(cert: &'a Path, key: &'a Path) -> Identity<'a> {
    Identity {
        cert,
        key: Some(key),
        password: None,
    }
}

fn policy_server(dir: &Dir, policy: &Policy) -> Arc<ServerConfig> {
    let (cert, key) = (dir.path("guard.pem"), dir.path("guard.key"));
    server_config_with(&identity(&cert, &key), Some(&dir.path("ca.pem")), policy)
        .unwrap()
        .0
}

#[test]
fn a_client_certificate_listed_in_the_crl_is_refused_and_others_pass() {
    let dir = crl_fixture();
    let policy = Policy {
        crls: vec![dir.path("ca.crl")],
        ..Policy::default()
    };
    let server = policy_server(&dir, &policy);
    let name = ServerName::try_from("guard.example.org").unwrap();
    for (client, expected) in [
        ("lab", Ok(())),
        (
            "revoked",
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Revoked,
            )),
        ),
    ] {
        let cfg = client_config(
            &dir.path("ca.pem"),
            Some(&dir.path(&format!("{client}.pem"))),
            Some(&dir.path(&format!("{client}.key"))),
        )
        .unwrap();
        let mut c = ClientConnection::new(cfg, name.clone()).unwrap();
        let mut s = ServerConnection::new(server.clone()).unwrap();
        assert_eq!(handshake(&mut c, &mut s), expected, "{client}");
    }
}

#[test]
fn an_upstream_certificate_listed_in_the_crl_or_not_allowed_is_refused() {
    let dir = crl_fixture();
    let (cert, key) = (dir.path("revoked.pem"), dir.path("revoked.key"));
    let server = server_config_with(&identity(&cert, &key), None, &Policy::default())
        .unwrap()
        .0;
    let policy = Policy {
        crls: vec![dir.path("ca.crl")],
        ..Policy::default()
    };
    let (client, material) = client_config_with(&dir.path("ca.pem"), None, &policy).unwrap();
    assert_eq!(material.crls.len(), 1);
    assert_eq!(material.certificates.len(), 1);
    let name = ServerName::try_from("revoked.example.org").unwrap();
    let mut c = ClientConnection::new(client, name.clone()).unwrap();
    let mut s = ServerConnection::new(server.clone()).unwrap();
    assert_eq!(
        handshake(&mut c, &mut s),
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::Revoked
        ))
    );

    let pinned = Policy {
        allowed_identities: vec!["lab.example.org".into()],
        ..Policy::default()
    };
    let client = client_config_with(&dir.path("ca.pem"), None, &pinned)
        .unwrap()
        .0;
    let mut c = ClientConnection::new(client, name.clone()).unwrap();
    let mut s = ServerConnection::new(server.clone()).unwrap();
    let err = handshake(&mut c, &mut s).unwrap_err();
    assert!(
        err.to_string().contains(
            "the certificate names [revoked.example.org], none of which is in allowed_identities"
        ),
        "{err}"
    );
    let pinned = Policy {
        allowed_identities: vec!["Revoked.Example.org.".into()],
        ..Policy::default()
    };
    let client = client_config_with(&dir.path("ca.pem"), None, &pinned)
        .unwrap()
        .0;
    let mut c = ClientConnection::new(client, name).unwrap();
    let mut s = ServerConnection::new(server).unwrap();
    handshake(&mut c, &mut s).unwrap();
}

#[test]
fn min_version_1_3_refuses_a_tls_1_2_only_client() {
    let dir = crl_fixture();
    let policy = Policy {
        min_version: MinVersion::Tls13,
        ..Policy::default()
    };
    let (cert, key) = (dir.path("guard.pem"), dir.path("guard.key"));
    let server = server_config_with(&identity(&cert, &key), None, &policy)
        .unwrap()
        .0;
    let client = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(root_store(&dir.path("ca.pem")).unwrap())
        .with_no_client_auth();
    let name = ServerName::try_from("guard.example.org").unwrap();
    let mut c = ClientConnection::new(Arc::new(client), name).unwrap();
    let mut s = ServerConnection::new(server).unwrap();
    assert_eq!(
        handshake(&mut c, &mut s),
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOfferedOrEnabled
        ))
    );
}

#[test]
fn cipher_suites_restrict_what_the_server_accepts() {
    let dir = crl_fixture();
    let policy = Policy {
        cipher_suites: vec![cipher_suite("TLS13_AES_256_GCM_SHA384").unwrap()],
        ..Policy::default()
    };
    let (cert, key) = (dir.path("guard.pem"), dir.path("guard.key"));
    let server = server_config_with(&identity(&cert, &key), None, &policy)
        .unwrap()
        .0;
    let offer = |suite: &str| {
        let narrowed = Policy {
            cipher_suites: vec![cipher_suite(suite).unwrap()],
            ..Policy::default()
        };
        let client = client_config_with(&dir.path("ca.pem"), None, &narrowed)
            .unwrap()
            .0;
        let name = ServerName::try_from("guard.example.org").unwrap();
        let mut c = ClientConnection::new(client, name).unwrap();
        let mut s = ServerConnection::new(server.clone()).unwrap();
        handshake(&mut c, &mut s).map(|()| s.negotiated_cipher_suite().unwrap().suite())
    };
    assert_eq!(
        offer("TLS13_AES_256_GCM_SHA384"),
        Ok(rustls::CipherSuite::TLS13_AES_256_GCM_SHA384)
    );
    assert_eq!(
        offer("TLS13_AES_128_GCM_SHA256"),
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::NoCipherSuitesInCommon
        ))
    );
    assert!(cipher_suite("TLS_RSA_WITH_AES_128_CBC_SHA").is_none());
    assert!(!cipher_suite_names()
        .iter()
        .any(|n| n.contains("_RSA_WITH_") && !n.contains("ECDHE")));
}

/// Writes `<file>` as a PKCS#12 bundle of `guard` made with p12-keystore's writer.
fn write_p12(dir: &Dir, file: &str, password: &str) {
    use p12_keystore::{Certificate, KeyStore, KeyStoreEntry, PrivateKey, PrivateKeyChain};
    let chain = read_certificates(&dir.path("guard.pem"), PemRole::Certificate).unwrap();
    let PrivateKeyDer::Pkcs8(key) = read_private_key(&dir.path("guard.key")).unwrap() else {
        panic!("rcgen writes PKCS#8");
    };
    let certs = chain
        .iter()
        .map(|c| Certificate::from_der(c.as_ref()).unwrap());
    let entry = PrivateKeyChain::new(
        "guard",
        PrivateKey::from_der(key.secret_pkcs8_der()).unwrap(),
        certs,
    );
    let mut store = KeyStore::new();
    store.add_entry("guard", KeyStoreEntry::PrivateKeyChain(entry));
    let bytes = store.writer(password).write().unwrap();
    std::fs::write(dir.path(file), bytes).unwrap();
}

#[test]
fn a_pkcs12_bundle_loads_with_its_password_and_a_wrong_one_is_named() {
    let dir = crl_fixture();
    write_p12(&dir, "guard.p12", "s3cret");
    let p12 = dir.path("guard.p12");
    let good = Password::new("s3cret");
    let with = |password| Identity {
        cert: &p12,
        key: None,
        password,
    };
    let (server, material, _) =
        server_config_with(&with(Some(&good)), None, &Policy::default()).unwrap();
    assert_eq!(
        material.certificates[0].dates.subject,
        "CN=guard.example.org"
    );
    let client = client_config(&dir.path("ca.pem"), None, None).unwrap();
    let name = ServerName::try_from("guard.example.org").unwrap();
    let mut c = ClientConnection::new(client, name).unwrap();
    let mut s = ServerConnection::new(server).unwrap();
    handshake(&mut c, &mut s).unwrap();

    let bad = Password::new("guess");
    let err = server_config_with(&with(Some(&bad)), None, &Policy::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "certificate file \"{}\" cannot be opened with the password from password_file (wrong password)",
            dir.show("guard.p12")
        )
    );
    let err = server_config_with(&with(None), None, &Policy::default()).unwrap_err();
    assert!(
        err.to_string().ends_with(
            "is encrypted but no password is configured; add `password_file` next to it"
        ),
        "{err}"
    );
    write_p12(&dir, "open.p12", "");
    let open = dir.path("open.p12");
    let identity = Identity {
        cert: &open,
        key: None,
        password: None,
    };
    server_config_with(&identity, None, &Policy::default()).unwrap();
}

#[test]
fn a_pem_certificate_without_a_key_is_named() {
    let dir = crl_fixture();
    let cert = dir.path("guard.pem");
    let identity = Identity {
        cert: &cert,
        key: None,
        password: None,
    };
    let err = server_config_with(&identity, None, &Policy::default()).unwrap_err();
    assert!(matches!(err, TlsError::KeyRequired { .. }), "{err}");
}
