//! How a config problem is reported: [`ConfigError`] (file, YAML path, line and column, message)
//! and [`ConfigErrors`], plus the wording helpers every part of the validator shares: the
//! position of a value, our messages for serde-saphyr's errors, the YAML path serde saw, and the
//! did-you-mean suggestion for a mistyped key.
//!
//! Knows nothing of the config's keys or types beyond the key names serde reports: no raw
//! mirror, no typed model, no validator.

use std::fmt;
use std::path::PathBuf;

use serde_saphyr::Location;

/// One problem in the config file.
///
/// Displays as `{file}:{line}:{column}: {yaml_path}: {message}`; `:{line}:{column}` is left out
/// when the position is unknown and `{yaml_path}: ` when the problem is about the whole file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The config file (as given).
    pub file: PathBuf,
    /// Where in the YAML tree, e.g. `routes[1].tls.cert`; empty for the whole document.
    pub yaml_path: String,
    /// 1-based line of the offending value.
    pub line: Option<usize>,
    /// 1-based column (in characters) of the offending value.
    pub column: Option<usize>,
    /// What is wrong and what to do about it.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let (Some(line), Some(column)) = (self.line, self.column) {
            write!(f, ":{line}:{column}")?;
        }
        f.write_str(": ")?;
        if !self.yaml_path.is_empty() {
            write!(f, "{}: ", self.yaml_path)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in a config file, in document order. Displays one per line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Line and column of a location, `None` when serde-saphyr does not know it.
pub(super) fn position(at: &Location) -> (Option<usize>, Option<usize>) {
    if at.line() == 0 {
        (None, None)
    } else {
        (
            usize::try_from(at.line()).ok(),
            usize::try_from(at.column()).ok(),
        )
    }
}

/// `routes[0].upstream.keepalive.time`, leaving out the `value` level that `Spanned` adds.
pub(super) fn yaml_path_of(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } if key == "value" => {}
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => {}
        }
    }
    out
}

/// Our wording for the errors serde-saphyr reports; anything else keeps its own text.
pub(super) fn serde_message(err: &serde_saphyr::Error, yaml_path: &str) -> String {
    use serde_saphyr::Error as E;
    match err {
        E::SerdeUnknownField {
            field, expected, ..
        } => {
            let mut message = format!("unknown key `{field}`");
            if let Some(near) = closest(field, expected) {
                message.push_str(&format!(" (did you mean `{near}`?)"));
            }
            message.push_str(&format!("; valid keys here: {}", expected.join(", ")));
            message
        }
        E::SerdeMissingField { field, .. } => {
            // A rule: `routes[0].rules[2]` inline, `[2]` in a rules file.
            let in_rule = yaml_path.ends_with(']')
                && (yaml_path.starts_with('[') || yaml_path.contains(".rules["));
            let hint = match (*field, yaml_path.ends_with(".tls")) {
                ("name", _) if in_rule => {
                    "add e.g. `name: no-test-messages` (unique within the route; a-z, 0-9 and '-')"
                }
                ("action", _) => {
                    "add e.g. `action: reject` (allow, reject, drop, or { route: <upstream name> })"
                }
                ("route", _) => "write `action: { route: <upstream name> }`",
                ("routes", _) => "add a `routes:` list with at least one route",
                ("name", _) => "add e.g. `name: lab` (lowercase letters, digits and '-')",
                ("listen", _) => "add e.g. `listen: 127.0.0.1:2575`",
                ("upstream", _) => "add an `upstream:` block with at least `address: host:port`",
                ("address", _) => "add e.g. `address: 127.0.0.1:2576`",
                ("cert", true) => {
                    "add `cert: path/to/chain.pem` (this listener's certificate chain)"
                }
                ("key", true) => "add `key: path/to/key.pem` (the certificate's private key)",
                ("ca", _) => {
                    "add `ca: path/to/ca.pem`, the CA that issued the upstream's certificate"
                }
                _ => "add it",
            };
            format!("missing required key `{field}`; {hint}")
        }
        E::DuplicateMappingKey { key, .. } => match key {
            Some(key) => format!("key `{key}` appears twice; keep one of them"),
            None => "a key appears twice; keep one of them".to_string(),
        },
        E::NullIntoString { .. } => "a value is required here".to_string(),
        E::Unexpected { expected, .. } if expected.contains("string scalar") => {
            let mut message = "expected a single value here, not a list or a map".to_string();
            if yaml_path.ends_with("listen") || yaml_path.ends_with("address") {
                message.push_str(" (quote addresses that start with '[', e.g. \"[::1]:2575\")");
            }
            message
        }
        E::Unexpected { expected, .. } if expected.contains("sequence") => {
            "expected a list here, e.g. [a, b] or one `- item` per line".to_string()
        }
        E::Unexpected { expected, .. } if expected.contains("mapping") => {
            "expected a map of keys here (`key: value` lines or { key: value })".to_string()
        }
        E::Eof { .. } => "the file is empty; it needs at least a `routes:` list".to_string(),
        E::SerdeInvalidType {
            unexpected,
            expected,
            ..
        } => format!("wrong type: found {unexpected}, expected {expected}"),
        other => {
            let message = serde_saphyr::MessageFormatter::format_message(
                &serde_saphyr::UserMessageFormatter,
                other,
            );
            if message.contains("tab") {
                format!("{message} (indent YAML with spaces, not tabs)")
            } else {
                message.into_owned()
            }
        }
    }
}

/// `errors` without those that only follow from an unknown key: a block left empty (`expected
/// a map`) or missing a required key, at the very place holding the unknown key. A mistyped
/// `listne:` is one error (with its did-you-mean), not also "missing `listen`".
pub(super) fn without_consequences_of_unknown_keys(errors: Vec<ConfigError>) -> Vec<ConfigError> {
    let holders: Vec<(PathBuf, String)> = errors
        .iter()
        .filter(|e| e.message.starts_with("unknown key `"))
        .filter_map(|e| {
            let cut = e.yaml_path.rfind(['.', '['])?;
            Some((e.file.clone(), e.yaml_path[..cut].to_string()))
        })
        .collect();
    errors
        .into_iter()
        .filter(|e| {
            let consequence = e.message.starts_with("missing required key")
                || e.message.starts_with("expected a map of keys");
            !(consequence
                && holders
                    .iter()
                    .any(|(file, path)| *file == e.file && *path == e.yaml_path))
        })
        .collect()
}

/// The candidate closest to `word` by edit distance, when close enough to be a typo.
///
/// Only candidates within 3 characters of `word`'s length are measured: the distance is at least
/// the difference in length, and nothing farther than 3 is suggested. That also keeps a
/// pathological key (thousands of characters, as a fuzzer writes) from costing a quadratic
/// comparison with every known key.
pub(super) fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let len = word.chars().count();
    candidates
        .iter()
        .filter(|c| c.chars().count().abs_diff(len) <= 3)
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, c)| {
            let shared_prefix = word
                .chars()
                .zip(c.chars())
                .take_while(|(a, b)| a == b)
                .count();
            *d <= 2 || (*d <= 3 && shared_prefix >= 3)
        })
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance by characters, over two reused rows.
pub(super) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur: Vec<usize> = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// ` (line N)` after a mention of an earlier place, or nothing when its line is unknown.
pub(super) fn on_line(line: Option<usize>) -> String {
    line.map(|l| format!(" (line {l})")).unwrap_or_default()
}
