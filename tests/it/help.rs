//! `--help` of every subcommand, read from the real binary as a newcomer reads it: every option
//! and argument says what it does (with its unit and default where it has them), and no path of
//! the machine that built the binary shows up as a default.

use std::process::Command;

use crate::harness::BIN;

/// Every command line the binary has, as the words before `--help`.
const COMMANDS: &[&[&str]] = &[
    &[],
    &["run"],
    &["check"],
    &["send"],
    &["sink"],
    &["queue"],
    &["queue", "list"],
    &["queue", "show"],
    &["queue", "replay"],
    &["queue", "purge"],
    &["status"],
    &["disconnect"],
    &["health"],
    &["demo"],
    &["man"],
];

fn help(words: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(words)
        .arg("--help")
        .env("COLUMNS", "100")
        .output()
        .unwrap();
    assert!(out.status.success(), "{words:?} --help failed");
    String::from_utf8(out.stdout).unwrap()
}

/// The entries of the `Options:` and `Arguments:` sections: (the usage, e.g. `--listen <IP:PORT>`,
/// its description, continuation lines joined).
fn entries(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut in_section = false;
    for line in text.lines() {
        if !line.starts_with(' ') {
            in_section = line == "Options:" || line == "Arguments:";
            continue;
        }
        if !in_section {
            continue;
        }
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let starts_entry = indent <= 6
            && (trimmed.starts_with('-') || trimmed.starts_with('<') || trimmed.starts_with('['));
        if starts_entry {
            let (usage, description) = match trimmed.split_once("  ") {
                Some((usage, description)) => (usage.trim(), description.trim()),
                None => (trimmed, ""),
            };
            out.push((usage.to_string(), description.to_string()));
        } else if let Some((_, description)) = out.last_mut() {
            if !description.is_empty() {
                description.push(' ');
            }
            description.push_str(trimmed);
        }
    }
    out
}

#[test]
fn every_option_of_every_subcommand_says_what_it_does_and_no_build_path_shows() {
    let build_dir = env!("CARGO_MANIFEST_DIR");
    for words in COMMANDS {
        let text = help(words);
        assert!(
            !text.contains(build_dir),
            "`mllp-guard {} --help` shows a path of the build machine:\n{text}",
            words.join(" ")
        );
        let entries = entries(&text);
        assert!(
            entries.iter().any(|(usage, _)| usage.contains("--help")),
            "no options read from:\n{text}"
        );
        for (usage, description) in &entries {
            assert!(
                description.len() >= 10,
                "`mllp-guard {} --help`: `{usage}` has no description:\n{text}",
                words.join(" ")
            );
        }
    }
}

#[test]
fn options_with_a_unit_or_a_default_name_them() {
    let expectations: &[(&[&str], &str, &[&str])] = &[
        (&["send"], "--timeout", &["duration", "[default: 30s]"]),
        (
            &["sink"],
            "--max-message-bytes",
            &["bytes", "[default: 64MiB]"],
        ),
        (&["sink"], "--listen", &["IP:PORT", "port 0"]),
        (&["sink"], "--tls-cert", &["PEM", "Without it: plaintext"]),
        (&["sink"], "--save-dir", &["Default: nothing saved"]),
        (
            &["send"],
            "--server-name",
            &["Default: the host part of --to"],
        ),
        (&["run"], "--config", &["YAML"]),
        (&["check"], "--config", &["YAML"]),
        (&["demo"], "--config", &["[default: rules/quickstart.yaml]"]),
        (&["demo"], "--messages", &["[default: rules/messages]"]),
        (&["queue", "show"], "--limit", &["[default: 100]"]),
    ];
    for (words, option, needles) in expectations {
        let text = help(words);
        let entry = entries(&text)
            .into_iter()
            .find(|(usage, _)| usage.split([' ', ',']).any(|w| w == *option))
            .unwrap_or_else(|| panic!("{words:?} has no {option}:\n{text}"));
        for needle in *needles {
            assert!(
                entry.1.contains(needle),
                "`mllp-guard {} --help`: {option} does not say {needle:?}: {}",
                words.join(" "),
                entry.1
            );
        }
    }
}

/// The demo's defaults are relative to where it runs: from elsewhere it says where to run it
/// instead of reading files of the build machine.
#[test]
fn demo_outside_the_repository_says_where_to_run_it() {
    let elsewhere = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .arg("demo")
        .current_dir(elsewhere.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("rules/quickstart.yaml not found: run the demo from the repository's root")
            && stderr.contains("--config"),
        "{stderr}"
    );
}
