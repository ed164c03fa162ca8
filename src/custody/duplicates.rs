//! Duplicate suppression: the acks already given, by sender, MSH-3, MSH-4, MSH-10 and the
//! message's digest, for `duplicate_window`, so that a sender's resend is answered with the same
//! ack and not queued twice, and one sender can never make another's message disappear by
//! reusing its control id. Bounded (oldest forgotten first). Must not know the queue.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::wire::hl7::Header;

/// Remembered acks for duplicate detection, at most (oldest forgotten first).
const MAX_REMEMBERED: usize = 100_000;

/// Who sent a message, as duplicate suppression tells senders apart: the TLS identity when the
/// sender presented a certificate, else its address (the PROXY protocol's client when the route
/// reads one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SenderId<'a> {
    Identity(&'a str),
    Address(IpAddr),
}

impl fmt::Display for SenderId<'_> {
    /// `tls:<identity>` or `ip:<address>`: the two can never be mistaken for each other.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SenderId::Identity(identity) => write!(f, "tls:{identity}"),
            SenderId::Address(ip) => write!(f, "ip:{}", ip.to_canonical()),
        }
    }
}

/// SHA-256 of a message payload: what makes two messages with the same ids different.
pub(super) fn digest(payload: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, payload).as_ref());
    out
}

/// Which message a resend is: its sender, MSH-3, MSH-4, MSH-10 and its digest.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(super) struct DuplicateKey(Vec<u8>);

/// Bytes of the digest at the end of a [`DuplicateKey`].
const DIGEST_BYTES: usize = 32;

impl DuplicateKey {
    pub(super) fn of(header: &Header<'_>, sender: SenderId<'_>, payload: &[u8]) -> DuplicateKey {
        let mut key = Vec::with_capacity(128);
        let sender = sender.to_string();
        for part in [
            sender.as_bytes(),
            header.sending_application(),
            header.sending_facility(),
            header.control_id(),
        ] {
            key.extend_from_slice(&(part.len() as u32).to_le_bytes());
            key.extend_from_slice(part);
        }
        key.extend_from_slice(&digest(payload));
        DuplicateKey(key)
    }

    /// The sender and ids part (without the digest).
    fn ids(&self) -> &[u8] {
        &self.0[..self.0.len().saturating_sub(DIGEST_BYTES)]
    }

    /// The message's digest.
    pub(super) fn digest(&self) -> &[u8] {
        &self.0[self.0.len().saturating_sub(DIGEST_BYTES)..]
    }
}

/// A digest in lower-case hex, for a log line.
pub(super) fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Positive acks recently sent, by message, so a resend gets the same ack and is not queued
/// twice. Bounded in time (the window) and size.
#[derive(Default)]
pub(super) struct Duplicates {
    acks: HashMap<DuplicateKey, (Instant, Bytes)>,
    order: VecDeque<(Instant, DuplicateKey)>,
    /// The digest last remembered for each sender and ids: a message that reuses them with
    /// another body is a new message, and worth a warning.
    digests: HashMap<Vec<u8>, Vec<u8>>,
}

impl Duplicates {
    pub(super) fn find(&mut self, key: &DuplicateKey, window: Duration) -> Option<Bytes> {
        self.expire(window);
        self.acks.get(key).map(|(_, ack)| ack.clone())
    }

    /// The digest of an earlier message within the window with the same sender and ids as
    /// `key` but another body (a recycled control id), if there is one.
    pub(super) fn reused(&mut self, key: &DuplicateKey, window: Duration) -> Option<Vec<u8>> {
        self.expire(window);
        self.digests
            .get(key.ids())
            .filter(|d| d.as_slice() != key.digest())
            .cloned()
    }

    pub(super) fn remember(&mut self, key: DuplicateKey, ack: Bytes, window: Duration) {
        self.expire(window);
        self.digests
            .insert(key.ids().to_vec(), key.digest().to_vec());
        let now = Instant::now();
        if self.acks.insert(key.clone(), (now, ack)).is_none() {
            self.order.push_back((now, key));
        }
        while self.order.len() > MAX_REMEMBERED {
            if let Some((_, old)) = self.order.pop_front() {
                self.forget(&old);
            }
        }
    }

    fn expire(&mut self, window: Duration) {
        while let Some((at, _)) = self.order.front() {
            if at.elapsed() < window {
                break;
            }
            if let Some((_, key)) = self.order.pop_front() {
                self.forget(&key);
            }
        }
    }

    fn forget(&mut self, key: &DuplicateKey) {
        self.acks.remove(key);
        if self.digests.get(key.ids()).map(Vec::as_slice) == Some(key.digest()) {
            self.digests.remove(key.ids());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::hl7::Header;

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
    fn a_reused_control_id_with_another_body_is_told_apart_with_both_digests() {
        let h = Header::parse(b"MSH|^~\\&|LAB|FAC|R|F|2024||ORU^R01|K1|P|2.5\r").unwrap();
        let sender = SenderId::Address("127.0.0.1".parse().unwrap());
        let first = DuplicateKey::of(&h, sender, b"potassium 4.1");
        let other = DuplicateKey::of(&h, sender, b"potassium 6.9");
        let window = Duration::from_secs(60);
        let mut d = Duplicates::default();
        assert_eq!(d.reused(&first, window), None);
        d.remember(first.clone(), Bytes::from_static(b"ack"), window);
        assert_eq!(d.reused(&first, window), None, "a resend is not a reuse");
        assert_eq!(d.reused(&other, window), Some(first.digest().to_vec()));
        assert_eq!(d.find(&other, window), None, "and not a duplicate");
        assert_eq!(hex(&[0x0a, 0xff]), "0aff");
    }

    #[test]
    fn duplicate_keys_do_not_collide_across_field_boundaries() {
        let (a, b) = (
            &b"MSH|^~\\&|AB|C|R|F|2024||ADT^A01|X|P|2.5\r"[..],
            &b"MSH|^~\\&|A|BC|R|F|2024||ADT^A01|X|P|2.5\r"[..],
        );
        let lab = SenderId::Address("127.0.0.1".parse().unwrap());
        let key = |p: &[u8], s| DuplicateKey::of(&Header::parse(p).unwrap(), s, p);
        assert!(key(a, lab) != key(b, lab));
        assert!(key(a, lab) == key(a, lab));
    }

    #[test]
    fn another_sender_or_other_content_is_never_a_duplicate() {
        let lab = SenderId::Address("10.0.0.5".parse().unwrap());
        let other = SenderId::Address("127.0.0.9".parse().unwrap());
        let named = SenderId::Identity("lab.example.org");
        let k41 = b"MSH|^~\\&|LAB|F|R|F|2024||ORU^R01|C1|P|2.5\rOBX|1|NM|K||4.1\r";
        let k69 = b"MSH|^~\\&|LAB|F|R|F|2024||ORU^R01|C1|P|2.5\rOBX|1|NM|K||6.9\r";
        let key = |p: &[u8], s| DuplicateKey::of(&Header::parse(p).unwrap(), s, p);
        assert!(
            key(k41, lab) != key(k41, other),
            "same message, another sender"
        );
        assert!(key(k41, lab) != key(k69, lab), "same ids, other content");
        assert!(key(k41, lab) != key(k41, named));
        // An IPv4-mapped IPv6 peer is the IPv4 sender.
        let mapped = SenderId::Address("::ffff:10.0.0.5".parse().unwrap());
        assert!(key(k41, lab) == key(k41, mapped));
    }
}
