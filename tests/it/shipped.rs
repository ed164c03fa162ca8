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
            "plain-to-plain.yaml",
            "plain-to-tls.yaml",
            "quickstart.yaml",
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
