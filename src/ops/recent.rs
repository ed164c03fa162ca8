//! The last refusals and errors, for the status page and `GET /api/v1/refusals`: time, route,
//! peer, MSH-10, MSH-9 and a reason tag, never a payload or any other field (PHI-free).
//!
//! Owns a ring of the last [`KEPT`] events behind a lock taken only when a message or a
//! connection is refused or fails (never on the path of a message that goes through). Must not
//! know why something was refused beyond the tag it is given.

use std::collections::VecDeque;
use std::sync::{Mutex, OnceLock};

/// Events kept.
pub const KEPT: usize = 50;

/// One refusal or error.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Event {
    pub time: String,
    pub route: String,
    pub peer: String,
    pub msh10: Option<String>,
    pub msh9: Option<String>,
    pub reason: String,
}

fn ring() -> &'static Mutex<VecDeque<Event>> {
    static RING: OnceLock<Mutex<VecDeque<Event>>> = OnceLock::new();
    RING.get_or_init(|| Mutex::new(VecDeque::with_capacity(KEPT)))
}

/// Remembers one event (the oldest goes when [`KEPT`] are held).
pub fn note(route: &str, peer: &str, msh10: Option<String>, msh9: Option<String>, reason: &str) {
    let event = Event {
        time: crate::ops::connections::rfc3339(crate::ops::connections::now_ms()),
        route: route.to_string(),
        peer: peer.to_string(),
        msh10,
        msh9,
        reason: reason.to_string(),
    };
    let mut ring = ring().lock().unwrap_or_else(|e| e.into_inner());
    if ring.len() == KEPT {
        ring.pop_front();
    }
    ring.push_back(event);
}

/// The events kept, newest first.
pub fn list() -> Vec<Event> {
    let ring = ring().lock().unwrap_or_else(|e| e.into_inner());
    ring.iter().rev().cloned().collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_the_last_fifty_are_kept_newest_first() {
        for i in 0..(super::KEPT + 5) {
            super::note("t-recent", "127.0.0.1:1", Some(i.to_string()), None, "x");
        }
        let mine: Vec<_> = super::list()
            .into_iter()
            .filter(|e| e.route == "t-recent")
            .collect();
        assert!(mine.len() <= super::KEPT);
        assert_eq!(mine[0].msh10.as_deref(), Some("54"));
    }
}
