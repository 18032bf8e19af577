//! HTTP: who the client is ([`ClientIp`], `client_ip.rs`), and with the
//! `http` feature how a request becomes a policy check ([`Identify`],
//! `identify.rs`), the tower middleware applying a policy per request
//! ([`RateLimitLayer`], `layer.rs`, over `service.rs` and `future.rs`), and
//! the responses it answers with (`response.rs`); with `serve` the
//! decision service `ratesync serve` runs ([`DecisionService`],
//! `serve.rs`) on the server loop it shares with `/metrics` (`server.rs`).

mod client_ip;
#[cfg(feature = "serve")]
pub mod dashboard;
#[cfg(feature = "serve")]
pub mod envoy;
#[cfg(feature = "http")]
mod future;
#[cfg(feature = "http")]
mod identify;
#[cfg(feature = "http")]
mod layer;
#[cfg(feature = "http")]
pub mod response;
#[cfg(feature = "serve")]
mod serve;
#[cfg(any(feature = "prometheus", feature = "serve"))]
pub(crate) mod server;
#[cfg(feature = "http")]
mod service;

pub use client_ip::{ClientIp, HopHeader, MAX_HOPS};
#[cfg(feature = "serve")]
pub use envoy::{EnvoyServer, EnvoyService};
#[cfg(feature = "http")]
pub use future::ResponseFuture;
#[cfg(feature = "http")]
pub use identify::{Identify, PeerAddr};
#[cfg(feature = "http")]
pub use layer::RateLimitLayer;
#[cfg(feature = "serve")]
pub use serve::{DecisionServer, DecisionService};
#[cfg(any(feature = "prometheus", feature = "serve"))]
pub use server::{ServeLimits, ServerHandle};
#[cfg(feature = "http")]
pub use service::RateLimit;
