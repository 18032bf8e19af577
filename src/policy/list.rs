//! Allow and deny lists: exact keys and IPv4/IPv6 CIDR ranges.
//!
//! A lookup costs one hash probe per distinct prefix length in the list
//! (at most 33 for IPv4, 129 for IPv6), however many ranges it holds, and
//! one for an exact key. IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`)
//! match IPv4 ranges.

use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;

/// A list of exact keys and address ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyList {
    exact: HashSet<String>,
    /// (prefix length, network) of IPv4 ranges, the address as a `u128`.
    v4: HashSet<(u8, u128)>,
    v6: HashSet<(u8, u128)>,
    v4_lengths: BTreeSet<u8>,
    v6_lengths: BTreeSet<u8>,
    entries: Vec<String>,
}

impl KeyList {
    /// The list of `entries`: `a.b.c.d/n` and `x::/n` are ranges, a bare
    /// address is a range of one address and an exact key both, anything
    /// else an exact key. Errors name the entry and what to write instead.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, String> {
        let mut list = KeyList::default();
        for e in entries {
            list.add(e.as_ref())?;
        }
        Ok(list)
    }

    /// Adds one entry (see [`parse`](Self::parse)).
    pub fn add(&mut self, entry: &str) -> Result<(), String> {
        if entry.is_empty() {
            return Err("an empty entry matches nothing: remove it".into());
        }
        if let Some((addr, len)) = entry.split_once('/') {
            let ip: IpAddr = addr.parse().map_err(|_| {
                format!("`{entry}` has a `/` but `{addr}` is not an IP address: write a range as 10.0.0.0/8 or 2001:db8::/32")
            })?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let len: u8 = len.parse().ok().filter(|&l| l <= max).ok_or_else(|| {
                format!("`{entry}`: the prefix length must be a number from 0 to {max}")
            })?;
            let bits = bits(ip);
            let net = mask(bits, len, max);
            if net != bits {
                let shown = match ip {
                    IpAddr::V4(_) => IpAddr::from(std::net::Ipv4Addr::from(net as u32)),
                    IpAddr::V6(_) => IpAddr::from(std::net::Ipv6Addr::from(net)),
                };
                return Err(format!(
                    "`{entry}` has bits set past its /{len} prefix: did you mean {shown}/{len}?"
                ));
            }
            self.insert_range(ip.is_ipv4(), len, net);
        } else if let Ok(ip) = entry.parse::<IpAddr>() {
            let ip = ip.to_canonical();
            let max = if ip.is_ipv4() { 32 } else { 128 };
            self.insert_range(ip.is_ipv4(), max, bits(ip));
            self.exact.insert(ip.to_string());
        } else {
            self.exact.insert(entry.to_string());
        }
        self.entries.push(entry.to_string());
        Ok(())
    }

    fn insert_range(&mut self, v4: bool, len: u8, net: u128) {
        if v4 {
            self.v4.insert((len, net));
            self.v4_lengths.insert(len);
        } else {
            self.v6.insert((len, net));
            self.v6_lengths.insert(len);
        }
    }

    /// True when `ip` lies in one of the ranges.
    pub fn contains_ip(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        let (set, lengths, max) = match ip {
            IpAddr::V4(_) => (&self.v4, &self.v4_lengths, 32),
            IpAddr::V6(_) => (&self.v6, &self.v6_lengths, 128),
        };
        let b = bits(ip);
        lengths
            .iter()
            .any(|&len| set.contains(&(len, mask(b, len, max))))
    }

    /// True when `key` is one of the exact entries.
    pub fn contains_key(&self, key: &str) -> bool {
        self.exact.contains(key)
    }

    /// The entries as written.
    pub fn entries(&self) -> &[String] {
        &self.entries
    }

    /// How many entries the list holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True for an empty list.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// `bits` with all but the first `len` of its `max` bits cleared.
fn mask(bits: u128, len: u8, max: u8) -> u128 {
    if len == 0 {
        return 0;
    }
    let shift = u32::from(max - len);
    (bits >> shift) << shift
}

#[cfg(test)]
mod tests {
    use super::KeyList;
    use std::net::IpAddr;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ranges_and_keys_match_what_they_name() {
        let l = KeyList::parse(
            &[
                "10.0.0.0/8",
                "2001:db8::/32",
                "192.0.2.7",
                "internal-1",
                "0.0.0.0/0",
            ][..4],
        )
        .unwrap();
        assert!(l.contains_ip(ip("10.255.0.1")));
        assert!(l.contains_ip(ip("::ffff:10.1.2.3")));
        assert!(!l.contains_ip(ip("11.0.0.1")));
        assert!(l.contains_ip(ip("2001:db8:ffff::1")));
        assert!(!l.contains_ip(ip("2001:db9::1")));
        assert!(l.contains_ip(ip("192.0.2.7")) && !l.contains_ip(ip("192.0.2.8")));
        assert!(l.contains_key("internal-1") && l.contains_key("192.0.2.7"));
        assert!(!l.contains_key("internal-2"));
        let all = KeyList::parse(&["0.0.0.0/0", "::/0"]).unwrap();
        assert!(all.contains_ip(ip("203.0.113.9")) && all.contains_ip(ip("fe80::1")));
    }

    #[test]
    fn bad_entries_say_what_to_write() {
        let e = KeyList::parse(&["10.0.0.1/8"]).unwrap_err();
        assert!(e.contains("did you mean 10.0.0.0/8?"), "{e}");
        let e = KeyList::parse(&["10.0.0.0/33"]).unwrap_err();
        assert!(e.contains("from 0 to 32"), "{e}");
        let e = KeyList::parse(&["office/24"]).unwrap_err();
        assert!(e.contains("not an IP address"), "{e}");
        let e = KeyList::parse(&["2001:db8::1/32"]).unwrap_err();
        assert!(e.contains("did you mean 2001:db8::/32?"), "{e}");
    }
}
