//! The connection workers: one single-threaded async runtime per CPU the guard may use, each on
//! a thread of its own, where sender connections are served (the shipped runtime shape,
//! `MLLP_GUARD_RUNTIME=per-core`).
//!
//! Why (issue 22): on tokio's work-stealing runtime a connection's task, the readiness of its
//! socket and its upstream leg move between threads, and each message paid cross-thread
//! wake-ups (futex calls, an idle worker woken to steal) and cold caches. Here a connection is
//! placed once, on the worker serving the fewest connections, and everything it starts (its
//! upstream connection, its timers, its two-way side channel) stays on that thread, the way an
//! nginx worker keeps a connection. BENCHMARKS.md has the figures.
//!
//! The rest of the guard (accept loops, the admin server, custody's drainers and commit
//! threads, reloads) stays on the main runtime; a placed connection talks to it through the
//! same `Send` handles as before. Owns the worker threads and the choice of worker. Must not
//! know what serving a connection means.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio_util::task::TaskTracker;

/// Where connections are placed, once the workers run. Process-wide, like tokio's own current
/// runtime: the accept loops of every route (and of every reload) share the same workers.
static PLACES: OnceLock<Vec<Place>> = OnceLock::new();

/// One worker as the accept loops see it: where to spawn, and how many connections it serves.
struct Place {
    handle: Handle,
    serving: Arc<AtomicUsize>,
}

/// The running workers, owned by `main`: dropping them stops their threads (after the main
/// runtime has drained what it waits for).
pub struct Workers {
    threads: Vec<(oneshot::Sender<()>, JoinHandle<()>)>,
}

/// Starts `count` workers (at least one) and places every sender connection accepted from now
/// on among them. Fails if a thread or a runtime cannot be made, or if workers already run.
pub fn start(count: usize) -> io::Result<Workers> {
    let mut places = Vec::new();
    let mut threads = Vec::new();
    for index in 0..count.max(1) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("mllp-worker-{index}"))
            .spawn(move || {
                // A current-thread runtime runs its tasks only inside `block_on`: this thread
                // stays in it until the guard stops, then drops what is left.
                runtime.block_on(async move {
                    let _ = stopped.await;
                });
                runtime.shutdown_timeout(Duration::from_millis(100));
            })?;
        places.push(Place {
            handle,
            serving: Arc::new(AtomicUsize::new(0)),
        });
        threads.push((stop, thread));
    }
    let workers = Workers { threads };
    PLACES
        .set(places)
        .map_err(|_| io::Error::other("connection workers are already running"))?;
    Ok(workers)
}

impl Drop for Workers {
    fn drop(&mut self) {
        for (stop, thread) in self.threads.drain(..) {
            let _ = stop.send(());
            let _ = thread.join();
        }
    }
}

/// Serves an accepted connection: on the least busy worker when workers run (the socket moves
/// to that worker's reactor first, so its readiness wakes that thread alone), else in the
/// current runtime. Either way the task is tracked by `tracker`, so a drain waits for it.
///
/// `serve` builds the connection's future from the socket on the thread that will run it;
/// `peer` (the accepted address) names the connection in the rare line that says it was lost.
pub fn place<F, Fut>(tracker: &TaskTracker, tcp: TcpStream, peer: SocketAddr, serve: F)
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(place) = PLACES.get().and_then(|places| least_busy(places)) else {
        tracker.spawn(serve(tcp));
        return;
    };
    // Leaves this runtime's reactor (the socket stays open and non-blocking) ...
    let socket = match tcp.into_std() {
        Ok(socket) => socket,
        Err(err) => {
            tracing::warn!(%peer, error = %err, "could not hand an accepted connection to a worker; closed");
            return;
        }
    };
    let serving = Serving::count(&place.serving);
    tracker.spawn_on(
        async move {
            let _serving = serving;
            // ... and joins the worker's, from inside it.
            match TcpStream::from_std(socket) {
                Ok(tcp) => serve(tcp).await,
                Err(err) => {
                    tracing::warn!(%peer, error = %err, "a worker could not take an accepted connection; closed");
                }
            }
        },
        &place.handle,
    );
}

/// The worker serving the fewest connections (the first of equals).
fn least_busy(places: &[Place]) -> Option<&Place> {
    places
        .iter()
        .min_by_key(|p| p.serving.load(Ordering::Relaxed))
}

/// One connection counted on its worker while it lives (also when its task is dropped
/// unfinished).
struct Serving(Arc<AtomicUsize>);

impl Serving {
    fn count(serving: &Arc<AtomicUsize>) -> Self {
        serving.fetch_add(1, Ordering::Relaxed);
        Serving(serving.clone())
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place_with(serving: usize) -> Place {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        Place {
            handle: rt.handle().clone(),
            serving: Arc::new(AtomicUsize::new(serving)),
        }
    }

    #[test]
    fn the_least_busy_worker_is_chosen_first_of_equals() {
        let places = vec![place_with(3), place_with(1), place_with(1)];
        let chosen = least_busy(&places).expect("a worker");
        assert!(Arc::ptr_eq(&chosen.serving, &places[1].serving));
        assert!(least_busy(&[]).is_none());
    }

    #[test]
    fn a_connection_counts_on_its_worker_until_it_ends() {
        let serving = Arc::new(AtomicUsize::new(0));
        let one = Serving::count(&serving);
        let two = Serving::count(&serving);
        assert_eq!(serving.load(Ordering::Relaxed), 2);
        drop(one);
        assert_eq!(serving.load(Ordering::Relaxed), 1);
        drop(two);
        assert_eq!(serving.load(Ordering::Relaxed), 0);
    }
}
