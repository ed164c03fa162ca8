//! The wire: bytes as MLLP and HL7 v2 define them, with no I/O of its own apart from the link's
//! read/write loop over a stream it is handed.
//!
//! In the order a message meets them: [`link`] reads a connection into frames with [`codec`],
//! within the process's memory [`budget`], reusing large frames' buffers ([`warm_buffers`]);
//! [`hl7`] is the borrowed view of the header (MSH) and of an ack's MSA; [`commit`] is MLLP
//! release 2's commit blocks; [`ack`] builds the acks the guard sends itself and checks a
//! receiver's ack against its message. Must not know routes, peers, sockets or delivery.

pub mod budget;
pub mod warm_buffers;
pub mod codec;
pub mod link;
pub mod hl7;
pub mod commit;
pub mod ack;
