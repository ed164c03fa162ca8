//! Noticing that the config should be reloaded: a watch on the directories of the config file
//! and of every file it names (rules, certificates, keys), which fires when the content of one
//! of those files really changed.
//!
//! Directories are watched rather than files because Kubernetes updates a mounted ConfigMap or
//! Secret by swapping a `..data` symlink, which replaces every file at once without touching
//! the watched inode. Events are debounced and then confirmed by comparing a checksum of each
//! file's content, so editors that write in several steps reload once. Events about other files
//! in the same directory (a log written next to the config, say) are dropped where they arrive
//! and never wake the guard. Must not know what the files mean: [`crate::app`] loads and
//! applies the config.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// How long a burst of file events is allowed to settle before the files are compared.
const SETTLE: Duration = Duration::from_millis(300);

/// A watch on a config's input files.
pub struct Watch {
    inputs: Vec<PathBuf>,
    fingerprint: Vec<Option<u32>>,
    events: Option<mpsc::UnboundedReceiver<()>>,
    /// Keeps the OS watch alive.
    _watcher: Option<notify::RecommendedWatcher>,
}

impl Watch {
    /// Watches the directories of `inputs`. If the OS watch cannot be set up, the returned
    /// watch never fires (SIGHUP still reloads) and a warning says so.
    pub fn new(inputs: &[PathBuf]) -> Watch {
        let (tx, rx) = mpsc::unbounded_channel();
        let names = watched_names(inputs);
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if let Ok(event) = event {
                if concerns(&event, &names) {
                    let _ = tx.send(());
                }
            }
        });
        let mut watcher = match watcher {
            Ok(watcher) => Some(watcher),
            Err(err) => {
                tracing::warn!(error = %err, "cannot watch the config files; reload with SIGHUP");
                None
            }
        };
        if let Some(w) = watcher.as_mut() {
            let mut dirs: Vec<PathBuf> = inputs
                .iter()
                .filter_map(|p| p.parent().map(|d| d.to_path_buf()))
                .collect();
            dirs.sort();
            dirs.dedup();
            for dir in dirs {
                if let Err(err) = w.watch(&dir, RecursiveMode::NonRecursive) {
                    tracing::warn!(dir = %dir.display(), error = %err, "cannot watch this directory; changes in it need a SIGHUP");
                }
            }
        }
        Watch {
            inputs: inputs.to_vec(),
            fingerprint: fingerprint(inputs),
            events: watcher.as_ref().map(|_| rx),
            _watcher: watcher,
        }
    }

    /// Resolves once the content of a watched file has changed since the last time.
    pub async fn changed(&mut self) {
        let Some(events) = self.events.as_mut() else {
            return std::future::pending().await;
        };
        loop {
            if events.recv().await.is_none() {
                return std::future::pending().await;
            }
            tokio::time::sleep(SETTLE).await;
            while events.try_recv().is_ok() {}
            let now = fingerprint(&self.inputs);
            if now != self.fingerprint {
                self.fingerprint = now;
                return;
            }
        }
    }
}

/// The file names an event must mention to matter: those of the inputs.
fn watched_names(inputs: &[PathBuf]) -> HashSet<OsString> {
    inputs
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_os_string()))
        .collect()
}

/// Whether a file event may have changed an input: it names one of them, or a `..`-prefixed
/// entry (Kubernetes swaps its `..data` symlink to update every file of a volume at once), or
/// names nothing (the OS dropped events and asks for a rescan).
///
/// Opening or reading a file changes nothing, and the watch reads every input itself to compare
/// checksums: if those events counted, each comparison would schedule the next one, 300 ms
/// later, forever. Closing a file that was open for writing does count.
fn concerns(event: &notify::Event, names: &HashSet<OsString>) -> bool {
    if event.need_rescan() {
        return true;
    }
    if let EventKind::Access(access) = event.kind {
        if access != AccessKind::Close(AccessMode::Write) {
            return false;
        }
    }
    if event.paths.is_empty() {
        return true;
    }
    event.paths.iter().any(|path| {
        path.file_name()
            .is_some_and(|name| names.contains(name) || name.to_string_lossy().starts_with(".."))
    })
}

/// A checksum of each file's content (`None`: unreadable now, e.g. mid-swap).
fn fingerprint(inputs: &[PathBuf]) -> Vec<Option<u32>> {
    inputs
        .iter()
        .map(|p| std::fs::read(p).ok().map(|bytes| crc32fast::hash(&bytes)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fires_on_a_content_change_and_not_on_reading_it_or_on_an_unrelated_file() {
        let dir = tempfile::tempdir().unwrap();
        let watched = dir.path().join("guard.yaml");
        std::fs::write(&watched, "a").unwrap();
        let mut watch = Watch::new(std::slice::from_ref(&watched));
        std::fs::write(dir.path().join("other.txt"), "x").unwrap();
        // The watch reads every input to compare checksums; were reading an event, each
        // comparison would schedule the next, every 300 ms, for as long as the guard runs.
        for _ in 0..3 {
            assert_eq!(std::fs::read(&watched).unwrap(), b"a");
        }
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let events = watch.events.as_mut().expect("the OS watch is set up");
        assert!(
            events.try_recv().is_err(),
            "neither an unrelated file nor reading an input may wake the watch"
        );
        std::fs::write(&watched, "b").unwrap();
        tokio::time::timeout(Duration::from_secs(10), watch.changed())
            .await
            .expect("a content change fires");
    }

    #[test]
    fn only_events_about_an_input_or_a_volume_swap_concern_the_watch() {
        let names = watched_names(&[PathBuf::from("/etc/guard/guard.yaml")]);
        let event = |path: &str| notify::Event::default().add_path(PathBuf::from(path));
        assert!(concerns(&event("/etc/guard/guard.yaml"), &names));
        assert!(concerns(&event("/etc/guard/..data"), &names));
        assert!(concerns(&event("/etc/guard/..data_tmp"), &names));
        assert!(concerns(&notify::Event::default(), &names), "a rescan");
        assert!(!concerns(&event("/etc/guard/sink.log"), &names));
        assert!(!concerns(&event("/etc/guard/guard.yaml.swp"), &names));

        let input = |kind: EventKind| {
            notify::Event::new(kind).add_path(PathBuf::from("/etc/guard/guard.yaml"))
        };
        for reading in [
            AccessKind::Open(AccessMode::Any),
            AccessKind::Read,
            AccessKind::Close(AccessMode::Read),
        ] {
            assert!(
                !concerns(&input(EventKind::Access(reading)), &names),
                "{reading:?} changes nothing"
            );
        }
        let written = EventKind::Access(AccessKind::Close(AccessMode::Write));
        assert!(concerns(&input(written), &names));
        assert!(concerns(
            &input(EventKind::Modify(notify::event::ModifyKind::Any)),
            &names
        ));
    }

    #[tokio::test]
    async fn a_kubernetes_volume_update_fires() {
        // The layout kubelet gives a ConfigMap volume: each file is a symlink through `..data`,
        // which is itself swapped to a new timestamped directory on update.
        let dir = tempfile::tempdir().unwrap();
        let version = |name: &str, content: &str| {
            std::fs::create_dir(dir.path().join(name)).unwrap();
            std::fs::write(dir.path().join(name).join("guard.yaml"), content).unwrap();
        };
        version("..2026_11_22_1", "one");
        std::os::unix::fs::symlink("..2026_11_22_1", dir.path().join("..data")).unwrap();
        let config = dir.path().join("guard.yaml");
        std::os::unix::fs::symlink("..data/guard.yaml", &config).unwrap();
        let mut watch = Watch::new(std::slice::from_ref(&config));
        version("..2026_11_22_2", "two");
        std::os::unix::fs::symlink("..2026_11_22_2", dir.path().join("..data_tmp")).unwrap();
        std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).unwrap();
        tokio::time::timeout(Duration::from_secs(10), watch.changed())
            .await
            .expect("the volume update fires");
    }

    #[tokio::test]
    async fn a_symlink_swap_of_the_directory_entry_fires() {
        let dir = tempfile::tempdir().unwrap();
        let v1 = dir.path().join("v1.yaml");
        let v2 = dir.path().join("v2.yaml");
        std::fs::write(&v1, "one").unwrap();
        std::fs::write(&v2, "two").unwrap();
        let link = dir.path().join("guard.yaml");
        std::os::unix::fs::symlink(&v1, &link).unwrap();
        let mut watch = Watch::new(std::slice::from_ref(&link));
        let tmp = dir.path().join("guard.yaml.tmp");
        std::os::unix::fs::symlink(&v2, &tmp).unwrap();
        std::fs::rename(&tmp, &link).unwrap();
        tokio::time::timeout(Duration::from_secs(10), watch.changed())
            .await
            .expect("the swap fires");
    }
}
