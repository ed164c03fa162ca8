//! The shipped Prometheus alert rules (`deploy/prometheus/alerts.yaml`): every alert has a
//! `promtool test rules` case that fires it (and one that does not), promtool passes them
//! (ignored, with the reason, where promtool is not installed; `.ci/run` installs it). That the
//! rules, like the Grafana dashboard, name only metrics a running guard really exports is checked
//! against a live guard's `/metrics` in `deploy.rs`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::host;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn yaml(path: &str) -> Value {
    let text = std::fs::read_to_string(repo(path)).unwrap();
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn list(v: &Value) -> &[Value] {
    v.as_array().map_or(&[], |a| a.as_slice())
}

/// Every rule of alerts.yaml: (alert name, expression).
pub fn alert_rules() -> Vec<(String, String)> {
    let rules = yaml("deploy/prometheus/alerts.yaml");
    list(&rules["groups"])
        .iter()
        .flat_map(|g| list(&g["rules"]))
        .map(|r| {
            (
                r["alert"].as_str().expect("an alert name").to_string(),
                r["expr"].as_str().expect("an expr").to_string(),
            )
        })
        .collect()
}

#[test]
fn every_alert_has_a_unit_test_that_fires_it_and_one_that_does_not() {
    let alerts = alert_rules();
    assert!(alerts.len() >= 12, "{alerts:?}");
    let tests = yaml("deploy/prometheus/alerts.test.yaml");
    assert_eq!(list(&tests["rule_files"]), [Value::from("alerts.yaml")]);
    let cases: Vec<&Value> = list(&tests["tests"])
        .iter()
        .flat_map(|t| list(&t["alert_rule_test"]))
        .collect();
    let names: BTreeSet<&str> = alerts.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(names.len(), alerts.len(), "an alert name twice");
    for name in names {
        let of: Vec<&&Value> = cases.iter().filter(|c| c["alertname"] == name).collect();
        assert!(
            of.iter().any(|c| !list(&c["exp_alerts"]).is_empty()),
            "no test fires {name}"
        );
        assert!(
            of.iter().any(|c| list(&c["exp_alerts"]).is_empty()),
            "no test shows {name} quiet"
        );
    }
    // Every rule names its severity and says what to do.
    let rules = yaml("deploy/prometheus/alerts.yaml");
    for rule in list(&rules["groups"])
        .iter()
        .flat_map(|g| list(&g["rules"]))
    {
        let severity = rule["labels"]["severity"].as_str().unwrap_or("");
        assert!(
            ["critical", "warning", "info"].contains(&severity),
            "{}: severity {severity:?}",
            rule["alert"]
        );
        for key in ["summary", "description"] {
            assert!(
                rule["annotations"][key]
                    .as_str()
                    .is_some_and(|s| s.len() > 20),
                "{}: no {key}",
                rule["alert"]
            );
        }
    }
}

#[test]
#[ignore = "needs promtool: apt-get install prometheus"]
fn the_alert_rules_pass_promtool_check_and_their_unit_tests() {
    let promtool = host::require("promtool", &["--version"], "apt-get install prometheus");
    for args in [
        ["check", "rules", "deploy/prometheus/alerts.yaml"],
        ["test", "rules", "deploy/prometheus/alerts.test.yaml"],
    ] {
        let out = Command::new(&promtool)
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
