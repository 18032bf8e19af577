//! The `[envoy]` table: which policy decides which of Envoy's rate limit
//! descriptors (see `ratesync::http` with the `serve` feature, `envoy.rs`).
//!
//! ```toml
//! [[envoy.rules]]
//! domain = "edge"                      # the domain Envoy's filter sends
//! descriptor = ["remote_address"]      # entry keys in order; a bare key's value is the client's key
//! policy = "per_ip"
//!
//! [[envoy.rules]]
//! domain = "edge"
//! descriptor = ["generic_key=api", "header_match"]   # key=value must match exactly
//! policy = "api"
//! ```

use crate::error::ConfigError;
use serde::Deserialize;

/// The `[envoy]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvoyConfig {
    /// The rules, tried in order; the first that matches a descriptor decides it.
    #[serde(default)]
    pub rules: Vec<EnvoyRule>,
}

/// One rule: a domain, a descriptor's shape, and its policy.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvoyRule {
    /// The domain of the request.
    pub domain: String,
    /// The descriptor's entries, in order: `key` (any value, part of the
    /// client's key) or `key=value` (that value only).
    pub descriptor: Vec<String>,
    /// The policy deciding it.
    pub policy: String,
}

impl EnvoyConfig {
    /// Checks every rule against the configuration's `policies`; errors
    /// name the rule and the field.
    pub fn validate(
        &self,
        source: &str,
        has_policy: impl Fn(&str) -> bool,
    ) -> Result<(), ConfigError> {
        for (i, r) in self.rules.iter().enumerate() {
            let at = |field: &str| format!("envoy.rules[{i}].{field}");
            if r.domain.trim().is_empty() {
                return Err(ConfigError::new(
                    source,
                    at("domain"),
                    "is empty: give the domain Envoy's ratelimit filter sends",
                ));
            }
            if r.descriptor.is_empty()
                || r.descriptor
                    .iter()
                    .any(|e| e.split('=').next().unwrap_or("").trim().is_empty())
            {
                return Err(ConfigError::new(
                    source,
                    at("descriptor"),
                    "give the descriptor's entry keys in order, e.g. [\"remote_address\"] or [\"generic_key=api\", \"header_match\"]",
                ));
            }
            if !has_policy(&r.policy) {
                return Err(ConfigError::new(
                    source,
                    at("policy"),
                    format!(
                        "no policy `{}`; define [policies.{}] or name another",
                        r.policy, r.policy
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The first rule of `domain` whose descriptor `entries` match, and the
    /// client's key they make (the values of its bare keys, joined by `|`).
    pub fn matching(&self, domain: &str, entries: &[(&str, &str)]) -> Option<(&EnvoyRule, String)> {
        self.rules
            .iter()
            .filter(|r| r.domain == domain)
            .find_map(|r| {
                if r.descriptor.len() != entries.len() {
                    return None;
                }
                let mut key = Vec::new();
                for (want, (k, v)) in r.descriptor.iter().zip(entries) {
                    match want.split_once('=') {
                        Some((wk, wv)) => {
                            if wk != *k || wv != *v {
                                return None;
                            }
                        }
                        None if want == k => key.push(*v),
                        None => return None,
                    }
                }
                Some((r, key.join("|")))
            })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const POLICY: &str = "[policies.p]\nwindows = [{ window = \"1m\", limit = 1 }]\n";

    #[test]
    fn rules_match_descriptors_in_order() {
        let c = Config::from_toml_str(&format!(
            "{POLICY}[[envoy.rules]]\ndomain = \"edge\"\ndescriptor = [\"generic_key=api\", \"remote_address\"]\npolicy = \"p\"\n"
        ))
        .unwrap();
        let e = c.envoy.unwrap();
        let m = e.matching(
            "edge",
            &[("generic_key", "api"), ("remote_address", "10.0.0.1")],
        );
        assert_eq!(
            m.map(|(r, k)| (r.policy.as_str(), k)),
            Some(("p", "10.0.0.1".to_string()))
        );
        assert!(e
            .matching("edge", &[("generic_key", "web"), ("remote_address", "x")])
            .is_none());
        assert!(e
            .matching("other", &[("generic_key", "api"), ("remote_address", "x")])
            .is_none());
        assert!(e.matching("edge", &[("remote_address", "x")]).is_none());
    }

    #[test]
    fn bad_rules_are_named() {
        for (rule, names) in [
            (
                "domain = \"\"\ndescriptor = [\"a\"]\npolicy = \"p\"",
                "envoy.rules[0].domain",
            ),
            (
                "domain = \"d\"\ndescriptor = []\npolicy = \"p\"",
                "envoy.rules[0].descriptor",
            ),
            (
                "domain = \"d\"\ndescriptor = [\"=x\"]\npolicy = \"p\"",
                "envoy.rules[0].descriptor",
            ),
            (
                "domain = \"d\"\ndescriptor = [\"a\"]\npolicy = \"nope\"",
                "no policy `nope`",
            ),
            (
                "domain = \"d\"\ndescriptor = [\"a\"]\npolicy = \"p\"\nlimit = 3",
                "limit",
            ),
        ] {
            let e = Config::from_toml_str(&format!("{POLICY}[[envoy.rules]]\n{rule}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(names), "{rule}: {e}");
        }
    }
}
