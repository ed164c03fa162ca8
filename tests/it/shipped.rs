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
    use mllp_guard::firewall::rules::{evaluate, Decision, Facts};
    use mllp_guard::wire::hl7::Header;

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
                format!("{upstream} at {}", hub.upstreams[upstream].role)
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

/// The firewall examples run for real: each is loaded with its listeners moved to free loopback
/// ports and its upstreams pointed at test receivers, then fed messages that each rule decides.
mod end_to_end {
    use std::net::SocketAddr;
    use std::path::Path;

    use mllp_guard::app::Guard;
    use mllp_guard::config::Config;
    use mllp_guard::wire::hl7::AckCode;

    use crate::harness::*;

    /// A message with this MSH-3, MSH-9 and MSH-11.
    fn msg(id: &str, app: &str, msg_type: &str, processing: &str) -> Vec<u8> {
        String::from_utf8(message(id, 300))
            .unwrap()
            .replacen("SEND_APP", app, 1)
            .replacen("ADT^A01^ADT_A01", msg_type, 1)
            .replacen("|P|2.5.1", &format!("|{processing}|2.5.1"), 1)
            .into_bytes()
    }

    /// Loads `rules/<file>` with every `listen:` on 127.0.0.1:0 and each upstream address
    /// replaced as given; relative paths keep resolving from `rules/`.
    async fn example(file: &str, addresses: &[(&str, SocketAddr)]) -> Guard {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
        let mut yaml = std::fs::read_to_string(dir.join(file)).unwrap();
        for line in yaml.clone().lines() {
            if let Some(listen) = line.trim().strip_prefix("listen: ") {
                let listen = listen.split_whitespace().next().unwrap();
                yaml = yaml.replacen(&format!("listen: {listen}"), "listen: 127.0.0.1:0", 1);
            }
        }
        for (from, to) in addresses {
            yaml = yaml.replace(&format!("address: {from}"), &format!("address: {to}"));
        }
        let config = Config::parse(&yaml, &dir.join(file), &dir).unwrap_or_else(|e| panic!("{e}"));
        Guard::start(config).await.unwrap()
    }

    async fn code_of(client: &mut Client, payload: &[u8]) -> (AckCode, String) {
        let (code, _, text) = ack_of(&client.send(payload).await);
        (code, text)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_test_in_production_rejects_test_messages_and_stray_acks() {
        let ehr = FakeUpstream::start(Behaviour::Ack).await;
        let orders = FakeUpstream::start(Behaviour::Ack).await;
        let guard = example(
            "no-test-in-production.yaml",
            &[
                ("127.0.0.1:2576", ehr.addr),
                ("127.0.0.1:2577", orders.addr),
            ],
        )
        .await;
        let mut c = Client::plain(guard.local_addr("adt-production").unwrap()).await;
        assert_eq!(
            code_of(&mut c, &msg("T1", "APP", "ADT^A01", "T")).await,
            (AckCode::AR, "rejected by rule no-test-messages".into())
        );
        assert_eq!(
            code_of(&mut c, &msg("A1", "APP", "ACK^A01", "P")).await,
            (AckCode::AR, "rejected by rule no-stray-acks".into())
        );
        assert_eq!(
            code_of(&mut c, &msg("P1", "APP", "ADT^A01", "P")).await.0,
            AckCode::AA
        );
        assert_eq!(ehr.received().len(), 1);
        guard.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn adt_is_accepted_only_from_the_registration_system() {
        let ehr = FakeUpstream::start(Behaviour::Ack).await;
        let guard = example(
            "adt-from-registration.yaml",
            &[("127.0.0.1:2576", ehr.addr)],
        )
        .await;
        let addr = guard.local_addr("ehr-inbound").unwrap();
        let mut registration = Client::plain_from(addr, "127.0.0.2".parse().unwrap())
            .await
            .unwrap();
        assert_eq!(
            code_of(&mut registration, &msg("R1", "REG", "ADT^A04", "P"))
                .await
                .0,
            AckCode::AA
        );
        let mut other = Client::plain(addr).await;
        assert_eq!(
            code_of(&mut other, &msg("O1", "REG", "ADT^A04", "P")).await,
            (AckCode::AR, "rejected by rule adt-from-anyone-else".into())
        );
        assert_eq!(
            code_of(&mut other, &msg("O2", "LIS", "ORU^R01", "P"))
                .await
                .0,
            AckCode::AA,
            "no rule matches: allowed"
        );
        assert_eq!(ehr.received().len(), 2);
        guard.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fan_out_sends_each_type_to_its_receiver() {
        let (ehr, results, orders) = (
            FakeUpstream::start(Behaviour::Ack).await,
            FakeUpstream::start(Behaviour::Ack).await,
            FakeUpstream::start(Behaviour::Ack).await,
        );
        let guard = example(
            "fan-out-by-type.yaml",
            &[
                ("127.0.0.1:2576", ehr.addr),
                ("127.0.0.1:2586", results.addr),
                ("127.0.0.1:2587", orders.addr),
            ],
        )
        .await;
        let mut c = Client::plain(guard.local_addr("hub").unwrap()).await;
        assert_eq!(
            code_of(&mut c, &msg("ORU1", "LIS", "ORU^R01", "P")).await.0,
            AckCode::AA
        );
        assert_eq!(
            code_of(&mut c, &msg("ORM1", "CPOE", "ORM^O01", "P"))
                .await
                .0,
            AckCode::AA
        );
        assert_eq!(
            code_of(&mut c, &msg("ADT1", "REG", "ADT^A08", "P")).await.0,
            AckCode::AA
        );
        assert_eq!(
            code_of(&mut c, &msg("SIU1", "SCHED", "SIU^S12", "P")).await,
            (AckCode::AR, "rejected by rule default".into())
        );
        let ids = |u: &FakeUpstream| u.received().iter().map(|p| id_of(p)).collect::<Vec<_>>();
        assert_eq!(
            (ids(&results), ids(&orders), ids(&ehr)),
            (
                vec!["ORU1".to_string()],
                vec!["ORM1".to_string()],
                vec!["ADT1".to_string()]
            )
        );
        guard.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_lab_feed_takes_results_from_the_lab_certificate_only() {
        let receiver = FakeUpstream::start(Behaviour::Ack).await;
        let guard = example("tls-lab-feed.yaml", &[("127.0.0.1:2576", receiver.addr)]).await;
        let addr = guard.local_addr("lab-feed").unwrap();
        let certs = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/certs");
        let tls = |stem: &str| {
            mllp_guard::tls::client_config(
                &certs.join("ca.pem"),
                Some(&certs.join(format!("{stem}.pem"))),
                Some(&certs.join(format!("{stem}.key"))),
            )
            .unwrap()
        };
        let mut lab = Client::tls(addr, tls("lab")).await.unwrap();
        assert_eq!(
            code_of(&mut lab, &msg("LAB1", "LIS", "ORU^R01", "P"))
                .await
                .0,
            AckCode::AA
        );
        assert_eq!(
            code_of(&mut lab, &msg("LAB2", "LIS", "ORU^R01", "T")).await,
            (AckCode::AR, "rejected by rule no-test-messages".into())
        );
        assert_eq!(
            code_of(&mut lab, &msg("LAB3", "LIS", "ADT^A01", "P")).await,
            (AckCode::AR, "rejected by rule default".into())
        );
        let mut someone_else = Client::tls(addr, tls("guard-client")).await.unwrap();
        assert_eq!(
            code_of(&mut someone_else, &msg("NOTLAB", "LIS", "ORU^R01", "P")).await,
            (AckCode::AR, "rejected by rule default".into())
        );
        assert_eq!(receiver.received().len(), 1);
        guard.stop().await;
    }
}
