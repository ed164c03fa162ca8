//! mllp-guard: a transparent MLLP proxy and HL7-aware firewall.
//!
//! It terminates MLLP (plain or TLS) from senders ("downstream"), re-originates it (plain or
//! TLS) to a receiver ("upstream"), relays the receiver's ack only when its MSA-2 answers the
//! message, and refuses whoever is not allowed. Payload bytes are relayed exactly; only the
//! header segment is read.
//!
//! # Layout
//!
//! The path of one message, and the module that owns each step:
//!
//! ```text
//! accept                                    listener.rs  (binds, admits, spawns; never slow)
//!   peer address: allowlist, conn caps      policy.rs, limits.rs (refused -> reset before TLS, logged)
//!   TLS handshake under a timeout           tls.rs       (in the connection's own task)
//!   bytes -> frame                          link.rs + codec.rs (oversize / garbage -> defined outcome)
//!   header view                             hl7.rs       (no header -> AR from ack.rs)
//!   per-source rate                         limits.rs    (delay = backpressure, or AE)
//!   rules: source, TLS identity, MSH fields rules.rs     (first match: allow/reject/drop/route)
//!   deliver                                 dispatch.rs  (forward, or custody.rs -> queue.rs)
//!   send frame, await ack, verify MSA-2     upstream.rs  (timeout -> connection closed; paced reconnects)
//!     the ack timeout                       deadline_timer.rs (one timer per connection, not per message)
//!   ack (relayed, or our own) -> sender     session.rs owns the loop end to end
//! ```
//!
//! Custody (store-and-forward) splits the path: `custody.rs` appends the message to the route's
//! `queue.rs` log through a group-commit thread and acks once it is durable; its drainer task
//! later sends the queue upstream in order through `upstream.rs`. `operator.rs` serves
//! `mllp-guard queue ...`; `backoff.rs` is the jittered backoff both retry loops use. With
//! `queue.backend: jetstream`, `jetstream.rs` replaces the log and the drainer: custody publishes
//! to a replicated NATS JetStream stream (ack after the PubAck) and every guard of the route
//! pulls from one shared consumer with one message in flight.
//!
//! Around it: `config.rs` turns YAML into a validated, typed [`config::Config`] (every error with
//! its location); `app.rs` builds the routes, binds them and drains on shutdown; `net.rs` holds
//! socket tuning and the plain/TLS stream; `tls.rs` (with `pki.rs` for PKCS#12, encrypted keys
//! and CRLs) builds the rustls configurations and TLS policy; `egress.rs` opens SOCKS5 / HTTP
//! CONNECT tunnels to upstreams; `peer/` has the `send` and `sink` tools; `demo.rs`
//! the quick start; `log_format.rs` the log line formats (the audit line is written once per
//! message, so its cost is on the data path); `main.rs` the command line.
//!
//! Pure modules (no sockets, files or clock): `codec`, `hl7`, `ack`, `policy`, `rules`,
//! `backoff`, and `config` apart from reading the files it names.
#![forbid(unsafe_code)]

pub mod config;

pub mod app;
pub mod reload;
pub mod route;

pub mod custody;
pub mod dispatch;
pub mod firewall;
pub mod inbound;
pub mod net;
pub mod outcome;
pub mod queue;
pub mod tls;
pub mod upstream;
pub mod wire;

pub mod ops;
pub mod timing;
pub mod tools;
