//! HTTP pieces shared by the middleware and the decision service: who the
//! client is ([`ClientIp`], `client_ip.rs`).

mod client_ip;

pub use client_ip::{ClientIp, MAX_HOPS};
