//! The Redis engine on a Redis Cluster that the test starts itself: six
//! `redis-server` processes with `cluster-enabled yes` on free loopback ports
//! (three masters, a replica each), joined by `redis-cli --cluster create`.

use crate::scenarios::{self, port_open, Target};
use crate::support::*;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The url of the running cluster, for [`store`] (a `Target` holds a plain fn).
static URL: OnceLock<String> = OnceLock::new();

fn store(prefix: &str) -> String {
    format!(
        "[stores.s]\nengine = \"redis\"\nurl = \"{}\"\nkey_prefix = \"{prefix}\"\n",
        URL.get().expect("the cluster is started first")
    )
}

const CLUSTER: Target = Target {
    label: "redis cluster",
    store,
};

/// The cluster's processes, killed however the test ends.
struct Cluster {
    nodes: Vec<(u16, Child)>,
    dir: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.nodes {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `n` ports free now, each with its cluster bus port (+10000) free too.
fn free_ports(n: usize) -> Vec<u16> {
    let mut ports = Vec::new();
    let start = 20_000 + (std::process::id() % 20_000) as u16;
    for p in start..50_000 {
        let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(p) && free(p + 10_000) {
            ports.push(p);
            if ports.len() == n {
                break;
            }
        }
    }
    ports
}

fn start_node(dir: &std::path::Path, port: u16) -> Child {
    let node_dir = dir.join(port.to_string());
    std::fs::create_dir_all(&node_dir).unwrap();
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "1000"])
        .args(["--cluster-config-file", "nodes.conf"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(&node_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server starts")
}

fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn start_cluster() -> Cluster {
    let dir = scratch("redis-cluster");
    let ports = free_ports(6);
    assert_eq!(ports.len(), 6, "six free port pairs for the cluster");
    let mut cluster = Cluster {
        nodes: Vec::new(),
        dir: dir.clone(),
    };
    for &p in &ports {
        cluster.nodes.push((p, start_node(&dir, p)));
    }
    let t0 = Instant::now();
    while !ports.iter().all(|&p| port_open(p)) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "cluster nodes never listened"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let out = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-replicas", "1", "--cluster-yes"])
        .output()
        .expect("redis-cli --cluster create runs");
    assert!(
        out.status.success(),
        "cluster create failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for_ok(&ports);
    cluster
}

/// Waits until every live node says `cluster_state:ok`.
fn wait_for_ok(ports: &[u16]) {
    let t0 = Instant::now();
    while !ports
        .iter()
        .all(|&p| cli(p, &["cluster", "info"]).contains("cluster_state:ok"))
    {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the cluster never became ok"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The engine contract, multi-process accuracy and coalescing on a real
/// cluster, one cluster for all of it (starting one takes seconds).
#[test]
fn redis_cluster_holds_the_contract_and_the_limit() {
    if !have("redis-server") || !have("redis-cli") {
        skip_or_fail("the Redis Cluster test needs redis-server and redis-cli (Debian's redis-server package)");
        return;
    }
    let _serial = serial();
    let cluster = start_cluster();
    let seeds: Vec<String> = cluster.nodes[..3]
        .iter()
        .map(|(p, _)| format!("127.0.0.1:{p}"))
        .collect();
    URL.set(format!("redis+cluster://{}", seeds.join(",")))
        .expect("one cluster per run");
    scenarios::contract(&CLUSTER);
    scenarios::token_bucket_four_processes(&CLUSTER);
    scenarios::coalesced_hot_key_holds(&CLUSTER);
    scenarios::weighted_requests_keep_the_limit_in_tokens(&CLUSTER);
    scenarios::release_wakes_waiter(&CLUSTER);
    drop(cluster);
}
