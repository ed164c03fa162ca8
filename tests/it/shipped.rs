//! Shipped files never rot: every config under `rules/` loads and validates.

use std::path::Path;

use mllp_guard::config::Config;

#[test]
fn every_config_under_rules_loads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    let mut loaded = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            let config = Config::load(&path).unwrap_or_else(|e| panic!("{}:\n{e}", path.display()));
            assert!(!config.routes.is_empty(), "{}", path.display());
            loaded.push(path.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    loaded.sort();
    assert_eq!(
        loaded,
        [
            "adt-from-registration.yaml",
            "fan-out-by-type.yaml",
            "no-test-in-production.yaml",
            "plain-to-plain.yaml",
            "plain-to-tls.yaml",
            "quickstart.yaml",
            "tls-lab-feed.yaml",
            "tls-to-plain.yaml",
            "tls-to-tls.yaml"
        ]
    );
}

#[test]
fn the_four_tls_combinations_are_what_their_names_say() {
    let load = |f: &str| {
        Config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("rules").join(f)).unwrap()
    };
    let shape = |c: &Config| {
        (
            c.routes[0].tls.is_some(),
            c.routes[0].upstream.tls.is_some(),
        )
    };
    assert_eq!(shape(&load("plain-to-plain.yaml")), (false, false));
    assert_eq!(shape(&load("plain-to-tls.yaml")), (false, true));
    assert_eq!(shape(&load("tls-to-plain.yaml")), (true, false));
    assert_eq!(shape(&load("tls-to-tls.yaml")), (true, true));
}

/// Each rules example decides as its comment says (the rules alone; the end-to-end run of each
/// file is in the session tests).
#[test]
fn the_rule_examples_decide_as_their_comments_say() {
    use mllp_guard::hl7::Header;
    use mllp_guard::rules::{evaluate, Decision, Facts};

    let load = |f: &str| {
        Config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("rules").join(f)).unwrap()
    };
    let msg = |msh3: &str, msh9: &str, msh11: &str| {
        format!("MSH|^~\\&|{msh3}|FAC|EHR|HOSP|20240102030405||{msh9}|C1|{msh11}|2.5.1\rPID|1\r")
    };
    let decide = |config: &Config, route: usize, peer: &str, ids: &[&str], message: &str| {
        let header = Header::parse(message.as_bytes()).unwrap();
        let identities: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        let facts = Facts {
            peer: peer.parse().unwrap(),
            identities: &identities,
            header: &header,
        };
        evaluate(&config.routes[route].rules, &facts).to_string()
    };

    let lab = load("tls-lab-feed.yaml");
    let lab_cert = ["lab.example.org"];
    let oru = msg("LIS", "ORU^R01^ORU_R01", "P");
    assert_eq!(
        decide(&lab, 0, "10.20.0.5", &lab_cert, &oru),
        "allow (rule \"results-from-the-lab-only\")"
    );
    assert_eq!(
        decide(&lab, 0, "10.20.0.5", &["ehr.example.org"], &oru),
        "reject (rule \"default\")"
    );
    assert_eq!(
        decide(&lab, 0, "10.20.0.5", &lab_cert, &msg("LIS", "ORU^R01", "T")),
        "reject (rule \"no-test-messages\")"
    );
    assert_eq!(
        decide(&lab, 0, "10.20.0.5", &lab_cert, &msg("LIS", "ADT^A01", "P")),
        "reject (rule \"default\")"
    );
    assert_eq!(
        lab.routes[0].limits.messages_per_second.map(|n| n.get()),
        Some(50)
    );

    let production = load("no-test-in-production.yaml");
    for route in 0..2 {
        assert_eq!(
            decide(
                &production,
                route,
                "10.20.0.5",
                &[],
                &msg("X", "ADT^A01", "D")
            ),
            "reject (rule \"no-test-messages\")"
        );
        assert_eq!(
            decide(
                &production,
                route,
                "10.20.0.5",
                &[],
                &msg("X", "ACK^A01", "P")
            ),
            "reject (rule \"no-stray-acks\")"
        );
        assert_eq!(
            decide(
                &production,
                route,
                "10.20.0.5",
                &[],
                &msg("X", "ADT^A01", "P")
            ),
            "allow (no rule matched)"
        );
    }

    let adt = load("adt-from-registration.yaml");
    let a04 = msg("REG", "ADT^A04", "P");
    assert_eq!(
        decide(&adt, 0, "10.30.1.7", &[], &a04),
        "allow (rule \"adt-from-registration\")"
    );
    assert_eq!(
        decide(&adt, 0, "127.0.0.2", &[], &a04),
        "allow (rule \"adt-from-registration\")"
    );
    assert_eq!(
        decide(&adt, 0, "10.30.2.7", &[], &a04),
        "reject (rule \"adt-from-anyone-else\")"
    );
    assert_eq!(
        decide(&adt, 0, "10.30.1.7", &[], &msg("LIS", "ADT^A04", "P")),
        "reject (rule \"adt-from-anyone-else\")"
    );
    assert_eq!(
        decide(&adt, 0, "10.30.2.7", &[], &msg("LIS", "ORM^O01", "P")),
        "allow (no rule matched)"
    );

    let hub = load("fan-out-by-type.yaml");
    assert_eq!(
        hub.upstreams.keys().collect::<Vec<_>>(),
        ["orders", "results"]
    );
    let route = |m: &str| {
        let header = Header::parse(m.as_bytes()).unwrap();
        let facts = Facts {
            peer: "10.20.0.5".parse().unwrap(),
            identities: &[],
            header: &header,
        };
        match evaluate(&hub.routes[0].rules, &facts) {
            Decision::Route { upstream, .. } => {
                format!("{upstream} at {}", hub.upstreams[upstream].address)
            }
            other => other.to_string(),
        }
    };
    assert_eq!(
        route(&msg("LIS", "ORU^R01", "P")),
        "results at 127.0.0.1:2586"
    );
    assert_eq!(
        route(&msg("CPOE", "OML^O21", "P")),
        "orders at 127.0.0.1:2587"
    );
    assert_eq!(
        route(&msg("REG", "ADT^A08", "P")),
        "allow (rule \"adt-to-the-ehr\")"
    );
    assert_eq!(
        route(&msg("X", "SIU^S12", "P")),
        "reject (rule \"default\")"
    );
}
