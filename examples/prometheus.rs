//! Serves a registry's metrics on `GET /metrics` (OpenTelemetry with the
//! Prometheus exporter) while a workload runs against it, then prints what a
//! scrape returns. Run with `cargo run --example prometheus --features prometheus`; set
//! `RATESYNC_METRICS_ADDR` (default 127.0.0.1:9464) and `RATESYNC_RUN_SECONDS`
//! (default 5), and point Prometheus at the address to watch it live.

use ratesync::telemetry::PrometheusExporter;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let registry = ratesync::Registry::from_file("config.toml").await?;
    let addr = std::env::var("RATESYNC_METRICS_ADDR")
        .unwrap_or_else(|_| "127.0.0.1:9464".into())
        .parse()
        .map_err(|e| format!("RATESYNC_METRICS_ADDR: {e}"))?;
    let seconds = match std::env::var("RATESYNC_RUN_SECONDS") {
        Ok(v) => ratesync::duration::parse_seconds(&v, ratesync::duration::Range::POSITIVE)
            .map_err(|e| format!("RATESYNC_RUN_SECONDS: {e}"))?
            .as_secs_f64(),
        Err(_) => 5.0,
    };
    let server = PrometheusExporter::new(&registry)?.serve(addr).await?;
    println!(
        "serving http://{}/metrics for {seconds} s while 24 tasks hammer `api` and `jobs`",
        server.addr()
    );

    // Demand well above `api`'s 100/s with at most 8 in flight, and above the
    // 3 `jobs` slots, so waits, timeouts and cap hits all show.
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for i in 0..24 {
        let name = if i % 3 == 0 { "jobs" } else { "api" };
        let limiter = registry.limiter(name)?;
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until {
                match limiter.acquire_timeout(Duration::from_millis(200)).await {
                    Ok(permit) => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        drop(permit);
                    }
                    Err(e) if e.is_timeout() => {}
                    Err(e) => eprintln!("{e}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }

    // Scrape ourselves, the way Prometheus would.
    let mut stream = tokio::net::TcpStream::connect(server.addr()).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await?;
    for line in body.lines().filter(|l| {
        l.starts_with("ratesync_") && !l.contains("_bucket") && l.contains("limiter=\"api\"")
    }) {
        println!("{line}");
    }
    Ok(())
}
