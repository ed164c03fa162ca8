//! What operators see of a running guard, and the few things they may do to it: the admin HTTP
//! endpoint ([`admin`]) with the [`console`] behind its `/api/v1` (and the status page), the
//! live [`connections`], the last refusals and errors ([`recent`]), the Prometheus [`metrics`],
//! the per-message [`audit`] trail and where it goes ([`audit_sink`]: stderr or its own file), how often refused connections are logged ([`refusals`]),
//! the [`log_format`] of every log line and the [`log_writer`] that writes them in batches,
//! what systemd hears ([`systemd`]) and what webhooks are told ([`notify`]).
//!
//! The data path calls the small recording functions here (no lock per message). The console
//! acts only through handles a route already exposes (its pause flag, its upstream's reconnect,
//! its custody's dead letters, a connection's close tokens); it never touches a message.

pub mod admin;
pub mod connections;
pub mod console;
pub mod recent;
mod status_page;
pub mod audit;
pub mod audit_sink;
pub mod refusals;
pub mod log_format;
pub mod log_writer;
pub mod metrics;
pub mod notify;
pub mod systemd;
