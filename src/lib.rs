//! mllp-guard: a transparent MLLP proxy and HL7-aware firewall.
//!
//! It terminates MLLP (plain or TLS) from senders ("downstream"), re-originates it (plain or
//! TLS) to a receiver ("upstream"), relays the receiver's ack only when its MSA-2 answers the
//! message, and refuses whoever is not allowed. Payload bytes are relayed exactly; only the
//! header segment is read.
//!
//! # The path of one message
//!
//! ```text
//! accept, admit before TLS             inbound/listener (firewall/policy, firewall/limits: caps)
//!   TLS handshake under a timeout      tls/             (in the connection's own task)
//!   bytes -> frame                     wire/link, wire/codec (oversize/garbage: defined outcome)
//!   header view                        wire/hl7         (no header -> AR built by wire/ack)
//!   per-source rate                    firewall/limits  (delay = backpressure, or AE)
//!   rules: source, TLS identity, MSH   firewall/rules   (first match: allow/reject/drop/route)
//!   forward | custody                  dispatch         (custody/ -> queue/ or JetStream)
//!   send frame, await ack, check MSA-2 upstream/        (timeout closes; paced reconnects)
//!   answer -> sender                   inbound/session  (owns the loop; outcome::Answer)
//!   one audit line                     ops/audit
//! ```
//!
//! Custody (store-and-forward) splits the path: `custody/` appends the message to the route's
//! `queue/` log through a group-commit thread and acks once it is durable; its drainer later
//! sends the queue upstream in order through `upstream/`. With `queue.backend: jetstream`,
//! `custody/jetstream.rs` replaces the log and the drainer: custody publishes to a replicated
//! NATS JetStream stream (ack after the PubAck) and every guard of the route pulls from one
//! shared consumer with one message in flight.
//!
//! # Layout
//!
//! Folders in the order a message meets them; each module's own doc says what it owns and what
//! it must not know. No file imports one that imports it back (`.ci/house.py` checks).
//!
//! ```text
//! main.rs      the command line (clap) and exit codes
//! config/      YAML -> raw serde mirror -> validator (every error, file:line:col) -> typed model
//! app.rs       the supervisor: build routes from a Config, bind all, reload, drain on SIGTERM
//! reload.rs    watching the config and certificate files; SIGHUP
//! route.rs     one route as it runs: RouteContext, SharedContext, Peer
//! net/         sockets: bind, tuning, the plain/TLS Stream; PROXY protocol; egress proxies
//! tls/         rustls configs from PEM/PKCS#12, policy, verifiers, CRLs, who the peer is
//! inbound/     the sender's side: listener, dialer, session (one connection), messages,
//!              commits (release 2 towards the sender), two_way/ (both directions of a paired
//!              connection, one message in flight each; reverse: the receiver's own message)
//! wire/        MLLP and HL7 bytes: codec, link, hl7 (MSH/MSA views), commit (release 2), ack
//! firewall/    pure decisions: policy (allowlists), limits (caps, rates), rules (MSH rules)
//! outcome.rs   the Answer a sender gets; Failure and Fault: which side failed, retry or not
//! dispatch.rs  the junction: forward to the upstream or hand to custody; a session's Lanes
//! custody/     accept (mod), duplicates, log (committer + drainer), give_up, jetstream/ (with
//!              loss: a lost stream noticed), stranded, error, counters
//! queue/       the durable log: doc and invariants (mod), store, format, log, recovery,
//!              survey (intact records and damage, pure), salvage
//! upstream/    the receiver's side: Upstream and its pool (mod), connect, receivers, conn,
//!              crossing (what a two-way receiver sends during an exchange), error
//! timing/      backoff (jittered retries), deadline_timer (one timer per connection)
//! ops/         admin HTTP and the operator's console (connections, pause, reconnect, dead
//!              letters, status page), metrics, audit trail, log line formats and writer,
//!              webhooks (notify/), systemd readiness
//! tools/       demo, effective (check --print), operator (queue ...), salvage (queue
//!              salvage), console (status, disconnect), peer/ (send, sink)
//! ```
//!
//! Pure (no sockets, files or clock): `wire` (but `ack::own_ack`, which reads the clock),
//! `firewall`, `outcome`, `timing::backoff`, and `config` apart from reading the files it names.
#![forbid(unsafe_code)]

pub mod config;
pub mod app;
pub mod reload;
pub mod route;
pub mod net;
pub mod tls;
pub mod inbound;
pub mod wire;
pub mod firewall;
pub mod outcome;
pub mod dispatch;
pub mod custody;
pub mod queue;
pub mod upstream;
pub mod timing;
pub mod ops;
pub mod tools;
