//! Who may connect: CIDR allowlists matched on the peer address.
//!
//! Owns the admission decision made on a peer address before any byte is read or a TLS handshake
//! starts. Pure: it knows nothing of sockets, TLS or HL7. IPv4-mapped IPv6 peers (`::ffff:10.0.0.5`,
//! what a dual-stack listener reports) are matched as the IPv4 address they carry.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

/// A route's allowlist: the networks whose peers may connect.
///
/// An open listener is written out explicitly (`["any"]`); an empty list denies everyone.
#[derive(Clone, PartialEq, Eq)]
pub enum Allowlist {
    /// `["any"]`: every peer is admitted.
    Any,
    /// Only peers inside one of these networks (possibly none).
    Networks(Vec<IpNet>),
}

impl Allowlist {
    /// Parses config entries: CIDRs (`10.0.0.0/8`, `::1/128`), bare IPs (`10.1.2.3`), or the single
    /// word `any`. Returns the index and message of the first bad entry.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Allowlist, (usize, String)> {
        let mut nets = Vec::with_capacity(entries.len());
        for (i, entry) in entries.iter().enumerate() {
            let entry = entry.as_ref().trim();
            if entry.eq_ignore_ascii_case("any") {
                if entries.len() != 1 {
                    return Err((
                        i,
                        "\"any\" must be the only entry of an allowlist (it admits every address)"
                            .to_string(),
                    ));
                }
                return Ok(Allowlist::Any);
            }
            let net = match entry.parse::<IpNet>() {
                Ok(net) => net.trunc(),
                Err(_) => match entry.parse::<IpAddr>() {
                    Ok(ip) => IpNet::from(ip.to_canonical()),
                    Err(_) => {
                        return Err((
                            i,
                            format!(
                                "\"{entry}\" is not an IP address or CIDR (write e.g. 10.0.0.0/8, 192.0.2.7, \"::1/128\", or \"any\")"
                            ),
                        ))
                    }
                },
            };
            nets.push(net);
        }
        Ok(Allowlist::Networks(nets))
    }

    /// Whether a peer with this address may connect.
    pub fn admits(&self, peer: IpAddr) -> bool {
        match self {
            Allowlist::Any => true,
            Allowlist::Networks(nets) => {
                let peer = peer.to_canonical();
                nets.iter().any(|net| net.contains(&peer))
            }
        }
    }
}

impl fmt::Debug for Allowlist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Allowlist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Allowlist::Any => f.write_str("any"),
            Allowlist::Networks(nets) if nets.is_empty() => f.write_str("nobody"),
            Allowlist::Networks(nets) => {
                for (i, net) in nets.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{net}")?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_and_bare_ip_entries_admit_their_members_only() {
        let list = Allowlist::parse(&["127.0.0.1/32", "10.0.0.0/8", "2001:db8::5"]).unwrap();
        assert!(list.admits(ip("127.0.0.1")));
        assert!(!list.admits(ip("127.0.0.2")));
        assert!(list.admits(ip("10.200.3.4")));
        assert!(list.admits(ip("2001:db8::5")));
        assert!(!list.admits(ip("2001:db8::6")));
    }

    #[test]
    fn ipv4_mapped_ipv6_peer_is_matched_as_ipv4() {
        let list = Allowlist::parse(&["10.0.0.0/8"]).unwrap();
        assert!(list.admits(ip("::ffff:10.0.0.5")));
        assert!(!list.admits(ip("::ffff:11.0.0.5")));
    }

    #[test]
    fn empty_list_denies_all_and_any_admits_all() {
        let none = Allowlist::parse::<&str>(&[]).unwrap();
        assert!(!none.admits(ip("127.0.0.1")));
        assert_eq!(none.to_string(), "nobody");
        let any = Allowlist::parse(&["any"]).unwrap();
        assert!(any.admits(ip("192.0.2.1")));
        assert!(any.admits(ip("::1")));
    }

    #[test]
    fn bad_entries_are_reported_with_their_index() {
        assert_eq!(
            Allowlist::parse(&["10.0.0.0/8", "10.0.0.0/33"]).unwrap_err(),
            (
                1,
                "\"10.0.0.0/33\" is not an IP address or CIDR (write e.g. 10.0.0.0/8, 192.0.2.7, \"::1/128\", or \"any\")".to_string()
            )
        );
        assert_eq!(Allowlist::parse(&["any", "10.0.0.0/8"]).unwrap_err().0, 0);
    }

    #[test]
    fn host_bits_in_a_cidr_are_ignored() {
        let list = Allowlist::parse(&["10.1.2.3/16"]).unwrap();
        assert!(list.admits(ip("10.1.200.1")));
        assert_eq!(list.to_string(), "10.1.0.0/16");
    }
}
