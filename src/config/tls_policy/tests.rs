//! Unit tests of the TLS policy keys of a `tls` block and of an upstream's `via`.

use std::path::Path;

use crate::config::{Config, ConfigErrors};
use crate::tls::test_pki::Pki;
use crate::tls::{CrlExpired, MinVersion};

/// `ca.pem` issued `guard` (server, serial 7) and `lab` (client, serial 8); `fresh.crl`
/// revokes serial 8 and is current, `stale.crl` expired yesterday, `early.crl` starts
/// tomorrow; `pass` holds a password.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let ca = Pki::new(dir.path(), "ca");
        ca.issue_serial("guard", "guard.example.org", 7);
        ca.issue_serial("lab", "lab.example.org", 8);
        ca.write_crl("fresh.crl", &[8], -1, 7);
        ca.write_crl("stale.crl", &[8], -10, -1);
        ca.write_crl("early.crl", &[8], 1, 7);
        std::fs::write(dir.path().join("pass"), "s3cret\n").unwrap();
        Fixture { dir }
    }

    fn parse(&self, yaml: &str) -> Result<Config, ConfigErrors> {
        Config::parse(yaml, Path::new("guard.yaml"), self.dir.path())
    }

    fn errors(&self, yaml: &str) -> String {
        self.parse(yaml).unwrap_err().to_string()
    }
}

/// A route whose listener `tls` block gets `listener` and whose upstream `tls` block gets
/// `upstream` (both indented already), and `via` lines for the upstream.
fn yaml(listener: &str, upstream: &str, via: &str) -> String {
    format!(
        "routes:\n  - name: lab\n    listen: 127.0.0.1:0\n    tls:\n      cert: guard.pem\n      key: guard.key\n{listener}    allow: [127.0.0.1]\n    upstream:\n      address: localhost:2576\n      tls:\n        ca: ca.pem\n{upstream}{via}"
    )
}

#[test]
fn every_policy_key_parses_into_the_policy() {
    let fx = Fixture::new();
    let config = fx
        .parse(&yaml(
            "      client_ca: ca.pem\n      crl: [fresh.crl]\n      min_version: \"1.3\"\n      cipher_suites: [TLS13_AES_256_GCM_SHA384]\n      allowed_identities: [lab.example.org]\n",
            "        crl: [fresh.crl]\n        crl_expired: fail-open\n        cipher_suites: [TLS13_AES_128_GCM_SHA256, TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384]\n        allowed_identities: [\"urn:lab:1\", ehr.example.org]\n",
            "      via:\n        http_connect: 10.0.0.9:3128\n        username: guard\n        password_file: pass\n",
        ))
        .unwrap();
    let route = &config.routes[0];
    let listener = &route.tls.as_ref().unwrap().policy;
    assert_eq!(listener.min_version, MinVersion::Tls13);
    assert_eq!(listener.cipher_suites.len(), 1);
    assert_eq!(listener.crls, vec![fx.dir.path().join("fresh.crl")]);
    assert_eq!(listener.crl_expired, CrlExpired::FailClosed);
    let upstream = &route.upstream.tls.as_ref().unwrap().policy;
    assert_eq!(upstream.min_version, MinVersion::Tls12);
    assert_eq!(upstream.crl_expired, CrlExpired::FailOpen);
    assert_eq!(
        upstream.allowed_identities,
        ["urn:lab:1", "ehr.example.org"]
    );
    let via = route.upstream.via.as_ref().unwrap();
    assert_eq!(via.to_string(), "http_connect 10.0.0.9:3128");
    let creds = via.credentials.as_ref().unwrap();
    assert_eq!(
        (creds.username.as_str(), creds.password.as_str()),
        ("guard", "s3cret")
    );
    assert!(!format!("{config:?}").contains("s3cret"));
}

#[test]
fn an_unknown_cipher_suite_is_named_with_the_valid_ones() {
    let fx = Fixture::new();
    let err = fx.errors(&yaml(
        "      cipher_suites: [TLS13_AES_256_GCM_SHA384, TLS_RSA_WITH_RC4_128_MD5]\n",
        "",
        "",
    ));
    assert_eq!(
        err,
        format!(
            "guard.yaml:7:49: routes[0].tls.cipher_suites[1]: unknown cipher suite \"TLS_RSA_WITH_RC4_128_MD5\"; valid names: {}",
            crate::tls::cipher_suite_names().join(", ")
        )
    );
    assert!(err.contains("TLS13_AES_128_GCM_SHA256, "), "{err}");
}

#[test]
fn min_version_accepts_only_1_2_and_1_3_and_needs_a_matching_suite() {
    let fx = Fixture::new();
    assert_eq!(
        fx.errors(&yaml("      min_version: \"1.1\"\n", "", "")),
        "guard.yaml:7:20: routes[0].tls.min_version: \"1.1\" is not a TLS version this guard offers; write \"1.2\" or \"1.3\" (TLS 1.0 and 1.1 are never possible)"
    );
    assert_eq!(
        fx.errors(&yaml(
            "",
            "        min_version: \"1.3\"\n        cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384]\n",
            ""
        )),
        "guard.yaml:13:24: routes[0].upstream.tls.cipher_suites: min_version is \"1.3\" but none of these suites is a TLS 1.3 suite; add e.g. TLS13_AES_256_GCM_SHA384"
    );
}

#[test]
fn an_expired_or_future_crl_is_an_error_at_its_key_unless_fail_open() {
    let fx = Fixture::new();
    let err = fx.errors(&yaml(
        "      client_ca: ca.pem\n      crl: [fresh.crl, stale.crl]\n",
        "        crl: [early.crl]\n",
        "",
    ));
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(
        lines[0].starts_with("guard.yaml:8:24: routes[0].tls.crl[1]: file \"stale.crl\" holds a CRL of \"CN=ca test CA\" that expired at "),
        "{err}"
    );
    assert!(lines[0].ends_with("(nextUpdate is in the past); fetch a current CRL from the CA, or set `crl_expired: fail-open` to accept stale lists"), "{err}");
    assert!(
        lines[1].starts_with("guard.yaml:14:15: routes[0].upstream.tls.crl[0]: file \"early.crl\" holds a CRL of \"CN=ca test CA\" that is not valid before "),
        "{err}"
    );
    fx.parse(&yaml(
        "      client_ca: ca.pem\n      crl: [stale.crl]\n      crl_expired: fail-open\n",
        "",
        "",
    ))
    .unwrap();
    assert_eq!(
        fx.errors(&yaml("      client_ca: ca.pem\n      crl: [fresh.crl]\n      crl_expired: maybe\n", "", "")),
        "guard.yaml:9:20: routes[0].tls.crl_expired: \"maybe\" is not a choice here; write fail-closed (refuse while a CRL is stale, the default) or fail-open (log and keep using it)"
    );
}

#[test]
fn listener_crls_and_identities_need_client_certificates() {
    let fx = Fixture::new();
    assert_eq!(
        fx.errors(&yaml("      crl: [fresh.crl]\n", "", "")),
        "guard.yaml:7:12: routes[0].tls.crl: `crl` applies to client certificates, which this listener does not ask for; set `client_ca` too, or remove `crl`"
    );
}

#[test]
fn a_pem_certificate_needs_its_key_and_a_pkcs12_one_takes_none() {
    let fx = Fixture::new();
    let no_key = yaml("", "", "").replace("      key: guard.key\n", "");
    assert_eq!(
        fx.errors(&no_key),
        "guard.yaml:5:7: routes[0].tls: missing required key `key`; add `key: path/to/key.pem` (the certificate's private key), or give a PKCS#12 file (.p12/.pfx) as `cert`"
    );
    std::fs::write(fx.dir.path().join("guard.p12"), b"not really").unwrap();
    let p12_with_key = yaml("", "", "").replace("cert: guard.pem", "cert: guard.p12");
    assert_eq!(
        fx.errors(&p12_with_key),
        "guard.yaml:6:12: routes[0].tls.key: `key` is not used with a PKCS#12 certificate (the key is inside \"guard.p12\"); remove it"
    );
    let p12 = no_key.replace("cert: guard.pem", "cert: guard.p12");
    let err = fx.errors(&p12);
    assert!(
        err.starts_with(
            "guard.yaml:5:13: routes[0].tls.cert: file \"guard.p12\" is not a valid PKCS#12 file ("
        ),
        "{err}"
    );
}

#[test]
fn via_needs_exactly_one_proxy_and_a_password_file_with_a_username() {
    let fx = Fixture::new();
    assert_eq!(
        fx.errors(&yaml("", "", "      via:\n        socks5: 10.0.0.9:1080\n        http_connect: 10.0.0.9:3128\n")),
        "guard.yaml:14:23: routes[0].upstream.via.http_connect: give either `socks5` or `http_connect`, not both"
    );
    assert_eq!(
        fx.errors(&yaml("", "", "      via: { username: guard }\n")),
        "guard.yaml:12:12: routes[0].upstream.via: name the proxy: `socks5: host:port` or `http_connect: host:port`"
    );
    assert_eq!(
        fx.errors(&yaml("", "", "      via:\n        socks5: proxy.example.org\n        username: guard\n")),
        [
            "guard.yaml:13:17: routes[0].upstream.via.socks5: \"proxy.example.org\" has no port; write host:port, e.g. ehr.example.org:2575, 10.1.2.3:2575 or \"[2001:db8::7]:2575\"",
            "guard.yaml:14:19: routes[0].upstream.via.username: a proxy username needs its password: add `password_file` (never the password itself)",
        ]
        .join("\n")
    );
    assert_eq!(
        fx.errors(&yaml("", "", "      via:\n        socks5: 10.0.0.9:1080\n        password_file: pass\n")),
        "guard.yaml:14:24: routes[0].upstream.via.password_file: `password_file` is set but `username` is not: add the proxy username"
    );
    let err = fx.errors(&yaml("", "", "      via:\n        socks5: 10.0.0.9:1080\n        username: guard\n        password_file: nope.pass\n"));
    assert!(
        err.starts_with(
            "guard.yaml:15:24: routes[0].upstream.via.password_file: file \"nope.pass\" not found"
        ),
        "{err}"
    );
    assert_eq!(
        fx.errors(&yaml("", "", "      via:\n        socks4: 10.0.0.9:1080\n")),
        "guard.yaml:13:9: routes[0].upstream.via.socks4: unknown key `socks4` (did you mean `socks5`?); valid keys here: socks5, http_connect, username, password_file"
    );
}
