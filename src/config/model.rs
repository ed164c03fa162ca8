//! The validated configuration: what the rest of the guard reads. [`Config`] and everything it
//! holds (routes, their sender and receiver sides, delivery and custody, firewall limits, TLS),
//! with the defaults of every optional key.
//!
//! Plain data with its documentation (each field names its YAML key); built only by the
//! validator. Knows nothing of YAML, the raw mirror, parsing or error reporting.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::ServerName;

use crate::firewall::policy::Allowlist;
use crate::firewall::rules::Rule;
use crate::tls;
use crate::wire::codec::Framing;

/// Default for `shutdown_grace`.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Default for `routes[].max_connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
/// Default for `routes[].max_message_bytes` (16 MiB).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 * MIB;
/// Default for `routes[].receive_timeout`.
pub const DEFAULT_RECEIVE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default for `routes[].handshake_timeout`.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// `send_timeout`: a sender that does not read its acks is closed after this. Default 30s.
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Default for `routes[].upstream.connect_timeout`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default for `routes[].upstream.ack_timeout`.
pub const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(30);
/// Default for `routes[].upstream.max_ack_bytes` (1 MiB).
pub const DEFAULT_MAX_ACK_BYTES: usize = MIB;
/// Default for `routes[].queue.max_bytes` (1 GiB).
pub const DEFAULT_QUEUE_MAX_BYTES: u64 = 1 << 30;
/// Default for `routes[].queue.max_messages`.
pub const DEFAULT_QUEUE_MAX_MESSAGES: u64 = 1_000_000;
/// Default for `routes[].queue.segment_bytes` (64 MiB).
pub const DEFAULT_QUEUE_SEGMENT_BYTES: u64 = 64 << 20;
/// Default for `routes[].ack_mode`.
pub const DEFAULT_ACK_MODE: AckMode = AckMode::Msh15;
/// Default for `routes[].retry.initial`.
pub const DEFAULT_RETRY_INITIAL: Duration = Duration::from_secs(1);
/// Default for `routes[].retry.max`.
pub const DEFAULT_RETRY_MAX: Duration = Duration::from_secs(180);
/// Default for `routes[].on_reply.AE`.
pub const DEFAULT_ON_REPLY_AE: ReplyAction = ReplyAction::Retry;
/// Default for `routes[].on_reply.AR`.
pub const DEFAULT_ON_REPLY_AR: ReplyAction = ReplyAction::DeadLetter;
/// Default for `routes[].duplicate_window`.
pub const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(10 * 60);
/// Default for `routes[].limits.max_tracked_sources`.
pub const DEFAULT_MAX_TRACKED_SOURCES: usize = 100_000;

/// Byte units of the defaults above and of the validator's bounds.
pub(super) const KIB: usize = 1024;
pub(super) const MIB: usize = 1024 * KIB;
pub(super) const GIB: usize = 1024 * MIB;

/// The whole validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The config file as given on the command line (for messages and reloads).
    pub file: PathBuf,
    /// The routes, in file order. At least one.
    pub routes: Vec<Route>,
    /// `shutdown_grace`: how long in-flight messages may take to finish after SIGTERM/SIGINT
    /// before the process exits anyway. Default 10s.
    pub shutdown_grace: Duration,
    /// `state_dir`: where durable state lives, one queue directory per store-and-forward route
    /// under it. Resolved (a relative path from the config file's directory); not checked or
    /// created here. Required when any route has `delivery: store-and-forward`.
    pub state_dir: Option<PathBuf>,
    /// `upstreams`: named upstreams that rules can send messages to (`action: { route: name }`),
    /// by name (1 to 63 characters of `a-z`, `0-9`, `-`). Each takes the keys of a route's
    /// `upstream`. Empty when the key is absent.
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// `admin`: the HTTP endpoint for `/metrics`, `/healthz` and `/readyz`; `None` = off.
    pub admin: Option<Admin>,
    /// `log_payloads`: write message bodies to the log, at trace level on target
    /// `mllp_guard::payload` only. Default false; meant for a lab, never for production.
    pub log_payloads: bool,
    /// `max_buffered_bytes`: the memory budget for message bytes of all connections together
    /// (frames being read and the last frame of each connection until it is answered), beyond
    /// a 64 KiB allowance per connection that small messages never wait on. When it is spent,
    /// the guard stops reading large frames until bytes come back (TCP holds the senders back);
    /// nothing is dropped. Default 256 MiB; at least every route's `max_message_bytes`.
    pub max_buffered_bytes: usize,
    /// `notify`: webhooks told about events (connections, upstream transitions, backlog, dead
    /// letters, certificates, reloads). No webhooks when the key is absent.
    pub notify: Notify,
    /// `audit`: where the audit trail goes (a JSON-lines file, or stderr when absent).
    pub audit: Audit,
    /// Every file this config was read from: the config file itself, rules files, certificates
    /// and keys (absolute where the config file's directory is). A change to any of them
    /// reloads the config.
    pub inputs: Vec<PathBuf>,
}

/// `audit:`: `file`, the audit trail as JSON lines in this file instead of stderr (absolute, or
/// resolved from the config file's directory; reopened on SIGHUP). `None`: stderr.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Audit {
    pub file: Option<PathBuf>,
}

/// `admin`: where the operator's HTTP endpoint listens, and who may change things through it.
#[derive(Clone, Debug)]
pub struct Admin {
    /// `listen`: an IP address and port, e.g. `127.0.0.1:9102`. It serves no patient data, but
    /// keep it off untrusted networks.
    pub listen: SocketAddr,
    /// `token_file`: a file holding one bearer token (its first line), read again on every
    /// reload. Requests that change state need `Authorization: Bearer <token>`; without
    /// `token_file` they are refused (403: a read-only console).
    pub token: Option<AdminToken>,
    /// Where `token` was read from (for `check --print`).
    pub token_file: Option<PathBuf>,
    /// `protect_reads`: the read endpoints (`/metrics`, `/healthz`, `/readyz`, `GET /`,
    /// `GET /api/v1/...`) need the token too. Default false.
    pub protect_reads: bool,
    /// `allowed_hosts`: `Host` header names accepted besides the listen address and
    /// `localhost` (a request naming any other host is refused: DNS rebinding).
    pub allowed_hosts: Vec<String>,
    /// `tls`: serve the admin endpoint over TLS (`cert`, `key`, optional `client_ca`).
    pub tls: Option<ServerTls>,
}

/// The admin bearer token: never shown by `Debug` (nor logged).
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(pub String);

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AdminToken(<{} bytes>)", self.0.len())
    }
}

/// `notify:`: the webhooks and the thresholds of the events that have them.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Notify {
    /// `webhooks`: each one is POSTed the events it names, from its own bounded queue.
    pub webhooks: Vec<Webhook>,
    /// `queue_backlog`: when a route's custody queue is backed up enough for `queue_backlog`.
    pub queue_backlog: QueueBacklog,
    /// `certificate_expiring.within`: how long before a certificate's `notAfter`
    /// `certificate_expiring` fires (and again each day). Default 30 days.
    pub certificate_expiring_within: Duration,
}

/// Default of `notify.certificate_expiring.within`.
pub const DEFAULT_CERTIFICATE_EXPIRING_WITHIN: Duration = Duration::from_secs(30 * 24 * 3600);
/// Default of a webhook's `timeout`.
pub const DEFAULT_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);
/// Default of a webhook's `max_pending`.
pub const DEFAULT_WEBHOOK_MAX_PENDING: usize = 1000;

/// `notify.queue_backlog`: `queue_backlog` fires when a route's queue holds `pending` messages
/// or more, or its oldest message waited `oldest` or longer (whichever is set), once per
/// crossing; it fires again after the queue went back under both.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct QueueBacklog {
    pub pending: Option<u64>,
    pub oldest: Option<Duration>,
}

/// One `notify.webhooks` entry. `Debug` shows neither header values nor the URL's query
/// (either may hold a token).
#[derive(Clone, PartialEq, Eq)]
pub struct Webhook {
    /// `url`: `http://` or `https://`, host, optional port and path.
    pub url: hyper::Uri,
    /// `events`: what is sent (all of them when the key is absent).
    pub events: Vec<NotifyEvent>,
    /// `secret_file`: the HMAC-SHA256 key of `X-Mllp-Guard-Signature` (the file's bytes, a
    /// trailing line break removed).
    pub secret: Option<Secret>,
    /// Where `secret` was read from (for `check --print`).
    pub secret_file: Option<PathBuf>,
    /// `timeout`: one delivery attempt (connect, TLS, request, response). Default 5s.
    pub timeout: Duration,
    /// `headers`: extra request headers (e.g. `Authorization`), name and value as written.
    pub headers: Vec<(String, String)>,
    /// `ca`: the CAs trusted for an `https` URL instead of the system's roots.
    pub ca: Option<PathBuf>,
    /// `max_pending`: events waiting for this webhook; more are dropped (counted, logged).
    /// Default 1000.
    pub max_pending: usize,
}

impl fmt::Debug for Webhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("Webhook")
            .field(
                "url",
                &format_args!(
                    "{}{}",
                    self.url.authority().map_or("", |a| a.host()),
                    self.url.path()
                ),
            )
            .field("events", &self.events)
            .field("secret", &self.secret)
            .field("secret_file", &self.secret_file)
            .field("timeout", &self.timeout)
            .field("headers", &names)
            .field("ca", &self.ca)
            .field("max_pending", &self.max_pending)
            .finish()
    }
}

/// A webhook's signing key: never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(<{} bytes>)", self.0.len())
    }
}

/// What a webhook can be told (`notify.webhooks[].events`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum NotifyEvent {
    ConnectionOpened,
    ConnectionClosed,
    ConnectionRefused,
    UpstreamDown,
    UpstreamUp,
    QueueBacklog,
    DeadLetter,
    CertificateExpiring,
    ConfigReloaded,
    ConfigRejected,
}

impl NotifyEvent {
    pub const ALL: [NotifyEvent; 10] = [
        NotifyEvent::ConnectionOpened,
        NotifyEvent::ConnectionClosed,
        NotifyEvent::ConnectionRefused,
        NotifyEvent::UpstreamDown,
        NotifyEvent::UpstreamUp,
        NotifyEvent::QueueBacklog,
        NotifyEvent::DeadLetter,
        NotifyEvent::CertificateExpiring,
        NotifyEvent::ConfigReloaded,
        NotifyEvent::ConfigRejected,
    ];

    /// The name in the config and in the JSON body's `event`.
    pub fn as_str(self) -> &'static str {
        match self {
            NotifyEvent::ConnectionOpened => "connection_opened",
            NotifyEvent::ConnectionClosed => "connection_closed",
            NotifyEvent::ConnectionRefused => "connection_refused",
            NotifyEvent::UpstreamDown => "upstream_down",
            NotifyEvent::UpstreamUp => "upstream_up",
            NotifyEvent::QueueBacklog => "queue_backlog",
            NotifyEvent::DeadLetter => "dead_letter",
            NotifyEvent::CertificateExpiring => "certificate_expiring",
            NotifyEvent::ConfigReloaded => "config_reloaded",
            NotifyEvent::ConfigRejected => "config_rejected",
        }
    }

    /// One bit per event, for a quick "does anyone want this" check.
    pub fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

/// One listener with its policy and its upstream.
/// `proxy_protocol:` of a route: which headers to read, and from whom.
#[derive(Clone, Debug)]
pub struct TrustedProxies {
    /// `accept`: `v1`, `v2` or `any` (either, told apart by the first byte). Default `any`.
    pub accept: crate::net::proxy_protocol::Accept,
    /// `from`: the balancers (CIDRs or IPs, required, never `any`). A connection from any other
    /// peer is refused before a byte is read: anyone else could claim any address.
    pub from: Allowlist,
}

#[derive(Clone, Debug)]
pub struct Route {
    /// `name`: unique among routes; 1 to 63 characters of `a-z`, `0-9`, `-`.
    pub name: String,
    /// `listen` or `dial`: whether we wait for the sender or connect out to it.
    pub sender: SenderRole,
    /// `transparent`: accept connections redirected by TPROXY (IP_TRANSPARENT on the listener;
    /// Linux, CAP_NET_ADMIN); the original destination is the connection's local address.
    /// Default false.
    pub transparent: bool,
    /// `proxy_protocol: { accept, from }`: connections come through load balancers that put a
    /// PROXY protocol header first; the client it names is the peer for allowlists, limits,
    /// rules and logs. `None` (default) = off.
    pub proxy_protocol: Option<TrustedProxies>,
    /// `tls`: terminate TLS on this listener; `None` = plaintext.
    pub tls: Option<ServerTls>,
    /// `allow`: who may connect, checked on the peer address before any byte is read.
    pub allow: Allowlist,
    /// `max_connections`: concurrent sender connections; more are refused. Default 256, >= 1.
    pub max_connections: usize,
    /// `max_message_bytes`: the largest message (frame payload) in bytes. Default 16 MiB,
    /// between 1 KiB and 1 GiB.
    pub max_message_bytes: usize,
    /// `receive_timeout`: a frame that has started must be complete within this. Default 30s.
    pub receive_timeout: Duration,
    /// `idle_timeout`: close a sender that sent nothing for this long; `None` (written `0s`,
    /// the default) = never.
    pub idle_timeout: Option<Duration>,
    /// `handshake_timeout`: the TLS handshake must finish within this. Default 10s.
    pub handshake_timeout: Duration,
    /// `on_upstream_failure`: what the sender gets when the upstream fails. Default `nack`.
    pub on_upstream_failure: OnUpstreamFailure,
    /// `upstream`: where messages are forwarded.
    pub upstream: UpstreamConfig,
    /// `delivery`: `forward` (the default: each message is relayed while the sender waits) or
    /// `store-and-forward` (custody: queued durably, acked by the guard, delivered later).
    pub delivery: Delivery,
    /// `framing.start` and `framing.end`: the bytes that frame messages on the sender side.
    /// Default [`Framing::MLLP`] (`0x0B`, `[0x1C, 0x0D]`).
    pub framing: Framing,
    /// `framing.release`: the MLLP release spoken with the sender. Default [`MllpRelease::One`].
    pub release: MllpRelease,
    /// `framing.commit_timeout`: release 2, how long each send of an ack to the sender waits
    /// for its commit block before sending it again. `None`: the upstream's `ack_timeout / 4`
    /// (see [`Route::commit_timeout`]).
    pub commit_timeout: Option<Duration>,
    /// `rules`: the firewall rules, in order (written inline, or in a YAML file named by path);
    /// the first match decides, and no match (or no rules) allows. See [`crate::firewall::rules`].
    pub rules: Vec<Rule>,
    /// `limits`: per-source rate limits and caps (all off by default). `limits.handshake_timeout`
    /// sets [`Route::handshake_timeout`].
    pub limits: RateLimits,
    /// `multiple_messages`: a frame that holds more than one MSH outside an FHS/BHS batch is
    /// refused with AR (`refuse`, the default), or each of its messages is checked by the rules
    /// and audited and the frame is refused if any is (`inspect`).
    pub multiple_messages: MultipleMessages,
    /// `batches`: a frame that is a batch (FHS/BHS) has each of its messages checked by the
    /// rules, counted by the limits and audited, and is refused whole if any is (`inspect`, the
    /// default); or is refused with AR (`refuse`).
    pub batches: Batches,
    /// `send_timeout`: writing an answer to the sender must finish within this; a sender that
    /// does not read its acks (the kernel's buffers full) is closed. Default 30s.
    pub send_timeout: Duration,
    /// `socket`: options of every sender-side socket (accepted or dialed). Defaults: the
    /// kernel's buffer sizes and linger, TCP_NODELAY on.
    pub socket: SocketOptions,
}

/// Who opens the connection on the sender side (exactly one of `listen` and `dial`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SenderRole {
    /// `listen`: the address to bind; senders connect to us. Port 0 asks the OS for a free
    /// port (tests).
    Listen(SocketAddr),
    /// `dial`: the sender is itself an MLLP server; we keep one connection open to it,
    /// reconnecting with the upstream's `reconnect` backoff when it drops.
    Dial(UpstreamAddress),
}

impl fmt::Display for SenderRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SenderRole::Listen(addr) => write!(f, "listen {addr}"),
            SenderRole::Dial(addr) => write!(f, "dial {addr}"),
        }
    }
}

impl SenderRole {
    /// The address we listen on, if this route listens.
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        match self {
            SenderRole::Listen(addr) => Some(*addr),
            SenderRole::Dial(_) => None,
        }
    }
}

/// Who opens the connection on the receiver side (exactly one of `address` and `accept`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReceiverRole {
    /// `address`: we connect to the receiver.
    Connect(UpstreamAddress),
    /// `address: original-destination`: on a `transparent` route, each sender's connection is
    /// relayed to where it was going before TPROXY redirected it (paired connections, forward
    /// delivery).
    OriginalDestination,
    /// `accept`: the receiver connects in to this address and we send over its connections;
    /// messages wait (forward mode: up to `connect_timeout`; custody: in the queue) until one
    /// is open. `allow` says which addresses may connect in.
    Accept {
        listen: SocketAddr,
        allow: Allowlist,
    },
}

impl fmt::Display for ReceiverRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReceiverRole::Connect(addr) => write!(f, "{addr}"),
            ReceiverRole::OriginalDestination => f.write_str("original-destination"),
            ReceiverRole::Accept { listen, .. } => write!(f, "accept on {listen}"),
        }
    }
}

impl ReceiverRole {
    /// The receiver's address, if we connect to it.
    pub fn address(&self) -> Option<&UpstreamAddress> {
        match self {
            ReceiverRole::Connect(addr) => Some(addr),
            ReceiverRole::OriginalDestination | ReceiverRole::Accept { .. } => None,
        }
    }
}

/// `idle_reopen`: what follows an `idle_reconnect` close.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IdleReopen {
    /// `on-demand` (the default): the next message opens a new connection.
    #[default]
    OnDemand,
    /// `at-once`: a new connection is opened straight away, so the next message does not
    /// wait for a connect.
    AtOnce,
}

/// `framing.release`: which MLLP release a side speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MllpRelease {
    /// `1`: MLLP release 1, frames only; acknowledgement is the HL7 ack message. The default.
    #[default]
    One,
    /// `2`: MLLP release 2, each frame answered with a commit block (ACK `0x0B 0x06 0x1C 0x0D`
    /// or NAK `0x0B 0x15 0x1C 0x0D`); see [`crate::wire::commit`].
    Two,
}

/// `limits:` of a route: per-source rate limits and caps. Every limit is off unless given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimits {
    /// `messages_per_second`: the sustained message rate allowed per source address (IPv6
    /// sources keyed by their /64). `None` = no message rate limit.
    pub messages_per_second: Option<NonZeroU32>,
    /// `burst`: how many messages a source may send at once before the rate applies. Defaults
    /// to `messages_per_second`; `None` exactly when `messages_per_second` is.
    pub burst: Option<NonZeroU32>,
    /// `bytes_per_second`: payload bytes per second per source (a size: `10MiB`). `None` = off.
    pub bytes_per_second: Option<u64>,
    /// `connections_per_minute`: new connections per minute per source. `None` = off.
    pub connections_per_minute: Option<NonZeroU32>,
    /// `max_connections_per_source`: concurrent connections per source. Not set: three quarters
    /// of the route's `max_connections`, at least 8 (or `max_connections` when smaller); the
    /// validator fills it in, so a route's value is always `Some`. (`None` in a `RateLimits`
    /// built by hand: only `max_connections` applies.)
    pub max_connections_per_source: Option<usize>,
    /// `on_limit`: what happens to a source over its rate. Default `delay`.
    pub on_limit: OnLimit,
    /// `max_tracked_sources`: how many source addresses the limiters track at once (their
    /// memory bound). Default 100000, >= 1.
    pub max_tracked_sources: usize,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            messages_per_second: None,
            burst: None,
            bytes_per_second: None,
            connections_per_minute: None,
            max_connections_per_source: None,
            on_limit: OnLimit::Delay,
            max_tracked_sources: DEFAULT_MAX_TRACKED_SOURCES,
        }
    }
}

/// `limits.on_limit`: what a source over its message or byte rate gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnLimit {
    /// `delay`: stop reading from the connection until the rate allows (backpressure).
    Delay,
    /// `reject`: answer AE "rate limited"; the connection stays open.
    Reject,
}

/// How a route delivers messages to its upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// `forward`: relayed synchronously; the sender gets the upstream's ack.
    Forward,
    /// `store-and-forward`: the guard takes custody, acks itself and delivers later, in order.
    StoreAndForward(CustodyConfig),
}

/// The settings of a store-and-forward route (only read when `delivery: store-and-forward`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CustodyConfig {
    /// The route's queue directory: `<state_dir>/<route name>` (unique, since names are).
    pub queue_dir: PathBuf,
    /// `queue.max_bytes`: the queue refuses new messages beyond this many bytes. Default 1 GiB,
    /// at least 1 MiB and at least the route's `max_message_bytes`.
    pub max_bytes: u64,
    /// `queue.max_messages`: the queue refuses new messages beyond this many. Default
    /// 1000000, >= 1.
    pub max_messages: u64,
    /// `queue.segment_bytes`: the size of one log segment. Default 64 MiB, >= 1 MiB.
    pub segment_bytes: u64,
    /// `ack_mode`: which acks the sender gets. Default `msh15`.
    pub ack_mode: AckMode,
    /// `retry`: backoff of redeliveries to the upstream.
    pub retry: Retry,
    /// `on_reply`: what an AE or AR reply from the upstream does to a queued message.
    pub on_reply: OnReply,
    /// `duplicate_window`: how long a resent message (same MSH-3, MSH-4, MSH-10) is recognised
    /// and answered with the same ack instead of being queued again; `None` (written `0s`) =
    /// off. Default 10m.
    pub duplicate_window: Option<Duration>,
    /// `queue.backend`: where custody is kept. Default `embedded`.
    pub backend: QueueBackend,
    /// `queue.unready_when`: `/readyz` is unready while the queue is this backed up. `None`
    /// (default): the queue's depth never makes the guard unready.
    pub unready_when: Option<UnreadyWhen>,
    /// `queue.dead_letters`: the dead letters' own limits (the embedded dead-letter log, or the
    /// JetStream dead-letter stream), so that a receiver rejecting everything cannot fill the queue.
    pub dead_letters: DeadLetterLimits,
}

/// `queue.dead_letters: { max_messages, max_bytes }`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeadLetterLimits {
    /// Default 100000, >= 1.
    pub max_messages: u64,
    /// Default 256 MiB, at least 1 MiB and at least the route's `max_message_bytes`.
    pub max_bytes: u64,
}

/// Defaults of `queue.dead_letters`.
pub const DEFAULT_DEAD_LETTERS: DeadLetterLimits = DeadLetterLimits {
    max_messages: 100_000,
    max_bytes: 256 << 20,
};

/// `queue.unready_when: { pending, oldest }`: either threshold, or both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnreadyWhen {
    /// `pending`: this many messages or more waiting.
    pub pending: Option<u64>,
    /// `oldest`: the oldest waiting this long or more.
    pub oldest: Option<Duration>,
}

/// Defaults of `upstream.health_check`.
pub const DEFAULT_HEALTH_CHECK: HealthCheck = HealthCheck {
    interval: Duration::from_secs(10),
    timeout: Duration::from_secs(2),
};

/// `upstream.health_check: { interval, timeout }`: a TCP connect (and the TLS handshake when the
/// upstream is TLS) every `interval`, never an HL7 message, so that `/readyz` and
/// `mllp_guard_upstream_up` follow the receiver without waiting for a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    /// Default 10s.
    pub interval: Duration,
    /// Default 2s.
    pub timeout: Duration,
}

/// `queue.backend`: the store behind a store-and-forward route.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum QueueBackend {
    /// `embedded`: the segmented log in `<state_dir>/<route>` (the default).
    #[default]
    Embedded,
    /// `jetstream`: a replicated NATS JetStream stream shared by several guards.
    JetStream(Box<JetStreamQueue>),
}

/// Default for `queue.jetstream.replicas`.
pub const DEFAULT_JETSTREAM_REPLICAS: usize = 1;
/// Default for `queue.jetstream.duplicate_window` (the route's `duplicate_window` default).
pub const DEFAULT_JETSTREAM_DUPLICATE_WINDOW: Duration = DEFAULT_DUPLICATE_WINDOW;
/// Default for `queue.jetstream.takeover`.
pub const DEFAULT_JETSTREAM_TAKEOVER: Duration = Duration::from_secs(30);
/// Default for `queue.jetstream.publish_timeout`.
pub const DEFAULT_JETSTREAM_PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// `queue.jetstream`: custody on NATS JetStream (only with `queue.backend: jetstream`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JetStreamQueue {
    /// `servers`: NATS URLs (`nats://host:port`, `tls://host:port` or `host:port`); at least one.
    pub servers: Vec<String>,
    /// `stream`: the stream's name (letters, digits, `_`, `-`); created if missing.
    pub stream: String,
    /// `replicas`: the stream's replication factor, 1 to 5. Default 1.
    pub replicas: usize,
    /// `max_bytes`: the stream's size cap; beyond it publishes are refused (never dropped).
    /// Default `queue.max_bytes`.
    pub max_bytes: u64,
    /// `duplicate_window`: JetStream's dedup window for the message id built from MSH-3, MSH-4
    /// and MSH-10. Default 10m.
    pub duplicate_window: Duration,
    /// `tls`: CA and client certificate for the NATS connection.
    pub tls: Option<NatsTls>,
    /// `credentials`: a NATS credentials (`.creds`) file.
    pub credentials: Option<PathBuf>,
    /// `takeover`: how long a guard that stopped answering keeps its message before another
    /// guard takes over the route (the consumer's ack wait). Default 30s, at least 1s.
    pub takeover: Duration,
    /// `publish_timeout`: how long a publish may wait for JetStream's confirmation before the
    /// sender gets a negative ack. Default 5s.
    pub publish_timeout: Duration,
}

/// `queue.jetstream.tls`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatsTls {
    /// `ca`: CA certificates that sign the NATS servers' certificates.
    pub ca: Option<PathBuf>,
    /// `cert` and `key`: the guard's client certificate (both or neither).
    pub client: Option<(PathBuf, PathBuf)>,
}

/// `ack_mode`: which acks a store-and-forward route sends to the sender (HL7Connect's choices).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckMode {
    /// `always`: every message gets an ack.
    Always,
    /// `errors-only`: only negative acks are sent.
    ErrorsOnly,
    /// `never`: no ack is sent.
    Never,
    /// `msh15`: as the message's MSH-15 (accept acknowledgment type) asks; original mode when
    /// it is empty.
    Msh15,
    /// `ae-only`: only AE (CE in enhanced mode) acks are sent: the message could not be queued
    /// now (HL7Connect's "Errors").
    AeOnly,
    /// `ar-only`: only AR (CR) acks are sent: the message is refused for good (HL7Connect's
    /// "Rejections").
    ArOnly,
}

impl AckMode {
    /// The name the config uses.
    pub fn as_str(self) -> &'static str {
        match self {
            AckMode::Always => "always",
            AckMode::ErrorsOnly => "errors-only",
            AckMode::Never => "never",
            AckMode::Msh15 => "msh15",
            AckMode::AeOnly => "ae-only",
            AckMode::ArOnly => "ar-only",
        }
    }
}

/// `retry`: exponential backoff (with jitter) between delivery attempts to the upstream, and
/// when to give a message up (to the dead letters) instead of retrying it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retry {
    /// `initial`: the first wait; > 0. Default 1s.
    pub initial: Duration,
    /// `max`: the longest wait; >= `initial`. Default 180s.
    pub max: Duration,
    /// `max_attempts`: a message whose delivery failed (an error, or a reply `on_reply` retries)
    /// this many times goes to the dead letters. 0 (the default): unlimited.
    pub max_attempts: u32,
    /// `max_age`: a message still undelivered this long after it was queued goes to the dead
    /// letters (checked before each attempt and after each failed one). `None` (`0s`, the
    /// default): unlimited.
    pub max_age: Option<Duration>,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            initial: DEFAULT_RETRY_INITIAL,
            max: DEFAULT_RETRY_MAX,
            max_attempts: 0,
            max_age: None,
        }
    }
}

/// What an upstream reply code does to a queued message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyAction {
    /// `retry`: keep it at the head of the queue and send it again after backoff.
    Retry,
    /// `dead-letter`: move it to the route's dead-letter store and go on.
    DeadLetter,
    /// `accept`: treat the reply as delivered and go on.
    Accept,
}

/// `on_reply`: the action for each negative reply code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OnReply {
    /// `AE` (application error). Default `retry`.
    pub ae: ReplyAction,
    /// `AR` (application reject). Default `dead-letter`.
    pub ar: ReplyAction,
}

impl Default for OnReply {
    fn default() -> Self {
        OnReply {
            ae: DEFAULT_ON_REPLY_AE,
            ar: DEFAULT_ON_REPLY_AR,
        }
    }
}

/// What a route does with a frame that holds several messages outside a batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MultipleMessages {
    /// `refuse`: AR, nothing forwarded (the rules would see only the first message).
    #[default]
    Refuse,
    /// `inspect`: every message is checked by the rules and audited; the frame is forwarded
    /// whole only when all of them are allowed.
    Inspect,
}

/// What a route does with a batch (a frame starting with FHS or BHS).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Batches {
    /// `inspect`: every message of the batch meets the rules and the limits and gets its audit
    /// line; the batch goes on whole only when all of them may, else AR naming the batch.
    #[default]
    Inspect,
    /// `refuse`: AR, nothing forwarded.
    Refuse,
}

/// What a sender gets when its message cannot be delivered upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnUpstreamFailure {
    /// `nack`: an AE ack built by the guard, saying why.
    Nack,
    /// `close`: the sender's connection is closed.
    Close,
}

/// The receiver a route forwards to.
#[derive(Clone, Debug)]
pub struct UpstreamConfig {
    /// `address` (`host:port`; the host may be a DNS name, resolved at connect time) or
    /// `accept` (with `allow`).
    pub role: ReceiverRole,
    /// `tls`: originate TLS towards the upstream; `None` = plaintext.
    pub tls: Option<ClientTls>,
    /// `via`: reach the upstream through this SOCKS5 or HTTP CONNECT proxy; `None` = directly.
    pub via: Option<crate::net::egress::Proxy>,
    /// `connections`: `paired` (one upstream connection per sender connection, the default) or
    /// a shared pool of N.
    pub connections: Connections,
    /// `connect_timeout`: TCP connect plus TLS handshake. Default 5s.
    pub connect_timeout: Duration,
    /// `ack_timeout`: how long to wait for the ack of a forwarded message. Default 30s.
    pub ack_timeout: Duration,
    /// `keepalive`: TCP keepalive, applied on both legs of the route.
    pub keepalive: Keepalive,
    /// `max_ack_bytes`: the largest ack accepted from the upstream, in bytes. Default 1 MiB.
    pub max_ack_bytes: usize,
    /// `idle_reconnect`: an upstream connection quiet this long is closed and a new one opened
    /// before the next message, before a firewall silently forgets it. `0s` (default) = off.
    pub idle_reconnect: Option<Duration>,
    /// `idle_reopen`: after an `idle_reconnect` close, reopen on demand (default) or at once.
    pub idle_reopen: IdleReopen,
    /// `send_proxy_protocol`: `v1` or `v2`: each new upstream connection starts with a PROXY
    /// header naming the sender (paired connections) or none (LOCAL / UNKNOWN: pools, custody).
    pub send_proxy_protocol: Option<crate::net::proxy_protocol::Version>,
    /// `transparent_source`: connect to the receiver from the sender's own address (paired
    /// connections; IP_TRANSPARENT, CAP_NET_ADMIN, and routing that brings the replies back to
    /// this host). Default false.
    pub transparent_source: bool,
    /// `local_address`: the source address of connections to the receiver (bound before
    /// connecting; also to the `via` proxy). `None` (default) = the kernel chooses.
    pub local_address: Option<std::net::IpAddr>,
    /// `socket`: options of every receiver-side socket (dialed or accepted).
    pub socket: SocketOptions,
    /// `reconnect`: backoff between failed connection attempts (also when dialing a sender).
    pub reconnect: Reconnect,
    /// `framing.start` and `framing.end`: the bytes that frame messages on the receiver side.
    /// Default [`Framing::MLLP`] (`0x0B`, `[0x1C, 0x0D]`).
    pub framing: Framing,
    /// `framing.release`: the MLLP release spoken with the receiver. Default
    /// [`MllpRelease::One`].
    pub release: MllpRelease,
    /// `framing.commit_timeout`: release 2, how long each send of a message to the receiver
    /// waits for its commit block before sending it again, so that the resends happen within
    /// `ack_timeout`. `None`: `ack_timeout / 4` (see [`UpstreamConfig::commit_timeout`]).
    pub commit_timeout: Option<Duration>,
    /// `health_check`: probe the receiver without a message. `None` (default): its health is
    /// known from real connections only.
    pub health_check: Option<HealthCheck>,
}

/// An upstream `host:port`. The host is a DNS name, an IPv4 address, or an IPv6 address
/// (stored without brackets).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamAddress {
    /// DNS name or IP address, without brackets.
    pub host: String,
    /// 1 to 65535.
    pub port: u16,
}

impl fmt::Display for UpstreamAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// How sender connections map onto upstream connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Connections {
    /// One upstream connection per sender connection.
    Paired,
    /// A pool of N upstream connections shared by all senders of the route (N = 1 serializes
    /// everything onto one connection, for receivers that accept only one).
    Pool(NonZeroUsize),
}

/// TCP keepalive settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keepalive {
    /// `time`: idle time before the first probe; whole seconds, 1s..=32767s. Default 60s.
    pub time: Duration,
    /// `interval`: between probes; whole seconds, 1s..=32767s. Default 10s.
    pub interval: Duration,
    /// `retries`: unanswered probes before the connection is dropped; 1..=127. Default 6.
    pub retries: u32,
    /// `user_timeout`: TCP_USER_TIMEOUT, how long sent data may stay unacknowledged before the
    /// kernel drops the connection, so a dead peer is noticed even while we are sending. Whole
    /// seconds, at least `time + interval x retries` (the default).
    pub user_timeout: Duration,
}

impl Default for Keepalive {
    fn default() -> Self {
        Keepalive {
            time: Duration::from_secs(60),
            interval: Duration::from_secs(10),
            retries: 6,
            user_timeout: Duration::from_secs(120),
        }
    }
}

/// A `socket:` block: options set on every socket of one side of a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketOptions {
    /// `send_buffer`: SO_SNDBUF in bytes (the kernel doubles it for its bookkeeping and caps
    /// it at `net.core.wmem_max`). `None` (default) = the kernel's autotuning.
    pub send_buffer: Option<usize>,
    /// `receive_buffer`: SO_RCVBUF in bytes (doubled and capped at `net.core.rmem_max` like
    /// the send buffer). `None` (default) = the kernel's autotuning.
    pub receive_buffer: Option<usize>,
    /// `linger`: SO_LINGER, how long a close waits for unsent data; `0s` resets the connection
    /// on close (RST instead of FIN). Whole seconds. `None` (default) = a normal close.
    pub linger: Option<Duration>,
    /// `nodelay`: TCP_NODELAY (a frame goes out at once). Default true.
    pub nodelay: bool,
}

impl Default for SocketOptions {
    fn default() -> Self {
        SocketOptions {
            send_buffer: None,
            receive_buffer: None,
            linger: None,
            nodelay: true,
        }
    }
}

/// Exponential backoff bounds for reconnecting to the upstream (jittered, reset after the link
/// has been healthy for a while).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reconnect {
    /// `initial`: the first wait after a failed connect. Default 1s.
    pub initial: Duration,
    /// `max`: the longest wait; also the pace for permanent errors (certificates). Default 180s.
    pub max: Duration,
}

impl UpstreamConfig {
    /// How long each send to the receiver waits for its commit block (release 2):
    /// `framing.commit_timeout`, else a quarter of `ack_timeout`.
    pub fn commit_timeout(&self) -> Duration {
        self.commit_timeout.unwrap_or(self.ack_timeout / 4)
    }
}

impl Route {
    /// How long each send of an ack to the sender waits for its commit block (release 2):
    /// `framing.commit_timeout`, else a quarter of the upstream's `ack_timeout`.
    pub fn commit_timeout(&self) -> Duration {
        self.commit_timeout.unwrap_or(self.upstream.ack_timeout / 4)
    }
}

impl Default for Reconnect {
    fn default() -> Self {
        Reconnect {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(180),
        }
    }
}

/// TLS on a listener. Paths are resolved (relative ones from the config file's directory).
#[derive(Clone)]
pub struct ServerTls {
    /// `cert`: our certificate chain, leaf first (PEM), or a PKCS#12 file (`.p12`/`.pfx`).
    pub cert: PathBuf,
    /// `key`: its private key; for PKCS#12 the same file as `cert`.
    pub key: PathBuf,
    /// `client_ca`: when set, senders must present a certificate issued by one of these CAs.
    pub client_ca: Option<PathBuf>,
    /// `min_version`, `cipher_suites`, `crl`, `crl_expired`, `allowed_identities`.
    pub policy: tls::Policy,
    /// The certificates and CRLs loaded, with their dates (for `check`).
    pub material: tls::Material,
    /// The rustls configuration built from the files above.
    pub config: Arc<rustls::ServerConfig>,
    /// With `client_ca`: the verifier `config` checks client certificates with (CAs, CRLs,
    /// `allowed_identities`), to check open connections again at a reload.
    pub client_verifier: Option<tls::ClientVerifierRef>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("client_ca", &self.client_ca)
            .finish_non_exhaustive()
    }
}

/// TLS towards an upstream. Paths are resolved (relative ones from the config file's directory).
#[derive(Clone)]
pub struct ClientTls {
    /// `ca`: the CAs trusted to have issued the upstream's certificate (and only those).
    pub ca: PathBuf,
    /// `server_name`: the name the upstream's certificate must carry; defaults to the host of
    /// `address`.
    pub server_name: ServerName<'static>,
    /// `cert`: our client certificate chain, if the upstream asks for one.
    pub cert: Option<PathBuf>,
    /// `key`: its private key (set exactly when `cert` is; for PKCS#12 the same file).
    pub key: Option<PathBuf>,
    /// `min_version`, `cipher_suites`, `crl`, `crl_expired`, `allowed_identities`.
    pub policy: tls::Policy,
    /// The certificates and CRLs loaded, with their dates (for `check`).
    pub material: tls::Material,
    /// The rustls configuration built from the files above.
    pub config: Arc<rustls::ClientConfig>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("ca", &self.ca)
            .field("server_name", &self.server_name)
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}
