//! Rules: HL7-aware matching on the sender and the message header, and the decision that follows.
//!
//! # What this module owns
//! - The value patterns of the `rules:` contract: [`Pattern`] (exact, or with `*` wildcards),
//!   [`MessageTypePattern`] (`TYPE^TRIGGER` on MSH-9), peer networks for `source`.
//! - [`RuleMatch`], [`Rule`] and [`Action`], built by [`crate::config`] from the YAML.
//! - [`evaluate`]: the first rule whose match holds decides; a list with no matching rule (or no
//!   rules at all) allows the message. A security policy that wants "deny unless allowed" ends its
//!   list with a catch-all rule without `match` (`- { name: default, action: reject }`).
//! - [`fuzz_rules`], the library side of the `rules` fuzz target.
//!
//! # What it must not know
//! Pure: no I/O, no clock, no allocation when evaluating. It does not know sockets, TLS sessions
//! (the caller passes the peer certificate's identities as strings), ack bytes or reason texts
//! (the session turns a [`Decision`] into an AR ack, a closed connection or another upstream),
//! nor where an upstream named by [`Action::Route`] is (the config checked that it exists).
//!
//! # Matching, field by field
//! Every field of a [`RuleMatch`] is optional; all the fields present must hold (AND), and a field
//! holds when any of its entries matches (OR).
//!
//! | key | what it is matched against |
//! |---|---|
//! | `source` | the peer IP address (IPv4-mapped IPv6 peers as the IPv4 address they carry) |
//! | `tls_identity` | any identity of the peer certificate (SAN DNS names and URIs, or CN); a peer without a certificate never matches |
//! | `sending_application` .. `receiving_facility` | the first component of MSH-3 .. MSH-6 |
//! | `message_type` | MSH-9 split on the message's own component separator: code, trigger (and structure) |
//! | `version` | the first component of MSH-12 |
//! | `processing_id` | the first component of MSH-11 |
//!
//! Components are split on the message's component separator (MSH-2's first character), so
//! messages with a `#` field separator or custom encoding characters match like any other.
//! Values are compared the way the most lenient receiver reads them: after HL7 unescaping
//! (`L\X41\B` is `LAB`), with ASCII letters in either case (`t` is `T`), and a field written
//! with repetitions (`LAB~OTHER`) matches when any repetition does. (MSH-9, MSH-11 and MSH-12
//! with a repetition, an escape or blanks never reach the rules: the session refuses them.)
//! `tls_identity` patterns compare as written.
//!
//! # Wildcards
//! In a value [`Pattern`], `*` stands for any run of bytes, including none: `2.5*` matches `2.5`
//! and `2.5.1`, `*` matches every value (an empty field too). In a `tls_identity` pattern the
//! wildcard follows TLS certificate rules instead: `*.example.org` stands for exactly one
//! non-empty label, so it matches `lab.example.org` but neither `example.org` nor
//! `a.lab.example.org`; a lone `*` matches any identity (but still requires a certificate); `*`
//! anywhere else is refused when the config is read.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::wire::hl7::{unescaped, Header};

// ---------------------------------------------------------------------------------------------
// Patterns
// ---------------------------------------------------------------------------------------------

/// A value pattern: exact (byte for byte, case-sensitive, like HL7), or with `*` wildcards
/// (`*.example.org`, `2.5*`, `*`).
///
/// See the module doc for the two wildcard flavours: [`Pattern::parse`] (a `*` is any run of
/// bytes) and [`Pattern::parse_identity`] (a leading `*.` is one DNS label).
#[derive(Clone, PartialEq, Eq)]
pub struct Pattern {
    /// As written in the config (shown by `Debug` and `Display`).
    text: Box<str>,
    kind: PatternKind,
    /// Value patterns compare ASCII letters without regard to case (a receiver that upper-cases
    /// coded values reads `t` as `T`); identity patterns as written.
    fold_case: bool,
}

#[derive(Clone, PartialEq, Eq)]
enum PatternKind {
    /// No wildcard: the value must equal these bytes.
    Exact,
    /// The literal runs between the `*`s, in order: `a*b*c` is `[a, b, c]`, `*x` is `["", x]`.
    /// At least two parts (one `*`); consecutive `*`s are merged.
    Glob(Box<[Box<[u8]>]>),
    /// `*.suffix`: one non-empty label without a dot, then `.suffix` (stored with its dot).
    OneLabel(Box<[u8]>),
}

impl Pattern {
    /// Parses a value pattern: any text without control characters; each `*` stands for any run
    /// of bytes (including none). The empty string matches only an empty value.
    ///
    /// # Errors
    /// A message (without the YAML location) when the text holds a control character.
    pub fn parse(s: &str) -> Result<Pattern, String> {
        check_no_controls(s)?;
        let kind = if s.contains('*') {
            // `a**b` is `a*b`: empty runs between two stars are dropped; the first and last
            // runs stay (possibly empty) as they anchor at the ends.
            let runs: Vec<&str> = s.split('*').collect();
            let last = runs.len() - 1;
            let parts: Vec<Box<[u8]>> = runs
                .iter()
                .enumerate()
                .filter(|&(i, run)| i == 0 || i == last || !run.is_empty())
                .map(|(_, run)| run.as_bytes().into())
                .collect();
            PatternKind::Glob(parts.into_boxed_slice())
        } else {
            PatternKind::Exact
        };
        Ok(Pattern {
            text: s.into(),
            kind,
            fold_case: true,
        })
    }

    /// Parses a `tls_identity` pattern: an exact identity (`lab.example.org`,
    /// `spiffe://example.org/lab`, a CN), `*.` followed by a domain (`*.example.org`: exactly one
    /// label in place of the `*`), or a lone `*` (any identity).
    ///
    /// # Errors
    /// A message when the text is empty, holds a control character, or has a `*` anywhere else.
    pub fn parse_identity(s: &str) -> Result<Pattern, String> {
        check_no_controls(s)?;
        // RFC 6125: a DNS identity compares case-insensitively and without a trailing dot; a
        // URI (written `uri:...`) as written, and only against URI SANs.
        let normalised;
        let s = if s.starts_with("uri:") {
            s
        } else {
            let lower = s.to_ascii_lowercase();
            normalised = match lower.strip_suffix('.') {
                Some(name) if !name.is_empty() && !name.ends_with(['*', '.']) => name.to_string(),
                _ => lower,
            };
            normalised.as_str()
        };
        if s.is_empty() {
            return Err(
                "an empty identity matches no certificate; write e.g. lab.example.org or *.example.org"
                    .to_string(),
            );
        }
        if s == "*" {
            return Ok(Pattern {
                fold_case: false,
                ..Pattern::parse(s)?
            });
        }
        let kind = match s.strip_prefix("*.") {
            Some(domain) if !domain.contains('*') && !domain.is_empty() && !domain.starts_with('.') => {
                PatternKind::OneLabel(s.as_bytes()[1..].into())
            }
            _ if s.contains('*') => {
                return Err(format!(
                    "\"{s}\": in a TLS identity `*` may only stand for the whole first label (\"*.example.org\") or for any identity (\"*\")"
                ))
            }
            _ => PatternKind::Exact,
        };
        Ok(Pattern {
            text: s.into(),
            kind,
            fold_case: false,
        })
    }

    /// Whether `v` matches.
    pub fn matches(&self, v: &[u8]) -> bool {
        let eq = if self.fold_case {
            <[u8]>::eq_ignore_ascii_case
        } else {
            <[u8] as PartialEq>::eq
        };
        match &self.kind {
            PatternKind::Exact => eq(v, self.text.as_bytes()),
            PatternKind::Glob(parts) => glob_matches(parts, v, eq),
            PatternKind::OneLabel(suffix) => v.strip_suffix(&suffix[..]).is_some_and(|label| {
                !label.is_empty() && !label.contains(&b'.') && !label.contains(&b':')
            }),
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether it has no wildcard.
    pub fn is_exact(&self) -> bool {
        matches!(self.kind, PatternKind::Exact)
    }
}

fn check_no_controls(s: &str) -> Result<(), String> {
    if s.chars().any(char::is_control) {
        return Err(format!(
            "\"{}\" contains a control character; header values never hold one",
            s.escape_default()
        ));
    }
    Ok(())
}

/// `*`-only glob: the first part anchors at the start, the last at the end, the middle ones are
/// found left to right in what is between (leftmost is always right when `*` is the only
/// wildcard). No allocation, no backtracking.
fn glob_matches(parts: &[Box<[u8]>], v: &[u8], eq: fn(&[u8], &[u8]) -> bool) -> bool {
    let (Some(first), Some(last)) = (parts.first(), parts.last()) else {
        return false;
    };
    if v.len() < first.len() + last.len()
        || !eq(&v[..first.len()], first)
        || !eq(&v[v.len() - last.len()..], last)
    {
        return false;
    }
    let mut rest = &v[first.len()..v.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.windows(part.len()).position(|w| eq(w, part)) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.text, f)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// An MSH-9 pattern `TYPE^TRIGGER` (`ORU^R01`, `ORM^*`, `ADT`), each component a [`Pattern`].
///
/// A one-component pattern matches any trigger; a third component, when given, matches the
/// message structure (MSH-9.3, e.g. `ADT^A04^ADT_A01`). The pattern is always written with `^`;
/// the message is split on its own component separator, so `ADT^A08` matches `ADT:A08` in a
/// message whose encoding characters are `:@$%`.
#[derive(Clone, PartialEq, Eq)]
pub struct MessageTypePattern {
    text: Box<str>,
    code: Pattern,
    trigger: Option<Pattern>,
    structure: Option<Pattern>,
}

impl MessageTypePattern {
    /// Parses `CODE`, `CODE^TRIGGER` or `CODE^TRIGGER^STRUCTURE`.
    ///
    /// # Errors
    /// A message when a component is empty, there are more than three, or a component holds a
    /// control character.
    pub fn parse(s: &str) -> Result<MessageTypePattern, String> {
        let mut components = s.split('^');
        let mut next = || -> Result<Option<Pattern>, String> {
            match components.next() {
                None => Ok(None),
                Some("") => Err(format!(
                    "\"{s}\" has an empty component; write TYPE^TRIGGER with `*` for any, e.g. ORU^R01, ORM^* or ADT"
                )),
                Some(c) => Pattern::parse(c).map(Some),
            }
        };
        let code = next()?.ok_or_else(|| {
            "an empty message type matches nothing; write e.g. ORU^R01, ORM^* or ADT".to_string()
        })?;
        let trigger = next()?;
        let structure = next()?;
        if next()?.is_some() {
            return Err(format!(
                "\"{s}\" has more than three components; write TYPE^TRIGGER (or TYPE^TRIGGER^STRUCTURE), e.g. ORU^R01"
            ));
        }
        Ok(MessageTypePattern {
            text: s.into(),
            code,
            trigger,
            structure,
        })
    }

    /// Whether MSH-9 of this header matches (split on its component separator).
    pub fn matches(&self, header: &Header<'_>) -> bool {
        self.matches_field(header.message_type(), header.component_separator())
    }

    /// Whether an MSH-9 value, split on `component_separator`, matches. A missing component
    /// reads as empty (so `ORM^*` matches a bare `ORM`, `ORM^O01` does not).
    pub fn matches_field(&self, msh9: &[u8], component_separator: u8) -> bool {
        let mut components = msh9.split(|&b| b == component_separator);
        let mut next = || components.next().unwrap_or_default();
        self.code.matches(next())
            && self.trigger.as_ref().is_none_or(|p| p.matches(next()))
            && self.structure.as_ref().is_none_or(|p| p.matches(next()))
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Debug for MessageTypePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.text, f)
    }
}

impl fmt::Display for MessageTypePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Parses a `source` entry: a CIDR (`10.20.0.0/16`, host bits ignored) or a bare IP address (a
/// host network). An IPv4-mapped IPv6 network (`::ffff:10.0.0.0/104`) is stored as the IPv4
/// network it covers, as peers are matched in that form.
///
/// # Errors
/// A message naming the entry when it is neither.
pub fn parse_network(s: &str) -> Result<IpNet, String> {
    let t = s.trim();
    let net = match t.parse::<IpNet>() {
        Ok(net) => net.trunc(),
        Err(_) => match t.parse::<IpAddr>() {
            Ok(ip) => IpNet::from(ip),
            Err(_) => {
                return Err(format!(
                    "\"{s}\" is not an IP address or CIDR (write e.g. 10.20.0.0/16, 192.0.2.7 or \"2001:db8::/32\")"
                ))
            }
        },
    };
    Ok(canonical_network(net))
}

fn canonical_network(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.network().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
                .map(IpNet::V4)
                .unwrap_or(net),
            None => net,
        },
        _ => net,
    }
}

// ---------------------------------------------------------------------------------------------
// Rules
// ---------------------------------------------------------------------------------------------

/// What a rule looks at. All fields are optional; every present field must match (AND); within a
/// field any entry may match (OR). `Default` (no field) matches every message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleMatch {
    /// `source`: the peer address lies in one of these networks.
    pub source: Option<Vec<IpNet>>,
    /// `tls_identity`: one of the peer certificate's identities matches one of these (built
    /// with [`Pattern::parse_identity`]). Never matches a peer without a certificate.
    pub tls_identity: Option<Vec<Pattern>>,
    /// `sending_application`: MSH-3, first component.
    pub sending_application: Option<Vec<Pattern>>,
    /// `sending_facility`: MSH-4, first component.
    pub sending_facility: Option<Vec<Pattern>>,
    /// `receiving_application`: MSH-5, first component.
    pub receiving_application: Option<Vec<Pattern>>,
    /// `receiving_facility`: MSH-6, first component.
    pub receiving_facility: Option<Vec<Pattern>>,
    /// `message_type`: MSH-9.
    pub message_type: Option<Vec<MessageTypePattern>>,
    /// `version`: MSH-12, first component.
    pub version: Option<Vec<Pattern>>,
    /// `processing_id`: MSH-11, first component (`P`, `T`, `D`).
    pub processing_id: Option<Vec<Pattern>>,
}

/// The first component of a field, split on the header's component separator.
fn first_component<'a>(field: &'a [u8], header: &Header<'_>) -> &'a [u8] {
    let sep = header.component_separator();
    field.split(|&b| b == sep).next().unwrap_or_default()
}

/// `None` holds; `Some(list)` holds when any entry does.
fn any<T>(list: &Option<Vec<T>>, matches: impl Fn(&T) -> bool) -> bool {
    list.as_ref().is_none_or(|list| list.iter().any(matches))
}

impl RuleMatch {
    /// Whether every present field matches these facts. Header fields are only looked up for
    /// the fields present.
    pub fn matches(&self, facts: &Facts<'_>) -> bool {
        let h = facts.header;
        any(&self.source, |net| net.contains(&facts.peer.to_canonical()))
            && any(&self.tls_identity, |p| {
                facts.identities.iter().any(|id| p.matches(id.as_bytes()))
            })
            && first_component_matches(&self.processing_id, h, || h.processing_id())
            && any(&self.message_type, |p| p.matches(h))
            && first_component_matches(&self.sending_application, h, || h.sending_application())
            && first_component_matches(&self.sending_facility, h, || h.sending_facility())
            && first_component_matches(&self.receiving_application, h, || h.receiving_application())
            && first_component_matches(&self.receiving_facility, h, || h.receiving_facility())
            && first_component_matches(&self.version, h, || h.version())
    }
}

/// `None` holds; `Some(list)` holds when an entry matches the first component of any repetition
/// of the field `get` returns (called only then), as a parser reads it (unescaped).
fn first_component_matches<'h>(
    list: &Option<Vec<Pattern>>,
    header: &Header<'h>,
    get: impl FnOnce() -> &'h [u8],
) -> bool {
    match list {
        None => true,
        Some(list) => get()
            .split(|&b| b == header.repetition_separator())
            .any(|repetition| {
                let v = unescaped(first_component(repetition, header), header);
                list.iter().any(|p| p.matches(&v))
            }),
    }
}

/// What a matching rule does with the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// `allow`: deliver it to the route's upstream.
    Allow,
    /// `reject`: answer AR with the reason; the connection stays open.
    Reject,
    /// `drop`: close the sender's connection without an answer.
    Drop,
    /// `route: <name>`: deliver it to this upstream of the top-level `upstreams:` instead.
    Route(String),
}

/// One entry of a route's `rules:`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// `name`: unique within the route; shown in logs, metrics and reject reasons.
    pub name: String,
    /// `match`: what the rule looks at (`Default` when the key is absent: every message).
    pub matcher: RuleMatch,
    /// `action`.
    pub action: Action,
}

impl Rule {
    /// Whether the rule's match holds for these facts.
    pub fn matches(&self, facts: &Facts<'_>) -> bool {
        self.matcher.matches(facts)
    }
}

/// What is known about one message when the rules run.
#[derive(Clone, Copy, Debug)]
pub struct Facts<'a> {
    /// The sender's address (an IPv4-mapped IPv6 address is fine: it is canonicalized).
    pub peer: IpAddr,
    /// The identities of the sender's TLS client certificate (SAN DNS names and URIs, or the CN
    /// when it has no SAN); empty without TLS or without a client certificate.
    pub identities: &'a [String],
    /// The message's header.
    pub header: &'a Header<'a>,
}

/// The outcome of [`evaluate`], borrowing names from the rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision<'r> {
    /// Deliver to the route's upstream: `rule` allowed it, or (`None`) no rule matched.
    Allow {
        /// The matching rule, `None` when no rule matched (or there are none).
        rule: Option<&'r str>,
    },
    /// Answer AR; the connection stays open.
    Reject {
        /// The matching rule.
        rule: &'r str,
    },
    /// Close the connection without an answer.
    Drop {
        /// The matching rule.
        rule: &'r str,
    },
    /// Deliver to the named upstream instead of the route's own.
    Route {
        /// The matching rule.
        rule: &'r str,
        /// A key of the config's `upstreams:`.
        upstream: &'r str,
    },
}

impl<'r> Decision<'r> {
    /// The name of the rule that decided, `None` when no rule matched.
    pub fn rule(&self) -> Option<&'r str> {
        match *self {
            Decision::Allow { rule } => rule,
            Decision::Reject { rule } | Decision::Drop { rule } | Decision::Route { rule, .. } => {
                Some(rule)
            }
        }
    }
}

/// For logs: `allow (no rule matched)`, `reject (rule "default")`, `route to "lab-b" (rule "x")`.
impl fmt::Display for Decision<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Allow { rule: None } => f.write_str("allow (no rule matched)"),
            Decision::Allow { rule: Some(rule) } => write!(f, "allow (rule {rule:?})"),
            Decision::Reject { rule } => write!(f, "reject (rule {rule:?})"),
            Decision::Drop { rule } => write!(f, "drop (rule {rule:?})"),
            Decision::Route { rule, upstream } => {
                write!(f, "route to {upstream:?} (rule {rule:?})")
            }
        }
    }
}

/// Runs the rules in order: the first rule that matches decides. No matching rule, or no rules,
/// allows the message (the route's allowlist already admitted the sender). Allocation-free.
pub fn evaluate<'r>(rules: &'r [Rule], facts: &Facts<'_>) -> Decision<'r> {
    let Some(rule) = rules.iter().find(|r| r.matches(facts)) else {
        return Decision::Allow { rule: None };
    };
    let name = rule.name.as_str();
    match &rule.action {
        Action::Allow => Decision::Allow { rule: Some(name) },
        Action::Reject => Decision::Reject { rule: name },
        Action::Drop => Decision::Drop { rule: name },
        Action::Route(upstream) => Decision::Route {
            rule: name,
            upstream,
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Fuzzing
// ---------------------------------------------------------------------------------------------

/// A fixed rule set touching every field and wildcard flavour (the example and more).
fn fuzz_rule_set() -> Vec<Rule> {
    let pats = |list: &[&str]| {
        Some(
            list.iter()
                .map(|s| Pattern::parse(s).expect("a fixed pattern parses"))
                .collect(),
        )
    };
    let ids = |list: &[&str]| {
        Some(
            list.iter()
                .map(|s| Pattern::parse_identity(s).expect("a fixed pattern parses"))
                .collect(),
        )
    };
    let types = |list: &[&str]| {
        Some(
            list.iter()
                .map(|s| MessageTypePattern::parse(s).expect("a fixed pattern parses"))
                .collect(),
        )
    };
    let nets = |list: &[&str]| {
        Some(
            list.iter()
                .map(|s| parse_network(s).expect("a fixed network parses"))
                .collect(),
        )
    };
    let rule = |name: &str, matcher: RuleMatch, action: Action| Rule {
        name: name.into(),
        matcher,
        action,
    };
    vec![
        rule(
            "no-test",
            RuleMatch {
                processing_id: pats(&["T", "D"]),
                ..RuleMatch::default()
            },
            Action::Reject,
        ),
        rule(
            "lab",
            RuleMatch {
                source: nets(&["10.20.0.0/16", "::ffff:127.0.0.0/104", "2001:db8::/32"]),
                tls_identity: ids(&["lab.example.org", "*.example.org"]),
                sending_application: pats(&["LIS", "*LAB*"]),
                message_type: types(&["ORU^R01", "ORM^*", "*^*^ORU_R01"]),
                version: pats(&["2.3", "2.5*"]),
                ..RuleMatch::default()
            },
            Action::Allow,
        ),
        rule(
            "adt",
            RuleMatch {
                sending_facility: pats(&["REG*", "*"]),
                receiving_application: pats(&["*EHR", "A*B*C"]),
                receiving_facility: pats(&[""]),
                message_type: types(&["ADT"]),
                ..RuleMatch::default()
            },
            Action::Route("adt".into()),
        ),
        rule(
            "any-cert",
            RuleMatch {
                tls_identity: ids(&["*"]),
                ..RuleMatch::default()
            },
            Action::Drop,
        ),
        rule("default", RuleMatch::default(), Action::Reject),
    ]
}

/// Reference glob (dynamic programming) that the fast [`glob_matches`] must agree with.
fn glob_oracle(pattern: &[u8], v: &[u8]) -> bool {
    // m[j] = pattern[..i] matches v[..j]
    let mut m = vec![false; v.len() + 1];
    m[0] = true;
    for &p in pattern {
        if p == b'*' {
            for j in 1..=v.len() {
                m[j] = m[j] || m[j - 1];
            }
        } else {
            for j in (1..=v.len()).rev() {
                m[j] = m[j - 1] && v[j - 1] == p;
            }
            m[0] = false;
        }
    }
    m[v.len()]
}

/// Fuzz entry (the `rules` fuzz target calls this). Never panics on any input; asserts:
/// - when `data` parses as a header, [`evaluate`] with a fixed rule set and a peer address and
///   certificate identities derived from `data` returns the decision of the first rule whose
///   match holds (checked rule by rule), and the same decision twice;
/// - a pattern made from the first line of `data` matches the second line exactly when a
///   reference matcher says so (plain and identity flavours), and message type patterns parse
///   or fail without panicking.
pub fn fuzz_rules(data: &[u8]) {
    static RULES: std::sync::LazyLock<Vec<Rule>> = std::sync::LazyLock::new(fuzz_rule_set);
    let rules = &RULES[..];

    if let Ok(header) = Header::parse(data) {
        let b = |i: usize| data.get(i).copied().unwrap_or(0);
        let peer = match b(0) % 3 {
            0 => IpAddr::from([10, 20, b(1), b(2)]),
            1 => IpAddr::from(std::net::Ipv4Addr::new(127, 0, b(1), b(2)).to_ipv6_mapped()),
            _ => IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, u16::from(b(1)), u16::from(b(2))]),
        };
        // Identities: the first component of MSH-8 (security), split on the repetition char.
        let identities: Vec<String> = header
            .field(8)
            .split(|&c| Some(&c) == header.encoding_characters().get(1))
            .take(4)
            .map(|id| String::from_utf8_lossy(id).into_owned())
            .filter(|id| !id.is_empty())
            .collect();
        let facts = Facts {
            peer,
            identities: &identities,
            header: &header,
        };
        let decision = evaluate(rules, &facts);
        assert_eq!(
            decision,
            evaluate(rules, &facts),
            "evaluate is deterministic"
        );
        let first = rules.iter().position(|r| r.matches(&facts));
        assert_eq!(decision.rule(), first.map(|i| rules[i].name.as_str()));
        // The catch-all rule always matches, so some rule decides.
        assert!(first.is_some());
        let _ = decision.to_string();
    }

    let mut lines = data.split(|&c| c == b'\n');
    let (Some(pattern), Some(value)) = (lines.next(), lines.next()) else {
        return;
    };
    let (pattern, value) = (
        &pattern[..pattern.len().min(64)],
        &value[..value.len().min(256)],
    );
    let Ok(text) = std::str::from_utf8(pattern) else {
        return;
    };
    if let Ok(p) = Pattern::parse(text) {
        // Header patterns compare without regard to ASCII case.
        let expected = glob_oracle(&pattern.to_ascii_lowercase(), &value.to_ascii_lowercase());
        assert_eq!(p.matches(value), expected, "{text:?}");
        assert_eq!(p.as_str(), text);
    }
    if let Ok(p) = Pattern::parse_identity(text) {
        // RFC 6125: a DNS identity is written case-insensitively and may end in a dot; the
        // value it meets is already normalised (lower case, no trailing dot). A `uri:` identity
        // compares as written.
        let normalised = if text.starts_with("uri:") {
            text.to_string()
        } else {
            let lower = text.to_ascii_lowercase();
            match lower.strip_suffix('.') {
                Some(name) if !name.is_empty() && !name.ends_with(['*', '.']) => name.to_string(),
                _ => lower,
            }
        };
        let expected = match normalised.strip_prefix('*') {
            Some(domain) if domain.starts_with('.') => {
                value.strip_suffix(domain.as_bytes()).is_some_and(|label| {
                    !label.is_empty() && !label.contains(&b'.') && !label.contains(&b':')
                })
            }
            Some("") => true,
            _ => value == normalised.as_bytes(),
        };
        assert_eq!(p.matches(value), expected, "{text:?}");
    }
    if let Ok(p) = MessageTypePattern::parse(text) {
        let _ = p.matches_field(value, b'^');
    }
}

#[cfg(test)]
mod tests;
