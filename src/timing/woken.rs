//! [`Woken`]: a future that is rarely ready (a shutdown, an operator's "close now"), waited for
//! beside a connection's busy ones, and polled again only after it has woken its task.
//!
//! Why (issue 22): a connection's task is woken a few times per message, and each wake-up
//! polled its cancellation tokens' futures again: a lock of the token's tree node and of its
//! `Notify`'s waiter list each time, ~180 instructions per poll and about 2% of the guard's CPU
//! at 64 connections (callgrind, perf). Wrapped, the future is given a waker of its own that
//! raises a flag before waking the task; until the flag is up, a poll only notes the task to
//! wake and loads the flag. The price is one small allocation per wrapped future. Must not know
//! what the inner future waits for.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

pin_project_lite::pin_project! {
    /// `inner`, polled on its first poll and then only after it has woken its task.
    pub struct Woken<F> {
        #[pin]
        inner: F,
        // What `inner`'s waker raises; it holds the waker of the task that polled last.
        signal: Arc<Signal>,
        polled: bool,
    }
}

/// What `inner`'s waker does: raise the flag, then wake the task that last polled.
struct Signal {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Raised before the task is woken: the poll that follows sees it.
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<F: Future> Woken<F> {
    pub fn new(inner: F) -> Woken<F> {
        Woken {
            inner,
            signal: Arc::new(Signal {
                woken: AtomicBool::new(false),
                task: AtomicWaker::new(),
            }),
            polled: false,
        }
    }
}

impl<F: Future> Future for Woken<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        // The task to wake is the one polling now (a no-op when it is the same as last time).
        // `inner` itself registered the signal, whichever task polled it: it need not be
        // polled again for a new task.
        this.signal.task.register(cx.waker());
        if *this.polled && !this.signal.woken.load(Ordering::Acquire) {
            return Poll::Pending;
        }
        *this.polled = true;
        // Lowered before the poll: a wake-up during it raises it again for the next one.
        this.signal.woken.store(false, Ordering::Release);
        let waker = Waker::from(this.signal.clone());
        this.inner.poll(&mut Context::from_waker(&waker))
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};

    use tokio_util::sync::CancellationToken;

    use super::Woken;

    /// A waker that counts its wake-ups.
    #[derive(Default)]
    struct Counting(AtomicUsize);

    impl Wake for Counting {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A future that counts its polls and is ready once `ready` is cancelled.
    struct Polls<'a> {
        polls: &'a AtomicUsize,
        ready: Pin<Box<tokio_util::sync::WaitForCancellationFuture<'a>>>,
    }

    use std::pin::Pin;

    impl Future for Polls<'_> {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            self.ready.as_mut().poll(cx)
        }
    }

    #[test]
    fn polled_again_only_after_it_woke_its_task_and_then_ready() {
        let token = CancellationToken::new();
        let polls = AtomicUsize::new(0);
        let task = Arc::new(Counting::default());
        let waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&waker);
        let mut woken = pin!(Woken::new(Polls {
            polls: &polls,
            ready: Box::pin(token.cancelled()),
        }));
        for _ in 0..5 {
            assert!(woken.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(
            polls.load(Ordering::SeqCst),
            1,
            "polled once, then not until woken"
        );
        token.cancel();
        assert_eq!(task.0.load(Ordering::SeqCst), 1, "the task was woken");
        assert_eq!(woken.as_mut().poll(&mut cx), Poll::Ready(()));
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn polled_from_another_task_the_cancel_wakes_that_task() {
        let token = CancellationToken::new();
        let polls = AtomicUsize::new(0);
        let (first, second) = (Arc::new(Counting::default()), Arc::new(Counting::default()));
        let mut woken = pin!(Woken::new(Polls {
            polls: &polls,
            ready: Box::pin(token.cancelled()),
        }));
        let waker = Waker::from(first.clone());
        assert!(woken
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending());
        let waker = Waker::from(second.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(woken.as_mut().poll(&mut cx).is_pending());
        assert_eq!(
            polls.load(Ordering::SeqCst),
            1,
            "the inner future waits as it was"
        );
        token.cancel();
        assert_eq!(first.0.load(Ordering::SeqCst), 0);
        assert_eq!(second.0.load(Ordering::SeqCst), 1);
        assert_eq!(woken.as_mut().poll(&mut cx), Poll::Ready(()));
    }

    #[tokio::test]
    async fn a_task_waiting_on_it_beside_other_work_is_woken_by_the_cancel() {
        let token = CancellationToken::new();
        let waiting = {
            let token = token.clone();
            tokio::spawn(async move {
                let mut stop = pin!(Woken::new(token.cancelled()));
                let mut ticks = 0u32;
                loop {
                    tokio::select! {
                        _ = &mut stop => return ticks,
                        _ = tokio::time::sleep(std::time::Duration::from_millis(1)) => ticks += 1,
                    }
                }
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        assert!(!waiting.is_finished());
        token.cancel();
        let ticks = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("woken by the cancel")
            .unwrap();
        assert!(ticks > 0, "the other branch ran meanwhile");
    }
}
