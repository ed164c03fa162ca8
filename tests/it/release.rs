//! What a hospital procures (issue 26) and what a package installs (issue 20): the license and
//! notices, the manual pages, the Debian package, the release artefacts of deploy/release.sh.
//!
//! Without tools: LICENSE is Apache-2.0, the notices are there, the shipped man pages are what
//! the binary generates, the packaged unit is the shipped one with the package's binary path,
//! the package's default config loads, `--version` and `health` say what they should.
//! With cargo-deny, cargo-about, cargo-deb (ignored otherwise; `.ci/run` installs them): the
//! license, ban and source policy passes offline and its CC0 decision is live, advisories are
//! checked from a local database, the notices are what cargo-about generates now, and
//! `cargo deb` packages the files, conffile and maintainer scripts the contract names.
//! With `MLLP_GUARD_DIST` (the OUTDIR of deploy/release.sh, which `.ci/run` sets): the
//! artefacts' names, sums and signature, the tarball, the `.deb` (`dpkg-deb -c`/`-I`,
//! `systemd-analyze verify` of its unit), the binary (stripped, at most 20 MB, no build path,
//! its dependency list), the SBOM against that list, and the static musl binary relaying
//! messages.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::host;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs `cmd`: (exit code, stdout, stderr).
fn outcome(cmd: &mut Command) -> (Option<i32>, String, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `cmd`: (success, stdout, stderr).
fn run(cmd: &mut Command) -> (bool, String, String) {
    let (code, out, err) = outcome(cmd);
    (code == Some(0), out, err)
}

const VERSION: &str = env!("CARGO_PKG_VERSION");

// ---------------------------------------------------------------------------------------------
// Without tools

#[test]
fn the_license_is_the_apache_2_text_and_the_notices_cover_the_linked_licenses() {
    let license = read(&repo("LICENSE"));
    assert_eq!(license.trim_start().lines().next(), Some("Apache License"));
    for part in [
        "Version 2.0, January 2004",
        "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION",
        "END OF TERMS AND CONDITIONS",
    ] {
        assert!(license.contains(part), "LICENSE lacks {part:?}");
    }
    assert!(read(&repo("Cargo.toml")).contains("\nlicense = \"Apache-2.0\"\n"));
    let notices = read(&repo("THIRD-PARTY-NOTICES"));
    // aws-lc alone needs ISC, Apache-2.0, MIT and BSD-3-Clause; notify is CC0-1.0.
    for id in [
        "(Apache-2.0)",
        "(MIT)",
        "(ISC)",
        "(BSD-3-Clause)",
        "(Unicode-3.0)",
        "(CC0-1.0)",
    ] {
        assert!(notices.contains(id), "THIRD-PARTY-NOTICES has no {id} text");
    }
    for krate in ["aws-lc-sys", "notify", "tokio", "rustls", "async-nats"] {
        assert!(
            notices.contains(&format!("\n  {krate} ")),
            "THIRD-PARTY-NOTICES does not name {krate}"
        );
    }
    // Build scripts' crates are not distributed, nor is ring (in Cargo.lock, never linked).
    for absent in ["cc", "ring", "criterion"] {
        assert!(
            !notices.contains(&format!("\n  {absent} ")),
            "THIRD-PARTY-NOTICES names {absent}, which is not in the binary"
        );
    }
    assert!(!notices.contains("&quot;"), "HTML escapes in a text file");
}

#[test]
fn version_names_the_package_version_the_commit_and_the_profile() {
    let (ok, out, _) = run(Command::new(BIN).arg("--version"));
    assert!(ok);
    let line = out.trim();
    assert!(
        line.starts_with(&format!("mllp-guard {VERSION} (git ")),
        "{line}"
    );
    assert!(line.contains("rustc "), "{line}");
    // The test binary is the dev profile, which builds into target/debug.
    assert!(line.ends_with(", debug)"), "{line}");
}

#[test]
fn the_shipped_man_pages_are_what_the_binary_generates_from_its_commands() {
    let dir = TestDir::new();
    let out = dir.path("man");
    let (ok, _, err) = run(Command::new(BIN).args(["man", "--out"]).arg(&out));
    assert!(ok, "{err}");
    let names = |d: &Path| -> BTreeSet<String> {
        std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    let generated = names(&out);
    assert_eq!(
        generated,
        names(&repo("deploy/man")),
        "deploy/man is stale: cargo run -- man --out deploy/man"
    );
    for name in &generated {
        assert_eq!(
            read(&out.join(name)),
            read(&repo("deploy/man").join(name)),
            "deploy/man/{name} is stale: cargo run -- man --out deploy/man"
        );
    }
    // The main page: on stdout without --out, naming the version and every command.
    let (ok, page, _) = run(Command::new(BIN).arg("man"));
    assert!(ok);
    assert_eq!(page, read(&repo("deploy/man/mllp-guard.1")));
    assert!(
        page.contains(&format!("\"mllp-guard {VERSION}\"")),
        "{page}"
    );
    for command in [
        "run",
        "check",
        "send",
        "sink",
        "status",
        "disconnect",
        "health",
        "queue",
        "demo",
        "man",
    ] {
        assert!(
            generated.contains(&format!("mllp-guard-{command}.1")),
            "no page for {command}"
        );
    }
    // No commit in a page: it would change at every commit.
    assert!(!page.contains("(git "), "{page}");
}

/// The `[Unit]` line onwards: the unit without its header comment.
fn unit_body(text: &str) -> &str {
    &text[text.find("[Unit]").expect("a [Unit] section")..]
}

#[test]
fn the_packaged_unit_is_the_shipped_unit_with_the_packages_binary_path() {
    let shipped = read(&repo("deploy/systemd/mllp-guard.service"));
    let packaged = read(&repo("deploy/debian/mllp-guard.service"));
    assert_eq!(
        unit_body(&packaged),
        unit_body(&shipped).replace("/usr/local/bin/mllp-guard", "/usr/bin/mllp-guard"),
        "deploy/debian/mllp-guard.service drifted from deploy/systemd/mllp-guard.service"
    );
}

#[test]
fn the_packages_default_config_loads_and_listens_only_on_loopback() {
    let path = repo("deploy/debian/guard.yaml");
    let config = mllp_guard::config::Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert!(!config.routes.is_empty());
    for route in &config.routes {
        match &route.sender {
            mllp_guard::config::SenderRole::Listen(addr) => {
                assert!(addr.ip().is_loopback(), "route {} on {addr}", route.name)
            }
            other => panic!("route {}: {other}", route.name),
        }
    }
    let (ok, out, err) = run(Command::new(BIN).args(["check", "--config"]).arg(&path));
    assert!(ok, "{out}{err}");
    // Every setting is explained: most lines are comments.
    let text = read(&path);
    let comments = text.lines().filter(|l| l.contains('#')).count();
    assert!(comments * 2 > text.lines().count(), "a commented config");
}

#[test]
fn the_packages_assets_exist_and_name_the_contracts_paths() {
    let manifest = read(&repo("Cargo.toml"));
    let section = &manifest[manifest
        .find("[package.metadata.deb]")
        .expect("cargo-deb metadata")..];
    let section = &section[..section[1..].find("\n[").map_or(section.len(), |i| i + 1)];
    let mut dests = Vec::new();
    for line in section
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("[\""))
    {
        let fields: Vec<&str> = line.split('"').collect();
        let (source, dest) = (fields[1], fields[3]);
        if !source.starts_with("target/release/") {
            let pattern = repo(source);
            let found = if source.contains('*') {
                let dir = pattern.parent().unwrap();
                std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some())
            } else {
                pattern.exists()
            };
            assert!(found, "deb asset {source} does not exist");
        }
        dests.push(dest.to_string());
    }
    for dest in [
        "usr/bin/",
        "usr/lib/systemd/system/",
        "usr/lib/sysusers.d/mllp-guard.conf",
        "etc/mllp-guard/guard.yaml",
        "usr/share/mllp-guard/prometheus/alerts.yaml",
        "usr/share/mllp-guard/grafana/mllp-guard.json",
        "usr/share/man/man1/",
        "usr/share/doc/mllp-guard/",
    ] {
        assert!(dests.iter().any(|d| d == dest), "no asset goes to {dest}");
    }
    assert!(section.contains("conf-files = [\"/etc/mllp-guard/guard.yaml\"]"));
    assert!(section.contains("maintainer-scripts = \"deploy/debian/\""));
    // The maintainer scripts create the user and enable or start nothing.
    let postinst = read(&repo("deploy/debian/postinst"));
    assert!(postinst.contains("systemd-sysusers mllp-guard.conf"));
    for script in ["postinst", "prerm", "postrm"] {
        let text = read(&repo(&format!("deploy/debian/{script}")));
        for word in ["systemctl enable", "systemctl start", "systemctl restart"] {
            let code: String = text
                .lines()
                .filter(|l| !l.trim_start().starts_with('#'))
                .collect::<Vec<_>>()
                .join("\n");
            assert!(!code.contains(word), "{script} runs {word}");
        }
    }
}

/// A guard with an admin endpoint (and a token when `protect_reads`), its admin address.
fn guard_with_admin(dir: &TestDir, protect_reads: bool) -> (Proc, SocketAddr) {
    let admin = free_addr();
    let token = dir.path("admin.token");
    std::fs::write(&token, "s3cret-token\n").unwrap();
    let extra = if protect_reads {
        format!("  token_file: {}\n  protect_reads: true\n", token.display())
    } else {
        String::new()
    };
    let config = dir.path("guard.yaml");
    std::fs::write(
        &config,
        format!(
            "admin:\n  listen: {admin}\n{extra}routes:\n  - name: health\n    listen: {}\n    allow: [127.0.0.1]\n    upstream:\n      address: {}\n",
            free_addr(),
            free_addr()
        ),
    )
    .unwrap();
    let guard = spawn_quiet(Path::new(BIN), &config);
    wait_listening(admin);
    (guard, admin)
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// `mllp-guard health` with these arguments: (exit code, stdout, stderr).
fn health(args: &[&str]) -> (Option<i32>, String, String) {
    outcome(
        Command::new(BIN)
            .arg("health")
            .args(args)
            .env_remove("MLLP_GUARD_ADMIN"),
    )
}

#[test]
fn health_exits_0_only_on_a_200_from_healthz_and_says_why_otherwise() {
    let dir = TestDir::new();
    let (_guard, admin) = guard_with_admin(&dir, false);
    let url = format!("http://{admin}");
    let (code, out, err) = health(&["--admin", &url]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(out.trim(), "healthy: {\"live\":true}");
    // Reached by a name the guard does not list in allowed_hosts: Host: localhost still passes.
    let (code, _, err) = health(&["--admin", &format!("http://localhost:{}", admin.port())]);
    assert_eq!(code, Some(0), "{err}");
    // The variable a container sets, when --admin is not given.
    let out = Command::new(BIN)
        .arg("health")
        .env("MLLP_GUARD_ADMIN", &url)
        .output()
        .unwrap();
    assert!(out.status.success());
    // Nothing there: exit 1, naming the address.
    let closed = free_addr();
    let (code, _, err) = health(&["--admin", &format!("http://{closed}")]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains(&format!("cannot connect to the admin endpoint at {closed}")),
        "{err}"
    );
    // A URL that is not one: exit 1 with the fix.
    let (code, _, err) = health(&["--admin", "https://127.0.0.1:9102"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("plain http only"), "{err}");
}

#[test]
fn health_needs_the_token_when_reads_are_protected() {
    let dir = TestDir::new();
    let (_guard, admin) = guard_with_admin(&dir, true);
    let url = format!("http://{admin}");
    let (code, _, err) = health(&["--admin", &url]);
    assert_eq!(code, Some(1));
    assert!(err.contains("GET /healthz answered HTTP 401"), "{err}");
    let token = dir.path("admin.token");
    let (code, out, err) = health(&["--admin", &url, "--token-file", token.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}{err}");
}

// ---------------------------------------------------------------------------------------------
// With cargo-deny, cargo-about, cargo-deb

fn cargo_tool(tool: &str) {
    host::require(
        "cargo",
        &[tool, "--version"],
        &format!("cargo install --locked cargo-{tool}"),
    );
}

/// `cargo deny --offline [--config CONFIG] check WHICH...` on this package: (passed, output).
fn cargo_deny(config: Option<&Path>, which: &[&str]) -> (bool, String) {
    let mut cmd = Command::new("cargo");
    cmd.args(["deny", "--offline", "--manifest-path"])
        .arg(repo("Cargo.toml"));
    if let Some(config) = config {
        cmd.arg("--config").arg(config);
    }
    let (ok, out, err) = run(cmd.arg("check").args(which));
    (ok, format!("{out}{err}"))
}

#[test]
#[ignore = "needs cargo-deny: cargo install --locked cargo-deny"]
fn the_license_ban_and_source_policy_passes_and_cc0_is_a_decision_for_notify_alone() {
    cargo_tool("deny");
    let (ok, out) = cargo_deny(None, &["licenses", "bans", "sources"]);
    assert!(
        ok,
        "cargo deny --offline check licenses bans sources:\n{out}"
    );
    assert!(
        !out.contains("warning[duplicate]"),
        "a new duplicate crate:\n{out}"
    );
    // Without the exception for notify, its CC0-1.0 license is refused.
    let dir = TestDir::new();
    let policy = read(&repo("deny.toml"));
    let start = policy.find("[[licenses.exceptions]]").unwrap();
    let end = start + policy[start..].find("[bans]").unwrap();
    let without = dir.path("deny.toml");
    std::fs::write(&without, format!("{}{}", &policy[..start], &policy[end..])).unwrap();
    let (ok, out) = cargo_deny(Some(&without), &["licenses"]);
    assert!(!ok, "notify's CC0-1.0 passed without its exception:\n{out}");
    assert!(out.contains("CC0-1.0") && out.contains("notify"), "{out}");
}

#[test]
#[ignore = "needs cargo-deny: cargo install --locked cargo-deny"]
fn advisories_are_checked_offline_from_a_local_copy_of_the_database() {
    cargo_tool("deny");
    // A database of our own in db-path, as SECURITY.md tells a user to place a copy of RustSec's.
    let dir = TestDir::new();
    let db = dir.path("db");
    let policy = read(&repo("deny.toml")).replacen(
        "[advisories]\n",
        &format!("[advisories]\ndb-path = \"{}\"\n", db.display()),
        1,
    );
    let config = dir.path("deny.toml");
    std::fs::write(&config, policy).unwrap();
    // Without a copy, it says where it looked (and fetches nothing).
    let (ok, out) = cargo_deny(Some(&config), &["advisories"]);
    assert!(!ok);
    let place = out
        .split("cannot change to '")
        .nth(1)
        .and_then(|rest| rest.split('\'').next())
        .unwrap_or_else(|| panic!("cargo deny did not say where the database goes:\n{out}"));
    assert!(place.starts_with(db.to_str().unwrap()), "{place}");
    let advisory = Path::new(place).join("crates/ppp/RUSTSEC-2099-0001.md");
    std::fs::create_dir_all(advisory.parent().unwrap()).unwrap();
    std::fs::write(
        &advisory,
        "```toml\n[advisory]\nid = \"RUSTSEC-2099-0001\"\npackage = \"ppp\"\ndate = \"2099-01-01\"\n\
         url = \"https://example.invalid/RUSTSEC-2099-0001\"\n\n[versions]\npatched = [\">= 99.0.0\"]\n```\n\n\
         # A synthetic advisory of the test\n\nIt exists only in this test's database.\n",
    )
    .unwrap();
    for args in [
        &["init", "-q"][..],
        &["add", "-A"],
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-qm",
            "db",
        ],
    ] {
        let (ok, _, err) = run(Command::new("git").arg("-C").arg(place).args(args));
        assert!(ok, "git {args:?}: {err}");
    }
    let (ok, out) = cargo_deny(Some(&config), &["advisories"]);
    assert!(!ok, "the advisory against ppp was not reported:\n{out}");
    assert!(
        out.contains("RUSTSEC-2099-0001") && out.contains("ppp"),
        "{out}"
    );
}

#[test]
#[ignore = "needs cargo-about: cargo install --locked cargo-about"]
fn the_notices_are_what_cargo_about_generates_from_the_committed_template() {
    cargo_tool("about");
    let dir = TestDir::new();
    let out = dir.path("NOTICES");
    // `cargo metadata --offline` (cargo-about) needs every platform's crates in the cache.
    let (ok, _, err) = run(Command::new("cargo")
        .current_dir(repo(""))
        .args(["fetch", "--locked", "--quiet"]));
    assert!(ok, "cargo fetch:\n{err}");
    let (ok, _, err) = run(Command::new("cargo")
        .current_dir(repo(""))
        .args(["about", "generate", "--locked", "--offline", "--fail", "-c"])
        .arg(repo("about.toml"))
        .arg(repo("about.hbs"))
        .arg("-o")
        .arg(&out));
    assert!(ok, "cargo about generate:\n{err}");
    assert!(
        read(&out) == read(&repo("THIRD-PARTY-NOTICES")),
        "THIRD-PARTY-NOTICES is stale: bash deploy/notices.sh"
    );
}

/// Checks a `.deb`: the files and modes (`dpkg-deb -c`), the control fields, conffiles and
/// maintainer scripts (`dpkg-deb -I`), and `systemd-analyze verify` on its unit with its own
/// binary. Returns the packaged binary's bytes.
fn check_deb(deb: &Path) -> Vec<u8> {
    let dpkg = host::require("dpkg-deb", &["--version"], "apt-get install dpkg");
    let (ok, listing, err) = run(Command::new(&dpkg).arg("-c").arg(deb));
    assert!(ok, "{err}");
    for (mode, path) in [
        ("-rwxr-xr-x", "./usr/bin/mllp-guard"),
        ("-rw-r--r--", "./usr/lib/systemd/system/mllp-guard.service"),
        ("-rw-r--r--", "./usr/lib/sysusers.d/mllp-guard.conf"),
        ("-rw-r--r--", "./etc/mllp-guard/guard.yaml"),
        (
            "-rw-r--r--",
            "./usr/share/mllp-guard/prometheus/alerts.yaml",
        ),
        (
            "-rw-r--r--",
            "./usr/share/mllp-guard/grafana/mllp-guard.json",
        ),
        ("-rw-r--r--", "./usr/share/man/man1/mllp-guard.1.gz"),
        ("-rw-r--r--", "./usr/share/man/man1/mllp-guard-run.1.gz"),
        ("-rw-r--r--", "./usr/share/doc/mllp-guard/LICENSE"),
        (
            "-rw-r--r--",
            "./usr/share/doc/mllp-guard/THIRD-PARTY-NOTICES",
        ),
        ("-rw-r--r--", "./usr/share/doc/mllp-guard/copyright"),
    ] {
        assert!(
            listing
                .lines()
                .any(|l| l.starts_with(mode) && l.ends_with(&format!(" {path}"))),
            "{} lacks {mode} {path}:\n{listing}",
            deb.display()
        );
    }
    let field = |name: &str| {
        let (ok, out, err) = run(Command::new(&dpkg).arg("-f").arg(deb).arg(name));
        assert!(ok, "{err}");
        out.trim().to_string()
    };
    assert_eq!(field("Package"), "mllp-guard");
    assert_eq!(field("Version"), format!("{VERSION}-1"));
    assert_eq!(field("Architecture"), "amd64");
    let (ok, conffiles, err) = run(Command::new(&dpkg).arg("-I").arg(deb).arg("conffiles"));
    assert!(ok, "{err}");
    assert_eq!(conffiles.trim(), "/etc/mllp-guard/guard.yaml");
    for script in ["postinst", "prerm", "postrm"] {
        let (ok, text, err) = run(Command::new(&dpkg).arg("-I").arg(deb).arg(script));
        assert!(ok, "{script}: {err}");
        assert_eq!(text, read(&repo(&format!("deploy/debian/{script}"))));
    }
    // The packaged unit, verified by systemd with the packaged binary in place.
    let analyze = host::require("systemd-analyze", &["--version"], "apt-get install systemd");
    let root = TestDir::new();
    let (ok, _, err) = run(Command::new(&dpkg)
        .arg("-x")
        .arg(deb)
        .arg(root.path("root")));
    assert!(ok, "{err}");
    let binary = root.path("root/usr/bin/mllp-guard");
    let unit = read(&root.path("root/usr/lib/systemd/system/mllp-guard.service"));
    assert_eq!(unit, read(&repo("deploy/debian/mllp-guard.service")));
    let copy = root.path("mllp-guard.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/bin/mllp-guard", binary.to_str().unwrap()),
    )
    .unwrap();
    let (ok, out, err) = run(Command::new(&analyze).arg("verify").arg(&copy));
    let ours: Vec<&str> = err
        .lines()
        .chain(out.lines())
        .filter(|l| l.contains("mllp-guard"))
        .collect();
    assert!(ok && ours.is_empty(), "systemd-analyze verify:\n{out}{err}");
    let config = root.path("root/etc/mllp-guard/guard.yaml");
    assert_eq!(read(&config), read(&repo("deploy/debian/guard.yaml")));
    std::fs::read(&binary).unwrap()
}

#[test]
#[ignore = "needs cargo-deb: cargo install --locked cargo-deb"]
fn cargo_deb_packages_the_binary_unit_user_config_rules_dashboard_and_man_pages() {
    cargo_tool("deb");
    // `cargo deb --no-build`, as deploy/release.sh runs it, on a target directory holding the
    // test binary in the dist profile's place: the package's metadata without a release build.
    let dir = TestDir::new();
    let target = dir.path("target");
    let place = target.join("x86_64-unknown-linux-gnu/dist");
    std::fs::create_dir_all(&place).unwrap();
    // Stripped (as release.sh ships it) and compressed fast: the dev binary is 240 MB.
    let given = place.join("mllp-guard");
    let objcopy = host::require("objcopy", &["--version"], "apt-get install binutils");
    let (ok, _, err) = run(Command::new(objcopy)
        .arg("--strip-all")
        .arg(BIN)
        .arg(&given));
    assert!(ok, "{err}");
    let (ok, out, err) = run(Command::new("cargo")
        .current_dir(repo(""))
        .env("CARGO_TARGET_DIR", &target)
        .args(["deb", "--no-build", "--no-strip", "--no-dbgsym", "--fast"])
        .args([
            "--profile",
            "dist",
            "--target",
            "x86_64-unknown-linux-gnu",
            "--output",
        ])
        .arg(dir.path("out/")));
    assert!(ok, "cargo deb:\n{out}{err}");
    let deb = dir.path(&format!("out/mllp-guard_{VERSION}-1_amd64.deb"));
    let packaged = check_deb(&deb);
    assert!(
        packaged == std::fs::read(&given).unwrap(),
        "the .deb's binary is not the one given"
    );
}

// ---------------------------------------------------------------------------------------------
// The artefacts of deploy/release.sh (MLLP_GUARD_DIST)

const NEEDS_DIST: &str =
    "set MLLP_GUARD_DIST to the OUTDIR of `deploy/release.sh OUTDIR` (and of its --target x86_64-unknown-linux-musl run); .ci/run does";

fn dist() -> PathBuf {
    let dir = std::env::var_os("MLLP_GUARD_DIST")
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("this test needs the release artefacts: {NEEDS_DIST}"));
    assert!(
        dir.is_dir(),
        "MLLP_GUARD_DIST={}: no such directory",
        dir.display()
    );
    dir
}

/// The sections of an ELF64 little-endian file: (name, file offset, size).
fn elf_sections(bytes: &[u8]) -> Vec<(String, usize, usize)> {
    assert_eq!(&bytes[..4], b"\x7fELF", "not an ELF file");
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap()) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap()) as usize;
    let (shoff, shentsize, shnum, shstrndx) =
        (u64_at(0x28), u16_at(0x3A), u16_at(0x3C), u16_at(0x3E));
    let header = |i: usize| shoff + i * shentsize;
    let strtab = u64_at(header(shstrndx) + 0x18);
    (0..shnum)
        .map(|i| {
            let h = header(i);
            let name_at = strtab + u32_at(h);
            let end = name_at + bytes[name_at..].iter().position(|&b| b == 0).unwrap();
            (
                String::from_utf8_lossy(&bytes[name_at..end]).into_owned(),
                u64_at(h + 0x18),
                u64_at(h + 0x20),
            )
        })
        .collect()
}

/// Extracts `name.tar.gz` from the dist directory into a temporary directory; the top folder.
fn untar(dist: &Path, name: &str, into: &TestDir) -> PathBuf {
    let tarball = dist.join(format!("{name}.tar.gz"));
    assert!(tarball.is_file(), "{} is missing", tarball.display());
    let (ok, _, err) = run(Command::new("tar")
        .arg("-xzf")
        .arg(&tarball)
        .arg("-C")
        .arg(into.path("")));
    assert!(ok, "{err}");
    into.path(name)
}

/// Checks a shipped binary: at most 20 MB, stripped and linked to its debug file, carrying its
/// dependency list, no path of the build machine, `--version` naming the dist profile. Returns
/// the crates it says it links (name, version), from `.dep-v0`.
fn check_binary(binary: &Path, debug_file: &Path) -> BTreeSet<(String, String)> {
    let bytes = std::fs::read(binary).unwrap();
    assert!(bytes.len() <= 20_000_000, "{} bytes", bytes.len());
    let sections = elf_sections(&bytes);
    let names: BTreeSet<&str> = sections.iter().map(|(n, _, _)| n.as_str()).collect();
    assert!(
        // .debug_gdb_scripts is no debug info: it names Rust's gdb printers.
        !names
            .iter()
            .any(|n| n.starts_with(".debug_") && *n != ".debug_gdb_scripts"),
        "not stripped: {names:?}"
    );
    assert!(!names.contains(".symtab"), "symbols not stripped");
    assert!(names.contains(".gnu_debuglink"), "{names:?}");
    let debug = std::fs::read(debug_file).unwrap();
    assert!(
        elf_sections(&debug)
            .iter()
            .any(|(n, _, _)| n == ".debug_line"),
        "{} holds no line tables",
        debug_file.display()
    );
    for path in [
        env!("CARGO_MANIFEST_DIR").to_string(),
        format!(
            "{}/.cargo/registry",
            std::env::var("HOME").unwrap_or_default()
        ),
        "/root/.cargo".to_string(),
        "/.rustup/toolchains".to_string(),
    ] {
        assert!(
            !bytes.windows(path.len()).any(|w| w == path.as_bytes()),
            "{} contains the build path {path}",
            binary.display()
        );
    }
    let (ok, version, _) = run(Command::new(binary).arg("--version"));
    assert!(ok);
    assert!(
        version.starts_with(&format!("mllp-guard {VERSION} (git "))
            && version.trim_end().ends_with(", dist)")
            && !version.contains("-dirty"),
        "{version}"
    );
    // The dependency list cargo auditable embedded: zlib-compressed JSON (python's zlib reads it).
    let (_, at, size) = sections
        .iter()
        .find(|(n, _, _)| n == ".dep-v0")
        .expect("a .dep-v0 section (cargo auditable)")
        .clone();
    let tmp = TestDir::new();
    let raw = tmp.path("dep-v0");
    std::fs::write(&raw, &bytes[at..at + size]).unwrap();
    let (ok, json, err) = run(Command::new(host::python3()).arg("-c").arg(
        "import json, sys, zlib; p = json.loads(zlib.decompress(open(sys.argv[1], 'rb').read()))['packages']; \
         print(json.dumps([[x['name'], x['version']] for x in p if x.get('kind', 'runtime') == 'runtime' and not x.get('root')]))",
    ).arg(&raw));
    assert!(ok, "{err}");
    let linked: Vec<(String, String)> = serde_json::from_str(&json).unwrap();
    linked.into_iter().collect()
}

#[test]
#[ignore = "needs MLLP_GUARD_DIST: the OUTDIR of deploy/release.sh (.ci/run sets it)"]
fn the_release_artefacts_are_named_summed_and_signed() {
    let dist = dist();
    for name in [
        format!("mllp-guard-{VERSION}-x86_64-linux-gnu.tar.gz"),
        format!("mllp-guard-{VERSION}-x86_64-linux-gnu.debug"),
        format!("mllp-guard_{VERSION}-1_amd64.deb"),
        format!("mllp-guard-{VERSION}.cdx.json"),
        "SHA256SUMS".to_string(),
    ] {
        assert!(
            dist.join(&name).is_file(),
            "{name} is missing from {}",
            dist.display()
        );
    }
    let sums = read(&dist.join("SHA256SUMS"));
    let listed: BTreeSet<&str> = sums.lines().filter_map(|l| l.split("  ").nth(1)).collect();
    for entry in std::fs::read_dir(&dist).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if !name.starts_with("SHA256SUMS") {
            assert!(
                listed.contains(name.as_str()),
                "SHA256SUMS does not cover {name}"
            );
        }
    }
    let (ok, out, err) =
        run(Command::new("sha256sum")
            .current_dir(&dist)
            .args(["--strict", "-c", "SHA256SUMS"]));
    assert!(ok, "sha256sum -c:\n{out}{err}");
    // The signature, with the public key .ci/run made (MLLP_GUARD_DIST_PUBKEY).
    let Some(public) = std::env::var_os("MLLP_GUARD_DIST_PUBKEY") else {
        assert!(
            !dist.join("SHA256SUMS.minisig").exists(),
            "SHA256SUMS.minisig is there: set MLLP_GUARD_DIST_PUBKEY to check it"
        );
        return;
    };
    let minisign = host::require("minisign", &["-v"], "apt-get install minisign");
    let verify = |sums: &Path| {
        run(Command::new(&minisign)
            .arg("-V")
            .arg("-p")
            .arg(&public)
            .arg("-m")
            .arg(sums)
            .arg("-x")
            .arg(dist.join("SHA256SUMS.minisig")))
    };
    let (ok, out, err) = verify(&dist.join("SHA256SUMS"));
    assert!(ok, "minisign -V:\n{out}{err}");
    assert!(
        out.contains(&format!("mllp-guard {VERSION} (commit ")),
        "{out}"
    );
    // One changed byte in the sums: the signature no longer verifies.
    let dir = TestDir::new();
    let tampered = dir.path("SHA256SUMS");
    std::fs::write(&tampered, sums.replacen('0', "1", 1)).unwrap();
    let (ok, _, _) = verify(&tampered);
    assert!(!ok, "a tampered SHA256SUMS verified");
}

#[test]
#[ignore = "needs MLLP_GUARD_DIST: the OUTDIR of deploy/release.sh (.ci/run sets it)"]
fn the_tarball_and_the_deb_ship_one_stripped_binary_with_its_licenses_and_the_sbom_lists_exactly_its_crates(
) {
    let dist = dist();
    let tmp = TestDir::new();
    let name = format!("mllp-guard-{VERSION}-x86_64-linux-gnu");
    let top = untar(&dist, &name, &tmp);
    for file in [
        "mllp-guard",
        "LICENSE",
        "THIRD-PARTY-NOTICES",
        "README.md",
        "CHANGELOG.md",
        "SECURITY.md",
        "guard.yaml.example",
        "systemd/mllp-guard.service",
        "systemd/mllp-guard.sysusers",
        "man/mllp-guard.1",
    ] {
        assert!(top.join(file).is_file(), "{name}.tar.gz lacks {file}");
    }
    assert_eq!(read(&top.join("LICENSE")), read(&repo("LICENSE")));
    let binary = top.join("mllp-guard");
    let linked = check_binary(&binary, &dist.join(format!("{name}.debug")));
    // The .deb ships the very same binary.
    let packaged = check_deb(&dist.join(format!("mllp-guard_{VERSION}-1_amd64.deb")));
    assert!(
        packaged == std::fs::read(&binary).unwrap(),
        "the .deb and the tarball differ"
    );
    // The SBOM: exactly the linked crates, no ring, no build-only crate, the binary's hash.
    let sbom_text = read(&dist.join(format!("mllp-guard-{VERSION}.cdx.json")));
    assert!(
        !sbom_text.contains(env!("CARGO_MANIFEST_DIR")),
        "the SBOM names the build directory"
    );
    let sbom: serde_json::Value = serde_json::from_str(&sbom_text).unwrap();
    assert_eq!(sbom["bomFormat"], "CycloneDX");
    let components: BTreeSet<(String, String)> = sbom["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["version"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    // The binary's own list (from cargo metadata) also names optional crates no feature builds
    // (ring) and proc macros' crates: the SBOM is that list less what cargo does not build
    // into the binary.
    let (ok, tree, err) = run(Command::new("cargo")
        .current_dir(repo(""))
        .args([
            "tree",
            "--locked",
            "-e",
            "normal,no-proc-macro",
            "--target",
            "x86_64-unknown-linux-gnu",
        ])
        .args(["--prefix", "none", "-f", "{p}"]));
    assert!(ok, "{err}");
    let built: BTreeSet<(String, String)> = tree
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let name = words.next()?;
            let version = words.next()?.strip_prefix('v')?;
            Some((name.to_string(), version.to_string()))
        })
        .collect();
    let expected: BTreeSet<(String, String)> = linked.intersection(&built).cloned().collect();
    assert_eq!(
        components, expected,
        "the SBOM and the crates in the binary differ"
    );
    for absent in ["ring", "syn", "serde_derive", "cc", "proc-macro2"] {
        assert!(
            !components.iter().any(|(n, _)| n == absent),
            "the SBOM lists {absent}, which the binary does not contain"
        );
    }
    for present in ["aws-lc-sys", "rustls", "tokio", "async-nats"] {
        assert!(components.iter().any(|(n, _)| n == present), "no {present}");
    }
    let root = &sbom["metadata"]["component"];
    assert_eq!(root["name"], "mllp-guard");
    assert_eq!(root["version"], VERSION);
    let digest =
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &std::fs::read(&binary).unwrap());
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(root["hashes"][0]["content"], hex.as_str());
    println!("SBOM: {} components", components.len());
}

#[test]
#[ignore = "needs MLLP_GUARD_DIST: the OUTDIR of deploy/release.sh (.ci/run sets it)"]
fn the_static_musl_binary_relays_messages() {
    let dist = dist();
    let tmp = TestDir::new();
    let name = format!("mllp-guard-{VERSION}-x86_64-linux-musl");
    let top = untar(&dist, &name, &tmp);
    let binary = top.join("mllp-guard");
    let linked = check_binary(&binary, &dist.join(format!("{name}.debug")));
    assert!(
        linked.iter().any(|(n, _)| n == "mimalloc"),
        "musl's allocator is mimalloc"
    );
    let sbom = read(&dist.join(format!("{name}.cdx.json")));
    assert!(sbom.contains("\"mimalloc\""));
    // Static: no interpreter, no shared library.
    let readelf = host::require("readelf", &["--version"], "apt-get install binutils");
    let (ok, out, err) = run(Command::new(&readelf).args(["-l", "-d"]).arg(&binary));
    assert!(ok, "{err}");
    assert!(
        !out.contains("INTERP") && !out.contains("(NEEDED)"),
        "not static:\n{out}"
    );
    // It relays: sink <- musl guard <- client, every ack an AA for its own message.
    let (_sink, sink_addr) = crate::cli::start_sink(&["--listen", "127.0.0.1:0"]);
    let listen = free_addr();
    let admin = free_addr();
    let config = tmp.path("guard.yaml");
    std::fs::write(
        &config,
        format!(
            "admin:\n  listen: {admin}\nroutes:\n  - name: musl\n    listen: {listen}\n    allow: [127.0.0.1]\n    upstream:\n      address: {sink_addr}\n"
        ),
    )
    .unwrap();
    let _guard = spawn_quiet(&binary, &config);
    wait_listening(listen);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut client = Client::plain(listen).await;
        for i in 0..50 {
            let id = format!("MUSL{i:04}");
            let ack = client.send(&message(&id, 2048)).await;
            let (code, acked, _) = ack_of(&ack);
            assert_eq!(code, mllp_guard::wire::hl7::AckCode::AA, "message {i}");
            assert_eq!(acked, id);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (ok, _, err) = run(Command::new(&binary)
            .args(["health", "--admin"])
            .arg(format!("http://{admin}")));
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "musl health: {err}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
