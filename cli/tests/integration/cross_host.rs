//! Many hosts, one limit: workers on three network namespaces per engine, with a slow link, a skewed clock and a killed holder.

use crate::hosts::Hosts;
use crate::support::*;
use std::time::{Duration, Instant};

/// One engine, as the cross-host scenarios see it.
pub struct Engine {
    pub label: &'static str,
    /// A `[stores.s]` table reaching the services at 127.0.0.1, under a prefix.
    pub store: fn(prefix: &str) -> String,
    /// Whether a host with a much longer round trip still gets grants on a
    /// hot key: true where the backend decides atomically (a script, a
    /// statement); false for compare-and-set, where the slow host's update
    /// always carries a revision someone else has already replaced.
    pub serves_slow_hosts: bool,
}

fn describe(hosts: &Hosts, netem: &Result<String, String>) -> String {
    let kind = if hosts.isolated() {
        format!(
            "{} network namespaces (veth + bridge 10.231.77.0/24)",
            hosts.len()
        )
    } else {
        format!(
            "{} plain processes: network namespaces unavailable ({})",
            hosts.len(),
            hosts.fallback_reason.as_deref().unwrap_or("unknown")
        )
    };
    match netem {
        Ok(how) => format!("{kind}, host 2 delayed ({how})"),
        Err(e) => format!("{kind}, no delay ({e})"),
    }
}

/// Three hosts share a token bucket of 200/s, burst 10, for 4 s. Host 1's
/// clock is 2 s fast (`clock_offset_ms`), host 2 sends everything 300 ms late
/// (`tc netem`). Nothing is over-admitted and the limit is used.
pub fn token_bucket(e: &Engine) {
    let hosts = Hosts::new(3);
    let netem = hosts.delay(2, 300);
    if let Err(reason) = &netem {
        skip_or_fail(&format!("the 300 ms delay of host 2: {reason}"));
    }
    let (rate, burst, secs) = (200.0, 10u32, 4.0);
    let prefix = unique_prefix("xhost-bucket");
    let dir = scratch("xhost-bucket");
    let start = start_soon() + 500;
    let mut workers = Vec::new();
    for i in 0..hosts.len() {
        let sub = dir.join(format!("host{i}"));
        std::fs::create_dir_all(&sub).unwrap();
        // Host 2's requests arrive 300 ms late and its 16 tasks queue on
        // one key (one decision per key in flight per process), so a
        // decision can wait ~5 s there: give that host's store the time,
        // since this scenario is about the limit, not the timeout (with the
        // default 2 s its decisions failed; workers' errors now fail a run).
        let skew = match i {
            1 => "clock_offset_ms = 2000\n",
            2 => "response_timeout = 10\n",
            _ => "",
        };
        let config = write_config(
            &sub,
            &format!(
                "{}{skew}[limiters.api]\nstore = \"s\"\nrate_per_second = {rate}\nburst = {burst}\n",
                (e.store)(&prefix).replace("127.0.0.1", hosts.service_host())
            ),
        );
        let mut opts = WorkerOpts::new("api", 16, secs);
        opts.prefix = hosts.prefix(i);
        workers.extend(spawn_workers(&config, &sub, 1, &opts, start));
    }
    let (grants, _) = collect(workers);
    let r = check_bucket(&grants, rate, burst, secs);
    let mut per_host: Vec<(u64, usize)> = Vec::new();
    for g in &grants {
        match per_host.iter_mut().find(|(w, _)| *w == g.worker) {
            Some((_, n)) => *n += 1,
            None => per_host.push((g.worker, 1)),
        }
    }
    println!(
        "{} cross-host token bucket {rate}/s burst {burst}, {secs} s, {}, host 1 clock +2 s: \
         {} grants (per host {:?}), max over any interval {:.3} (allowed {burst}), utilisation {:.1}%",
        e.label,
        describe(&hosts, &netem),
        r.grants,
        per_host.iter().map(|(_, n)| n).collect::<Vec<_>>(),
        r.max_over,
        r.utilisation * 100.0
    );
    drop(hosts);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        r.max_over <= f64::from(burst) + rate * 1e-6 + 1e-9,
        "over-admission across hosts: {}",
        r.max_over
    );
    assert!(
        r.utilisation >= 0.95,
        "utilisation {:.1}%",
        r.utilisation * 100.0
    );
    if e.serves_slow_hosts {
        assert_eq!(per_host.len(), 3, "a host was never granted");
    }
}

/// Three hosts share `max_concurrent = 5` (lease 2 s); host 0's worker is
/// killed with SIGKILL mid-run while holding slots. The cap holds, the slots
/// come back, and none is held at the end.
pub fn concurrency_with_killed_host(e: &Engine) {
    let hosts = Hosts::new(3);
    let lease = 3.0;
    let secs = 5.0;
    let prefix = unique_prefix("xhost-conc");
    let dir = scratch("xhost-conc");
    let start = start_soon() + 500;
    let mut workers = Vec::new();
    let mut config0 = None;
    for i in 0..hosts.len() {
        let sub = dir.join(format!("host{i}"));
        std::fs::create_dir_all(&sub).unwrap();
        let config = write_config(
            &sub,
            &format!(
                "{}[limiters.pool]\nstore = \"s\"\nmax_concurrent = 5\nlease_seconds = {lease}\n",
                (e.store)(&prefix).replace("127.0.0.1", hosts.service_host())
            ),
        );
        config0.get_or_insert(config.clone());
        let mut opts = WorkerOpts::new("pool", 8, secs);
        opts.hold_ms = 20.0;
        opts.prefix = hosts.prefix(i);
        opts.holds = true;
        workers.extend(spawn_workers(&config, &sub, 1, &opts, start));
    }
    // Kill host 0's worker 1.5 s into the run, while it holds slots.
    let until_kill = Duration::from_millis(start.saturating_sub(now_us() / 1000) + 1500);
    std::thread::sleep(until_kill);
    workers[0].child.kill().expect("SIGKILL host 0's worker");
    let killed_at = Instant::now();
    let killed_us = now_us();
    let killed_holds = workers[0].holds.clone().expect("holds file");
    let killed_pid = u64::from(workers[0].child.id());
    let (mut grants, _) = collect_survivors(workers);
    let after_kill = grants.iter().filter(|g| g.held_from_us > killed_us).count();
    // The killed worker's holds count too: up to the kill for one it held.
    let theirs = read_holds(&killed_holds, killed_pid, killed_us);
    let killed_count = theirs.len();
    grants.extend(theirs);
    let most = max_overlap(&grants);
    // Every lease of the killed worker has run out by now (the run outlasts it).
    let wait_leak = Duration::from_secs_f64(lease + 0.5).saturating_sub(killed_at.elapsed());
    std::thread::sleep(wait_leak);
    let config0 = config0.expect("three hosts");
    // Read from this machine, not through a namespace.
    let text = std::fs::read_to_string(&config0)
        .unwrap()
        .replace(crate::hosts::SERVICE_IP, "127.0.0.1");
    let left = holders_in_store(&text, "pool");
    println!(
        "{} cross-host max_concurrent 5 (lease {lease} s), {}, host 0 SIGKILLed at 1.5 s: \
         {} grants ({killed_count} of them the killed host's, {after_kill} on the survivors after the kill), \
         most overlapping {most} (allowed 5), slots leaked {left}",
        e.label,
        describe(&hosts, &Err("none in this scenario".into())),
        grants.len()
    );
    drop(hosts);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(most <= 5, "{most} overlapping holds across hosts");
    assert!(
        killed_count > 0,
        "the killed host recorded no hold before the kill"
    );
    assert!(
        after_kill > 0,
        "the surviving hosts were never granted after the kill"
    );
    assert_eq!(left, 0, "slots still held at the end");
}
