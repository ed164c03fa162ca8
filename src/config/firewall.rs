//! The firewall keys of the config: a route's `rules:` and `limits:`, and the top-level
//! `upstreams:` that `action: { route: <name> }` sends messages to.
//!
//! An `impl Validator` block like the rest of the config module: it turns the serde mirrors of
//! these keys (`RawRules`, `RawLimits`, `RawUpstreams` in `raw.rs`) into
//! [`crate::firewall::rules::Rule`]s, a [`RateLimits`] and named
//! [`UpstreamConfig`]s, recording every error with its YAML path, line and column. A rules file
//! named by path (`rules: rules/lists/production.rules.yaml`) is read and validated here too;
//! errors inside it name that file and their position in it.
//!
//! Knows the route around these keys only by the YAML path it is handed; a named upstream's
//! block is read by `upstream.rs`, like a route's.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use serde_saphyr::{Location, Spanned};

use super::error::{on_line, position, ConfigError};
use super::model::{
    OnLimit, RateLimits, ReceiverRole, UpstreamConfig, DEFAULT_MAX_TRACKED_SOURCES,
};
use super::raw::{
    parse_raw, List, RawAction, RawLimits, RawMatch, RawRule, RawRuleList, RawRules, RawUpstreams,
};
use super::scalars::{parse_count, parse_positive_duration, parse_size};
use super::validator::Validator;
use crate::firewall::rules::{parse_network, Action, MessageTypePattern, Pattern, Rule, RuleMatch};

// ---------------------------------------------------------------------------------------------
// Raw layer
// ---------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

/// What the rules of every route may route to: every name written under `upstreams:` (invalid
/// ones included, so a bad name is reported once, not again at each rule using it).
pub(super) struct UpstreamNames(Vec<String>);

impl Validator<'_> {
    /// The top-level `upstreams:` map; also returns the names rules may route to.
    pub(super) fn upstreams(
        &mut self,
        raw: Option<&Spanned<RawUpstreams>>,
    ) -> (BTreeMap<String, UpstreamConfig>, UpstreamNames) {
        let mut upstreams = BTreeMap::new();
        let mut names = Vec::new();
        for (name, block) in raw.map(|r| &r.value.0[..]).unwrap_or_default() {
            let written = name.as_str();
            names.push(written.to_string());
            let p = format!("upstreams.{written}");
            let upstream = self.upstream(&p, block);
            if upstream.role == ReceiverRole::OriginalDestination {
                if let Some(address) = &block.value.address {
                    self.error(
                        format!("{p}.address"),
                        &address.referenced,
                        "original-destination is only for the upstream of a `transparent` route: a named upstream has no sender connection to take it from",
                    );
                }
            }
            match parse_upstream_name(written) {
                Ok(()) => {
                    upstreams.insert(written.to_string(), upstream);
                }
                // serde gives no position for a map key: point at its block.
                Err(message) => self.error(p, &block.referenced, message),
            }
        }
        (upstreams, UpstreamNames(names))
    }

    /// A route's `rules:` (inline, or from the file it names).
    pub(super) fn rules(
        &mut self,
        p: &str,
        raw: Option<&Spanned<RawRules>>,
        upstreams: &UpstreamNames,
    ) -> Vec<Rule> {
        let Some(raw) = raw else {
            return Vec::new();
        };
        match &raw.value {
            RawRules::Inline(list) => self.rule_list(&format!("{p}.rules"), list, upstreams),
            RawRules::File(written) => {
                let Some((shown, list)) =
                    self.rules_file(&format!("{p}.rules"), written, &raw.referenced)
                else {
                    return Vec::new();
                };
                // Errors inside the file are about that file, at paths within it (`[0].name`).
                let first = self.errors.len();
                let rules = self.rule_list("", &list, upstreams);
                for e in &mut self.errors[first..] {
                    e.file.clone_from(&shown);
                }
                rules
            }
        }
    }

    /// Reads and parses a rules file; `None` after recording why it cannot be used. Returns the
    /// file as shown in messages (next to the config file as given) and its raw list.
    fn rules_file(
        &mut self,
        p: &str,
        written: &str,
        at: &Location,
    ) -> Option<(PathBuf, RawRuleList)> {
        let trimmed = written.trim();
        if trimmed.is_empty() {
            self.error(
                p,
                at,
                "a rules file path or a list of rules is required here, e.g. `rules: rules/lists/production.rules.yaml`",
            );
            return None;
        }
        let resolved = self.base_dir.join(trimmed);
        self.inputs.push(resolved.clone());
        let shown = match self.file.parent() {
            Some(dir) => dir.join(trimmed),
            None => PathBuf::from(trimmed),
        };
        let text = match read_rules_file(&resolved) {
            Ok(text) => text,
            Err(problem) => {
                let message = match problem {
                    RulesFileProblem::Io(e) => self
                        .io_message(trimmed, &e)
                        .replacen("file", "rules file", 1),
                    RulesFileProblem::Directory => format!(
                        "\"{trimmed}\" is a directory; give the path of a YAML file holding a list of rules"
                    ),
                    RulesFileProblem::NotAFile => format!(
                        "\"{trimmed}\" is not a regular file; give the path of a YAML file holding a list of rules"
                    ),
                    RulesFileProblem::TooLarge(len) => format!(
                        "rules file \"{trimmed}\" is {len} bytes, more than the {MAX_RULES_FILE_BYTES} bytes a rules file may hold; split it or trim it"
                    ),
                    RulesFileProblem::NotUtf8 => {
                        format!("rules file \"{trimmed}\" is not UTF-8 text; save it as UTF-8")
                    }
                };
                self.error(p, at, message);
                return None;
            }
        };
        // An empty file is refused rather than read as "no rules" (which allows everything):
        // emptying a rules file by mistake must not open the route.
        let empty = || ConfigError {
            file: shown.clone(),
            yaml_path: String::new(),
            line: Some(1),
            column: Some(1),
            message: "the rules file is empty; it must hold a list of rules (`[]` for none)"
                .to_string(),
        };
        match parse_raw::<Option<RawRuleList>>(&text, &shown) {
            Ok((Some(list), unknown_keys)) => {
                self.errors.extend(unknown_keys);
                Some((shown, list))
            }
            Ok((None, unknown_keys)) => {
                self.errors.extend(unknown_keys);
                self.errors.push(empty());
                None
            }
            Err(errors) => {
                for e in errors.0 {
                    if e.message.starts_with("the file is empty") {
                        self.errors.push(empty());
                    } else {
                        self.errors.push(e);
                    }
                }
                None
            }
        }
    }

    /// Validates a list of rules. `p` is the YAML path of the list (empty for a rules file).
    fn rule_list(
        &mut self,
        p: &str,
        list: &[Spanned<RawRule>],
        upstreams: &UpstreamNames,
    ) -> Vec<Rule> {
        let mut rules = Vec::with_capacity(list.len());
        let mut seen: HashMap<&str, (usize, Option<usize>)> = HashMap::new();
        for (i, raw) in list.iter().enumerate() {
            let rp = format!("{p}[{i}]");
            let r = &raw.value;
            let name = r.name.value.as_str();
            if let Err(message) = parse_rule_name(name) {
                self.error(format!("{rp}.name"), &r.name.referenced, message);
            } else if let Some(&(first, line)) = seen.get(name) {
                self.error(
                    format!("{rp}.name"),
                    &r.name.referenced,
                    format!(
                        "rule name \"{name}\" is already used by {p}[{first}]{}; give each rule of a route a unique name",
                        on_line(line)
                    ),
                );
            } else {
                seen.insert(name, (i, position(&r.name.referenced).0));
            }
            let matcher = match &r.matcher {
                None => RuleMatch::default(),
                Some(m) => self.rule_match(&format!("{rp}.match"), &m.value),
            };
            let action = self.action(&format!("{rp}.action"), &r.action, upstreams);
            rules.push(Rule {
                name: name.to_string(),
                matcher,
                action,
            });
        }
        rules
    }

    fn rule_match(&mut self, p: &str, m: &RawMatch) -> RuleMatch {
        let first_component = |field: &'static str, hl7: &'static str| {
            move |s: &str| {
                if s.contains('^') {
                    return Err(format!(
                        "\"{s}\": {field} matches the first component of {hl7} only; write it without '^'"
                    ));
                }
                Pattern::parse(s)
            }
        };
        RuleMatch {
            source: self.list(p, "source", &m.source, parse_network),
            tls_identity: self.list(p, "tls_identity", &m.tls_identity, Pattern::parse_identity),
            sending_application: self.list(
                p,
                "sending_application",
                &m.sending_application,
                first_component("sending_application", "MSH-3"),
            ),
            sending_facility: self.list(
                p,
                "sending_facility",
                &m.sending_facility,
                first_component("sending_facility", "MSH-4"),
            ),
            receiving_application: self.list(
                p,
                "receiving_application",
                &m.receiving_application,
                first_component("receiving_application", "MSH-5"),
            ),
            receiving_facility: self.list(
                p,
                "receiving_facility",
                &m.receiving_facility,
                first_component("receiving_facility", "MSH-6"),
            ),
            message_type: self.list(
                p,
                "message_type",
                &m.message_type,
                MessageTypePattern::parse,
            ),
            version: self.list(
                p,
                "version",
                &m.version,
                first_component("version", "MSH-12"),
            ),
            processing_id: self.list(
                p,
                "processing_id",
                &m.processing_id,
                first_component("processing_id", "MSH-11"),
            ),
        }
    }

    /// One match field: every entry parsed (each error at its entry); an empty list is refused
    /// since it could never match.
    fn list<T>(
        &mut self,
        p: &str,
        key: &str,
        raw: &List,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Option<Vec<T>> {
        let raw = raw.as_ref()?;
        if raw.value.is_empty() {
            self.error(
                format!("{p}.{key}"),
                &raw.referenced,
                format!("an empty list matches nothing; list at least one value, or remove `{key}` to match any"),
            );
        }
        let mut out = Vec::with_capacity(raw.value.len());
        for (j, entry) in raw.value.iter().enumerate() {
            match parse(&entry.value) {
                Ok(v) => out.push(v),
                Err(message) => self.error(format!("{p}.{key}[{j}]"), &entry.referenced, message),
            }
        }
        Some(out)
    }

    fn action(&mut self, p: &str, raw: &Spanned<RawAction>, upstreams: &UpstreamNames) -> Action {
        match &raw.value {
            RawAction::Word(word) => match word.trim() {
                "allow" => Action::Allow,
                "reject" => Action::Reject,
                "drop" => Action::Drop,
                "route" => {
                    self.error(
                        p,
                        &raw.referenced,
                        "`route` needs the name of the upstream to send to: write `action: { route: <upstream name> }`",
                    );
                    Action::Reject
                }
                _ => {
                    self.error(
                        p,
                        &raw.referenced,
                        format!(
                            "must be `allow`, `reject` (answer AR, keep the connection), `drop` (close the connection) or `{{ route: <upstream name> }}`, not \"{word}\""
                        ),
                    );
                    Action::Reject
                }
            },
            RawAction::Route(target) => {
                let name = target.value.trim();
                if !upstreams.0.iter().any(|n| n == name) {
                    let known = if upstreams.0.is_empty() {
                        "no `upstreams:` are defined; add a top-level `upstreams:` map with this name (its block takes the same keys as a route's `upstream`)".to_string()
                    } else {
                        format!("the upstreams defined are: {}", upstreams.0.join(", "))
                    };
                    self.error(
                        format!("{p}.route"),
                        &target.referenced,
                        format!("unknown upstream \"{name}\"; {known}"),
                    );
                }
                Action::Route(name.to_string())
            }
        }
    }

    /// A route's `limits:`; also returns `limits.handshake_timeout` when given and valid.
    pub(super) fn limits(
        &mut self,
        p: &str,
        raw: Option<&Spanned<RawLimits>>,
    ) -> (RateLimits, Option<std::time::Duration>) {
        let Some(raw) = raw else {
            return (RateLimits::default(), None);
        };
        let l = &raw.value;
        let p = format!("{p}.limits");
        let messages_per_second = self.value(
            format!("{p}.messages_per_second"),
            &l.messages_per_second,
            None,
            |s| parse_rate(s).map(Some),
        );
        let burst = self.value(format!("{p}.burst"), &l.burst, None, |s| {
            parse_rate(s).map(Some)
        });
        if let (Some(b), None) = (&l.burst, &l.messages_per_second) {
            self.error(
                format!("{p}.burst"),
                &b.referenced,
                "burst needs messages_per_second (it sizes that rate's bucket); add `messages_per_second` or remove `burst`",
            );
        }
        let bytes_per_second = self.value(
            format!("{p}.bytes_per_second"),
            &l.bytes_per_second,
            None,
            |s| match parse_size(s)? {
                0 => Err(format!("must be at least 1 byte per second, not \"{s}\"")),
                n => Ok(Some(n)),
            },
        );
        let connections_per_minute = self.value(
            format!("{p}.connections_per_minute"),
            &l.connections_per_minute,
            None,
            |s| parse_rate(s).map(Some),
        );
        let max_connections_per_source = self.value(
            format!("{p}.max_connections_per_source"),
            &l.max_connections_per_source,
            None,
            |s| parse_count(s, 1).map(Some),
        );
        let on_limit = self.value(
            format!("{p}.on_limit"),
            &l.on_limit,
            OnLimit::Delay,
            |s| match s.trim() {
                "delay" => Ok(OnLimit::Delay),
                "reject" => Ok(OnLimit::Reject),
                _ => Err(format!(
                    "must be `delay` (stop reading from the source until its rate allows) or `reject` (answer AE \"rate limited\"), not \"{s}\""
                )),
            },
        );
        let max_tracked_sources = self.value(
            format!("{p}.max_tracked_sources"),
            &l.max_tracked_sources,
            DEFAULT_MAX_TRACKED_SOURCES,
            |s| parse_count(s, 1),
        );
        let handshake_timeout = self.value(
            format!("{p}.handshake_timeout"),
            &l.handshake_timeout,
            None,
            |s| parse_positive_duration(s).map(Some),
        );
        let limits = RateLimits {
            messages_per_second,
            burst: burst.or(messages_per_second),
            bytes_per_second,
            connections_per_minute,
            max_connections_per_source,
            on_limit,
            max_tracked_sources,
        };
        (limits, handshake_timeout)
    }
}

/// The largest rules file read (1 MiB): far more than any reviewed rule list needs.
const MAX_RULES_FILE_BYTES: u64 = 1 << 20;

enum RulesFileProblem {
    Io(std::io::Error),
    Directory,
    /// A device, FIFO or socket (`/dev/zero` would never end, a FIFO might never answer).
    NotAFile,
    TooLarge(u64),
    NotUtf8,
}

/// Reads a rules file: a regular file of at most [`MAX_RULES_FILE_BYTES`], UTF-8.
fn read_rules_file(path: &Path) -> Result<String, RulesFileProblem> {
    use std::io::Read;
    let meta = std::fs::metadata(path).map_err(RulesFileProblem::Io)?;
    if meta.is_dir() {
        return Err(RulesFileProblem::Directory);
    }
    if !meta.is_file() {
        return Err(RulesFileProblem::NotAFile);
    }
    if meta.len() > MAX_RULES_FILE_BYTES {
        return Err(RulesFileProblem::TooLarge(meta.len()));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_RULES_FILE_BYTES + 1).read_to_end(&mut bytes))
        .map_err(RulesFileProblem::Io)?;
    if bytes.len() as u64 > MAX_RULES_FILE_BYTES {
        return Err(RulesFileProblem::TooLarge(bytes.len() as u64));
    }
    String::from_utf8(bytes).map_err(|_| RulesFileProblem::NotUtf8)
}

/// `messages_per_second`, `burst`, `connections_per_minute`: a whole number >= 1.
fn parse_rate(s: &str) -> Result<NonZeroU32, String> {
    s.trim()
        .parse::<u32>()
        .ok()
        .and_then(NonZeroU32::new)
        .ok_or_else(|| format!("must be a whole number from 1 to {}, not \"{s}\"", u32::MAX))
}

fn parse_upstream_name(s: &str) -> Result<(), String> {
    let ok = (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "upstream name \"{s}\" is not valid: use 1 to 63 characters from a-z, 0-9 and '-' (e.g. \"lab-b\")"
        ))
    }
}

fn parse_rule_name(s: &str) -> Result<(), String> {
    let ok = (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "rule name \"{s}\" is not valid: use 1 to 63 characters from a-z, 0-9 and '-' (e.g. \"no-test-messages\")"
        ))
    }
}

#[cfg(test)]
mod tests;
