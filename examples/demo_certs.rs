//! Regenerates the DEMO-ONLY certificates in `rules/certs/` (a CA, the guard's server and client
//! certificates, a receiver's and a sender's), valid until 2124:
//! `cargo run --example demo_certs`. Their private keys are public: never use them in production.
#![allow(clippy::unwrap_used, clippy::panic)] // a harness: a failed step is a failed run

#[path = "../tests/it/pki.rs"]
mod pki;

use pki::{Pki, Usage};

fn main() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/certs");
    std::fs::create_dir_all(&dir).unwrap();
    let pki = Pki::new("mllp-guard demo CA (DO NOT TRUST)");
    pki.write_ca(&dir, "ca.pem");
    pki.leaf("localhost", Usage::Server).write(&dir, "guard");
    pki.leaf("ehr.example.org", Usage::Server)
        .write(&dir, "ehr");
    pki.leaf("guard.example.org", Usage::Client)
        .write(&dir, "guard-client");
    pki.leaf("lab.example.org", Usage::Client)
        .write(&dir, "lab");
    println!("demo certificates written to {}", dir.display());
}
