//! Unit tests of the config module as a whole: the contract example, defaults, every error
//! message with its file:line:col, document order, TLS files, and the value parsers.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls_pki_types::ServerName;

use super::error::{closest, edit_distance};
use super::model::DEFAULT_DEAD_LETTERS;
use super::scalars::{parse_byte, parse_frame_size, parse_route_name, parse_size};
use super::validator::listen_clash;
use super::*;
use crate::firewall::policy::Allowlist;
use crate::tls::test_pki::Pki;
use crate::wire::codec::Framing;

/// A config directory with certificates: `certs/ca.pem` issued `guard` (server) and
/// `client` (client), and `certs/ehr-ca.pem` issued `ehr`.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        std::fs::create_dir(&certs).unwrap();
        let ca = Pki::new(&certs, "clients");
        ca.issue("client", &["lab.example.org"], "lab");
        ca.issue("guard", &["guard.example.org"], "guard");
        let ehr = Pki::new(&certs, "ehr-ca");
        ehr.issue("ehr", &["ehr.example.org"], "ehr");
        Fixture { dir }
    }

    fn base(&self) -> &Path {
        self.dir.path()
    }

    fn parse(&self, yaml: &str) -> Result<Config, ConfigErrors> {
        Config::parse(yaml, Path::new("guard.yaml"), self.base())
    }

    fn errors(&self, yaml: &str) -> String {
        self.parse(yaml).unwrap_err().to_string()
    }

    /// Errors with the temporary directory replaced by `$DIR`.
    fn errors_in_dir(&self, yaml: &str) -> String {
        self.errors(yaml)
            .replace(&self.base().display().to_string(), "$DIR")
    }
}

/// Errors of a config needing no files.
fn errors(yaml: &str) -> String {
    Config::parse(yaml, Path::new("guard.yaml"), Path::new("/etc/mllp-guard"))
        .unwrap_err()
        .to_string()
}

const MINIMAL: &str = "\
routes:
  - name: lab
    listen: 127.0.0.1:2575
    allow: [127.0.0.0/8]
    upstream:
      address: 127.0.0.1:2576
";

const CONTRACT: &str = r#"
routes:
  - name: lab                        # unique, [a-z0-9-]
    listen: 127.0.0.1:2575           # also [::1]:2575, 0.0.0.0:2575
    tls:                             # optional; absent = plaintext listener
      cert: certs/guard.pem          # chain PEM
      key: certs/guard.key
      client_ca: certs/clients.pem   # optional; present = client certificate required and verified
    allow: [127.0.0.0/8, "::1/128"]  # required: CIDRs or bare IPs; ["any"] opens it explicitly; [] denies all
    max_connections: 256
    max_message_bytes: 16MiB
    receive_timeout: 30s             # a frame that has started must finish within this
    idle_timeout: 0s                 # close a quiet sender after this; 0s = never
    on_upstream_failure: nack        # nack = answer AE with the reason; close = close the sender's connection
    upstream:
      address: 127.0.0.1:2576        # host:port, DNS names allowed
      tls:                           # optional; absent = plaintext
        ca: certs/ehr-ca.pem
        server_name: ehr.example.org # optional, defaults to the host part of address
        cert: certs/client.pem       # optional client certificate
        key: certs/client.key
      connections: paired            # paired = one upstream connection per sender connection; or a number N = shared pool of N
      connect_timeout: 5s
      ack_timeout: 30s
      keepalive: { time: 60s, interval: 10s, retries: 6 }   # TCP keepalive, applied on both legs
"#;

#[test]
fn the_contract_example_parses_into_typed_values() {
    let fx = Fixture::new();
    let config = fx.parse(CONTRACT).unwrap();
    assert_eq!(config.file, Path::new("guard.yaml"));
    assert_eq!(config.shutdown_grace, Duration::from_secs(10));
    let [route] = &config.routes[..] else {
        panic!("one route expected");
    };
    assert_eq!(route.name, "lab");
    assert_eq!(
        route.sender.listen_addr().unwrap(),
        "127.0.0.1:2575".parse().unwrap()
    );
    let tls = route.tls.as_ref().unwrap();
    assert_eq!(tls.cert, fx.base().join("certs/guard.pem"));
    assert_eq!(tls.key, fx.base().join("certs/guard.key"));
    assert_eq!(tls.client_ca, Some(fx.base().join("certs/clients.pem")));
    assert_eq!(
        route.allow,
        Allowlist::parse(&["127.0.0.0/8", "::1/128"]).unwrap()
    );
    assert_eq!(route.max_connections, 256);
    assert_eq!(route.max_message_bytes, 16 * 1024 * 1024);
    assert_eq!(route.receive_timeout, Duration::from_secs(30));
    assert_eq!(route.idle_timeout, None);
    assert_eq!(route.handshake_timeout, Duration::from_secs(10));
    assert_eq!(route.on_upstream_failure, OnUpstreamFailure::Nack);
    assert_eq!(route.multiple_messages, MultipleMessages::Refuse);
    assert_eq!(route.send_timeout, DEFAULT_SEND_TIMEOUT);
    let up = &route.upstream;
    assert_eq!(
        up.role,
        ReceiverRole::Connect(UpstreamAddress {
            host: "127.0.0.1".into(),
            port: 2576
        })
    );
    let utls = up.tls.as_ref().unwrap();
    assert_eq!(utls.ca, fx.base().join("certs/ehr-ca.pem"));
    assert_eq!(
        utls.server_name,
        ServerName::try_from("ehr.example.org").unwrap()
    );
    assert_eq!(utls.cert, Some(fx.base().join("certs/client.pem")));
    assert_eq!(utls.key, Some(fx.base().join("certs/client.key")));
    assert_eq!(up.connections, Connections::Paired);
    assert_eq!(up.connect_timeout, Duration::from_secs(5));
    assert_eq!(up.ack_timeout, Duration::from_secs(30));
    assert_eq!(
        up.keepalive,
        Keepalive {
            time: Duration::from_secs(60),
            interval: Duration::from_secs(10),
            retries: 6,
            user_timeout: Duration::from_secs(120),
        }
    );
    assert_eq!(up.max_ack_bytes, 1024 * 1024);
    assert_eq!(up.idle_reconnect, None);
    assert_eq!(up.reconnect, Reconnect::default());
}

#[test]
fn session_keys_of_the_upstream_are_read_and_checked() {
    let fx = Fixture::new();
    let ok = "routes:\n  - name: lab\n    listen: 127.0.0.1:2575\n    allow: [any]\n    upstream:\n      address: ehr:2575\n      idle_reconnect: 240s\n      keepalive: { time: 60s, interval: 10s, retries: 6, user_timeout: 130s }\n      reconnect: { initial: 2s, max: 60s }\n";
    let config = Config::parse(ok, Path::new("guard.yaml"), fx.base()).unwrap();
    let up = &config.routes[0].upstream;
    assert_eq!(up.idle_reconnect, Some(Duration::from_secs(240)));
    assert_eq!(up.keepalive.user_timeout, Duration::from_secs(130));
    assert_eq!(
        up.reconnect,
        Reconnect {
            initial: Duration::from_secs(2),
            max: Duration::from_secs(60)
        }
    );
    let bad = ok
        .replace("user_timeout: 130s", "user_timeout: 30s")
        .replace("max: 60s", "max: 1s");
    let errors = Config::parse(&bad, Path::new("guard.yaml"), fx.base())
        .unwrap_err()
        .to_string();
    assert_eq!(
        errors,
        "guard.yaml:8:72: routes[0].upstream.keepalive.user_timeout: must be at least time + interval x retries (2m), or the keepalive probes never get to finish\n\
             guard.yaml:9:18: routes[0].upstream.reconnect.max: max (1s) is shorter than initial (2s); make max at least initial"
    );
}

#[test]
fn omitted_keys_take_their_defaults() {
    let config = Config::parse(MINIMAL, Path::new("guard.yaml"), Path::new("/nowhere")).unwrap();
    assert_eq!(config.shutdown_grace, DEFAULT_SHUTDOWN_GRACE);
    let route = &config.routes[0];
    assert!(route.tls.is_none());
    assert_eq!(route.max_connections, 256);
    assert_eq!(route.max_message_bytes, 16 * 1024 * 1024);
    assert_eq!(route.receive_timeout, Duration::from_secs(30));
    assert_eq!(route.idle_timeout, None);
    assert_eq!(route.handshake_timeout, Duration::from_secs(10));
    assert_eq!(route.on_upstream_failure, OnUpstreamFailure::Nack);
    let up = &route.upstream;
    assert!(up.tls.is_none());
    assert_eq!(up.connections, Connections::Paired);
    assert_eq!(up.connect_timeout, Duration::from_secs(5));
    assert_eq!(up.ack_timeout, Duration::from_secs(30));
    assert_eq!(up.keepalive, Keepalive::default());
    assert_eq!(up.max_ack_bytes, 1024 * 1024);
}

#[test]
fn every_optional_key_is_read_when_given() {
    let yaml = r#"
shutdown_grace: 1m
routes:
  - name: adt-2
    listen: "[::1]:0"
    allow: ["any"]
    max_connections: 3
    max_message_bytes: 512KiB
    receive_timeout: 2s
    idle_timeout: 5m
    handshake_timeout: 750ms
    on_upstream_failure: close
    multiple_messages: inspect
    upstream:
      address: "[2001:db8::7]:2575"
      connections: 1
      connect_timeout: 1s
      ack_timeout: 1m 30s
      keepalive:
        interval: 5s
      max_ack_bytes: 64KB
"#;
    let config = Config::parse(yaml, Path::new("g.yaml"), Path::new("/")).unwrap();
    assert_eq!(config.shutdown_grace, Duration::from_secs(60));
    let r = &config.routes[0];
    assert_eq!(r.name, "adt-2");
    assert_eq!(r.sender.listen_addr().unwrap(), "[::1]:0".parse().unwrap());
    assert_eq!(r.allow, Allowlist::Any);
    assert_eq!(r.max_connections, 3);
    assert_eq!(r.max_message_bytes, 512 * 1024);
    assert_eq!(r.receive_timeout, Duration::from_secs(2));
    assert_eq!(r.idle_timeout, Some(Duration::from_secs(300)));
    assert_eq!(r.handshake_timeout, Duration::from_millis(750));
    assert_eq!(r.on_upstream_failure, OnUpstreamFailure::Close);
    assert_eq!(r.multiple_messages, MultipleMessages::Inspect);
    let up = &r.upstream;
    assert_eq!(up.role.address().unwrap().host, "2001:db8::7");
    assert_eq!(up.role.address().unwrap().to_string(), "[2001:db8::7]:2575");
    assert_eq!(
        up.connections,
        Connections::Pool(NonZeroUsize::new(1).unwrap())
    );
    assert_eq!(up.ack_timeout, Duration::from_secs(90));
    assert_eq!(
        up.keepalive,
        Keepalive {
            time: Duration::from_secs(60),
            interval: Duration::from_secs(5),
            retries: 6,
            user_timeout: Duration::from_secs(90),
        }
    );
    assert_eq!(up.max_ack_bytes, 64_000);
}

#[test]
fn an_empty_allow_list_denies_everyone_and_is_not_an_error() {
    let yaml = MINIMAL.replace("[127.0.0.0/8]", "[]");
    let config = Config::parse(&yaml, Path::new("g.yaml"), Path::new("/")).unwrap();
    assert_eq!(config.routes[0].allow, Allowlist::Networks(vec![]));
}

#[test]
fn client_tls_server_name_defaults_to_the_address_host() {
    let fx = Fixture::new();
    let yaml = MINIMAL.replace(
        "address: 127.0.0.1:2576\n",
        "address: ehr.example.org:2576\n      tls:\n        ca: certs/ehr-ca.pem\n",
    );
    let config = fx.parse(&yaml).unwrap();
    let tls = config.routes[0].upstream.tls.as_ref().unwrap();
    assert_eq!(
        tls.server_name,
        ServerName::try_from("ehr.example.org").unwrap()
    );
    assert_eq!(tls.cert, None);
    assert_eq!(
        format!("{tls:?}"),
        format!(
            "ClientTls {{ ca: {:?}, server_name: DnsName(\"ehr.example.org\"), cert: None, key: None, .. }}",
            fx.base().join("certs/ehr-ca.pem")
        )
    );
}

#[test]
fn load_reads_the_file_and_resolves_paths_from_its_directory() {
    let fx = Fixture::new();
    let file = fx.base().join("guard.yaml");
    std::fs::write(&file, CONTRACT).unwrap();
    let config = Config::load(&file).unwrap();
    assert_eq!(config.file, file);
    assert_eq!(
        config.routes[0].tls.as_ref().unwrap().cert,
        fx.base().join("certs/guard.pem")
    );
}

#[test]
fn a_missing_config_file_is_one_error_without_position() {
    let err = Config::load(Path::new("/nonexistent/guard.yaml")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "/nonexistent/guard.yaml: config file not found"
    );
}

#[test]
fn an_unknown_key_is_named_with_a_suggestion_and_the_valid_keys() {
    let yaml = MINIMAL.replace("listen:", "listne:");
    assert_eq!(
        errors(&yaml),
        "guard.yaml:3:5: routes[0].listne: unknown key `listne` (did you mean `listen`?); valid keys here: name, listen, dial, transparent, proxy_protocol, tls, allow, max_connections, max_message_bytes, receive_timeout, idle_timeout, handshake_timeout, on_upstream_failure, upstream, delivery, queue, ack_mode, retry, on_reply, duplicate_window, framing, rules, limits, multiple_messages, batches, send_timeout, socket"
    );
}

#[test]
fn an_unknown_key_deep_in_a_flow_map_gets_its_full_path() {
    let yaml = format!("{MINIMAL}      keepalive: {{ time: 60s, retry: 3 }}\n");
    assert_eq!(
        errors(&yaml),
        "guard.yaml:7:31: routes[0].upstream.keepalive.retry: unknown key `retry` (did you mean `retries`?); valid keys here: time, interval, retries, user_timeout"
    );
}

#[test]
fn a_missing_required_key_says_what_to_add() {
    let yaml = MINIMAL.replace("    listen: 127.0.0.1:2575\n", "");
    assert_eq!(
        errors(&yaml),
        "guard.yaml:2:5: routes[0]: missing required key `listen` (or `dial`); add e.g. `listen: 127.0.0.1:2575`, or `dial: sender-host:5000` to connect out to a sender that is an MLLP server"
    );
}

#[test]
fn a_missing_allow_list_is_an_error_with_an_example() {
    let yaml = MINIMAL.replace("    allow: [127.0.0.0/8]\n", "");
    assert_eq!(
        errors(&yaml),
        "guard.yaml:2:5: routes[0]: missing required key `allow`; list who may connect, e.g. `allow: [10.0.0.0/8, 192.0.2.7]` ([\"any\"] admits every address, [] none)"
    );
}

#[test]
fn a_list_where_a_value_belongs_is_a_type_error_with_a_quoting_hint() {
    let yaml = MINIMAL.replace("listen: 127.0.0.1:2575", "listen: [::1]:2575");
    assert_eq!(
        errors(&yaml),
        "guard.yaml:3:13: routes[0].listen: expected a single value here, not a list or a map (quote addresses that start with '[', e.g. \"[::1]:2575\")"
    );
}

#[test]
fn a_yaml_syntax_error_is_reported_with_its_position() {
    let yaml = MINIMAL.replace("allow: [127.0.0.0/8]", "allow: [127.0.0.0/8");
    let err = errors(&yaml);
    assert!(err.starts_with("guard.yaml:"), "{err}");
    assert!(!err.contains('\n'), "{err}");
}

#[test]
fn an_unknown_top_level_key_lists_the_valid_ones() {
    assert_eq!(
        errors(&format!("{MINIMAL}extra: 1\n")),
        "guard.yaml:7:1: extra: unknown key `extra`; valid keys here: routes, shutdown_grace, state_dir, upstreams, admin, log_payloads, max_buffered_bytes, notify, audit"
    );
}

#[test]
fn a_tab_in_the_indentation_gets_a_hint() {
    let err = errors(&MINIMAL.replace("    allow", "\tallow"));
    assert!(
        err.ends_with("(indent YAML with spaces, not tabs)"),
        "{err}"
    );
}

#[test]
fn a_duplicate_key_is_reported() {
    let yaml = MINIMAL.replace(
        "    listen: 127.0.0.1:2575\n",
        "    listen: 127.0.0.1:2575\n    name: lab2\n",
    );
    assert_eq!(
        errors(&yaml),
        "guard.yaml:4:5: routes[0]: key `name` appears twice; keep one of them"
    );
}

#[test]
fn an_empty_file_needs_routes() {
    assert_eq!(
        errors(""),
        "guard.yaml:1:1: the file is empty; it needs at least a `routes:` list"
    );
    assert_eq!(
        errors("routes: []\n"),
        "guard.yaml:1:9: routes: no routes are defined; add at least one route under `routes:`"
    );
}

#[test]
fn every_semantic_error_in_a_file_is_reported_in_document_order() {
    let yaml = r#"
shutdown_grace: soon
routes:
  - name: Lab_1
    listen: localhost:2575
    allow: [10.0.0.0/33]
    max_connections: 0
    max_message_bytes: 16XB
    receive_timeout: 30
    idle_timeout: 0s
    handshake_timeout: 0s
    on_upstream_failure: drop
    upstream:
      address: ehr.example.org
      connections: 0
      connect_timeout: 5 parsecs
      ack_timeout: 0
      keepalive: { time: 500ms, interval: 0s, retries: 128 }
      max_ack_bytes: 2GiB
"#;
    let expected = [
        "guard.yaml:2:17: shutdown_grace: \"soon\" is not a duration; write e.g. 30s, 500ms or 5m",
        "guard.yaml:4:11: routes[0].name: route name \"Lab_1\" is not valid: use 1 to 63 characters from a-z, 0-9 and '-' (e.g. \"lab-1\")",
        "guard.yaml:5:13: routes[0].listen: \"localhost:2575\" is not an IP address with a port; write e.g. 127.0.0.1:2575, 0.0.0.0:2575 or \"[::1]:2575\" (host names are not accepted here)",
        "guard.yaml:6:13: routes[0].allow[0]: \"10.0.0.0/33\" is not an IP address or CIDR (write e.g. 10.0.0.0/8, 192.0.2.7, \"::1/128\", or \"any\")",
        "guard.yaml:7:22: routes[0].max_connections: must be a whole number of at least 1, not \"0\"",
        "guard.yaml:8:24: routes[0].max_message_bytes: \"16XB\" is not a size; write a number of bytes or a whole number with a unit: KB, MB, GB (1000-based) or KiB, MiB, GiB (1024-based), e.g. 16MiB",
        "guard.yaml:9:22: routes[0].receive_timeout: \"30\" has no unit; write e.g. 30s or 30ms",
        "guard.yaml:11:24: routes[0].handshake_timeout: must be greater than zero, not \"0s\"",
        "guard.yaml:12:26: routes[0].on_upstream_failure: must be `nack` (answer the sender with an AE ack saying why) or `close` (close the sender's connection), not \"drop\"",
        "guard.yaml:14:16: routes[0].upstream.address: \"ehr.example.org\" has no port; write host:port, e.g. ehr.example.org:2575, 10.1.2.3:2575 or \"[2001:db8::7]:2575\"",
        "guard.yaml:15:20: routes[0].upstream.connections: must be `paired` (one upstream connection per sender connection) or a pool size of at least 1, not \"0\"",
        "guard.yaml:16:24: routes[0].upstream.connect_timeout: \"5 parsecs\" is not a duration (unknown unit \"parsecs\"; use ms, s, m, h or d); write e.g. 30s, 500ms or 5m",
        "guard.yaml:17:20: routes[0].upstream.ack_timeout: must be greater than zero, not \"0\"",
        "guard.yaml:18:26: routes[0].upstream.keepalive.time: must be whole seconds from 1s to 32767s (the kernel's limits), not \"500ms\"",
        "guard.yaml:18:43: routes[0].upstream.keepalive.interval: must be whole seconds from 1s to 32767s (the kernel's limits), not \"0s\"",
        "guard.yaml:18:56: routes[0].upstream.keepalive.retries: must be a whole number from 1 to 127, not \"128\"",
        "guard.yaml:19:22: routes[0].upstream.max_ack_bytes: must be from 1KiB to 1GiB, not \"2GiB\" (2147483648 bytes)",
    ];
    assert_eq!(errors(yaml), expected.join("\n"));
}

#[test]
fn duplicate_route_names_and_listen_addresses_are_reported_against_the_later_route() {
    let yaml = r#"
routes:
  - name: lab
    listen: 0.0.0.0:2575
    allow: [any]
    upstream: { address: "ehr:1" }
  - name: lab
    listen: 127.0.0.1:2575
    allow: [any]
    upstream: { address: "ehr:1" }
  - name: adt
    listen: 127.0.0.1:2575
    allow: [any]
    upstream: { address: "ehr:1" }
  - name: orm
    listen: "[::]:2580"
    allow: [any]
    upstream: { address: "ehr:1" }
  - name: oru
    listen: 10.0.0.1:2580
    allow: [any]
    upstream: { address: "ehr:1" }
  - name: zero-a
    listen: 127.0.0.1:0
    allow: [any]
    upstream: { address: "ehr:1" }
  - name: zero-b
    listen: 127.0.0.1:0
    allow: [any]
    upstream: { address: "ehr:1" }
"#;
    let expected = [
        "guard.yaml:7:11: routes[1].name: route name \"lab\" is already used by routes[0] (line 3); give each route a unique name",
        "guard.yaml:8:13: routes[1].listen: listen address 127.0.0.1:2575 overlaps 0.0.0.0:2575 of routes[0] \"lab\" (line 4) (an unspecified address listens on every local address); give each route its own port",
        "guard.yaml:12:13: routes[2].listen: listen address 127.0.0.1:2575 overlaps 0.0.0.0:2575 of routes[0] \"lab\" (line 4) (an unspecified address listens on every local address); give each route its own port",
        "guard.yaml:20:13: routes[4].listen: listen address 10.0.0.1:2580 overlaps [::]:2580 of routes[3] \"orm\" (line 16) (an unspecified address listens on every local address); give each route its own port",
    ];
    assert_eq!(errors(yaml), expected.join("\n"));
}

#[test]
fn the_same_listen_address_twice_is_named_as_already_used() {
    let yaml = format!(
        "{MINIMAL}{}",
        MINIMAL
            .trim_start_matches("routes:\n")
            .replace("name: lab", "name: lab-2")
    );
    assert_eq!(
        errors(&yaml),
        "guard.yaml:8:13: routes[1].listen: listen address 127.0.0.1:2575 is already used by routes[0] \"lab\" (line 3); give each route its own port"
    );
}

#[test]
fn bad_upstream_addresses_say_what_is_wrong() {
    let cases = [
        ("ehr:0", "\"ehr:0\": the port must be a number from 1 to 65535; write host:port, e.g. ehr.example.org:2575, 10.1.2.3:2575 or \"[2001:db8::7]:2575\""),
        ("ehr:65536", "\"ehr:65536\": the port must be a number from 1 to 65535; write host:port, e.g. ehr.example.org:2575, 10.1.2.3:2575 or \"[2001:db8::7]:2575\""),
        ("\"::1:2575\"", "\"::1:2575\": put an IPv6 address in brackets, e.g. \"[2001:db8::7]:2575\""),
        ("\"[ehr]:2575\"", "\"[ehr]:2575\": \"[ehr]\" is not an IPv6 address in brackets; write host:port, e.g. ehr.example.org:2575, 10.1.2.3:2575 or \"[2001:db8::7]:2575\""),
        ("ehr_1!:2575", "\"ehr_1!:2575\": \"ehr_1!\" is not a valid host name or IP address; write host:port, e.g. ehr.example.org:2575, 10.1.2.3:2575 or \"[2001:db8::7]:2575\""),
    ];
    for (value, message) in cases {
        let yaml = MINIMAL.replace("address: 127.0.0.1:2576", &format!("address: {value}"));
        assert_eq!(
            errors(&yaml),
            format!("guard.yaml:6:16: routes[0].upstream.address: {message}"),
            "{value}"
        );
    }
}

#[test]
fn sizes_accept_bytes_and_both_unit_families() {
    assert_eq!(parse_size("1048576"), Ok(1_048_576));
    assert_eq!(parse_size("16MiB"), Ok(16 << 20));
    assert_eq!(parse_size("512KiB"), Ok(512 << 10));
    assert_eq!(parse_size("1MB"), Ok(1_000_000));
    assert_eq!(parse_size("2 GB"), Ok(2_000_000_000));
    assert_eq!(parse_size("1gib"), Ok(1 << 30));
    assert!(parse_size("1.5MiB").is_err());
    assert!(parse_size("MiB").is_err());
    assert!(parse_size("99999999999999999999GiB").is_err());
    assert_eq!(parse_frame_size("1KiB"), Ok(1024));
    assert_eq!(
        parse_frame_size("1000"),
        Err("must be from 1KiB to 1GiB, not \"1000\" (1000 bytes)".to_string())
    );
    assert_eq!(parse_frame_size("1GiB"), Ok(1 << 30));
}

#[test]
fn route_names_follow_the_charset_and_length_rule() {
    assert!(parse_route_name("lab-1").is_ok());
    assert!(parse_route_name(&"a".repeat(63)).is_ok());
    assert!(parse_route_name(&"a".repeat(64)).is_err());
    assert!(parse_route_name("").is_err());
    assert!(parse_route_name("lab.1").is_err());
}

#[test]
fn listen_clash_rules() {
    let a = |s: &str| s.parse::<SocketAddr>().unwrap();
    assert!(listen_clash(a("127.0.0.1:1"), a("127.0.0.1:1")));
    assert!(listen_clash(a("0.0.0.0:1"), a("10.0.0.1:1")));
    assert!(!listen_clash(a("0.0.0.0:1"), a("[::1]:1")));
    assert!(listen_clash(a("[::]:1"), a("127.0.0.1:1")));
    assert!(listen_clash(a("[::ffff:127.0.0.1]:1"), a("127.0.0.1:1")));
    assert!(!listen_clash(a("127.0.0.1:1"), a("127.0.0.2:1")));
    assert!(!listen_clash(a("127.0.0.1:0"), a("127.0.0.1:0")));
}

#[test]
fn missing_tls_files_are_all_reported_relative_to_the_config_directory() {
    let fx = Fixture::new();
    let yaml = CONTRACT
        .replace("certs/guard.pem", "certs/a.pem")
        .replace("certs/guard.key", "certs/a.key")
        .replace("certs/ehr-ca.pem", "/abs/ehr-ca.pem");
    let expected = [
        "guard.yaml:6:13: routes[0].tls.cert: file \"certs/a.pem\" not found (relative paths are resolved from the config file's directory, here $DIR)",
        "guard.yaml:7:12: routes[0].tls.key: file \"certs/a.key\" not found (relative paths are resolved from the config file's directory, here $DIR)",
        "guard.yaml:18:13: routes[0].upstream.tls.ca: file \"/abs/ehr-ca.pem\" not found",
    ];
    assert_eq!(fx.errors_in_dir(&yaml), expected.join("\n"));
}

#[test]
fn a_directory_given_as_a_certificate_is_refused() {
    let fx = Fixture::new();
    let yaml = CONTRACT.replace("certs/guard.pem", "certs");
    assert_eq!(
        fx.errors(&yaml),
        "guard.yaml:6:13: routes[0].tls.cert: \"certs\" is a directory; give the path of a PEM file"
    );
}

#[test]
fn a_key_that_does_not_match_its_certificate_points_at_the_key() {
    let fx = Fixture::new();
    let yaml = CONTRACT.replace("certs/guard.key", "certs/client.key");
    assert_eq!(
        fx.errors(&yaml),
        "guard.yaml:7:12: routes[0].tls.key: the private key \"certs/client.key\" does not match the certificate \"certs/guard.pem\" (their public keys differ); use the key the certificate was issued for"
    );
}

#[test]
fn a_pem_without_a_certificate_is_refused_for_each_role() {
    let fx = Fixture::new();
    std::fs::write(
        fx.base().join("certs/empty.pem"),
        "# nothing here\n-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
    )
    .unwrap();
    let yaml = CONTRACT
        .replace("certs/clients.pem", "certs/empty.pem")
        .replace("certs/ehr-ca.pem", "certs/guard.key");
    let expected = [
        "guard.yaml:8:18: routes[0].tls.client_ca: file \"certs/empty.pem\" contains no certificate (no \"-----BEGIN CERTIFICATE-----\" block)",
        "guard.yaml:18:13: routes[0].upstream.tls.ca: file \"certs/guard.key\" holds a private key, not a certificate; point this at the certificate PEM (\"-----BEGIN CERTIFICATE-----\")",
    ];
    assert_eq!(fx.errors(&yaml), expected.join("\n"));
}

#[test]
fn a_client_certificate_without_a_key_and_a_key_without_a_certificate_are_errors() {
    let fx = Fixture::new();
    let no_key = CONTRACT.replace("        key: certs/client.key\n", "");
    assert_eq!(
        fx.errors(&no_key),
        "guard.yaml:20:15: routes[0].upstream.tls.cert: a client certificate needs its private key: add `key` next to `cert`"
    );
    let no_cert = CONTRACT.replace(
        "        cert: certs/client.pem       # optional client certificate\n",
        "",
    );
    assert_eq!(
        fx.errors(&no_cert),
        "guard.yaml:20:14: routes[0].upstream.tls.key: `key` is set but `cert` is not: add the client certificate as `cert`, or remove `key`"
    );
}

#[test]
fn a_bad_server_name_is_reported() {
    let fx = Fixture::new();
    let yaml = CONTRACT.replace(
        "server_name: ehr.example.org",
        "server_name: \"ehr example\"",
    );
    assert_eq!(
        fx.errors(&yaml),
        "guard.yaml:19:22: routes[0].upstream.tls.server_name: \"ehr example\" is not a valid server name; write the DNS name (or IP address) the upstream's certificate is issued for, e.g. ehr.example.org"
    );
}

#[test]
fn tls_errors_of_two_routes_are_reported_together_with_other_errors() {
    let fx = Fixture::new();
    let second = CONTRACT
        .trim_start()
        .trim_start_matches("routes:\n")
        .replace("name: lab ", "name: adt ")
        .replace("127.0.0.1:2575", "127.0.0.1:2577")
        .replace("certs/clients.pem", "certs/missing.pem");
    let yaml = format!(
        "{}{}",
        CONTRACT.replace("certs/guard.key", "certs/ehr.key"),
        second
    )
    .replace("max_connections: 256", "max_connections: many");
    let lines: Vec<String> = fx
        .errors_in_dir(&yaml)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(
        lines,
        [
            "guard.yaml:7:12: routes[0].tls.key: the private key \"certs/ehr.key\" does not match the certificate \"certs/guard.pem\" (their public keys differ); use the key the certificate was issued for",
            "guard.yaml:10:22: routes[0].max_connections: must be a whole number of at least 1, not \"many\"",
            "guard.yaml:31:18: routes[1].tls.client_ca: file \"certs/missing.pem\" not found (relative paths are resolved from the config file's directory, here $DIR)",
            "guard.yaml:33:22: routes[1].max_connections: must be a whole number of at least 1, not \"many\"",
        ]
    );
}

/// The custody example of issue 3, verbatim.
const CUSTODY: &str = r#"
state_dir: /var/lib/mllp-guard      # top level; one queue directory per route under it
routes:
  - name: lab
    listen: 127.0.0.1:2575
    allow: [127.0.0.0/8]
    upstream:
      address: 127.0.0.1:2576
    delivery: store-and-forward      # or: forward (the default, from the relay core)
    queue:
      max_bytes: 1GiB                # when full: refuse new messages (negative ack or close), never drop
      max_messages: 1000000
    ack_mode: always                 # what the sender gets: always | errors-only | never | msh15
    retry:
      initial: 1s                    # exponential backoff with jitter to the upstream
      max: 180s
    on_reply:                        # what an upstream reply code does to a queued message
      AE: retry                      # retry | dead-letter | accept
      AR: dead-letter
"#;

/// MINIMAL with `delivery: store-and-forward` and the given top-level lines before it.
fn store_and_forward(top: &str) -> String {
    format!("{top}{MINIMAL}    delivery: store-and-forward\n")
}

fn custody(route: &Route) -> &CustodyConfig {
    match &route.delivery {
        Delivery::StoreAndForward(custody) => custody,
        Delivery::Forward => panic!("route {} is not store-and-forward", route.name),
    }
}

#[test]
fn the_custody_example_of_the_issue_parses_into_typed_values() {
    let config = Config::parse(CUSTODY, Path::new("g.yaml"), Path::new("/etc")).unwrap();
    assert_eq!(config.state_dir, Some(PathBuf::from("/var/lib/mllp-guard")));
    assert_eq!(
        config.routes[0].delivery,
        Delivery::StoreAndForward(CustodyConfig {
            queue_dir: PathBuf::from("/var/lib/mllp-guard/lab"),
            max_bytes: 1 << 30,
            max_messages: 1_000_000,
            segment_bytes: 64 << 20,
            ack_mode: AckMode::Always,
            retry: Retry {
                initial: Duration::from_secs(1),
                max: Duration::from_secs(180),
                max_attempts: 0,
                max_age: None,
            },
            on_reply: OnReply {
                ae: ReplyAction::Retry,
                ar: ReplyAction::DeadLetter,
            },
            duplicate_window: Some(Duration::from_secs(600)),
            backend: QueueBackend::Embedded,
            unready_when: None,
            dead_letters: DEFAULT_DEAD_LETTERS,
        })
    );
}

#[test]
fn store_and_forward_with_only_a_state_dir_takes_every_custody_default() {
    let yaml = store_and_forward("state_dir: /srv/guard\n");
    let config = Config::parse(&yaml, Path::new("g.yaml"), Path::new("/etc")).unwrap();
    assert_eq!(
        custody(&config.routes[0]),
        &CustodyConfig {
            queue_dir: PathBuf::from("/srv/guard/lab"),
            max_bytes: DEFAULT_QUEUE_MAX_BYTES,
            max_messages: DEFAULT_QUEUE_MAX_MESSAGES,
            segment_bytes: DEFAULT_QUEUE_SEGMENT_BYTES,
            ack_mode: DEFAULT_ACK_MODE,
            retry: Retry::default(),
            on_reply: OnReply::default(),
            duplicate_window: Some(DEFAULT_DUPLICATE_WINDOW),
            backend: QueueBackend::Embedded,
            unready_when: None,
            dead_letters: DEFAULT_DEAD_LETTERS,
        }
    );
    assert_eq!(DEFAULT_ACK_MODE, AckMode::Msh15);
    assert_eq!(
        Retry::default(),
        Retry {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(180),
            max_attempts: 0,
            max_age: None,
        }
    );
    assert_eq!(
        OnReply::default(),
        OnReply {
            ae: ReplyAction::Retry,
            ar: ReplyAction::DeadLetter
        }
    );
}

#[test]
fn a_route_without_delivery_forwards_and_a_state_dir_alone_is_not_an_error() {
    let yaml = format!("state_dir: /srv/guard\n{MINIMAL}");
    let config = Config::parse(&yaml, Path::new("g.yaml"), Path::new("/etc")).unwrap();
    assert_eq!(config.routes[0].delivery, Delivery::Forward);
    assert_eq!(config.state_dir, Some(PathBuf::from("/srv/guard")));
    let config = Config::parse(MINIMAL, Path::new("g.yaml"), Path::new("/etc")).unwrap();
    assert_eq!(config.state_dir, None);
    let yaml = format!("{MINIMAL}    delivery: forward\n");
    let config = Config::parse(&yaml, Path::new("g.yaml"), Path::new("/etc")).unwrap();
    assert_eq!(config.routes[0].delivery, Delivery::Forward);
}

#[test]
fn a_relative_state_dir_resolves_from_the_config_directory() {
    let fx = Fixture::new();
    let file = fx.base().join("guard.yaml");
    std::fs::write(&file, store_and_forward("state_dir: state\n")).unwrap();
    let config = Config::load(&file).unwrap();
    assert_eq!(config.state_dir, Some(fx.base().join("state")));
    assert_eq!(
        custody(&config.routes[0]).queue_dir,
        fx.base().join("state/lab")
    );
}

#[test]
fn every_custody_key_is_read_when_given() {
    let yaml = format!(
        "{}{}",
        store_and_forward("state_dir: /q\n"),
        "    queue: { max_bytes: 2MiB, max_messages: 5, segment_bytes: 1MiB }
    ack_mode: errors-only
    retry: { initial: 250ms, max: 250ms, max_attempts: 3, max_age: 10m }
    on_reply: { AE: accept, AR: retry }
    duplicate_window: 0s
    max_message_bytes: 2MiB
"
    );
    let config = Config::parse(&yaml, Path::new("g.yaml"), Path::new("/")).unwrap();
    let c = custody(&config.routes[0]);
    assert_eq!(c.max_bytes, 2 << 20);
    assert_eq!(c.max_messages, 5);
    assert_eq!(c.segment_bytes, 1 << 20);
    assert_eq!(c.ack_mode, AckMode::ErrorsOnly);
    assert_eq!(
        c.retry,
        Retry {
            initial: Duration::from_millis(250),
            max: Duration::from_millis(250),
            max_attempts: 3,
            max_age: Some(Duration::from_secs(600)),
        }
    );
    assert_eq!(
        c.on_reply,
        OnReply {
            ae: ReplyAction::Accept,
            ar: ReplyAction::Retry
        }
    );
    assert_eq!(c.duplicate_window, None);
    for (written, mode) in [
        ("never", AckMode::Never),
        ("msh15", AckMode::Msh15),
        ("ae-only", AckMode::AeOnly),
        ("ar-only", AckMode::ArOnly),
    ] {
        let yaml = format!(
            "{}    ack_mode: {written}\n",
            store_and_forward("state_dir: /q\n")
        );
        let config = Config::parse(&yaml, Path::new("g.yaml"), Path::new("/")).unwrap();
        assert_eq!(custody(&config.routes[0]).ack_mode, mode);
    }
}

#[test]
fn each_store_and_forward_route_gets_its_own_queue_directory() {
    let second = MINIMAL
        .trim_start_matches("routes:\n")
        .replace("name: lab", "name: adt")
        .replace("2575", "2577");
    let yaml = format!("state_dir: /q\n{MINIMAL}    delivery: store-and-forward\n{second}    delivery: store-and-forward\n");
    let config = Config::parse(&yaml, Path::new("g.yaml"), Path::new("/")).unwrap();
    assert_eq!(custody(&config.routes[0]).queue_dir, Path::new("/q/lab"));
    assert_eq!(custody(&config.routes[1]).queue_dir, Path::new("/q/adt"));
}

#[test]
fn store_and_forward_without_a_state_dir_is_one_error_at_the_first_such_route() {
    let second = MINIMAL
        .trim_start_matches("routes:\n")
        .replace("name: lab", "name: adt")
        .replace("2575", "2577");
    let yaml = format!(
        "{MINIMAL}    delivery: store-and-forward\n{second}    delivery: store-and-forward\n"
    );
    assert_eq!(
        errors(&yaml),
        "guard.yaml:7:15: routes[0].delivery: store-and-forward needs a top-level `state_dir` to keep its queues in; add e.g. `state_dir: /var/lib/mllp-guard` at the top of the file (one directory per route is created under it)"
    );
    assert_eq!(
        errors("state_dir: \"\"\nroutes: []\n"),
        [
            "guard.yaml:1:12: state_dir: a directory path is required here, e.g. /var/lib/mllp-guard",
            "guard.yaml:2:9: routes: no routes are defined; add at least one route under `routes:`",
        ]
        .join("\n")
    );
}

#[test]
fn custody_keys_on_a_forward_route_are_errors() {
    let yaml = format!(
        "state_dir: /q\n{MINIMAL}{}",
        "    queue: { max_bytes: 1GiB }
    ack_mode: always
    retry:
      initial: 1s
    on_reply: { AE: retry }
    duplicate_window: 1m
"
    );
    let message = "only used with delivery: store-and-forward; add `delivery: store-and-forward` or remove it";
    let expected = [
        format!("guard.yaml:8:12: routes[0].queue: {message}"),
        format!("guard.yaml:9:15: routes[0].ack_mode: {message}"),
        format!("guard.yaml:11:7: routes[0].retry: {message}"),
        format!("guard.yaml:12:15: routes[0].on_reply: {message}"),
        format!("guard.yaml:13:23: routes[0].duplicate_window: {message}"),
    ];
    assert_eq!(errors(&yaml), expected.join("\n"));
    // Explicitly forward: the same.
    let yaml = format!("{MINIMAL}    delivery: forward\n    ack_mode: never\n");
    assert_eq!(
        errors(&yaml),
        format!("guard.yaml:8:15: routes[0].ack_mode: {message}")
    );
}

#[test]
fn bad_custody_values_are_all_reported_with_their_positions() {
    let yaml = format!(
        "{}{}",
        store_and_forward("state_dir: /q\n"),
        "    queue:
      max_bytes: 8MiB
      max_messages: 0
      segment_bytes: 512KiB
    ack_mode: sometimes
    retry: { initial: 10s, max: 5s }
    on_reply:
      AE: ignore
      AR: dead-letter
    duplicate_window: forever
"
    );
    let expected = [
        "guard.yaml:10:18: routes[0].queue.max_bytes: must be at least this route's max_message_bytes (16777216 bytes) so that the largest message fits; raise it or lower max_message_bytes, not \"8MiB\" (8388608 bytes)",
        "guard.yaml:11:21: routes[0].queue.max_messages: must be a whole number of at least 1, not \"0\"",
        "guard.yaml:12:22: routes[0].queue.segment_bytes: must be at least 1MiB, not \"512KiB\" (524288 bytes)",
        "guard.yaml:13:15: routes[0].ack_mode: must be `always` (every message gets an ack), `errors-only` (only negative acks), `ae-only` (only AE/CE: not queued now), `ar-only` (only AR/CR: refused for good), `never` (no acks) or `msh15` (as each message's MSH-15 asks), not \"sometimes\"",
        "guard.yaml:14:33: routes[0].retry.max: must be at least retry.initial (10s), not \"5s\"",
        "guard.yaml:16:11: routes[0].on_reply.AE: must be `retry` (send it again after backoff), `dead-letter` (move it to the route's dead-letter store) or `accept` (count it as delivered), not \"ignore\"",
        "guard.yaml:18:23: routes[0].duplicate_window: \"forever\" is not a duration; write e.g. 30s, 500ms or 5m",
    ];
    assert_eq!(errors(&yaml), expected.join("\n"));
}

/// The JetStream example of issue 8, verbatim (no `state_dir`: JetStream needs none).
const JETSTREAM: &str = r#"
routes:
  - name: lab
    listen: 127.0.0.1:2575
    allow: [127.0.0.0/8]
    upstream:
      address: 127.0.0.1:2576
    delivery: store-and-forward
    queue:
      backend: jetstream             # or: embedded (default)
      jetstream:
        servers: ["nats://10.0.0.5:4222", "nats://10.0.0.6:4222", "nats://10.0.0.7:4222"]
        stream: MLLP_LAB             # created if missing, with the settings below
        replicas: 3
        max_bytes: 10GiB
        duplicate_window: 10m        # JetStream dedup on a message id built from MSH-3, MSH-4, MSH-10
        tls: { ca: certs/nats-ca.pem, cert: certs/guard.pem, key: certs/guard.key }
        credentials: secrets/guard.creds   # optional NATS credentials file
"#;

#[test]
fn the_jetstream_example_of_the_issue_parses_into_typed_values() {
    let fx = Fixture::new();
    std::fs::copy(
        fx.base().join("certs/clients.pem"),
        fx.base().join("certs/nats-ca.pem"),
    )
    .unwrap();
    std::fs::create_dir(fx.base().join("secrets")).unwrap();
    std::fs::write(fx.base().join("secrets/guard.creds"), "creds").unwrap();
    let config = fx.parse(JETSTREAM).unwrap();
    let c = custody(&config.routes[0]);
    assert_eq!(
        c.backend,
        QueueBackend::JetStream(Box::new(JetStreamQueue {
            servers: vec![
                "nats://10.0.0.5:4222".into(),
                "nats://10.0.0.6:4222".into(),
                "nats://10.0.0.7:4222".into()
            ],
            stream: "MLLP_LAB".into(),
            replicas: 3,
            max_bytes: 10 << 30,
            duplicate_window: Duration::from_secs(600),
            tls: Some(NatsTls {
                ca: Some(fx.base().join("certs/nats-ca.pem")),
                client: Some((
                    fx.base().join("certs/guard.pem"),
                    fx.base().join("certs/guard.key")
                )),
            }),
            credentials: Some(fx.base().join("secrets/guard.creds")),
            takeover: DEFAULT_JETSTREAM_TAKEOVER,
            publish_timeout: DEFAULT_JETSTREAM_PUBLISH_TIMEOUT,
        }))
    );
}

#[test]
fn the_queue_backend_defaults_to_embedded_and_jetstream_takes_its_defaults() {
    let config = Config::parse(
        &store_and_forward("state_dir: /q\n"),
        Path::new("g.yaml"),
        Path::new("/etc"),
    )
    .unwrap();
    assert_eq!(custody(&config.routes[0]).backend, QueueBackend::Embedded);
    let yaml = format!(
        "{MINIMAL}    delivery: store-and-forward\n    queue:\n      max_bytes: 32MiB\n      backend: jetstream\n      jetstream: {{ servers: [\"127.0.0.1:4222\"], stream: S }}\n"
    );
    let config = Config::parse(&yaml, Path::new("g.yaml"), Path::new("/etc")).unwrap();
    let QueueBackend::JetStream(js) = &custody(&config.routes[0]).backend else {
        panic!("jetstream expected");
    };
    assert_eq!(
        (
            js.replicas,
            js.max_bytes,
            js.duplicate_window,
            js.tls.is_none()
        ),
        (1, 32 << 20, DEFAULT_JETSTREAM_DUPLICATE_WINDOW, true)
    );
}

#[test]
fn jetstream_dead_letters_take_their_own_limits_and_stream_names_stay_apart() {
    let route = |name: &str, port: u16, stream: &str| {
        format!(
            "  - name: {name}\n    listen: 127.0.0.1:{port}\n    allow: [127.0.0.0/8]\n    upstream: {{ address: 127.0.0.1:2576 }}\n    delivery: store-and-forward\n    queue:\n      backend: jetstream\n      jetstream: {{ servers: [\"127.0.0.1:4222\"], stream: {stream} }}\n      dead_letters: {{ max_messages: 5, max_bytes: 32MiB }}\n"
        )
    };
    let yaml = format!("routes:\n{}", route("lab", 2575, "LAB"));
    let config = Config::parse(&yaml, Path::new("g.yaml"), Path::new("/etc")).unwrap();
    let dead = custody(&config.routes[0]).dead_letters;
    assert_eq!((dead.max_messages, dead.max_bytes), (5, 32 << 20));
    let yaml = format!(
        "routes:\n{}{}",
        route("lab", 2575, "LAB"),
        route("ris", 2577, "LAB_DEAD")
    );
    assert_eq!(
        errors(&yaml),
        "guard.yaml:18:57: routes[1].queue.jetstream.stream: \"LAB_DEAD\" is the dead-letter stream of routes[0] (a route's dead letters live in the stream named after its own with `_DEAD` added); give this route another stream"
    );
}

#[test]
fn bad_jetstream_values_are_all_reported_with_their_positions() {
    let yaml = format!(
        "{}{}",
        store_and_forward("state_dir: /q\n"),
        "    queue:
      backend: jetstream
      jetstream:
        servers: [\"http://x:1\", \"nats://ok:4222\"]
        stream: MY.STREAM
        replicas: 7
        max_bytes: 10KiB
        duplicate_window: 0s
        takeover: 100ms
        tls: { cert: certs/guard.pem }
"
    );
    let expected = [
        "guard.yaml:12:19: routes[0].queue.jetstream.servers[0]: \"http://x:1\" is not a NATS server URL; write e.g. nats://10.0.0.5:4222 or tls://nats.example.org:4222",
        "guard.yaml:13:17: routes[0].queue.jetstream.stream: must be letters, digits, `_` or `-` (at most 200), e.g. MLLP_LAB, not \"MY.STREAM\"",
        "guard.yaml:14:19: routes[0].queue.jetstream.replicas: must be a whole number from 1 to 5 (JetStream's limit), not \"7\"",
        "guard.yaml:15:20: routes[0].queue.jetstream.max_bytes: must be at least 1MiB, not \"10KiB\" (10240 bytes)",
        "guard.yaml:16:27: routes[0].queue.jetstream.duplicate_window: must be greater than zero, not \"0s\"",
        "guard.yaml:17:19: routes[0].queue.jetstream.takeover: must be at least 1s, not \"100ms\"",
        "guard.yaml:18:14: routes[0].queue.jetstream.tls: `cert` and `key` go together: give both (a client certificate for NATS) or neither",
    ];
    assert_eq!(errors(&yaml), expected.join("\n"));
    let yaml = format!(
        "{}    queue: {{ backend: nats }}\n",
        store_and_forward("state_dir: /q\n")
    );
    assert_eq!(
        errors(&yaml),
        "guard.yaml:9:23: routes[0].queue.backend: must be `embedded` (the local segmented log, the default) or `jetstream` (a NATS JetStream stream shared by several guards), not \"nats\""
    );
    let yaml = format!(
        "{}    queue: {{ backend: jetstream }}\n",
        store_and_forward("state_dir: /q\n")
    );
    assert!(
        errors(&yaml).starts_with("guard.yaml:9:23: routes[0].queue.jetstream: `backend: jetstream` needs a `jetstream:` block"),
        "{}",
        errors(&yaml)
    );
    let yaml = format!(
        "{}    queue: {{ jetstream: {{ stream: S }} }}\n",
        store_and_forward("state_dir: /q\n")
    );
    assert_eq!(
        errors(&yaml),
        "guard.yaml:9:25: routes[0].queue.jetstream: only used with `backend: jetstream`; add `backend: jetstream` to this queue or remove it"
    );
}

#[test]
fn queue_max_bytes_below_one_mib_or_below_max_message_bytes_is_refused() {
    let sf = store_and_forward("state_dir: /q\n");
    let yaml = format!("{sf}    queue: {{ max_bytes: 1000KB }}\n");
    assert_eq!(
        errors(&yaml),
        "guard.yaml:9:25: routes[0].queue.max_bytes: must be at least 1MiB, not \"1000KB\" (1000000 bytes)"
    );
    let yaml = format!("{sf}    max_message_bytes: 4MiB\n    queue: {{ max_bytes: 2MiB }}\n");
    assert_eq!(
        errors(&yaml),
        "guard.yaml:10:25: routes[0].queue.max_bytes: must be at least this route's max_message_bytes (4194304 bytes) so that the largest message fits; raise it or lower max_message_bytes, not \"2MiB\" (2097152 bytes)"
    );
    // An invalid max_message_bytes is reported alone, not compared with the queue.
    let yaml = format!("{sf}    max_message_bytes: huge\n    queue: {{ max_bytes: 2MiB }}\n");
    assert!(errors(&yaml).ends_with("e.g. 16MiB"), "{}", errors(&yaml));
    assert_eq!(errors(&yaml).lines().count(), 1);
}

#[test]
fn retry_bounds_are_checked_against_the_defaults_too() {
    let sf = store_and_forward("state_dir: /q\n");
    let cases = [
        (
            "{ max: 500ms }",
            "guard.yaml:9:19: routes[0].retry.max: must be at least retry.initial (1s, the default), not \"500ms\"",
        ),
        (
            "{ initial: 5m }",
            "guard.yaml:9:23: routes[0].retry.initial: must not exceed retry.max (3m, the default), not \"5m\"; lower it or set `max` too",
        ),
        (
            "{ initial: 0s }",
            "guard.yaml:9:23: routes[0].retry.initial: must be greater than zero, not \"0s\"",
        ),
        (
            "{ max_attempts: -1 }",
            "guard.yaml:9:28: routes[0].retry.max_attempts: must be a whole number of delivery attempts (0 = unlimited, the default), not \"-1\"",
        ),
    ];
    for (retry, expected) in cases {
        assert_eq!(
            errors(&format!("{sf}    retry: {retry}\n")),
            expected,
            "{retry}"
        );
    }
}

#[test]
fn a_bad_delivery_value_lists_the_valid_ones_and_suppresses_custody_checks() {
    let yaml = format!("{MINIMAL}    delivery: store-forward\n    ack_mode: never\n");
    assert_eq!(
        errors(&yaml),
        "guard.yaml:7:15: routes[0].delivery: must be `forward` (relay each message while the sender waits) or `store-and-forward` (queue it durably, ack it, deliver it later), not \"store-forward\""
    );
}

#[test]
fn on_reply_keys_are_the_uppercase_reply_codes() {
    let yaml = format!(
        "{}    on_reply: {{ ae: retry }}\n",
        store_and_forward("state_dir: /q\n")
    );
    assert_eq!(
        errors(&yaml),
        "guard.yaml:9:17: routes[0].on_reply.ae: unknown key `ae` (did you mean `AE`?); valid keys here: AE, AR"
    );
}

#[test]
fn a_config_error_without_position_or_path_displays_compactly() {
    let e = ConfigError {
        file: "g.yaml".into(),
        yaml_path: String::new(),
        line: None,
        column: None,
        message: "boom".into(),
    };
    assert_eq!(e.to_string(), "g.yaml: boom");
    let e = ConfigError {
        yaml_path: "routes[0]".into(),
        ..e
    };
    assert_eq!(e.to_string(), "g.yaml: routes[0]: boom");
}

#[test]
fn edit_distance_suggestions_stay_close() {
    assert_eq!(closest("listne", &["name", "listen"]), Some("listen"));
    assert_eq!(closest("zzz", &["name", "listen"]), None);
    // The length filter changes no answer: a far-longer word was never within 3 edits.
    assert_eq!(
        closest("max_message_byte", &["max_message_bytes"]),
        Some("max_message_bytes")
    );
    assert_eq!(closest(&"x".repeat(5000), &["name", "listen"]), None);
    assert_eq!(edit_distance("kitten", "sitting"), 3);
    assert_eq!(edit_distance("", "abc"), 3);
    assert_eq!(edit_distance("abc", ""), 3);
}

/// The session example of issue 4, verbatim apart from the `allow` line the relay core
/// requires.
const SESSIONS: &str = r#"
routes:
  - name: lab
    listen: 0.0.0.0:2575            # as before: we wait for the sender...
    allow: [any]
    # dial: 10.1.2.3:5000           # ...or instead we connect OUT to a sender that is itself an MLLP server (exactly one of listen/dial)
    upstream:
      address: ehr:2575             # as before: we connect to the receiver...
      # accept: 0.0.0.0:2600        # ...or instead the receiver connects IN to us and we send over that connection (exactly one of address/accept)
      idle_reconnect: 240s          # close and reopen an upstream connection that has been quiet this long, before a firewall drops it; 0s = off
      keepalive: { time: 60s, interval: 10s, retries: 6, user_timeout: 120s }
      reconnect: { initial: 1s, max: 180s }   # exponential backoff with jitter, reset after a healthy period
    framing:
      start: 0x0B                   # framing bytes, configurable per side (IPWorks-style)
      end: [0x1C, 0x0D]
      release: 1                    # 2 = MLLP release 2: commit block 0x0B 0x06 0x1C 0x0D (ACK) / 0x15 (NAK) per frame
"#;

#[test]
fn the_framing_example_of_the_sessions_issue_parses() {
    let config = Config::parse(SESSIONS, Path::new("g.yaml"), Path::new("/")).unwrap();
    let route = &config.routes[0];
    assert_eq!(route.framing, Framing::MLLP);
    assert_eq!(route.release, MllpRelease::One);
    assert_eq!(route.upstream.framing, Framing::MLLP);
    assert_eq!(route.upstream.release, MllpRelease::One);
    assert_eq!(
        route.upstream.idle_reconnect,
        Some(Duration::from_secs(240))
    );
}

#[test]
fn framing_defaults_to_mllp_release_1_on_both_sides() {
    let config = Config::parse(MINIMAL, Path::new("g.yaml"), Path::new("/")).unwrap();
    let route = &config.routes[0];
    assert_eq!(
        (route.framing, route.release),
        (Framing::MLLP, MllpRelease::One)
    );
    assert_eq!(
        (route.upstream.framing, route.upstream.release),
        (Framing::MLLP, MllpRelease::One)
    );
    assert_eq!(MllpRelease::default(), MllpRelease::One);
    // An empty block, or one with only some keys, takes MLLP's bytes for the others.
    let yaml = format!("{MINIMAL}      framing: {{ end: [0x03] }}\n    framing: {{}}\n");
    let config = Config::parse(&yaml, Path::new("g.yaml"), Path::new("/")).unwrap();
    let route = &config.routes[0];
    assert_eq!(route.framing, Framing::MLLP);
    assert_eq!(route.upstream.framing, Framing::new(0x0B, &[0x03]).unwrap());
}

#[test]
fn each_side_gets_its_own_framing_in_hex_or_decimal() {
    let yaml = format!(
        "{MINIMAL}      framing:\n        start: 2\n        end: [0x03, 0x0a]\n        release: 1\n    framing:\n      start: 0x02\n      end:\n        - 0X03\n"
    );
    let config = Config::parse(&yaml, Path::new("g.yaml"), Path::new("/")).unwrap();
    let route = &config.routes[0];
    assert_eq!(route.framing, Framing::new(0x02, &[0x03]).unwrap());
    assert_eq!(
        route.upstream.framing,
        Framing::new(0x02, &[0x03, 0x0A]).unwrap()
    );
    assert_eq!(route.release, MllpRelease::One);
}

#[test]
fn bad_framing_bytes_are_reported_where_they_are_written() {
    let yaml = format!(
        "{MINIMAL}      framing: {{ start: 0x1G, end: [0x1C, 300] }}\n    framing:\n      start: 0x100\n      end: [ETX]\n"
    );
    let byte = "is not a byte; write 0x00 to 0xFF (hex, e.g. 0x0B) or 0 to 255 (decimal)";
    let expected = [
        format!("guard.yaml:7:25: routes[0].upstream.framing.start: \"0x1G\" {byte}"),
        format!("guard.yaml:7:43: routes[0].upstream.framing.end[1]: \"300\" {byte}"),
        format!("guard.yaml:9:14: routes[0].framing.start: \"0x100\" {byte}"),
        format!("guard.yaml:10:13: routes[0].framing.end[0]: \"ETX\" {byte}"),
    ];
    assert_eq!(errors(&yaml), expected.join("\n"));
    for bad in ["", "-1", "+11", "0x", "1.0", "0b11", "256"] {
        assert!(parse_byte(bad).is_err(), "{bad:?}");
    }
    assert_eq!(parse_byte("0x0b"), Ok(0x0B));
    assert_eq!(parse_byte(" 0XFF "), Ok(0xFF));
    assert_eq!(parse_byte("28"), Ok(0x1C));
    assert_eq!(parse_byte("0"), Ok(0));
}

#[test]
fn an_end_block_of_other_than_one_or_two_bytes_is_an_error() {
    for (end, n) in [("[]", 0), ("[0x1C, 0x0D, 0x0A]", 3)] {
        let yaml = format!("{MINIMAL}    framing:\n      end: {end}\n");
        assert_eq!(
            errors(&yaml),
            format!("guard.yaml:8:12: routes[0].framing.end: must be one or two bytes, e.g. [0x1C, 0x0D] or [0x1C], not {n}"),
        );
    }
}

#[test]
fn a_framing_the_codec_refuses_is_reported_at_its_block_with_the_reason() {
    let yaml = format!(
        "{MINIMAL}      framing: {{ end: [0x0D] }}\n    framing:\n      start: 0x1C\n      end: [0x1C, 0x0D]\n"
    );
    let expected = [
        "guard.yaml:7:16: routes[0].upstream.framing: the end byte may not be 0x0D: CR ends every HL7 segment, so every message would be cut at its first segment; use e.g. [0x1C] or [0x1C, 0x0D]",
        "guard.yaml:9:7: routes[0].framing: the start byte and the first end byte are both 0x1C; they must differ",
    ];
    assert_eq!(errors(&yaml), expected.join("\n"));
    let yaml = format!("{MINIMAL}    framing: {{ start: 0x41 }}\n");
    assert_eq!(
        errors(&yaml),
        "guard.yaml:7:14: routes[0].framing: the start byte 0x41 is the printable character 'A', which occurs in message text; use a control byte (0x00 to 0x1F)"
    );
}

#[test]
fn release_2_is_accepted_on_either_side_and_other_values_are_not() {
    let yaml =
        format!("{MINIMAL}      framing: {{ release: 2 }}\n    framing:\n      release: 2\n");
    let config = Config::parse(&yaml, Path::new("guard.yaml"), Path::new(".")).unwrap();
    assert_eq!(config.routes[0].release, MllpRelease::Two);
    assert_eq!(config.routes[0].upstream.release, MllpRelease::Two);
    let yaml = format!("{MINIMAL}    framing:\n      release: 3\n");
    assert_eq!(
        errors(&yaml),
        "guard.yaml:8:16: routes[0].framing.release: must be 1 (MLLP release 1) or 2 (release 2, commit blocks), not \"3\""
    );
}

#[test]
fn a_route_can_dial_its_sender_and_accept_its_receiver() {
    let yaml = "routes:\n  - name: lab\n    dial: sender.example.org:5000\n    allow: [any]\n    upstream:\n      accept: 127.0.0.1:2600\n      allow: [127.0.0.2]\n";
    let config = Config::parse(yaml, Path::new("guard.yaml"), Path::new(".")).unwrap();
    let route = &config.routes[0];
    assert_eq!(
        route.sender,
        SenderRole::Dial(UpstreamAddress {
            host: "sender.example.org".into(),
            port: 5000
        })
    );
    let ReceiverRole::Accept { listen, allow } = &route.upstream.role else {
        panic!("accept expected, got {:?}", route.upstream.role);
    };
    assert_eq!(*listen, "127.0.0.1:2600".parse().unwrap());
    assert!(allow.admits("127.0.0.2".parse().unwrap()));
    assert!(!allow.admits("127.0.0.3".parse().unwrap()));
}

#[test]
fn each_side_has_exactly_one_role() {
    let yaml = MINIMAL.replace(
        "    listen: 127.0.0.1:2575\n",
        "    listen: 127.0.0.1:2575\n    dial: 10.1.2.3:5000\n",
    );
    let yaml = yaml.replace(
        "      address: 127.0.0.1:2576\n",
        "      address: 127.0.0.1:2576\n      accept: 0.0.0.0:2600\n",
    );
    let expected = [
        "guard.yaml:4:11: routes[0].dial: a route has exactly one of `listen` (we wait for the sender) and `dial` (we connect to a sender that is an MLLP server); remove one",
        "guard.yaml:8:15: routes[0].upstream.accept: an upstream has exactly one of `address` (we connect to the receiver) and `accept` (the receiver connects in to us); remove one",
    ];
    assert_eq!(errors(&yaml), expected.join("\n"));
    let yaml = MINIMAL.replace("      address: 127.0.0.1:2576\n", "      connections: 2\n");
    assert_eq!(
        errors(&yaml),
        "guard.yaml:6:7: routes[0].upstream: missing required key `address` (or `accept`); add e.g. `address: 127.0.0.1:2576`, or `accept: 0.0.0.0:2600` for a receiver that connects in"
    );
}

#[test]
fn roles_refuse_what_they_cannot_do() {
    let yaml = "routes:\n  - name: lab\n    dial: 10.1.2.3:5000\n    tls: { cert: a.pem, key: a.key }\n    allow: [any]\n    upstream:\n      accept: 127.0.0.1:2600\n      idle_reconnect: 60s\n";
    let text = errors(yaml);
    assert!(
        text.contains("routes[0].tls: `tls` on a route that dials its sender is not supported"),
        "{text}"
    );
    assert!(
        text.contains("routes[0].upstream.idle_reconnect: idle_reconnect needs `address`"),
        "{text}"
    );
    let yaml = format!("{MINIMAL}      allow: [any]\n");
    assert_eq!(
        errors(&yaml),
        "guard.yaml:7:14: routes[0].upstream.allow: `allow` on an upstream says who may connect in to `accept`; it has no meaning with `address` (remove it)"
    );
    let yaml = "routes:\n  - name: lab\n    listen: 127.0.0.1:2575\n    allow: [any]\n    upstream:\n      accept: 127.0.0.1:2575\n";
    assert!(
        errors(yaml).contains(
            "routes[0].upstream.accept: listen address 127.0.0.1:2575 is already used by routes[0]"
        ),
        "{}",
        errors(yaml)
    );
}

#[test]
fn original_destination_needs_a_transparent_paired_forward_route() {
    let yaml = MINIMAL.replace("address: 127.0.0.1:2576", "address: original-destination");
    assert_eq!(
        errors(&yaml),
        "guard.yaml:6:16: routes[0].upstream.address: original-destination needs `transparent: true` on the route (only a connection TPROXY redirected has an original destination)"
    );
    let yaml = yaml.replace("    allow:", "    transparent: true\n    allow:");
    let config = Config::parse(&yaml, Path::new("guard.yaml"), Path::new(".")).unwrap();
    assert!(config.routes[0].transparent);
    assert_eq!(
        config.routes[0].upstream.role,
        ReceiverRole::OriginalDestination
    );
    let pooled = format!("{yaml}      connections: 2\n");
    assert!(errors(&pooled).contains("original-destination needs `connections: paired`"));
    let from_client = format!("{MINIMAL}      transparent_source: true\n      connections: 2\n");
    assert!(errors(&from_client).contains("transparent_source needs `connections: paired`"));
}

#[test]
fn idle_reopen_is_on_demand_or_at_once() {
    let config = Config::parse(MINIMAL, Path::new("guard.yaml"), Path::new(".")).unwrap();
    assert_eq!(config.routes[0].upstream.idle_reopen, IdleReopen::OnDemand);
    let yaml = format!("{MINIMAL}      idle_reconnect: 240s\n      idle_reopen: at-once\n");
    let config = Config::parse(&yaml, Path::new("guard.yaml"), Path::new(".")).unwrap();
    assert_eq!(config.routes[0].upstream.idle_reopen, IdleReopen::AtOnce);
    let yaml = format!("{MINIMAL}      idle_reopen: eager\n");
    assert_eq!(
        errors(&yaml),
        "guard.yaml:7:20: routes[0].upstream.idle_reopen: must be on-demand (reopen when the next message comes) or at-once (reopen straight away), not \"eager\""
    );
}

#[test]
fn an_unknown_framing_key_lists_the_valid_ones() {
    let yaml = format!("{MINIMAL}    framing: {{ start: 0x0B, stop: [0x1C] }}\n");
    assert_eq!(
        errors(&yaml),
        "guard.yaml:7:29: routes[0].framing.stop: unknown key `stop`; valid keys here: start, end, release, commit_timeout"
    );
}

#[test]
fn multiple_messages_is_refuse_or_inspect() {
    let yaml = "routes:\n  - name: lab\n    listen: 127.0.0.1:0\n    allow: [any]\n    multiple_messages: split\n    upstream: { address: 127.0.0.1:1 }\n";
    let err = Config::parse(yaml, Path::new("guard.yaml"), Path::new("/"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("guard.yaml:5:24: routes[0].multiple_messages: must be `refuse`")
            && err.contains("not \"split\""),
        "{err}"
    );
}

#[test]
fn an_unknown_key_does_not_hide_the_other_errors_of_the_file() {
    let yaml = "\
routes:
  - name: lab
    listen: 127.0.0.1:2575
    allow: [127.0.0.0/8]
    receive_timeout: 5x
    upstream:
      adress: 127.0.0.1:2576
      keepalive: { time: 60s, retry: 3 }
      connect_timeout: soon
extra:
  nested: 1
shutdown_grace: 10s
";
    let all = errors(yaml);
    let lines: Vec<&str> = all.lines().collect();
    let at = |needle: &str| {
        lines
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no error with {needle:?} in:\n{all}"))
    };
    let receive = at("guard.yaml:5:22: routes[0].receive_timeout: ");
    let adress = at(
        "guard.yaml:7:7: routes[0].upstream.adress: unknown key `adress` (did you mean `address`?)",
    );
    let retry = at("guard.yaml:8:31: routes[0].upstream.keepalive.retry: unknown key `retry` (did you mean `retries`?)");
    let connect = at("guard.yaml:9:24: routes[0].upstream.connect_timeout: ");
    let extra = at("guard.yaml:10:1: extra: unknown key `extra`");
    assert!(
        receive < adress && adress < retry && retry < connect && connect < extra,
        "document order:\n{all}"
    );
    assert_eq!(all.matches("unknown key").count(), 3, "{all}");
}

#[test]
fn a_mistyped_required_key_is_read_as_the_one_meant_and_a_lone_unknown_key_leaves_a_map() {
    let yaml = "\
routes:
  - nme: lab
    listen: 127.0.0.1:2575
    allow: [127.0.0.1]
    idle_timeout: 5x
    upstream:
      adress: 127.0.0.1:2576
    framing:
      stop: [0x1C]
";
    let all = errors(yaml);
    let lines: Vec<&str> = all.lines().collect();
    assert!(
        lines[0]
            .starts_with("guard.yaml:2:5: routes[0].nme: unknown key `nme` (did you mean `name`?)"),
        "{all}"
    );
    assert!(
        lines[1].starts_with("guard.yaml:5:19: routes[0].idle_timeout: "),
        "{all}"
    );
    assert!(
        lines[2].starts_with("guard.yaml:7:7: routes[0].upstream.adress: unknown key `adress` (did you mean `address`?)"),
        "{all}"
    );
    assert!(
        lines[3].starts_with("guard.yaml:9:7: routes[0].framing.stop: unknown key `stop`"),
        "{all}"
    );
    assert_eq!(lines.len(), 4, "{all}");
}

#[test]
fn admin_token_file_protect_reads_allowed_hosts_and_tls_are_read_and_checked() {
    let f = Fixture::new();
    std::fs::write(f.base().join("admin.token"), "  tok-123  \nignored\n").unwrap();
    std::fs::write(f.base().join("empty.token"), "\n").unwrap();
    let ok = format!(
        "admin:\n  listen: 127.0.0.1:9102\n  token_file: admin.token\n  protect_reads: true\n  allowed_hosts: [Guard.Example.org]\n  tls: {{ cert: certs/guard.pem, key: certs/guard.key }}\n{MINIMAL}"
    );
    let config = f.parse(&ok).unwrap();
    let admin = config.admin.unwrap();
    assert_eq!(admin.token, Some(AdminToken("tok-123".into())));
    assert!(
        !format!("{:?}", admin.token).contains("tok-123"),
        "never shown"
    );
    assert!(admin.protect_reads);
    assert_eq!(admin.allowed_hosts, ["guard.example.org"]);
    assert!(admin.tls.is_some());
    assert!(
        config.inputs.contains(&f.base().join("admin.token")),
        "reloaded with the config"
    );

    let bad = format!(
        "admin:\n  listen: 127.0.0.1:9102\n  token_file: empty.token\n  allowed_hosts: [\"a b\"]\n{MINIMAL}"
    );
    let errors = f.errors(&bad);
    assert!(
        errors.contains("guard.yaml:3:15: admin.token_file: \"empty.token\" holds no token"),
        "{errors}"
    );
    assert!(
        errors.contains("admin.allowed_hosts[0]: \"a b\" is not a host name"),
        "{errors}"
    );
    let errors = f.errors(&format!(
        "admin:\n  listen: 127.0.0.1:9102\n  protect_reads: true\n{MINIMAL}"
    ));
    assert!(
        errors.contains("admin.protect_reads: protect_reads needs admin.token_file"),
        "{errors}"
    );
}
