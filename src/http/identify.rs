//! How an HTTP request becomes a policy [`Request`]: the client address
//! ([`ClientIp`]), an API-key header, the user (from a header a gateway
//! sets, or from what an authentication layer put in the request's
//! extensions), the route, and the headers the policy's key names.
//!
//! Every value a client sends is taken as bytes, whatever they are: a key
//! is bounded and encoded where it is kept (see the key rules in the
//! README), so no header can break a store or reach another client's key.

use super::{ClientIp, HopHeader};
use crate::policy::{KeyPart, Policy, Request};
use http::{Extensions, HeaderMap, HeaderName};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// The address a connection comes from, for servers that put it in a
/// request's extensions themselves (`ratesync serve` does). The layer also
/// finds a bare `SocketAddr` there, and with the `axum` feature axum's
/// `ConnectInfo<SocketAddr>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub IpAddr);

type FromRequest = Arc<dyn Fn(&HeaderMap, &Extensions) -> Option<String> + Send + Sync>;

/// What identifies a request's client (see the module docs).
#[derive(Clone, Default)]
pub struct Identify {
    client_ip: ClientIp,
    api_key_header: Option<HeaderName>,
    user_header: Option<HeaderName>,
    user: Option<FromRequest>,
    tier_header: Option<HeaderName>,
    tier: Option<FromRequest>,
}

impl std::fmt::Debug for Identify {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identify")
            .field("client_ip", &self.client_ip)
            .field("api_key_header", &self.api_key_header)
            .field("user_header", &self.user_header)
            .field("user", &self.user.is_some())
            .field("tier_header", &self.tier_header)
            .field("tier", &self.tier.is_some())
            .finish()
    }
}

/// A header name a person wrote, checked.
fn header_name(what: &str, name: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| {
        format!("{what}: `{name}` is not a header name: write letters, digits and dashes, e.g. X-Api-Key")
    })
}

impl Identify {
    /// The peer address alone is the client (no proxy trusted), no API key,
    /// no user.
    pub fn new() -> Self {
        Self::default()
    }

    /// Resolves client addresses with `client_ip` (trusted proxies, IPv6
    /// grouping).
    pub fn client_ip(mut self, client_ip: ClientIp) -> Self {
        self.client_ip = client_ip;
        self
    }

    /// Takes the API key from header `name` (`X-Api-Key`).
    pub fn api_key_header(mut self, name: &str) -> Result<Self, String> {
        self.api_key_header = Some(header_name("api_key_header", name)?);
        Ok(self)
    }

    /// Takes the user from header `name`, for a gateway that authenticates
    /// and says who (`X-User`). Only where no client can set it: behind a
    /// gateway that overwrites it.
    pub fn user_header(mut self, name: &str) -> Result<Self, String> {
        self.user_header = Some(header_name("user_header", name)?);
        Ok(self)
    }

    /// Takes the user from `f` (say, from what an authentication layer put
    /// in the extensions); `None`: no user.
    pub fn user_from(
        mut self,
        f: impl Fn(&HeaderMap, &Extensions) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.user = Some(Arc::new(f));
        self
    }

    /// Takes the tier from header `name`, for a gateway that authenticates
    /// and says which plan (`X-Tier`). Only where no client can set it:
    /// behind a gateway that overwrites it, or any client can name the
    /// largest tier (`ratesync serve`'s `http.tier_header`).
    pub fn tier_header(mut self, name: &str) -> Result<Self, String> {
        self.tier_header = Some(header_name("tier_header", name)?);
        Ok(self)
    }

    /// Takes the tier from `f` (say, the authenticated account's plan);
    /// `None`: the policy's default windows. Never from a header a client
    /// can set, or any client can name the largest tier.
    pub fn tier_from(
        mut self,
        f: impl Fn(&HeaderMap, &Extensions) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.tier = Some(Arc::new(f));
        self
    }

    /// The resolver of client addresses.
    pub fn client_ips(&self) -> &ClientIp {
        &self.client_ip
    }

    /// The address the connection of a request with `extensions` comes
    /// from, where the server put it.
    pub fn peer(extensions: &Extensions) -> Option<IpAddr> {
        if let Some(p) = extensions.get::<PeerAddr>() {
            return Some(p.0);
        }
        if let Some(a) = extensions.get::<SocketAddr>() {
            return Some(a.ip());
        }
        #[cfg(feature = "axum")]
        if let Some(c) = extensions.get::<axum::extract::ConnectInfo<SocketAddr>>() {
            return Some(c.0.ip());
        }
        None
    }

    /// The client address of a request from `peer` with `headers`: only
    /// the header the trusted proxies keep is read.
    pub fn client_addr(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let hops: Vec<&str> = headers
            .get_all(self.client_ip.hop_header().name())
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        match self.client_ip.hop_header() {
            HopHeader::Forwarded => self.client_ip.client(peer, &hops, &[]),
            HopHeader::XForwardedFor => self.client_ip.client(peer, &[], &hops),
        }
    }

    /// The policy request for an HTTP request from `peer` (`None`: unknown)
    /// to `path` (its route, and its path in the decision log), with
    /// `headers` and `extensions`, keyed as `policy` says.
    pub fn request(
        &self,
        policy: &Policy,
        peer: Option<IpAddr>,
        path: &str,
        headers: &HeaderMap,
        extensions: &Extensions,
    ) -> Request {
        let text = |name: &HeaderName| {
            headers
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        let mut req = Request::new().route(path).path(path);
        if let Some(peer) = peer {
            req = req.ip(self.client_addr(peer, headers));
        }
        if let Some(key) = self.api_key_header.as_ref().and_then(text) {
            req = req.api_key(key);
        }
        let user = match &self.user {
            Some(f) => f(headers, extensions),
            None => self.user_header.as_ref().and_then(text),
        };
        if let Some(user) = user {
            req = req.user(user);
        }
        let tier = match &self.tier {
            Some(f) => f(headers, extensions),
            None => self.tier_header.as_ref().and_then(text),
        };
        if let Some(tier) = tier {
            req = req.tier(tier);
        }
        for part in &policy.spec().key {
            if let KeyPart::Header(name) = part {
                if let Some(v) = headers.get(name.as_str()) {
                    req = req.header(name.clone(), String::from_utf8_lossy(v.as_bytes()));
                }
            }
        }
        req
    }
}
