//! The `[http]` table: how the HTTP middleware and `ratesync serve` tell
//! who a request's client is.
//!
//! ```toml
//! [http]
//! trusted_proxies = ["127.0.0.1", "10.0.0.0/8"]  # whose forwarded-for header counts
//! forwarded_header = "x-forwarded-for"          # or "forwarded": the one the proxies keep
//! ipv6_prefix = 64                               # one key per IPv6 /64
//! api_key_header = "X-Api-Key"
//! user_header = "X-User"     # set by a gateway that authenticates (and overwrites it)
//! tier_header = "X-Tier"     # likewise; `ratesync serve` only
//! admin_token = "${RATESYNC_ADMIN_TOKEN}"  # `ratesync serve`'s admin API; off without it
//! ```

use crate::error::ConfigError;
use crate::http::{ClientIp, HopHeader};
use serde::Deserialize;

/// The `[http]` table (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Proxies whose forwarded-for headers are believed (addresses and CIDR
    /// ranges); none by default.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// The header the trusted proxies keep the hops in: `x-forwarded-for`
    /// (default) or `forwarded`.
    pub forwarded_header: Option<String>,
    /// Groups IPv6 clients by this prefix length (1 to 128).
    pub ipv6_prefix: Option<u8>,
    /// The header carrying the API key.
    pub api_key_header: Option<String>,
    /// The header carrying the authenticated user, set by a gateway.
    pub user_header: Option<String>,
    /// The header carrying the client's tier, set by a gateway.
    pub tier_header: Option<String>,
    /// The bearer token of `ratesync serve`'s admin API (at least 16
    /// characters); without it the admin API is off.
    pub admin_token: Option<crate::secret::Secret>,
}

/// The shortest admin token accepted.
pub const MIN_ADMIN_TOKEN: usize = 16;

/// True for an RFC 9110 token, what a header name is made of.
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl HttpConfig {
    /// Checks every setting; errors name the key and what to write.
    pub fn validate(&self, source: &str) -> Result<(), ConfigError> {
        self.client_ip_checked()
            .map_err(|msg| ConfigError::new(source, "http", msg))?;
        if let Some(t) = &self.admin_token {
            if t.expose().chars().count() < MIN_ADMIN_TOKEN {
                return Err(ConfigError::new(
                    source,
                    "http.admin_token",
                    format!("is shorter than {MIN_ADMIN_TOKEN} characters, which can be guessed: use a long random one (openssl rand -hex 32)"),
                ));
            }
        }
        for (key, value) in [
            ("api_key_header", &self.api_key_header),
            ("user_header", &self.user_header),
            ("tier_header", &self.tier_header),
        ] {
            if let Some(v) = value.as_deref().filter(|v| !is_header_name(v)) {
                return Err(ConfigError::new(
                    source,
                    format!("http.{key}"),
                    format!("`{v}` is not a header name: write letters, digits and dashes, e.g. X-Api-Key"),
                ));
            }
        }
        Ok(())
    }

    fn client_ip_checked(&self) -> Result<ClientIp, String> {
        let header = match &self.forwarded_header {
            Some(h) => HopHeader::parse(h)?,
            None => HopHeader::default(),
        };
        Ok(ClientIp::new(&self.trusted_proxies, self.ipv6_prefix)?.hops_in(header))
    }

    /// The client-address resolver these settings describe (a validated
    /// table never fails; an invalid one trusts no proxy).
    pub fn client_ip(&self) -> ClientIp {
        self.client_ip_checked().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn the_table_is_read_and_checked() {
        let c = Config::from_toml_str(
            "[http]\ntrusted_proxies = [\"10.0.0.0/8\"]\nipv6_prefix = 64\napi_key_header = \"X-Api-Key\"\n",
        )
        .unwrap();
        let http = c.http.expect("the table");
        assert_eq!(http.api_key_header.as_deref(), Some("X-Api-Key"));
        assert!(http.client_ip().trusts("10.1.2.3".parse().unwrap()));
        for (bad, names) in [
            ("trusted_proxies = [\"proxy.local\"]", "proxy.local"),
            (
                "trusted_proxies = [\"10.0.0.1/8\"]",
                "did you mean 10.0.0.0/8",
            ),
            ("ipv6_prefix = 0", "1 to 128"),
            (
                "forwarded_header = \"x-real-ip\"",
                "\"x-forwarded-for\" or \"forwarded\"",
            ),
            ("api_key_header = \"X Api\"", "http.api_key_header"),
            ("trusted = []", "trusted"),
            ("admin_token = \"tiny-tok\"", "http.admin_token"),
        ] {
            let e = Config::from_toml_str(&format!("[http]\n{bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(names), "{bad}: {e}");
            assert!(!e.contains("tiny-tok"), "the token is shown: {e}");
        }
        let c =
            Config::from_toml_str("[http]\nadmin_token = \"0123456789abcdef-secret\"\n").unwrap();
        let shown = format!("{:?}", c.http);
        assert!(!shown.contains("secret"), "{shown}");
    }
}
