//! Simulated hosts: network namespaces joined to the service host over veth pairs, with faults.
//!
//! Where the suite runs as root and `ip netns` works, [`Hosts::new`] makes
//! `n` namespaces, each with one veth into a bridge on this machine. The
//! bridge and the namespaces share a private /24 used nowhere else. The
//! services listen on 127.0.0.1 only, so a forwarder in the test process
//! relays the bridge address's service ports to them: a worker in a
//! namespace reaches Redis, Postgres and NATS over its own interface, and
//! `tc netem` on that interface delays that host alone. Everything is
//! removed on drop, also when a test fails; names carry the test's process
//! id, and leftovers of an earlier run with the same names are removed first.
//!
//! Where namespaces are unavailable, [`Hosts::new`] returns plain local
//! "hosts" and says so.

use std::collections::HashMap;
use std::net::IpAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The bridge's address: the services as the namespaces see them.
pub const SERVICE_IP: &str = "10.231.77.1";

/// The ports relayed from the bridge address to 127.0.0.1.
pub const SERVICE_PORTS: [u16; 4] = [6379, 5432, 4222, 4223];

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A set of hosts workers run on.
pub struct Hosts {
    /// Namespace names, or empty when the hosts are plain local processes.
    namespaces: Vec<String>,
    bridge: String,
    veths: Vec<String>,
    stop_forwarding: Arc<AtomicBool>,
    forwarder: Option<std::thread::JoinHandle<()>>,
    /// Hosts whose traffic the forwarder delays (where netem is unavailable).
    delayed: Arc<Mutex<HashMap<IpAddr, Duration>>>,
    /// Why namespaces are not used, when they are not.
    pub fallback_reason: Option<String>,
    count: usize,
}

impl Hosts {
    /// `n` hosts: namespaces where possible, plain processes otherwise.
    pub fn new(n: usize) -> Hosts {
        let tag = std::process::id() % 100_000;
        let mut hosts = Hosts {
            namespaces: Vec::new(),
            bridge: format!("rsbr{tag}"),
            veths: Vec::new(),
            stop_forwarding: Arc::new(AtomicBool::new(false)),
            forwarder: None,
            delayed: Arc::new(Mutex::new(HashMap::new())),
            fallback_reason: None,
            count: n,
        };
        let is_root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        if !is_root {
            hosts.fallback_reason = Some("not running as root".into());
            crate::support::skip_or_fail(
                "network-namespace hosts need root; running plain processes instead",
            );
            return hosts;
        }
        if let Err(e) = hosts.build(n, tag) {
            hosts.teardown();
            hosts.namespaces.clear();
            hosts.fallback_reason = Some(e);
        }
        if let Some(reason) = &hosts.fallback_reason {
            // Plain processes share one network stack: not the hosts the
            // cross-host tests promise.
            crate::support::skip_or_fail(&format!(
                "network-namespace hosts unavailable ({reason}); running {n} plain processes instead"
            ));
        }
        hosts
    }

    fn build(&mut self, n: usize, tag: u32) -> Result<(), String> {
        let _ = run(&["ip", "link", "del", &self.bridge]);
        run(&["ip", "link", "add", &self.bridge, "type", "bridge"])?;
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{SERVICE_IP}/24"),
            "dev",
            &self.bridge,
        ])?;
        run(&["ip", "link", "set", &self.bridge, "up"])?;
        for i in 0..n {
            let ns = format!("rs{tag}h{i}");
            let outside = format!("rsv{tag}h{i}");
            let _ = run(&["ip", "netns", "del", &ns]);
            let _ = run(&["ip", "link", "del", &outside]);
            run(&["ip", "netns", "add", &ns])?;
            self.namespaces.push(ns.clone());
            run(&[
                "ip", "link", "add", &outside, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            self.veths.push(outside.clone());
            run(&["ip", "link", "set", &outside, "master", &self.bridge])?;
            run(&["ip", "link", "set", &outside, "up"])?;
            let addr = format!("10.231.77.{}/24", 10 + i);
            run(&[
                "ip", "netns", "exec", &ns, "ip", "addr", "add", &addr, "dev", "eth0",
            ])?;
            run(&[
                "ip", "netns", "exec", &ns, "ip", "link", "set", "eth0", "up",
            ])?;
            run(&["ip", "netns", "exec", &ns, "ip", "link", "set", "lo", "up"])?;
        }
        self.start_forwarder()?;
        Ok(())
    }

    /// Relays SERVICE_IP:port to 127.0.0.1:port for every service port.
    fn start_forwarder(&mut self) -> Result<(), String> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let mut listeners = Vec::new();
        for port in SERVICE_PORTS {
            let l = rt
                .block_on(tokio::net::TcpListener::bind((SERVICE_IP, port)))
                .map_err(|e| format!("forwarder cannot listen on {SERVICE_IP}:{port}: {e}"))?;
            listeners.push((port, l));
        }
        let stop = self.stop_forwarding.clone();
        let delayed = self.delayed.clone();
        self.forwarder = Some(std::thread::spawn(move || {
            rt.block_on(async move {
                for (port, listener) in listeners {
                    let delayed = delayed.clone();
                    tokio::spawn(async move {
                        while let Ok((inbound, peer)) = listener.accept().await {
                            let delay = delayed
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .get(&peer.ip())
                                .copied();
                            tokio::spawn(forward(inbound, port, delay));
                        }
                    });
                }
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            });
        }));
        Ok(())
    }

    /// Whether the hosts are network namespaces.
    pub fn isolated(&self) -> bool {
        !self.namespaces.is_empty()
    }

    /// How many hosts.
    pub fn len(&self) -> usize {
        self.count
    }

    /// The address services have as host `i` sees them.
    pub fn service_host(&self) -> &'static str {
        if self.isolated() {
            SERVICE_IP
        } else {
            "127.0.0.1"
        }
    }

    /// The command prefix that runs a program on host `i`.
    pub fn prefix(&self, i: usize) -> Vec<String> {
        match self.namespaces.get(i) {
            Some(ns) => vec!["ip".into(), "netns".into(), "exec".into(), ns.clone()],
            None => Vec::new(),
        }
    }

    /// Adds `delay_ms` of latency to everything host `i` sends: with `tc
    /// netem` on its interface, or, where the kernel has no netem (no
    /// `sch_netem` module, as in containers), in the forwarder, which then
    /// holds each chunk the host sends for `delay_ms` before passing it on.
    /// Returns how; Err (to be reported, not hidden) where neither works.
    pub fn delay(&self, i: usize, delay_ms: u32) -> Result<String, String> {
        let Some(ns) = self.namespaces.get(i) else {
            return Err("hosts are plain processes; no interface to delay".into());
        };
        let netem = run(&[
            "ip",
            "netns",
            "exec",
            ns,
            "tc",
            "qdisc",
            "add",
            "dev",
            "eth0",
            "root",
            "netem",
            "delay",
            &format!("{delay_ms}ms"),
        ]);
        match netem {
            Ok(()) => Ok(format!("tc netem delay {delay_ms}ms")),
            Err(e) => {
                let ip: IpAddr = format!("10.231.77.{}", 10 + i)
                    .parse()
                    .map_err(|_| "bad address".to_string())?;
                self.delayed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(ip, Duration::from_millis(u64::from(delay_ms)));
                Ok(format!(
                    "{delay_ms} ms added by the forwarder to the host's traffic; tc netem unavailable: {e}"
                ))
            }
        }
    }

    fn teardown(&mut self) {
        self.stop_forwarding.store(true, Ordering::Relaxed);
        if let Some(f) = self.forwarder.take() {
            let _ = f.join();
        }
        for ns in &self.namespaces {
            let _ = run(&["ip", "netns", "del", ns]);
        }
        for v in &self.veths {
            let _ = run(&["ip", "link", "del", v]);
        }
        let _ = run(&["ip", "link", "del", &self.bridge]);
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        if self.isolated() || self.forwarder.is_some() {
            self.teardown();
        }
    }
}

/// Relays one connection to the service on 127.0.0.1:`port`.
async fn forward(mut inbound: tokio::net::TcpStream, port: u16, delay: Option<Duration>) {
    let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    match delay {
        None => {
            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
        }
        Some(d) => relay_delayed(inbound, outbound, d).await,
    }
}

/// Copies both ways, holding what the host sends for `delay` first, in order.
async fn relay_delayed(
    inbound: tokio::net::TcpStream,
    outbound: tokio::net::TcpStream,
    delay: Duration,
) {
    let (mut in_read, mut in_write) = inbound.into_split();
    let (mut out_read, mut out_write) = outbound.into_split();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n) = in_read.read(&mut buf).await {
            if n == 0
                || tx
                    .send((tokio::time::Instant::now() + delay, buf[..n].to_vec()))
                    .is_err()
            {
                break;
            }
        }
    };
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if out_write.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = out_write.shutdown().await;
    };
    let back = async move {
        let _ = tokio::io::copy(&mut out_read, &mut in_write).await;
    };
    tokio::join!(reader, writer, back);
}
