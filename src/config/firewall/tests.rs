//! Unit tests of the firewall keys: `rules:` inline and from a rules file, `limits:`,
//! `upstreams:`, and the fuzz entry over every shipped config.

use std::path::Path;
use std::time::Duration;

use super::*;
use crate::config::{Config, ConfigErrors, Connections, ReceiverRole, UpstreamAddress};

/// One plaintext route; tests append route keys (4-space indent) or prepend top-level keys.
const BASE: &str = "\
routes:
  - name: lab
    listen: 127.0.0.1:2575
    allow: [any]
    upstream:
      address: 127.0.0.1:2576
";

fn parse_in(dir: &Path, yaml: &str) -> Result<Config, ConfigErrors> {
    Config::parse(yaml, Path::new("guard.yaml"), dir)
}

fn parse(yaml: &str) -> Config {
    parse_in(Path::new("/nonexistent"), yaml).unwrap_or_else(|e| panic!("{e}"))
}

fn errors(yaml: &str) -> String {
    parse_in(Path::new("/nonexistent"), yaml)
        .unwrap_err()
        .to_string()
}

fn pats(list: &[&str]) -> Option<Vec<Pattern>> {
    Some(list.iter().map(|s| Pattern::parse(s).unwrap()).collect())
}

/// The rules example of issue 5, verbatim, on a route, plus an upstream to route to.
const ISSUE_RULES: &str = r#"
    rules:
      - name: no-test-messages-in-production
        match: { processing_id: [T, D] }          # MSH-11
        action: reject                             # AR ack with ERR reason; the connection stays open
      - name: lab-results-from-the-lab-only
        match:
          source: [10.20.0.0/16]                   # peer CIDRs
          tls_identity: ["lab.example.org"]        # client certificate SAN DNS/URI or CN, exact or "*.example.org"
          sending_application: [LIS]               # MSH-3 (first component), sending_facility MSH-4, receiving_application MSH-5, receiving_facility MSH-6
          message_type: ["ORU^R01", "ORM^*"]       # MSH-9 type^trigger, "*" wildcard per component
          version: ["2.3", "2.5*"]                 # MSH-12
        action: allow                              # allow | reject | drop (close the connection) | route: <upstream name>
      - name: orders-elsewhere
        match: { message_type: ["OML^*"] }
        action: { route: orders }
      - name: default
        action: reject
"#;

fn issue_rules_expected() -> Vec<Rule> {
    vec![
        Rule {
            name: "no-test-messages-in-production".into(),
            matcher: RuleMatch {
                processing_id: pats(&["T", "D"]),
                ..RuleMatch::default()
            },
            action: Action::Reject,
        },
        Rule {
            name: "lab-results-from-the-lab-only".into(),
            matcher: RuleMatch {
                source: Some(vec!["10.20.0.0/16".parse().unwrap()]),
                tls_identity: Some(vec![Pattern::parse_identity("lab.example.org").unwrap()]),
                sending_application: pats(&["LIS"]),
                message_type: Some(vec![
                    MessageTypePattern::parse("ORU^R01").unwrap(),
                    MessageTypePattern::parse("ORM^*").unwrap(),
                ]),
                version: pats(&["2.3", "2.5*"]),
                ..RuleMatch::default()
            },
            action: Action::Allow,
        },
        Rule {
            name: "orders-elsewhere".into(),
            matcher: RuleMatch {
                message_type: Some(vec![MessageTypePattern::parse("OML^*").unwrap()]),
                ..RuleMatch::default()
            },
            action: Action::Route("orders".into()),
        },
        Rule {
            name: "default".into(),
            matcher: RuleMatch::default(),
            action: Action::Reject,
        },
    ]
}

const ORDERS: &str =
    "upstreams:\n  orders:\n    address: orders.example.org:2577\n    connections: 2\n";

#[test]
fn the_rules_example_of_the_issue_parses_into_typed_rules() {
    let config = parse(&format!("{ORDERS}{BASE}{ISSUE_RULES}"));
    assert_eq!(config.routes[0].rules, issue_rules_expected());
    let orders = &config.upstreams["orders"];
    assert_eq!(
        orders.role,
        ReceiverRole::Connect(UpstreamAddress {
            host: "orders.example.org".into(),
            port: 2577
        })
    );
    assert_eq!(
        orders.connections,
        Connections::Pool(std::num::NonZeroUsize::new(2).unwrap())
    );
    assert_eq!(config.upstreams.len(), 1);
}

#[test]
fn a_route_without_rules_or_limits_has_none_and_no_upstreams_is_an_empty_map() {
    // No limits but the default per-source cap: three quarters of the 256 slots.
    let shipped = RateLimits {
        max_connections_per_source: Some(192),
        ..RateLimits::default()
    };
    let config = parse(BASE);
    assert_eq!(config.routes[0].rules, vec![]);
    assert_eq!(config.routes[0].limits, shipped);
    assert!(config.upstreams.is_empty());
    assert_eq!(
        RateLimits::default(),
        RateLimits {
            messages_per_second: None,
            burst: None,
            bytes_per_second: None,
            connections_per_minute: None,
            max_connections_per_source: None,
            on_limit: OnLimit::Delay,
            max_tracked_sources: 100_000,
        }
    );
    let config = parse(&format!("{BASE}    rules: []\n    limits: {{}}\n"));
    assert_eq!(config.routes[0].rules, vec![]);
    assert_eq!(config.routes[0].limits, shipped);
}

#[test]
fn the_default_per_source_cap_is_three_quarters_of_the_slots_but_at_least_eight() {
    for (max_connections, per_source) in [
        (256, 192),
        (1000, 750),
        (40, 30),
        (10, 8),
        (9, 8),
        (3, 3),
        (1, 1),
    ] {
        let config = parse(&format!("{BASE}    max_connections: {max_connections}\n"));
        assert_eq!(
            config.routes[0].limits.max_connections_per_source,
            Some(per_source),
            "max_connections {max_connections}"
        );
    }
    let config = parse(&format!(
        "{BASE}    max_connections: 256\n    limits: {{ max_connections_per_source: 256 }}\n"
    ));
    assert_eq!(
        config.routes[0].limits.max_connections_per_source,
        Some(256),
        "as written"
    );
}

/// The limits example of issue 5, verbatim.
const ISSUE_LIMITS: &str = "
    limits:
      messages_per_second: 50        # per source address (IPv6 keyed by /64), with burst
      burst: 100
      bytes_per_second: 10MiB        # per source
      connections_per_minute: 60     # new connections per source
      max_connections_per_source: 8
      on_limit: delay                # delay = stop reading until allowed (backpressure); reject = AE \"rate limited\"
      handshake_timeout: 10s
";

#[test]
fn the_limits_example_of_the_issue_parses_into_typed_values() {
    let config = parse(&format!("{BASE}{ISSUE_LIMITS}"));
    let route = &config.routes[0];
    let n = |v: u32| NonZeroU32::new(v);
    assert_eq!(
        route.limits,
        RateLimits {
            messages_per_second: n(50),
            burst: n(100),
            bytes_per_second: Some(10 << 20),
            connections_per_minute: n(60),
            max_connections_per_source: Some(8),
            on_limit: OnLimit::Delay,
            max_tracked_sources: DEFAULT_MAX_TRACKED_SOURCES,
        }
    );
    assert_eq!(route.handshake_timeout, Duration::from_secs(10));
}

#[test]
fn burst_defaults_to_the_rate_and_every_limit_key_is_read() {
    let yaml = format!(
        "{BASE}    limits: {{ messages_per_second: 20, on_limit: reject, max_tracked_sources: 500, handshake_timeout: 3s }}\n"
    );
    let route = &parse(&yaml).routes[0];
    assert_eq!(route.limits.messages_per_second, NonZeroU32::new(20));
    assert_eq!(route.limits.burst, NonZeroU32::new(20));
    assert_eq!(route.limits.on_limit, OnLimit::Reject);
    assert_eq!(route.limits.max_tracked_sources, 500);
    assert_eq!(route.limits.bytes_per_second, None);
    assert_eq!(route.handshake_timeout, Duration::from_secs(3));
}

#[test]
fn handshake_timeout_may_be_given_in_both_places_only_when_equal() {
    let same =
        format!("{BASE}    handshake_timeout: 5s\n    limits: {{ handshake_timeout: 5000ms }}\n");
    assert_eq!(
        parse(&same).routes[0].handshake_timeout,
        Duration::from_secs(5)
    );
    let differ =
        format!("{BASE}    handshake_timeout: 5s\n    limits: {{ handshake_timeout: 10s }}\n");
    assert_eq!(
        errors(&differ),
        "guard.yaml:8:34: routes[0].limits.handshake_timeout: differs from the route's handshake_timeout (5s); set it in one place"
    );
}

#[test]
fn bad_limit_values_are_all_reported_with_their_positions() {
    let yaml = format!(
        "{BASE}{}",
        "    handshake_timeout: 0s
    limits:
      messages_per_second: 0
      burst: many
      bytes_per_second: 0
      connections_per_minute: 4294967296
      max_connections_per_source: 0
      on_limit: wait
      handshake_timeout: soon
      max_tracked_sources: -1
"
    );
    let expected = [
        "guard.yaml:7:24: routes[0].handshake_timeout: must be greater than zero, not \"0s\"",
        "guard.yaml:9:28: routes[0].limits.messages_per_second: must be a whole number from 1 to 4294967295, not \"0\"",
        "guard.yaml:10:14: routes[0].limits.burst: must be a whole number from 1 to 4294967295, not \"many\"",
        "guard.yaml:11:25: routes[0].limits.bytes_per_second: must be at least 1 byte per second, not \"0\"",
        "guard.yaml:12:31: routes[0].limits.connections_per_minute: must be a whole number from 1 to 4294967295, not \"4294967296\"",
        "guard.yaml:13:35: routes[0].limits.max_connections_per_source: must be a whole number of at least 1, not \"0\"",
        "guard.yaml:14:17: routes[0].limits.on_limit: must be `delay` (stop reading from the source until its rate allows) or `reject` (answer AE \"rate limited\"), not \"wait\"",
        "guard.yaml:15:26: routes[0].limits.handshake_timeout: \"soon\" is not a duration; write e.g. 30s, 500ms or 5m",
        "guard.yaml:16:28: routes[0].limits.max_tracked_sources: must be a whole number of at least 1, not \"-1\"",
    ];
    assert_eq!(errors(&yaml), expected.join("\n"));
}

#[test]
fn burst_without_a_message_rate_is_an_error() {
    assert_eq!(
        errors(&format!("{BASE}    limits: {{ burst: 5, bytes_per_second: 1KiB }}\n")),
        "guard.yaml:7:22: routes[0].limits.burst: burst needs messages_per_second (it sizes that rate's bucket); add `messages_per_second` or remove `burst`"
    );
}

#[test]
fn an_unknown_limits_key_lists_the_valid_ones() {
    assert_eq!(
        errors(&format!("{BASE}    limits: {{ messages_per_minute: 5 }}\n")),
        "guard.yaml:7:15: routes[0].limits.messages_per_minute: unknown key `messages_per_minute`; valid keys here: messages_per_second, burst, bytes_per_second, connections_per_minute, max_connections_per_source, on_limit, handshake_timeout, max_tracked_sources"
    );
}

#[test]
fn an_unknown_match_key_is_an_error_with_its_location() {
    let yaml = format!(
        "{BASE}    rules:\n      - name: a\n        match: {{ versoin: [\"2.3\"] }}\n        action: drop\n"
    );
    assert_eq!(
        errors(&yaml),
        "guard.yaml:9:18: routes[0].rules[0].match.versoin: unknown key `versoin` (did you mean `version`?); valid keys here: source, tls_identity, sending_application, sending_facility, receiving_application, receiving_facility, message_type, version, processing_id"
    );
}

#[test]
fn an_unknown_rule_key_is_an_error_with_its_location() {
    let yaml =
        format!("{BASE}    rules:\n      - name: a\n        matches: {{}}\n        action: drop\n");
    assert_eq!(
        errors(&yaml),
        "guard.yaml:9:9: routes[0].rules[0].matches: unknown key `matches` (did you mean `match`?); valid keys here: name, match, action"
    );
}

#[test]
fn missing_name_and_action_say_what_to_add() {
    let no_name = format!("{BASE}    rules:\n      - action: drop\n");
    assert_eq!(
        errors(&no_name),
        "guard.yaml:8:9: routes[0].rules[0]: missing required key `name`; add e.g. `name: no-test-messages` (unique within the route; a-z, 0-9 and '-')"
    );
    let no_action = format!("{BASE}    rules:\n      - name: a\n");
    assert_eq!(
        errors(&no_action),
        "guard.yaml:8:9: routes[0].rules[0]: missing required key `action`; add e.g. `action: reject` (allow, reject, drop, or { route: <upstream name> })"
    );
}

#[test]
fn bad_actions_say_what_is_accepted() {
    let cases = [
        (
            "allwo",
            "guard.yaml:9:17: routes[0].rules[0].action: must be `allow`, `reject` (answer AR, keep the connection), `drop` (close the connection) or `{ route: <upstream name> }`, not \"allwo\"",
        ),
        (
            "route",
            "guard.yaml:9:17: routes[0].rules[0].action: `route` needs the name of the upstream to send to: write `action: { route: <upstream name> }`",
        ),
        (
            "{ route: x, to: y }",
            "guard.yaml:9:26: routes[0].rules[0].action.route: unknown upstream \"x\"; no `upstreams:` are defined; add a top-level `upstreams:` map with this name (its block takes the same keys as a route's `upstream`)\n\
             guard.yaml:9:29: routes[0].rules[0].action.to: unknown key `to`; valid keys here: route",
        ),
        (
            "{}",
            "guard.yaml:9:17: routes[0].rules[0].action: missing required key `route`; write `action: { route: <upstream name> }`",
        ),
        (
            "[allow]",
            "guard.yaml:9:9: routes[0].rules[0].action: wrong type: found sequence, expected allow, reject, drop or a map { route: <upstream name> }",
        ),
    ];
    for (action, expected) in cases {
        let yaml = format!("{BASE}    rules:\n      - name: a\n        action: {action}\n");
        assert_eq!(errors(&yaml), expected, "{action}");
    }
}

#[test]
fn routing_to_an_unknown_upstream_lists_the_known_ones() {
    let rule = "    rules:\n      - name: a\n        action: { route: lab-c }\n";
    let two = "upstreams:\n  lab-b: { address: \"b:1\" }\n  lab-a: { address: \"a:1\" }\n";
    assert_eq!(
        errors(&format!("{two}{BASE}{rule}")),
        "guard.yaml:12:26: routes[0].rules[0].action.route: unknown upstream \"lab-c\"; the upstreams defined are: lab-b, lab-a"
    );
    assert_eq!(
        errors(&format!("{BASE}{rule}")),
        "guard.yaml:9:26: routes[0].rules[0].action.route: unknown upstream \"lab-c\"; no `upstreams:` are defined; add a top-level `upstreams:` map with this name (its block takes the same keys as a route's `upstream`)"
    );
    let config = parse(&format!("{two}{BASE}{}", rule.replace("lab-c", "lab-a")));
    assert_eq!(
        config.routes[0].rules[0].action,
        Action::Route("lab-a".into())
    );
    assert_eq!(
        config.upstreams.keys().collect::<Vec<_>>(),
        ["lab-a", "lab-b"]
    );
}

#[test]
fn upstream_blocks_are_validated_like_a_routes_upstream_and_names_are_checked() {
    let yaml = format!(
        "upstreams:\n  Lab_B:\n    address: b:1\n  lab-c:\n    address: c\n    ack_timeout: 0s\n{BASE}    rules:\n      - {{ name: a, action: {{ route: Lab_B }} }}\n"
    );
    let expected = [
        "guard.yaml:3:5: upstreams.Lab_B: upstream name \"Lab_B\" is not valid: use 1 to 63 characters from a-z, 0-9 and '-' (e.g. \"lab-b\")",
        "guard.yaml:5:14: upstreams.lab-c.address: \"c\" has no port; write host:port, e.g. ehr.example.org:2575, 10.1.2.3:2575 or \"[2001:db8::7]:2575\"",
        "guard.yaml:6:18: upstreams.lab-c.ack_timeout: must be greater than zero, not \"0s\"",
    ];
    assert_eq!(errors(&yaml), expected.join("\n"));
    let unknown_key = "upstreams:\n  lab-b:\n    adress: b:1\n";
    assert_eq!(
        errors(&format!("{unknown_key}{BASE}")),
        "guard.yaml:3:5: upstreams.lab-b.adress: unknown key `adress` (did you mean `address`?); valid keys here: address, accept, allow, tls, connections, connect_timeout, ack_timeout, keepalive, max_ack_bytes, idle_reconnect, idle_reopen, send_proxy_protocol, transparent_source, health_check, reconnect, framing, via, local_address, socket"
    );
    let twice = "upstreams:\n  lab-b: { address: \"b:1\" }\n  lab-b: { address: \"c:1\" }\n";
    assert_eq!(
        errors(&format!("{twice}{BASE}")),
        "guard.yaml:3:3: upstreams: key `lab-b` appears twice; keep one of them"
    );
}

#[test]
fn bad_patterns_and_networks_are_reported_at_their_entries() {
    let yaml = format!(
        "{BASE}{}",
        r#"    rules:
      - name: Bad_Name
        match:
          source: [10.20.0.0/16, 10.0.0.0/33]
          tls_identity: ["lab*.example.org"]
          sending_application: ["LIS^LAB"]
          message_type: ["ORU^", "A^B^C^D"]
          version: []
          processing_id: ["P\tX"]
        action: allow
"#
    );
    let expected = [
        "guard.yaml:8:15: routes[0].rules[0].name: rule name \"Bad_Name\" is not valid: use 1 to 63 characters from a-z, 0-9 and '-' (e.g. \"no-test-messages\")",
        "guard.yaml:10:34: routes[0].rules[0].match.source[1]: \"10.0.0.0/33\" is not an IP address or CIDR (write e.g. 10.20.0.0/16, 192.0.2.7 or \"2001:db8::/32\")",
        "guard.yaml:11:26: routes[0].rules[0].match.tls_identity[0]: \"lab*.example.org\": in a TLS identity `*` may only stand for the whole first label (\"*.example.org\") or for any identity (\"*\")",
        "guard.yaml:12:33: routes[0].rules[0].match.sending_application[0]: \"LIS^LAB\": sending_application matches the first component of MSH-3 only; write it without '^'",
        "guard.yaml:13:26: routes[0].rules[0].match.message_type[0]: \"ORU^\" has an empty component; write TYPE^TRIGGER with `*` for any, e.g. ORU^R01, ORM^* or ADT",
        "guard.yaml:13:34: routes[0].rules[0].match.message_type[1]: \"A^B^C^D\" has more than three components; write TYPE^TRIGGER (or TYPE^TRIGGER^STRUCTURE), e.g. ORU^R01",
        "guard.yaml:14:20: routes[0].rules[0].match.version: an empty list matches nothing; list at least one value, or remove `version` to match any",
        "guard.yaml:15:27: routes[0].rules[0].match.processing_id[0]: \"P\\tX\" contains a control character; header values never hold one",
    ];
    assert_eq!(errors(&yaml), expected.join("\n"));
}

#[test]
fn unquoted_versions_keep_their_text() {
    let yaml = format!(
        "{BASE}    rules:\n      - name: a\n        match: {{ version: [2.10, 2.3, 02] }}\n        action: drop\n"
    );
    assert_eq!(
        parse(&yaml).routes[0].rules[0].matcher.version,
        pats(&["2.10", "2.3", "02"])
    );
}

#[test]
fn rule_names_must_be_unique_within_a_route_only() {
    let rules = "    rules:\n      - { name: a, action: allow }\n      - { name: b, action: drop }\n      - { name: a, action: reject }\n";
    assert_eq!(
        errors(&format!("{BASE}{rules}")),
        "guard.yaml:10:17: routes[0].rules[2].name: rule name \"a\" is already used by routes[0].rules[0] (line 8); give each rule of a route a unique name"
    );
    let second = BASE
        .trim_start_matches("routes:\n")
        .replace("name: lab", "name: adt")
        .replace("2575", "2585");
    let ok = format!("{BASE}    rules: [{{ name: a, action: allow }}]\n{second}    rules: [{{ name: a, action: allow }}]\n");
    assert_eq!(parse(&ok).routes[1].rules[0].name, "a");
}

#[test]
fn rules_that_are_not_a_list_or_a_path_are_a_type_error() {
    assert_eq!(
        errors(&format!("{BASE}    rules: {{ a: 1 }}\n")),
        "guard.yaml:7:12: routes[0].rules: wrong type: found map, expected a list of rules or the path of a rules file"
    );
}

/// A config directory holding `guard.yaml` (rules by path) and the given rules files.
fn dir_with(files: &[(&str, &[u8])]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

#[test]
fn rules_from_a_file_resolve_from_the_config_directory_and_equal_inline_rules() {
    let list = ISSUE_RULES
        .trim_start_matches("\n    rules:\n")
        .lines()
        .map(|l| l.strip_prefix("      ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    let dir = dir_with(&[("rules/lists/production.rules.yaml", list.as_bytes())]);
    let yaml = format!("{ORDERS}{BASE}    rules: rules/lists/production.rules.yaml\n");
    std::fs::write(dir.path().join("guard.yaml"), &yaml).unwrap();
    let config = Config::load(&dir.path().join("guard.yaml")).unwrap();
    assert_eq!(config.routes[0].rules, issue_rules_expected());
}

#[test]
fn errors_inside_a_rules_file_name_that_file_and_their_position_in_it() {
    let list = b"# production rules\n- name: a\n  match: { source: [10.0.0.0/33] }\n  action: { route: nowhere }\n- name: a\n  action: allow\n";
    let dir = dir_with(&[("rules/p.yaml", list)]);
    let yaml = format!(
        "{BASE}    rules: rules/p.yaml\n    max_connections: 0\n{}",
        BASE.trim_start_matches("routes:\n")
            .replace("name: lab", "name: adt")
            .replace("2575", "2585")
            + "    rules: rules/p.yaml\n"
    );
    let expected = [
        "etc/guard.yaml:8:22: routes[0].max_connections: must be a whole number of at least 1, not \"0\"",
        "etc/rules/p.yaml:3:21: [0].match.source[0]: \"10.0.0.0/33\" is not an IP address or CIDR (write e.g. 10.20.0.0/16, 192.0.2.7 or \"2001:db8::/32\")",
        "etc/rules/p.yaml:4:20: [0].action.route: unknown upstream \"nowhere\"; no `upstreams:` are defined; add a top-level `upstreams:` map with this name (its block takes the same keys as a route's `upstream`)",
        "etc/rules/p.yaml:5:9: [1].name: rule name \"a\" is already used by [0] (line 2); give each rule of a route a unique name",
    ];
    let got = Config::parse(&yaml, Path::new("etc/guard.yaml"), dir.path())
        .unwrap_err()
        .to_string();
    assert_eq!(
        got,
        expected.join("\n"),
        "shared file errors are reported once"
    );
}

#[test]
fn a_rules_file_with_a_syntax_or_shape_error_is_reported_in_that_file() {
    let dir = dir_with(&[
        ("shape.yaml", b"- name: a\n  action: allow\n  extra: 1\n"),
        ("empty.yaml", b"# nothing yet\n"),
        ("null.yaml", b"~\n"),
        ("map.yaml", b"name: a\naction: allow\n"),
        ("latin1.yaml", b"- name: caf\xe9\n"),
        ("big.yaml", &[b'#'; (1 << 20) + 1]),
    ]);
    let cases = [
        (
            "shape.yaml",
            "shape.yaml:3:3: [0].extra: unknown key `extra`; valid keys here: name, match, action",
        ),
        (
            "empty.yaml",
            "empty.yaml:1:1: the rules file is empty; it must hold a list of rules (`[]` for none)",
        ),
        (
            "null.yaml",
            "null.yaml:1:1: the rules file is empty; it must hold a list of rules (`[]` for none)",
        ),
        (
            "map.yaml",
            "map.yaml:1:1: expected a list here, e.g. [a, b] or one `- item` per line",
        ),
        (
            "latin1.yaml",
            "guard.yaml:7:12: routes[0].rules: rules file \"latin1.yaml\" is not UTF-8 text; save it as UTF-8",
        ),
        (
            "missing.yaml",
            "guard.yaml:7:12: routes[0].rules: rules file \"missing.yaml\" not found (relative paths are resolved from the config file's directory, here $DIR)",
        ),
        (
            ".",
            "guard.yaml:7:12: routes[0].rules: \".\" is a directory; give the path of a YAML file holding a list of rules",
        ),
        (
            "/dev/null",
            "guard.yaml:7:12: routes[0].rules: \"/dev/null\" is not a regular file; give the path of a YAML file holding a list of rules",
        ),
        (
            "big.yaml",
            "guard.yaml:7:12: routes[0].rules: rules file \"big.yaml\" is 1048577 bytes, more than the 1048576 bytes a rules file may hold; split it or trim it",
        ),
        (
            "\"\"",
            "guard.yaml:7:12: routes[0].rules: a rules file path or a list of rules is required here, e.g. `rules: rules/lists/production.rules.yaml`",
        ),
    ];
    for (file, expected) in cases {
        let got = parse_in(dir.path(), &format!("{BASE}    rules: {file}\n"))
            .unwrap_err()
            .to_string()
            .replace(&dir.path().display().to_string(), "$DIR");
        assert_eq!(got, expected, "{file}");
    }
}
#[test]
fn the_config_fuzz_entry_holds_on_every_shipped_config_and_broken_variants() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    let mut texts: Vec<String> = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            texts.push(std::fs::read_to_string(&path).unwrap());
        }
    }
    texts.push(format!("{BASE}{ISSUE_RULES}{ISSUE_LIMITS}"));
    assert!(texts.len() >= 9);
    for text in &texts {
        crate::config::fuzz_config(text.as_bytes());
        for cut in (0..text.len()).step_by(7) {
            crate::config::fuzz_config(&text.as_bytes()[..cut]);
        }
        crate::config::fuzz_config(text.replace(':', "").as_bytes());
        crate::config::fuzz_config(text.replace("  ", "\t").as_bytes());
    }
    for junk in [
        &b"\xff\xfe"[..],
        b"[",
        b"{",
        b"&a [*a]",
        b"rules: /dev/zero",
        b"- - - -",
    ] {
        crate::config::fuzz_config(junk);
    }
}
