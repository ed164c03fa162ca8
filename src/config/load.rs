//! From a file to a [`Config`]: [`Config::load`] reads the file, [`Config::parse`] deserializes
//! it into the raw tree, runs the validator over it, and either returns the config with every
//! file it was read from, or every error in document order (the config file first, then each
//! rules file; each error once). Also the fuzz entry, [`fuzz_config`].
//!
//! The only part of the module that reads the config file itself and decides between `Ok` and
//! `Err`. Knows nothing of individual keys: those are the validator's.

use std::io;
use std::path::Path;

use super::error::{without_consequences_of_unknown_keys, ConfigError, ConfigErrors};
use super::model::Config;
use super::raw::parse_raw;
use super::validator::Validator;

impl Config {
    /// Reads and validates the file; TLS material is loaded and checked too, so `check` reports
    /// everything at once. Relative paths inside resolve from the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let whole_file_error = |message: String| {
            ConfigErrors(vec![ConfigError {
                file: path.to_path_buf(),
                yaml_path: String::new(),
                line: None,
                column: None,
                message,
            }])
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            whole_file_error(match e.kind() {
                io::ErrorKind::NotFound => "config file not found".to_string(),
                io::ErrorKind::InvalidData => {
                    "the config file is not UTF-8 text; save it as UTF-8".to_string()
                }
                _ => format!("cannot read the config file: {e}"),
            })
        })?;
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let base_dir = std::path::absolute(parent).unwrap_or_else(|_| parent.to_path_buf());
        Config::parse(&text, path, &base_dir)
    }

    /// Same as [`Config::load`] from text: `base_dir` resolves relative paths, `file` is used in
    /// messages.
    pub fn parse(text: &str, file: &Path, base_dir: &Path) -> Result<Config, ConfigErrors> {
        let (raw, unknown_keys) = parse_raw(text, file)
            .map_err(|errors| ConfigErrors(without_consequences_of_unknown_keys(errors.0)))?;
        let mut v = Validator {
            file,
            base_dir,
            errors: unknown_keys,
            inputs: vec![base_dir.join(file.file_name().unwrap_or(file.as_os_str()))],
        };
        let mut config = v.config(raw);
        if v.errors.is_empty() {
            v.inputs.sort();
            v.inputs.dedup();
            config.inputs = v.inputs;
            Ok(config)
        } else {
            // Document order reads best, the config file first, then each rules file; errors
            // without a position (none today) go last. A rules file shared by several routes
            // reports its errors once.
            v.errors.sort_by_key(|e| {
                let other_file = (e.file != file).then(|| e.file.clone());
                (other_file, e.line.is_none(), e.line, e.column)
            });
            let mut unique: Vec<ConfigError> = Vec::with_capacity(v.errors.len());
            for e in without_consequences_of_unknown_keys(v.errors) {
                if !unique.contains(&e) {
                    unique.push(e);
                }
            }
            Err(ConfigErrors(unique))
        }
    }
}

/// Fuzz entry (the `config` fuzz target calls this): parses `data` (lossily decoded as UTF-8)
/// as a config file. Must never panic, whatever the bytes; every error must carry a message and
/// display on one line. Relative paths resolve from a directory that does not exist, and texts
/// naming device or kernel trees are skipped, so a run never reads from `/dev/zero` or a FIFO.
pub fn fuzz_config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if ["/dev", "/proc", "/sys"]
        .iter()
        .any(|tree| text.contains(tree))
    {
        return;
    }
    let base = Path::new("/nonexistent/mllp-guard-fuzz");
    match Config::parse(&text, Path::new("fuzz.yaml"), base) {
        Ok(config) => {
            assert!(!config.routes.is_empty(), "a valid config has a route");
            let _ = format!("{config:?}");
        }
        Err(errors) => {
            assert!(!errors.0.is_empty(), "an error result holds an error");
            for e in &errors.0 {
                assert!(!e.message.is_empty());
                let _ = e.to_string();
            }
        }
    }
}
