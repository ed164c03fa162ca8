//! What operators see of a running guard: the admin HTTP endpoint ([`admin`]), the Prometheus
//! [`metrics`], the per-message [`audit`] trail, how often refused connections are logged
//! ([`refusals`]), the [`log_format`] of every log line, the [`log_writer`] that writes them
//! in batches, what systemd hears ([`systemd`]) and what webhooks are told ([`notify`]).
//!
//! The data path calls the small recording functions here; nothing here calls the data path
//! (it reads handles only).

pub mod admin;
pub mod audit;
pub mod refusals;
pub mod log_format;
pub mod log_writer;
pub mod metrics;
pub mod notify;
pub mod systemd;
