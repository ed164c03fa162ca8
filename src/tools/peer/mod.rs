//! Small MLLP peers shipped with the guard for testing links and for the demo: `send` (a client
//! that sends files and checks every ack) and `sink` (a receiver that acks and can save payloads
//! byte-exact). They use the same codec and ack modules as the guard, and nothing of its routing.

pub mod send;
pub mod sink;
