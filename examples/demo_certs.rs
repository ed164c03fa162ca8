//! Makes a set of DEMO-ONLY certificates like the ones in `rules/certs/` (a CA, the guard's server
//! and client certificates, a receiver's and a sender's), valid until 2124, in the directory
//! named: `cargo run --example demo_certs -- DIR`. It writes only where it is told, so a run
//! never rewrites the tracked files by surprise (`-- rules/certs` replaces them on purpose).
//! Their private keys are public: never use them in production.
#![allow(clippy::unwrap_used, clippy::panic)] // a harness: a failed step is a failed run

#[path = "../tests/it/pki.rs"]
mod pki;

use pki::{Pki, Usage};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir] = args.as_slice() else {
        eprintln!(
            "usage: cargo run --example demo_certs -- DIR\n\
             writes ca.pem and guard, ehr, guard-client, lab (.pem + .key) into DIR; \
             `-- rules/certs` replaces the shipped demo certificates"
        );
        std::process::exit(2);
    };
    let dir = std::path::Path::new(dir);
    std::fs::create_dir_all(dir).unwrap();
    let pki = Pki::new("mllp-guard demo CA (DO NOT TRUST)");
    pki.write_ca(dir, "ca.pem");
    pki.leaf("localhost", Usage::Server).write(dir, "guard");
    pki.leaf("ehr.example.org", Usage::Server).write(dir, "ehr");
    pki.leaf("guard.example.org", Usage::Client)
        .write(dir, "guard-client");
    pki.leaf("lab.example.org", Usage::Client).write(dir, "lab");
    println!("demo certificates written to {}", dir.display());
}
