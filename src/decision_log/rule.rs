//! What a policy writes to the decision log: which decisions
//! (`log_decisions`), and how much of the client it keeps (`log_keys`,
//! `log_ips`).

use serde::Deserialize;

/// Which of a policy's decisions are logged.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum LogDecisions {
    /// None (the default).
    #[default]
    Off,
    /// Every decision.
    All,
    /// Only refusals (and, in shadow mode, what would have been refused).
    Denied,
    /// Each decision with this probability (0 < p < 1), drawn per decision.
    Sample(f64),
}

impl LogDecisions {
    /// True when no decision is logged.
    pub fn is_off(self) -> bool {
        self == LogDecisions::Off
    }
}

/// How a logged key (and user) is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyPrivacy {
    /// As the client sent it (default).
    #[default]
    Clear,
    /// As its keyed digest ([`crate::hash_key_with_secret`] under
    /// `decision_log.key_secret`): one client is still one key in the
    /// analytics, but nobody without the secret can tell who.
    Hashed,
}

/// How a logged client address is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IpPrivacy {
    /// The whole address (default).
    #[default]
    Full,
    /// Its network only: IPv4 to its /24, IPv6 to its /48.
    Truncated,
    /// Not at all.
    None,
}

/// One policy's logging rules, validated.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LogRule {
    /// Which decisions.
    pub decisions: LogDecisions,
    /// Keys and users as written or digested.
    pub keys: KeyPrivacy,
    /// Addresses whole, truncated or left out.
    pub ips: IpPrivacy,
}

impl LogRule {
    /// Whether a decision (`denied`: refused or would be) is logged,
    /// `draw` giving a uniform number in [0, 1) when sampling.
    pub fn wants(&self, denied: bool, draw: impl FnOnce() -> f64) -> bool {
        match self.decisions {
            LogDecisions::Off => false,
            LogDecisions::All => true,
            LogDecisions::Denied => denied,
            LogDecisions::Sample(p) => draw() < p,
        }
    }
}

impl IpPrivacy {
    /// `ip` as this setting keeps it.
    pub fn apply(self, ip: std::net::IpAddr) -> Option<std::net::IpAddr> {
        use std::net::IpAddr;
        match self {
            IpPrivacy::Full => Some(ip),
            IpPrivacy::None => None,
            IpPrivacy::Truncated => Some(match ip {
                IpAddr::V4(v4) => {
                    let [a, b, c, _] = v4.octets();
                    IpAddr::from([a, b, c, 0])
                }
                IpAddr::V6(v6) => {
                    let s = v6.segments();
                    IpAddr::from([s[0], s[1], s[2], 0, 0, 0, 0, 0])
                }
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::decision_log::rule::*;

    #[test]
    fn truncation_keeps_the_network_only() {
        let v4: std::net::IpAddr = "203.0.113.77".parse().unwrap();
        let v6: std::net::IpAddr = "2001:db8:1234:5678::9".parse().unwrap();
        assert_eq!(
            IpPrivacy::Truncated.apply(v4).unwrap().to_string(),
            "203.0.113.0"
        );
        assert_eq!(
            IpPrivacy::Truncated.apply(v6).unwrap().to_string(),
            "2001:db8:1234::"
        );
        assert_eq!(IpPrivacy::None.apply(v4), None);
        assert_eq!(IpPrivacy::Full.apply(v6), Some(v6));
    }

    #[test]
    fn denied_only_and_sampling() {
        let denied = LogRule {
            decisions: LogDecisions::Denied,
            ..LogRule::default()
        };
        assert!(denied.wants(true, || unreachable!()));
        assert!(!denied.wants(false, || unreachable!()));
        let sample = LogRule {
            decisions: LogDecisions::Sample(0.25),
            ..LogRule::default()
        };
        assert!(sample.wants(false, || 0.1));
        assert!(!sample.wants(true, || 0.3));
        assert!(!LogRule::default().wants(true, || 0.0));
    }
}
