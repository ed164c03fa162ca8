//! The firewall's decisions, pure: who may connect ([`policy`]: CIDR allowlists), how much they
//! may do ([`limits`]: connection caps, rates, bounded per-source state) and what they may send
//! ([`rules`]: source, TLS identity and MSH-field rules).
//!
//! Each takes facts (a peer address, a header view) and returns a decision; the inbound side
//! acts on it. Must not know sockets, TLS or how a message is delivered.

pub mod policy;
pub mod limits;
pub mod rules;
