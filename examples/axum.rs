//! A small API behind two policies: the public page limited per client
//! address (behind a trusted proxy, the forwarded address counts), the API
//! limited per API key.
//!
//! `cargo run --example axum --features axum` serves on a free port, sends
//! itself a few requests, prints what came back and exits; with
//! `-- --serve 127.0.0.1:3000` it keeps serving (try
//! `curl -i localhost:3000/` and `curl -i -H 'X-Api-Key: k1' localhost:3000/api/items`).

use axum::routing::get;
use axum::Router;
use ratesync::http::{ClientIp, Identify, RateLimitLayer};
use std::io::{Read, Write};
use std::net::SocketAddr;

const CONFIG: &str = r#"
[policies.per_ip]
key = "ip"
windows = [{ window = "1m", limit = 3, name = "minute" }]

[policies.per_key]
key = "api_key"
windows = [
  { window = "1s", limit = 2, name = "burst" },
  { window = "1h", limit = 1000, name = "hourly" },
]
deny = ["leaked-key"]
"#;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let registry = ratesync::Registry::from_toml_str(CONFIG).await?;
    // Requests from the local proxy carry the client in X-Forwarded-For.
    let addresses = ClientIp::new(&["127.0.0.1"], Some(64))?;
    let per_ip = RateLimitLayer::new(registry.policy("per_ip")?)
        .identify(Identify::new().client_ip(addresses))
        .skip_preflight(true);
    let per_key = RateLimitLayer::new(registry.policy("per_key")?)
        .identify(Identify::new().api_key_header("X-Api-Key")?);
    let app = Router::new()
        .route("/", get(|| async { "hello\n" }))
        .route_layer(per_ip)
        .merge(
            Router::new()
                .route("/api/items", get(|| async { "[1, 2, 3]\n" }))
                .route_layer(per_key),
        );
    let serve = std::env::args().skip_while(|a| a != "--serve").nth(1);
    let listener = tokio::net::TcpListener::bind(serve.as_deref().unwrap_or("127.0.0.1:0")).await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });
    if serve.is_some() {
        println!("serving on http://{addr}");
        server.await??;
        return Ok(());
    }
    for (path, header) in [
        ("/", "X-Forwarded-For: 203.0.113.7"),
        ("/", "X-Forwarded-For: 203.0.113.7"),
        ("/", "X-Forwarded-For: 203.0.113.7"),
        ("/", "X-Forwarded-For: 203.0.113.7"),
        ("/", "X-Forwarded-For: 198.51.100.2"),
        ("/api/items", "X-Api-Key: k1"),
        ("/api/items", "X-Api-Key: k1"),
        ("/api/items", "X-Api-Key: k1"),
        ("/api/items", "X-Api-Key: leaked-key"),
    ] {
        let addr_copy = addr;
        let path_s = path.to_string();
        let header_s = header.to_string();
        let answer =
            tokio::task::spawn_blocking(move || get_once(addr_copy, &path_s, &header_s)).await??;
        println!("GET {path} ({header}): {answer}");
    }
    server.abort();
    Ok(())
}

/// One request on its own connection: the status line and the rate-limit
/// headers of the answer.
fn get_once(addr: SocketAddr, path: &str, header: &str) -> std::io::Result<String> {
    let mut s = std::net::TcpStream::connect(addr)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{header}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let mut lines = text.lines();
    let status = lines.next().unwrap_or_default().to_string();
    let shown: Vec<&str> = lines
        .take_while(|l| !l.is_empty())
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.starts_with("ratelimit") || l.starts_with("retry-after")
        })
        .collect();
    Ok(format!("{status}; {}", shown.join("; ")))
}
