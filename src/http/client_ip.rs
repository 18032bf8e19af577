//! Which address a request comes from, when proxies stand between.
//!
//! The peer (the address the connection comes from) is the client, unless
//! the peer is one of the configured `trusted_proxies`. Then the hops the
//! proxies recorded in one header (`X-Forwarded-For` by default, or RFC
//! 7239 `Forwarded: for=...` when the proxies keep that one) are walked
//! **from the right**, each written by the hop after it, to the first
//! address that is not a trusted proxy. Only the header the proxies keep
//! is read: a proxy that appends to one passes the other on from the
//! client untouched, so reading both would let a client name itself. The leftmost entry is never
//! taken on trust: any client can write it. A hop that does not parse
//! (garbage, `unknown`, an obfuscated `_name`) ends the walk at the
//! trusted proxy that wrote it: a malformed header is ignored, never
//! trusted. Optionally, IPv6 clients are grouped by prefix (a /64 is one
//! household or one server), so that one client cannot take a fresh key
//! for every address of its subnet.
//!
//! ```
//! use ratesync::http::ClientIp;
//! let resolve = ClientIp::new(&["10.0.0.0/8"], Some(64)).unwrap();
//! let proxy = "10.0.0.2".parse().unwrap();
//! // Behind a trusted proxy: the first untrusted hop from the right.
//! assert_eq!(
//!     resolve.client(proxy, &[], &["6.6.6.6, 203.0.113.7, 10.0.0.9"]).to_string(),
//!     "203.0.113.7"
//! );
//! // From anywhere else, the header is the client's own words: ignored.
//! let stranger = "198.51.100.4".parse().unwrap();
//! assert_eq!(resolve.client(stranger, &[], &["10.0.0.1"]).to_string(), "198.51.100.4");
//! // IPv6 clients are keyed by their /64.
//! let v6 = "2001:db8:1:2:aaaa::1".parse().unwrap();
//! assert_eq!(resolve.client(v6, &[], &[]).to_string(), "2001:db8:1:2::");
//! ```

use crate::policy::KeyList;
use std::net::{IpAddr, Ipv6Addr};

/// The most hops a walk looks at: a longer chain is a client's padding,
/// and the walk stops at the trusted proxy it has reached.
pub const MAX_HOPS: usize = 32;

/// Resolves the client address of requests (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct ClientIp {
    trusted: KeyList,
    ipv6_prefix: Option<u8>,
    header: HopHeader,
}

/// The header the trusted proxies keep the hops in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum HopHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (most proxies).
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for=proxy1`.
    Forwarded,
}

impl HopHeader {
    /// The header's name as the configuration writes it.
    pub fn name(self) -> &'static str {
        match self {
            HopHeader::XForwardedFor => "x-forwarded-for",
            HopHeader::Forwarded => "forwarded",
        }
    }

    /// The header named `name` (any case); `Err` says what to write.
    pub fn parse(name: &str) -> Result<Self, String> {
        match name.trim().to_ascii_lowercase().as_str() {
            "x-forwarded-for" => Ok(HopHeader::XForwardedFor),
            "forwarded" => Ok(HopHeader::Forwarded),
            _ => Err(format!(
                "forwarded_header: `{name}` is not one the proxies keep hops in: write \"x-forwarded-for\" or \"forwarded\""
            )),
        }
    }
}

impl ClientIp {
    /// Trusting the proxies in `trusted_proxies` (addresses and CIDR
    /// ranges), grouping IPv6 clients by `/ipv6_prefix` when given (1 to
    /// 128). Errors name the entry or value at fault.
    pub fn new<S: AsRef<str>>(
        trusted_proxies: &[S],
        ipv6_prefix: Option<u8>,
    ) -> Result<Self, String> {
        let mut trusted = KeyList::default();
        for p in trusted_proxies {
            let p = p.as_ref();
            if p.parse::<IpAddr>().is_err() && !p.contains('/') {
                return Err(format!(
                    "trusted_proxies: `{p}` is not an address or a range: write 10.0.0.1, 10.0.0.0/8 or 2001:db8::/32"
                ));
            }
            trusted
                .add(p)
                .map_err(|e| format!("trusted_proxies: {e}"))?;
        }
        if let Some(n) = ipv6_prefix.filter(|n| !(1..=128).contains(n)) {
            return Err(format!(
                "ipv6_prefix: {n} is not a prefix length: give 1 to 128 (64 groups a subnet)"
            ));
        }
        Ok(Self {
            trusted,
            ipv6_prefix,
            header: HopHeader::default(),
        })
    }

    /// Reads the hops from `header` (default `X-Forwarded-For`).
    pub fn hops_in(mut self, header: HopHeader) -> Self {
        self.header = header;
        self
    }

    /// The header the hops are read from.
    pub fn hop_header(&self) -> HopHeader {
        self.header
    }

    /// True when `ip` is a trusted proxy.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.trusted.contains_ip(ip)
    }

    /// The client of a request from `peer` carrying the `Forwarded` header
    /// lines `forwarded` and the `X-Forwarded-For` lines
    /// `x_forwarded_for`, in the order they came; only those of
    /// [`hop_header`](Self::hop_header) count (see the module docs).
    pub fn client(&self, peer: IpAddr, forwarded: &[&str], x_forwarded_for: &[&str]) -> IpAddr {
        let found = match self.header {
            HopHeader::Forwarded => self.walk(peer, hops(forwarded).map(forwarded_for)),
            HopHeader::XForwardedFor => self.walk(peer, hops(x_forwarded_for).map(address)),
        };
        self.group(found)
    }

    /// From `peer`, leftwards through `hops` (rightmost first) while the
    /// current address is trusted.
    fn walk(&self, peer: IpAddr, hops: impl Iterator<Item = Option<IpAddr>>) -> IpAddr {
        let mut current = peer.to_canonical();
        for hop in hops.take(MAX_HOPS) {
            if !self.trusts(current) {
                return current;
            }
            match hop {
                Some(ip) => current = ip.to_canonical(),
                None => return current,
            }
        }
        current
    }

    fn group(&self, ip: IpAddr) -> IpAddr {
        match (ip, self.ipv6_prefix) {
            (IpAddr::V6(v6), Some(len)) => {
                let bits = u128::from(v6);
                let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(bits & mask))
            }
            _ => ip,
        }
    }
}

/// The comma-separated elements of `lines`, rightmost first.
fn hops<'a>(lines: &'a [&'a str]) -> impl Iterator<Item = &'a str> + 'a {
    lines.iter().rev().flat_map(|l| l.rsplit(','))
}

/// One `X-Forwarded-For` element: an address, maybe with a port
/// (`192.0.2.1:443`, `[2001:db8::1]:443`); `None` for anything else.
fn address(text: &str) -> Option<IpAddr> {
    let t = text.trim().trim_matches('"');
    if let Ok(ip) = t.parse() {
        return Some(ip);
    }
    if let Some(rest) = t.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        return inside.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    let (host, port) = t.rsplit_once(':')?;
    if !is_port(port) {
        return None;
    }
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

fn is_port(p: &str) -> bool {
    p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok()
}

/// The `for=` of one `Forwarded` element (`for=192.0.2.60;proto=https`,
/// `for="[2001:db8::17]:4711"`); `None` when it has none or it is no
/// address (`unknown`, an obfuscated `_name`).
fn forwarded_for(element: &str) -> Option<IpAddr> {
    element.split(';').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        if name.trim().eq_ignore_ascii_case("for") {
            address(value)
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn behind(trusted: &[&str]) -> ClientIp {
        ClientIp::new(trusted, None).unwrap()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_writes() {
        let r = behind(&["10.0.0.0/8"]);
        let peer = ip("203.0.113.9");
        assert_eq!(r.client(peer, &[], &["10.0.0.1"]), peer);
        assert_eq!(
            r.clone()
                .hops_in(HopHeader::Forwarded)
                .client(peer, &["for=10.0.0.1"], &[]),
            peer
        );
        assert_eq!(r.client(peer, &[], &[]), peer);
    }

    #[test]
    fn hops_are_walked_from_the_right_to_the_first_untrusted() {
        let r = behind(&["10.0.0.0/8", "2001:db8:ffff::/48"]);
        let peer = ip("10.0.0.2");
        // A spoofed leftmost entry is never reached.
        assert_eq!(
            r.client(peer, &[], &["1.1.1.1, 198.51.100.7, 10.1.1.1"]),
            ip("198.51.100.7")
        );
        // Several header lines are one list, in order.
        assert_eq!(
            r.client(peer, &[], &["1.1.1.1", "198.51.100.7:5555", "10.1.1.1"]),
            ip("198.51.100.7")
        );
        // Every hop trusted: the leftmost is the client.
        assert_eq!(r.client(peer, &[], &["10.9.9.9, 10.1.1.1"]), ip("10.9.9.9"));
        assert_eq!(r.client(peer, &[], &[]), peer);
        assert_eq!(
            r.client(ip("2001:db8:ffff::1"), &[], &["[2001:db8::5]:80"]),
            ip("2001:db8::5")
        );
    }

    #[test]
    fn only_the_header_the_proxies_keep_counts() {
        // Proxies that keep X-Forwarded-For pass a client's Forwarded on.
        let r = behind(&["10.0.0.0/8"]);
        let peer = ip("10.0.0.2");
        let fwd = ["for=192.0.2.60;proto=http;by=203.0.113.43, For=\"[2001:db8:cafe::17]:4711\""];
        assert_eq!(r.client(peer, &fwd, &["198.51.100.1"]), ip("198.51.100.1"));
        assert_eq!(r.client(peer, &fwd, &[]), peer);
        let r = r.hops_in(HopHeader::Forwarded);
        assert_eq!(
            r.client(peer, &fwd, &["198.51.100.1"]),
            ip("2001:db8:cafe::17")
        );
        assert_eq!(
            r.client(peer, &["for=192.0.2.60, for=10.3.3.3;proto=https"], &[]),
            ip("192.0.2.60")
        );
    }

    #[test]
    fn a_malformed_hop_ends_the_walk_at_the_proxy_that_wrote_it() {
        let r = behind(&["10.0.0.0/8"]);
        let peer = ip("10.0.0.2");
        for bad in [
            "garbage",
            "unknown",
            "",
            "1.2.3.4:99999",
            "[::1",
            "300.1.1.1",
        ] {
            assert_eq!(r.client(peer, &[], &[bad]), peer, "{bad:?}");
            assert_eq!(
                r.client(peer, &[], &[&format!("{bad}, 10.5.5.5")]),
                ip("10.5.5.5"),
                "{bad:?}"
            );
        }
        let f = r.clone().hops_in(HopHeader::Forwarded);
        assert_eq!(f.client(peer, &["for=unknown"], &[]), peer);
        assert_eq!(f.client(peer, &["for=_hidden, by=10.0.0.3"], &[]), peer);
        // Garbage left of an untrusted hop is never reached.
        assert_eq!(
            r.client(peer, &[], &["\u{0}\u{ff}, 198.51.100.3"]),
            ip("198.51.100.3")
        );
    }

    #[test]
    fn a_padded_chain_stops_after_max_hops() {
        let r = behind(&["10.0.0.0/8"]);
        let chain = vec!["10.0.0.1"; 10_000].join(", ");
        assert_eq!(
            r.client(ip("10.0.0.2"), &[], &[&format!("6.6.6.6, {chain}")]),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn ipv6_clients_are_grouped_and_mapped_addresses_are_ipv4() {
        let r = ClientIp::new(&["10.0.0.0/8"], Some(64)).unwrap();
        assert_eq!(
            r.client(ip("2001:db8:1:2:3:4:5:6"), &[], &[]),
            ip("2001:db8:1:2::")
        );
        assert_eq!(
            r.client(ip("::ffff:203.0.113.5"), &[], &[]),
            ip("203.0.113.5")
        );
        let r = ClientIp::new(&["10.0.0.0/8"], Some(128)).unwrap();
        assert_eq!(r.client(ip("2001:db8::1"), &[], &[]), ip("2001:db8::1"));
        // A mapped peer is matched against IPv4 ranges.
        assert_eq!(
            r.client(ip("::ffff:10.0.0.2"), &[], &["198.51.100.8"]),
            ip("198.51.100.8")
        );
    }

    #[test]
    fn bad_settings_name_what_to_write() {
        let e = ClientIp::new(&["proxy.internal"], None).unwrap_err();
        assert!(
            e.contains("proxy.internal") && e.contains("10.0.0.0/8"),
            "{e}"
        );
        let e = ClientIp::new(&["10.0.0.1/8"], None).unwrap_err();
        assert!(e.contains("did you mean 10.0.0.0/8"), "{e}");
        let e = ClientIp::new::<&str>(&[], Some(0)).unwrap_err();
        assert!(e.contains("ipv6_prefix") && e.contains("1 to 128"), "{e}");
    }
}
