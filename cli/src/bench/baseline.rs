//! The physical reference of each engine: the same decision, run by the
//! backend's own load tool or a raw client loop, with no ratesync in between.
//!
//! `ratesync bench --baseline` and the engine benches (`cargo bench`) quote
//! ratesync's decisions per second as a share of these figures, measured in
//! the same run so machine noise hits both alike. Each reference works on
//! its own key beside the limiter's, with the limiter's own parameters, so it
//! pays for exactly what one ratesync decision pays for.

use std::process::Command;
use std::time::{Duration, Instant};

/// A reference measurement.
#[derive(Clone, Debug)]
pub struct Reference {
    /// What ran, as one could type it again.
    pub tool: String,
    /// Decisions (or operations) per second.
    pub ops_per_second: f64,
    /// Compare-and-set conflicts per attempt, for CAS loops.
    pub conflict_rate: Option<f64>,
}

type Result<T> = std::result::Result<T, String>;

/// `redis-benchmark` running EVALSHA of the reserve script on `key` with
/// `args` (kind, p1, p2, max_wait) from `clients` connections, `calls` times.
/// The script is loaded first so EVALSHA finds it.
#[cfg(feature = "redis")]
pub async fn redis(
    url: &str,
    key: &str,
    args: [i64; 4],
    clients: usize,
    calls: u64,
) -> Result<Reference> {
    let source = ratesync::engine::redis::script_source("reserve")
        .ok_or("the reserve script is missing from this build")?;
    let client = redis::Client::open(url).map_err(|e| format!("Redis URL: {e}"))?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| format!("connecting to Redis: {e}"))?;
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(&source)
        .query_async(&mut conn)
        .await
        .map_err(|e| format!("SCRIPT LOAD: {e}"))?;
    let mut cmd = Command::new("redis-benchmark");
    cmd.args(["-u", url, "--csv", "-n", &calls.to_string()])
        .args(["-c", &clients.to_string()])
        .args(["EVALSHA", &sha, "1", key])
        .args(args.map(|a| a.to_string()));
    let text = run(
        &mut cmd,
        "redis-benchmark (Debian: apt install redis-tools)",
    )?;
    let row = text
        .lines()
        .find(|l| l.starts_with("\"EVALSHA"))
        .ok_or_else(|| format!("no result line from redis-benchmark in: {text}"))?;
    let ops = row
        .split("\",\"")
        .nth(1)
        .and_then(|v| v.trim_matches('"').parse().ok())
        .ok_or_else(|| format!("cannot read requests/s in {row}"))?;
    Ok(Reference {
        tool: format!(
            "redis-benchmark -c {clients} -n {calls} EVALSHA <reserve> 1 {key} {}",
            args.map(|a| a.to_string()).join(" ")
        ),
        ops_per_second: ops,
        conflict_rate: None,
    })
}

/// `pgbench -f` calling `schema.reserve_n(key, kind, p1, p2, max_wait, 1)` (what the engine calls) from
/// `clients` connections for `seconds`, prepared statements; with `keys` > 1
/// each call picks one of `key.k0` ... at random, as per-key limiters do.
#[cfg(feature = "postgres")]
pub fn postgres(
    url: &str,
    schema: &str,
    key: &str,
    keys: usize,
    args: [i64; 4],
    clients: usize,
    seconds: u32,
) -> Result<Reference> {
    let script = std::env::temp_dir().join(format!("ratesync-pgbench-{}.sql", std::process::id()));
    // pgbench would read the ':' of `prefix:key` as a variable inside the
    // literal, so it is spelled chr(58).
    let literal = key
        .split(':')
        .map(|p| format!("'{}'", p.replace('\'', "''")))
        .collect::<Vec<_>>()
        .join(" || chr(58) || ");
    let [kind, p1, p2, max_wait] = args;
    let (set, literal) = if keys > 1 {
        (
            format!("\\set k random(0, {})\n", keys - 1),
            format!("{literal} || '.k' || :k"),
        )
    } else {
        (String::new(), literal)
    };
    std::fs::write(
        &script,
        format!(
            "{set}SELECT granted, wait_us, slot_us FROM {schema}.reserve_n({literal}, {kind}, {p1}, {p2}, {max_wait}, 1);\n"
        ),
    )
    .map_err(|e| format!("writing {}: {e}", script.display()))?;
    let mut cmd = Command::new("pgbench");
    cmd.args(["-n", "-M", "prepared", "-f"])
        .arg(&script)
        .args([
            "-c",
            &clients.to_string(),
            "-j",
            &clients.min(2).to_string(),
        ])
        .args(["-T", &seconds.to_string()])
        .arg(url);
    let text = run(&mut cmd, "pgbench (Debian: apt install postgresql-contrib)");
    let _ = std::fs::remove_file(&script);
    let text = text?;
    let tps = text
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no tps line from pgbench in: {text}"))?;
    Ok(Reference {
        tool: format!("pgbench -n -M prepared -c {clients} -T {seconds} -f <SELECT {schema}.reserve_n('{key}', {kind}, {p1}, {p2}, {max_wait}, 1)>"),
        ops_per_second: tps,
        conflict_rate: None,
    })
}

/// What a hand-written CAS limiter does on JetStream KV: read the entry,
/// then update it with the revision read, again on a conflict; `tasks` tasks
/// on `keys` keys for `duration`. Counts successful updates per second.
#[cfg(feature = "nats")]
pub async fn nats(
    url: &str,
    bucket: &str,
    key_base: &str,
    keys: usize,
    tasks: usize,
    duration: Duration,
) -> Result<Reference> {
    use async_nats::jetstream::{self, kv};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    let client = async_nats::connect(url)
        .await
        .map_err(|e| format!("connecting to NATS at {url}: {e}"))?;
    let js = jetstream::new(client);
    let store = js
        .get_key_value(bucket)
        .await
        .map_err(|e| format!("opening KV bucket {bucket}: {e}"))?;
    let keys = keys.max(1);
    let (done, conflicts) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let until = Instant::now() + duration;
    let start = Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks.max(1) {
        let (store, done, conflicts) = (store.clone(), done.clone(), conflicts.clone());
        let key = format!("{key_base}.k{}", t % keys);
        handles.push(tokio::spawn(async move {
            while Instant::now() < until {
                let rev = match store.entry(&key).await {
                    Ok(e) => e.map_or(0, |e| e.revision),
                    Err(e) => return Err(format!("entry {key}: {e}")),
                };
                match store.update(&key, vec![1u8; 24].into(), rev).await {
                    Ok(_) => {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                        conflicts.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => return Err(format!("update {key}: {e}")),
                }
            }
            Ok(())
        }));
    }
    for h in handles {
        h.await.map_err(|e| format!("raw NATS task: {e}"))??;
    }
    let (n, c) = (
        done.load(Ordering::Relaxed) as f64,
        conflicts.load(Ordering::Relaxed) as f64,
    );
    Ok(Reference {
        tool: format!(
            "raw async-nats entry+update loop, {tasks} tasks on {keys} key(s) of bucket {bucket}"
        ),
        ops_per_second: n / start.elapsed().as_secs_f64(),
        conflict_rate: Some(if n + c > 0.0 { c / (n + c) } else { 0.0 }),
    })
}

/// The floor of an in-process limiter: GCRA on one atomic word per key,
/// updated by compare-and-swap from `threads` OS threads for `duration`.
/// Counts decisions (grants and refusals) per second.
pub fn memory(
    emission_ns: u64,
    burst: u32,
    keys: usize,
    threads: usize,
    duration: Duration,
) -> Reference {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    let epoch = Instant::now();
    let words: Arc<Vec<AtomicU64>> =
        Arc::new((0..keys.max(1)).map(|_| AtomicU64::new(0)).collect());
    let tolerance = emission_ns.saturating_mul(u64::from(burst.max(1) - 1));
    let conflicts = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..threads.max(1))
        .map(|t| {
            let (words, conflicts) = (words.clone(), conflicts.clone());
            std::thread::spawn(move || {
                let word = &words[t % words.len()];
                let mut n = 0u64;
                while epoch.elapsed() < duration {
                    let now = epoch.elapsed().as_nanos() as u64;
                    let mut tat = word.load(Ordering::Acquire);
                    loop {
                        let start = tat.max(now);
                        if start > now + tolerance {
                            break; // refused
                        }
                        match word.compare_exchange_weak(
                            tat,
                            start + emission_ns,
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        ) {
                            Ok(_) => break,
                            Err(seen) => {
                                conflicts.fetch_add(1, Ordering::Relaxed);
                                tat = seen;
                            }
                        }
                    }
                    n += 1;
                }
                n
            })
        })
        .collect();
    let total: u64 = handles.into_iter().map(|h| h.join().unwrap_or(0)).sum();
    let c = conflicts.load(Ordering::Relaxed) as f64;
    Reference {
        tool: format!("GCRA on an AtomicU64 per key, {threads} threads, {keys} key(s)"),
        ops_per_second: total as f64 / epoch.elapsed().as_secs_f64(),
        conflict_rate: Some(c / (total as f64 + c).max(1.0)),
    }
}

/// Runs a tool; its standard output, or an error naming it and what to do.
#[allow(dead_code)] // only the engines built in use it
fn run(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {what}: {e}; install it or drop --baseline"))?;
    if !out.status.success() {
        return Err(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
