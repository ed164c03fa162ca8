use super::*;

fn corpus(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn p(s: &str) -> Pattern {
    Pattern::parse(s).unwrap()
}

fn pats(list: &[&str]) -> Option<Vec<Pattern>> {
    Some(list.iter().map(|s| p(s)).collect())
}

fn mt(list: &[&str]) -> Option<Vec<MessageTypePattern>> {
    Some(
        list.iter()
            .map(|s| MessageTypePattern::parse(s).unwrap())
            .collect(),
    )
}

/// Whether `matcher` holds for `message` from `peer` with `identities`.
fn holds(matcher: &RuleMatch, message: &[u8], peer: &str, identities: &[&str]) -> bool {
    let header = Header::parse(message).expect("header parses");
    let identities: Vec<String> = identities.iter().map(|s| s.to_string()).collect();
    matcher.matches(&Facts {
        peer: ip(peer),
        identities: &identities,
        header: &header,
    })
}

const ORU: &[u8] =
    b"MSH|^~\\&|LIS^lab.local^DNS|LAB^1.2.3^ISO|EHR|HOSP|20240102030405||ORU^R01^ORU_R01|M1|P^T|2.5.1^USA\rPID|1\r";

#[test]
fn exact_patterns_ignore_ascii_case_and_are_whole() {
    let lis = p("LIS");
    assert!(lis.is_exact());
    assert!(lis.matches(b"LIS"));
    assert!(lis.matches(b"lis") && lis.matches(b"Lis"));
    assert!(!lis.matches(b"LIS2"));
    assert!(!lis.matches(b"XLIS"));
    assert!(!lis.matches(b""));
    assert!(p("").matches(b""));
    assert!(!p("").matches(b"A"));
}

#[test]
fn a_star_stands_for_any_run_of_bytes_including_none() {
    let v25 = p("2.5*");
    assert!(!v25.is_exact());
    for (value, expected) in [
        ("2.5", true),
        ("2.5.1", true),
        ("2.51", true),
        ("2.4", false),
        ("12.5", false),
    ] {
        assert_eq!(v25.matches(value.as_bytes()), expected, "2.5* vs {value}");
    }
    let any = p("*");
    assert!(any.matches(b""));
    assert!(any.matches(b"\xff anything"));
    let cases = [
        ("*LAB", "CENTRALLAB", true),
        ("*LAB", "LAB", true),
        ("*LAB", "LABX", false),
        ("A*B*C", "ABC", true),
        ("A*B*C", "AxxBxxC", true),
        ("A*B*C", "AxxCxxB", false),
        ("A*B*C", "ABCBC", true),
        ("A*BC", "ABC", true),
        ("AB*BC", "ABC", false),
        ("a**b", "ab", true),
        ("**", "", true),
        ("*x*", "yyxyy", true),
        ("*x*", "yyy", false),
    ];
    for (pattern, value, expected) in cases {
        assert_eq!(
            p(pattern).matches(value.as_bytes()),
            expected,
            "{pattern} vs {value}"
        );
        assert_eq!(
            glob_oracle(pattern.as_bytes(), value.as_bytes()),
            expected,
            "oracle {pattern} vs {value}"
        );
    }
}

#[test]
fn identity_wildcards_stand_for_exactly_one_label() {
    let wild = Pattern::parse_identity("*.example.org").unwrap();
    assert!(wild.matches(b"lab.example.org"));
    assert!(!wild.matches(b"example.org"));
    assert!(!wild.matches(b".example.org"));
    assert!(!wild.matches(b"a.lab.example.org"));
    assert!(!wild.matches(b"labexample.org"));
    assert!(!wild.matches(b"lab.example.org.evil"));
    // Identities arrive normalised (tls::peer_identities): DNS names lower case without a
    // trailing dot, URIs as `uri:...`. Patterns are normalised the same way.
    let exact = Pattern::parse_identity("lab.example.org").unwrap();
    assert!(exact.matches(b"lab.example.org"));
    for written in ["LAB.example.org", "lab.example.org."] {
        assert!(Pattern::parse_identity(written)
            .unwrap()
            .matches(b"lab.example.org"));
    }
    assert!(
        !exact.matches(b"uri:lab.example.org"),
        "a DNS pattern never matches a URI SAN"
    );
    assert!(!wild.matches(b"uri:lab.example.org"));
    let any = Pattern::parse_identity("*").unwrap();
    assert!(any.matches(b"whatever"));
    let uri = Pattern::parse_identity("uri:spiffe://example.org/lab").unwrap();
    assert!(uri.matches(b"uri:spiffe://example.org/lab"));
    assert!(
        !uri.matches(b"uri:spiffe://example.org/LAB"),
        "URIs compare as written"
    );
}

#[test]
fn identity_patterns_refuse_a_star_anywhere_but_the_first_label() {
    for bad in [
        "lab*.example.org",
        "*lab.example.org",
        "lab.*.org",
        "*.",
        "*..org",
        "*.*.org",
        "uri:spiffe://x/*",
    ] {
        assert_eq!(
            Pattern::parse_identity(bad).unwrap_err(),
            format!("\"{bad}\": in a TLS identity `*` may only stand for the whole first label (\"*.example.org\") or for any identity (\"*\")"),
            "{bad}"
        );
    }
    assert_eq!(
        Pattern::parse_identity("").unwrap_err(),
        "an empty identity matches no certificate; write e.g. lab.example.org or *.example.org"
    );
}

#[test]
fn control_characters_are_refused_in_every_pattern() {
    assert_eq!(
        Pattern::parse("A\rB").unwrap_err(),
        "\"A\\rB\" contains a control character; header values never hold one"
    );
    assert!(Pattern::parse_identity("a\u{0}b").is_err());
    assert!(MessageTypePattern::parse("ADT^A\t01").is_err());
}

#[test]
fn message_type_patterns_match_code_and_trigger() {
    let oru = MessageTypePattern::parse("ORU^R01").unwrap();
    assert!(oru.matches_field(b"ORU^R01^ORU_R01", b'^'));
    assert!(oru.matches_field(b"ORU^R01", b'^'));
    assert!(!oru.matches_field(b"ORU^R30", b'^'));
    assert!(!oru.matches_field(b"ORU", b'^'));
    assert!(!oru.matches_field(b"ORUX^R01", b'^'));
    let orm = MessageTypePattern::parse("ORM^*").unwrap();
    assert!(orm.matches_field(b"ORM^O01", b'^'));
    assert!(orm.matches_field(b"ORM", b'^'));
    assert!(!orm.matches_field(b"ORU^R01", b'^'));
    let adt = MessageTypePattern::parse("ADT").unwrap();
    assert!(adt.matches_field(b"ADT^A01^ADT_A01", b'^'));
    assert!(adt.matches_field(b"ADT", b'^'));
    assert!(!adt.matches_field(b"ADTX^A01", b'^'));
    let structure = MessageTypePattern::parse("ADT^*^ADT_A01").unwrap();
    assert!(structure.matches_field(b"ADT^A04^ADT_A01", b'^'));
    assert!(!structure.matches_field(b"ADT^A04^ADT_A05", b'^'));
    assert!(!structure.matches_field(b"ADT^A04", b'^'));
    let any = MessageTypePattern::parse("*").unwrap();
    assert!(any.matches_field(b"", b'^'));
    assert_eq!(oru.as_str(), "ORU^R01");
    assert_eq!(format!("{oru:?}"), "\"ORU^R01\"");
}

#[test]
fn message_type_patterns_with_empty_or_too_many_components_are_refused() {
    for bad in ["", "^R01", "ORU^", "ORU^^X"] {
        assert!(MessageTypePattern::parse(bad).is_err(), "{bad:?}");
    }
    assert_eq!(
        MessageTypePattern::parse("ORU^").unwrap_err(),
        "\"ORU^\" has an empty component; write TYPE^TRIGGER with `*` for any, e.g. ORU^R01, ORM^* or ADT"
    );
    assert_eq!(
        MessageTypePattern::parse("A^B^C^D").unwrap_err(),
        "\"A^B^C^D\" has more than three components; write TYPE^TRIGGER (or TYPE^TRIGGER^STRUCTURE), e.g. ORU^R01"
    );
}

#[test]
fn message_type_splits_on_the_messages_own_separators() {
    // Corpus 10: '#' as the field separator, MSH-9 ADT^A04^ADT_A01.
    let hash = corpus("10_hash_field_separator.hl7");
    let adt_a04 = RuleMatch {
        message_type: mt(&["ADT^A04"]),
        sending_application: pats(&["SYNTH_SEND"]),
        receiving_facility: pats(&["SYNTH_DEST"]),
        processing_id: pats(&["P"]),
        version: pats(&["2.5*"]),
        ..RuleMatch::default()
    };
    assert!(holds(&adt_a04, &hash, "127.0.0.1", &[]));
    // Corpus 11: encoding characters ":@$%", MSH-9 ADT:A08:ADT_A01.
    let custom = corpus("11_custom_encoding_chars.hl7");
    let a08 = RuleMatch {
        message_type: mt(&["ADT^A08"]),
        ..RuleMatch::default()
    };
    assert!(holds(&a08, &custom, "127.0.0.1", &[]));
    assert!(!holds(&adt_a04, &custom, "127.0.0.1", &[]));
    let structure = RuleMatch {
        message_type: mt(&["ADT^*^ADT_A01"]),
        ..RuleMatch::default()
    };
    assert!(holds(&structure, &custom, "127.0.0.1", &[]));
    // Written with '^', the pattern does not match a literal "ADT^A08" code in that message.
    let literal = b"MSH|:@$%|A|B|C|D|||ADT^A08|X|P|2.5";
    assert!(!holds(&a08, literal, "127.0.0.1", &[]));
}

#[test]
fn msh_3_to_6_version_and_processing_id_match_their_first_component() {
    let cases: [(RuleMatch, RuleMatch); 6] = [
        (
            RuleMatch {
                sending_application: pats(&["LIS"]),
                ..RuleMatch::default()
            },
            RuleMatch {
                sending_application: pats(&["LIS^lab.local^DNS"]),
                ..RuleMatch::default()
            },
        ),
        (
            RuleMatch {
                sending_facility: pats(&["LAB"]),
                ..RuleMatch::default()
            },
            RuleMatch {
                sending_facility: pats(&["1.2.3"]),
                ..RuleMatch::default()
            },
        ),
        (
            RuleMatch {
                receiving_application: pats(&["EHR"]),
                ..RuleMatch::default()
            },
            RuleMatch {
                receiving_application: pats(&["HOSP"]),
                ..RuleMatch::default()
            },
        ),
        (
            RuleMatch {
                receiving_facility: pats(&["HOSP"]),
                ..RuleMatch::default()
            },
            RuleMatch {
                receiving_facility: pats(&["EHR"]),
                ..RuleMatch::default()
            },
        ),
        (
            RuleMatch {
                version: pats(&["2.5.1"]),
                ..RuleMatch::default()
            },
            RuleMatch {
                version: pats(&["2.5.1^USA"]),
                ..RuleMatch::default()
            },
        ),
        (
            RuleMatch {
                processing_id: pats(&["P"]),
                ..RuleMatch::default()
            },
            RuleMatch {
                processing_id: pats(&["T"]),
                ..RuleMatch::default()
            },
        ),
    ];
    for (yes, no) in cases {
        assert!(holds(&yes, ORU, "10.0.0.1", &[]), "{yes:?}");
        assert!(!holds(&no, ORU, "10.0.0.1", &[]), "{no:?}");
    }
}

#[test]
fn processing_id_t_and_d_are_caught_and_p_is_not() {
    let no_test = RuleMatch {
        processing_id: pats(&["T", "D"]),
        ..RuleMatch::default()
    };
    let message = |id: &str| format!("MSH|^~\\&|A|B|C|D|||ADT^A01|X|{id}|2.5");
    assert!(holds(&no_test, message("T").as_bytes(), "10.0.0.1", &[]));
    assert!(holds(&no_test, message("D^A").as_bytes(), "10.0.0.1", &[]));
    assert!(!holds(&no_test, message("P").as_bytes(), "10.0.0.1", &[]));
    assert!(!holds(&no_test, message("").as_bytes(), "10.0.0.1", &[]));
    // A header without MSH-11 has an empty processing id.
    assert!(!holds(&no_test, b"MSH|^~\\&|A", "10.0.0.1", &[]));
}

#[test]
fn source_matches_the_peer_address_and_ipv4_mapped_peers() {
    let lab = RuleMatch {
        source: Some(vec![
            parse_network("10.20.0.0/16").unwrap(),
            parse_network("2001:db8::5").unwrap(),
        ]),
        ..RuleMatch::default()
    };
    assert!(holds(&lab, ORU, "10.20.3.4", &[]));
    assert!(holds(&lab, ORU, "::ffff:10.20.3.4", &[]));
    assert!(!holds(&lab, ORU, "10.21.0.1", &[]));
    assert!(holds(&lab, ORU, "2001:db8::5", &[]));
    assert!(!holds(&lab, ORU, "2001:db8::6", &[]));
    let mapped = RuleMatch {
        source: Some(vec![parse_network("::ffff:192.0.2.0/120").unwrap()]),
        ..RuleMatch::default()
    };
    assert!(holds(&mapped, ORU, "192.0.2.9", &[]));
    assert!(holds(&mapped, ORU, "::ffff:192.0.2.9", &[]));
}

#[test]
fn networks_parse_like_the_allowlist_and_say_what_is_wrong() {
    assert_eq!(
        parse_network("10.1.2.3/16").unwrap().to_string(),
        "10.1.0.0/16"
    );
    assert_eq!(
        parse_network("192.0.2.7").unwrap().to_string(),
        "192.0.2.7/32"
    );
    assert_eq!(
        parse_network("::ffff:10.0.0.0/104").unwrap().to_string(),
        "10.0.0.0/8"
    );
    assert_eq!(parse_network("::1").unwrap().to_string(), "::1/128");
    assert_eq!(
        parse_network("10.0.0.0/33").unwrap_err(),
        "\"10.0.0.0/33\" is not an IP address or CIDR (write e.g. 10.20.0.0/16, 192.0.2.7 or \"2001:db8::/32\")"
    );
}

#[test]
fn tls_identity_matches_any_identity_and_never_a_peer_without_certificate() {
    let lab = RuleMatch {
        tls_identity: Some(vec![
            Pattern::parse_identity("lab.example.org").unwrap(),
            Pattern::parse_identity("*.lab.example.net").unwrap(),
        ]),
        ..RuleMatch::default()
    };
    assert!(holds(&lab, ORU, "10.0.0.1", &["lab.example.org"]));
    assert!(holds(
        &lab,
        ORU,
        "10.0.0.1",
        &["uri:spiffe://x/y", "lab.example.org"]
    ));
    assert!(holds(&lab, ORU, "10.0.0.1", &["node1.lab.example.net"]));
    assert!(!holds(&lab, ORU, "10.0.0.1", &["ehr.example.org"]));
    assert!(!holds(&lab, ORU, "10.0.0.1", &[]));
    let any_cert = RuleMatch {
        tls_identity: Some(vec![Pattern::parse_identity("*").unwrap()]),
        ..RuleMatch::default()
    };
    assert!(holds(&any_cert, ORU, "10.0.0.1", &["x"]));
    assert!(!holds(&any_cert, ORU, "10.0.0.1", &[]));
}

#[test]
fn every_present_field_must_hold_and_any_entry_of_a_field_may() {
    let both = RuleMatch {
        sending_application: pats(&["OTHER", "LIS"]),
        message_type: mt(&["ADT", "ORU^R01"]),
        ..RuleMatch::default()
    };
    assert!(holds(&both, ORU, "10.0.0.1", &[]));
    let one_fails = RuleMatch {
        version: pats(&["2.3"]),
        ..both.clone()
    };
    assert!(!holds(&one_fails, ORU, "10.0.0.1", &[]));
    assert!(holds(&RuleMatch::default(), ORU, "10.0.0.1", &[]));
    // An empty list matches nothing (the config refuses it for that reason).
    let empty = RuleMatch {
        version: Some(vec![]),
        ..RuleMatch::default()
    };
    assert!(!holds(&empty, ORU, "10.0.0.1", &[]));
}

/// The issue's example rule set.
fn issue_rules() -> Vec<Rule> {
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
                source: Some(vec![parse_network("10.20.0.0/16").unwrap()]),
                tls_identity: Some(vec![Pattern::parse_identity("lab.example.org").unwrap()]),
                sending_application: pats(&["LIS"]),
                message_type: mt(&["ORU^R01", "ORM^*"]),
                version: pats(&["2.3", "2.5*"]),
                ..RuleMatch::default()
            },
            action: Action::Allow,
        },
        Rule {
            name: "default".into(),
            matcher: RuleMatch::default(),
            action: Action::Reject,
        },
    ]
}

fn decide<'r>(rules: &'r [Rule], message: &[u8], peer: &str, identities: &[&str]) -> Decision<'r> {
    let header = Header::parse(message).expect("header parses");
    let identities: Vec<String> = identities.iter().map(|s| s.to_string()).collect();
    evaluate(
        rules,
        &Facts {
            peer: ip(peer),
            identities: &identities,
            header: &header,
        },
    )
}

#[test]
fn the_first_matching_rule_decides() {
    let rules = issue_rules();
    assert_eq!(
        decide(&rules, ORU, "10.20.0.9", &["lab.example.org"]),
        Decision::Allow {
            rule: Some("lab-results-from-the-lab-only")
        }
    );
    let test_oru = b"MSH|^~\\&|LIS|LAB|EHR|HOSP|||ORU^R01|M1|T|2.5.1";
    assert_eq!(
        decide(&rules, test_oru, "10.20.0.9", &["lab.example.org"]),
        Decision::Reject {
            rule: "no-test-messages-in-production"
        }
    );
    // Wrong certificate, wrong address, no certificate: the catch-all rejects.
    for (peer, ids) in [
        ("10.20.0.9", &["ehr.example.org"][..]),
        ("10.99.0.9", &["lab.example.org"][..]),
        ("10.20.0.9", &[][..]),
    ] {
        assert_eq!(
            decide(&rules, ORU, peer, ids),
            Decision::Reject { rule: "default" },
            "{peer} {ids:?}"
        );
    }
}

#[test]
fn no_rules_or_no_matching_rule_allows() {
    assert_eq!(
        decide(&[], ORU, "10.0.0.1", &[]),
        Decision::Allow { rule: None }
    );
    let rules = &issue_rules()[..2];
    assert_eq!(
        decide(rules, ORU, "10.99.0.1", &[]),
        Decision::Allow { rule: None }
    );
}

#[test]
fn drop_and_route_carry_their_rule_and_upstream() {
    let rules = vec![
        Rule {
            name: "adt-to-registry".into(),
            matcher: RuleMatch {
                message_type: mt(&["ADT"]),
                ..RuleMatch::default()
            },
            action: Action::Route("registry".into()),
        },
        Rule {
            name: "hang-up".into(),
            matcher: RuleMatch::default(),
            action: Action::Drop,
        },
    ];
    let adt = corpus("01_adt_a01.hl7");
    let decision = decide(&rules, &adt, "10.0.0.1", &[]);
    assert_eq!(
        decision,
        Decision::Route {
            rule: "adt-to-registry",
            upstream: "registry"
        }
    );
    assert_eq!(decision.rule(), Some("adt-to-registry"));
    assert_eq!(
        decision.to_string(),
        "route to \"registry\" (rule \"adt-to-registry\")"
    );
    let drop = decide(&rules, ORU, "10.0.0.1", &[]);
    assert_eq!(drop, Decision::Drop { rule: "hang-up" });
    assert_eq!(drop.to_string(), "drop (rule \"hang-up\")");
    assert_eq!(
        Decision::Allow { rule: None }.to_string(),
        "allow (no rule matched)"
    );
    assert_eq!(Decision::Allow { rule: None }.rule(), None);
}

#[test]
fn a_batch_header_has_no_message_type_processing_id_or_version() {
    let batch = corpus("16_batch_file.hl7");
    let typed = RuleMatch {
        message_type: mt(&["ADT"]),
        ..RuleMatch::default()
    };
    assert!(!holds(&typed, &batch, "10.0.0.1", &[]));
    let any_type = RuleMatch {
        message_type: mt(&["*"]),
        ..RuleMatch::default()
    };
    assert!(holds(&any_type, &batch, "10.0.0.1", &[]));
    let sender = RuleMatch {
        sending_application: pats(&["SYNTH_SEND"]),
        ..RuleMatch::default()
    };
    assert!(holds(&sender, &batch, "10.0.0.1", &[]));
}

#[test]
fn debug_and_display_show_patterns_as_written() {
    assert_eq!(format!("{:?}", p("2.5*")), "\"2.5*\"");
    assert_eq!(p("2.5*").to_string(), "2.5*");
    assert_eq!(p("2.5*").as_str(), "2.5*");
}

#[test]
fn fuzz_entry_holds_on_every_corpus_message_and_prefix() {
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            fuzz_rules(&std::fs::read(&path).unwrap());
        }
    }
    let adt = corpus("01_adt_a01.hl7");
    for end in 0..=adt.len().min(400) {
        fuzz_rules(&adt[..end]);
    }
    for input in [
        &b"*.example.org\nlab.example.org"[..],
        b"A*B*C\nAxBxC",
        b"**\n",
        b"*\n\xff",
        b"ORU^*\nORU^R01",
        b"MSH|^~\\&|LIS|LAB|EHR|HOSP||lab.example.org~x|ORU^R01|M|P|2.5\n",
        b"MSH|^~\\&|A|B|C|D||*.example.org|ADT^A01|M|T|2.5",
    ] {
        fuzz_rules(input);
    }
}

#[test]
fn rules_see_values_unescaped_case_folded_and_in_every_repetition() {
    let rule = |m: RuleMatch| {
        vec![Rule {
            name: "deny".into(),
            matcher: m,
            action: Action::Reject,
        }]
    };
    let lab = rule(RuleMatch {
        sending_application: Some(vec![p("LAB")]),
        ..RuleMatch::default()
    });
    for msh3 in ["LAB", "lab", "L\\X41\\B", "OTHER~LAB", "LAB^1.2.3^ISO"] {
        let msg = format!("MSH|^~\\&|{msh3}|F|R|F|2024||ORU^R01|1|P|2.5\r");
        let h = Header::parse(msg.as_bytes()).unwrap();
        let facts = Facts {
            peer: "127.0.0.1".parse().unwrap(),
            identities: &[],
            header: &h,
        };
        assert!(
            matches!(evaluate(&lab, &facts), Decision::Reject { .. }),
            "{msh3}"
        );
    }
    let oru = rule(RuleMatch {
        message_type: Some(vec![MessageTypePattern::parse("ORU^R01").unwrap()]),
        ..RuleMatch::default()
    });
    let h = Header::parse(b"MSH|^~\\&|A|F|R|F|2024||oru^r01|1|P|2.5\r").unwrap();
    let facts = Facts {
        peer: "127.0.0.1".parse().unwrap(),
        identities: &[],
        header: &h,
    };
    assert!(matches!(evaluate(&oru, &facts), Decision::Reject { .. }));
}
