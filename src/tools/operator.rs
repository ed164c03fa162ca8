//! `mllp-guard queue ...`: what operators do with custody queues from the command line.
//!
//! `list` and `show` read a queue without locking it, so they work while the guard runs; `replay`
//! and `purge` need the queue to themselves and refuse while a guard holds it. Payload bytes are
//! printed only when `--payload` is asked. Must not know sockets or delivery.
//!
//! On a `queue.backend: jetstream` route every command talks to the route's stream (see
//! [`crate::custody::jetstream`]); there all four work while guards run (replay publishes each dead
//! letter back to the queue before deleting it).
//!
//! The commands are `async` and run on the caller's runtime (the CLI's one runtime): a NATS
//! connection is opened once per route and command, never on a runtime of its own.

use std::io::{BufRead, Write};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};

use crate::config::{Config, CustodyConfig, Delivery, JetStreamQueue, QueueBackend};
use crate::custody::{queue_limits, DEAD_LETTER_DIR};
use crate::queue::{Inspection, Limits, QueueError, Record, SegmentLog, Store};
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
        Err(QueueError::Locked { dir }) => Err(guard_running(&dir, SegmentLog::held_by(&dir))),
        Err(err) => Err(err.into()),
    }
}

/// Refuses (before any prompt, holding no lock) when a guard holds the route's queue: replay
/// and purge need the guard stopped, also for the dead letters, which it may write any moment.
fn refuse_if_running(queue_dir: &Path) -> anyhow::Result<()> {
    match SegmentLog::held_by(queue_dir) {
        Some(pid) => Err(guard_running(queue_dir, Some(pid))),
        None => Ok(()),
    }
}

pub(crate) fn guard_running(dir: &Path, pid: Option<u32>) -> anyhow::Error {
    let pid = pid
        .filter(|&p| p != 0)
        .map_or(String::new(), |p| format!(" (pid {p})"));
    anyhow::anyhow!(
        "the guard is running{pid}; stop it first (it holds the queue in {})",
        dir.display()
    )
}

/// The JetStream settings of a route, when that is its backend.
fn jetstream_of(custody: &CustodyConfig) -> Option<&JetStreamQueue> {
    match &custody.backend {
        QueueBackend::JetStream(js) => Some(js),
        QueueBackend::Embedded => None,
    }
}

/// A connection to a route's NATS JetStream for one operator command.
struct JetStreamSession {
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
}

impl JetStreamSession {
    /// Connects to the route's NATS; `None` (connection closed) when neither its stream nor its
    /// dead-letter stream exists (no guard has started the route): like an embedded queue never
    /// created, it reads as empty.
    async fn open(cfg: &JetStreamQueue) -> anyhow::Result<Option<JetStreamSession>> {
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
        let session = JetStreamSession { client, js };
        let dead = crate::custody::jetstream::dead_stream_name(&cfg.stream);
        let found = match session.js.get_stream(&cfg.stream).await {
            Ok(stream) => Ok(stream),
            Err(_) => session.js.get_stream(&dead).await,
        };
        match found {
            Ok(_) => Ok(Some(session)),
            Err(err)
                if matches!(
                    err.kind(),
                    async_nats::jetstream::context::GetStreamErrorKind::JetStream(e)
                        if e.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND
                ) =>
            {
                session.close().await;
                Ok(None)
            }
            Err(err) => {
                session.close().await;
                bail!("stream {}: {err}", cfg.stream)
            }
        }
    }

    /// Waits until what this command published or deleted has reached the server.
    async fn close(self) {
        let _ = self.client.flush().await;
    }
}

/// One route's queue as `queue list` reports it (also its `--json` object).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RouteDepth {
    pub route: String,
    /// `embedded` or `jetstream`.
    pub backend: &'static str,
    pub pending: u64,
    /// Embedded: encoded bytes of the pending records. JetStream: the route's stream (its
    /// pending messages: acked messages leave a work-queue stream).
    pub bytes: u64,
    /// Age of the oldest pending message in whole seconds; `null` when none is pending.
    pub oldest_age_s: Option<u64>,
    pub dead_letters: u64,
    /// Encoded bytes of the dead letters (embedded), or of the route's dead-letter stream
    /// (JetStream). Not in `--json`.
    #[serde(skip)]
    pub dead_bytes: Option<u64>,
    /// JetStream: the stream's name (not in `--json`).
    #[serde(skip)]
    pub stream: Option<String>,
    /// A queue under `state_dir` that no configured route owns (`"stranded": true` in
    /// `--json`, absent otherwise): `route` is its directory's name.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub stranded: bool,
    /// Embedded: damage found in the queue or its dead letters now (the guard sets it aside
    /// at its next start; `queue salvage` does it now). `queue list`/`show` exit non-zero.
    /// In `--json` only when there is some.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub damaged: Vec<DamagedRange>,
    /// Embedded: acknowledged messages lost to damage set aside before (in `damaged/`). In
    /// `--json` only when not 0.
    #[serde(skip_serializing_if = "is_zero")]
    pub set_aside_lost: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One stretch of damage in a route's queue, as `queue list --json` reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DamagedRange {
    /// `pending` or `dead letters`.
    pub queue: &'static str,
    pub first_seq: u64,
    pub last_seq: u64,
    /// Acknowledged messages among them, never delivered: lost.
    pub lost: u64,
    /// MSH-10 still readable in the damaged bytes.
    pub control_ids: Vec<String>,
    /// Where (segment and offsets).
    pub place: String,
}

/// The depth of each selected route's queue, read while guards run or not.
pub async fn depths(config: &Config, only: Option<&str>) -> anyhow::Result<Vec<RouteDepth>> {
    let mut rows = Vec::new();
    for (name, custody) in custody_routes(config, only)? {
        if let Some(js) = jetstream_of(custody) {
            let depth = match JetStreamSession::open(js).await? {
                Some(session) => {
                    let depth = crate::custody::jetstream::depth(&session.js, &js.stream)
                        .await
                        .map_err(anyhow::Error::msg);
                    session.close().await;
                    depth?
                }
                None => Default::default(),
            };
            rows.push(RouteDepth {
                route: name.to_string(),
                backend: "jetstream",
                pending: depth.pending,
                bytes: depth.bytes,
                oldest_age_s: depth.oldest_enqueued_ms.map(age_secs),
                dead_letters: depth.dead,
                dead_bytes: Some(depth.dead_bytes),
                stream: Some(js.stream.clone()),
                stranded: false,
                damaged: Vec::new(),
                set_aside_lost: 0,
            });
            continue;
        }
        rows.push(embedded_depth(name, &custody.queue_dir, false)?);
    }
    if only.is_none() {
        for q in crate::custody::stranded::stranded_queues(config) {
            rows.push(embedded_depth(&q.name, &q.dir, true)?);
        }
        for s in crate::custody::stranded::stranded_streams(config).await {
            rows.push(RouteDepth {
                route: s.stream.clone(),
                backend: "jetstream",
                pending: s.pending,
                bytes: s.bytes,
                oldest_age_s: s.oldest_enqueued_ms.map(age_secs),
                dead_letters: s.dead,
                dead_bytes: Some(s.dead_bytes),
                stream: Some(s.stream),
                stranded: true,
                damaged: Vec::new(),
                set_aside_lost: 0,
            });
        }
    }
    Ok(rows)
}

/// The depth of the embedded queue in `dir` (and its dead letters), and any damage in them,
/// read-only: every record is read and checked.
fn embedded_depth(route: &str, dir: &Path, stranded: bool) -> anyhow::Result<RouteDepth> {
    let pending = inspected(dir)?;
    let dead = inspected(&dir.join(DEAD_LETTER_DIR))?;
    let mut damaged = Vec::new();
    for (queue, found) in [("pending", &pending), ("dead letters", &dead)] {
        damaged.extend(found.damage.iter().map(|d| DamagedRange {
            queue,
            first_seq: d.first_seq,
            last_seq: d.last_seq,
            lost: d.lost,
            control_ids: d.control_ids.clone(),
            place: d.place.clone(),
        }));
    }
    let bytes = |found: &Inspection| {
        found
            .records
            .iter()
            .map(|r| {
                (crate::queue::RECORD_HEADER_BYTES + (r.note.len() + r.payload.len()) as u64)
                    .div_ceil(8)
                    * 8
            })
            .sum()
    };
    Ok(RouteDepth {
        route: route.to_string(),
        backend: "embedded",
        pending: pending.records.len() as u64,
        bytes: bytes(&pending),
        oldest_age_s: pending.records.first().map(|r| age_secs(r.enqueued_at_ms)),
        dead_letters: dead.records.len() as u64,
        dead_bytes: Some(bytes(&dead)),
        stream: None,
        stranded,
        damaged,
        set_aside_lost: pending
            .set_aside
            .iter()
            .chain(&dead.set_aside)
            .map(|s| s.lost)
            .sum(),
    })
}

/// Surveys a queue (changing nothing); a queue never created reads as empty.
fn inspected(dir: &Path) -> anyhow::Result<Inspection> {
    if !dir.exists() {
        return Ok(Inspection::default());
    }
    crate::queue::inspect(dir).with_context(|| format!("reading the queue in {}", dir.display()))
}

/// The line that says what is damaged, and the error `list`/`show` end with: a damaged queue
/// is not healthy even though the guard salvages it at its next start.
fn damage_words(route: &str, damaged: &[DamagedRange]) -> String {
    let parts: Vec<String> = damaged
        .iter()
        .map(|d| {
            format!(
                "{}: {}, {} acknowledged messages lost{}",
                d.queue,
                seq_range(d.first_seq, d.last_seq),
                d.lost,
                if d.control_ids.is_empty() {
                    String::new()
                } else {
                    format!(" (MSH-10 {})", d.control_ids.join(", "))
                }
            )
        })
        .collect();
    format!(
        "route {route}: DAMAGED: {}; the guard sets the damaged bytes aside at its next start, or stop it and run `mllp-guard queue salvage --config FILE --route {route}`",
        parts.join("; ")
    )
}

/// `seqs 7..=9`, `seq 7`, or `between records` for damage that stood for no message.
pub(crate) fn seq_range(first: u64, last: u64) -> String {
    match last.checked_sub(first) {
        None => format!(
            "bytes after seq {}, no message in them",
            first.saturating_sub(1)
        ),
        Some(0) => format!("seq {first}"),
        Some(_) => format!("seqs {first}..={last}"),
    }
}

/// The MSH-10s still readable in damaged bytes, in words.
pub(crate) fn readable_ids(ids: &[String]) -> String {
    if ids.is_empty() {
        "none".to_string()
    } else {
        ids.join(", ")
    }
}

/// Fails when any route's queue is damaged (after everything was printed).
fn fail_on_damage(rows: &[RouteDepth]) -> anyhow::Result<()> {
    let damaged: Vec<&str> = rows
        .iter()
        .filter(|r| !r.damaged.is_empty())
        .map(|r| r.route.as_str())
        .collect();
    if damaged.is_empty() {
        return Ok(());
    }
    bail!(
        "damaged queue: {} (records that fail their checksum; see above)",
        damaged.join(", ")
    )
}

/// `queue move`: hands the stranded queue `from` (a route renamed or removed) to the configured
/// store-and-forward route `to`, whose own queue must be empty. Needs the guard stopped.
pub fn move_queue(
    config: &Config,
    from: &str,
    to: &str,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let Some(state_dir) = &config.state_dir else {
        bail!("the configuration has no state_dir: there are no queues to move");
    };
    let Some(custody) = config.routes.iter().find_map(|r| match &r.delivery {
        Delivery::StoreAndForward(c) if r.name == to => Some(c),
        _ => None,
    }) else {
        bail!("route {to} is not a store-and-forward route of this configuration");
    };
    if jetstream_of(custody).is_some() {
        bail!("route {to} keeps its queue on JetStream; `queue move` moves embedded queues");
    }
    let from_dir = state_dir.join(from);
    let Some(stranded) = crate::custody::stranded::stranded_queues(config)
        .into_iter()
        .find(|q| q.name == from)
    else {
        bail!(
            "{} is not a queue that no route owns (queue list shows the stranded ones)",
            from_dir.display()
        );
    };
    refuse_if_running(&from_dir)?;
    let to_dir = &custody.queue_dir;
    if to_dir.exists() {
        refuse_if_running(to_dir)?;
        let pending = read_only(to_dir)?.map_or(0, |q| q.stats().messages);
        let dead = read_only(&to_dir.join(DEAD_LETTER_DIR))?.map_or(0, |q| q.stats().messages);
        if pending + dead > 0 {
            bail!(
                "route {to} has a queue of its own ({pending} pending, {dead} dead letters): deliver or purge them first, then move"
            );
        }
        std::fs::remove_dir_all(to_dir)
            .with_context(|| format!("removing the empty queue {}", to_dir.display()))?;
    }
    std::fs::rename(&from_dir, to_dir)
        .with_context(|| format!("moving {} to {}", from_dir.display(), to_dir.display()))?;
    std::fs::File::open(state_dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", state_dir.display()))?;
    writeln!(
        out,
        "queue {from} ({} pending) now belongs to route {to}; start the guard to deliver it",
        stranded.pending
    )?;
    Ok(())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn age_secs(enqueued_at_ms: u64) -> u64 {
    now_ms().saturating_sub(enqueued_at_ms) / 1000
}

fn age(enqueued_at_ms: u64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(age_secs(enqueued_at_ms))).to_string()
}

/// `queue list`: one line per route with depth, bytes, oldest age and dead letters; with `json`
/// one JSON array of [`RouteDepth`] objects.
pub async fn list(
    config: &Config,
    only: Option<&str>,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let rows = depths(config, only).await?;
    if json {
        serde_json::to_writer(&mut *out, &rows)?;
        writeln!(out)?;
        return fail_on_damage(&rows);
    }
    for row in &rows {
        let oldest = row
            .oldest_age_s
            .map(|s| humantime::format_duration(std::time::Duration::from_secs(s)).to_string())
            .unwrap_or_else(|| "-".into());
        match &row.stream {
            Some(stream) if row.stranded => writeln!(
                out,
                "stream {stream} (no configured route owns it): {} pending, oldest {oldest}, {} dead letters ({} bytes in JetStream, {} in {}); name it again in a route's queue.jetstream.stream to deliver them",
                row.pending,
                row.dead_letters,
                row.bytes,
                row.dead_bytes.unwrap_or(0),
                crate::custody::jetstream::dead_stream_name(stream)
            )?,
            Some(stream) => writeln!(
                out,
                "route {}: {} pending, oldest {oldest}, {} dead letters ({} bytes in JetStream stream {stream}, {} in {})",
                row.route,
                row.pending,
                row.dead_letters,
                row.bytes,
                row.dead_bytes.unwrap_or(0),
                crate::custody::jetstream::dead_stream_name(stream)
            )?,
            None if row.stranded => writeln!(
                out,
                "queue {} (no configured route owns it): {} pending ({} bytes), oldest {oldest}, {} dead letters; `mllp-guard queue move --config FILE --from {} --to NEW` hands it to a route",
                row.route, row.pending, row.bytes, row.dead_letters, row.route
            )?,
            None => writeln!(
                out,
                "route {}: {} pending ({} bytes), oldest {oldest}, {} dead letters ({} bytes)",
                row.route,
                row.pending,
                row.bytes,
                row.dead_letters,
                row.dead_bytes.unwrap_or(0)
            )?,
        }
        if row.set_aside_lost > 0 {
            writeln!(
                out,
                "route {}: {} acknowledged messages were lost to damage set aside earlier (in {})",
                row.route,
                row.set_aside_lost,
                queue_dir_of(config, &row.route).join("damaged").display()
            )?;
        }
        if !row.damaged.is_empty() {
            writeln!(out, "{}", damage_words(&row.route, &row.damaged))?;
        }
    }
    fail_on_damage(&rows)
}

/// Where the embedded queue named `route` lives (a configured route's, or a stranded one).
fn queue_dir_of(config: &Config, route: &str) -> std::path::PathBuf {
    custody_routes(config, Some(route))
        .ok()
        .and_then(|routes| routes.first().map(|(_, c)| c.queue_dir.clone()))
        .or_else(|| config.state_dir.as_ref().map(|d| d.join(route)))
        .unwrap_or_default()
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
pub async fn show(
    config: &Config,
    only: Option<&str>,
    payload: bool,
    limit: usize,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let mut damaged = Vec::new();
    for (name, custody) in custody_routes(config, only)? {
        if let Some(js) = jetstream_of(custody) {
            let session = JetStreamSession::open(js).await?;
            for (title, part) in [
                ("pending", crate::custody::jetstream::Part::Pending),
                ("dead letters", crate::custody::jetstream::Part::Dead),
            ] {
                let records = match &session {
                    Some(session) => {
                        crate::custody::jetstream::records(&session.js, &js.stream, part, limit)
                            .await
                            .map_err(anyhow::Error::msg)?
                    }
                    None => Vec::new(),
                };
                writeln!(out, "route {name}: {title}: {}", records.len())?;
                for record in &records {
                    describe(record, out, payload)?;
                }
            }
            if let Some(session) = session {
                session.close().await;
            }
            continue;
        }
        for (title, dir) in [
            ("pending", custody.queue_dir.clone()),
            ("dead letters", custody.queue_dir.join(DEAD_LETTER_DIR)),
        ] {
            // Payloads are read to show their headers (and every record is checked); the bytes
            // are printed only with --payload.
            let found = inspected(&dir)?;
            writeln!(out, "route {name}: {title}: {}", found.records.len())?;
            for record in found.records.iter().take(limit) {
                describe(record, out, payload)?;
            }
            for d in &found.damage {
                writeln!(
                    out,
                    "  DAMAGED {}\t{} acknowledged messages lost\tMSH-10 still readable: {}\tat {}",
                    seq_range(d.first_seq, d.last_seq),
                    d.lost,
                    readable_ids(&d.control_ids),
                    d.place
                )?;
            }
            let earlier: u64 = found.set_aside.iter().map(|s| s.lost).sum();
            if !found.set_aside.is_empty() {
                writeln!(
                    out,
                    "  {} stretches of damage set aside earlier ({earlier} acknowledged messages lost), in {}",
                    found.set_aside.len(),
                    dir.join("damaged").display()
                )?;
            }
            if !found.damage.is_empty() && !damaged.contains(&name) {
                damaged.push(name);
            }
        }
    }
    if !damaged.is_empty() {
        bail!(
            "damaged queue: {}; the guard sets the damaged bytes aside at its next start, or stop it and run `mllp-guard queue salvage --config FILE --route ROUTE`",
            damaged.join(", ")
        );
    }
    Ok(())
}

/// `queue replay`: moves every dead letter back to the end of its route's queue (in order), to
/// be delivered again. Needs the guard stopped.
pub async fn replay(
    config: &Config,
    only: Option<&str>,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    for (name, custody) in custody_routes(config, only)? {
        if let Some(js) = jetstream_of(custody) {
            let replayed = match JetStreamSession::open(js).await? {
                Some(session) => {
                    let replayed = crate::custody::jetstream::replay(
                        &session.js,
                        &js.stream,
                        js.publish_timeout,
                    )
                    .await
                    .map_err(anyhow::Error::msg);
                    session.close().await;
                    replayed?
                }
                None => 0,
            };
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
        refuse_if_running(&custody.queue_dir)?;
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
pub async fn purge(
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
            let part = if dead_letters {
                crate::custody::jetstream::Part::Dead
            } else {
                crate::custody::jetstream::Part::Pending
            };
            let Some(session) = JetStreamSession::open(js).await? else {
                writeln!(out, "route {name}: no {what}")?;
                continue;
            };
            let depth = crate::custody::jetstream::depth(&session.js, &js.stream)
                .await
                .map_err(anyhow::Error::msg)?;
            let count = if dead_letters {
                depth.dead
            } else {
                depth.pending
            };
            if count == 0 {
                writeln!(out, "route {name}: no {what}")?;
                session.close().await;
                continue;
            }
            if !yes && !confirmed(name, count, what, input, out)? {
                session.close().await;
                continue;
            }
            let removed = crate::custody::jetstream::purge(&session.js, &js.stream, part)
                .await
                .map_err(anyhow::Error::msg);
            session.close().await;
            let removed = removed?;
            writeln!(out, "route {name}: {removed} {what} purged")?;
            continue;
        }
        refuse_if_running(&custody.queue_dir)?;
        if !dir.exists() {
            writeln!(out, "route {name}: no {what}")?;
            continue;
        }
        // Counted read-only: no lock is held while the operator reads the prompt.
        let count = read_only(&dir)?.map_or(0, |q| q.stats().messages);
        if count == 0 {
            writeln!(out, "route {name}: no {what}")?;
            continue;
        }
        if !yes && !confirmed(name, count, what, input, out)? {
            continue;
        }
        let mut queue = exclusive(&dir, queue_limits(custody))?;
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
