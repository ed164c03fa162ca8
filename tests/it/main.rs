//! One integration test binary (one link step): the relay over loopback, the command line, the
//! shipped configs, and third-party HL7 peers.

mod admin;
mod cli;
mod custody;
mod firewall;
mod harness;
mod jetstream;
mod nats;
mod pki;
mod python_hl7;
mod relay;
mod roles;
mod sessions;
mod shipped;
