//! Telling systemd how the service is doing (the `sd_notify` protocol of `Type=notify` units):
//! `READY=1` once every listener is bound and the config applied, `RELOADING=1` / `READY=1`
//! around a reload, `STOPPING=1` when draining starts, and `WATCHDOG=1` at half of
//! `$WATCHDOG_USEC` while the runtime is alive and nothing has panicked.
//!
//! A datagram to the socket named by `$NOTIFY_SOCKET` (a path, or `@name` in the abstract
//! namespace) per state; without that variable every call here does nothing. About 40 lines of
//! std's `UnixDatagram`, so no crate (sd-notify would bring the same code and a dependency).
//! Sending never blocks and a failure is only logged once: systemd's bookkeeping must not stop
//! the data path.
//!
//! Knows nothing of routes or sockets of the guard; the supervisor (`app.rs`) says when.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// The socket to write to and where systemd listens, when `$NOTIFY_SOCKET` is set.
fn target() -> Option<&'static (UnixDatagram, SocketAddr)> {
    static TARGET: OnceLock<Option<(UnixDatagram, SocketAddr)>> = OnceLock::new();
    TARGET
        .get_or_init(|| {
            let name = std::env::var_os("NOTIFY_SOCKET")?;
            let name = name.to_str()?;
            let addr = if let Some(abstract_name) = name.strip_prefix('@') {
                use std::os::linux::net::SocketAddrExt as _;
                SocketAddr::from_abstract_name(abstract_name.as_bytes())
            } else {
                SocketAddr::from_pathname(name)
            };
            let addr = match addr {
                Ok(addr) => addr,
                Err(err) => {
                    tracing::warn!(notify_socket = name, error = %err, "NOTIFY_SOCKET is not a usable socket address; systemd will not hear from the guard");
                    return None;
                }
            };
            let socket = UnixDatagram::unbound().ok()?;
            let _ = socket.set_nonblocking(true);
            Some((socket, addr))
        })
        .as_ref()
}

/// Sends one state (`READY=1`, `STATUS=...`; several separated by `\n`). Does nothing without
/// `$NOTIFY_SOCKET`.
pub fn notify(state: &str) {
    let Some((socket, addr)) = target() else {
        return;
    };
    if let Err(err) = socket.send_to_addr(state.as_bytes(), addr) {
        static WARNED: AtomicBool = AtomicBool::new(false);
        if !WARNED.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %err, "cannot notify systemd on NOTIFY_SOCKET (later failures are not logged)");
        }
    }
}

/// Every listener is bound and the config applied.
pub fn ready(routes: usize) {
    notify(&format!("READY=1\nSTATUS=serving {routes} route(s)"));
}

/// A reload starts; [`reloaded`] ends it. (No `MONOTONIC_USEC`: that is required only for
/// `Type=notify-reload`, where systemd sends the signal; our unit is `Type=notify` with
/// `ExecReload=kill -HUP`.)
pub fn reloading() {
    notify("RELOADING=1\nSTATUS=reloading the configuration");
}

/// A reload ended (applied or refused: the guard serves either way).
pub fn reloaded(applied: bool) {
    let status = if applied {
        "configuration reloaded"
    } else {
        "reload refused; the previous configuration stays in force"
    };
    notify(&format!("READY=1\nSTATUS={status}"));
}

/// Draining has started.
pub fn stopping() {
    notify("STOPPING=1\nSTATUS=draining: finishing in-flight messages");
}

/// How often to send `WATCHDOG=1`: half of `$WATCHDOG_USEC`, when it is set for this process
/// (`$WATCHDOG_PID` absent or ours) and `$NOTIFY_SOCKET` is too.
pub fn watchdog_interval() -> Option<Duration> {
    target()?;
    if let Some(pid) = std::env::var_os("WATCHDOG_PID") {
        if pid.to_str()?.trim().parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// Sends `WATCHDOG=1` every `every` until `stop`, from a task on the runtime: a stalled runtime
/// stops the pings, and so does a panic anywhere (liveness false), and systemd restarts the
/// service.
pub async fn watchdog(every: Duration, stop: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if crate::ops::metrics::live() {
            notify("WATCHDOG=1");
        }
    }
}
