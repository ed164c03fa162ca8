//! Whether a route's dead letters are full (`queue.dead_letters`), the same on both backends:
//! while they are, the message that could not be dead-lettered stays first, new messages are
//! refused (AE `dead letters full`), `/readyz` is unready (custody's `backed_up`) and
//! `mllp_guard_queue_dead_letters_full` is 1. Both drainers, and the console's replay, say here
//! when that starts and ends, so the signals read the same. Must not know queues or senders.

use std::sync::atomic::Ordering;

use super::counters::Counters;

/// The dead letters refused the message at `seq` because they are full: the route is marked
/// (metric, refusals, readiness) and the ERROR line written (at each try).
pub(super) fn dead_letters_full(
    route: &str,
    counters: &Counters,
    seq: u64,
    control_id: &str,
    error: &dyn std::fmt::Display,
) {
    if !counters.dead_letters_full.swap(true, Ordering::Relaxed) {
        crate::ops::metrics::dead_letters_full(route, true);
    }
    tracing::error!(route, seq, control_id, error = %error, "the dead letters are full (queue.dead_letters): the message stays first and is not sent again; new messages are refused (AE) until dead letters are replayed or purged");
}

/// The dead letters have room again (one was stored, or they were replayed or purged): new
/// messages are queued again. Whether they had been full.
pub(super) fn dead_letters_have_room(route: &str, counters: &Counters) -> bool {
    if !counters.dead_letters_full.swap(false, Ordering::Relaxed) {
        return false;
    }
    tracing::info!(
        route,
        "the dead letters take messages again; new messages are queued again"
    );
    crate::ops::metrics::dead_letters_full(route, false);
    true
}
