//! What operators see of a running guard: the admin HTTP endpoint ([`admin`]), the Prometheus
//! [`metrics`], the per-message [`audit`] trail, how often refused connections are logged
//! ([`refusals`]) and the [`log_format`] of every log line.
//!
//! The data path calls the small recording functions here; nothing here calls the data path
//! (it reads handles only).

pub mod admin;
pub mod connections;
pub mod console;
pub mod recent;
mod status_page;
pub mod audit;
pub mod refusals;
pub mod log_format;
pub mod metrics;
