//! HTTP: who the client is ([`ClientIp`], `client_ip.rs`), and with the
//! `http` feature how a request becomes a policy check ([`Identify`],
//! `identify.rs`), the tower middleware applying a policy per request
//! ([`RateLimitLayer`], `layer.rs`, over `service.rs` and `future.rs`), and
//! the responses it answers with (`response.rs`).

mod client_ip;
#[cfg(feature = "http")]
mod future;
#[cfg(feature = "http")]
mod identify;
#[cfg(feature = "http")]
mod layer;
#[cfg(feature = "http")]
pub mod response;
#[cfg(feature = "http")]
mod service;

pub use client_ip::{ClientIp, MAX_HOPS};
#[cfg(feature = "http")]
pub use future::ResponseFuture;
#[cfg(feature = "http")]
pub use identify::{Identify, PeerAddr};
#[cfg(feature = "http")]
pub use layer::RateLimitLayer;
#[cfg(feature = "http")]
pub use service::RateLimit;
