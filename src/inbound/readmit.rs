//! A reload reaches an open connection: whether a sender admitted under the old config is still
//! admitted under its route's new one (the allowlist and the trusted balancers on its address,
//! TLS on or off, and its client certificate against the new `client_ca`, CRLs and
//! `allowed_identities`), and whether its own upstream connections must be replaced (the
//! upstream it was delivering to changed).
//!
//! Pure apart from the clock a certificate check reads. Must not know frames, acks or sockets.

use rustls::pki_types::{CertificateDer, UnixTime};

use crate::config::SenderRole;
use crate::route::{Peer, RouteContext};

/// Why a connection is no longer admitted (for its log line), or `None` when it is.
pub fn refused(
    new: &RouteContext,
    who: &Peer,
    certs: Option<&[CertificateDer<'_>]>,
) -> Option<String> {
    let route = &new.route;
    if matches!(route.sender, SenderRole::Dial(_)) {
        return None; // the guard chose this peer; there is no admission to check
    }
    match (&route.proxy_protocol, who.proxy) {
        (Some(proxies), Some(balancer)) if !proxies.from.admits(balancer.ip()) => {
            return Some(format!(
                "its balancer {balancer} is no longer in proxy_protocol.from"
            ));
        }
        (None, Some(balancer)) => {
            return Some(format!(
                "it came through the balancer {balancer} and proxy_protocol is now off"
            ));
        }
        _ => {}
    }
    if !route.allow.admits(who.addr.ip()) {
        return Some(format!("{} is no longer in allow", who.addr.ip()));
    }
    match (&route.tls, certs) {
        (None, Some(_)) => return Some("the route no longer uses TLS".into()),
        (Some(_), None) => return Some("the route now requires TLS".into()),
        (Some(tls), Some(chain)) => {
            if let Some(verifier) = &tls.client_verifier {
                let Some((leaf, intermediates)) = chain.split_first() else {
                    return Some(
                        "the route now requires a client certificate (client_ca) and the connection has none"
                            .into(),
                    );
                };
                if let Err(err) = verifier.verify_client_cert(leaf, intermediates, UnixTime::now())
                {
                    return Some(format!(
                        "its client certificate is no longer accepted (client_ca, crl or allowed_identities): {err}"
                    ));
                }
            }
        }
        (None, None) => {}
    }
    None
}

/// Whether a session's own upstream connections must be replaced to follow `new`: the route's
/// upstream or a named upstream changed (an address, TLS, or any other setting).
pub fn delivery_changed(old: &RouteContext, new: &RouteContext) -> bool {
    let named = |ctx: &RouteContext| -> Vec<String> {
        ctx.named_upstreams
            .iter()
            .map(|(name, u)| format!("{name}={:?}", u.config()))
            .collect()
    };
    format!("{:?}", old.route.upstream) != format!("{:?}", new.route.upstream)
        || named(old) != named(new)
}
