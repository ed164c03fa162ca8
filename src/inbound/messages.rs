//! Every message of one frame, read and judged before anything of it goes on: its header read
//! the one way every receiver reads it, a second message outside a batch (`multiple_messages`),
//! and the messages of a batch (`batches`), each matched by the rules, counted by the limits and
//! written to the audit trail by its own control id; and who a refusal of the frame answers.
//!
//! Owns the decision that a frame is refused because of one of its messages, and the ack that
//! says so (naming the batch in MSA-2 and the first refused message in ERR). Must not know how a
//! frame is delivered or written back: the session hands the frame on and writes the answer.

use std::time::Instant;

use bytes::Bytes;

use crate::config::{Batches, MultipleMessages, OnLimit};
use crate::firewall::rules::{self, Decision, Facts, Rule};
use crate::ops::audit;
use crate::outcome::{Answer, Failure, Side};
use crate::route::{Peer, RouteContext};
use crate::wire::ack::{code_for, own_ack_for, ErrorCode, Says};
use crate::wire::hl7::{self, AckCode, Ambiguity, Header, HeaderKind, Printable};

/// Who the guard's own ack for a frame answers: the message's MSH, or a batch's BHS (its FHS
/// without one) with the batch's first message giving the version, processing id, trigger and
/// character set. Nothing (no readable header): the headerless ack.
#[derive(Clone, Copy, Default)]
pub(super) struct Acking<'p> {
    answered: Option<Header<'p>>,
    message: Option<Header<'p>>,
}

impl<'p> Acking<'p> {
    /// For a frame whose payload (after any leading bytes) is `payload` and whose first header
    /// is `header`.
    pub(super) fn of(payload: &'p [u8], header: Option<Header<'p>>) -> Acking<'p> {
        match header {
            Some(h) if h.kind() != HeaderKind::Msh => Acking {
                answered: hl7::batch_header(payload).or(Some(h)),
                message: hl7::later_messages(payload)
                    .next()
                    .and_then(|m| Header::parse(m).ok()),
            },
            answered => Acking {
                answered,
                message: None,
            },
        }
    }

    /// The ack saying `says`, and the code it carries.
    pub(super) fn ack(&self, says: Says<'_>) -> (Bytes, AckCode) {
        own_ack_for(self.answered.as_ref(), self.message.as_ref(), says)
    }

    /// The code an ack with `code` carries ([`code_for`]: commit codes in enhanced mode).
    pub(super) fn code(&self, code: AckCode) -> AckCode {
        let model = match self.answered {
            Some(h) if h.kind() == HeaderKind::Msh => Some(h),
            _ => self.message,
        };
        code_for(model.as_ref(), code)
    }

    /// A refusal answer built from [`Acking::ack`].
    pub(super) fn refused(&self, says: Says<'_>, outcome: &'static str) -> Answer {
        let (ack, code) = self.ack(says);
        Answer::refused(ack, code, outcome)
    }
}

/// The audit line of a frame from the sender that the guard answers or drops itself without
/// delivering it (an oversize frame, a release-2 copy, a stray ack): `payload` (its head, for
/// an oversize one) gives the header, read past any leading bytes; `bytes` its size.
pub(super) fn audit_undelivered(
    ctx: &RouteContext,
    who: &Peer,
    (payload, bytes): (&[u8], u64),
    outcome: &'static str,
    ack: Option<AckCode>,
    problem: Option<(&'static str, &str)>,
) {
    let payload = &payload[hl7::leading_bytes(payload)..];
    let header = Header::parse(payload).ok();
    audit::record(
        &audit::Entry {
            route: &ctx.metrics,
            direction: "from_sender",
            peer: who.addr,
            proxy: who.proxy,
            identity: who.identity(),
            header: header.as_ref(),
            bytes,
            outcome,
            ack,
            started: Instant::now(),
            rule: None,
            problem,
        },
        payload,
    );
}

/// Why a message is refused for how it is written, before any rule sees it.
pub(super) struct Unreadable<'p> {
    /// The header to answer and audit with; `None` when there is none, or when it holds a
    /// control byte (neither the ack nor the audit line repeats such fields).
    pub(super) header: Option<Header<'p>>,
    pub(super) reason: &'static str,
    pub(super) detail: String,
    pub(super) error: ErrorCode,
}

impl Unreadable<'_> {
    /// What the sender's ack says: a fixed text for a missing header, else the detail (about
    /// the sender's own bytes, never the inside).
    pub(super) fn says(&self) -> Says<'_> {
        match self.reason {
            "no_header" => Says::refused(self.error, "no message header"),
            _ => Says::refused(self.error, &self.detail),
        }
    }
}

/// Reads a message's header the one way every receiver will: a readable header (`no_header`,
/// ERR-3 100), without an ambiguity (`ambiguous_header`: a line feed or a control byte inside
/// it, ERR-3 102), whose coded values MSH-9, MSH-11 and MSH-12 lenient receivers read alike
/// (`malformed_header`, ERR-3 102). Used for the first message of a frame and every later one.
pub(super) fn read_header(payload: &[u8]) -> Result<Header<'_>, Unreadable<'_>> {
    let header = Header::parse(payload).map_err(|err| Unreadable {
        header: None,
        reason: "no_header",
        detail: err.to_string(),
        error: ErrorCode::SegmentSequence,
    })?;
    if let Some(ambiguity) = hl7::ambiguity(payload) {
        let shown = match ambiguity {
            Ambiguity::ControlByte(_) => None,
            Ambiguity::MixedTerminators => Some(header),
        };
        return Err(Unreadable {
            header: shown,
            reason: "ambiguous_header",
            detail: ambiguity.to_string(),
            error: ErrorCode::DataType,
        });
    }
    if let Some(malformed) = header.malformed_coded_value() {
        return Err(Unreadable {
            header: Some(header),
            reason: "malformed_header",
            detail: malformed.to_string(),
            error: ErrorCode::DataType,
        });
    }
    Ok(header)
}

/// The table 0357 error of a rule's reject: what the rule looks at in the header (message type
/// 200, processing id 202, version 203); 207 for a rule on anything else (source, identity,
/// applications), whose reason no code of the table names.
pub(super) fn rule_error(rules: &[Rule], name: &str) -> ErrorCode {
    match rules.iter().find(|r| r.name == name).map(|r| &r.matcher) {
        Some(m) if m.message_type.is_some() => ErrorCode::UnsupportedMessageType,
        Some(m) if m.processing_id.is_some() => ErrorCode::UnsupportedProcessingId,
        Some(m) if m.version.is_some() => ErrorCode::UnsupportedVersionId,
        _ => ErrorCode::ApplicationInternal,
    }
}

/// A rule decision on one message of a frame, owned (the rule outlives no borrow).
#[derive(PartialEq, Eq)]
enum Judged {
    Reject(String),
    Drop(String),
    /// Allowed: to the route's upstream (`None`) or a named one.
    Goes(Option<String>),
}

/// The audit line writer of a frame: (header, outcome, ack, rule, problem).
pub(super) trait Audit:
    Fn(Option<&Header<'_>>, &'static str, Option<AckCode>, Option<&str>, Option<(&'static str, &str)>)
{
}

impl<F> Audit for F where
    F: Fn(
        Option<&Header<'_>>,
        &'static str,
        Option<AckCode>,
        Option<&str>,
        Option<(&'static str, &str)>,
    )
{
}

/// The messages of a frame other than its first header, judged: for a single message's frame
/// the later MSHs (`multiple_messages`), for a batch every message in it (`batches`). `refuse`
/// answers AR. `inspect`: each message needs a readable, unambiguous header, a place in the
/// per-source rate (each counts as one message) and a rule decision that sends it where the
/// others go; then `Ok` with their headers (for their audit lines, and for a batch the first
/// one's decision is the batch's), else the answer that refuses the whole frame, naming the
/// first refused message. Outside a batch a drop rule closes the connection, as for a single
/// message; in a batch every refusal is answered AR naming the batch (MSA-2 = BHS-11 or FHS-11).
pub(super) async fn judged<'p>(
    ctx: &RouteContext,
    payload: &'p [u8],
    first: &Header<'p>,
    who: &Peer,
    audit: &impl Audit,
) -> Result<Vec<Header<'p>>, Answer> {
    let batch = first.kind() != HeaderKind::Msh;
    let mut later = hl7::later_messages(payload).peekable();
    if later.peek().is_none() && !(batch && ctx.route.batches == Batches::Refuse) {
        return Ok(Vec::new());
    }
    let acking = Acking::of(payload, Some(*first));
    let refuse = |says: Says<'_>, reason: &'static str, detail: &str, rule: Option<&str>| {
        let (ack, code) = acking.ack(says);
        audit(
            Some(first),
            "rejected",
            Some(code),
            rule,
            Some((reason, detail)),
        );
        Answer::refused(ack, code, "rejected")
    };
    let reason = if batch { "batch" } else { "multiple_messages" };
    if batch && ctx.route.batches == Batches::Refuse {
        let detail = "the route refuses batches (batches: refuse)";
        let says = Says::refused(ErrorCode::UnsupportedMessageType, "batches not accepted");
        return Err(refuse(says, reason, detail, None));
    }
    if !batch && ctx.route.multiple_messages == MultipleMessages::Refuse {
        let count = 1 + later.count();
        let detail = format!("{count} messages outside a batch; send one per frame");
        let says = Says::refused(ErrorCode::SegmentSequence, &detail);
        return Err(refuse(says, reason, &detail, None));
    }
    let judge = |header: &Header<'_>| {
        let facts = Facts {
            peer: who.addr.ip(),
            identities: &who.identities,
            header,
        };
        match rules::evaluate(&ctx.route.rules, &facts) {
            Decision::Reject { rule } => Judged::Reject(rule.to_string()),
            Decision::Drop { rule } => Judged::Drop(rule.to_string()),
            Decision::Route { upstream, .. } => Judged::Goes(Some(upstream.to_string())),
            Decision::Allow { .. } => Judged::Goes(None),
        }
    };
    // Where the frame goes: outside a batch the first message decides (its own refusal is
    // answered by the caller, as for any message); in a batch its first message does.
    let mut goes = match (batch, judge(first)) {
        (false, Judged::Goes(to)) => Some(to),
        (false, _) => return Ok(Vec::new()),
        (true, _) => None,
    };
    let (what, first_n) = if batch { ("batch", 1) } else { ("frame", 2) };
    let mut headers = Vec::new();
    for (i, message) in later.enumerate() {
        let n = i + first_n;
        let header = match read_header(message) {
            Ok(header) => header,
            Err(u) => {
                let detail = format!("message {n} of the {what}: {}", u.detail);
                let says = Says::refused(u.error, &detail).at(n, None);
                return Err(refuse(says, reason, &detail, None));
            }
        };
        // Each message counts in the per-source rate (the frame counted once already).
        if n > 1 {
            while let Err(wait) = ctx.limits.check_message(who.addr.ip(), 0) {
                if ctx.limits.on_limit() == OnLimit::Reject {
                    crate::ops::metrics::rate_limited(&ctx.name);
                    let detail =
                        format!("message {n} of the {what}: too many messages from this source");
                    let says = Says::not_now("rate limit").at(n, None);
                    let (ack, code) = acking.ack(says);
                    audit(
                        Some(&header),
                        "rate_limited",
                        Some(code),
                        None,
                        Some(("rate_limited", &detail)),
                    );
                    audit(
                        Some(first),
                        "rate_limited",
                        Some(code),
                        None,
                        Some(("rate_limited", &detail)),
                    );
                    return Err(Answer::refused(ack, code, "rate_limited"));
                }
                tokio::time::sleep(wait).await;
            }
        }
        let id = Printable(header.control_id());
        let (rule, refused) = match judge(&header) {
            Judged::Reject(rule) => (rule, "rejected_by_rule"),
            Judged::Drop(rule) => (rule, "dropped_by_rule"),
            Judged::Goes(to) => match &goes {
                Some(first_goes) if *first_goes != to => {
                    let detail = format!("message {n} of the {what} goes to another upstream");
                    let says = Says::refused(ErrorCode::ApplicationInternal, &detail).at(n, None);
                    return Err(refuse(says, reason, &detail, None));
                }
                _ => {
                    goes = Some(to);
                    headers.push(header);
                    continue;
                }
            },
        };
        crate::ops::metrics::rule_rejected(&ctx.name, &rule);
        let error = rule_error(&ctx.route.rules, &rule);
        if refused == "dropped_by_rule" && !batch {
            audit(Some(&header), refused, None, Some(&rule), None);
            audit(Some(first), refused, None, Some(&rule), None);
            return Err(Answer::Close(Failure {
                side: Side::Sender,
                reason: "dropped_by_rule",
                detail: format!("message {n} of the frame was dropped by rule {rule}"),
                retry_helps: false,
            }));
        }
        let detail = if batch {
            format!("message {n} ({id}) of the batch was rejected by rule {rule}")
        } else {
            format!("message {n} of the frame was rejected by rule {rule}")
        };
        let says = Says::refused(error, &detail).at(n, None);
        audit(
            Some(&header),
            refused,
            Some(acking.code(says.code)),
            Some(&rule),
            None,
        );
        return Err(refuse(says, reason, &detail, Some(&rule)));
    }
    Ok(headers)
}
