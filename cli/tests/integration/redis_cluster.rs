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

/// Waits until every node says `cluster_state:ok` and every replica is in
/// sync with its master: the engine waits for a replica before answering,
/// and a replica still loading its first copy would hold every answer up.
fn wait_for_ok(ports: &[u16]) {
    let ready = |p: u16| {
        let repl = cli(p, &["info", "replication"]);
        let synced = if repl.contains("role:master") {
            repl.contains("connected_slaves:1") && repl.contains("state=online")
        } else {
            repl.contains("master_link_status:up") && repl.contains("master_sync_in_progress:0")
        };
        cli(p, &["cluster", "info"]).contains("cluster_state:ok") && synced
    };
    let t0 = Instant::now();
    while !ports.iter().all(|&p| ready(p)) {
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
    let described = describe();
    assert!(
        described.as_deref().is_ok_and(
            |d| d.contains("(cluster), 3 masters with 1, 1, 1 replica(s) (replica_acks 1)")
        ),
        "{described:?}"
    );
    println!(
        "redis cluster: check says {}",
        described.unwrap_or_default()
    );
    scenarios::contract(&CLUSTER);
    scenarios::token_bucket_four_processes(&CLUSTER);
    scenarios::coalesced_hot_key_holds(&CLUSTER);
    scenarios::weighted_requests_keep_the_limit_in_tokens(&CLUSTER);
    scenarios::release_wakes_waiter(&CLUSTER);
    let mut cluster = cluster;
    a_killed_master_neither_over_admits_nor_stops(&mut cluster);
    drop(cluster);
}

/// The master of the limiter's slot is killed mid-run (SIGKILL, no
/// goodbye): its replica is promoted after the node timeout, the workers'
/// decisions fail meanwhile (fail_closed) and then go on by themselves, the
/// killed node comes back as a replica, and over the whole run no interval
/// saw more than `burst + rate*t` grants: every grant answered had reached a
/// replica first (`replica_acks`, 1 by default on a cluster).
fn a_killed_master_neither_over_admits_nor_stops(cluster: &mut Cluster) {
    let (rate, burst, secs) = (200.0, 10, 20.0);
    let dir = scratch("cluster-failover");
    let prefix = unique_prefix("failover");
    let config = write_config(
        &dir,
        &format!(
            "{}\n[limiters.api]\nstore = \"s\"\nrate_per_second = {rate}\nburst = {burst}\n",
            store(&prefix)
        ),
    );
    // Every key of limiter `api` carries this hash tag, whatever the prefix.
    let tag = ratesync::StateKey::new("api").encoded().to_string();
    let any = cluster.nodes[0].0;
    let slot: u16 = cli(any, &["cluster", "keyslot", &tag])
        .trim()
        .parse()
        .unwrap();
    let master = master_of(any, slot);
    let mut opts = WorkerOpts::new("api", 8, secs);
    opts.mode = "acquire";
    let workers = spawn_workers(&config, &dir, 3, &opts, start_soon());
    std::thread::sleep(Duration::from_millis(1500 + 3000));
    let index = cluster
        .nodes
        .iter()
        .position(|(p, _)| *p == master)
        .unwrap();
    let (port, mut child) = cluster.nodes.remove(index);
    child.kill().unwrap();
    child.wait().unwrap();
    let live: Vec<u16> = cluster.nodes.iter().map(|(p, _)| *p).collect();
    let t0 = Instant::now();
    while master_of(live[0], slot) == master {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no replica was promoted"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let promoted_after = t0.elapsed();
    // The old master failing, or the promoted one without a replica yet:
    // `ratesync check` says so, whichever the node asked has heard of. It
    // asks one node, whose view may lag the failover by gossip (seen: "3
    // masters with 1, 1, 1 replicas" just after the promotion), so ask
    // again for a few seconds.
    let t2 = Instant::now();
    let described = loop {
        let d = describe();
        if d.is_err() || t2.elapsed() > Duration::from_secs(5) {
            break d;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        described
            .as_ref()
            .is_err_and(|e| e.contains("is failing")
                || e.contains("0 live replica(s) but replica_acks = 1")),
        "{described:?}"
    );
    println!(
        "redis cluster: check during the failover says {}",
        described.unwrap_err()
    );
    // The killed node returns and rejoins as a replica of the new master.
    cluster.nodes.push((port, start_node(&cluster.dir, port)));
    let t1 = Instant::now();
    let ports: Vec<u16> = cluster.nodes.iter().map(|(p, _)| *p).collect();
    wait_for_ok(&ports);
    let synced_after = t1.elapsed();
    let synced_at = now_us();
    let (grants, summaries) = collect_through_outage(workers);
    let r = check_bucket(&grants, rate, burst, secs);
    let after = grants.iter().filter(|g| g.slot_us > synced_at).count();
    let run_end = grants.iter().map(|g| g.slot_us).max().unwrap_or(synced_at);
    let errors: u64 = summaries
        .iter()
        .filter(|l| is_summary(l))
        .map(|s| summary_count(s, "errors"))
        .sum();
    println!(
        "redis cluster failover: master {master} of slot {slot} killed, replica promoted after {:.1} s; \
         {} grants, max over any interval {:.3} (allowed {burst}), {errors} errors during the failover, \
         the killed node back in sync as a replica {:.1} s after its restart, then {after} grants at {:.0}/s",
        promoted_after.as_secs_f64(),
        r.grants,
        r.max_over,
        synced_after.as_secs_f64(),
        after as f64 / ((run_end.saturating_sub(synced_at)) as f64 / 1e6).max(1e-3),
    );
    assert!(
        r.max_over <= f64::from(burst) + rate * 1e-6 + 1e-9,
        "over-admission across the failover: {} above rate*t",
        r.max_over
    );
    assert!(after > 0, "the workers never recovered after the failover");
    let _ = std::fs::remove_dir_all(&dir);
}

/// What the store says of itself (`ratesync check` prints it).
fn describe() -> Result<String, String> {
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let reg = ratesync::Registry::from_toml_str(&store(&unique_prefix("describe")))
            .await
            .map_err(|e| e.to_string())?;
        let engine = reg.store("s").expect("the store");
        engine.describe().await.map_err(|e| e.to_string())
    })
}

/// The port of the master serving `slot`, as node `port` sees it.
fn master_of(port: u16, slot: u16) -> u16 {
    for line in cli(port, &["cluster", "nodes"]).lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 9 || !f[2].contains("master") || f[2].contains("fail") {
            continue;
        }
        let serves = f[8..].iter().any(|range| {
            let (lo, hi) = range.split_once('-').unwrap_or((range, range));
            matches!((lo.parse::<u16>(), hi.parse::<u16>()), (Ok(lo), Ok(hi)) if lo <= slot && slot <= hi)
        });
        if serves {
            let addr = f[1].split('@').next().unwrap_or("");
            return addr
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
        }
    }
    0
}
