//! The raw layer: serde mirrors (`Raw*`) of the YAML file, and [`parse_raw`], which turns the
//! first syntax or shape error into a [`ConfigError`].
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

use super::error::{position, serde_message, yaml_path_of, ConfigError, ConfigErrors};

/// A scalar as written, with its position. Numbers stay text so every value is parsed (and
/// every error worded) by this module.
pub(super) type Text = Spanned<String>;

/// Deserializes the raw tree, turning the first syntax or shape error into a [`ConfigError`].
pub(super) fn parse_raw<T: de::DeserializeOwned>(
    text: &str,
    file: &Path,
) -> Result<T, ConfigErrors> {
    let mut path = String::new();
    let result = serde_saphyr::with_deserializer_from_str(text, |de| {
        serde_path_to_error::deserialize::<_, T>(de).map_err(|e| {
            path = yaml_path_of(e.path());
            e.into_inner()
        })
    });
    result.map_err(|err| {
        let err = err.without_snippet();
        let (line, column) = err.location().as_ref().map_or((None, None), position);
        ConfigErrors(vec![ConfigError {
            file: file.to_path_buf(),
            message: serde_message(err, &path),
            yaml_path: path,
            line,
            column,
        }])
    })
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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) listen: Text,
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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawQueue {
    pub(super) max_bytes: Option<Text>,
    pub(super) max_messages: Option<Text>,
    pub(super) segment_bytes: Option<Text>,
    pub(super) backend: Option<Text>,
    pub(super) jetstream: Option<Spanned<RawJetStream>>,
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
    pub(super) reconnect: Option<Spanned<RawReconnect>>,
    pub(super) framing: Option<Spanned<RawFraming>>,
    pub(super) via: Option<Spanned<RawVia>>,
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
