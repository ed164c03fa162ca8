//! The `audit:` key: where the audit trail goes when it leaves stderr. `audit: { file: PATH }`
//! writes one JSON line per message to PATH (appended, created if missing, reopened on SIGHUP);
//! without it the audit lines go to stderr with the rest of the log.
//!
//! An `impl Validator` block like the rest of the config module: `RawAudit` (in `raw.rs`), its
//! check (a path whose directory exists, so `check` finds a typo before `run` cannot open it) and
//! the typed `Audit` (in `model.rs`). Knows nothing of how lines are written (`ops/audit_sink`).

use serde_saphyr::Spanned;

use super::model::Audit;
use super::raw::RawAudit;
use super::validator::Validator;

impl Validator<'_> {
    pub(super) fn audit(&mut self, raw: Option<&Spanned<RawAudit>>) -> Audit {
        let Some(file) = raw.and_then(|raw| raw.value.file.as_ref()) else {
            return Audit::default();
        };
        let written = file.value.trim();
        if written.is_empty() {
            self.error(
                "audit.file",
                &file.referenced,
                "a file path is required here, e.g. /var/log/mllp-guard/audit.jsonl",
            );
            return Audit::default();
        }
        let path = self.base_dir.join(written);
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        if let Some(dir) = dir.filter(|d| !d.is_dir()) {
            self.error(
                "audit.file",
                &file.referenced,
                format!(
                    "the directory {} does not exist; create it (writable by the guard's user) or name another file",
                    dir.display()
                ),
            );
        } else if path.is_dir() {
            self.error(
                "audit.file",
                &file.referenced,
                format!(
                    "{} is a directory; name a file in it, e.g. {}/audit.jsonl",
                    path.display(),
                    path.display()
                ),
            );
        }
        Audit { file: Some(path) }
    }
}
