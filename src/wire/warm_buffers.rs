//! Large read buffers kept for the next large frame, so that its bytes land in memory the
//! process has already touched.
//!
//! A link that reads a large frame grows its buffer to the frame's size; the frame is then
//! handed out and the link, back between frames, lets go of the buffer. Freed, a buffer of a
//! megabyte goes back to the allocator, which gives its pages back to the kernel (glibc trims
//! or unmaps a chunk that large), and the next large frame's reads fault fresh, zeroed pages
//! in one by one: about 100 page faults per 1 MiB message, a tenth of the guard's CPU on that
//! load (perf, BENCHMARKS.md). Instead, the link leaves its emptied buffer here; the buffer
//! still shares its allocation with the frame being delivered, and once that frame is dropped
//! (answered) the next link that needs a buffer of about that size takes the allocation over
//! whole ([`BytesMut::try_reclaim`]: only when no frame holds any of it, so a frame's bytes are
//! never written over).
//!
//! Bounded: at most [`MAX_KEPT`] buffers and [`MAX_KEPT_BYTES`] in all, each between
//! [`MIN_BYTES`] and [`MAX_ONE_BYTES`]; the oldest goes first. Kept bytes are not message bytes
//! and the memory budget does not count them: the bound is this fixed, small amount on top of
//! `max_buffered_bytes`, held after a burst of large messages until later ones reuse it.
//!
//! Owns the kept buffers; must not know links, frames or the budget (the link covers a taken
//! buffer's size with its budget share before it reads into it).

use std::sync::Mutex;

use bytes::BytesMut;

/// Smaller buffers are left to the allocator, which keeps and reuses them by itself.
pub const MIN_BYTES: usize = 256 * 1024;

/// Larger buffers (a frame near a 16 MiB `max_message_bytes`) are not kept: one would take most
/// of the bound.
pub const MAX_ONE_BYTES: usize = 4 * 1024 * 1024;

/// At most this many buffers are kept.
pub const MAX_KEPT: usize = 16;

/// At most this many bytes of buffers are kept, in all.
pub const MAX_KEPT_BYTES: usize = 16 * 1024 * 1024;

/// A buffer taken is at most this fraction larger than asked (`capacity / SLACK` more), so a
/// small large frame does not take (and get the budget to cover) a much larger buffer.
const SLACK: usize = 4;

/// The most a buffer taken for `capacity` bytes may hold: a quarter more, and never more than
/// `ceiling` (the largest buffer the link may have the budget cover).
pub fn most_for(capacity: usize, ceiling: usize) -> usize {
    capacity
        .saturating_add(capacity / SLACK)
        .min(ceiling)
        .max(capacity)
}

/// The process's kept buffers.
static KEPT: Mutex<Kept> = Mutex::new(Kept::new());

/// Leaves `buf` (empty; its allocation of `capacity` bytes may still be shared with frames
/// handed out) to be reused by a later [`take`]. Not kept when outside the bounds.
pub fn give(buf: BytesMut, capacity: usize) {
    // Most buffers are small: they are dropped here without taking the lock.
    if (MIN_BYTES..=MAX_ONE_BYTES).contains(&capacity) {
        kept().give(buf, capacity);
    }
}

/// An empty buffer with room for at least `capacity` bytes and at most `most` (see
/// [`most_for`]) made from a kept allocation that no frame holds any more, with the size of
/// that allocation; `None` when there is none.
pub fn take(capacity: usize, most: usize) -> Option<(BytesMut, usize)> {
    if most < MIN_BYTES {
        return None;
    }
    kept().take(capacity, most)
}

/// Bytes of the buffers kept now (the `mllp_guard_kept_buffer_bytes` gauge).
pub fn kept_bytes() -> usize {
    kept().bytes
}

/// The kept buffers, locked. A poisoned lock only means a panic elsewhere while it was held;
/// the list is still sound.
fn kept() -> std::sync::MutexGuard<'static, Kept> {
    KEPT.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Kept buffers, oldest first.
struct Kept {
    buffers: Vec<(BytesMut, usize)>,
    bytes: usize,
}

impl Kept {
    const fn new() -> Kept {
        Kept {
            buffers: Vec::new(),
            bytes: 0,
        }
    }

    fn give(&mut self, buf: BytesMut, capacity: usize) {
        if !(MIN_BYTES..=MAX_ONE_BYTES).contains(&capacity) || !buf.is_empty() {
            return;
        }
        while !self.buffers.is_empty()
            && (self.buffers.len() >= MAX_KEPT || self.bytes + capacity > MAX_KEPT_BYTES)
        {
            let (_, oldest) = self.buffers.remove(0);
            self.bytes -= oldest;
        }
        self.bytes += capacity;
        self.buffers.push((buf, capacity));
    }

    fn take(&mut self, capacity: usize, most: usize) -> Option<(BytesMut, usize)> {
        // The best fit among those no frame holds; `try_reclaim` of the whole allocation
        // succeeds only for a buffer that is its allocation's one handle.
        let (at, _) = self
            .buffers
            .iter_mut()
            .enumerate()
            .filter(|(_, (_, kept))| (capacity..=most).contains(kept))
            .filter_map(|(at, (buf, kept))| buf.try_reclaim(*kept).then_some((at, *kept)))
            .min_by_key(|&(_, kept)| kept)?;
        let (buf, kept) = self.buffers.remove(at);
        self.bytes -= kept;
        Some((buf, kept))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1024 * 1024;

    /// A buffer of `capacity` that held a frame of `len` bytes, split off as a link's decoder
    /// does: (the frame, the emptied buffer left behind).
    fn after_a_frame(capacity: usize, len: usize) -> (bytes::Bytes, BytesMut) {
        let mut buf = BytesMut::with_capacity(capacity);
        buf.extend(std::iter::repeat_n(b'x', len));
        let frame = buf.split_to(len).freeze();
        (frame, buf)
    }

    #[test]
    fn an_allocation_is_reused_only_once_its_frame_is_let_go() {
        let mut kept = Kept::new();
        let (frame, tail) = after_a_frame(MIB, MIB);
        let at = frame.as_ptr();
        kept.give(tail, MIB);
        assert!(
            kept.take(MIB, most_for(MIB, usize::MAX)).is_none(),
            "the frame still holds it"
        );
        assert_eq!(
            &frame[..],
            &vec![b'x'; MIB][..],
            "and its bytes are its own"
        );
        drop(frame);
        let (mut buf, capacity) = kept
            .take(MIB, most_for(MIB, usize::MAX))
            .expect("let go, it is reused");
        assert_eq!(capacity, MIB);
        assert!(buf.is_empty() && buf.capacity() >= MIB);
        assert_eq!(buf.as_ptr(), at, "the same allocation, from its start");
        buf.extend_from_slice(b"next");
        assert_eq!(&buf[..], b"next");
        assert!(kept.buffers.is_empty() && kept.bytes == 0);
    }

    #[test]
    fn a_buffer_far_larger_than_asked_or_too_small_is_not_taken() {
        let mut kept = Kept::new();
        let (frame, tail) = after_a_frame(2 * MIB, 1000);
        drop(frame);
        kept.give(tail, 2 * MIB);
        assert!(
            kept.take(MIB, most_for(MIB, usize::MAX)).is_none(),
            "2 MiB for 1 MiB is more than a quarter over"
        );
        assert!(
            kept.take(3 * MIB, most_for(3 * MIB, usize::MAX)).is_none(),
            "too small"
        );
        assert!(kept
            .take(2 * MIB - 1000, most_for(2 * MIB - 1000, usize::MAX))
            .is_some());
    }

    #[test]
    fn a_buffer_larger_than_the_ceiling_is_not_taken() {
        let mut kept = Kept::new();
        let (frame, tail) = after_a_frame(MIB + MIB / 8, 10);
        drop(frame);
        kept.give(tail, MIB + MIB / 8);
        assert_eq!(most_for(MIB, MIB + MIB / 16), MIB + MIB / 16);
        assert_eq!(most_for(MIB, MIB / 2), MIB, "never below what is asked");
        assert!(kept.take(MIB, most_for(MIB, MIB + MIB / 16)).is_none());
        assert!(kept.take(MIB, most_for(MIB, usize::MAX)).is_some());
    }

    #[test]
    fn the_best_fit_that_is_free_is_taken() {
        let mut kept = Kept::new();
        let (held, tail) = after_a_frame(MIB, 10);
        kept.give(tail, MIB);
        for capacity in [MIB + MIB / 8, MIB + MIB / 16] {
            let (frame, tail) = after_a_frame(capacity, 10);
            drop(frame);
            kept.give(tail, capacity);
        }
        let (_, capacity) = kept.take(MIB, most_for(MIB, usize::MAX)).unwrap();
        assert_eq!(capacity, MIB + MIB / 16, "the 1 MiB one is still held");
        drop(held);
        assert_eq!(kept.take(MIB, most_for(MIB, usize::MAX)).unwrap().1, MIB);
    }

    #[test]
    fn what_is_kept_stays_within_its_bounds_oldest_first_out() {
        let mut kept = Kept::new();
        let (_, small) = after_a_frame(MIN_BYTES - 1, 0);
        kept.give(small, MIN_BYTES - 1);
        let (_, huge) = after_a_frame(MAX_ONE_BYTES + 1, 0);
        kept.give(huge, MAX_ONE_BYTES + 1);
        assert!(kept.buffers.is_empty(), "outside the sizes kept");
        let (_, not_empty) = after_a_frame(MIB, 0);
        let mut not_empty = not_empty;
        not_empty.extend_from_slice(b"next frame's first bytes");
        kept.give(not_empty, MIB);
        assert!(kept.buffers.is_empty(), "only an emptied buffer is kept");

        for n in 0..40 {
            let capacity = MIB + n;
            let (frame, tail) = after_a_frame(capacity, 1);
            drop(frame);
            kept.give(tail, capacity);
            assert!(kept.buffers.len() <= MAX_KEPT && kept.bytes <= MAX_KEPT_BYTES);
            assert_eq!(
                kept.bytes,
                kept.buffers.iter().map(|(_, c)| c).sum::<usize>()
            );
        }
        // 16 MiB of them at most, and they are the newest.
        assert_eq!(kept.buffers.len(), MAX_KEPT_BYTES / (MIB + 39));
        assert_eq!(kept.buffers.last().unwrap().1, MIB + 39);
        let (_, four) = after_a_frame(MAX_ONE_BYTES, 0);
        kept.give(four, MAX_ONE_BYTES);
        assert!(kept.bytes <= MAX_KEPT_BYTES);
        assert_eq!(kept.buffers.last().unwrap().1, MAX_ONE_BYTES);
    }
}
