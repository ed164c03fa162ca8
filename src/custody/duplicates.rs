//! Duplicate suppression: the acks already given, by MSH-3, MSH-4 and MSH-10, for
//! `duplicate_window`, so that a sender's resend is answered with the same ack and not queued
//! twice. Bounded (oldest forgotten first). Must not know the queue.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::wire::hl7::Header;

/// Remembered acks for duplicate detection, at most (oldest forgotten first).
const MAX_REMEMBERED: usize = 100_000;

/// Which message a resend is: MSH-3, MSH-4, MSH-10.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(super) struct DuplicateKey(Vec<u8>);

impl DuplicateKey {
    pub(super) fn of(header: &Header<'_>) -> DuplicateKey {
        let mut key = Vec::with_capacity(64);
        for part in [
            header.sending_application(),
            header.sending_facility(),
            header.control_id(),
        ] {
            key.extend_from_slice(&(part.len() as u32).to_le_bytes());
            key.extend_from_slice(part);
        }
        DuplicateKey(key)
    }
}

/// Positive acks recently sent, by message, so a resend gets the same ack and is not queued
/// twice. Bounded in time (the window) and size.
#[derive(Default)]
pub(super) struct Duplicates {
    acks: HashMap<DuplicateKey, (Instant, Bytes)>,
    order: VecDeque<(Instant, DuplicateKey)>,
}

impl Duplicates {
    pub(super) fn find(&mut self, key: &DuplicateKey, window: Duration) -> Option<Bytes> {
        self.expire(window);
        self.acks.get(key).map(|(_, ack)| ack.clone())
    }

    pub(super) fn remember(&mut self, key: DuplicateKey, ack: Bytes, window: Duration) {
        self.expire(window);
        let now = Instant::now();
        if self.acks.insert(key.clone(), (now, ack)).is_none() {
            self.order.push_back((now, key));
        }
        while self.order.len() > MAX_REMEMBERED {
            if let Some((_, old)) = self.order.pop_front() {
                self.acks.remove(&old);
            }
        }
    }

    fn expire(&mut self, window: Duration) {
        while let Some((at, _)) = self.order.front() {
            if at.elapsed() < window {
                break;
            }
            if let Some((_, key)) = self.order.pop_front() {
                self.acks.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_found_within_the_window_and_forgotten_after() {
        let mut d = Duplicates::default();
        let key = DuplicateKey(b"k".to_vec());
        d.remember(
            key.clone(),
            Bytes::from_static(b"ack"),
            Duration::from_secs(60),
        );
        assert_eq!(
            d.find(&key, Duration::from_secs(60)),
            Some(Bytes::from_static(b"ack"))
        );
        assert_eq!(d.find(&key, Duration::ZERO), None);
        assert!(d.acks.is_empty() && d.order.is_empty());
    }

    #[test]
    fn duplicate_keys_do_not_collide_across_field_boundaries() {
        let a = Header::parse(b"MSH|^~\\&|AB|C|R|F|2024||ADT^A01|X|P|2.5\r").unwrap();
        let b = Header::parse(b"MSH|^~\\&|A|BC|R|F|2024||ADT^A01|X|P|2.5\r").unwrap();
        assert!(DuplicateKey::of(&a) != DuplicateKey::of(&b));
    }
}
