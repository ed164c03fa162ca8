//! `mllp-guard queue ...`: what operators do with custody queues from the command line.
//!
//! `list` and `show` read a queue without locking it, so they work while the guard runs; `replay`
//! and `purge` need the queue to themselves and refuse while a guard holds it. Payload bytes are
//! printed only when `--payload` is asked. Must not know sockets or delivery.
//!
//! On a `queue.backend: jetstream` route every command talks to the route's stream (see
//! [`crate::custody::jetstream`]); there all four work while guards run (replay publishes each dead
//! letter back to the queue before deleting it).

use std::io::{BufRead, Write};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};

use crate::config::{Config, CustodyConfig, Delivery, JetStreamQueue, QueueBackend};
use crate::custody::{queue_limits, DEAD_LETTER_DIR};
use crate::queue::{Limits, QueueError, Record, SegmentLog, Store};
use crate::wire::hl7::printable;

/// The custody routes selected by `--route` (all of them when None).
pub fn custody_routes<'c>(
    config: &'c Config,
    only: Option<&str>,
) -> anyhow::Result<Vec<(&'c str, &'c CustodyConfig)>> {
    let mut routes = Vec::new();
    for route in &config.routes {
        if only.is_some_and(|name| name != route.name) {
            continue;
        }
        match &route.delivery {
            Delivery::StoreAndForward(custody) => routes.push((route.name.as_str(), custody)),
            Delivery::Forward if only.is_some() => {
                bail!(
                    "route {} forwards without custody (delivery: forward); it has no queue",
                    route.name
                )
            }
            Delivery::Forward => {}
        }
    }
    if let Some(name) = only {
        if routes.is_empty() {
            bail!("no route named {name} in {}", config.file.display());
        }
    }
    if routes.is_empty() {
        bail!(
            "no route in {} uses delivery: store-and-forward",
            config.file.display()
        );
    }
    Ok(routes)
}

/// Opens a queue for reading only; a queue that was never created reads as empty.
fn read_only(dir: &Path) -> anyhow::Result<Option<SegmentLog>> {
    if !dir.exists() {
        return Ok(None);
    }
    SegmentLog::open_read_only(dir)
        .map(Some)
        .with_context(|| format!("reading the queue in {}", dir.display()))
}

/// Opens a queue exclusively, explaining what to do when a running guard holds it.
fn exclusive(dir: &Path, limits: Limits) -> anyhow::Result<SegmentLog> {
    match SegmentLog::open(dir, limits) {
        Ok((log, _)) => Ok(log),
        Err(QueueError::Locked { dir }) => bail!(
            "the queue in {} is in use by a running mllp-guard: stop it first (this command needs the queue to itself)",
            dir.display()
        ),
        Err(err) => Err(err.into()),
    }
}

/// The JetStream settings of a route, when that is its backend.
fn jetstream_of(custody: &CustodyConfig) -> Option<&JetStreamQueue> {
    match &custody.backend {
        QueueBackend::JetStream(js) => Some(js),
        QueueBackend::Embedded => None,
    }
}

/// Runs one operation against a route's NATS JetStream (connecting for it) to completion.
fn with_jetstream<T>(
    cfg: &JetStreamQueue,
    op: impl AsyncFnOnce(
        &async_nats::jetstream::Context,
    ) -> Result<T, crate::custody::jetstream::JetStreamError>,
) -> anyhow::Result<T> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            crate::custody::jetstream::connect(cfg, "mllp-guard queue", false),
        )
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "cannot connect to NATS ({}): timed out",
                cfg.servers.join(", ")
            )
        })?
        .map_err(anyhow::Error::msg)?;
        let mut js = async_nats::jetstream::new(client.clone());
        js.set_timeout(cfg.publish_timeout);
        let result = op(&js).await.map_err(anyhow::Error::msg);
        let _ = client.flush().await;
        result
    })
}

fn age(enqueued_at_ms: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let secs = now.saturating_sub(enqueued_at_ms) / 1000;
    humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
}

/// `queue list`: one line per route with depth, bytes, oldest age and dead letters.
pub fn list(config: &Config, only: Option<&str>, out: &mut impl Write) -> anyhow::Result<()> {
    for (name, custody) in custody_routes(config, only)? {
        if let Some(js) = jetstream_of(custody) {
            let depth = with_jetstream(js, async |ctx| {
                crate::custody::jetstream::depth(ctx, &js.stream).await
            })?;
            let oldest = depth
                .oldest_enqueued_ms
                .map(age)
                .unwrap_or_else(|| "-".into());
            writeln!(
                out,
                "route {name}: {} pending, oldest {oldest}, {} dead letters ({} bytes in JetStream stream {})",
                depth.pending, depth.dead, depth.bytes, js.stream
            )?;
            continue;
        }
        let pending = read_only(&custody.queue_dir)?
            .map(|q| q.stats())
            .unwrap_or_default();
        let dead = read_only(&custody.queue_dir.join(DEAD_LETTER_DIR))?
            .map(|q| q.stats())
            .unwrap_or_default();
        let oldest = pending
            .oldest_enqueued_ms
            .map(age)
            .unwrap_or_else(|| "-".into());
        writeln!(
            out,
            "route {name}: {} pending ({} bytes), oldest {oldest}, {} dead letters ({} bytes)",
            pending.messages, pending.bytes, dead.messages, dead.bytes
        )?;
    }
    Ok(())
}

fn describe(record: &Record, out: &mut impl Write, payload: bool) -> anyhow::Result<()> {
    let (msg_type, control_id) = match crate::wire::hl7::find_header(&record.payload) {
        Ok(h) => (printable(h.message_type()), printable(h.control_id())),
        Err(_) => ("-".into(), "-".into()),
    };
    write!(
        out,
        "  seq {}\t{}\t{}\t{} bytes\tage {}",
        record.seq,
        if control_id.is_empty() {
            "-"
        } else {
            &control_id
        },
        if msg_type.is_empty() { "-" } else { &msg_type },
        record.payload.len(),
        age(record.enqueued_at_ms)
    )?;
    if !record.note.is_empty() {
        write!(out, "\treason: {}", record.note)?;
    }
    writeln!(out)?;
    if payload {
        // Segments on their own lines for a terminal; the bytes are otherwise as stored.
        let shown: Vec<u8> = record
            .payload
            .iter()
            .map(|&b| if b == b'\r' { b'\n' } else { b })
            .collect();
        out.write_all(&shown)?;
        if !shown.ends_with(b"\n") {
            writeln!(out)?;
        }
    }
    Ok(())
}

/// `queue show`: the pending messages and dead letters of each route, by MSH-10, type, size,
/// age and (dead letters) reason; payloads only with `payload`.
pub fn show(
    config: &Config,
    only: Option<&str>,
    payload: bool,
    limit: usize,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    for (name, custody) in custody_routes(config, only)? {
        if let Some(js) = jetstream_of(custody) {
            for (title, subject) in [
                (
                    "pending",
                    crate::custody::jetstream::queue_subject(&js.stream),
                ),
                (
                    "dead letters",
                    crate::custody::jetstream::dead_subject(&js.stream),
                ),
            ] {
                let records = with_jetstream(js, async |ctx| {
                    crate::custody::jetstream::records(ctx, &js.stream, &subject, limit).await
                })?;
                writeln!(out, "route {name}: {title}: {}", records.len())?;
                for record in &records {
                    describe(record, out, payload)?;
                }
            }
            continue;
        }
        for (title, dir) in [
            ("pending", custody.queue_dir.clone()),
            ("dead letters", custody.queue_dir.join(DEAD_LETTER_DIR)),
        ] {
            // Payloads are read to show their headers; the bytes are printed only with --payload.
            let records = match read_only(&dir)? {
                Some(mut q) => q.pending(true, limit)?,
                None => Vec::new(),
            };
            writeln!(out, "route {name}: {title}: {}", records.len())?;
            for record in &records {
                describe(record, out, payload)?;
            }
        }
    }
    Ok(())
}

/// `queue replay`: moves every dead letter back to the end of its route's queue (in order), to
/// be delivered again. Needs the guard stopped.
pub fn replay(config: &Config, only: Option<&str>, out: &mut impl Write) -> anyhow::Result<()> {
    for (name, custody) in custody_routes(config, only)? {
        if let Some(js) = jetstream_of(custody) {
            let replayed = with_jetstream(js, async |ctx| {
                crate::custody::jetstream::replay(ctx, &js.stream, js.publish_timeout).await
            })?;
            if replayed == 0 {
                writeln!(out, "route {name}: no dead letters")?;
            } else {
                writeln!(
                    out,
                    "route {name}: {replayed} dead letters replayed into the queue"
                )?;
            }
            continue;
        }
        let dead_dir = custody.queue_dir.join(DEAD_LETTER_DIR);
        if !dead_dir.exists() {
            writeln!(out, "route {name}: no dead letters")?;
            continue;
        }
        let mut queue = exclusive(&custody.queue_dir, queue_limits(custody))?;
        let mut dead = exclusive(&dead_dir, queue_limits(custody))?;
        let letters = dead.pending(true, usize::MAX)?;
        for letter in &letters {
            queue.append(&letter.payload, "", letter.enqueued_at_ms)?;
        }
        // Durable in the queue first, then gone from the dead letters: a crash in between
        // replays twice, never loses one.
        queue.sync()?;
        dead.purge()?;
        dead.close()?;
        queue.close()?;
        writeln!(
            out,
            "route {name}: {} dead letters replayed into the queue",
            letters.len()
        )?;
    }
    Ok(())
}

/// `queue purge`: drops every pending message (or, with `dead_letters`, every dead letter) of
/// the selected routes, after confirmation unless `yes`. Needs the guard stopped.
pub fn purge(
    config: &Config,
    only: Option<&str>,
    dead_letters: bool,
    yes: bool,
    input: &mut impl BufRead,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    for (name, custody) in custody_routes(config, only)? {
        let dir = if dead_letters {
            custody.queue_dir.join(DEAD_LETTER_DIR)
        } else {
            custody.queue_dir.clone()
        };
        let what = if dead_letters {
            "dead letters"
        } else {
            "pending messages"
        };
        if let Some(js) = jetstream_of(custody) {
            let subject = if dead_letters {
                crate::custody::jetstream::dead_subject(&js.stream)
            } else {
                crate::custody::jetstream::queue_subject(&js.stream)
            };
            let depth = with_jetstream(js, async |ctx| {
                crate::custody::jetstream::depth(ctx, &js.stream).await
            })?;
            let count = if dead_letters {
                depth.dead
            } else {
                depth.pending
            };
            if count == 0 {
                writeln!(out, "route {name}: no {what}")?;
                continue;
            }
            if !yes && !confirmed(name, count, what, input, out)? {
                continue;
            }
            let removed = with_jetstream(js, async |ctx| {
                crate::custody::jetstream::purge(ctx, &js.stream, &subject).await
            })?;
            writeln!(out, "route {name}: {removed} {what} purged")?;
            continue;
        }
        if !dir.exists() {
            writeln!(out, "route {name}: no {what}")?;
            continue;
        }
        let mut queue = exclusive(&dir, queue_limits(custody))?;
        let count = queue.stats().messages;
        if count == 0 {
            writeln!(out, "route {name}: no {what}")?;
            continue;
        }
        if !yes && !confirmed(name, count, what, input, out)? {
            continue;
        }
        let removed = queue.purge()?;
        queue.close()?;
        writeln!(out, "route {name}: {removed} {what} purged")?;
    }
    Ok(())
}

/// Asks the operator to confirm a purge by typing the route's name.
fn confirmed(
    name: &str,
    count: u64,
    what: &str,
    input: &mut impl BufRead,
    out: &mut impl Write,
) -> anyhow::Result<bool> {
    write!(out, "purge {count} {what} of route {name}? They will never be delivered. Type the route name to confirm: ")?;
    out.flush()?;
    let mut answer = String::new();
    input.read_line(&mut answer)?;
    if answer.trim() != name {
        writeln!(out, "route {name}: not purged")?;
        return Ok(false);
    }
    Ok(true)
}
