//! The decision service beside direct library calls, in one run: policy
//! checks of one policy on the memory engine made by `policy.check` in
//! this process and by `GET /v1/check` over kept-alive HTTP/1.1
//! connections to a `DecisionService` on loopback (in this process too, so
//! both share the machine's cores alike): one caller at a time (the
//! latency a decision costs; the goal: the service adds at most 100 µs to
//! the p50), and 16 at once on 16 keys (the rate; the goal: at least
//! 30,000 checks/s through the service, where at 16 in flight the
//! latency is mostly waiting in turn). Prints checks/s, p50 and p99,
//! medians of the rounds.
//!
//! Run with `cargo bench --bench serve --features serve`.

mod common;

use common::{listing_only, median, ROUNDS};
use ratesync::http::{DecisionService, ServeLimits};
use ratesync::policy::Request;
use ratesync::Registry;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const TASKS: usize = 16;
const CALLS: usize = 40_000;

/// (checks/s, p50, p99) of one round.
type Round = (f64, Duration, Duration);

fn summary(mut took: Vec<Duration>, elapsed: Duration) -> Round {
    took.sort();
    let at = |q: f64| took[((took.len() as f64 * q) as usize).min(took.len() - 1)];
    (took.len() as f64 / elapsed.as_secs_f64(), at(0.5), at(0.99))
}

async fn direct(registry: &Registry, tasks: usize) -> Round {
    let policy = registry.policy("p").expect("policy");
    let start = Instant::now();
    let tasks: Vec<_> = (0..tasks)
        .map(|i| {
            let policy = policy.clone();
            tokio::spawn(async move {
                let req = Request::new().api_key(format!("k{i}"));
                let mut took = Vec::with_capacity(CALLS / TASKS);
                for _ in 0..CALLS / TASKS {
                    let t = Instant::now();
                    let d = policy.check(&req).await.expect("the store answers");
                    took.push(t.elapsed());
                    assert!(d.allowed);
                }
                took
            })
        })
        .collect();
    let mut took = Vec::new();
    for t in tasks {
        took.extend(t.await.expect("bench task"));
    }
    summary(took, start.elapsed())
}

/// One answer read off a kept-alive connection: its status.
async fn read_answer(r: &mut BufReader<tokio::net::TcpStream>) -> u16 {
    let mut line = String::new();
    r.read_line(&mut line).await.expect("status line");
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut length = 0;
    loop {
        line.clear();
        r.read_line(&mut line).await.expect("header");
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some(v) = l.to_ascii_lowercase().strip_prefix("content-length: ") {
            length = v.parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    r.read_exact(&mut body).await.expect("body");
    status
}

async fn over_http(addr: SocketAddr, tasks: usize) -> Round {
    let start = Instant::now();
    let tasks: Vec<_> = (0..tasks)
        .map(|i| {
            tokio::spawn(async move {
                let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
                stream.set_nodelay(true).expect("nodelay");
                let mut r = BufReader::new(stream);
                let request =
                    format!("GET /v1/check?policy=p&key=k{i} HTTP/1.1\r\nHost: bench\r\n\r\n");
                let mut took = Vec::with_capacity(CALLS / TASKS);
                for _ in 0..CALLS / TASKS {
                    let t = Instant::now();
                    r.get_mut()
                        .write_all(request.as_bytes())
                        .await
                        .expect("send");
                    let status = read_answer(&mut r).await;
                    took.push(t.elapsed());
                    assert_eq!(status, 200);
                }
                took
            })
        })
        .collect();
    let mut took = Vec::new();
    for t in tasks {
        took.extend(t.await.expect("bench task"));
    }
    summary(took, start.elapsed())
}

fn main() {
    if listing_only() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    rt.block_on(async {
        let registry = Registry::from_toml_str(
            "[policies.p]\nkey = \"api_key\"\nwindows = [{ window = \"1s\", limit = 4000000000, algorithm = \"token_bucket\" }]\n",
        )
        .await
        .expect("registry");
        let limits = ServeLimits {
            max_connections: 64,
            header_timeout: Duration::from_secs(5),
            connection_lifetime: Duration::from_secs(3600),
        };
        let server = DecisionService::new(registry.clone(), &Default::default())
            .expect("service")
            .serve("127.0.0.1:0".parse().expect("address"), limits)
            .await
            .expect("listens");
        direct(&registry, TASKS).await;
        over_http(server.addr(), TASKS).await;
        let med = |v: &[Round]| {
            (
                median(v.iter().map(|r| r.0).collect()),
                median(v.iter().map(|r| r.1.as_secs_f64() * 1e6).collect()),
                median(v.iter().map(|r| r.2.as_secs_f64() * 1e6).collect()),
            )
        };
        println!("memory engine, one policy, medians of {ROUNDS} rounds");
        println!("callers  by                   checks/s      p50 µs    p99 µs");
        for tasks in [1, TASKS] {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            for _ in 0..ROUNDS {
                a.push(direct(&registry, tasks).await);
                b.push(over_http(server.addr(), tasks).await);
            }
            let (da, dp50, dp99) = med(&a);
            let (sa, sp50, sp99) = med(&b);
            println!("{tasks:>7}  policy.check     {da:>12.0}  {dp50:>10.1}  {dp99:>8.1}");
            println!("{tasks:>7}  GET /v1/check    {sa:>12.0}  {sp50:>10.1}  {sp99:>8.1}");
            println!("         the service adds {:.1} µs to the p50", sp50 - dp50);
        }
    });
}
