//! `mllp-guard queue salvage`: what an operator does with a damaged embedded queue while the
//! guard is stopped. Every intact record (pending messages, then dead letters) is written out
//! as one payload file named by its sequence number and MSH-10, durably, before anything is
//! changed; then the queue is rebuilt from its intact records (the damaged bytes set aside in
//! `damaged/` as the guard does at start) and the result is checked against what was written.
//! Must not know sockets, delivery or how the log is laid out beyond `crate::queue`'s API.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

use crate::config::{Config, CustodyConfig, QueueBackend};
use crate::custody::{dead_letter_limits, queue_limits, DEAD_LETTER_DIR};
use crate::queue::{inspect, Limits, QueueError, SegmentLog, Store};
use crate::tools::operator::{custody_routes, guard_running, readable_ids, seq_range};

/// `queue salvage --route R [--out DIR]`: writes the intact records of route `route`'s queue
/// and dead letters to `out` (default `salvaged/<unix time in ms>` under the queue directory), then rebuilds
/// both queues from them. Needs the guard stopped.
pub fn salvage(
    config: &Config,
    route: &str,
    out_dir: Option<&Path>,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let [(name, custody)] = custody_routes(config, Some(route))?[..] else {
        bail!("no route named {route} in {}", config.file.display());
    };
    if custody.backend != QueueBackend::Embedded {
        bail!(
            "route {name} keeps its queue on JetStream: `queue salvage` rebuilds embedded queues (the NATS server keeps and checks its own store)"
        );
    }
    let queue_dir = &custody.queue_dir;
    if !queue_dir.exists() {
        bail!(
            "route {name} has no queue yet ({} does not exist)",
            queue_dir.display()
        );
    }
    if let Some(pid) = SegmentLog::held_by(queue_dir) {
        return Err(guard_running(queue_dir, Some(pid)));
    }
    let out_dir = match out_dir {
        Some(dir) => dir.to_path_buf(),
        None => queue_dir.join("salvaged").join(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis())
                .to_string(),
        ),
    };
    let mut damaged = false;
    for (title, dir, sub, limits) in parts(custody) {
        if !dir.exists() {
            continue;
        }
        damaged |= salvage_one(name, title, &dir, &out_dir.join(sub), limits, out)?;
    }
    if damaged {
        writeln!(
            out,
            "route {name}: salvaged; the damaged bytes are in {} (each .bin with a .txt saying what it stood for)",
            queue_dir.join("damaged").display()
        )?;
    }
    Ok(())
}

/// The route's pending queue and its dead letters: title, directory, subdirectory of the
/// output, limits.
fn parts(custody: &CustodyConfig) -> [(&'static str, PathBuf, &'static str, Limits); 2] {
    [
        (
            "pending",
            custody.queue_dir.clone(),
            "pending",
            queue_limits(custody),
        ),
        (
            "dead letters",
            custody.queue_dir.join(DEAD_LETTER_DIR),
            "dead-letters",
            dead_letter_limits(custody),
        ),
    ]
}

/// Salvages one queue; true when it held damage.
fn salvage_one(
    route: &str,
    title: &str,
    dir: &Path,
    to: &Path,
    limits: Limits,
    out: &mut impl Write,
) -> anyhow::Result<bool> {
    let found = inspect(dir).with_context(|| format!("reading the queue in {}", dir.display()))?;
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for record in &found.records {
        let path = to.join(payload_file_name(record.seq, &record.payload));
        write_durably(&path, &record.payload)?;
    }
    std::fs::File::open(to)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", to.display()))?;
    writeln!(
        out,
        "route {route}: {title}: {} intact records written to {}",
        found.records.len(),
        to.display()
    )?;
    let (mut log, recovery) = match SegmentLog::open_salvaged(dir, limits) {
        Ok(opened) => opened,
        Err(QueueError::Locked { dir }) => {
            return Err(guard_running(&dir, SegmentLog::held_by(&dir)))
        }
        Err(err) => {
            return Err(err).with_context(|| {
                format!(
                    "rebuilding the queue in {} (the intact records are safe in {})",
                    dir.display(),
                    to.display()
                )
            })
        }
    };
    let rebuilt = log.stats().messages;
    log.close()?;
    for d in &recovery.damaged {
        writeln!(
            out,
            "route {route}: {title}: damaged: {}: {} acknowledged messages lost (MSH-10 still readable: {}); the bytes are in {}",
            seq_range(d.first_seq, d.last_seq),
            d.lost,
            readable_ids(&d.control_ids),
            d.file.display()
        )?;
    }
    if rebuilt != found.records.len() as u64 {
        bail!(
            "route {route}: {title}: the rebuilt queue holds {rebuilt} records, but {} intact ones were found; the intact records are in {}",
            found.records.len(),
            to.display()
        );
    }
    let lost: u64 = recovery.damaged.iter().map(|d| d.lost).sum();
    writeln!(
        out,
        "route {route}: {title}: queue rebuilt: {rebuilt} pending, {lost} acknowledged messages lost to damage"
    )?;
    Ok(!recovery.damaged.is_empty())
}

/// `<seq, 20 digits>-<MSH-10>.hl7`, the MSH-10 cut to 64 characters of `[A-Za-z0-9._-]` (any
/// other byte becomes `_`), `no-msh-10` when the payload has none.
fn payload_file_name(seq: u64, payload: &[u8]) -> String {
    let id = crate::wire::hl7::find_header(payload)
        .map(|h| h.control_id().to_vec())
        .unwrap_or_default();
    let id: String = id
        .iter()
        .take(64)
        .map(|&b| {
            if b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_' {
                b as char
            } else {
                '_'
            }
        })
        .collect();
    let id = if id.is_empty() {
        "no-msh-10".into()
    } else {
        id
    };
    format!("{seq:020}-{id}.hl7")
}

fn write_durably(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::payload_file_name;
    use crate::tools::operator::seq_range;

    #[test]
    fn payload_files_are_named_by_seq_and_a_safe_msh_10() {
        assert_eq!(
            payload_file_name(7, b"MSH|^~\\&|A|B|C|D|20260101||ADT^A01|DMG/07 x|P|2.5\r"),
            "00000000000000000007-DMG_07_x.hl7"
        );
        assert_eq!(
            payload_file_name(12, b"not hl7"),
            "00000000000000000012-no-msh-10.hl7"
        );
    }

    #[test]
    fn seq_ranges_read_as_words() {
        assert_eq!(seq_range(7, 7), "seq 7");
        assert_eq!(seq_range(7, 9), "seqs 7..=9");
        assert_eq!(seq_range(8, 7), "bytes after seq 7, no message in them");
    }
}
