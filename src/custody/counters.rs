//! The counters one route's custody keeps, shared by the embedded queue's committer and drainer
//! and by the JetStream backend (read by logs and the queue metrics). Must not know how they
//! are incremented.

use std::sync::atomic::AtomicU64;

/// Counters a route's custody keeps (read by logs now, metrics later).
#[derive(Debug, Default)]
pub struct Counters {
    pub queued: AtomicU64,
    pub duplicates_answered: AtomicU64,
    pub delivered: AtomicU64,
    pub redeliveries: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub syncs: AtomicU64,
    /// Whether the last fsync of the queue failed (the queue cannot take writes).
    pub sync_failing: std::sync::atomic::AtomicBool,
    /// Whether the dead letters are full (`queue.dead_letters`): new messages are refused.
    pub dead_letters_full: std::sync::atomic::AtomicBool,
}
