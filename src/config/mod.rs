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
//!
//! Where each part lives (each file's own doc says what it owns and what it must not know):
//!
//! - `model.rs`: the typed model and the defaults; plain data, what the rest of the guard reads.
//! - `raw.rs`: the serde mirror of the file and `parse_raw`.
//! - `error.rs`: [`ConfigError`], [`ConfigErrors`] and the wording shared by every message
//!   (positions, serde's errors, did-you-mean).
//! - `scalars.rs`: the value parsers (sizes, durations, addresses, names, enum words).
//! - `load.rs`: [`Config::load`] and [`Config::parse`]: read the file, run the validator, order
//!   the errors; and [`fuzz_config`].
//! - `validator.rs`: the validator's core (recording errors, reading values and files) and the
//!   walk over the top-level keys and the routes, with the checks across routes.
//! - `impl Validator` blocks, one concern each: `route.rs` (a route's own keys and `framing`),
//!   `upstream.rs`, `socket.rs` (`socket` blocks, `local_address`), `delivery.rs` (custody and its queue), `tls_block.rs` (the TLS files),
//!   `tls_policy.rs` (the TLS policy keys and `via`), `firewall.rs` (`rules`, `limits`,
//!   `upstreams`), `notify.rs` (`notify`: webhooks and event thresholds), `audit.rs` (`audit`:
//!   where the audit trail is written).
//!
//! Children import their siblings directly (`super::model::Route`), never through the
//! re-exports below, which are for the rest of the crate: this file declares, documents and
//! re-exports, nothing else.

mod audit;
mod delivery;
mod error;
mod firewall;
mod load;
mod model;
mod notify;
mod raw;
mod route;
mod scalars;
mod socket;
mod tls_block;
mod tls_policy;
mod upstream;
mod validator;

pub use error::{ConfigError, ConfigErrors};
pub use load::fuzz_config;
pub use model::{
    AckMode, Admin, AdminToken, Audit, Batches, ClientTls, Config, Connections, CustodyConfig,
    DeadLetterLimits, Delivery, HealthCheck, IdleReopen, JetStreamQueue, Keepalive, MllpRelease,
    MultipleMessages, NatsTls, Notify, NotifyEvent, OnLimit, OnReply, OnUpstreamFailure,
    QueueBackend, QueueBacklog, RateLimits, ReceiverRole, Reconnect, ReplyAction, Retry, Route,
    Secret, SenderRole, ServerTls, SocketOptions, UnreadyWhen, UpstreamAddress, UpstreamConfig,
    Webhook, DEFAULT_ACK_MODE, DEFAULT_ACK_TIMEOUT, DEFAULT_CERTIFICATE_EXPIRING_WITHIN,
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_DUPLICATE_WINDOW, DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_JETSTREAM_DUPLICATE_WINDOW, DEFAULT_JETSTREAM_PUBLISH_TIMEOUT,
    DEFAULT_JETSTREAM_REPLICAS, DEFAULT_JETSTREAM_TAKEOVER, DEFAULT_MAX_ACK_BYTES,
    DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_MAX_TRACKED_SOURCES,
    DEFAULT_ON_REPLY_AE, DEFAULT_ON_REPLY_AR, DEFAULT_QUEUE_MAX_BYTES, DEFAULT_QUEUE_MAX_MESSAGES,
    DEFAULT_QUEUE_SEGMENT_BYTES, DEFAULT_RECEIVE_TIMEOUT, DEFAULT_RETRY_INITIAL, DEFAULT_RETRY_MAX,
    DEFAULT_SEND_TIMEOUT, DEFAULT_SHUTDOWN_GRACE, DEFAULT_WEBHOOK_MAX_PENDING,
    DEFAULT_WEBHOOK_TIMEOUT,
};
pub use scalars::parse_size;

#[cfg(test)]
mod tests;
