//! The sender's side: getting a sender's connection and serving it, one message in flight.
//!
//! [`listener`] binds a route, admits or refuses each connection before any byte is read, and
//! runs the TLS handshake in the connection's own task ([`sniff`] tells a client that speaks the
//! wrong one of TLS and plain MLLP by its first bytes), which it places on one of the
//! [`workers`] (a single-threaded runtime per CPU); [`dialer`] is the `dial` role (the
//! sender is itself an MLLP server we connect to); [`session`] serves one sender connection end
//! to end, reading and judging every message of a frame (a batch's too) with `messages`, and
//! answering a release-2 sender's frames with `commits`; [`two_way`] keeps the two directions
//! of a paired connection apart, so that what the receiver sends on its own reaches the sender
//! while the sender's own message is in flight, and the other way round.
//! Must not know how upstreams connect or how the queue stores: it hands each admitted message
//! to [`crate::dispatch`].

pub mod sniff;
pub mod listener;
pub mod workers;
pub mod dialer;
pub mod session;
mod commits;
mod messages;
mod readmit;
pub mod two_way;
