//! What a policy is asked about: the key parts of one request, its tier and
//! its cost, and which of them a policy's key is made of.

use std::net::IpAddr;

/// One request to decide: who sent it and what it costs. Every field is
/// client input and may hold anything; the policy's key encodes it safely
/// (any bytes, any length).
///
/// ```
/// let req = ratesync::policy::Request::new()
///     .ip("203.0.113.9".parse().unwrap())
///     .api_key("k-123")
///     .header("X-Tenant", "acme")
///     .tier("pro")
///     .cost(5);
/// assert_eq!(req.header_value("x-tenant"), Some("acme"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    ip: Option<IpAddr>,
    user: Option<String>,
    api_key: Option<String>,
    route: Option<String>,
    headers: Vec<(String, String)>,
    tier: Option<String>,
    cost: Option<u32>,
    path: Option<String>,
    method: Option<String>,
}

impl Request {
    /// A request with no key parts (it counts against the shared empty key).
    pub fn new() -> Self {
        Self::default()
    }

    /// The client's address.
    pub fn ip(mut self, ip: IpAddr) -> Self {
        self.ip = Some(ip.to_canonical());
        self
    }

    /// The authenticated user.
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    /// The API key presented.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// The route (a method and path pattern, or any name for the endpoint).
    pub fn route(mut self, route: impl Into<String>) -> Self {
        self.route = Some(route.into());
        self
    }

    /// A request header (names compare case-insensitively; the first of
    /// several of one name counts).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The client's tier: a tier the policy defines replaces its windows.
    pub fn tier(mut self, tier: impl Into<String>) -> Self {
        self.tier = Some(tier.into());
        self
    }

    /// What the request costs (default: the policy's `cost`).
    pub fn cost(mut self, cost: u32) -> Self {
        self.cost = Some(cost);
        self
    }

    /// The request's path, for the decision log (not a key part: use
    /// `route` for that).
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = Some(path.into());
        self
    }

    /// The request's method, for the decision log.
    pub fn method(mut self, method: impl Into<String>) -> Self {
        self.method = Some(method.into());
        self
    }

    /// The path, if given.
    pub fn path_given(&self) -> Option<&str> {
        self.path.as_deref()
    }

    /// The method, if given.
    pub fn method_given(&self) -> Option<&str> {
        self.method.as_deref()
    }

    /// The user, if given.
    pub fn user_given(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// The client's address, if given.
    pub fn ip_addr(&self) -> Option<IpAddr> {
        self.ip
    }

    /// The tier, if given.
    pub fn tier_name(&self) -> Option<&str> {
        self.tier.as_deref()
    }

    /// The cost, if given.
    pub fn cost_given(&self) -> Option<u32> {
        self.cost
    }

    /// The first header of `name` (any case).
    pub fn header_value(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The identities an exact allow or deny entry is compared with: the
    /// address (as text), the user and the API key.
    pub(crate) fn identities(&self) -> impl Iterator<Item = std::borrow::Cow<'_, str>> {
        let ip = self.ip.map(|ip| std::borrow::Cow::Owned(ip.to_string()));
        let user = self.user.as_deref().map(std::borrow::Cow::Borrowed);
        let key = self.api_key.as_deref().map(std::borrow::Cow::Borrowed);
        ip.into_iter().chain(user).chain(key)
    }
}

/// One part of a policy's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPart {
    /// The client's address.
    Ip,
    /// The authenticated user.
    User,
    /// The API key.
    ApiKey,
    /// The route.
    Route,
    /// One key for every request.
    Global,
    /// A request header, by name (`"header:X-Tenant"`).
    Header(String),
}

impl KeyPart {
    /// The part as the configuration writes it, or what is wrong with it.
    pub fn parse(s: &str) -> Result<Self, String> {
        Ok(match s {
            "ip" => KeyPart::Ip,
            "user" => KeyPart::User,
            "api_key" => KeyPart::ApiKey,
            "route" => KeyPart::Route,
            "global" => KeyPart::Global,
            _ => match s.strip_prefix("header:") {
                Some(h) if !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic() && b != b':') => {
                    KeyPart::Header(h.to_string())
                }
                _ => {
                    return Err(format!(
                        "`{s}` is not a key part: use ip, user, api_key, route, global, or \"header:NAME\""
                    ))
                }
            },
        })
    }

    /// The part's value in `req`: `None` for `global`, an empty value when
    /// the request lacks it (all such requests share that key).
    pub(crate) fn value<'r>(&self, req: &'r Request) -> Option<std::borrow::Cow<'r, str>> {
        use std::borrow::Cow;
        let text = |v: &'r Option<String>| Cow::Borrowed(v.as_deref().unwrap_or(""));
        Some(match self {
            KeyPart::Global => return None,
            KeyPart::Ip => req
                .ip
                .map_or(Cow::Borrowed(""), |ip| Cow::Owned(ip.to_string())),
            KeyPart::User => text(&req.user),
            KeyPart::ApiKey => text(&req.api_key),
            KeyPart::Route => text(&req.route),
            KeyPart::Header(h) => Cow::Borrowed(req.header_value(h).unwrap_or("")),
        })
    }

    /// The name the configuration uses.
    pub fn name(&self) -> String {
        match self {
            KeyPart::Ip => "ip".into(),
            KeyPart::User => "user".into(),
            KeyPart::ApiKey => "api_key".into(),
            KeyPart::Route => "route".into(),
            KeyPart::Global => "global".into(),
            KeyPart::Header(h) => format!("header:{h}"),
        }
    }
}
