//! Rule evaluation cost per message: the rule set of issue 5 (no test messages, lab results from
//! the lab only, default reject) on a typical ADT^A01 and ORU^R01 header, when the first rule
//! decides, when the last one does, and when none matches (the same set without its catch-all).
//! The header is parsed once outside the loop (`parse+evaluate` adds the MSH view's cost).
//!
//! Run: `cargo bench --bench rules -- --warm-up-time 1 --measurement-time 2`
#![allow(clippy::unwrap_used, clippy::panic)] // a harness: a failed step is a failed run

use std::hint::black_box;
use std::net::IpAddr;

use criterion::{criterion_group, criterion_main, Criterion};
use mllp_guard::config::Config;
use mllp_guard::firewall::rules::{evaluate, Decision, Facts, Rule};
use mllp_guard::wire::hl7::Header;

/// The issue's example, verbatim, on a minimal route.
const CONFIG: &str = r#"
routes:
  - name: lab
    listen: 127.0.0.1:2575
    allow: [any]
    upstream: { address: "127.0.0.1:2576" }
    rules:
      - name: no-test-messages-in-production
        match: { processing_id: [T, D] }
        action: reject
      - name: lab-results-from-the-lab-only
        match:
          source: [10.20.0.0/16]
          tls_identity: ["lab.example.org"]
          sending_application: [LIS]
          message_type: ["ORU^R01", "ORM^*"]
          version: ["2.3", "2.5*"]
        action: allow
      - name: default
        action: reject
"#;

const ADT: &[u8] = b"MSH|^~\\&|REG|MAIN_HOSP|EHR|MAIN_HOSP|20240102030405||ADT^A01^ADT_A01|ADT0001|P|2.5.1\rEVN|A01|20240102030405\rPID|1||MRN0001^^^SYNTH^MR||DOE^JANE||19800101|F\rPV1|1|I|W^389^1\r";
const ORU: &[u8] = b"MSH|^~\\&|LIS|LAB|EHR|MAIN_HOSP|20240102030405||ORU^R01^ORU_R01|ORU0001|P|2.5.1\rPID|1||MRN0001^^^SYNTH^MR||DOE^JANE||19800101|F\rOBR|1||LAB0001|2345-7^GLUCOSE^LN\rOBX|1|NM|2345-7^GLUCOSE^LN||95|mg/dL|70-99|N|||F\r";

fn with_processing_id(message: &[u8], id: &[u8]) -> Vec<u8> {
    let text = message.to_vec();
    let at = text
        .windows(3)
        .position(|w| w == b"|P|")
        .expect("processing id");
    [&text[..=at], id, &text[at + 2..]].concat()
}

fn rules() -> Vec<Rule> {
    let config = Config::parse(
        CONFIG,
        std::path::Path::new("bench.yaml"),
        std::path::Path::new("/"),
    )
    .expect("the example parses");
    config.routes[0].rules.clone()
}

/// (name, message, peer, identities, rules, the rule expected to decide)
type Case<'a> = (
    &'a str,
    &'a [u8],
    IpAddr,
    &'a [String],
    &'a [Rule],
    Option<&'a str>,
);

fn rule_evaluation(c: &mut Criterion) {
    let all = rules();
    let without_default = &all[..2];
    let lab_peer: IpAddr = "10.20.0.5".parse().unwrap();
    let other_peer: IpAddr = "10.99.0.5".parse().unwrap();
    let lab_cert = vec!["lab.example.org".to_string()];
    let no_cert: Vec<String> = Vec::new();
    let adt_test = with_processing_id(ADT, b"T");
    let oru_test = with_processing_id(ORU, b"T");

    let cases: [Case<'_>; 7] = [
        (
            "adt/first",
            &adt_test,
            other_peer,
            &no_cert,
            &all,
            Some("no-test-messages-in-production"),
        ),
        ("adt/last", ADT, other_peer, &no_cert, &all, Some("default")),
        (
            "adt/no-match",
            ADT,
            other_peer,
            &no_cert,
            without_default,
            None,
        ),
        (
            "oru/first",
            &oru_test,
            lab_peer,
            &lab_cert,
            &all,
            Some("no-test-messages-in-production"),
        ),
        (
            "oru/second-allow",
            ORU,
            lab_peer,
            &lab_cert,
            &all,
            Some("lab-results-from-the-lab-only"),
        ),
        ("oru/last", ORU, lab_peer, &no_cert, &all, Some("default")),
        (
            "oru/no-match",
            ORU,
            other_peer,
            &lab_cert,
            without_default,
            None,
        ),
    ];
    let mut group = c.benchmark_group("rules_evaluate");
    for (name, message, peer, identities, rules, expected) in cases {
        let header = Header::parse(message).expect("header");
        let facts = Facts {
            peer,
            identities,
            header: &header,
        };
        let decision: Decision<'_> = evaluate(rules, &facts);
        assert_eq!(decision.rule(), expected, "{name}");
        group.bench_function(name, |b| {
            b.iter(|| black_box(evaluate(black_box(rules), black_box(&facts))))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("rules_parse_and_evaluate");
    for (name, message, peer, identities) in [
        ("adt/last", ADT, other_peer, &no_cert),
        ("oru/second-allow", ORU, lab_peer, &lab_cert),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let header = Header::parse(black_box(message)).expect("header");
                let facts = Facts {
                    peer,
                    identities,
                    header: &header,
                };
                black_box(evaluate(&all, &facts).rule().map(str::len))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, rule_evaluation);
criterion_main!(benches);
