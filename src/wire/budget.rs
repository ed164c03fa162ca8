//! The process's memory budget for message bytes (`max_buffered_bytes`): how many bytes of
//! frames being read (and of the last frame each link handed out, until it starts the next)
//! all links together may hold beyond a small allowance each.
//!
//! A link reading a frame larger than [`ALLOWANCE`] takes bytes from the budget before it makes
//! its buffer larger; when the budget is spent it stops reading (the kernel's receive window
//! then holds the sender back) until other links give bytes back, which they do when they start
//! their next frame, close, or are cut by `receive_timeout`. So a hundred senders each holding a
//! 15 MiB frame open cannot take more than the budget, while every connection keeps its
//! allowance: small messages never wait on the budget. Nothing is dropped, truncated or sent
//! on in part. Bytes are lent as permits of a fair (first come, first served) semaphore, so a
//! large frame that waits is not starved by later ones.
//!
//! Owns the count and its figures (bytes in use, waits, time waited); must not know routes,
//! connections or metrics exposition (the metrics read [`Budget::figures`] when scraped).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// What every link may hold without the budget: a message of this size (and the first part of
/// any larger one) is read at once whatever the budget's state, so small messages keep flowing
/// while large ones wait.
pub const ALLOWANCE: usize = 64 * 1024;

/// Default for `max_buffered_bytes` (256 MiB).
pub const DEFAULT_MAX_BUFFERED_BYTES: usize = 256 * 1024 * 1024;

/// The shared budget. Cheap to clone.
#[derive(Clone)]
pub struct Budget {
    inner: Arc<Inner>,
}

struct Inner {
    permits: Arc<Semaphore>,
    /// The configured size.
    limit: AtomicUsize,
    /// Bytes still to be taken out of circulation after the size was lowered.
    shrinking: AtomicUsize,
    waits: AtomicU64,
    waited_nanos: AtomicU64,
}

/// The budget's state, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Figures {
    pub limit: usize,
    pub in_use: usize,
    /// Reads that had to wait for bytes.
    pub waits: u64,
    pub waited: Duration,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Budget {
        Budget {
            inner: Arc::new(Inner {
                permits: Arc::new(Semaphore::new(limit.min(Semaphore::MAX_PERMITS))),
                limit: AtomicUsize::new(limit),
                shrinking: AtomicUsize::new(0),
                waits: AtomicU64::new(0),
                waited_nanos: AtomicU64::new(0),
            }),
        }
    }

    /// The process's budget (the default size until the config sets it).
    pub fn shared() -> &'static Budget {
        static SHARED: OnceLock<Budget> = OnceLock::new();
        SHARED.get_or_init(|| Budget::new(DEFAULT_MAX_BUFFERED_BYTES))
    }

    /// Resizes the budget (a reload): more room is there at once; less is taken out as links
    /// give bytes back, never from a link that holds them.
    pub fn set_limit(&self, limit: usize) {
        let limit = limit.min(Semaphore::MAX_PERMITS);
        let old = self.inner.limit.swap(limit, Ordering::AcqRel);
        if limit > old {
            self.inner.permits.add_permits(limit - old);
        } else if limit < old {
            let cut = old - limit;
            self.inner.shrinking.fetch_add(cut, Ordering::AcqRel);
            let inner = self.inner.clone();
            // Taken in pieces of at most u32::MAX bytes, each as soon as it is free.
            let take = async move {
                let mut left = cut;
                while left > 0 {
                    let piece = left.min(u32::MAX as usize);
                    match inner.permits.clone().acquire_many_owned(piece as u32).await {
                        Ok(permit) => permit.forget(),
                        Err(_) => return,
                    }
                    inner.shrinking.fetch_sub(piece, Ordering::AcqRel);
                    left -= piece;
                }
            };
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn(take);
                }
                // No runtime (a test, a tool): whatever is free now is taken now.
                Err(_) => {
                    let free = self.inner.permits.available_permits().min(cut);
                    self.inner.permits.forget_permits(free);
                    self.inner.shrinking.fetch_sub(free, Ordering::AcqRel);
                }
            }
        }
    }

    /// The semaphore links take bytes from.
    pub(crate) fn permits(&self) -> Arc<Semaphore> {
        self.inner.permits.clone()
    }

    /// A read starts waiting for bytes.
    fn wait_started(&self) {
        self.inner.waits.fetch_add(1, Ordering::Relaxed);
    }

    /// A read got its bytes after waiting for `waited`.
    fn waited(&self, waited: Duration) {
        let nanos = u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX);
        self.inner.waited_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    pub fn figures(&self) -> Figures {
        let limit = self.inner.limit.load(Ordering::Acquire);
        let free = self.inner.permits.available_permits();
        let shrinking = self.inner.shrinking.load(Ordering::Acquire);
        Figures {
            limit,
            // Until a shrink is complete, the bytes being taken out are still in circulation.
            in_use: (limit + shrinking).saturating_sub(free),
            waits: self.inner.waits.load(Ordering::Relaxed),
            waited: Duration::from_nanos(self.inner.waited_nanos.load(Ordering::Relaxed)),
        }
    }
}

/// What one link holds of the budget (the bytes beyond its allowance), and its place in line
/// while it waits for more.
pub(crate) struct Share {
    budget: Budget,
    line: tokio_util::sync::PollSemaphore,
    held: Option<OwnedSemaphorePermit>,
    /// Since when the current wait has lasted, if waiting.
    waiting_since: Option<std::time::Instant>,
}

impl Share {
    pub(crate) fn new(budget: Budget) -> Share {
        Share {
            line: tokio_util::sync::PollSemaphore::new(budget.permits()),
            budget,
            held: None,
            waiting_since: None,
        }
    }

    /// Bytes held beyond the allowance.
    pub(crate) fn held(&self) -> usize {
        self.held.as_ref().map_or(0, |p| p.num_permits())
    }

    /// Makes sure a buffer of `capacity` bytes is covered: ready at once when it is within the
    /// allowance and what is held, else when the missing bytes are lent. `Pending` (with the
    /// waker registered) while the budget is spent.
    pub(crate) fn poll_cover(
        &mut self,
        cx: &mut std::task::Context<'_>,
        capacity: usize,
    ) -> std::task::Poll<()> {
        use std::task::Poll;
        let wanted = capacity.saturating_sub(ALLOWANCE);
        let held = self.held();
        if wanted <= held {
            return Poll::Ready(());
        }
        let missing = u32::try_from(wanted - held).unwrap_or(u32::MAX);
        match self.line.poll_acquire_many(cx, missing) {
            Poll::Pending => {
                if self.waiting_since.is_none() {
                    self.waiting_since = Some(std::time::Instant::now());
                    self.budget.wait_started();
                }
                Poll::Pending
            }
            Poll::Ready(Some(permit)) => {
                if let Some(since) = self.waiting_since.take() {
                    self.budget.waited(since.elapsed());
                }
                match &mut self.held {
                    Some(held) => held.merge(permit),
                    None => self.held = Some(permit),
                }
                Poll::Ready(())
            }
            // The semaphore is never closed; were it, reading on unbudgeted is the safe side
            // of losing the connection.
            Poll::Ready(None) => Poll::Ready(()),
        }
    }

    /// Gives back everything held (the link starts a new frame with nothing buffered).
    pub(crate) fn release(&mut self) {
        self.held = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    #[tokio::test]
    async fn a_share_within_the_allowance_takes_nothing() {
        let budget = Budget::new(1024 * 1024);
        let mut share = Share::new(budget.clone());
        poll_fn(|cx| share.poll_cover(cx, ALLOWANCE)).await;
        assert_eq!(share.held(), 0);
        assert_eq!(budget.figures().in_use, 0);
    }

    #[tokio::test]
    async fn bytes_beyond_the_allowance_are_lent_and_given_back() {
        let budget = Budget::new(1024 * 1024);
        let mut share = Share::new(budget.clone());
        poll_fn(|cx| share.poll_cover(cx, ALLOWANCE + 1000)).await;
        assert_eq!(budget.figures().in_use, 1000);
        poll_fn(|cx| share.poll_cover(cx, ALLOWANCE + 3000)).await;
        assert_eq!(share.held(), 3000);
        assert_eq!(budget.figures().in_use, 3000);
        share.release();
        assert_eq!(budget.figures().in_use, 0);
    }

    #[tokio::test]
    async fn a_spent_budget_makes_a_reader_wait_until_another_gives_back() {
        let budget = Budget::new(10_000);
        let mut first = Share::new(budget.clone());
        poll_fn(|cx| first.poll_cover(cx, ALLOWANCE + 8_000)).await;
        let mut second = Share::new(budget.clone());
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        assert!(second.poll_cover(&mut cx, ALLOWANCE + 5_000).is_pending());
        // Small frames never wait.
        let mut small = Share::new(budget.clone());
        assert!(small.poll_cover(&mut cx, ALLOWANCE).is_ready());
        first.release();
        assert!(second.poll_cover(&mut cx, ALLOWANCE + 5_000).is_ready());
        let figures = budget.figures();
        assert_eq!(figures.in_use, 5_000);
        assert_eq!(figures.waits, 1);
    }

    #[tokio::test]
    async fn a_smaller_limit_is_taken_out_as_bytes_come_back() {
        let budget = Budget::new(10_000);
        let mut share = Share::new(budget.clone());
        poll_fn(|cx| share.poll_cover(cx, ALLOWANCE + 8_000)).await;
        budget.set_limit(4_000);
        share.release();
        // The cut happens in a task of its own.
        for _ in 0..100 {
            if budget.inner.permits.available_permits() == 4_000 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(budget.inner.permits.available_permits(), 4_000);
        let figures = budget.figures();
        assert_eq!((figures.limit, figures.in_use), (4_000, 0));
        budget.set_limit(6_000);
        assert_eq!(budget.inner.permits.available_permits(), 6_000);
    }
}
