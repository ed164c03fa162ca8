//! One integration test binary (one link step): the relay over loopback, the command line, the
//! shipped configs, and third-party HL7 peers.
#![allow(clippy::unwrap_used, clippy::panic)] // a harness: a failed step is a failed run

mod admin;
mod alerts;
mod audit;
mod audit_file;
mod batches;
mod cli;
mod conformance;
mod custody;
mod console;
mod damage;
mod dead_stream;
mod deploy;
mod enhanced;
mod faults;
mod firewall;
mod harness;
mod help;
mod host;
mod jetstream;
mod memory;
mod nats;
mod one_reading;
mod pki;
mod proxy_protocol;
mod python_hl7;
mod readiness;
mod recovery;
mod queue_cli;
mod relay;
mod release;
mod reload;
mod reload_live;
mod release2;
mod salvage_cli;
mod stream_loss;
mod roles;
mod sessions;
mod shipped;
mod sockets;
mod systemd_notify;
mod tls_policy;
mod transparent;
mod two_way;
mod webhooks;
