//! Value parsers: one scalar as written in, a typed value or a message out. The message says
//! what is wrong and what to write instead, without the YAML path or position: the validator
//! adds those where it records the error.
//!
//! Pure functions of a string, with the bounds they enforce. Know nothing of YAML, positions,
//! the raw mirror or the validator; the only config types they know are the model values they
//! return.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::num::NonZeroUsize;
use std::time::Duration;

use rustls_pki_types::ServerName;

use super::model::{
    AckMode, Batches, Connections, IdleReopen, MllpRelease, MultipleMessages, OnUpstreamFailure,
    ReplyAction, UpstreamAddress, GIB, KIB,
};

/// Bounds of `max_message_bytes` and `max_ack_bytes`.
const MIN_FRAME_BYTES: usize = KIB;
const MAX_FRAME_BYTES: usize = GIB;
/// Lower bound of `queue.max_bytes` and `queue.segment_bytes` (1 MiB).
const MIN_QUEUE_BYTES: u64 = 1 << 20;
/// Linux caps TCP_KEEPIDLE and TCP_KEEPINTVL at 32767 seconds and TCP_KEEPCNT at 127.
const MAX_KEEPALIVE_SECS: u64 = 32767;
const MAX_KEEPALIVE_RETRIES: u32 = 127;

pub(super) fn parse_route_name(s: &str) -> Result<String, String> {
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

pub(super) fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    s.trim().parse().map_err(|_| {
        format!(
            "\"{s}\" is not an IP address with a port; write e.g. 127.0.0.1:2575, 0.0.0.0:2575 or \"[::1]:2575\" (host names are not accepted here)"
        )
    })
}

pub(super) fn parse_upstream_address(s: &str) -> Result<UpstreamAddress, String> {
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

pub(super) fn parse_server_name(s: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(s.trim().to_string()).map_err(|_| {
        format!(
            "\"{s}\" is not a valid server name; write the DNS name (or IP address) the upstream's certificate is issued for, e.g. ehr.example.org"
        )
    })
}

/// A duration such as `30s`, `500ms`, `5m`, `1h 30m`; a bare `0` means zero.
pub(super) fn parse_duration(s: &str) -> Result<Duration, String> {
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

pub(super) fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err(format!("must be greater than zero, not \"{s}\""));
    }
    Ok(d)
}

pub(super) fn parse_keepalive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.subsec_nanos() != 0 || !(1..=MAX_KEEPALIVE_SECS).contains(&d.as_secs()) {
        return Err(format!(
            "must be whole seconds from 1s to {MAX_KEEPALIVE_SECS}s (the kernel's limits), not \"{s}\""
        ));
    }
    Ok(d)
}

pub(super) fn parse_keepalive_retries(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(n) if (1..=MAX_KEEPALIVE_RETRIES).contains(&n) => Ok(n),
        _ => Err(format!(
            "must be a whole number from 1 to {MAX_KEEPALIVE_RETRIES}, not \"{s}\""
        )),
    }
}

pub(super) fn parse_count(s: &str, min: usize) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n >= min => Ok(n),
        _ => Err(format!(
            "must be a whole number of at least {min}, not \"{s}\""
        )),
    }
}

pub(super) fn parse_connections(s: &str) -> Result<Connections, String> {
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
pub(super) enum DeliveryKind {
    Forward,
    StoreAndForward,
}

pub(super) fn parse_delivery(s: &str) -> Result<DeliveryKind, String> {
    match s.trim() {
        "forward" => Ok(DeliveryKind::Forward),
        "store-and-forward" => Ok(DeliveryKind::StoreAndForward),
        _ => Err(format!(
            "must be `forward` (relay each message while the sender waits) or `store-and-forward` (queue it durably, ack it, deliver it later), not \"{s}\""
        )),
    }
}

pub(super) fn parse_ack_mode(s: &str) -> Result<AckMode, String> {
    match s.trim() {
        "always" => Ok(AckMode::Always),
        "errors-only" => Ok(AckMode::ErrorsOnly),
        "never" => Ok(AckMode::Never),
        "msh15" => Ok(AckMode::Msh15),
        "ae-only" => Ok(AckMode::AeOnly),
        "ar-only" => Ok(AckMode::ArOnly),
        _ => Err(format!(
            "must be `always` (every message gets an ack), `errors-only` (only negative acks), `ae-only` (only AE/CE: not queued now), `ar-only` (only AR/CR: refused for good), `never` (no acks) or `msh15` (as each message's MSH-15 asks), not \"{s}\""
        )),
    }
}

pub(super) fn parse_reply_action(s: &str) -> Result<ReplyAction, String> {
    match s.trim() {
        "retry" => Ok(ReplyAction::Retry),
        "dead-letter" => Ok(ReplyAction::DeadLetter),
        "accept" => Ok(ReplyAction::Accept),
        _ => Err(format!(
            "must be `retry` (send it again after backoff), `dead-letter` (move it to the route's dead-letter store) or `accept` (count it as delivered), not \"{s}\""
        )),
    }
}

pub(super) fn parse_multiple_messages(s: &str) -> Result<MultipleMessages, String> {
    match s.trim() {
        "refuse" => Ok(MultipleMessages::Refuse),
        "inspect" => Ok(MultipleMessages::Inspect),
        _ => Err(format!(
            "must be `refuse` (answer AR to a frame holding several messages outside a batch) or `inspect` (check every message of it with the rules), not \"{s}\""
        )),
    }
}

pub(super) fn parse_batches(s: &str) -> Result<Batches, String> {
    match s.trim() {
        "inspect" => Ok(Batches::Inspect),
        "refuse" => Ok(Batches::Refuse),
        _ => Err(format!(
            "must be `inspect` (check every message of a batch with the rules; refuse the batch if any is refused) or `refuse` (answer AR to every batch), not \"{s}\""
        )),
    }
}

pub(super) fn parse_on_upstream_failure(s: &str) -> Result<OnUpstreamFailure, String> {
    match s.trim() {
        "nack" => Ok(OnUpstreamFailure::Nack),
        "close" => Ok(OnUpstreamFailure::Close),
        _ => Err(format!(
            "must be `nack` (answer the sender with an AE ack saying why) or `close` (close the sender's connection), not \"{s}\""
        )),
    }
}

/// A framing byte: hex `0x0B` (one or two hex digits, either case) or decimal `11`.
pub(super) fn parse_byte(s: &str) -> Result<u8, String> {
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

/// `send_proxy_protocol` (and a bare `proxy_protocol`, refused with advice): `v1` or `v2`.
pub(super) fn parse_proxy_version(s: &str) -> Result<crate::net::proxy_protocol::Version, String> {
    match s.trim() {
        "v1" => Ok(crate::net::proxy_protocol::Version::V1),
        "v2" => Ok(crate::net::proxy_protocol::Version::V2),
        _ => Err(format!(
            "must be v1 (text header) or v2 (binary header), not \"{s}\""
        )),
    }
}

/// `proxy_protocol.accept`: `v1`, `v2` or `any`.
pub(super) fn parse_proxy_accept(s: &str) -> Result<crate::net::proxy_protocol::Accept, String> {
    match s.trim() {
        "any" => Ok(crate::net::proxy_protocol::Accept::Any),
        other => parse_proxy_version(other).map(Into::into).map_err(|_| {
            format!("must be v1 (text header), v2 (binary header) or any (either), not \"{s}\"")
        }),
    }
}

/// A switch: `true` or `false`.
pub(super) fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!("must be true or false, not \"{s}\"")),
    }
}

/// `idle_reopen`: `on-demand` or `at-once`.
pub(super) fn parse_idle_reopen(s: &str) -> Result<IdleReopen, String> {
    match s.trim() {
        "on-demand" => Ok(IdleReopen::OnDemand),
        "at-once" => Ok(IdleReopen::AtOnce),
        _ => Err(format!(
            "must be on-demand (reopen when the next message comes) or at-once (reopen straight away), not \"{s}\""
        )),
    }
}

/// `framing.release`: `1` or `2`.
pub(super) fn parse_release(s: &str) -> Result<MllpRelease, String> {
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
pub fn parse_size(s: &str) -> Result<u64, String> {
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

pub(super) fn parse_frame_size(s: &str) -> Result<usize, String> {
    let bytes = parse_size(s)?;
    match usize::try_from(bytes) {
        Ok(n) if (MIN_FRAME_BYTES..=MAX_FRAME_BYTES).contains(&n) => Ok(n),
        _ => Err(format!(
            "must be from 1KiB to 1GiB, not \"{s}\" ({bytes} bytes)"
        )),
    }
}

/// `queue.jetstream.servers[]`: `nats://host:port`, `tls://host:port` or `host:port`.
pub(super) fn parse_nats_server(s: &str) -> Result<String, String> {
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
pub(super) fn parse_stream_name(s: &str) -> Result<String, String> {
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
pub(super) fn parse_queue_size(s: &str) -> Result<u64, String> {
    let bytes = parse_size(s)?;
    if bytes < MIN_QUEUE_BYTES {
        return Err(format!(
            "must be at least 1MiB, not \"{s}\" ({bytes} bytes)"
        ));
    }
    Ok(bytes)
}
