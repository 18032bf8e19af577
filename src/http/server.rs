//! The one HTTP/1 server loop of the endpoints ratesync serves (`/metrics`
//! with `prometheus`, the decision service with `serve`), within bounds a
//! client cannot lift.

use hyper::body::Incoming;
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
    /// How long a connection lives (default 60 s): then it finishes the
    /// request under way and closes (HTTP/2: GOAWAY), and is cut off if it
    /// does not within as long again; a client reconnects.
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

/// A running server loop (see [`run`]). Keep it whole while the loop
/// runs: dropping its stop signal reads as "stop".
#[derive(Debug)]
pub(crate) struct Running {
    pub(crate) task: tokio::task::JoinHandle<()>,
    stop: tokio::sync::watch::Sender<bool>,
    slots: Arc<tokio::sync::Semaphore>,
    max: u32,
}

impl Running {
    /// Stops accepting, lets every request under way finish (idle
    /// kept-alive connections close at once), and waits for them up to
    /// `grace`; true when all finished in time. Then the loop is gone.
    pub(crate) async fn shutdown(self, grace: std::time::Duration) -> bool {
        let _ = self.stop.send(true);
        let drained = tokio::time::timeout(grace, self.slots.acquire_many(self.max)).await;
        self.task.abort();
        matches!(drained, Ok(Ok(_)))
    }
}

/// A running endpoint (`/metrics`, the decision service, Envoy's
/// service); stops at once when dropped, or gracefully with
/// [`shutdown`](Self::shutdown).
#[derive(Debug)]
pub struct ServerHandle {
    addr: SocketAddr,
    running: Option<Running>,
}

impl ServerHandle {
    pub(crate) fn new(addr: SocketAddr, running: Running) -> Self {
        Self {
            addr,
            running: Some(running),
        }
    }

    /// The address it listens on (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting connections, lets the requests under way finish
    /// (idle kept-alive connections close at once) and waits for them up
    /// to `grace`; true when every one finished in time.
    pub async fn shutdown(mut self, grace: std::time::Duration) -> bool {
        match self.running.take() {
            Some(r) => r.shutdown(grace).await,
            None => true,
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if let Some(r) = &self.running {
            r.task.abort();
        }
    }
}

/// The protocol an endpoint speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// HTTP/1.1 only: every connection waits at most the header timeout
    /// for its next request (the decision service, `/metrics`).
    Http1,
    /// HTTP/2 only (gRPC), at most [`MAX_STREAMS`] requests at once per
    /// connection.
    #[cfg_attr(not(feature = "serve"), allow(dead_code))]
    Http2,
}

/// Concurrent requests per HTTP/2 connection, at most.
pub(crate) const MAX_STREAMS: u32 = 64;

/// Serves `listener` with `handler` (given each request and its peer)
/// within `limits` over `protocol`, until aborted or shut down; `what`
/// names the endpoint in logs.
pub(crate) fn run<H, F, B>(
    listener: tokio::net::TcpListener,
    limits: ServeLimits,
    protocol: Protocol,
    what: &'static str,
    handler: H,
) -> Running
where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let max = u32::try_from(limits.max_connections.max(1)).unwrap_or(u32::MAX);
    let slots = Arc::new(tokio::sync::Semaphore::new(max as usize));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let accepting = slots.clone();
    let task = tokio::spawn(async move {
        let mut stop_accepting = stopped.clone();
        loop {
            // At most `max_connections` at once: a client that opens
            // sockets and never finishes a request cannot take the
            // process's file descriptors (which the stores need to
            // reconnect); further clients wait in the listen backlog.
            let slot = tokio::select! {
                slot = accepting.clone().acquire_owned() => slot,
                _ = stop_accepting.changed() => return,
            };
            let Ok(slot) = slot else { return };
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = stop_accepting.changed() => return,
            };
            let (stream, peer) = match accepted {
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
            let mut stop = stopped.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let answer = handler(req, peer);
                    async move { Ok::<_, std::convert::Infallible>(answer.await) }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let builder = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                );
                let mut builder = match protocol {
                    Protocol::Http1 => builder.http1_only(),
                    Protocol::Http2 => builder.http2_only(),
                };
                builder
                    .http1()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(limits.header_timeout);
                builder
                    .http2()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .max_concurrent_streams(MAX_STREAMS);
                let connection = builder.serve_connection(io, service);
                let mut connection = std::pin::pin!(connection);
                let ended = tokio::select! {
                    done = connection.as_mut() => Some(done),
                    _ = stop.changed() => None,
                    _ = tokio::time::sleep(limits.connection_lifetime) => None,
                };
                let done = match ended {
                    Some(done) => done,
                    None => {
                        // Shut down, or at its lifetime: the request under
                        // way finishes (HTTP/2 says GOAWAY), no other starts,
                        // and a client that does not finish is cut off.
                        connection.as_mut().graceful_shutdown();
                        match tokio::time::timeout(limits.connection_lifetime, connection.as_mut())
                            .await
                        {
                            Ok(done) => done,
                            Err(_) => {
                                tracing::debug!(endpoint = what, "connection cut off");
                                Ok(())
                            }
                        }
                    }
                };
                if let Err(e) = done {
                    tracing::debug!(endpoint = what, error = %e, "connection ended");
                }
            });
        }
    });
    Running {
        task,
        stop,
        slots,
        max,
    }
}
