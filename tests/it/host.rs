//! What the test machine provides beyond Rust: the Python the tests run (the virtualenv that
//! `tests/python/venv.sh` makes in `target/pyenv`, else `python3` on PATH) and the optional tools
//! some checks need. A test that needs an optional tool is `#[ignore = "needs TOOL (how to install
//! it)"]`, so a normal run lists it as ignored with the reason instead of passing without
//! checking; `cargo test --test it -- --ignored` runs those tests (`.ci/run` does, after installing
//! the tools), and there a missing tool fails the test with the same hint.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The test virtualenv (`tests/python/venv.sh`).
fn venv_bin(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/pyenv/bin")
        .join(name)
}

/// `name` from the test virtualenv when it is there (hadolint, kubernetes-validate, python3),
/// else `name` as found on PATH.
pub fn tool(name: &str) -> PathBuf {
    let in_venv = venv_bin(name);
    if in_venv.exists() {
        in_venv
    } else {
        PathBuf::from(name)
    }
}

/// The Python interpreter of the tests: the virtualenv's, with python-hl7 installed.
pub fn python3() -> PathBuf {
    tool("python3")
}

/// Fails the (ignored, explicitly requested) test when `name` cannot run `probe`, saying how to
/// install it: a check that was asked for never passes without running.
pub fn require(name: &str, probe: &[&str], install: &str) -> PathBuf {
    let path = tool(name);
    let runs = Command::new(&path)
        .args(probe)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        runs,
        "this test needs {name}, which does not run here: {install}"
    );
    path
}
