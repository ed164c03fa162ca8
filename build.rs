//! Stamps the build for `mllp-guard --version`: the git commit (when built from a checkout),
//! the compiler, and the profile (`debug`, `release`, or `dist` for what deploy/release.sh ships).

use std::process::Command;

fn main() {
    let git = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|rev| !rev.is_empty())
        .unwrap_or_else(|| "unknown".to_string());
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .is_some_and(|out| !out.stdout.is_empty());
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_string());
    let compiler = Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .unwrap_or_else(|| "rustc unknown".to_string());
    let profile = profile_dir()
        .unwrap_or_else(|| std::env::var("PROFILE").unwrap_or_else(|_| "unknown".to_string()));
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    println!(
        "cargo:rustc-env=MLLP_GUARD_BUILD={version} (git {git}{}, {compiler}, {profile})",
        if dirty { "-dirty" } else { "" }
    );
    println!("cargo:rerun-if-changed=build.rs");
    for file in git_files_that_move() {
        println!("cargo:rerun-if-changed={file}");
    }
}

/// The name of the profile being built, as its output directory is named (`debug` for the dev
/// profile, `release`, `dist`): cargo's `PROFILE` says only `debug` or `release`, even for a
/// custom profile. `OUT_DIR` is `<target>/[<triple>/]<profile>/build/<package>-<hash>/out`.
fn profile_dir() -> Option<String> {
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR")?);
    let dir = out.ancestors().nth(3)?.file_name()?.to_str()?.to_string();
    Some(dir)
}

/// The files a commit, checkout or staged edit rewrites: HEAD and the index in this checkout's
/// git directory (in a worktree, its own), and the branch HEAD names in the shared one. Only
/// files that exist: a missing path would rerun this script on every build.
fn git_files_that_move() -> Vec<String> {
    let ask = |arg: &str| {
        Command::new("git")
            .args(["rev-parse", arg])
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
            .filter(|path| !path.is_empty())
    };
    let (Some(git_dir), Some(common_dir)) = (ask("--git-dir"), ask("--git-common-dir")) else {
        return Vec::new();
    };
    let mut files = vec![format!("{git_dir}/HEAD"), format!("{git_dir}/index")];
    if let Ok(head) = std::fs::read_to_string(format!("{git_dir}/HEAD")) {
        if let Some(branch) = head.trim().strip_prefix("ref: ") {
            files.push(format!("{common_dir}/{branch}"));
        }
    }
    files.push(format!("{common_dir}/packed-refs"));
    files.retain(|file| std::path::Path::new(file).is_file());
    files
}
