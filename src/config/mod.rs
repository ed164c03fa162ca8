//! The configuration file: YAML text in, a validated [`Config`] or every error out.
//!
//! Two layers, and runtime code only ever sees the second:
//!
//! 1. **Raw**: serde mirrors of the YAML (`Raw*`, private), every struct `deny_unknown_fields`,
//!    every scalar kept as text wrapped in [`serde_saphyr::Spanned`] so it remembers its line and
//!    column. serde-saphyr reports syntax errors, unknown keys, missing keys and wrong shapes;
//!    `serde_path_to_error` adds the YAML path (`routes[0].listne`). Such an error stops the parse,
//!    so it is reported alone.
//! 2. **Validated**: [`Config::parse`] walks the raw tree, parses every value (addresses,
//!    durations, sizes, CIDRs), checks cross-route rules (unique names, non-overlapping listen
//!    addresses) and loads the TLS material through [`crate::tls`]. It collects *every* problem
//!    before giving up, each as a [`ConfigError`] with its YAML path, the line and column of the
//!    offending value and what to do about it, so `mllp-guard check` shows them all at once.
//!
//! Relative file paths (certificates, keys, CAs, `state_dir`) resolve from the directory of the
//! config file, not from the working directory.
//!
//! Pure apart from reading the config file and the PEM files it names: no sockets, no clock.
//!
//! The YAML keys are a public contract (see the README): add keys, never rename them.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::ServerName;
use serde::Deserialize;
use serde_saphyr::{Location, Spanned};

use crate::firewall::policy::Allowlist;
use crate::firewall::rules::Rule;
use crate::tls::{self, PemRole, TlsError};
use crate::wire::codec::Framing;

mod firewall;
mod tls_policy;
pub use firewall::{OnLimit, RateLimits, DEFAULT_MAX_TRACKED_SOURCES};

// ---------------------------------------------------------------------------------------------
// The validated configuration
// ---------------------------------------------------------------------------------------------

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

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;
const GIB: usize = 1024 * MIB;
/// Bounds of `max_message_bytes` and `max_ack_bytes`.
const MIN_FRAME_BYTES: usize = KIB;
const MAX_FRAME_BYTES: usize = GIB;
/// Lower bound of `queue.max_bytes` and `queue.segment_bytes` (1 MiB).
const MIN_QUEUE_BYTES: u64 = 1 << 20;
/// Linux caps TCP_KEEPIDLE and TCP_KEEPINTVL at 32767 seconds and TCP_KEEPCNT at 127.
const MAX_KEEPALIVE_SECS: u64 = 32767;
const MAX_KEEPALIVE_RETRIES: u32 = 127;

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
    /// Every file this config was read from: the config file itself, rules files, certificates
    /// and keys (absolute where the config file's directory is). A change to any of them
    /// reloads the config.
    pub inputs: Vec<PathBuf>,
}

/// `admin`: where the operator's HTTP endpoint listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admin {
    /// `listen`: an IP address and port, e.g. `127.0.0.1:9102`. It serves no patient data, but
    /// keep it off untrusted networks.
    pub listen: SocketAddr,
}

/// One listener with its policy and its upstream.
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
    /// `proxy_protocol`: `v1` or `v2`: every connection starts with a PROXY protocol header
    /// from a load balancer, and the client it names is the peer for allowlists, limits, rules
    /// and logs; a connection without a valid header is refused. `None` (default) = off.
    pub proxy_protocol: Option<crate::net::proxy_protocol::Version>,
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
    /// `rules`: the firewall rules, in order (written inline, or in a YAML file named by path);
    /// the first match decides, and no match (or no rules) allows. See [`crate::firewall::rules`].
    pub rules: Vec<Rule>,
    /// `limits`: per-source rate limits and caps (all off by default). `limits.handshake_timeout`
    /// sets [`Route::handshake_timeout`].
    pub limits: RateLimits,
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
}

/// `retry`: exponential backoff (with jitter) between delivery attempts to the upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retry {
    /// `initial`: the first wait; > 0. Default 1s.
    pub initial: Duration,
    /// `max`: the longest wait; >= `initial`. Default 180s.
    pub max: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            initial: DEFAULT_RETRY_INITIAL,
            max: DEFAULT_RETRY_MAX,
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
    /// `reconnect`: backoff between failed connection attempts (also when dialing a sender).
    pub reconnect: Reconnect,
    /// `framing.start` and `framing.end`: the bytes that frame messages on the receiver side.
    /// Default [`Framing::MLLP`] (`0x0B`, `[0x1C, 0x0D]`).
    pub framing: Framing,
    /// `framing.release`: the MLLP release spoken with the receiver. Default
    /// [`MllpRelease::One`].
    pub release: MllpRelease,
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

/// Exponential backoff bounds for reconnecting to the upstream (jittered, reset after the link
/// has been healthy for a while).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reconnect {
    /// `initial`: the first wait after a failed connect. Default 1s.
    pub initial: Duration,
    /// `max`: the longest wait; also the pace for permanent errors (certificates). Default 180s.
    pub max: Duration,
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

impl Config {
    /// Reads and validates the file; TLS material is loaded and checked too, so `check` reports
    /// everything at once. Relative paths inside resolve from the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let whole_file_error = |message: String| {
            ConfigErrors(vec![ConfigError {
                file: path.to_path_buf(),
                yaml_path: String::new(),
                line: None,
                column: None,
                message,
            }])
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            whole_file_error(match e.kind() {
                io::ErrorKind::NotFound => "config file not found".to_string(),
                io::ErrorKind::InvalidData => {
                    "the config file is not UTF-8 text; save it as UTF-8".to_string()
                }
                _ => format!("cannot read the config file: {e}"),
            })
        })?;
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let base_dir = std::path::absolute(parent).unwrap_or_else(|_| parent.to_path_buf());
        Config::parse(&text, path, &base_dir)
    }

    /// Same as [`Config::load`] from text: `base_dir` resolves relative paths, `file` is used in
    /// messages.
    pub fn parse(text: &str, file: &Path, base_dir: &Path) -> Result<Config, ConfigErrors> {
        let raw = parse_raw(text, file)?;
        let mut v = Validator {
            file,
            base_dir,
            errors: Vec::new(),
            inputs: vec![base_dir.join(file.file_name().unwrap_or(file.as_os_str()))],
        };
        let mut config = v.config(raw);
        if v.errors.is_empty() {
            v.inputs.sort();
            v.inputs.dedup();
            config.inputs = v.inputs;
            Ok(config)
        } else {
            // Document order reads best, the config file first, then each rules file; errors
            // without a position (none today) go last. A rules file shared by several routes
            // reports its errors once.
            v.errors.sort_by_key(|e| {
                let other_file = (e.file != file).then(|| e.file.clone());
                (other_file, e.line.is_none(), e.line, e.column)
            });
            let mut unique: Vec<ConfigError> = Vec::with_capacity(v.errors.len());
            for e in v.errors {
                if !unique.contains(&e) {
                    unique.push(e);
                }
            }
            Err(ConfigErrors(unique))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// One problem in the config file.
///
/// Displays as `{file}:{line}:{column}: {yaml_path}: {message}`; `:{line}:{column}` is left out
/// when the position is unknown and `{yaml_path}: ` when the problem is about the whole file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The config file (as given).
    pub file: PathBuf,
    /// Where in the YAML tree, e.g. `routes[1].tls.cert`; empty for the whole document.
    pub yaml_path: String,
    /// 1-based line of the offending value.
    pub line: Option<usize>,
    /// 1-based column (in characters) of the offending value.
    pub column: Option<usize>,
    /// What is wrong and what to do about it.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let (Some(line), Some(column)) = (self.line, self.column) {
            write!(f, ":{line}:{column}")?;
        }
        f.write_str(": ")?;
        if !self.yaml_path.is_empty() {
            write!(f, "{}: ", self.yaml_path)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in a config file, in document order. Displays one per line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

// ---------------------------------------------------------------------------------------------
// Raw layer: what serde sees
// ---------------------------------------------------------------------------------------------

/// A scalar as written, with its position. Numbers stay text so every value is parsed (and
/// every error worded) by this module.
type Text = Spanned<String>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    routes: Spanned<Vec<Spanned<RawRoute>>>,
    shutdown_grace: Option<Text>,
    state_dir: Option<Text>,
    upstreams: Option<Spanned<firewall::RawUpstreams>>,
    admin: Option<Spanned<RawAdmin>>,
    log_payloads: Option<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Text,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: Text,
    listen: Option<Text>,
    dial: Option<Text>,
    transparent: Option<Text>,
    proxy_protocol: Option<Text>,
    tls: Option<Spanned<RawServerTls>>,
    /// Optional here so that its absence gets a message with an example.
    allow: Option<Spanned<Vec<Text>>>,
    max_connections: Option<Text>,
    max_message_bytes: Option<Text>,
    receive_timeout: Option<Text>,
    idle_timeout: Option<Text>,
    handshake_timeout: Option<Text>,
    on_upstream_failure: Option<Text>,
    upstream: Spanned<RawUpstream>,
    delivery: Option<Text>,
    queue: Option<Spanned<RawQueue>>,
    ack_mode: Option<Text>,
    retry: Option<Spanned<RawRetry>>,
    on_reply: Option<Spanned<RawOnReply>>,
    duplicate_window: Option<Text>,
    framing: Option<Spanned<RawFraming>>,
    rules: Option<Spanned<firewall::RawRules>>,
    limits: Option<Spanned<firewall::RawLimits>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQueue {
    max_bytes: Option<Text>,
    max_messages: Option<Text>,
    segment_bytes: Option<Text>,
    backend: Option<Text>,
    jetstream: Option<Spanned<RawJetStream>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJetStream {
    servers: Option<Spanned<Vec<Text>>>,
    stream: Option<Text>,
    replicas: Option<Text>,
    max_bytes: Option<Text>,
    duplicate_window: Option<Text>,
    tls: Option<Spanned<RawNatsTls>>,
    credentials: Option<Text>,
    takeover: Option<Text>,
    publish_timeout: Option<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNatsTls {
    ca: Option<Text>,
    cert: Option<Text>,
    key: Option<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    initial: Option<Text>,
    max: Option<Text>,
}

/// Keys are the HL7 reply codes, uppercase as in the contract.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOnReply {
    #[serde(rename = "AE")]
    ae: Option<Text>,
    #[serde(rename = "AR")]
    ar: Option<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServerTls {
    cert: Text,
    key: Option<Text>,
    password_file: Option<Text>,
    client_ca: Option<Text>,
    crl: Option<Spanned<Vec<Text>>>,
    crl_expired: Option<Text>,
    min_version: Option<Text>,
    cipher_suites: Option<Spanned<Vec<Text>>>,
    allowed_identities: Option<Spanned<Vec<Text>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    address: Option<Text>,
    accept: Option<Text>,
    allow: Option<Spanned<Vec<Text>>>,
    tls: Option<Spanned<RawClientTls>>,
    connections: Option<Text>,
    connect_timeout: Option<Text>,
    ack_timeout: Option<Text>,
    keepalive: Option<Spanned<RawKeepalive>>,
    max_ack_bytes: Option<Text>,
    idle_reconnect: Option<Text>,
    idle_reopen: Option<Text>,
    send_proxy_protocol: Option<Text>,
    transparent_source: Option<Text>,
    reconnect: Option<Spanned<RawReconnect>>,
    framing: Option<Spanned<RawFraming>>,
    via: Option<Spanned<tls_policy::RawVia>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClientTls {
    ca: Text,
    server_name: Option<Text>,
    cert: Option<Text>,
    key: Option<Text>,
    password_file: Option<Text>,
    crl: Option<Spanned<Vec<Text>>>,
    crl_expired: Option<Text>,
    min_version: Option<Text>,
    cipher_suites: Option<Spanned<Vec<Text>>>,
    allowed_identities: Option<Spanned<Vec<Text>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeepalive {
    time: Option<Text>,
    interval: Option<Text>,
    retries: Option<Text>,
    user_timeout: Option<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReconnect {
    initial: Option<Text>,
    max: Option<Text>,
}

/// `framing:` of a route (sender side) or of its upstream (receiver side); every key optional,
/// defaulting to standard MLLP release 1.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFraming {
    start: Option<Text>,
    end: Option<Spanned<Vec<Text>>>,
    release: Option<Text>,
}

/// Line and column of a location, `None` when serde-saphyr does not know it.
fn position(at: &Location) -> (Option<usize>, Option<usize>) {
    if at.line() == 0 {
        (None, None)
    } else {
        (
            usize::try_from(at.line()).ok(),
            usize::try_from(at.column()).ok(),
        )
    }
}

/// Deserializes the raw tree, turning the first syntax or shape error into a [`ConfigError`].
fn parse_raw<T: serde::de::DeserializeOwned>(text: &str, file: &Path) -> Result<T, ConfigErrors> {
    let mut path = String::new();
    let result = serde_saphyr::with_deserializer_from_str(text, |de| {
        serde_path_to_error::deserialize::<_, T>(de).map_err(|e| {
            path = yaml_path_of(e.path());
            e.into_inner()
        })
    });
    result.map_err(|err| {
        let err = err.without_snippet();
        let (line, column) = err.location().as_ref().map_or((None, None), position);
        ConfigErrors(vec![ConfigError {
            file: file.to_path_buf(),
            message: serde_message(err, &path),
            yaml_path: path,
            line,
            column,
        }])
    })
}

/// `routes[0].upstream.keepalive.time`, leaving out the `value` level that `Spanned` adds.
fn yaml_path_of(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } if key == "value" => {}
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => {}
        }
    }
    out
}

/// Our wording for the errors serde-saphyr reports; anything else keeps its own text.
fn serde_message(err: &serde_saphyr::Error, yaml_path: &str) -> String {
    use serde_saphyr::Error as E;
    match err {
        E::SerdeUnknownField {
            field, expected, ..
        } => {
            let mut message = format!("unknown key `{field}`");
            if let Some(near) = closest(field, expected) {
                message.push_str(&format!(" (did you mean `{near}`?)"));
            }
            message.push_str(&format!("; valid keys here: {}", expected.join(", ")));
            message
        }
        E::SerdeMissingField { field, .. } => {
            // A rule: `routes[0].rules[2]` inline, `[2]` in a rules file.
            let in_rule = yaml_path.ends_with(']')
                && (yaml_path.starts_with('[') || yaml_path.contains(".rules["));
            let hint = match (*field, yaml_path.ends_with(".tls")) {
                ("name", _) if in_rule => {
                    "add e.g. `name: no-test-messages` (unique within the route; a-z, 0-9 and '-')"
                }
                ("action", _) => {
                    "add e.g. `action: reject` (allow, reject, drop, or { route: <upstream name> })"
                }
                ("route", _) => "write `action: { route: <upstream name> }`",
                ("routes", _) => "add a `routes:` list with at least one route",
                ("name", _) => "add e.g. `name: lab` (lowercase letters, digits and '-')",
                ("listen", _) => "add e.g. `listen: 127.0.0.1:2575`",
                ("upstream", _) => "add an `upstream:` block with at least `address: host:port`",
                ("address", _) => "add e.g. `address: 127.0.0.1:2576`",
                ("cert", true) => {
                    "add `cert: path/to/chain.pem` (this listener's certificate chain)"
                }
                ("key", true) => "add `key: path/to/key.pem` (the certificate's private key)",
                ("ca", _) => {
                    "add `ca: path/to/ca.pem`, the CA that issued the upstream's certificate"
                }
                _ => "add it",
            };
            format!("missing required key `{field}`; {hint}")
        }
        E::DuplicateMappingKey { key, .. } => match key {
            Some(key) => format!("key `{key}` appears twice; keep one of them"),
            None => "a key appears twice; keep one of them".to_string(),
        },
        E::NullIntoString { .. } => "a value is required here".to_string(),
        E::Unexpected { expected, .. } if expected.contains("string scalar") => {
            let mut message = "expected a single value here, not a list or a map".to_string();
            if yaml_path.ends_with("listen") || yaml_path.ends_with("address") {
                message.push_str(" (quote addresses that start with '[', e.g. \"[::1]:2575\")");
            }
            message
        }
        E::Unexpected { expected, .. } if expected.contains("sequence") => {
            "expected a list here, e.g. [a, b] or one `- item` per line".to_string()
        }
        E::Unexpected { expected, .. } if expected.contains("mapping") => {
            "expected a map of keys here (`key: value` lines or { key: value })".to_string()
        }
        E::Eof { .. } => "the file is empty; it needs at least a `routes:` list".to_string(),
        E::SerdeInvalidType {
            unexpected,
            expected,
            ..
        } => format!("wrong type: found {unexpected}, expected {expected}"),
        other => {
            let message = serde_saphyr::MessageFormatter::format_message(
                &serde_saphyr::UserMessageFormatter,
                other,
            );
            if message.contains("tab") {
                format!("{message} (indent YAML with spaces, not tabs)")
            } else {
                message.into_owned()
            }
        }
    }
}

/// The candidate closest to `word` by edit distance, when close enough to be a typo.
fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, c)| {
            let shared_prefix = word
                .chars()
                .zip(c.chars())
                .take_while(|(a, b)| a == b)
                .count();
            *d <= 2 || (*d <= 3 && shared_prefix >= 3)
        })
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

// ---------------------------------------------------------------------------------------------
// Validation: raw -> typed, collecting every error
// ---------------------------------------------------------------------------------------------

struct Validator<'a> {
    file: &'a Path,
    base_dir: &'a Path,
    errors: Vec<ConfigError>,
    /// Every file the config was built from (rules files, certificates, keys), for reloads.
    inputs: Vec<PathBuf>,
}

/// A parsed `listen` address with what is needed to report a clash.
struct Listener {
    index: usize,
    name: String,
    addr: SocketAddr,
    line: Option<usize>,
}

impl Validator<'_> {
    fn error(&mut self, yaml_path: impl Into<String>, at: &Location, message: impl Into<String>) {
        let (line, column) = position(at);
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            yaml_path: yaml_path.into(),
            line,
            column,
            message: message.into(),
        });
    }

    /// Parses an optional scalar, recording the error and falling back to `default` on failure
    /// (the config is only returned when there are no errors, so the fallback never escapes).
    fn value<T>(
        &mut self,
        path: String,
        raw: &Option<Text>,
        default: T,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> T {
        let Some(raw) = raw else { return default };
        match parse(&raw.value) {
            Ok(v) => v,
            Err(message) => {
                self.error(path, &raw.referenced, message);
                default
            }
        }
    }

    fn config(&mut self, raw: RawConfig) -> Config {
        let shutdown_grace = self.value(
            "shutdown_grace".into(),
            &raw.shutdown_grace,
            DEFAULT_SHUTDOWN_GRACE,
            parse_duration,
        );
        let state_dir = raw.state_dir.as_ref().and_then(|raw| {
            let written = raw.value.trim();
            if written.is_empty() {
                self.error(
                    "state_dir",
                    &raw.referenced,
                    "a directory path is required here, e.g. /var/lib/mllp-guard",
                );
                None
            } else {
                Some(self.base_dir.join(written))
            }
        });
        let (upstreams, upstream_names) = self.upstreams(raw.upstreams.as_ref());
        if raw.routes.value.is_empty() {
            self.error(
                "routes",
                &raw.routes.referenced,
                "no routes are defined; add at least one route under `routes:`",
            );
        }
        let mut routes = Vec::new();
        let mut names: HashMap<String, (usize, Option<usize>)> = HashMap::new();
        let mut listeners: Vec<Listener> = Vec::new();
        for (i, raw_route) in raw.routes.value.iter().enumerate() {
            let route = self.route(i, raw_route, state_dir.as_deref(), &upstream_names);
            let name_at = &raw_route.value.name;
            if route.name.is_empty() {
                // Invalid name, already reported.
            } else if let Some(&(first, first_line)) = names.get(&route.name) {
                self.error(
                    format!("routes[{i}].name"),
                    &name_at.referenced,
                    format!(
                        "route name \"{}\" is already used by routes[{first}]{}; give each route a unique name",
                        route.name,
                        on_line(first_line)
                    ),
                );
            } else {
                names.insert(route.name.clone(), (i, position(&name_at.referenced).0));
            }
            // Every address this route binds: its listener and an upstream that accepts.
            let mut binds = Vec::new();
            if let Some(listen) = &raw_route.value.listen {
                binds.push((format!("routes[{i}].listen"), listen));
            }
            if let Some(accept) = &raw_route.value.upstream.value.accept {
                binds.push((format!("routes[{i}].upstream.accept"), accept));
            }
            for (yaml_path, raw_addr) in binds {
                let Ok(addr) = raw_addr.value.trim().parse::<SocketAddr>() else {
                    continue;
                };
                let listen_at = &raw_addr.referenced;
                if let Some(other) = listeners.iter().find(|l| listen_clash(l.addr, addr)) {
                    let message = if other.addr == addr {
                        format!(
                            "listen address {addr} is already used by routes[{}] \"{}\"{}; give each route its own port",
                            other.index, other.name, on_line(other.line)
                        )
                    } else {
                        format!(
                            "listen address {addr} overlaps {} of routes[{}] \"{}\"{} (an unspecified address listens on every local address); give each route its own port",
                            other.addr, other.index, other.name, on_line(other.line)
                        )
                    };
                    self.error(yaml_path, listen_at, message);
                }
                listeners.push(Listener {
                    index: i,
                    name: route.name.clone(),
                    addr,
                    line: position(listen_at).0,
                });
            }
            routes.push(route);
        }
        if raw.state_dir.is_none() {
            // Reported once, at the first route that needs it.
            let first = routes
                .iter()
                .zip(&raw.routes.value)
                .enumerate()
                .find(|(_, (route, _))| {
                    matches!(&route.delivery, Delivery::StoreAndForward(c) if c.backend == QueueBackend::Embedded)
                });
            if let Some((i, (_, raw_route))) = first {
                if let Some(delivery) = &raw_route.value.delivery {
                    self.error(
                        format!("routes[{i}].delivery"),
                        &delivery.referenced,
                        "store-and-forward needs a top-level `state_dir` to keep its queues in; add e.g. `state_dir: /var/lib/mllp-guard` at the top of the file (one directory per route is created under it)",
                    );
                }
            }
        }
        let admin = raw.admin.as_ref().map(|admin| Admin {
            listen: self.value(
                "admin.listen".into(),
                &Some(admin.value.listen.clone()),
                SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
                parse_listen,
            ),
        });
        if let Some(admin) = &admin {
            for (i, route) in routes.iter().enumerate() {
                let clash = route
                    .sender
                    .listen_addr()
                    .is_some_and(|addr| listen_clash(addr, admin.listen));
                if let (true, Some(raw_admin)) = (clash, &raw.admin) {
                    self.error(
                        "admin.listen",
                        &raw_admin.value.listen.referenced,
                        format!(
                            "{} is also the listen address of routes[{i}] \"{}\"; give the admin endpoint its own port",
                            admin.listen, route.name
                        ),
                    );
                }
            }
        }
        let log_payloads = self.value("log_payloads".into(), &raw.log_payloads, false, parse_bool);
        Config {
            file: self.file.to_path_buf(),
            routes,
            shutdown_grace,
            state_dir,
            upstreams,
            admin,
            log_payloads,
            inputs: Vec::new(),
        }
    }

    fn route(
        &mut self,
        i: usize,
        raw: &Spanned<RawRoute>,
        state_dir: Option<&Path>,
        upstreams: &firewall::UpstreamNames,
    ) -> Route {
        let p = format!("routes[{i}]");
        let r = &raw.value;
        let name = self.value(
            format!("{p}.name"),
            &Some(r.name.clone()),
            String::new(),
            parse_route_name,
        );
        let sender = match (&r.listen, &r.dial) {
            (Some(_), Some(dial)) => {
                self.error(
                    format!("{p}.dial"),
                    &dial.referenced,
                    "a route has exactly one of `listen` (we wait for the sender) and `dial` (we connect to a sender that is an MLLP server); remove one",
                );
                SenderRole::Listen(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))
            }
            (None, None) => {
                self.error(
                    p.clone(),
                    &raw.referenced,
                    "missing required key `listen` (or `dial`); add e.g. `listen: 127.0.0.1:2575`, or `dial: sender-host:5000` to connect out to a sender that is an MLLP server",
                );
                SenderRole::Listen(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))
            }
            (Some(listen), None) => SenderRole::Listen(self.value(
                format!("{p}.listen"),
                &Some(listen.clone()),
                SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
                parse_listen,
            )),
            (None, Some(dial)) => match parse_upstream_address(&dial.value) {
                Ok(address) => SenderRole::Dial(address),
                Err(message) => {
                    self.error(format!("{p}.dial"), &dial.referenced, message);
                    SenderRole::Listen(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))
                }
            },
        };
        let transparent = self.value(
            format!("{p}.transparent"),
            &r.transparent,
            false,
            parse_bool,
        );
        if let (true, Some(raw)) = (transparent, &r.dial) {
            self.error(
                format!("{p}.transparent"),
                &raw.referenced,
                "transparent applies to a listener that TPROXY redirects to; a route that dials its sender has none (remove it)",
            );
        }
        let proxy_protocol = self.value(
            format!("{p}.proxy_protocol"),
            &r.proxy_protocol,
            None,
            |s| parse_proxy_version(s).map(Some),
        );
        if let (Some(_), Some(raw)) = (&r.dial, &r.proxy_protocol) {
            self.error(
                format!("{p}.proxy_protocol"),
                &raw.referenced,
                "proxy_protocol reads a header from a load balancer in front of a listener; a route that dials its sender has none (remove it)",
            );
        }
        let tls = r
            .tls
            .as_ref()
            .and_then(|t| self.server_tls(&format!("{p}.tls"), t));
        if let (Some(dial), Some(raw_tls)) = (&r.dial, &r.tls) {
            let _ = dial;
            self.error(
                format!("{p}.tls"),
                &raw_tls.referenced,
                "`tls` on a route that dials its sender is not supported: a route's tls block makes the guard a TLS server, and when it dials it is the client; use `listen` for a TLS sender",
            );
        }
        let allow = match &r.allow {
            None => {
                self.error(
                    p.clone(),
                    &raw.referenced,
                    "missing required key `allow`; list who may connect, e.g. `allow: [10.0.0.0/8, 192.0.2.7]` ([\"any\"] admits every address, [] none)",
                );
                Allowlist::Networks(Vec::new())
            }
            Some(list) => {
                let entries: Vec<&str> = list.value.iter().map(|e| e.value.as_str()).collect();
                match Allowlist::parse(&entries) {
                    Ok(allow) => allow,
                    Err((j, message)) => {
                        let at = list
                            .value
                            .get(j)
                            .map_or(&list.referenced, |e| &e.referenced);
                        self.error(format!("{p}.allow[{j}]"), at, message);
                        Allowlist::Networks(Vec::new())
                    }
                }
            }
        };
        let max_connections = self.value(
            format!("{p}.max_connections"),
            &r.max_connections,
            DEFAULT_MAX_CONNECTIONS,
            |s| parse_count(s, 1),
        );
        let max_message_bytes = self.value(
            format!("{p}.max_message_bytes"),
            &r.max_message_bytes,
            DEFAULT_MAX_MESSAGE_BYTES,
            parse_frame_size,
        );
        let receive_timeout = self.value(
            format!("{p}.receive_timeout"),
            &r.receive_timeout,
            DEFAULT_RECEIVE_TIMEOUT,
            parse_positive_duration,
        );
        let idle_timeout = self.value(format!("{p}.idle_timeout"), &r.idle_timeout, None, |s| {
            parse_duration(s).map(|d| (!d.is_zero()).then_some(d))
        });
        let mut handshake_timeout = self.value(
            format!("{p}.handshake_timeout"),
            &r.handshake_timeout,
            DEFAULT_HANDSHAKE_TIMEOUT,
            parse_positive_duration,
        );
        let rules = self.rules(&p, r.rules.as_ref(), upstreams);
        let (limits, limits_handshake) = self.limits(&p, r.limits.as_ref());
        if let Some(limit) = limits_handshake {
            let route_key_valid = r
                .handshake_timeout
                .as_ref()
                .is_none_or(|t| parse_positive_duration(&t.value).is_ok());
            if r.handshake_timeout.is_some() && route_key_valid && limit != handshake_timeout {
                let at = r
                    .limits
                    .as_ref()
                    .and_then(|l| l.value.handshake_timeout.as_ref());
                if let Some(at) = at {
                    self.error(
                        format!("{p}.limits.handshake_timeout"),
                        &at.referenced,
                        format!(
                            "differs from the route's handshake_timeout ({}); set it in one place",
                            humantime::format_duration(handshake_timeout)
                        ),
                    );
                }
            }
            handshake_timeout = limit;
        }
        let on_upstream_failure = self.value(
            format!("{p}.on_upstream_failure"),
            &r.on_upstream_failure,
            OnUpstreamFailure::Nack,
            parse_on_upstream_failure,
        );
        let upstream = self.upstream(&format!("{p}.upstream"), &r.upstream);
        // A bad `max_message_bytes` is reported already; comparing the queue with it would
        // add a second error about the fallback value.
        let max_message_bytes_ok = r
            .max_message_bytes
            .as_ref()
            .is_none_or(|m| parse_frame_size(&m.value).is_ok());
        let delivery = self.delivery(
            &p,
            r,
            &state_dir.map(|d| d.join(&name)).unwrap_or_default(),
            max_message_bytes_ok.then_some(max_message_bytes),
        );
        let (framing, release) = self.framing(&format!("{p}.framing"), &r.framing);
        if let (true, false, Some(raw)) = (
            upstream.transparent_source,
            delivery == Delivery::Forward,
            &r.upstream.value.transparent_source,
        ) {
            self.error(
                format!("{p}.upstream.transparent_source"),
                &raw.referenced,
                "transparent_source needs `delivery: forward`: a queued message is delivered later, when its sender's connection may be gone",
            );
        }
        if upstream.role == ReceiverRole::OriginalDestination {
            let at = r.upstream.value.address.as_ref().map(|a| &a.referenced);
            let problem = if !transparent {
                Some("original-destination needs `transparent: true` on the route (only a connection TPROXY redirected has an original destination)")
            } else if upstream.connections != Connections::Paired {
                Some("original-destination needs `connections: paired`: each sender's connection has its own destination")
            } else if delivery != Delivery::Forward {
                Some("original-destination needs `delivery: forward`: queued messages no longer belong to a sender's connection")
            } else {
                None
            };
            if let (Some(message), Some(at)) = (problem, at) {
                self.error(format!("{p}.upstream.address"), at, message);
            }
        }
        Route {
            name,
            sender,
            transparent,
            proxy_protocol,
            tls,
            allow,
            max_connections,
            max_message_bytes,
            receive_timeout,
            idle_timeout,
            handshake_timeout,
            on_upstream_failure,
            upstream,
            delivery,
            framing,
            release,
            rules,
            limits,
        }
    }

    /// `delivery` and the custody keys. `max_message_bytes` is `None` when it was invalid.
    fn delivery(
        &mut self,
        p: &str,
        r: &RawRoute,
        queue_dir: &Path,
        max_message_bytes: Option<usize>,
    ) -> Delivery {
        // `None`: an invalid value, reported; the custody keys are then not checked at all.
        let kind = match &r.delivery {
            None => Some(DeliveryKind::Forward),
            Some(_) => self.value(format!("{p}.delivery"), &r.delivery, None, |s| {
                parse_delivery(s).map(Some)
            }),
        };
        match kind {
            None => return Delivery::Forward,
            Some(DeliveryKind::Forward) => {
                let custody_keys = [
                    ("queue", r.queue.as_ref().map(|q| &q.referenced)),
                    ("ack_mode", r.ack_mode.as_ref().map(|t| &t.referenced)),
                    ("retry", r.retry.as_ref().map(|t| &t.referenced)),
                    ("on_reply", r.on_reply.as_ref().map(|t| &t.referenced)),
                    (
                        "duplicate_window",
                        r.duplicate_window.as_ref().map(|t| &t.referenced),
                    ),
                ];
                for (key, at) in custody_keys {
                    if let Some(at) = at {
                        self.error(
                            format!("{p}.{key}"),
                            at,
                            "only used with delivery: store-and-forward; add `delivery: store-and-forward` or remove it",
                        );
                    }
                }
                return Delivery::Forward;
            }
            Some(DeliveryKind::StoreAndForward) => {}
        }
        let (mut max_bytes, mut max_messages, mut segment_bytes) = (
            DEFAULT_QUEUE_MAX_BYTES,
            DEFAULT_QUEUE_MAX_MESSAGES,
            DEFAULT_QUEUE_SEGMENT_BYTES,
        );
        let mut backend = QueueBackend::Embedded;
        if let Some(q) = &r.queue {
            let q = &q.value;
            max_bytes = self.value(
                format!("{p}.queue.max_bytes"),
                &q.max_bytes,
                DEFAULT_QUEUE_MAX_BYTES,
                parse_queue_size,
            );
            max_messages = self.value(
                format!("{p}.queue.max_messages"),
                &q.max_messages,
                DEFAULT_QUEUE_MAX_MESSAGES,
                |s| parse_count(s, 1).map(|n| n as u64),
            );
            segment_bytes = self.value(
                format!("{p}.queue.segment_bytes"),
                &q.segment_bytes,
                DEFAULT_QUEUE_SEGMENT_BYTES,
                parse_queue_size,
            );
            if let (Some(raw), Some(largest)) = (&q.max_bytes, max_message_bytes) {
                if parse_queue_size(&raw.value).is_ok() && max_bytes < largest as u64 {
                    self.error(
                        format!("{p}.queue.max_bytes"),
                        &raw.referenced,
                        format!(
                            "must be at least this route's max_message_bytes ({largest} bytes) so that the largest message fits; raise it or lower max_message_bytes, not \"{}\" ({max_bytes} bytes)",
                            raw.value
                        ),
                    );
                }
            }
            backend = self.queue_backend(&format!("{p}.queue"), q, max_bytes);
        }
        let ack_mode = self.value(
            format!("{p}.ack_mode"),
            &r.ack_mode,
            DEFAULT_ACK_MODE,
            parse_ack_mode,
        );
        let retry = match &r.retry {
            None => Retry::default(),
            Some(raw) => self.retry(&format!("{p}.retry"), &raw.value),
        };
        let on_reply = match &r.on_reply {
            None => OnReply::default(),
            Some(raw) => OnReply {
                ae: self.value(
                    format!("{p}.on_reply.AE"),
                    &raw.value.ae,
                    DEFAULT_ON_REPLY_AE,
                    parse_reply_action,
                ),
                ar: self.value(
                    format!("{p}.on_reply.AR"),
                    &raw.value.ar,
                    DEFAULT_ON_REPLY_AR,
                    parse_reply_action,
                ),
            },
        };
        let duplicate_window = self.value(
            format!("{p}.duplicate_window"),
            &r.duplicate_window,
            Some(DEFAULT_DUPLICATE_WINDOW),
            |s| parse_duration(s).map(|d| (!d.is_zero()).then_some(d)),
        );
        Delivery::StoreAndForward(CustodyConfig {
            queue_dir: queue_dir.to_path_buf(),
            max_bytes,
            max_messages,
            segment_bytes,
            ack_mode,
            retry,
            on_reply,
            duplicate_window,
            backend,
        })
    }

    /// `queue.backend` and `queue.jetstream`; `max_bytes` is the queue's (the default cap).
    fn queue_backend(&mut self, p: &str, q: &RawQueue, max_bytes: u64) -> QueueBackend {
        let jetstream = self.value(format!("{p}.backend"), &q.backend, false, |s| {
            match s.trim() {
                "embedded" => Ok(false),
                "jetstream" => Ok(true),
                _ => Err(format!(
                    "must be `embedded` (the local segmented log, the default) or `jetstream` (a NATS JetStream stream shared by several guards), not \"{s}\""
                )),
            }
        });
        let invalid_backend = q
            .backend
            .as_ref()
            .is_some_and(|b| !matches!(b.value.trim(), "embedded" | "jetstream"));
        match (&q.jetstream, jetstream) {
            (Some(raw), false) if !invalid_backend => {
                self.error(
                    format!("{p}.jetstream"),
                    &raw.referenced,
                    "only used with `backend: jetstream`; add `backend: jetstream` to this queue or remove it",
                );
                QueueBackend::Embedded
            }
            (None, true) => {
                let at = &q.backend.as_ref().expect("backend given").referenced;
                self.error(
                    format!("{p}.jetstream"),
                    at,
                    "`backend: jetstream` needs a `jetstream:` block with at least `servers` and `stream`, e.g. jetstream: { servers: [\"nats://127.0.0.1:4222\"], stream: MLLP_LAB }",
                );
                QueueBackend::Embedded
            }
            (Some(raw), true) => QueueBackend::JetStream(Box::new(self.jetstream(
                &format!("{p}.jetstream"),
                raw,
                max_bytes,
            ))),
            _ => QueueBackend::Embedded,
        }
    }

    fn jetstream(
        &mut self,
        p: &str,
        raw: &Spanned<RawJetStream>,
        max_bytes: u64,
    ) -> JetStreamQueue {
        let j = &raw.value;
        let mut servers = Vec::new();
        match &j.servers {
            None => self.error(
                format!("{p}.servers"),
                &raw.referenced,
                "is required: the NATS servers to connect to, e.g. servers: [\"nats://10.0.0.5:4222\"]",
            ),
            Some(list) if list.value.is_empty() => self.error(
                format!("{p}.servers"),
                &list.referenced,
                "needs at least one NATS server URL, e.g. [\"nats://10.0.0.5:4222\"]",
            ),
            Some(list) => {
                for (i, server) in list.value.iter().enumerate() {
                    match parse_nats_server(&server.value) {
                        Ok(url) => servers.push(url),
                        Err(message) => {
                            self.error(format!("{p}.servers[{i}]"), &server.referenced, message)
                        }
                    }
                }
            }
        }
        let stream = match &j.stream {
            None => {
                self.error(
                    format!("{p}.stream"),
                    &raw.referenced,
                    "is required: the JetStream stream that holds this route's messages, e.g. stream: MLLP_LAB",
                );
                String::new()
            }
            some => self.value(
                format!("{p}.stream"),
                some,
                String::new(),
                parse_stream_name,
            ),
        };
        let replicas = self.value(
            format!("{p}.replicas"),
            &j.replicas,
            DEFAULT_JETSTREAM_REPLICAS,
            |s| match s.trim().parse::<usize>() {
                Ok(n) if (1..=5).contains(&n) => Ok(n),
                _ => Err(format!(
                    "must be a whole number from 1 to 5 (JetStream's limit), not \"{s}\""
                )),
            },
        );
        let max_bytes = self.value(
            format!("{p}.max_bytes"),
            &j.max_bytes,
            max_bytes,
            parse_queue_size,
        );
        let duplicate_window = self.value(
            format!("{p}.duplicate_window"),
            &j.duplicate_window,
            DEFAULT_JETSTREAM_DUPLICATE_WINDOW,
            parse_positive_duration,
        );
        let takeover = self.value(
            format!("{p}.takeover"),
            &j.takeover,
            DEFAULT_JETSTREAM_TAKEOVER,
            |s| {
                let d = parse_duration(s)?;
                if d < Duration::from_secs(1) {
                    return Err(format!("must be at least 1s, not \"{s}\""));
                }
                Ok(d)
            },
        );
        let publish_timeout = self.value(
            format!("{p}.publish_timeout"),
            &j.publish_timeout,
            DEFAULT_JETSTREAM_PUBLISH_TIMEOUT,
            parse_positive_duration,
        );
        let tls = j.tls.as_ref().map(|t| {
            let tp = format!("{p}.tls");
            let ca = t.value.ca.as_ref().and_then(|ca| self.file(format!("{tp}.ca"), ca));
            let client = match (&t.value.cert, &t.value.key) {
                (Some(cert), Some(key)) => {
                    let cert = self.file(format!("{tp}.cert"), cert);
                    let key = self.file(format!("{tp}.key"), key);
                    cert.zip(key)
                }
                (None, None) => None,
                (Some(_), None) | (None, Some(_)) => {
                    self.error(
                        tp.clone(),
                        &t.referenced,
                        "`cert` and `key` go together: give both (a client certificate for NATS) or neither",
                    );
                    None
                }
            };
            NatsTls { ca, client }
        });
        let credentials = j
            .credentials
            .as_ref()
            .and_then(|c| self.file(format!("{p}.credentials"), c));
        JetStreamQueue {
            servers,
            stream,
            replicas,
            max_bytes,
            duplicate_window,
            tls,
            credentials,
            takeover,
            publish_timeout,
        }
    }

    fn retry(&mut self, p: &str, raw: &RawRetry) -> Retry {
        let initial = self.value(format!("{p}.initial"), &raw.initial, None, |s| {
            parse_positive_duration(s).map(Some)
        });
        let max = self.value(format!("{p}.max"), &raw.max, None, |s| {
            parse_positive_duration(s).map(Some)
        });
        let valid =
            |given: &Option<Text>, parsed: Option<Duration>| given.is_none() || parsed.is_some();
        if !(valid(&raw.initial, initial) && valid(&raw.max, max)) {
            return Retry::default();
        }
        let initial_or_default = initial.unwrap_or(DEFAULT_RETRY_INITIAL);
        let max_or_default = max.unwrap_or(DEFAULT_RETRY_MAX);
        if max_or_default < initial_or_default {
            let shown = |d: Duration| humantime::format_duration(d).to_string();
            match (&raw.initial, &raw.max) {
                (_, Some(m)) => self.error(
                    format!("{p}.max"),
                    &m.referenced,
                    format!(
                        "must be at least retry.initial ({}{}), not \"{}\"",
                        shown(initial_or_default),
                        if raw.initial.is_none() { ", the default" } else { "" },
                        m.value
                    ),
                ),
                (Some(i), None) => self.error(
                    format!("{p}.initial"),
                    &i.referenced,
                    format!(
                        "must not exceed retry.max ({}, the default), not \"{}\"; lower it or set `max` too",
                        shown(DEFAULT_RETRY_MAX),
                        i.value
                    ),
                ),
                (None, None) => {}
            }
            return Retry::default();
        }
        Retry {
            initial: initial_or_default,
            max: max_or_default,
        }
    }

    fn upstream(&mut self, p: &str, raw: &Spanned<RawUpstream>) -> UpstreamConfig {
        let u = &raw.value;
        let mut address = None;
        let role = match (&u.address, &u.accept) {
            (Some(_), Some(accept)) => {
                self.error(
                    format!("{p}.accept"),
                    &accept.referenced,
                    "an upstream has exactly one of `address` (we connect to the receiver) and `accept` (the receiver connects in to us); remove one",
                );
                None
            }
            (None, None) => {
                self.error(
                    p,
                    &raw.referenced,
                    "missing required key `address` (or `accept`); add e.g. `address: 127.0.0.1:2576`, or `accept: 0.0.0.0:2600` for a receiver that connects in",
                );
                None
            }
            (Some(raw_address), None) if raw_address.value.trim() == "original-destination" => {
                Some(ReceiverRole::OriginalDestination)
            }
            (Some(raw_address), None) => match parse_upstream_address(&raw_address.value) {
                Ok(parsed) => {
                    address = Some(parsed.clone());
                    Some(ReceiverRole::Connect(parsed))
                }
                Err(message) => {
                    self.error(format!("{p}.address"), &raw_address.referenced, message);
                    None
                }
            },
            (None, Some(accept)) => {
                let listen = self.value(
                    format!("{p}.accept"),
                    &Some(accept.clone()),
                    SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
                    parse_listen,
                );
                Some(ReceiverRole::Accept {
                    listen,
                    allow: self.receiver_allow(p, u.allow.as_ref()),
                })
            }
        };
        if let (Some(allow), None) = (&u.allow, &u.accept) {
            self.error(
                format!("{p}.allow"),
                &allow.referenced,
                "`allow` on an upstream says who may connect in to `accept`; it has no meaning with `address` (remove it)",
            );
        }
        if let (Some(_), Some(raw_tls)) = (&u.accept, &u.tls) {
            self.error(
                format!("{p}.tls"),
                &raw_tls.referenced,
                "`tls` on an upstream that accepts its receiver is not supported: the upstream tls block makes the guard a TLS client, and with `accept` it is the server; use `address` for a TLS receiver",
            );
        }
        let tls = u
            .tls
            .as_ref()
            .and_then(|t| self.client_tls(&format!("{p}.tls"), t, address.as_ref()));
        let via = self.via(p, &u.via);
        if let (Some(_), Some(raw_via)) = (&u.accept, &u.via) {
            self.error(
                format!("{p}.via"),
                &raw_via.referenced,
                "`via` sends upstream connections through a proxy; with `accept` the receiver connects in, so there is nothing to send through it (remove one)",
            );
        }
        let connections = self.value(
            format!("{p}.connections"),
            &u.connections,
            Connections::Paired,
            parse_connections,
        );
        let connect_timeout = self.value(
            format!("{p}.connect_timeout"),
            &u.connect_timeout,
            DEFAULT_CONNECT_TIMEOUT,
            parse_positive_duration,
        );
        let ack_timeout = self.value(
            format!("{p}.ack_timeout"),
            &u.ack_timeout,
            DEFAULT_ACK_TIMEOUT,
            parse_positive_duration,
        );
        let keepalive = match &u.keepalive {
            None => Keepalive::default(),
            Some(k) => {
                let default = Keepalive::default();
                let k = &k.value;
                let mut keepalive = Keepalive {
                    time: self.value(
                        format!("{p}.keepalive.time"),
                        &k.time,
                        default.time,
                        parse_keepalive_duration,
                    ),
                    interval: self.value(
                        format!("{p}.keepalive.interval"),
                        &k.interval,
                        default.interval,
                        parse_keepalive_duration,
                    ),
                    retries: self.value(
                        format!("{p}.keepalive.retries"),
                        &k.retries,
                        default.retries,
                        parse_keepalive_retries,
                    ),
                    user_timeout: Duration::ZERO,
                };
                let probes = keepalive.time + keepalive.interval * keepalive.retries;
                keepalive.user_timeout = probes;
                if let Some(raw) = &k.user_timeout {
                    match parse_keepalive_duration(&raw.value) {
                        Ok(t) if t >= probes => keepalive.user_timeout = t,
                        Ok(_) => self.error(
                            format!("{p}.keepalive.user_timeout"),
                            &raw.referenced,
                            format!(
                                "must be at least time + interval x retries ({}), or the keepalive probes never get to finish",
                                humantime::format_duration(probes)
                            ),
                        ),
                        Err(message) => self.error(format!("{p}.keepalive.user_timeout"), &raw.referenced, message),
                    }
                }
                keepalive
            }
        };
        let max_ack_bytes = self.value(
            format!("{p}.max_ack_bytes"),
            &u.max_ack_bytes,
            DEFAULT_MAX_ACK_BYTES,
            parse_frame_size,
        );
        let idle_reconnect = self.value(
            format!("{p}.idle_reconnect"),
            &u.idle_reconnect,
            Duration::ZERO,
            parse_duration,
        );
        let idle_reconnect = (!idle_reconnect.is_zero()).then_some(idle_reconnect);
        if let (Some(_), Some(accept), Some(raw_idle)) =
            (idle_reconnect, &u.accept, &u.idle_reconnect)
        {
            let _ = accept;
            self.error(
                format!("{p}.idle_reconnect"),
                &raw_idle.referenced,
                "idle_reconnect needs `address`: with `accept` the receiver opens the connections, so the guard cannot reopen them (set keepalive instead)",
            );
        }
        let idle_reopen = self.value(
            format!("{p}.idle_reopen"),
            &u.idle_reopen,
            IdleReopen::OnDemand,
            parse_idle_reopen,
        );
        let send_proxy_protocol = self.value(
            format!("{p}.send_proxy_protocol"),
            &u.send_proxy_protocol,
            None,
            |s| parse_proxy_version(s).map(Some),
        );
        let transparent_source = self.value(
            format!("{p}.transparent_source"),
            &u.transparent_source,
            false,
            parse_bool,
        );
        if let (true, Some(raw)) = (transparent_source, &u.transparent_source) {
            let problem = if u.accept.is_some() {
                Some("transparent_source needs `address`: with `accept` the receiver opens the connection")
            } else if u.via.is_some() {
                Some("transparent_source cannot go through `via`: the proxy, not the guard, opens the connection to the receiver")
            } else if connections != Connections::Paired {
                Some("transparent_source needs `connections: paired`: a pooled connection carries many senders' messages")
            } else {
                None
            };
            if let Some(message) = problem {
                self.error(format!("{p}.transparent_source"), &raw.referenced, message);
            }
        }
        let reconnect = match &u.reconnect {
            None => Reconnect::default(),
            Some(r) => {
                let default = Reconnect::default();
                let initial = self.value(
                    format!("{p}.reconnect.initial"),
                    &r.value.initial,
                    default.initial,
                    parse_positive_duration,
                );
                let max = self.value(
                    format!("{p}.reconnect.max"),
                    &r.value.max,
                    default.max,
                    parse_positive_duration,
                );
                if max < initial {
                    self.error(
                        format!("{p}.reconnect.max"),
                        &r.referenced,
                        format!(
                            "max ({}) is shorter than initial ({}); make max at least initial",
                            humantime::format_duration(max),
                            humantime::format_duration(initial)
                        ),
                    );
                }
                Reconnect { initial, max }
            }
        };
        let (framing, release) = self.framing(&format!("{p}.framing"), &u.framing);
        UpstreamConfig {
            role: role.unwrap_or(ReceiverRole::Connect(UpstreamAddress {
                host: String::new(),
                port: 0,
            })),
            tls,
            via,
            connections,
            connect_timeout,
            ack_timeout,
            keepalive,
            max_ack_bytes,
            idle_reconnect,
            idle_reopen,
            send_proxy_protocol,
            transparent_source,
            reconnect,
            framing,
            release,
        }
    }

    /// `allow` of an upstream that accepts: who may connect in. Absent = any address (logged
    /// as a warning at start).
    fn receiver_allow(&mut self, p: &str, raw: Option<&Spanned<Vec<Text>>>) -> Allowlist {
        let Some(list) = raw else {
            return Allowlist::Any;
        };
        let entries: Vec<&str> = list.value.iter().map(|e| e.value.as_str()).collect();
        match Allowlist::parse(&entries) {
            Ok(allow) => allow,
            Err((j, message)) => {
                let at = list
                    .value
                    .get(j)
                    .map_or(&list.referenced, |e| &e.referenced);
                self.error(format!("{p}.allow[{j}]"), at, message);
                Allowlist::Networks(Vec::new())
            }
        }
    }

    /// A `framing:` block (`p` is its YAML path). Each byte is checked where it is written,
    /// then [`Framing::new`] judges the combination (reported at the block).
    fn framing(&mut self, p: &str, raw: &Option<Spanned<RawFraming>>) -> (Framing, MllpRelease) {
        let Some(raw) = raw else {
            return (Framing::MLLP, MllpRelease::One);
        };
        let f = &raw.value;
        let mut bytes_ok = true;
        let start = match &f.start {
            None => Framing::MLLP.start(),
            Some(text) => match parse_byte(&text.value) {
                Ok(b) => b,
                Err(message) => {
                    self.error(format!("{p}.start"), &text.referenced, message);
                    bytes_ok = false;
                    0
                }
            },
        };
        let end = match &f.end {
            None => Framing::MLLP.end().to_vec(),
            Some(list) => {
                let mut end = Vec::new();
                for (j, text) in list.value.iter().enumerate() {
                    match parse_byte(&text.value) {
                        Ok(b) => end.push(b),
                        Err(message) => {
                            self.error(format!("{p}.end[{j}]"), &text.referenced, message);
                            bytes_ok = false;
                        }
                    }
                }
                if !(1..=2).contains(&list.value.len()) {
                    self.error(
                        format!("{p}.end"),
                        &list.referenced,
                        format!(
                            "must be one or two bytes, e.g. [0x1C, 0x0D] or [0x1C], not {}",
                            list.value.len()
                        ),
                    );
                    bytes_ok = false;
                }
                end
            }
        };
        let mut framing = Framing::MLLP;
        if bytes_ok {
            match Framing::new(start, &end) {
                Ok(valid) => framing = valid,
                Err(message) => self.error(p, &raw.referenced, message),
            }
        }
        let release = self.value(
            format!("{p}.release"),
            &f.release,
            MllpRelease::One,
            parse_release,
        );
        (framing, release)
    }

    /// Resolves a file path from the config and checks the file can be opened, reporting it
    /// with the path as written. `None` when it cannot be used.
    fn file(&mut self, path: String, raw: &Text) -> Option<PathBuf> {
        let written = raw.value.trim();
        if written.is_empty() {
            self.error(path, &raw.referenced, "a file path is required here");
            return None;
        }
        let resolved = self.base_dir.join(written);
        let problem = match std::fs::metadata(&resolved) {
            Ok(meta) if meta.is_dir() => Some(format!(
                "\"{written}\" is a directory; give the path of a PEM file"
            )),
            Ok(_) => match std::fs::File::open(&resolved) {
                Ok(_) => None,
                Err(e) => Some(self.io_message(written, &e)),
            },
            Err(e) => Some(self.io_message(written, &e)),
        };
        match problem {
            None => {
                self.inputs.push(resolved.clone());
                Some(resolved)
            }
            Some(message) => {
                self.error(path, &raw.referenced, message);
                None
            }
        }
    }

    fn io_message(&self, written: &str, e: &io::Error) -> String {
        let relative_note = if Path::new(written).is_relative() {
            format!(
                " (relative paths are resolved from the config file's directory, here {})",
                self.base_dir.display()
            )
        } else {
            String::new()
        };
        match e.kind() {
            io::ErrorKind::NotFound => format!("file \"{written}\" not found{relative_note}"),
            io::ErrorKind::PermissionDenied => format!(
                "file \"{written}\" is not readable by this user (permission denied); fix its permissions or ownership"
            ),
            _ => format!("file \"{written}\" cannot be read: {e}"),
        }
    }

    /// Records a [`TlsError`] against the YAML key that named the file it is about.
    fn tls_error(
        &mut self,
        err: TlsError,
        p: &str,
        tls_at: &Location,
        files: &[(PemRole, String, &Text)],
    ) {
        let target = err.file().and_then(|(role, path)| {
            files
                .iter()
                .find(|(r, _, raw)| {
                    *r == role && tls_policy::same_file(self.base_dir, &raw.value, path)
                })
                .or_else(|| files.iter().find(|(r, _, _)| *r == role))
        });
        let (path, at, written) = match target {
            Some((_, key, raw)) => (
                format!("{p}.{key}"),
                &raw.referenced,
                Some(raw.value.trim()),
            ),
            None => (p.to_string(), tls_at, None),
        };
        let message = match (&err, written) {
            (TlsError::File { problem, .. }, Some(written)) => match problem {
                tls::FileProblem::Read(e) => self.io_message(written, e),
                problem => format!("file \"{written}\" {problem}"),
            },
            (TlsError::Pki { problem, .. }, Some(written)) => match problem {
                crate::tls::pki::PkiProblem::Read(e) => self.io_message(written, e),
                problem => format!("file \"{written}\" {problem}"),
            },
            (TlsError::KeyMismatch { .. }, Some(written)) => {
                let cert = files
                    .iter()
                    .find(|(r, _, _)| *r == PemRole::Certificate)
                    .map_or("", |(_, _, raw)| raw.value.trim());
                format!(
                    "the private key \"{written}\" does not match the certificate \"{cert}\" (their public keys differ); use the key the certificate was issued for"
                )
            }
            _ => err.to_string(),
        };
        self.error(path, at, message);
    }

    fn server_tls(&mut self, p: &str, raw: &Spanned<RawServerTls>) -> Option<ServerTls> {
        let t = &raw.value;
        let cert = self.file(format!("{p}.cert"), &t.cert);
        let pkcs12 = crate::tls::pki::is_pkcs12(Path::new(t.cert.value.trim()));
        let key = match (&t.key, pkcs12) {
            (Some(k), false) => self.file(format!("{p}.key"), k),
            (None, true) => cert.clone(),
            (Some(k), true) => {
                self.error(
                    format!("{p}.key"),
                    &k.referenced,
                    format!(
                        "`key` is not used with a PKCS#12 certificate (the key is inside \"{}\"); remove it",
                        t.cert.value.trim()
                    ),
                );
                None
            }
            (None, false) => {
                self.error(
                    p,
                    &raw.referenced,
                    "missing required key `key`; add `key: path/to/key.pem` (the certificate's private key), or give a PKCS#12 file (.p12/.pfx) as `cert`",
                );
                None
            }
        };
        let password = self.password_file(p, &t.password_file);
        let client_ca = match &t.client_ca {
            Some(ca) => Some(self.file(format!("{p}.client_ca"), ca)?),
            None => None,
        };
        let policy = self.tls_policy(p, &server_policy_keys(t));
        if client_ca.is_none() {
            let needs_ca = [
                ("crl", t.crl.as_ref().map(|c| &c.referenced)),
                (
                    "allowed_identities",
                    t.allowed_identities.as_ref().map(|a| &a.referenced),
                ),
            ];
            for (name, at) in needs_ca {
                if let Some(at) = at {
                    self.error(
                        format!("{p}.{name}"),
                        at,
                        format!("`{name}` applies to client certificates, which this listener does not ask for; set `client_ca` too, or remove `{name}`"),
                    );
                }
            }
            if t.crl.is_some() || t.allowed_identities.is_some() {
                return None;
            }
        }
        let (cert, key, password, policy) = (cert?, key?, password.ok()?, policy?);
        let mut files = vec![(PemRole::Certificate, "cert".to_string(), &t.cert)];
        if let Some(k) = &t.key {
            files.push((PemRole::PrivateKey, "key".to_string(), k));
        }
        if let Some(ca) = &t.client_ca {
            files.push((PemRole::TrustedCa, "client_ca".to_string(), ca));
        }
        for (key, raw) in tls_policy::crl_keys(&t.crl) {
            files.push((PemRole::Crl, key, raw));
        }
        let identity = tls::Identity {
            cert: &cert,
            key: Some(&key),
            password: password.as_ref(),
        };
        match tls::server_config_with(&identity, client_ca.as_deref(), &policy) {
            Ok((config, material)) => Some(ServerTls {
                cert,
                key,
                client_ca,
                policy,
                material,
                config,
            }),
            Err(err) => {
                self.tls_error(err, p, &raw.referenced, &files);
                None
            }
        }
    }

    fn client_tls(
        &mut self,
        p: &str,
        raw: &Spanned<RawClientTls>,
        address: Option<&UpstreamAddress>,
    ) -> Option<ClientTls> {
        let t = &raw.value;
        let server_name = match &t.server_name {
            Some(name) => match parse_server_name(&name.value) {
                Ok(server_name) => Some(server_name),
                Err(message) => {
                    self.error(format!("{p}.server_name"), &name.referenced, message);
                    None
                }
            },
            // The address host was validated as a DNS name or an IP address already.
            None => address.and_then(|a| ServerName::try_from(a.host.clone()).ok()),
        };
        let ca = self.file(format!("{p}.ca"), &t.ca);
        let cert = t.cert.as_ref().map(|c| self.file(format!("{p}.cert"), c));
        let pkcs12 = t
            .cert
            .as_ref()
            .is_some_and(|c| crate::tls::pki::is_pkcs12(Path::new(c.value.trim())));
        let key = match (&t.key, pkcs12) {
            (Some(k), true) => {
                self.error(
                    format!("{p}.key"),
                    &k.referenced,
                    "`key` is not used with a PKCS#12 certificate (the key is inside it); remove it",
                );
                Some(None)
            }
            (None, true) => cert.clone(),
            (k, false) => k.as_ref().map(|k| self.file(format!("{p}.key"), k)),
        };
        match (&t.cert, &t.key) {
            (Some(c), None) if !pkcs12 => self.error(
                format!("{p}.cert"),
                &c.referenced,
                "a client certificate needs its private key: add `key` next to `cert`",
            ),
            (None, Some(k)) => self.error(
                format!("{p}.key"),
                &k.referenced,
                "`key` is set but `cert` is not: add the client certificate as `cert`, or remove `key`",
            ),
            _ => {}
        }
        let password = self.password_file(p, &t.password_file);
        let policy = self.tls_policy(p, &client_policy_keys(t));
        let (cert, key) = match (cert, key) {
            (Some(cert), Some(key)) => (Some(cert?), Some(key?)),
            (None, None) => (None, None),
            _ => return None,
        };
        let ca = ca?;
        let server_name = server_name?;
        let (password, policy) = (password.ok()?, policy?);
        let mut files = vec![(PemRole::TrustedCa, "ca".to_string(), &t.ca)];
        if let Some(c) = &t.cert {
            files.push((PemRole::Certificate, "cert".to_string(), c));
        }
        if let Some(k) = &t.key {
            files.push((PemRole::PrivateKey, "key".to_string(), k));
        }
        for (key, raw) in tls_policy::crl_keys(&t.crl) {
            files.push((PemRole::Crl, key, raw));
        }
        let identity = cert.as_deref().map(|cert| tls::Identity {
            cert,
            key: key.as_deref(),
            password: password.as_ref(),
        });
        match tls::client_config_with(&ca, identity.as_ref(), &policy) {
            Ok((config, material)) => Some(ClientTls {
                ca,
                server_name,
                cert,
                key,
                policy,
                material,
                config,
            }),
            Err(err) => {
                self.tls_error(err, p, &raw.referenced, &files);
                None
            }
        }
    }
}

fn server_policy_keys(t: &RawServerTls) -> tls_policy::RawPolicy<'_> {
    tls_policy::RawPolicy {
        crl: &t.crl,
        crl_expired: &t.crl_expired,
        min_version: &t.min_version,
        cipher_suites: &t.cipher_suites,
        allowed_identities: &t.allowed_identities,
    }
}

fn client_policy_keys(t: &RawClientTls) -> tls_policy::RawPolicy<'_> {
    tls_policy::RawPolicy {
        crl: &t.crl,
        crl_expired: &t.crl_expired,
        min_version: &t.min_version,
        cipher_suites: &t.cipher_suites,
        allowed_identities: &t.allowed_identities,
    }
}

fn on_line(line: Option<usize>) -> String {
    line.map(|l| format!(" (line {l})")).unwrap_or_default()
}

/// Whether two listen addresses cannot both be bound. Port 0 never clashes (each bind gets its
/// own port). An unspecified IPv4 address covers every IPv4 address of the port; an unspecified
/// IPv6 address covers every address of the port, since Linux binds `[::]` dual-stack by default.
fn listen_clash(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() != b.port() || a.port() == 0 {
        return false;
    }
    let (ia, ib) = (a.ip().to_canonical(), b.ip().to_canonical());
    let covers = |wild: IpAddr, other: IpAddr| match wild {
        IpAddr::V6(w) if w.is_unspecified() => true,
        IpAddr::V4(w) if w.is_unspecified() => other.is_ipv4(),
        _ => false,
    };
    ia == ib || covers(ia, ib) || covers(ib, ia)
}

// ---------------------------------------------------------------------------------------------
// Value parsers: text in, typed value or a message (without the YAML path) out
// ---------------------------------------------------------------------------------------------

fn parse_route_name(s: &str) -> Result<String, String> {
    let ok = (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "route name \"{s}\" is not valid: use 1 to 63 characters from a-z, 0-9 and '-' (e.g. \"lab-1\")"
        ))
    }
}

fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    s.trim().parse().map_err(|_| {
        format!(
            "\"{s}\" is not an IP address with a port; write e.g. 127.0.0.1:2575, 0.0.0.0:2575 or \"[::1]:2575\" (host names are not accepted here)"
        )
    })
}

fn parse_upstream_address(s: &str) -> Result<UpstreamAddress, String> {
    let t = s.trim();
    let example =
        "write host:port, e.g. ehr.example.org:2575, 10.1.2.3:2575 or \"[2001:db8::7]:2575\"";
    let Some((host, port)) = t.rsplit_once(':') else {
        return Err(format!("\"{s}\" has no port; {example}"));
    };
    let host = if let Some(inner) = host.strip_prefix('[') {
        match inner.strip_suffix(']').map(str::parse::<Ipv6Addr>) {
            Some(Ok(ip)) => ip.to_string(),
            _ => {
                return Err(format!(
                    "\"{s}\": \"{host}\" is not an IPv6 address in brackets; {example}"
                ))
            }
        }
    } else if host.contains(':') {
        return Err(format!(
            "\"{s}\": put an IPv6 address in brackets, e.g. \"[2001:db8::7]:2575\""
        ));
    } else if host.parse::<Ipv4Addr>().is_ok() || rustls_pki_types::DnsName::try_from(host).is_ok()
    {
        host.to_string()
    } else {
        return Err(format!(
            "\"{s}\": \"{host}\" is not a valid host name or IP address; {example}"
        ));
    };
    match port.parse::<u16>() {
        Ok(port) if port != 0 => Ok(UpstreamAddress { host, port }),
        _ => Err(format!(
            "\"{s}\": the port must be a number from 1 to 65535; {example}"
        )),
    }
}

fn parse_server_name(s: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(s.trim().to_string()).map_err(|_| {
        format!(
            "\"{s}\" is not a valid server name; write the DNS name (or IP address) the upstream's certificate is issued for, e.g. ehr.example.org"
        )
    })
}

/// A duration such as `30s`, `500ms`, `5m`, `1h 30m`; a bare `0` means zero.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        if t.bytes().all(|b| b == b'0') {
            return Ok(Duration::ZERO);
        }
        return Err(format!("\"{s}\" has no unit; write e.g. {t}s or {t}ms"));
    }
    humantime::parse_duration(t).map_err(|e| {
        let detail = match e {
            humantime::DurationError::UnknownUnit { unit, .. } => {
                format!(" (unknown unit \"{unit}\"; use ms, s, m, h or d)")
            }
            humantime::DurationError::NumberOverflow => " (too large)".to_string(),
            _ => String::new(),
        };
        format!("\"{s}\" is not a duration{detail}; write e.g. 30s, 500ms or 5m")
    })
}

fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err(format!("must be greater than zero, not \"{s}\""));
    }
    Ok(d)
}

fn parse_keepalive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.subsec_nanos() != 0 || !(1..=MAX_KEEPALIVE_SECS).contains(&d.as_secs()) {
        return Err(format!(
            "must be whole seconds from 1s to {MAX_KEEPALIVE_SECS}s (the kernel's limits), not \"{s}\""
        ));
    }
    Ok(d)
}

fn parse_keepalive_retries(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(n) if (1..=MAX_KEEPALIVE_RETRIES).contains(&n) => Ok(n),
        _ => Err(format!(
            "must be a whole number from 1 to {MAX_KEEPALIVE_RETRIES}, not \"{s}\""
        )),
    }
}

fn parse_count(s: &str, min: usize) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n >= min => Ok(n),
        _ => Err(format!(
            "must be a whole number of at least {min}, not \"{s}\""
        )),
    }
}

fn parse_connections(s: &str) -> Result<Connections, String> {
    let t = s.trim();
    if t == "paired" {
        return Ok(Connections::Paired);
    }
    match t.parse::<usize>().ok().and_then(NonZeroUsize::new) {
        Some(n) => Ok(Connections::Pool(n)),
        None => Err(format!(
            "must be `paired` (one upstream connection per sender connection) or a pool size of at least 1, not \"{s}\""
        )),
    }
}

/// `delivery` as written, before its custody settings are read.
#[derive(Clone, Copy)]
enum DeliveryKind {
    Forward,
    StoreAndForward,
}

fn parse_delivery(s: &str) -> Result<DeliveryKind, String> {
    match s.trim() {
        "forward" => Ok(DeliveryKind::Forward),
        "store-and-forward" => Ok(DeliveryKind::StoreAndForward),
        _ => Err(format!(
            "must be `forward` (relay each message while the sender waits) or `store-and-forward` (queue it durably, ack it, deliver it later), not \"{s}\""
        )),
    }
}

fn parse_ack_mode(s: &str) -> Result<AckMode, String> {
    match s.trim() {
        "always" => Ok(AckMode::Always),
        "errors-only" => Ok(AckMode::ErrorsOnly),
        "never" => Ok(AckMode::Never),
        "msh15" => Ok(AckMode::Msh15),
        _ => Err(format!(
            "must be `always` (every message gets an ack), `errors-only` (only negative acks), `never` (no acks) or `msh15` (as each message's MSH-15 asks), not \"{s}\""
        )),
    }
}

fn parse_reply_action(s: &str) -> Result<ReplyAction, String> {
    match s.trim() {
        "retry" => Ok(ReplyAction::Retry),
        "dead-letter" => Ok(ReplyAction::DeadLetter),
        "accept" => Ok(ReplyAction::Accept),
        _ => Err(format!(
            "must be `retry` (send it again after backoff), `dead-letter` (move it to the route's dead-letter store) or `accept` (count it as delivered), not \"{s}\""
        )),
    }
}

fn parse_on_upstream_failure(s: &str) -> Result<OnUpstreamFailure, String> {
    match s.trim() {
        "nack" => Ok(OnUpstreamFailure::Nack),
        "close" => Ok(OnUpstreamFailure::Close),
        _ => Err(format!(
            "must be `nack` (answer the sender with an AE ack saying why) or `close` (close the sender's connection), not \"{s}\""
        )),
    }
}

/// A framing byte: hex `0x0B` (one or two hex digits, either case) or decimal `11`.
fn parse_byte(s: &str) -> Result<u8, String> {
    let t = s.trim();
    let (digits, radix) = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) if (1..=2).contains(&hex.len()) && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            (hex, 16)
        }
        Some(_) => ("", 16),
        None if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) => (t, 10),
        None => ("", 10),
    };
    u8::from_str_radix(digits, radix).map_err(|_| {
        format!("\"{s}\" is not a byte; write 0x00 to 0xFF (hex, e.g. 0x0B) or 0 to 255 (decimal)")
    })
}

/// `proxy_protocol` / `send_proxy_protocol`: `v1` or `v2`.
fn parse_proxy_version(s: &str) -> Result<crate::net::proxy_protocol::Version, String> {
    match s.trim() {
        "v1" => Ok(crate::net::proxy_protocol::Version::V1),
        "v2" => Ok(crate::net::proxy_protocol::Version::V2),
        _ => Err(format!(
            "must be v1 (text header) or v2 (binary header), not \"{s}\""
        )),
    }
}

/// A switch: `true` or `false`.
fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!("must be true or false, not \"{s}\"")),
    }
}

/// `idle_reopen`: `on-demand` or `at-once`.
fn parse_idle_reopen(s: &str) -> Result<IdleReopen, String> {
    match s.trim() {
        "on-demand" => Ok(IdleReopen::OnDemand),
        "at-once" => Ok(IdleReopen::AtOnce),
        _ => Err(format!(
            "must be on-demand (reopen when the next message comes) or at-once (reopen straight away), not \"{s}\""
        )),
    }
}

/// `framing.release`: `1` or `2`.
fn parse_release(s: &str) -> Result<MllpRelease, String> {
    match s.trim() {
        "1" => Ok(MllpRelease::One),
        "2" => Ok(MllpRelease::Two),
        _ => Err(format!(
            "must be 1 (MLLP release 1) or 2 (release 2, commit blocks), not \"{s}\""
        )),
    }
}

/// A byte size: a plain number of bytes, or a whole number with a unit: `KB`, `MB`, `GB`
/// (1000-based) or `KiB`, `MiB`, `GiB` (1024-based), case-insensitive, optionally spaced.
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let multiplier: Option<u64> = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => Some(1),
        "kb" => Some(1000),
        "mb" => Some(1000 * 1000),
        "gb" => Some(1000 * 1000 * 1000),
        "kib" => Some(1 << 10),
        "mib" => Some(1 << 20),
        "gib" => Some(1 << 30),
        _ => None,
    };
    number
        .parse::<u64>()
        .ok()
        .zip(multiplier)
        .and_then(|(n, m)| n.checked_mul(m))
        .ok_or_else(|| {
            format!(
                "\"{s}\" is not a size; write a number of bytes or a whole number with a unit: KB, MB, GB (1000-based) or KiB, MiB, GiB (1024-based), e.g. 16MiB"
            )
        })
}

fn parse_frame_size(s: &str) -> Result<usize, String> {
    let bytes = parse_size(s)?;
    match usize::try_from(bytes) {
        Ok(n) if (MIN_FRAME_BYTES..=MAX_FRAME_BYTES).contains(&n) => Ok(n),
        _ => Err(format!(
            "must be from 1KiB to 1GiB, not \"{s}\" ({bytes} bytes)"
        )),
    }
}

/// `queue.jetstream.servers[]`: `nats://host:port`, `tls://host:port` or `host:port`.
fn parse_nats_server(s: &str) -> Result<String, String> {
    let t = s.trim();
    let rest = t
        .strip_prefix("nats://")
        .or_else(|| t.strip_prefix("tls://"))
        .unwrap_or(t);
    let bad = || {
        format!("\"{s}\" is not a NATS server URL; write e.g. nats://10.0.0.5:4222 or tls://nats.example.org:4222")
    };
    if rest.contains("://") || rest.is_empty() || rest.contains(char::is_whitespace) {
        return Err(bad());
    }
    let host_port = rest.rsplit('@').next().unwrap_or(rest);
    if let Some((host, port)) = host_port.rsplit_once(':') {
        if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(bad());
        }
    }
    Ok(t.to_string())
}

/// `queue.jetstream.stream`: a JetStream stream name (also used in subjects).
fn parse_stream_name(s: &str) -> Result<String, String> {
    let t = s.trim();
    if t.is_empty()
        || t.len() > 200
        || !t
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(format!(
            "must be letters, digits, `_` or `-` (at most 200), e.g. MLLP_LAB, not \"{s}\""
        ));
    }
    Ok(t.to_string())
}

/// `queue.max_bytes`, `queue.segment_bytes`: a size of at least 1 MiB.
fn parse_queue_size(s: &str) -> Result<u64, String> {
    let bytes = parse_size(s)?;
    if bytes < MIN_QUEUE_BYTES {
        return Err(format!(
            "must be at least 1MiB, not \"{s}\" ({bytes} bytes)"
        ));
    }
    Ok(bytes)
}

/// Fuzz entry (the `config` fuzz target calls this): parses `data` (lossily decoded as UTF-8)
/// as a config file. Must never panic, whatever the bytes; every error must carry a message and
/// display on one line. Relative paths resolve from a directory that does not exist, and texts
/// naming device or kernel trees are skipped, so a run never reads from `/dev/zero` or a FIFO.
pub fn fuzz_config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if ["/dev", "/proc", "/sys"]
        .iter()
        .any(|tree| text.contains(tree))
    {
        return;
    }
    let base = Path::new("/nonexistent/mllp-guard-fuzz");
    match Config::parse(&text, Path::new("fuzz.yaml"), base) {
        Ok(config) => {
            assert!(!config.routes.is_empty(), "a valid config has a route");
            let _ = format!("{config:?}");
        }
        Err(errors) => {
            assert!(!errors.0.is_empty(), "an error result holds an error");
            for e in &errors.0 {
                assert!(!e.message.is_empty());
                let _ = e.to_string();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::test_pki::Pki;

    /// A config directory with certificates: `certs/ca.pem` issued `guard` (server) and
    /// `client` (client), and `certs/ehr-ca.pem` issued `ehr`.
    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let certs = dir.path().join("certs");
            std::fs::create_dir(&certs).unwrap();
            let ca = Pki::new(&certs, "clients");
            ca.issue("client", &["lab.example.org"], "lab");
            ca.issue("guard", &["guard.example.org"], "guard");
            let ehr = Pki::new(&certs, "ehr-ca");
            ehr.issue("ehr", &["ehr.example.org"], "ehr");
            Fixture { dir }
        }

        fn base(&self) -> &Path {
            self.dir.path()
        }

        fn parse(&self, yaml: &str) -> Result<Config, ConfigErrors> {
            Config::parse(yaml, Path::new("guard.yaml"), self.base())
        }

        fn errors(&self, yaml: &str) -> String {
            self.parse(yaml).unwrap_err().to_string()
        }

        /// Errors with the temporary directory replaced by `$DIR`.
        fn errors_in_dir(&self, yaml: &str) -> String {
            self.errors(yaml)
                .replace(&self.base().display().to_string(), "$DIR")
        }
    }

    /// Errors of a config needing no files.
    fn errors(yaml: &str) -> String {
        Config::parse(yaml, Path::new("guard.yaml"), Path::new("/etc/mllp-guard"))
            .unwrap_err()
            .to_string()
    }

    const MINIMAL: &str = "\
routes:
  - name: lab
    listen: 127.0.0.1:2575
    allow: [127.0.0.0/8]
    upstream:
      address: 127.0.0.1:2576
";

    const CONTRACT: &str = r#"
routes:
  - name: lab                        # unique, [a-z0-9-]
    listen: 127.0.0.1:2575           # also [::1]:2575, 0.0.0.0:2575
    tls:                             # optional; absent = plaintext listener
      cert: certs/guard.pem          # chain PEM
      key: certs/guard.key
      client_ca: certs/clients.pem   # optional; present = client certificate required and verified
    allow: [127.0.0.0/8, "::1/128"]  # required: CIDRs or bare IPs; ["any"] opens it explicitly; [] denies all
    max_connections: 256
    max_message_bytes: 16MiB
    receive_timeout: 30s             # a frame that has started must finish within this
    idle_timeout: 0s                 # close a quiet sender after this; 0s = never
    on_upstream_failure: nack        # nack = answer AE with the reason; close = close the sender's connection
    upstream:
      address: 127.0.0.1:2576        # host:port, DNS names allowed
      tls:                           # optional; absent = plaintext
        ca: certs/ehr-ca.pem
        server_name: ehr.example.org # optional, defaults to the host part of address
        cert: certs/client.pem       # optional client certificate
        key: certs/client.key
      connections: paired            # paired = one upstream connection per sender connection; or a number N = shared pool of N
      connect_timeout: 5s
      ack_timeout: 30s
      keepalive: { time: 60s, interval: 10s, retries: 6 }   # TCP keepalive, applied on both legs
"#;

    #[test]
    fn the_contract_example_parses_into_typed_values() {
        let fx = Fixture::new();
        let config = fx.parse(CONTRACT).unwrap();
        assert_eq!(config.file, Path::new("guard.yaml"));
        assert_eq!(config.shutdown_grace, Duration::from_secs(10));
        let [route] = &config.routes[..] else {
            panic!("one route expected");
        };
        assert_eq!(route.name, "lab");
        assert_eq!(
            route.sender.listen_addr().unwrap(),
            "127.0.0.1:2575".parse().unwrap()
        );
        let tls = route.tls.as_ref().unwrap();
        assert_eq!(tls.cert, fx.base().join("certs/guard.pem"));
        assert_eq!(tls.key, fx.base().join("certs/guard.key"));
        assert_eq!(tls.client_ca, Some(fx.base().join("certs/clients.pem")));
        assert_eq!(
            route.allow,
            Allowlist::parse(&["127.0.0.0/8", "::1/128"]).unwrap()
        );
        assert_eq!(route.max_connections, 256);
        assert_eq!(route.max_message_bytes, 16 * 1024 * 1024);
        assert_eq!(route.receive_timeout, Duration::from_secs(30));
        assert_eq!(route.idle_timeout, None);
        assert_eq!(route.handshake_timeout, Duration::from_secs(10));
        assert_eq!(route.on_upstream_failure, OnUpstreamFailure::Nack);
        let up = &route.upstream;
        assert_eq!(
            up.role,
            ReceiverRole::Connect(UpstreamAddress {
                host: "127.0.0.1".into(),
                port: 2576
            })
        );
        let utls = up.tls.as_ref().unwrap();
        assert_eq!(utls.ca, fx.base().join("certs/ehr-ca.pem"));
        assert_eq!(
            utls.server_name,
            ServerName::try_from("ehr.example.org").unwrap()
        );
        assert_eq!(utls.cert, Some(fx.base().join("certs/client.pem")));
        assert_eq!(utls.key, Some(fx.base().join("certs/client.key")));
        assert_eq!(up.connections, Connections::Paired);
        assert_eq!(up.connect_timeout, Duration::from_secs(5));
        assert_eq!(up.ack_timeout, Duration::from_secs(30));
        assert_eq!(
            up.keepalive,
            Keepalive {
                time: Duration::from_secs(60),
                interval: Duration::from_secs(10),
                retries: 6,
                user_timeout: Duration::from_secs(120),
            }
        );
        assert_eq!(up.max_ack_bytes, 1024 * 1024);
        assert_eq!(up.idle_reconnect, None);
        assert_eq!(up.reconnect, Reconnect::default());
    }

    #[test]
    fn session_keys_of_the_upstream_are_read_and_checked() {
        let fx = Fixture::new();
        let ok = "routes:\n  - name: lab\n    listen: 127.0.0.1:2575\n    allow: [any]\n    upstream:\n      address: ehr:2575\n      idle_reconnect: 240s\n      keepalive: { time: 60s, interval: 10s, retries: 6, user_timeout: 130s }\n      reconnect: { initial: 2s, max: 60s }\n";
        let config = Config::parse(ok, Path::new("guard.yaml"), fx.base()).unwrap();
        let up = &config.routes[0].upstream;
        assert_eq!(up.idle_reconnect, Some(Duration::from_secs(240)));
        assert_eq!(up.keepalive.user_timeout, Duration::from_secs(130));
        assert_eq!(
            up.reconnect,
            Reconnect {
                initial: Duration::from_secs(2),
                max: Duration::from_secs(60)
            }
        );
        let bad = ok
            .replace("user_timeout: 130s", "user_timeout: 30s")
            .replace("max: 60s", "max: 1s");
        let errors = Config::parse(&bad, Path::new("guard.yaml"), fx.base())
            .unwrap_err()
            .to_string();
        assert_eq!(
            errors,
            "guard.yaml:8:72: routes[0].upstream.keepalive.user_timeout: must be at least time + interval x retries (2m), or the keepalive probes never get to finish\n\
             guard.yaml:9:18: routes[0].upstream.reconnect.max: max (1s) is shorter than initial (2s); make max at least initial"
        );
    }

    #[test]
    fn omitted_keys_take_their_defaults() {
        let config =
            Config::parse(MINIMAL, Path::new("guard.yaml"), Path::new("/nowhere")).unwrap();
        assert_eq!(config.shutdown_grace, DEFAULT_SHUTDOWN_GRACE);
        let route = &config.routes[0];
        assert!(route.tls.is_none());
        assert_eq!(route.max_connections, 256);
        assert_eq!(route.max_message_bytes, 16 * 1024 * 1024);
        assert_eq!(route.receive_timeout, Duration::from_secs(30));
        assert_eq!(route.idle_timeout, None);
        assert_eq!(route.handshake_timeout, Duration::from_secs(10));
        assert_eq!(route.on_upstream_failure, OnUpstreamFailure::Nack);
        let up = &route.upstream;
        assert!(up.tls.is_none());
        assert_eq!(up.connections, Connections::Paired);
        assert_eq!(up.connect_timeout, Duration::from_secs(5));
        assert_eq!(up.ack_timeout, Duration::from_secs(30));
        assert_eq!(up.keepalive, Keepalive::default());
        assert_eq!(up.max_ack_bytes, 1024 * 1024);
    }

    #[test]
    fn every_optional_key_is_read_when_given() {
        let yaml = r#"
shutdown_grace: 1m
routes:
  - name: adt-2
    listen: "[::1]:0"
    allow: ["any"]
    max_connections: 3
    max_message_bytes: 512KiB
    receive_timeout: 2s
    idle_timeout: 5m
    handshake_timeout: 750ms
    on_upstream_failure: close
    upstream:
      address: "[2001:db8::7]:2575"
      connections: 1
      connect_timeout: 1s
      ack_timeout: 1m 30s
      keepalive:
        interval: 5s
      max_ack_bytes: 64KB
"#;
        let config = Config::parse(yaml, Path::new("g.yaml"), Path::new("/")).unwrap();
        assert_eq!(config.shutdown_grace, Duration::from_secs(60));
        let r = &config.routes[0];
        assert_eq!(r.name, "adt-2");
        assert_eq!(r.sender.listen_addr().unwrap(), "[::1]:0".parse().unwrap());
        assert_eq!(r.allow, Allowlist::Any);
        assert_eq!(r.max_connections, 3);
        assert_eq!(r.max_message_bytes, 512 * 1024);
        assert_eq!(r.receive_timeout, Duration::from_secs(2));
        assert_eq!(r.idle_timeout, Some(Duration::from_secs(300)));
        assert_eq!(r.handshake_timeout, Duration::from_millis(750));
        assert_eq!(r.on_upstream_failure, OnUpstreamFailure::Close);
        let up = &r.upstream;
        assert_eq!(up.role.address().unwrap().host, "2001:db8::7");
        assert_eq!(up.role.address().unwrap().to_string(), "[2001:db8::7]:2575");
        assert_eq!(
            up.connections,
            Connections::Pool(NonZeroUsize::new(1).unwrap())
        );
        assert_eq!(up.ack_timeout, Duration::from_secs(90));
        assert_eq!(
            up.keepalive,
            Keepalive {
                time: Duration::from_secs(60),
                interval: Duration::from_secs(5),
                retries: 6,
                user_timeout: Duration::from_secs(90),
            }
        );
        assert_eq!(up.max_ack_bytes, 64_000);
    }

    #[test]
    fn an_empty_allow_list_denies_everyone_and_is_not_an_error() {
        let yaml = MINIMAL.replace("[127.0.0.0/8]", "[]");
        let config = Config::parse(&yaml, Path::new("g.yaml"), Path::new("/")).unwrap();
        assert_eq!(config.routes[0].allow, Allowlist::Networks(vec![]));
    }

    #[test]
    fn client_tls_server_name_defaults_to_the_address_host() {
        let fx = Fixture::new();
        let yaml = MINIMAL.replace(
            "address: 127.0.0.1:2576\n",
            "address: ehr.example.org:2576\n      tls:\n        ca: certs/ehr-ca.pem\n",
        );
        let config = fx.parse(&yaml).unwrap();
        let tls = config.routes[0].upstream.tls.as_ref().unwrap();
        assert_eq!(
            tls.server_name,
            ServerName::try_from("ehr.example.org").unwrap()
        );
        assert_eq!(tls.cert, None);
        assert_eq!(
            format!("{tls:?}"),
            format!(
                "ClientTls {{ ca: {:?}, server_name: DnsName(\"ehr.example.org\"), cert: None, key: None, .. }}",
                fx.base().join("certs/ehr-ca.pem")
            )
        );
    }

    #[test]
    fn load_reads_the_file_and_resolves_paths_from_its_directory() {
        let fx = Fixture::new();
        let file = fx.base().join("guard.yaml");
        std::fs::write(&file, CONTRACT).unwrap();
        let config = Config::load(&file).unwrap();
        assert_eq!(config.file, file);
        assert_eq!(
            config.routes[0].tls.as_ref().unwrap().cert,
            fx.base().join("certs/guard.pem")
        );
    }

    #[test]
    fn a_missing_config_file_is_one_error_without_position() {
        let err = Config::load(Path::new("/nonexistent/guard.yaml")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/nonexistent/guard.yaml: config file not found"
        );
    }

    #[test]
    fn an_unknown_key_is_named_with_a_suggestion_and_the_valid_keys() {
        let yaml = MINIMAL.replace("listen:", "listne:");
        assert_eq!(
            errors(&yaml),
            "guard.yaml:3:5: routes[0].listne: unknown key `listne` (did you mean `listen`?); valid keys here: name, listen, dial, transparent, proxy_protocol, tls, allow, max_connections, max_message_bytes, receive_timeout, idle_timeout, handshake_timeout, on_upstream_failure, upstream, delivery, queue, ack_mode, retry, on_reply, duplicate_window, framing, rules, limits"
        );
    }

    #[test]
    fn an_unknown_key_deep_in_a_flow_map_gets_its_full_path() {
        let yaml = format!("{MINIMAL}      keepalive: {{ time: 60s, retry: 3 }}\n");
        assert_eq!(
            errors(&yaml),
            "guard.yaml:7:31: routes[0].upstream.keepalive.retry: unknown key `retry` (did you mean `retries`?); valid keys here: time, interval, retries, user_timeout"
        );
    }

    #[test]
    fn a_missing_required_key_says_what_to_add() {
        let yaml = MINIMAL.replace("    listen: 127.0.0.1:2575\n", "");
        assert_eq!(
            errors(&yaml),
            "guard.yaml:2:5: routes[0]: missing required key `listen` (or `dial`); add e.g. `listen: 127.0.0.1:2575`, or `dial: sender-host:5000` to connect out to a sender that is an MLLP server"
        );
    }

    #[test]
    fn a_missing_allow_list_is_an_error_with_an_example() {
        let yaml = MINIMAL.replace("    allow: [127.0.0.0/8]\n", "");
        assert_eq!(
            errors(&yaml),
            "guard.yaml:2:5: routes[0]: missing required key `allow`; list who may connect, e.g. `allow: [10.0.0.0/8, 192.0.2.7]` ([\"any\"] admits every address, [] none)"
        );
    }

    #[test]
    fn a_list_where_a_value_belongs_is_a_type_error_with_a_quoting_hint() {
        let yaml = MINIMAL.replace("listen: 127.0.0.1:2575", "listen: [::1]:2575");
        assert_eq!(
            errors(&yaml),
            "guard.yaml:3:13: routes[0].listen: expected a single value here, not a list or a map (quote addresses that start with '[', e.g. \"[::1]:2575\")"
        );
    }

    #[test]
    fn a_yaml_syntax_error_is_reported_with_its_position() {
        let yaml = MINIMAL.replace("allow: [127.0.0.0/8]", "allow: [127.0.0.0/8");
        let err = errors(&yaml);
        assert!(err.starts_with("guard.yaml:"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn an_unknown_top_level_key_lists_the_valid_ones() {
        assert_eq!(
            errors(&format!("{MINIMAL}extra: 1\n")),
            "guard.yaml:7:1: extra: unknown key `extra`; valid keys here: routes, shutdown_grace, state_dir, upstreams, admin, log_payloads"
        );
    }

    #[test]
    fn a_tab_in_the_indentation_gets_a_hint() {
        let err = errors(&MINIMAL.replace("    allow", "\tallow"));
        assert!(
            err.ends_with("(indent YAML with spaces, not tabs)"),
            "{err}"
        );
    }

    #[test]
    fn a_duplicate_key_is_reported() {
        let yaml = MINIMAL.replace(
            "    listen: 127.0.0.1:2575\n",
            "    listen: 127.0.0.1:2575\n    name: lab2\n",
        );
        assert_eq!(
            errors(&yaml),
            "guard.yaml:4:5: routes[0]: key `name` appears twice; keep one of them"
        );
    }

    #[test]
    fn an_empty_file_needs_routes() {
        assert_eq!(
            errors(""),
            "guard.yaml:1:1: the file is empty; it needs at least a `routes:` list"
        );
        assert_eq!(
            errors("routes: []\n"),
            "guard.yaml:1:9: routes: no routes are defined; add at least one route under `routes:`"
        );
    }

    #[test]
    fn every_semantic_error_in_a_file_is_reported_in_document_order() {
        let yaml = r#"
shutdown_grace: soon
routes:
  - name: Lab_1
    listen: localhost:2575
    allow: [10.0.0.0/33]
    max_connections: 0
    max_message_bytes: 16XB
    receive_timeout: 30
    idle_timeout: 0s
    handshake_timeout: 0s
    on_upstream_failure: drop
    upstream:
      address: ehr.example.org
      connections: 0
      connect_timeout: 5 parsecs
      ack_timeout: 0
      keepalive: { time: 500ms, interval: 0s, retries: 128 }
      max_ack_bytes: 2GiB
"#;
        let expected = [
            "guard.yaml:2:17: shutdown_grace: \"soon\" is not a duration; write e.g. 30s, 500ms or 5m",
            "guard.yaml:4:11: routes[0].name: route name \"Lab_1\" is not valid: use 1 to 63 characters from a-z, 0-9 and '-' (e.g. \"lab-1\")",
            "guard.yaml:5:13: routes[0].listen: \"localhost:2575\" is not an IP address with a port; write e.g. 127.0.0.1:2575, 0.0.0.0:2575 or \"[::1]:2575\" (host names are not accepted here)",
            "guard.yaml:6:13: routes[0].allow[0]: \"10.0.0.0/33\" is not an IP address or CIDR (write e.g. 10.0.0.0/8, 192.0.2.7, \"::1/128\", or \"any\")",
            "guard.yaml:7:22: routes[0].max_connections: must be a whole number of at least 1, not \"0\"",
            "guard.yaml:8:24: routes[0].max_message_bytes: \"16XB\" is not a size; write a number of bytes or a whole number with a unit: KB, MB, GB (1000-based) or KiB, MiB, GiB (1024-based), e.g. 16MiB",
            "guard.yaml:9:22: routes[0].receive_timeout: \"30\" has no unit; write e.g. 30s or 30ms",
            "guard.yaml:11:24: routes[0].handshake_timeout: must be greater than zero, not \"0s\"",
            "guard.yaml:12:26: routes[0].on_upstream_failure: must be `nack` (answer the sender with an AE ack saying why) or `close` (close the sender's connection), not \"drop\"",
            "guard.yaml:14:16: routes[0].upstream.address: \"ehr.example.org\" has no port; write host:port, e.g. ehr.example.org:2575, 10.1.2.3:2575 or \"[2001:db8::7]:2575\"",
            "guard.yaml:15:20: routes[0].upstream.connections: must be `paired` (one upstream connection per sender connection) or a pool size of at least 1, not \"0\"",
            "guard.yaml:16:24: routes[0].upstream.connect_timeout: \"5 parsecs\" is not a duration (unknown unit \"parsecs\"; use ms, s, m, h or d); write e.g. 30s, 500ms or 5m",
            "guard.yaml:17:20: routes[0].upstream.ack_timeout: must be greater than zero, not \"0\"",
            "guard.yaml:18:26: routes[0].upstream.keepalive.time: must be whole seconds from 1s to 32767s (the kernel's limits), not \"500ms\"",
            "guard.yaml:18:43: routes[0].upstream.keepalive.interval: must be whole seconds from 1s to 32767s (the kernel's limits), not \"0s\"",
            "guard.yaml:18:56: routes[0].upstream.keepalive.retries: must be a whole number from 1 to 127, not \"128\"",
            "guard.yaml:19:22: routes[0].upstream.max_ack_bytes: must be from 1KiB to 1GiB, not \"2GiB\" (2147483648 bytes)",
        ];
        assert_eq!(errors(yaml), expected.join("\n"));
    }

    #[test]
    fn duplicate_route_names_and_listen_addresses_are_reported_against_the_later_route() {
        let yaml = r#"
routes:
  - name: lab
    listen: 0.0.0.0:2575
    allow: [any]
    upstream: { address: "ehr:1" }
  - name: lab
    listen: 127.0.0.1:2575
    allow: [any]
    upstream: { address: "ehr:1" }
  - name: adt
    listen: 127.0.0.1:2575
    allow: [any]
    upstream: { address: "ehr:1" }
  - name: orm
    listen: "[::]:2580"
    allow: [any]
    upstream: { address: "ehr:1" }
  - name: oru
    listen: 10.0.0.1:2580
    allow: [any]
    upstream: { address: "ehr:1" }
  - name: zero-a
    listen: 127.0.0.1:0
    allow: [any]
    upstream: { address: "ehr:1" }
  - name: zero-b
    listen: 127.0.0.1:0
    allow: [any]
    upstream: { address: "ehr:1" }
"#;
        let expected = [
            "guard.yaml:7:11: routes[1].name: route name \"lab\" is already used by routes[0] (line 3); give each route a unique name",
            "guard.yaml:8:13: routes[1].listen: listen address 127.0.0.1:2575 overlaps 0.0.0.0:2575 of routes[0] \"lab\" (line 4) (an unspecified address listens on every local address); give each route its own port",
            "guard.yaml:12:13: routes[2].listen: listen address 127.0.0.1:2575 overlaps 0.0.0.0:2575 of routes[0] \"lab\" (line 4) (an unspecified address listens on every local address); give each route its own port",
            "guard.yaml:20:13: routes[4].listen: listen address 10.0.0.1:2580 overlaps [::]:2580 of routes[3] \"orm\" (line 16) (an unspecified address listens on every local address); give each route its own port",
        ];
        assert_eq!(errors(yaml), expected.join("\n"));
    }

    #[test]
    fn the_same_listen_address_twice_is_named_as_already_used() {
        let yaml = format!(
            "{MINIMAL}{}",
            MINIMAL
                .trim_start_matches("routes:\n")
                .replace("name: lab", "name: lab-2")
        );
        assert_eq!(
            errors(&yaml),
            "guard.yaml:8:13: routes[1].listen: listen address 127.0.0.1:2575 is already used by routes[0] \"lab\" (line 3); give each route its own port"
        );
    }

    #[test]
    fn bad_upstream_addresses_say_what_is_wrong() {
        let cases = [
            ("ehr:0", "\"ehr:0\": the port must be a number from 1 to 65535; write host:port, e.g. ehr.example.org:2575, 10.1.2.3:2575 or \"[2001:db8::7]:2575\""),
            ("ehr:65536", "\"ehr:65536\": the port must be a number from 1 to 65535; write host:port, e.g. ehr.example.org:2575, 10.1.2.3:2575 or \"[2001:db8::7]:2575\""),
            ("\"::1:2575\"", "\"::1:2575\": put an IPv6 address in brackets, e.g. \"[2001:db8::7]:2575\""),
            ("\"[ehr]:2575\"", "\"[ehr]:2575\": \"[ehr]\" is not an IPv6 address in brackets; write host:port, e.g. ehr.example.org:2575, 10.1.2.3:2575 or \"[2001:db8::7]:2575\""),
            ("ehr_1!:2575", "\"ehr_1!:2575\": \"ehr_1!\" is not a valid host name or IP address; write host:port, e.g. ehr.example.org:2575, 10.1.2.3:2575 or \"[2001:db8::7]:2575\""),
        ];
        for (value, message) in cases {
            let yaml = MINIMAL.replace("address: 127.0.0.1:2576", &format!("address: {value}"));
            assert_eq!(
                errors(&yaml),
                format!("guard.yaml:6:16: routes[0].upstream.address: {message}"),
                "{value}"
            );
        }
    }

    #[test]
    fn sizes_accept_bytes_and_both_unit_families() {
        assert_eq!(parse_size("1048576"), Ok(1_048_576));
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("1MB"), Ok(1_000_000));
        assert_eq!(parse_size("2 GB"), Ok(2_000_000_000));
        assert_eq!(parse_size("1gib"), Ok(1 << 30));
        assert!(parse_size("1.5MiB").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
        assert_eq!(parse_frame_size("1KiB"), Ok(1024));
        assert_eq!(
            parse_frame_size("1000"),
            Err("must be from 1KiB to 1GiB, not \"1000\" (1000 bytes)".to_string())
        );
        assert_eq!(parse_frame_size("1GiB"), Ok(1 << 30));
    }

    #[test]
    fn route_names_follow_the_charset_and_length_rule() {
        assert!(parse_route_name("lab-1").is_ok());
        assert!(parse_route_name(&"a".repeat(63)).is_ok());
        assert!(parse_route_name(&"a".repeat(64)).is_err());
        assert!(parse_route_name("").is_err());
        assert!(parse_route_name("lab.1").is_err());
    }

    #[test]
    fn listen_clash_rules() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(listen_clash(a("127.0.0.1:1"), a("127.0.0.1:1")));
        assert!(listen_clash(a("0.0.0.0:1"), a("10.0.0.1:1")));
        assert!(!listen_clash(a("0.0.0.0:1"), a("[::1]:1")));
        assert!(listen_clash(a("[::]:1"), a("127.0.0.1:1")));
        assert!(listen_clash(a("[::ffff:127.0.0.1]:1"), a("127.0.0.1:1")));
        assert!(!listen_clash(a("127.0.0.1:1"), a("127.0.0.2:1")));
        assert!(!listen_clash(a("127.0.0.1:0"), a("127.0.0.1:0")));
    }

    #[test]
    fn missing_tls_files_are_all_reported_relative_to_the_config_directory() {
        let fx = Fixture::new();
        let yaml = CONTRACT
            .replace("certs/guard.pem", "certs/a.pem")
            .replace("certs/guard.key", "certs/a.key")
            .replace("certs/ehr-ca.pem", "/abs/ehr-ca.pem");
        let expected = [
            "guard.yaml:6:13: routes[0].tls.cert: file \"certs/a.pem\" not found (relative paths are resolved from the config file's directory, here $DIR)",
            "guard.yaml:7:12: routes[0].tls.key: file \"certs/a.key\" not found (relative paths are resolved from the config file's directory, here $DIR)",
            "guard.yaml:18:13: routes[0].upstream.tls.ca: file \"/abs/ehr-ca.pem\" not found",
        ];
        assert_eq!(fx.errors_in_dir(&yaml), expected.join("\n"));
    }

    #[test]
    fn a_directory_given_as_a_certificate_is_refused() {
        let fx = Fixture::new();
        let yaml = CONTRACT.replace("certs/guard.pem", "certs");
        assert_eq!(
            fx.errors(&yaml),
            "guard.yaml:6:13: routes[0].tls.cert: \"certs\" is a directory; give the path of a PEM file"
        );
    }

    #[test]
    fn a_key_that_does_not_match_its_certificate_points_at_the_key() {
        let fx = Fixture::new();
        let yaml = CONTRACT.replace("certs/guard.key", "certs/client.key");
        assert_eq!(
            fx.errors(&yaml),
            "guard.yaml:7:12: routes[0].tls.key: the private key \"certs/client.key\" does not match the certificate \"certs/guard.pem\" (their public keys differ); use the key the certificate was issued for"
        );
    }

    #[test]
    fn a_pem_without_a_certificate_is_refused_for_each_role() {
        let fx = Fixture::new();
        std::fs::write(
            fx.base().join("certs/empty.pem"),
            "# nothing here\n-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
        )
        .unwrap();
        let yaml = CONTRACT
            .replace("certs/clients.pem", "certs/empty.pem")
            .replace("certs/ehr-ca.pem", "certs/guard.key");
        let expected = [
            "guard.yaml:8:18: routes[0].tls.client_ca: file \"certs/empty.pem\" contains no certificate (no \"-----BEGIN CERTIFICATE-----\" block)",
            "guard.yaml:18:13: routes[0].upstream.tls.ca: file \"certs/guard.key\" holds a private key, not a certificate; point this at the certificate PEM (\"-----BEGIN CERTIFICATE-----\")",
        ];
        assert_eq!(fx.errors(&yaml), expected.join("\n"));
    }

    #[test]
    fn a_client_certificate_without_a_key_and_a_key_without_a_certificate_are_errors() {
        let fx = Fixture::new();
        let no_key = CONTRACT.replace("        key: certs/client.key\n", "");
        assert_eq!(
            fx.errors(&no_key),
            "guard.yaml:20:15: routes[0].upstream.tls.cert: a client certificate needs its private key: add `key` next to `cert`"
        );
        let no_cert = CONTRACT.replace(
            "        cert: certs/client.pem       # optional client certificate\n",
            "",
        );
        assert_eq!(
            fx.errors(&no_cert),
            "guard.yaml:20:14: routes[0].upstream.tls.key: `key` is set but `cert` is not: add the client certificate as `cert`, or remove `key`"
        );
    }

    #[test]
    fn a_bad_server_name_is_reported() {
        let fx = Fixture::new();
        let yaml = CONTRACT.replace(
            "server_name: ehr.example.org",
            "server_name: \"ehr example\"",
        );
        assert_eq!(
            fx.errors(&yaml),
            "guard.yaml:19:22: routes[0].upstream.tls.server_name: \"ehr example\" is not a valid server name; write the DNS name (or IP address) the upstream's certificate is issued for, e.g. ehr.example.org"
        );
    }

    #[test]
    fn tls_errors_of_two_routes_are_reported_together_with_other_errors() {
        let fx = Fixture::new();
        let second = CONTRACT
            .trim_start()
            .trim_start_matches("routes:\n")
            .replace("name: lab ", "name: adt ")
            .replace("127.0.0.1:2575", "127.0.0.1:2577")
            .replace("certs/clients.pem", "certs/missing.pem");
        let yaml = format!(
            "{}{}",
            CONTRACT.replace("certs/guard.key", "certs/ehr.key"),
            second
        )
        .replace("max_connections: 256", "max_connections: many");
        let lines: Vec<String> = fx
            .errors_in_dir(&yaml)
            .lines()
            .map(str::to_string)
            .collect();
        assert_eq!(
            lines,
            [
                "guard.yaml:7:12: routes[0].tls.key: the private key \"certs/ehr.key\" does not match the certificate \"certs/guard.pem\" (their public keys differ); use the key the certificate was issued for",
                "guard.yaml:10:22: routes[0].max_connections: must be a whole number of at least 1, not \"many\"",
                "guard.yaml:31:18: routes[1].tls.client_ca: file \"certs/missing.pem\" not found (relative paths are resolved from the config file's directory, here $DIR)",
                "guard.yaml:33:22: routes[1].max_connections: must be a whole number of at least 1, not \"many\"",
            ]
        );
    }

    /// The custody example of issue 3, verbatim.
    const CUSTODY: &str = r#"
state_dir: /var/lib/mllp-guard      # top level; one queue directory per route under it
routes:
  - name: lab
    listen: 127.0.0.1:2575
    allow: [127.0.0.0/8]
    upstream:
      address: 127.0.0.1:2576
    delivery: store-and-forward      # or: forward (the default, from the relay core)
    queue:
      max_bytes: 1GiB                # when full: refuse new messages (negative ack or close), never drop
      max_messages: 1000000
    ack_mode: always                 # what the sender gets: always | errors-only | never | msh15
    retry:
      initial: 1s                    # exponential backoff with jitter to the upstream
      max: 180s
    on_reply:                        # what an upstream reply code does to a queued message
      AE: retry                      # retry | dead-letter | accept
      AR: dead-letter
"#;

    /// MINIMAL with `delivery: store-and-forward` and the given top-level lines before it.
    fn store_and_forward(top: &str) -> String {
        format!("{top}{MINIMAL}    delivery: store-and-forward\n")
    }

    fn custody(route: &Route) -> &CustodyConfig {
        match &route.delivery {
            Delivery::StoreAndForward(custody) => custody,
            Delivery::Forward => panic!("route {} is not store-and-forward", route.name),
        }
    }

    #[test]
    fn the_custody_example_of_the_issue_parses_into_typed_values() {
        let config = Config::parse(CUSTODY, Path::new("g.yaml"), Path::new("/etc")).unwrap();
        assert_eq!(config.state_dir, Some(PathBuf::from("/var/lib/mllp-guard")));
        assert_eq!(
            config.routes[0].delivery,
            Delivery::StoreAndForward(CustodyConfig {
                queue_dir: PathBuf::from("/var/lib/mllp-guard/lab"),
                max_bytes: 1 << 30,
                max_messages: 1_000_000,
                segment_bytes: 64 << 20,
                ack_mode: AckMode::Always,
                retry: Retry {
                    initial: Duration::from_secs(1),
                    max: Duration::from_secs(180),
                },
                on_reply: OnReply {
                    ae: ReplyAction::Retry,
                    ar: ReplyAction::DeadLetter,
                },
                duplicate_window: Some(Duration::from_secs(600)),
                backend: QueueBackend::Embedded,
            })
        );
    }

    #[test]
    fn store_and_forward_with_only_a_state_dir_takes_every_custody_default() {
        let yaml = store_and_forward("state_dir: /srv/guard\n");
        let config = Config::parse(&yaml, Path::new("g.yaml"), Path::new("/etc")).unwrap();
        assert_eq!(
            custody(&config.routes[0]),
            &CustodyConfig {
                queue_dir: PathBuf::from("/srv/guard/lab"),
                max_bytes: DEFAULT_QUEUE_MAX_BYTES,
                max_messages: DEFAULT_QUEUE_MAX_MESSAGES,
                segment_bytes: DEFAULT_QUEUE_SEGMENT_BYTES,
                ack_mode: DEFAULT_ACK_MODE,
                retry: Retry::default(),
                on_reply: OnReply::default(),
                duplicate_window: Some(DEFAULT_DUPLICATE_WINDOW),
                backend: QueueBackend::Embedded,
            }
        );
        assert_eq!(DEFAULT_ACK_MODE, AckMode::Msh15);
        assert_eq!(
            Retry::default(),
            Retry {
                initial: Duration::from_secs(1),
                max: Duration::from_secs(180)
            }
        );
        assert_eq!(
            OnReply::default(),
            OnReply {
                ae: ReplyAction::Retry,
                ar: ReplyAction::DeadLetter
            }
        );
    }

    #[test]
    fn a_route_without_delivery_forwards_and_a_state_dir_alone_is_not_an_error() {
        let yaml = format!("state_dir: /srv/guard\n{MINIMAL}");
        let config = Config::parse(&yaml, Path::new("g.yaml"), Path::new("/etc")).unwrap();
        assert_eq!(config.routes[0].delivery, Delivery::Forward);
        assert_eq!(config.state_dir, Some(PathBuf::from("/srv/guard")));
        let config = Config::parse(MINIMAL, Path::new("g.yaml"), Path::new("/etc")).unwrap();
        assert_eq!(config.state_dir, None);
        let yaml = format!("{MINIMAL}    delivery: forward\n");
        let config = Config::parse(&yaml, Path::new("g.yaml"), Path::new("/etc")).unwrap();
        assert_eq!(config.routes[0].delivery, Delivery::Forward);
    }

    #[test]
    fn a_relative_state_dir_resolves_from_the_config_directory() {
        let fx = Fixture::new();
        let file = fx.base().join("guard.yaml");
        std::fs::write(&file, store_and_forward("state_dir: state\n")).unwrap();
        let config = Config::load(&file).unwrap();
        assert_eq!(config.state_dir, Some(fx.base().join("state")));
        assert_eq!(
            custody(&config.routes[0]).queue_dir,
            fx.base().join("state/lab")
        );
    }

    #[test]
    fn every_custody_key_is_read_when_given() {
        let yaml = format!(
            "{}{}",
            store_and_forward("state_dir: /q\n"),
            "    queue: { max_bytes: 2MiB, max_messages: 5, segment_bytes: 1MiB }
    ack_mode: errors-only
    retry: { initial: 250ms, max: 250ms }
    on_reply: { AE: accept, AR: retry }
    duplicate_window: 0s
    max_message_bytes: 2MiB
"
        );
        let config = Config::parse(&yaml, Path::new("g.yaml"), Path::new("/")).unwrap();
        let c = custody(&config.routes[0]);
        assert_eq!(c.max_bytes, 2 << 20);
        assert_eq!(c.max_messages, 5);
        assert_eq!(c.segment_bytes, 1 << 20);
        assert_eq!(c.ack_mode, AckMode::ErrorsOnly);
        assert_eq!(
            c.retry,
            Retry {
                initial: Duration::from_millis(250),
                max: Duration::from_millis(250)
            }
        );
        assert_eq!(
            c.on_reply,
            OnReply {
                ae: ReplyAction::Accept,
                ar: ReplyAction::Retry
            }
        );
        assert_eq!(c.duplicate_window, None);
        for (written, mode) in [("never", AckMode::Never), ("msh15", AckMode::Msh15)] {
            let yaml = format!(
                "{}    ack_mode: {written}\n",
                store_and_forward("state_dir: /q\n")
            );
            let config = Config::parse(&yaml, Path::new("g.yaml"), Path::new("/")).unwrap();
            assert_eq!(custody(&config.routes[0]).ack_mode, mode);
        }
    }

    #[test]
    fn each_store_and_forward_route_gets_its_own_queue_directory() {
        let second = MINIMAL
            .trim_start_matches("routes:\n")
            .replace("name: lab", "name: adt")
            .replace("2575", "2577");
        let yaml = format!("state_dir: /q\n{MINIMAL}    delivery: store-and-forward\n{second}    delivery: store-and-forward\n");
        let config = Config::parse(&yaml, Path::new("g.yaml"), Path::new("/")).unwrap();
        assert_eq!(custody(&config.routes[0]).queue_dir, Path::new("/q/lab"));
        assert_eq!(custody(&config.routes[1]).queue_dir, Path::new("/q/adt"));
    }

    #[test]
    fn store_and_forward_without_a_state_dir_is_one_error_at_the_first_such_route() {
        let second = MINIMAL
            .trim_start_matches("routes:\n")
            .replace("name: lab", "name: adt")
            .replace("2575", "2577");
        let yaml = format!(
            "{MINIMAL}    delivery: store-and-forward\n{second}    delivery: store-and-forward\n"
        );
        assert_eq!(
            errors(&yaml),
            "guard.yaml:7:15: routes[0].delivery: store-and-forward needs a top-level `state_dir` to keep its queues in; add e.g. `state_dir: /var/lib/mllp-guard` at the top of the file (one directory per route is created under it)"
        );
        assert_eq!(
            errors("state_dir: \"\"\nroutes: []\n"),
            [
                "guard.yaml:1:12: state_dir: a directory path is required here, e.g. /var/lib/mllp-guard",
                "guard.yaml:2:9: routes: no routes are defined; add at least one route under `routes:`",
            ]
            .join("\n")
        );
    }

    #[test]
    fn custody_keys_on_a_forward_route_are_errors() {
        let yaml = format!(
            "state_dir: /q\n{MINIMAL}{}",
            "    queue: { max_bytes: 1GiB }
    ack_mode: always
    retry:
      initial: 1s
    on_reply: { AE: retry }
    duplicate_window: 1m
"
        );
        let message = "only used with delivery: store-and-forward; add `delivery: store-and-forward` or remove it";
        let expected = [
            format!("guard.yaml:8:12: routes[0].queue: {message}"),
            format!("guard.yaml:9:15: routes[0].ack_mode: {message}"),
            format!("guard.yaml:11:7: routes[0].retry: {message}"),
            format!("guard.yaml:12:15: routes[0].on_reply: {message}"),
            format!("guard.yaml:13:23: routes[0].duplicate_window: {message}"),
        ];
        assert_eq!(errors(&yaml), expected.join("\n"));
        // Explicitly forward: the same.
        let yaml = format!("{MINIMAL}    delivery: forward\n    ack_mode: never\n");
        assert_eq!(
            errors(&yaml),
            format!("guard.yaml:8:15: routes[0].ack_mode: {message}")
        );
    }

    #[test]
    fn bad_custody_values_are_all_reported_with_their_positions() {
        let yaml = format!(
            "{}{}",
            store_and_forward("state_dir: /q\n"),
            "    queue:
      max_bytes: 8MiB
      max_messages: 0
      segment_bytes: 512KiB
    ack_mode: sometimes
    retry: { initial: 10s, max: 5s }
    on_reply:
      AE: ignore
      AR: dead-letter
    duplicate_window: forever
"
        );
        let expected = [
            "guard.yaml:10:18: routes[0].queue.max_bytes: must be at least this route's max_message_bytes (16777216 bytes) so that the largest message fits; raise it or lower max_message_bytes, not \"8MiB\" (8388608 bytes)",
            "guard.yaml:11:21: routes[0].queue.max_messages: must be a whole number of at least 1, not \"0\"",
            "guard.yaml:12:22: routes[0].queue.segment_bytes: must be at least 1MiB, not \"512KiB\" (524288 bytes)",
            "guard.yaml:13:15: routes[0].ack_mode: must be `always` (every message gets an ack), `errors-only` (only negative acks), `never` (no acks) or `msh15` (as each message's MSH-15 asks), not \"sometimes\"",
            "guard.yaml:14:33: routes[0].retry.max: must be at least retry.initial (10s), not \"5s\"",
            "guard.yaml:16:11: routes[0].on_reply.AE: must be `retry` (send it again after backoff), `dead-letter` (move it to the route's dead-letter store) or `accept` (count it as delivered), not \"ignore\"",
            "guard.yaml:18:23: routes[0].duplicate_window: \"forever\" is not a duration; write e.g. 30s, 500ms or 5m",
        ];
        assert_eq!(errors(&yaml), expected.join("\n"));
    }

    /// The JetStream example of issue 8, verbatim (no `state_dir`: JetStream needs none).
    const JETSTREAM: &str = r#"
routes:
  - name: lab
    listen: 127.0.0.1:2575
    allow: [127.0.0.0/8]
    upstream:
      address: 127.0.0.1:2576
    delivery: store-and-forward
    queue:
      backend: jetstream             # or: embedded (default)
      jetstream:
        servers: ["nats://10.0.0.5:4222", "nats://10.0.0.6:4222", "nats://10.0.0.7:4222"]
        stream: MLLP_LAB             # created if missing, with the settings below
        replicas: 3
        max_bytes: 10GiB
        duplicate_window: 10m        # JetStream dedup on a message id built from MSH-3, MSH-4, MSH-10
        tls: { ca: certs/nats-ca.pem, cert: certs/guard.pem, key: certs/guard.key }
        credentials: secrets/guard.creds   # optional NATS credentials file
"#;

    #[test]
    fn the_jetstream_example_of_the_issue_parses_into_typed_values() {
        let fx = Fixture::new();
        std::fs::copy(
            fx.base().join("certs/clients.pem"),
            fx.base().join("certs/nats-ca.pem"),
        )
        .unwrap();
        std::fs::create_dir(fx.base().join("secrets")).unwrap();
        std::fs::write(fx.base().join("secrets/guard.creds"), "creds").unwrap();
        let config = fx.parse(JETSTREAM).unwrap();
        let c = custody(&config.routes[0]);
        assert_eq!(
            c.backend,
            QueueBackend::JetStream(Box::new(JetStreamQueue {
                servers: vec![
                    "nats://10.0.0.5:4222".into(),
                    "nats://10.0.0.6:4222".into(),
                    "nats://10.0.0.7:4222".into()
                ],
                stream: "MLLP_LAB".into(),
                replicas: 3,
                max_bytes: 10 << 30,
                duplicate_window: Duration::from_secs(600),
                tls: Some(NatsTls {
                    ca: Some(fx.base().join("certs/nats-ca.pem")),
                    client: Some((
                        fx.base().join("certs/guard.pem"),
                        fx.base().join("certs/guard.key")
                    )),
                }),
                credentials: Some(fx.base().join("secrets/guard.creds")),
                takeover: DEFAULT_JETSTREAM_TAKEOVER,
                publish_timeout: DEFAULT_JETSTREAM_PUBLISH_TIMEOUT,
            }))
        );
    }

    #[test]
    fn the_queue_backend_defaults_to_embedded_and_jetstream_takes_its_defaults() {
        let config = Config::parse(
            &store_and_forward("state_dir: /q\n"),
            Path::new("g.yaml"),
            Path::new("/etc"),
        )
        .unwrap();
        assert_eq!(custody(&config.routes[0]).backend, QueueBackend::Embedded);
        let yaml = format!(
            "{MINIMAL}    delivery: store-and-forward\n    queue:\n      max_bytes: 32MiB\n      backend: jetstream\n      jetstream: {{ servers: [\"127.0.0.1:4222\"], stream: S }}\n"
        );
        let config = Config::parse(&yaml, Path::new("g.yaml"), Path::new("/etc")).unwrap();
        let QueueBackend::JetStream(js) = &custody(&config.routes[0]).backend else {
            panic!("jetstream expected");
        };
        assert_eq!(
            (
                js.replicas,
                js.max_bytes,
                js.duplicate_window,
                js.tls.is_none()
            ),
            (1, 32 << 20, DEFAULT_JETSTREAM_DUPLICATE_WINDOW, true)
        );
    }

    #[test]
    fn bad_jetstream_values_are_all_reported_with_their_positions() {
        let yaml = format!(
            "{}{}",
            store_and_forward("state_dir: /q\n"),
            "    queue:
      backend: jetstream
      jetstream:
        servers: [\"http://x:1\", \"nats://ok:4222\"]
        stream: MY.STREAM
        replicas: 7
        max_bytes: 10KiB
        duplicate_window: 0s
        takeover: 100ms
        tls: { cert: certs/guard.pem }
"
        );
        let expected = [
            "guard.yaml:12:19: routes[0].queue.jetstream.servers[0]: \"http://x:1\" is not a NATS server URL; write e.g. nats://10.0.0.5:4222 or tls://nats.example.org:4222",
            "guard.yaml:13:17: routes[0].queue.jetstream.stream: must be letters, digits, `_` or `-` (at most 200), e.g. MLLP_LAB, not \"MY.STREAM\"",
            "guard.yaml:14:19: routes[0].queue.jetstream.replicas: must be a whole number from 1 to 5 (JetStream's limit), not \"7\"",
            "guard.yaml:15:20: routes[0].queue.jetstream.max_bytes: must be at least 1MiB, not \"10KiB\" (10240 bytes)",
            "guard.yaml:16:27: routes[0].queue.jetstream.duplicate_window: must be greater than zero, not \"0s\"",
            "guard.yaml:17:19: routes[0].queue.jetstream.takeover: must be at least 1s, not \"100ms\"",
            "guard.yaml:18:14: routes[0].queue.jetstream.tls: `cert` and `key` go together: give both (a client certificate for NATS) or neither",
        ];
        assert_eq!(errors(&yaml), expected.join("\n"));
        let yaml = format!(
            "{}    queue: {{ backend: nats }}\n",
            store_and_forward("state_dir: /q\n")
        );
        assert_eq!(
            errors(&yaml),
            "guard.yaml:9:23: routes[0].queue.backend: must be `embedded` (the local segmented log, the default) or `jetstream` (a NATS JetStream stream shared by several guards), not \"nats\""
        );
        let yaml = format!(
            "{}    queue: {{ backend: jetstream }}\n",
            store_and_forward("state_dir: /q\n")
        );
        assert!(
            errors(&yaml).starts_with("guard.yaml:9:23: routes[0].queue.jetstream: `backend: jetstream` needs a `jetstream:` block"),
            "{}",
            errors(&yaml)
        );
        let yaml = format!(
            "{}    queue: {{ jetstream: {{ stream: S }} }}\n",
            store_and_forward("state_dir: /q\n")
        );
        assert_eq!(
            errors(&yaml),
            "guard.yaml:9:25: routes[0].queue.jetstream: only used with `backend: jetstream`; add `backend: jetstream` to this queue or remove it"
        );
    }

    #[test]
    fn queue_max_bytes_below_one_mib_or_below_max_message_bytes_is_refused() {
        let sf = store_and_forward("state_dir: /q\n");
        let yaml = format!("{sf}    queue: {{ max_bytes: 1000KB }}\n");
        assert_eq!(
            errors(&yaml),
            "guard.yaml:9:25: routes[0].queue.max_bytes: must be at least 1MiB, not \"1000KB\" (1000000 bytes)"
        );
        let yaml = format!("{sf}    max_message_bytes: 4MiB\n    queue: {{ max_bytes: 2MiB }}\n");
        assert_eq!(
            errors(&yaml),
            "guard.yaml:10:25: routes[0].queue.max_bytes: must be at least this route's max_message_bytes (4194304 bytes) so that the largest message fits; raise it or lower max_message_bytes, not \"2MiB\" (2097152 bytes)"
        );
        // An invalid max_message_bytes is reported alone, not compared with the queue.
        let yaml = format!("{sf}    max_message_bytes: huge\n    queue: {{ max_bytes: 2MiB }}\n");
        assert!(errors(&yaml).ends_with("e.g. 16MiB"), "{}", errors(&yaml));
        assert_eq!(errors(&yaml).lines().count(), 1);
    }

    #[test]
    fn retry_bounds_are_checked_against_the_defaults_too() {
        let sf = store_and_forward("state_dir: /q\n");
        let cases = [
            (
                "{ max: 500ms }",
                "guard.yaml:9:19: routes[0].retry.max: must be at least retry.initial (1s, the default), not \"500ms\"",
            ),
            (
                "{ initial: 5m }",
                "guard.yaml:9:23: routes[0].retry.initial: must not exceed retry.max (3m, the default), not \"5m\"; lower it or set `max` too",
            ),
            (
                "{ initial: 0s }",
                "guard.yaml:9:23: routes[0].retry.initial: must be greater than zero, not \"0s\"",
            ),
        ];
        for (retry, expected) in cases {
            assert_eq!(
                errors(&format!("{sf}    retry: {retry}\n")),
                expected,
                "{retry}"
            );
        }
    }

    #[test]
    fn a_bad_delivery_value_lists_the_valid_ones_and_suppresses_custody_checks() {
        let yaml = format!("{MINIMAL}    delivery: store-forward\n    ack_mode: never\n");
        assert_eq!(
            errors(&yaml),
            "guard.yaml:7:15: routes[0].delivery: must be `forward` (relay each message while the sender waits) or `store-and-forward` (queue it durably, ack it, deliver it later), not \"store-forward\""
        );
    }

    #[test]
    fn on_reply_keys_are_the_uppercase_reply_codes() {
        let yaml = format!(
            "{}    on_reply: {{ ae: retry }}\n",
            store_and_forward("state_dir: /q\n")
        );
        assert_eq!(
            errors(&yaml),
            "guard.yaml:9:17: routes[0].on_reply.ae: unknown key `ae` (did you mean `AE`?); valid keys here: AE, AR"
        );
    }

    #[test]
    fn a_config_error_without_position_or_path_displays_compactly() {
        let e = ConfigError {
            file: "g.yaml".into(),
            yaml_path: String::new(),
            line: None,
            column: None,
            message: "boom".into(),
        };
        assert_eq!(e.to_string(), "g.yaml: boom");
        let e = ConfigError {
            yaml_path: "routes[0]".into(),
            ..e
        };
        assert_eq!(e.to_string(), "g.yaml: routes[0]: boom");
    }

    #[test]
    fn edit_distance_suggestions_stay_close() {
        assert_eq!(closest("listne", &["name", "listen"]), Some("listen"));
        assert_eq!(closest("zzz", &["name", "listen"]), None);
    }

    /// The session example of issue 4, verbatim apart from the `allow` line the relay core
    /// requires.
    const SESSIONS: &str = r#"
routes:
  - name: lab
    listen: 0.0.0.0:2575            # as before: we wait for the sender...
    allow: [any]
    # dial: 10.1.2.3:5000           # ...or instead we connect OUT to a sender that is itself an MLLP server (exactly one of listen/dial)
    upstream:
      address: ehr:2575             # as before: we connect to the receiver...
      # accept: 0.0.0.0:2600        # ...or instead the receiver connects IN to us and we send over that connection (exactly one of address/accept)
      idle_reconnect: 240s          # close and reopen an upstream connection that has been quiet this long, before a firewall drops it; 0s = off
      keepalive: { time: 60s, interval: 10s, retries: 6, user_timeout: 120s }
      reconnect: { initial: 1s, max: 180s }   # exponential backoff with jitter, reset after a healthy period
    framing:
      start: 0x0B                   # framing bytes, configurable per side (IPWorks-style)
      end: [0x1C, 0x0D]
      release: 1                    # 2 = MLLP release 2: commit block 0x0B 0x06 0x1C 0x0D (ACK) / 0x15 (NAK) per frame
"#;

    #[test]
    fn the_framing_example_of_the_sessions_issue_parses() {
        let config = Config::parse(SESSIONS, Path::new("g.yaml"), Path::new("/")).unwrap();
        let route = &config.routes[0];
        assert_eq!(route.framing, Framing::MLLP);
        assert_eq!(route.release, MllpRelease::One);
        assert_eq!(route.upstream.framing, Framing::MLLP);
        assert_eq!(route.upstream.release, MllpRelease::One);
        assert_eq!(
            route.upstream.idle_reconnect,
            Some(Duration::from_secs(240))
        );
    }

    #[test]
    fn framing_defaults_to_mllp_release_1_on_both_sides() {
        let config = Config::parse(MINIMAL, Path::new("g.yaml"), Path::new("/")).unwrap();
        let route = &config.routes[0];
        assert_eq!(
            (route.framing, route.release),
            (Framing::MLLP, MllpRelease::One)
        );
        assert_eq!(
            (route.upstream.framing, route.upstream.release),
            (Framing::MLLP, MllpRelease::One)
        );
        assert_eq!(MllpRelease::default(), MllpRelease::One);
        // An empty block, or one with only some keys, takes MLLP's bytes for the others.
        let yaml = format!("{MINIMAL}      framing: {{ end: [0x03] }}\n    framing: {{}}\n");
        let config = Config::parse(&yaml, Path::new("g.yaml"), Path::new("/")).unwrap();
        let route = &config.routes[0];
        assert_eq!(route.framing, Framing::MLLP);
        assert_eq!(route.upstream.framing, Framing::new(0x0B, &[0x03]).unwrap());
    }

    #[test]
    fn each_side_gets_its_own_framing_in_hex_or_decimal() {
        let yaml = format!(
            "{MINIMAL}      framing:\n        start: 2\n        end: [0x03, 0x0a]\n        release: 1\n    framing:\n      start: 0x02\n      end:\n        - 0X03\n"
        );
        let config = Config::parse(&yaml, Path::new("g.yaml"), Path::new("/")).unwrap();
        let route = &config.routes[0];
        assert_eq!(route.framing, Framing::new(0x02, &[0x03]).unwrap());
        assert_eq!(
            route.upstream.framing,
            Framing::new(0x02, &[0x03, 0x0A]).unwrap()
        );
        assert_eq!(route.release, MllpRelease::One);
    }

    #[test]
    fn bad_framing_bytes_are_reported_where_they_are_written() {
        let yaml = format!(
            "{MINIMAL}      framing: {{ start: 0x1G, end: [0x1C, 300] }}\n    framing:\n      start: 0x100\n      end: [ETX]\n"
        );
        let byte = "is not a byte; write 0x00 to 0xFF (hex, e.g. 0x0B) or 0 to 255 (decimal)";
        let expected = [
            format!("guard.yaml:7:25: routes[0].upstream.framing.start: \"0x1G\" {byte}"),
            format!("guard.yaml:7:43: routes[0].upstream.framing.end[1]: \"300\" {byte}"),
            format!("guard.yaml:9:14: routes[0].framing.start: \"0x100\" {byte}"),
            format!("guard.yaml:10:13: routes[0].framing.end[0]: \"ETX\" {byte}"),
        ];
        assert_eq!(errors(&yaml), expected.join("\n"));
        for bad in ["", "-1", "+11", "0x", "1.0", "0b11", "256"] {
            assert!(parse_byte(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_byte("0x0b"), Ok(0x0B));
        assert_eq!(parse_byte(" 0XFF "), Ok(0xFF));
        assert_eq!(parse_byte("28"), Ok(0x1C));
        assert_eq!(parse_byte("0"), Ok(0));
    }

    #[test]
    fn an_end_block_of_other_than_one_or_two_bytes_is_an_error() {
        for (end, n) in [("[]", 0), ("[0x1C, 0x0D, 0x0A]", 3)] {
            let yaml = format!("{MINIMAL}    framing:\n      end: {end}\n");
            assert_eq!(
                errors(&yaml),
                format!("guard.yaml:8:12: routes[0].framing.end: must be one or two bytes, e.g. [0x1C, 0x0D] or [0x1C], not {n}"),
            );
        }
    }

    #[test]
    fn a_framing_the_codec_refuses_is_reported_at_its_block_with_the_reason() {
        let yaml = format!(
            "{MINIMAL}      framing: {{ end: [0x0D] }}\n    framing:\n      start: 0x1C\n      end: [0x1C, 0x0D]\n"
        );
        let expected = [
            "guard.yaml:7:16: routes[0].upstream.framing: the end byte may not be 0x0D: CR ends every HL7 segment, so every message would be cut at its first segment; use e.g. [0x1C] or [0x1C, 0x0D]",
            "guard.yaml:9:7: routes[0].framing: the start byte and the first end byte are both 0x1C; they must differ",
        ];
        assert_eq!(errors(&yaml), expected.join("\n"));
        let yaml = format!("{MINIMAL}    framing: {{ start: 0x41 }}\n");
        assert_eq!(
            errors(&yaml),
            "guard.yaml:7:14: routes[0].framing: the start byte 0x41 is the printable character 'A', which occurs in message text; use a control byte (0x00 to 0x1F)"
        );
    }

    #[test]
    fn release_2_is_accepted_on_either_side_and_other_values_are_not() {
        let yaml =
            format!("{MINIMAL}      framing: {{ release: 2 }}\n    framing:\n      release: 2\n");
        let config = Config::parse(&yaml, Path::new("guard.yaml"), Path::new(".")).unwrap();
        assert_eq!(config.routes[0].release, MllpRelease::Two);
        assert_eq!(config.routes[0].upstream.release, MllpRelease::Two);
        let yaml = format!("{MINIMAL}    framing:\n      release: 3\n");
        assert_eq!(
            errors(&yaml),
            "guard.yaml:8:16: routes[0].framing.release: must be 1 (MLLP release 1) or 2 (release 2, commit blocks), not \"3\""
        );
    }

    #[test]
    fn a_route_can_dial_its_sender_and_accept_its_receiver() {
        let yaml = "routes:\n  - name: lab\n    dial: sender.example.org:5000\n    allow: [any]\n    upstream:\n      accept: 127.0.0.1:2600\n      allow: [127.0.0.2]\n";
        let config = Config::parse(yaml, Path::new("guard.yaml"), Path::new(".")).unwrap();
        let route = &config.routes[0];
        assert_eq!(
            route.sender,
            SenderRole::Dial(UpstreamAddress {
                host: "sender.example.org".into(),
                port: 5000
            })
        );
        let ReceiverRole::Accept { listen, allow } = &route.upstream.role else {
            panic!("accept expected, got {:?}", route.upstream.role);
        };
        assert_eq!(*listen, "127.0.0.1:2600".parse().unwrap());
        assert!(allow.admits("127.0.0.2".parse().unwrap()));
        assert!(!allow.admits("127.0.0.3".parse().unwrap()));
    }

    #[test]
    fn each_side_has_exactly_one_role() {
        let yaml = MINIMAL.replace(
            "    listen: 127.0.0.1:2575\n",
            "    listen: 127.0.0.1:2575\n    dial: 10.1.2.3:5000\n",
        );
        let yaml = yaml.replace(
            "      address: 127.0.0.1:2576\n",
            "      address: 127.0.0.1:2576\n      accept: 0.0.0.0:2600\n",
        );
        let expected = [
            "guard.yaml:4:11: routes[0].dial: a route has exactly one of `listen` (we wait for the sender) and `dial` (we connect to a sender that is an MLLP server); remove one",
            "guard.yaml:8:15: routes[0].upstream.accept: an upstream has exactly one of `address` (we connect to the receiver) and `accept` (the receiver connects in to us); remove one",
        ];
        assert_eq!(errors(&yaml), expected.join("\n"));
        let yaml = MINIMAL.replace("      address: 127.0.0.1:2576\n", "      connections: 2\n");
        assert_eq!(
            errors(&yaml),
            "guard.yaml:6:7: routes[0].upstream: missing required key `address` (or `accept`); add e.g. `address: 127.0.0.1:2576`, or `accept: 0.0.0.0:2600` for a receiver that connects in"
        );
    }

    #[test]
    fn roles_refuse_what_they_cannot_do() {
        let yaml = "routes:\n  - name: lab\n    dial: 10.1.2.3:5000\n    tls: { cert: a.pem, key: a.key }\n    allow: [any]\n    upstream:\n      accept: 127.0.0.1:2600\n      idle_reconnect: 60s\n";
        let text = errors(yaml);
        assert!(
            text.contains("routes[0].tls: `tls` on a route that dials its sender is not supported"),
            "{text}"
        );
        assert!(
            text.contains("routes[0].upstream.idle_reconnect: idle_reconnect needs `address`"),
            "{text}"
        );
        let yaml = format!("{MINIMAL}      allow: [any]\n");
        assert_eq!(
            errors(&yaml),
            "guard.yaml:7:14: routes[0].upstream.allow: `allow` on an upstream says who may connect in to `accept`; it has no meaning with `address` (remove it)"
        );
        let yaml = "routes:\n  - name: lab\n    listen: 127.0.0.1:2575\n    allow: [any]\n    upstream:\n      accept: 127.0.0.1:2575\n";
        assert!(errors(yaml).contains("routes[0].upstream.accept: listen address 127.0.0.1:2575 is already used by routes[0]"), "{}", errors(yaml));
    }

    #[test]
    fn original_destination_needs_a_transparent_paired_forward_route() {
        let yaml = MINIMAL.replace("address: 127.0.0.1:2576", "address: original-destination");
        assert_eq!(
            errors(&yaml),
            "guard.yaml:6:16: routes[0].upstream.address: original-destination needs `transparent: true` on the route (only a connection TPROXY redirected has an original destination)"
        );
        let yaml = yaml.replace("    allow:", "    transparent: true\n    allow:");
        let config = Config::parse(&yaml, Path::new("guard.yaml"), Path::new(".")).unwrap();
        assert!(config.routes[0].transparent);
        assert_eq!(
            config.routes[0].upstream.role,
            ReceiverRole::OriginalDestination
        );
        let pooled = format!("{yaml}      connections: 2\n");
        assert!(errors(&pooled).contains("original-destination needs `connections: paired`"));
        let from_client =
            format!("{MINIMAL}      transparent_source: true\n      connections: 2\n");
        assert!(errors(&from_client).contains("transparent_source needs `connections: paired`"));
    }

    #[test]
    fn idle_reopen_is_on_demand_or_at_once() {
        let config = Config::parse(MINIMAL, Path::new("guard.yaml"), Path::new(".")).unwrap();
        assert_eq!(config.routes[0].upstream.idle_reopen, IdleReopen::OnDemand);
        let yaml = format!("{MINIMAL}      idle_reconnect: 240s\n      idle_reopen: at-once\n");
        let config = Config::parse(&yaml, Path::new("guard.yaml"), Path::new(".")).unwrap();
        assert_eq!(config.routes[0].upstream.idle_reopen, IdleReopen::AtOnce);
        let yaml = format!("{MINIMAL}      idle_reopen: eager\n");
        assert_eq!(
            errors(&yaml),
            "guard.yaml:7:20: routes[0].upstream.idle_reopen: must be on-demand (reopen when the next message comes) or at-once (reopen straight away), not \"eager\""
        );
    }

    #[test]
    fn an_unknown_framing_key_lists_the_valid_ones() {
        let yaml = format!("{MINIMAL}    framing: {{ start: 0x0B, stop: [0x1C] }}\n");
        assert_eq!(
            errors(&yaml),
            "guard.yaml:7:29: routes[0].framing.stop: unknown key `stop`; valid keys here: start, end, release"
        );
    }
}
