//! The one HTTP/1 server loop of the endpoints ratesync serves (`/metrics`
//! with `prometheus`, the decision service with `serve`), within bounds a
//! client cannot lift.

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

/// Bounds on what the clients of an endpoint can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeLimits {
    /// Connections served at once (default 64); more wait to be accepted.
    pub max_connections: usize,
    /// Time a client has to send a request's headers, on a new or an idle
    /// kept-alive connection (default 5 s): slow-loris clients are cut off.
    pub header_timeout: std::time::Duration,
    /// The longest a connection lives (default 60 s; a client reconnects).
    pub connection_lifetime: std::time::Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            max_connections: 64,
            header_timeout: std::time::Duration::from_secs(5),
            connection_lifetime: std::time::Duration::from_secs(60),
        }
    }
}

/// Serves `listener` with `handler` (given each request and its peer)
/// within `limits`, until the task is aborted; `what` names the endpoint
/// in logs.
pub(crate) fn run<H, F>(
    listener: tokio::net::TcpListener,
    limits: ServeLimits,
    what: &'static str,
    handler: H,
) -> tokio::task::JoinHandle<()>
where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    tokio::spawn(async move {
        loop {
            // At most `max_connections` at once: a client that opens
            // sockets and never finishes a request cannot take the
            // process's file descriptors (which the stores need to
            // reconnect); further clients wait in the listen backlog.
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors and the like: back off rather
                    // than spin, and try again.
                    tracing::warn!(endpoint = what, error = %e, "cannot accept");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let answer = handler(req, peer);
                    async move { Ok::<_, std::convert::Infallible>(answer.await) }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(limits.header_timeout)
                    .serve_connection(io, service);
                match tokio::time::timeout(limits.connection_lifetime, connection).await {
                    Ok(Err(e)) => tracing::debug!(endpoint = what, error = %e, "connection ended"),
                    Ok(Ok(())) => {}
                    Err(_) => tracing::debug!(endpoint = what, "connection closed at its lifetime"),
                }
            });
        }
    })
}
