//! A `socket:` block, on a route (its sender side) or on its upstream (its receiver side):
//! `send_buffer`, `receive_buffer`, `linger` and `nodelay`, and the upstream's `local_address`.
//!
//! An `impl Validator` block. Knows nothing of where the options are applied
//! ([`crate::net::tune`] does that) nor of the block around it.

use std::net::IpAddr;
use std::time::Duration;

use serde_saphyr::Spanned;

use super::model::SocketOptions;
use super::raw::RawSocket;
use super::scalars::{parse_bool, parse_duration, parse_size};
use super::validator::Validator;

/// The smallest and largest buffer size accepted. Linux doubles the value and caps it at
/// `net.core.wmem_max`/`rmem_max`; below a few KiB a connection crawls.
const MIN_BUFFER: u64 = 4 << 10;
const MAX_BUFFER: u64 = 1 << 30;
/// The longest linger: a close must not hold a connection for long (SO_LINGER is in seconds).
const MAX_LINGER: Duration = Duration::from_secs(3600);

impl Validator<'_> {
    /// `p.socket` (`p` is the YAML path of the block that holds it).
    pub(super) fn socket(&mut self, p: &str, raw: &Option<Spanned<RawSocket>>) -> SocketOptions {
        let default = SocketOptions::default();
        let Some(raw) = raw else { return default };
        let s = &raw.value;
        let p = format!("{p}.socket");
        SocketOptions {
            send_buffer: self.value(format!("{p}.send_buffer"), &s.send_buffer, None, |v| {
                parse_buffer(v).map(Some)
            }),
            receive_buffer: self.value(
                format!("{p}.receive_buffer"),
                &s.receive_buffer,
                None,
                |v| parse_buffer(v).map(Some),
            ),
            linger: self.value(format!("{p}.linger"), &s.linger, None, |v| {
                parse_linger(v).map(Some)
            }),
            nodelay: self.value(
                format!("{p}.nodelay"),
                &s.nodelay,
                default.nodelay,
                parse_bool,
            ),
        }
    }
}

/// `send_buffer`/`receive_buffer`: a size from 4KiB to 1GiB.
fn parse_buffer(s: &str) -> Result<usize, String> {
    let bytes = parse_size(s)?;
    match usize::try_from(bytes) {
        Ok(n) if (MIN_BUFFER..=MAX_BUFFER).contains(&bytes) => Ok(n),
        _ => Err(format!(
            "must be from 4KiB to 1GiB, not \"{s}\" ({bytes} bytes)"
        )),
    }
}

/// `linger`: whole seconds up to an hour; `0s` = reset on close.
fn parse_linger(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.subsec_nanos() != 0 {
        return Err(format!(
            "\"{s}\" is not whole seconds; SO_LINGER counts seconds (e.g. 0s to reset on close, 5s)"
        ));
    }
    if d > MAX_LINGER {
        return Err(format!("must be at most 1h, not \"{s}\""));
    }
    Ok(d)
}

/// `upstream.local_address`: an IP address, no port (the kernel picks the port).
pub(super) fn parse_local_address(s: &str) -> Result<IpAddr, String> {
    let t = s.trim();
    let bare = t
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(t);
    bare.parse::<IpAddr>().map_err(|_| {
        format!("\"{s}\" is not an IP address; write e.g. 10.0.0.5 or 2001:db8::5 (no port: the kernel picks it)")
    })
}
