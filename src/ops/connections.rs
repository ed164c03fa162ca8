//! The live sender connections, as the console shows them (`GET /api/v1/connections`) and closes
//! them (`DELETE /api/v1/connections/{id}`).
//!
//! Each session registers one [`Entry`] when it starts and drops its [`Registration`] when it
//! ends. The entry's counters belong to the session: it writes them with relaxed atomic stores
//! (no lock per message); the registry's lock is taken only when a connection opens or closes
//! and when the console reads the list. An entry carries two close handles: `close` (the session
//! stops after the message in flight has its ack, as on shutdown) and `kill` (the connection is
//! dropped now). Ids are unique for the life of the process. Must not know how a session reads
//! or answers: it only holds what the session reports.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;

/// What a connection is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Between messages.
    Idle = 0,
    /// Part of a frame has arrived.
    Receiving = 1,
    /// A message is being delivered; its ack is not written yet.
    AwaitingAck = 2,
}

impl State {
    /// The name the API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Idle => "idle",
            State::Receiving => "receiving",
            State::AwaitingAck => "awaiting_ack",
        }
    }

    fn from_u8(v: u8) -> State {
        match v {
            1 => State::Receiving,
            2 => State::AwaitingAck,
            _ => State::Idle,
        }
    }
}

/// The negotiated TLS of a connection.
#[derive(Clone, Debug)]
pub struct TlsInfo {
    pub version: String,
    pub cipher: String,
}

/// One live connection: what is fixed at its start, the counters its session writes, and its
/// close handles.
#[derive(Debug)]
pub struct Entry {
    pub id: u64,
    pub route: Arc<str>,
    pub peer: SocketAddr,
    pub identity: Option<String>,
    pub tls: Option<TlsInfo>,
    /// Milliseconds since the Unix epoch.
    pub since_ms: u64,
    messages: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    last_activity_ms: AtomicU64,
    state: AtomicU8,
    /// Close after the message in flight has its ack (the session treats it like a shutdown).
    pub close: CancellationToken,
    /// Close now.
    pub kill: CancellationToken,
}

/// A snapshot of one entry, for the API and the status page.
#[derive(Clone, Debug, serde::Serialize)]
pub struct View {
    pub id: String,
    pub route: String,
    pub peer: String,
    pub identity: Option<String>,
    pub tls: Option<serde_json::Value>,
    pub since: String,
    pub messages: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub last_activity: String,
    pub state: &'static str,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// RFC 3339 (UTC, milliseconds) of a Unix time in milliseconds.
pub fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + std::time::Duration::from_millis(ms)).to_string()
}

impl Entry {
    /// The session read `n` bytes from its sender.
    pub fn read(&self, n: usize) {
        self.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
        self.last_activity_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// The session is writing an answer of `n` bytes (one message done).
    pub fn answered(&self, n: usize) {
        self.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
        self.last_activity_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// One more message (either direction).
    pub fn message(&self) {
        self.messages.fetch_add(1, Ordering::Relaxed);
    }

    pub fn set_state(&self, state: State) {
        self.state.store(state as u8, Ordering::Relaxed);
    }

    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// Whether the operator asked this connection to close.
    pub fn close_requested(&self) -> bool {
        self.close.is_cancelled() || self.kill.is_cancelled()
    }

    pub fn view(&self) -> View {
        View {
            id: self.id.to_string(),
            route: self.route.to_string(),
            peer: self.peer.to_string(),
            identity: self.identity.clone(),
            tls: self
                .tls
                .as_ref()
                .map(|t| serde_json::json!({ "version": t.version, "cipher": t.cipher })),
            since: rfc3339(self.since_ms),
            messages: self.messages.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            last_activity: rfc3339(self.last_activity_ms.load(Ordering::Relaxed)),
            state: self.state().as_str(),
        }
    }
}

/// Keeps an entry listed while it lives.
pub struct Registration(Arc<Entry>);

impl Registration {
    pub fn entry(&self) -> &Arc<Entry> {
        &self.0
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        live()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.0.id);
    }
}

fn live() -> &'static Mutex<BTreeMap<u64, Arc<Entry>>> {
    static LIVE: OnceLock<Mutex<BTreeMap<u64, Arc<Entry>>>> = OnceLock::new();
    LIVE.get_or_init(Mutex::default)
}

/// Lists a new connection. `close` is the session's stop token (a child of the guard's
/// shutdown): cancelling it ends the session after the message in flight.
pub fn register(
    route: Arc<str>,
    peer: SocketAddr,
    identity: Option<String>,
    tls: Option<TlsInfo>,
    close: CancellationToken,
) -> Registration {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let now = now_ms();
    let entry = Arc::new(Entry {
        id: NEXT.fetch_add(1, Ordering::Relaxed),
        route,
        peer,
        identity,
        tls,
        since_ms: now,
        messages: AtomicU64::new(0),
        bytes_in: AtomicU64::new(0),
        bytes_out: AtomicU64::new(0),
        last_activity_ms: AtomicU64::new(now),
        state: AtomicU8::new(State::Idle as u8),
        close,
        kill: CancellationToken::new(),
    });
    live()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(entry.id, entry.clone());
    Registration(entry)
}

/// The live connections, oldest first (of one route when `route` is given).
pub fn list(route: Option<&str>) -> Vec<View> {
    let entries: Vec<Arc<Entry>> = live()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .filter(|e| route.is_none_or(|r| &*e.route == r))
        .cloned()
        .collect();
    entries.iter().map(|e| e.view()).collect()
}

/// How many connections a route has open now.
pub fn count(route: &str) -> usize {
    live()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .filter(|e| &*e.route == route)
        .count()
}

/// Asks connection `id` to close (`now`: at once; else after its message in flight). Returns
/// its route and peer, or `None` for an unknown id.
pub fn close(id: &str, now: bool) -> Option<(Arc<str>, SocketAddr)> {
    let id: u64 = id.parse().ok()?;
    let entry = live()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&id)
        .cloned()?;
    if now {
        entry.kill.cancel();
    }
    entry.close.cancel();
    Some((entry.route.clone(), entry.peer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_entries_leave_when_their_session_ends() {
        let peer: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let a = register("t-reg".into(), peer, None, None, CancellationToken::new());
        let b = register("t-reg".into(), peer, None, None, CancellationToken::new());
        assert_ne!(a.entry().id, b.entry().id);
        a.entry().read(10);
        a.entry().message();
        a.entry().set_state(State::AwaitingAck);
        let views = list(Some("t-reg"));
        assert_eq!(views.len(), 2);
        assert_eq!(views[0].bytes_in, 10);
        assert_eq!(views[0].messages, 1);
        assert_eq!(views[0].state, "awaiting_ack");
        let id = b.entry().id.to_string();
        assert!(close(&id, false).is_some());
        assert!(b.entry().close.is_cancelled() && !b.entry().kill.is_cancelled());
        drop(b);
        assert!(close(&id, true).is_none());
        assert_eq!(count("t-reg"), 1);
    }

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }
}
