//! The raw layer: serde mirrors (`Raw*`) of the YAML file, and [`parse_raw`], which turns syntax
//! and shape errors into [`ConfigError`]s. An unknown key does not hide the rest of the file: it
//! is reported, its entry is blanked out of the text (positions kept) and the file read again,
//! so one `check` lists every unknown key and every other error.
//!
//! Every struct is `deny_unknown_fields` and every scalar stays text ([`Text`]) with its line
//! and column, so that serde-saphyr reports only syntax, unknown and missing keys and wrong
//! shapes, while every value is parsed (and every error worded) by the validator. Reading this
//! file top to bottom is reading the shape of the config file; its keys are a public contract.
//!
//! Knows nothing of the typed model or the validator: these types are read, never built, by
//! the rest of the module.

use std::fmt;
use std::path::Path;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_saphyr::Spanned;

use super::error::{closest, position, serde_message, yaml_path_of, ConfigError, ConfigErrors};

/// A scalar as written, with its position. Numbers stay text so every value is parsed (and
/// every error worded) by this module.
pub(super) type Text = Spanned<String>;

/// Unknown keys reported from one file before the rest is given up on (each costs a re-read).
const MAX_UNKNOWN_KEYS: usize = 64;

/// Deserializes the raw tree. `Ok` holds the tree read without the unknown keys, and an error
/// for each of them; `Err` every unknown key found, then the syntax or shape error that stopped
/// the reading.
pub(super) fn parse_raw<T: de::DeserializeOwned>(
    source: &str,
    file: &Path,
) -> Result<(T, Vec<ConfigError>), ConfigErrors> {
    let mut edits: Vec<Edit> = Vec::new();
    let mut errors = Vec::new();
    // `source` with every edit applied, kept from round to round (a new edit is applied to it
    // alone), and the reading of it when the last round already made it: a blanked entry is read
    // once to choose its fix, and that reading is the next round's. Each unknown key thus costs
    // one read and one pass over the text (the fuzzer's files with dozens of them took twice the
    // reads and a pass per earlier edit).
    let mut text = source.to_string();
    let mut read_ahead = None;
    // Bounded: each round adds an edit (at most MAX_UNKNOWN_KEYS) or turns one into a rename.
    for _ in 0..3 * MAX_UNKNOWN_KEYS {
        let (err, path) = match read_ahead.take().unwrap_or_else(|| read::<T>(&text)) {
            Ok(tree) => return Ok((tree, errors)),
            Err(failed) => failed,
        };
        let err = err.without_snippet();
        let (line, column) = err.location().as_ref().map_or((None, None), position);
        let holder = path.rfind(['.', '[']).map_or("", |cut| &path[..cut]);
        match (err, line, column) {
            (serde_saphyr::Error::SerdeUnknownField { field, .. }, Some(line), Some(column))
                if edits.len() < MAX_UNKNOWN_KEYS =>
            {
                let mut edit = Edit {
                    line,
                    column,
                    field: field.to_string(),
                    holder: holder.to_string(),
                    fix: Fix::Blank,
                };
                // The unknown key was its block's only one, and a blank block is null (an
                // error right at the block): an empty map (`{}`) in its place keeps it a map.
                errors.push(error(file, err, path.clone(), Some(line), Some(column)));
                let Some(blank) = edit.apply(&text) else {
                    break;
                };
                let next = read::<T>(&blank);
                let at_holder = matches!(&next, Err((e, at)) if at == holder
                && !matches!(
                    e.without_snippet(),
                    serde_saphyr::Error::SerdeMissingField { .. }
                ));
                if at_holder {
                    edit.fix = Fix::EmptyMap;
                    let Some(empty_map) = edit.apply(&text) else {
                        break;
                    };
                    text = empty_map;
                } else {
                    text = blank;
                    read_ahead = Some(next);
                }
                edits.push(edit);
                continue;
            }
            // A required key is missing where an unknown key was blanked out, and the unknown
            // key is its did-you-mean: read that key as the one meant.
            (serde_saphyr::Error::SerdeMissingField { field: meant, .. }, _, _) => {
                let typo = edits.iter_mut().find(|e| {
                    e.holder == path
                        && !matches!(e.fix, Fix::Rename(_))
                        && closest(&e.field, &[meant]).is_some()
                });
                if let Some(typo) = typo {
                    typo.fix = Fix::Rename(meant);
                    // An earlier edit changed: the text is made again from the source.
                    let Some(renamed) = apply(source, &edits) else {
                        break;
                    };
                    text = renamed;
                    continue;
                }
            }
            _ => {}
        }
        errors.push(error(file, err, path, line, column));
        return Err(ConfigErrors(errors));
    }
    Err(ConfigErrors(errors))
}

fn error(
    file: &Path,
    err: &serde_saphyr::Error,
    path: String,
    line: Option<usize>,
    column: Option<usize>,
) -> ConfigError {
    ConfigError {
        file: file.to_path_buf(),
        message: serde_message(err, &path),
        yaml_path: path,
        line,
        column,
    }
}

/// What is done to an unknown key's entry before the file is read again.
enum Fix {
    /// Spaces instead of the entry.
    Blank,
    /// `{}` instead of the entry (its block's only one).
    EmptyMap,
    /// The key spelt as the required key it misses.
    Rename(&'static str),
}

/// One unknown key's entry and what is done to it.
struct Edit {
    line: usize,
    column: usize,
    field: String,
    /// The YAML path of the map holding it.
    holder: String,
    fix: Fix,
}

impl Edit {
    fn apply(&self, text: &str) -> Option<String> {
        let (line, column, field) = (self.line, self.column, self.field.as_str());
        match self.fix {
            Fix::Blank => blank_entry(text, line, column, field, false),
            Fix::EmptyMap => blank_entry(text, line, column, field, true),
            Fix::Rename(meant) => rename_key(text, line, column, field, meant),
        }
    }
}

/// `source` with every edit applied in order (`None` when one no longer finds its key).
fn apply(source: &str, edits: &[Edit]) -> Option<String> {
    let mut text = source.to_string();
    for edit in edits {
        text = edit.apply(&text)?;
    }
    Some(text)
}

/// `text` with the key `field` at `line`:`column` (1-based, characters) spelt `meant`, padded
/// with spaces before its `:` when shorter, so the line keeps its positions; a longer name takes
/// spaces after the `:` when there are enough, and otherwise moves the rest of its line (an error
/// about that value then points that many columns to the right). `None` when the key is not
/// found there as a plain key.
fn rename_key(text: &str, line: usize, column: usize, field: &str, meant: &str) -> Option<String> {
    let line_start: usize = text
        .split_inclusive('\n')
        .take(line.checked_sub(1)?)
        .map(str::len)
        .sum();
    let key = line_start
        + text
            .get(line_start..)?
            .char_indices()
            .nth(column.checked_sub(1)?)
            .map(|(i, _)| i)?;
    let after = key + field.len();
    if !text.get(key..)?.starts_with(field) || !text.get(after..)?.starts_with(':') {
        return None;
    }
    // A longer name takes spaces after the `:` where there are enough (`crt:  x`).
    let rest = &text[after + 1..];
    let spaces = rest.len() - rest.trim_start_matches(' ').len();
    let longer = meant.len().saturating_sub(field.len());
    let taken = if spaces > longer { longer } else { 0 };
    let padding = field.len().saturating_sub(meant.len());
    Some(format!(
        "{}{meant}{}:{}",
        &text[..key],
        " ".repeat(padding),
        &rest[taken..]
    ))
}

/// The raw tree of `text`, or the first error with the YAML path where it occurred.
fn read<T: de::DeserializeOwned>(text: &str) -> Result<T, (Box<serde_saphyr::Error>, String)> {
    let mut path = String::new();
    serde_saphyr::with_deserializer_from_str(text, |de| {
        serde_path_to_error::deserialize::<_, T>(de).map_err(|e| {
            path = yaml_path_of(e.path());
            e.into_inner()
        })
    })
    .map_err(|err| (Box::new(err), path))
}

/// `text` with the map entry whose key `field` starts at `line`:`column` (1-based, characters)
/// turned into spaces, line breaks kept, so every other position stays where it was: the rest of
/// the line and the lines indented under it for a block entry, up to the next `,` (which goes
/// too) or the closing bracket for an entry of a flow map (`{ a: 1, typo: 2 }`). `None` when the
/// key is not found there. With `empty_map`, `{}` takes the key's place (for an entry that was
/// its block's only one).
fn blank_entry(
    text: &str,
    line: usize,
    column: usize,
    field: &str,
    empty_map: bool,
) -> Option<String> {
    let line_start: usize = text
        .split_inclusive('\n')
        .take(line.checked_sub(1)?)
        .map(str::len)
        .sum();
    let this_line = text.get(line_start..)?.split('\n').next()?;
    let key_in_line = this_line
        .char_indices()
        .nth(column.checked_sub(1)?)
        .map(|(i, _)| i)?;
    let key = line_start + key_in_line;
    let rest = text.get(key..)?;
    let unquoted = rest.trim_start_matches(['"', '\'']);
    if !unquoted.starts_with(field) {
        return None;
    }
    let prefix = &this_line[..key_in_line];
    let end = if prefix.chars().all(|c| c == ' ' || c == '-') {
        // A block entry: this line from the key on, then every line indented deeper than the
        // key (its nested value), or as deep for a `- item` list under it; blank and comment
        // lines in between go with it.
        let key_indent = prefix.chars().count();
        let mut end = line_start + this_line.len();
        let mut pending = (end + 1).min(text.len());
        for next in text[pending..].split_inclusive('\n') {
            let body = next.trim_end_matches(['\n', '\r']);
            let indent = body.len() - body.trim_start_matches(' ').len();
            let trimmed = body.trim_start_matches(' ');
            pending += next.len();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let under = indent > key_indent
                || (indent == key_indent && (trimmed == "-" || trimmed.starts_with("- ")));
            if !under {
                break;
            }
            end = pending;
        }
        end
    } else {
        // An entry of a flow map: up to the `,` ending it (included) or the bracket closing
        // the map (kept), outside quotes and nested brackets.
        let mut depth = 0usize;
        let mut quote: Option<char> = None;
        let mut end = text.len();
        for (i, c) in rest.char_indices() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '"' | '\'') => quote = Some(c),
                (None, '[' | '{') => depth += 1,
                (None, ']' | '}') if depth == 0 => {
                    end = key + i;
                    break;
                }
                (None, ']' | '}') => depth -= 1,
                (None, ',') if depth == 0 => {
                    end = key + i + 1;
                    break;
                }
                _ => {}
            }
        }
        end
    };
    let mut out = String::with_capacity(text.len());
    out.push_str(&text[..key]);
    let mut blank: String = text[key..end]
        .chars()
        .map(|c| if c == '\n' || c == '\r' { c } else { ' ' })
        .collect();
    if empty_map && blank.starts_with("  ") {
        blank.replace_range(..2, "{}");
    }
    out.push_str(&blank);
    out.push_str(&text[end..]);
    Some(out)
}

// ---------------------------------------------------------------------------------------------
// The config file
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) routes: Spanned<Vec<Spanned<RawRoute>>>,
    pub(super) shutdown_grace: Option<Text>,
    pub(super) state_dir: Option<Text>,
    pub(super) upstreams: Option<Spanned<RawUpstreams>>,
    pub(super) admin: Option<Spanned<RawAdmin>>,
    pub(super) log_payloads: Option<Text>,
    pub(super) max_buffered_bytes: Option<Text>,
    pub(super) notify: Option<Spanned<RawNotify>>,
    pub(super) audit: Option<Spanned<RawAudit>>,
}

/// `audit:`: where the audit trail is written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAudit {
    pub(super) file: Option<Text>,
}

/// `notify:`: webhooks told about events, and the thresholds of the events that have them.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNotify {
    pub(super) webhooks: Option<Spanned<Vec<Spanned<RawWebhook>>>>,
    pub(super) queue_backlog: Option<Spanned<RawQueueBacklog>>,
    pub(super) certificate_expiring: Option<Spanned<RawCertificateExpiring>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWebhook {
    pub(super) url: Text,
    pub(super) events: List,
    pub(super) secret_file: Option<Text>,
    pub(super) timeout: Option<Text>,
    pub(super) headers: Option<Spanned<std::collections::BTreeMap<String, Text>>>,
    pub(super) ca: Option<Text>,
    pub(super) max_pending: Option<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawQueueBacklog {
    pub(super) pending: Option<Text>,
    pub(super) oldest: Option<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCertificateExpiring {
    pub(super) within: Option<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) listen: Text,
    pub(super) token_file: Option<Text>,
    pub(super) protect_reads: Option<Text>,
    pub(super) allowed_hosts: Option<Spanned<Vec<Text>>>,
    pub(super) tls: Option<Spanned<RawServerTls>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub(super) name: Text,
    pub(super) listen: Option<Text>,
    pub(super) dial: Option<Text>,
    pub(super) transparent: Option<Text>,
    pub(super) proxy_protocol: Option<Spanned<RawProxyProtocol>>,
    pub(super) tls: Option<Spanned<RawServerTls>>,
    /// Optional here so that its absence gets a message with an example.
    pub(super) allow: Option<Spanned<Vec<Text>>>,
    pub(super) max_connections: Option<Text>,
    pub(super) max_message_bytes: Option<Text>,
    pub(super) receive_timeout: Option<Text>,
    pub(super) idle_timeout: Option<Text>,
    pub(super) handshake_timeout: Option<Text>,
    pub(super) on_upstream_failure: Option<Text>,
    pub(super) upstream: Spanned<RawUpstream>,
    pub(super) delivery: Option<Text>,
    pub(super) queue: Option<Spanned<RawQueue>>,
    pub(super) ack_mode: Option<Text>,
    pub(super) retry: Option<Spanned<RawRetry>>,
    pub(super) on_reply: Option<Spanned<RawOnReply>>,
    pub(super) duplicate_window: Option<Text>,
    pub(super) framing: Option<Spanned<RawFraming>>,
    pub(super) rules: Option<Spanned<RawRules>>,
    pub(super) limits: Option<Spanned<RawLimits>>,
    pub(super) multiple_messages: Option<Text>,
    pub(super) batches: Option<Text>,
    pub(super) send_timeout: Option<Text>,
    pub(super) socket: Option<Spanned<RawSocket>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawQueue {
    pub(super) max_bytes: Option<Text>,
    pub(super) max_messages: Option<Text>,
    pub(super) segment_bytes: Option<Text>,
    pub(super) backend: Option<Text>,
    pub(super) jetstream: Option<Spanned<RawJetStream>>,
    pub(super) unready_when: Option<Spanned<RawUnreadyWhen>>,
    pub(super) dead_letters: Option<Spanned<RawDeadLetters>>,
}

/// `queue.dead_letters:` (both backends; on JetStream the dead-letter stream's limits).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDeadLetters {
    pub(super) max_messages: Option<Text>,
    pub(super) max_bytes: Option<Text>,
}

/// `queue.unready_when:` (either key or both).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUnreadyWhen {
    pub(super) pending: Option<Text>,
    pub(super) oldest: Option<Text>,
}

/// `upstream.health_check:`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealthCheck {
    pub(super) interval: Option<Text>,
    pub(super) timeout: Option<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawJetStream {
    pub(super) servers: Option<Spanned<Vec<Text>>>,
    pub(super) stream: Option<Text>,
    pub(super) replicas: Option<Text>,
    pub(super) max_bytes: Option<Text>,
    pub(super) duplicate_window: Option<Text>,
    pub(super) tls: Option<Spanned<RawNatsTls>>,
    pub(super) credentials: Option<Text>,
    pub(super) takeover: Option<Text>,
    pub(super) publish_timeout: Option<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNatsTls {
    pub(super) ca: Option<Text>,
    pub(super) cert: Option<Text>,
    pub(super) key: Option<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRetry {
    pub(super) initial: Option<Text>,
    pub(super) max: Option<Text>,
    pub(super) max_attempts: Option<Text>,
    pub(super) max_age: Option<Text>,
}

/// Keys are the HL7 reply codes, uppercase as in the contract.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOnReply {
    #[serde(rename = "AE")]
    pub(super) ae: Option<Text>,
    #[serde(rename = "AR")]
    pub(super) ar: Option<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServerTls {
    pub(super) cert: Text,
    pub(super) key: Option<Text>,
    pub(super) password_file: Option<Text>,
    pub(super) client_ca: Option<Text>,
    pub(super) crl: Option<Spanned<Vec<Text>>>,
    pub(super) crl_expired: Option<Text>,
    pub(super) min_version: Option<Text>,
    pub(super) cipher_suites: Option<Spanned<Vec<Text>>>,
    pub(super) allowed_identities: Option<Spanned<Vec<Text>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    pub(super) address: Option<Text>,
    pub(super) accept: Option<Text>,
    pub(super) allow: Option<Spanned<Vec<Text>>>,
    pub(super) tls: Option<Spanned<RawClientTls>>,
    pub(super) connections: Option<Text>,
    pub(super) connect_timeout: Option<Text>,
    pub(super) ack_timeout: Option<Text>,
    pub(super) keepalive: Option<Spanned<RawKeepalive>>,
    pub(super) max_ack_bytes: Option<Text>,
    pub(super) idle_reconnect: Option<Text>,
    pub(super) idle_reopen: Option<Text>,
    pub(super) send_proxy_protocol: Option<Text>,
    pub(super) transparent_source: Option<Text>,
    pub(super) health_check: Option<Spanned<RawHealthCheck>>,
    pub(super) reconnect: Option<Spanned<RawReconnect>>,
    pub(super) framing: Option<Spanned<RawFraming>>,
    pub(super) via: Option<Spanned<RawVia>>,
    pub(super) local_address: Option<Text>,
    pub(super) socket: Option<Spanned<RawSocket>>,
}

/// `socket:` of a route (sender side) or of its upstream (receiver side).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSocket {
    pub(super) send_buffer: Option<Text>,
    pub(super) receive_buffer: Option<Text>,
    pub(super) linger: Option<Text>,
    pub(super) nodelay: Option<Text>,
}

/// `via:` of an upstream.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVia {
    pub(super) socks5: Option<Text>,
    pub(super) http_connect: Option<Text>,
    pub(super) username: Option<Text>,
    pub(super) password_file: Option<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClientTls {
    pub(super) ca: Text,
    pub(super) server_name: Option<Text>,
    pub(super) cert: Option<Text>,
    pub(super) key: Option<Text>,
    pub(super) password_file: Option<Text>,
    pub(super) crl: Option<Spanned<Vec<Text>>>,
    pub(super) crl_expired: Option<Text>,
    pub(super) min_version: Option<Text>,
    pub(super) cipher_suites: Option<Spanned<Vec<Text>>>,
    pub(super) allowed_identities: Option<Spanned<Vec<Text>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKeepalive {
    pub(super) time: Option<Text>,
    pub(super) interval: Option<Text>,
    pub(super) retries: Option<Text>,
    pub(super) user_timeout: Option<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReconnect {
    pub(super) initial: Option<Text>,
    pub(super) max: Option<Text>,
}

/// `proxy_protocol:` as written: the block `{ accept, from }`, or a bare word (`v1`, `v2`), which
/// the validator refuses with a message that says what to write instead.
pub(super) enum RawProxyProtocol {
    Word(String),
    Block(RawProxyBlock),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProxyBlock {
    pub(super) accept: Option<Text>,
    pub(super) from: Option<Spanned<Vec<Text>>>,
}

impl<'de> Deserialize<'de> for RawProxyProtocol {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ProxyVisitor;
        impl<'de> Visitor<'de> for ProxyVisitor {
            type Value = RawProxyProtocol;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map { accept: v1 | v2 | any, from: [<balancer CIDRs>] }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawProxyProtocol, E> {
                Ok(RawProxyProtocol::Word(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawProxyProtocol, A::Error> {
                RawProxyBlock::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawProxyProtocol::Block)
            }
        }
        deserializer.deserialize_any(ProxyVisitor)
    }
}

/// `framing:` of a route (sender side) or of its upstream (receiver side); every key optional,
/// defaulting to standard MLLP release 1.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFraming {
    pub(super) start: Option<Text>,
    pub(super) end: Option<Spanned<Vec<Text>>>,
    pub(super) release: Option<Text>,
    pub(super) commit_timeout: Option<Text>,
}

// ---------------------------------------------------------------------------------------------
// Firewall keys: a route's `rules:` and `limits:`, the top-level `upstreams:`
// ---------------------------------------------------------------------------------------------

/// `rules:` as written: an inline list, or the path of a YAML file holding the list.
pub(super) enum RawRules {
    Inline(Vec<Spanned<RawRule>>),
    File(String),
}

impl<'de> Deserialize<'de> for RawRules {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RulesVisitor;
        impl<'de> Visitor<'de> for RulesVisitor {
            type Value = RawRules;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of rules or the path of a rules file")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawRules, E> {
                Ok(RawRules::File(v.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawRules, A::Error> {
                let mut rules = Vec::new();
                while let Some(rule) = seq.next_element()? {
                    rules.push(rule);
                }
                Ok(RawRules::Inline(rules))
            }
        }
        deserializer.deserialize_any(RulesVisitor)
    }
}

/// A rules file: the list alone.
pub(super) type RawRuleList = Vec<Spanned<RawRule>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRule {
    pub(super) name: Text,
    #[serde(rename = "match")]
    pub(super) matcher: Option<Spanned<RawMatch>>,
    pub(super) action: Spanned<RawAction>,
}

pub(super) type List = Option<Spanned<Vec<Text>>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMatch {
    pub(super) source: List,
    pub(super) tls_identity: List,
    pub(super) sending_application: List,
    pub(super) sending_facility: List,
    pub(super) receiving_application: List,
    pub(super) receiving_facility: List,
    pub(super) message_type: List,
    pub(super) version: List,
    pub(super) processing_id: List,
}

/// The one key of an `action` map; any other is refused while the key is read, so that the
/// error's YAML path names it.
struct RouteKey;

impl<'de> Deserialize<'de> for RouteKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = RouteKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`route`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RouteKey, E> {
                match v {
                    "route" => Ok(RouteKey),
                    _ => Err(de::Error::unknown_field(v, &["route"])),
                }
            }
        }
        deserializer.deserialize_identifier(KeyVisitor)
    }
}

/// `action:` as written: a word (`allow`, `reject`, `drop`) or `{ route: <upstream name> }`.
pub(super) enum RawAction {
    Word(String),
    Route(Text),
}

impl<'de> Deserialize<'de> for RawAction {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ActionVisitor;
        impl<'de> Visitor<'de> for ActionVisitor {
            type Value = RawAction;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("allow, reject, drop or a map { route: <upstream name> }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawAction, E> {
                Ok(RawAction::Word(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawAction, A::Error> {
                let mut target = None;
                while map.next_key::<RouteKey>()?.is_some() {
                    if target.is_some() {
                        return Err(de::Error::duplicate_field("route"));
                    }
                    target = Some(map.next_value::<Text>()?);
                }
                target
                    .map(RawAction::Route)
                    .ok_or_else(|| de::Error::missing_field("route"))
            }
        }
        deserializer.deserialize_any(ActionVisitor)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub(super) messages_per_second: Option<Text>,
    pub(super) burst: Option<Text>,
    pub(super) bytes_per_second: Option<Text>,
    pub(super) connections_per_minute: Option<Text>,
    pub(super) max_connections_per_source: Option<Text>,
    pub(super) on_limit: Option<Text>,
    pub(super) handshake_timeout: Option<Text>,
    pub(super) max_tracked_sources: Option<Text>,
}

/// `upstreams:` as written, in file order, each name with its position.
pub(super) struct RawUpstreams(pub(super) Vec<(String, Spanned<RawUpstream>)>);

impl<'de> Deserialize<'de> for RawUpstreams {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct UpstreamsVisitor;
        impl<'de> Visitor<'de> for UpstreamsVisitor {
            type Value = RawUpstreams;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map from upstream names to upstream blocks")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawUpstreams, A::Error> {
                let mut entries = Vec::new();
                while let Some(name) = map.next_key::<String>()? {
                    entries.push((name, map.next_value()?));
                }
                Ok(RawUpstreams(entries))
            }
        }
        deserializer.deserialize_map(UpstreamsVisitor)
    }
}
