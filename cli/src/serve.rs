//! `ratesync serve`: the decision service (`ratesync::http::DecisionService`)
//! on one address until SIGINT or SIGTERM.

use ratesync::config::envoy::EnvoyConfig;
use ratesync::config::http::HttpConfig;
use ratesync::http::{DecisionService, EnvoyService, ServeLimits};
use ratesync::Registry;
use std::net::SocketAddr;
use std::process::ExitCode;

/// How long the requests under way may take to finish at shutdown.
const GRACE: std::time::Duration = std::time::Duration::from_secs(10);

pub async fn run(
    registry: Registry,
    http: &HttpConfig,
    listen: SocketAddr,
    envoy: Option<(SocketAddr, Option<EnvoyConfig>)>,
) -> crate::worker::Result<ExitCode> {
    let service = DecisionService::new(registry.clone(), http)
        .map_err(|e| ratesync::Error::Unsupported(format!("[http]: {e}")))?;
    let server = match service.serve(listen, ServeLimits::default()).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ratesync: cannot listen on {listen}: {e}; is another process there?");
            return Ok(ExitCode::FAILURE);
        }
    };
    println!(
        "ratesync serve: listening on http://{} (policies: {})",
        server.addr(),
        registry.policy_names().join(", ")
    );
    let envoy_server = match envoy {
        None => None,
        Some((_, None)) => {
            eprintln!("ratesync: --envoy-listen needs [[envoy.rules]] in the configuration to map descriptors to policies");
            return Ok(ExitCode::FAILURE);
        }
        Some((addr, Some(rules))) => {
            let n = rules.rules.len();
            let service =
                EnvoyService::new(registry.clone(), rules).map_err(ratesync::Error::Unsupported)?;
            match service.serve(addr, ServeLimits::default()).await {
                Ok(s) => {
                    println!(
                        "ratesync serve: Envoy's rate limit service on {} ({n} rules)",
                        s.addr()
                    );
                    Some(s)
                }
                Err(e) => {
                    eprintln!("ratesync: cannot listen on {addr}: {e}; is another process there?");
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
    };
    wait_for_stop().await;
    if let Some(s) = envoy_server {
        s.shutdown(GRACE).await;
    }
    eprintln!(
        "ratesync serve: stopping; the requests under way finish (up to {} s)",
        GRACE.as_secs()
    );
    if !server.shutdown(GRACE).await {
        eprintln!("ratesync serve: some requests did not finish in time and were cut off");
    }
    registry.close().await;
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_stop() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
