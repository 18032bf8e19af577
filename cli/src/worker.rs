//! `ratesync worker`: one process of a multi-process load test.
//!
//! Several workers, started together on one or many hosts, hammer one shared
//! limiter and write every grant as a JSON line. A checker (the integration
//! tests, `ratesync bench`) merges the files and verifies the invariants of
//! docs/design.md ("Promises") over all of them. The worker therefore records facts, never
//! verdicts: the backend's slot time of each grant, when the caller held it
//! on the local clock, and how many holders a shared counter saw.

use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use ratesync::policy::{Policy, Request};
use ratesync::{Limiter, Registry};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

/// Errors of the CLI: the library's, or I/O on the worker's files.
pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// How a worker asks for permits.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Mode {
    /// `acquire()`: reserve the earliest slot and sleep until it.
    Acquire,
    /// `try_acquire()`: never wait; ask again after a refusal.
    Try,
}

/// Arguments of `ratesync worker`.
#[derive(Args, Debug)]
pub struct WorkerArgs {
    /// The limiter's name in the configuration (with `--policy`, the policy's).
    pub limiter: String,
    /// Check a policy instead: each call is `policy.check` of a request
    /// whose key is `--key` (or `k0`, `k1`, ... with `--keys`), never
    /// waiting; a grant is an admitted request, its slot the store's time
    /// of the decision.
    #[arg(long)]
    pub policy: bool,
    /// Use this per-key limiter of it.
    #[arg(long)]
    pub key: Option<String>,
    /// Spread the tasks over this many keys (`k0`, `k1`, ...) instead.
    #[arg(long, conflicts_with = "key")]
    pub keys: Option<usize>,
    /// Concurrent tasks in this process.
    #[arg(long, default_value_t = 16)]
    pub tasks: usize,
    /// Seconds to run; a pending acquire is abandoned at the end.
    #[arg(long, default_value_t = 5.0, value_parser = crate::seconds_arg)]
    pub duration: f64,
    /// How permits are requested.
    #[arg(long, value_enum, default_value_t = Mode::Acquire)]
    pub mode: Mode,
    /// After a refused `try_acquire`, sleep this long (milliseconds; 0 asks
    /// again at once, which measures the engine's decision rate).
    #[arg(long, default_value_t = 1.0, value_parser = crate::millis_arg)]
    pub backoff_ms: f64,
    /// Hold each permit this long before releasing it (milliseconds).
    #[arg(long, default_value_t = 0.0, value_parser = crate::millis_arg)]
    pub hold_ms: f64,
    /// Bound each acquire (seconds) instead of the limiter's own timeout.
    #[arg(long, value_parser = crate::seconds_arg)]
    pub timeout: Option<f64>,
    /// Each request's weight: `acquire_n(cost)` / `try_acquire_n(cost)`.
    #[arg(long, default_value_t = 1)]
    pub cost: u32,
    /// Start at this unix time (milliseconds), so workers begin together.
    #[arg(long)]
    pub start_at_ms: Option<u64>,
    /// Record at most this many grants in the output (each is ~90 bytes);
    /// the rest are still counted, and binned in the summary.
    #[arg(long)]
    pub max_records: Option<usize>,
    /// Write grants here as JSON lines (default: standard output).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Also append each hold to this file as it happens (a `start` line when
    /// the permit is granted, an `end` line when it is released), so a
    /// checker sees the holds of a worker that is killed before it writes `--out`.
    #[arg(long)]
    pub holds: Option<PathBuf>,
    /// A file holding a holders counter shared by all workers on this host:
    /// incremented under an exclusive lock after each grant, decremented
    /// before the release. Each grant records the value it saw.
    #[arg(long)]
    pub counter: Option<PathBuf>,
}

/// One grant, as written to the output.
struct Grant {
    /// The backend's time of the slot (µs since the epoch); the local time of
    /// the grant when the engine reports none.
    slot_us: u64,
    /// Local time when `acquire` returned and when release began (µs).
    held_from_us: u64,
    held_to_us: u64,
    /// Holders the shared counter saw, this one included (0 without a counter).
    holders: i64,
    key: usize,
}

struct Tally {
    grants: Vec<Grant>,
    /// Every grant, recorded or not.
    granted: u64,
    /// Grants per 100 ms of slot time, by absolute bin (slot_us / 100,000).
    bins: BTreeMap<u64, u64>,
    refusals: u64,
    errors: u64,
    /// Of `errors`, decisions denied because compare-and-set retries ran out
    /// (NATS on a hot key, fail_closed): contention, not a broken store.
    cas_exhausted: u64,
    /// Every call's latency, grant or refusal (µs).
    latency_us: Histogram<u64>,
    /// Each granted acquire's lateness past its reserved slot (µs).
    overshoot_us: Histogram<u64>,
}

impl Tally {
    fn new() -> Self {
        // Three significant digits from 1 µs to an hour.
        let h = || Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds");
        Self {
            grants: Vec::new(),
            granted: 0,
            bins: BTreeMap::new(),
            refusals: 0,
            errors: 0,
            cas_exhausted: 0,
            latency_us: h(),
            overshoot_us: h(),
        }
    }

    fn absorb(&mut self, other: Tally) -> Result<()> {
        self.grants.extend(other.grants);
        self.granted += other.granted;
        for (bin, n) in other.bins {
            *self.bins.entry(bin).or_default() += n;
        }
        self.refusals += other.refusals;
        self.errors += other.errors;
        self.cas_exhausted += other.cas_exhausted;
        self.latency_us.add(&other.latency_us)?;
        self.overshoot_us.add(&other.overshoot_us)?;
        Ok(())
    }
}

/// Bins as `[[bin, count], ...]`.
fn bins_json(bins: &BTreeMap<u64, u64>) -> String {
    let pairs: Vec<String> = bins.iter().map(|(b, n)| format!("[{b},{n}]")).collect();
    format!("[{}]", pairs.join(","))
}

/// A histogram as `[[value, count], ...]` of its recorded values, which a
/// reader merges exactly (to the histogram's precision).
fn histogram_json(h: &Histogram<u64>) -> String {
    let pairs: Vec<String> = h
        .iter_recorded()
        .map(|v| format!("[{},{}]", v.value_iterated_to(), v.count_at_value()))
        .collect();
    format!("[{}]", pairs.join(","))
}

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Adds `delta` to the counter in `path` under an exclusive lock; returns the new value.
fn bump(path: &Path, delta: i64) -> std::io::Result<i64> {
    let mut f = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    f.lock()?;
    let mut text = String::new();
    f.read_to_string(&mut text)?;
    let value = text.trim().parse::<i64>().unwrap_or(0) + delta;
    f.set_len(0)?;
    f.seek(SeekFrom::Start(0))?;
    write!(f, "{value}")?;
    f.unlock()?;
    Ok(value)
}

async fn bump_async(path: &Option<PathBuf>, delta: i64) -> Result<i64> {
    let Some(path) = path.clone() else {
        return Ok(0);
    };
    let shown = path.display().to_string();
    let value = tokio::task::spawn_blocking(move || bump(&path, delta))
        .await?
        .map_err(|e| format!("counter file {shown}: {e}"))?;
    Ok(value)
}

/// What a worker's tasks ask: limiters (one per key), or a policy and one
/// request per key.
enum Target {
    Limiters(Vec<Limiter>),
    Policy(Policy, Vec<Request>),
}

impl Target {
    fn keys(&self) -> usize {
        match self {
            Target::Limiters(l) => l.len(),
            Target::Policy(_, r) => r.len(),
        }
    }
}

/// What a granted call holds: a permit to release, or a policy's admission.
enum Got {
    Permit(ratesync::Permit),
    Admitted { at_us: Option<u64> },
}

async fn run_task(
    target: Arc<Target>,
    index: usize,
    args: Arc<WorkerArgs>,
    deadline: Instant,
) -> Result<Tally> {
    let mut tally = Tally::new();
    let holds = match &args.holds {
        Some(path) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("--holds {}: {e}", path.display()))?,
        ),
        None => None,
    };
    // One line, one append (atomic for lines this short), so tasks and a
    // kill never interleave half lines.
    let note = |line: String| {
        if let Some(mut f) = holds.as_ref() {
            let _ = f.write_all(line.as_bytes());
        }
    };
    let key = index % target.keys();
    let hold = Duration::from_secs_f64(args.hold_ms.max(0.0) / 1e3);
    let backoff = Duration::from_secs_f64(args.backoff_ms.max(0.0) / 1e3);
    let max_per_task = args.max_records.map(|m| m.div_ceil(args.tasks.max(1)));
    let mut calls = 0u32;
    loop {
        let asked = Instant::now();
        if asked >= deadline {
            break;
        }
        calls = calls.wrapping_add(1);
        if calls.is_multiple_of(32) {
            // An engine that answers without awaiting (memory) would let
            // one task keep its thread for the whole run; share it.
            tokio::task::yield_now().await;
        }
        let attempt = async {
            let limiter = match &*target {
                Target::Policy(p, requests) => {
                    let d = p.check(&requests[key]).await?;
                    return Ok(d.allowed.then_some(Got::Admitted {
                        at_us: d.decided_at_us,
                    }));
                }
                Target::Limiters(l) => &l[key],
            };
            let permit = match args.mode {
                Mode::Try => limiter.try_acquire_n(args.cost).await,
                Mode::Acquire => match args.timeout {
                    Some(t) => limiter
                        .acquire_n_timeout(args.cost, Duration::from_secs_f64(t.max(0.0)))
                        .await
                        .map(Some),
                    None => limiter.acquire_n(args.cost).await.map(Some),
                },
            };
            permit.map(|p| p.map(Got::Permit))
        };
        let outcome = match (args.mode, &*target) {
            // Never waits: no deadline timer to arm on every call.
            (Mode::Try, _) | (_, Target::Policy(..)) => attempt.await,
            (Mode::Acquire, _) => tokio::select! {
                r = attempt => r,
                _ = tokio::time::sleep_until(deadline) => break,
            },
        };
        let latency = u64::try_from(asked.elapsed().as_micros()).unwrap_or(u64::MAX);
        tally.latency_us.saturating_record(latency.max(1));
        let got = match outcome {
            Ok(Some(g)) => g,
            Ok(None) => {
                tally.refusals += 1;
                if !backoff.is_zero() {
                    tokio::time::sleep(backoff).await;
                }
                continue;
            }
            Err(e) if e.is_timeout() => {
                tally.refusals += 1;
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "worker: acquire failed");
                tally.errors += 1;
                if matches!(&e, ratesync::Error::Backend { source, .. } if source.cas_exhausted) {
                    tally.cas_exhausted += 1;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let held_from_us = unix_us();
        note(format!("{{\"start\":{held_from_us},\"task\":{index}}}\n"));
        if let (Mode::Acquire, Got::Permit(permit)) = (args.mode, &got) {
            let late = u64::try_from(permit.overshoot().as_micros()).unwrap_or(u64::MAX);
            tally.overshoot_us.saturating_record(late);
        }
        let holders = bump_async(&args.counter, 1).await?;
        if !hold.is_zero() {
            tokio::time::sleep(hold).await;
        }
        bump_async(&args.counter, -1).await?;
        // Without a hold or a counter the permit is released at once.
        let held_to_us = if hold.is_zero() && args.counter.is_none() {
            held_from_us
        } else {
            unix_us()
        };
        note(format!(
            "{{\"end\":{held_to_us},\"start\":{held_from_us},\"task\":{index}}}\n"
        ));
        let slot_us = match &got {
            Got::Permit(p) => p.slot_unix_us(),
            Got::Admitted { at_us } => *at_us,
        }
        .unwrap_or(held_from_us);
        tally.granted += 1;
        *tally.bins.entry(slot_us / 100_000).or_default() += 1;
        if max_per_task.is_none_or(|max| tally.grants.len() < max) {
            tally.grants.push(Grant {
                slot_us,
                held_from_us,
                held_to_us,
                holders,
                key,
            });
        }
        if let Got::Permit(permit) = got {
            if let Err(e) = permit.release().await {
                tracing::warn!(error = %e, "worker: release failed");
                tally.errors += 1;
            }
        }
    }
    Ok(tally)
}

/// Runs the worker; the summary goes to standard error as one JSON object.
pub async fn run(registry: Registry, args: WorkerArgs) -> Result<()> {
    let names: Vec<String> = match (&args.key, args.keys) {
        (Some(k), _) => vec![k.clone()],
        (None, Some(n)) => (0..n.max(1)).map(|i| format!("k{i}")).collect(),
        (None, None) => Vec::new(),
    };
    let (target, parent) = if args.policy {
        let policy = registry.policy(&args.limiter)?;
        let names = if names.is_empty() {
            vec![String::new()]
        } else {
            names
        };
        let requests = names
            .iter()
            .map(|k| policy.request_for(k).cost(args.cost))
            .collect();
        (Target::Policy(policy, requests), None)
    } else {
        let parent = registry.limiter(&args.limiter)?;
        let limiters = if names.is_empty() {
            vec![parent.clone()]
        } else {
            names.iter().map(|k| parent.key(k)).collect()
        };
        (Target::Limiters(limiters), Some(parent))
    };
    if let Some(at) = args.start_at_ms {
        let now_ms = unix_us() / 1000;
        if at > now_ms {
            tokio::time::sleep(Duration::from_millis(at - now_ms)).await;
        }
    }
    let started_us = unix_us();
    let deadline = Instant::now() + Duration::from_secs_f64(args.duration.max(0.0));
    let args = Arc::new(args);
    let target = Arc::new(target);
    let handles: Vec<_> = (0..args.tasks.max(1))
        .map(|i| tokio::spawn(run_task(target.clone(), i, args.clone(), deadline)))
        .collect();
    let mut total = Tally::new();
    let mut task_grants = Vec::new();
    for h in handles {
        let t = h.await??;
        task_grants.push(t.granted.to_string());
        total.absorb(t)?;
    }
    // Acquires abandoned at the deadline give their slots back in the background.
    registry.close().await;
    let ended_us = unix_us();
    let pid = std::process::id();
    let write = |out: &mut dyn Write| -> std::io::Result<()> {
        for g in &total.grants {
            writeln!(
                out,
                r#"{{"worker":{pid},"key":{},"slot_us":{},"held_from_us":{},"held_to_us":{},"holders":{}}}"#,
                g.key, g.slot_us, g.held_from_us, g.held_to_us, g.holders
            )?;
        }
        out.flush()
    };
    let written = match &args.out {
        Some(path) => File::create(path).and_then(|f| write(&mut BufWriter::new(f))),
        None => write(&mut BufWriter::new(std::io::stdout().lock())),
    };
    written.map_err(|e| format!("writing grants: {e}"))?;
    let m = parent.map(|p| p.metrics()).unwrap_or_default();
    eprintln!(
        r#"{{"worker":{pid},"started_us":{started_us},"ended_us":{ended_us},"grants":{},"recorded":{},"refusals":{},"errors":{},"cas_exhausted":{},"backend_errors":{},"cas_failures":{},"coalesced":{},"latency_us":{},"overshoot_us":{},"bins_100ms":{},"task_grants":[{}]}}"#,
        total.granted,
        total.grants.len(),
        total.refusals,
        total.errors,
        total.cas_exhausted,
        m.backend_errors,
        m.cas_failures,
        m.coalesced,
        histogram_json(&total.latency_us),
        histogram_json(&total.overshoot_us),
        bins_json(&total.bins),
        task_grants.join(",")
    );
    Ok(())
}
