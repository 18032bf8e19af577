//! `ratesync bench`: runs a workload on any limiter from several processes and
//! reports throughput, latency, wait overshoot, accuracy and utilisation,
//! optionally beside the engine's physical reference and as SVG charts.
//!
//! The workload is `ratesync worker` processes (the same ones the
//! integration tests start), begun together; the bench merges their grant
//! files and latency histograms and checks the grants against the limit with
//! [`ratesync::audit`].

mod baseline;
mod chart;

use crate::worker::{Mode, Result};
use clap::Args;
use hdrhistogram::Histogram;
use ratesync::config::{Config, EngineKind, RateSpec};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Arguments of `ratesync bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// The limiter to load, by its name in the configuration.
    #[arg(long)]
    pub limiter: String,
    /// Concurrent tasks in each process.
    #[arg(long, default_value_t = 64)]
    pub tasks: usize,
    /// Worker processes (a memory store is per process, so it takes 1).
    #[arg(long, default_value_t = 1)]
    pub processes: usize,
    /// How long to run: `10s`, `500ms`, `2m` or plain seconds.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Spread the tasks over this many per-key limiters (`k0`, `k1`, ...).
    #[arg(long)]
    pub keys: Option<usize>,
    /// `acquire` waits for its slot; `try` never waits and asks again at once.
    #[arg(long, value_enum, default_value_t = Mode::Acquire)]
    pub mode: Mode,
    /// Bound each acquire (seconds) instead of the limiter's own timeout.
    #[arg(long, value_parser = crate::seconds_arg)]
    pub timeout: Option<f64>,
    /// Hold each permit this long (milliseconds), for concurrency limits.
    #[arg(long, default_value_t = 0.0, value_parser = crate::millis_arg)]
    pub hold_ms: f64,
    /// Also measure the engine's physical reference in this run and print
    /// ratesync's decision rate as a share of it.
    #[arg(long)]
    pub baseline: bool,
    /// Grants each process records for the accuracy check (~90 bytes each
    /// in a temporary file); beyond it they are counted and charted only.
    #[arg(long, default_value_t = 2_000_000)]
    pub max_records: usize,
    /// Write report.json, grants.svg and latency.svg here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `10s`, `250ms`, `2m`, `1.5` (seconds): [`ratesync::duration::parse_seconds`], positive.
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    ratesync::duration::parse_seconds(text, ratesync::duration::Range::POSITIVE).map_err(|m| {
        format!("`{text}` is not a duration for a run ({m}); write for example 10s, 500ms or 2m")
    })
}

/// One line of a worker's grant file.
#[derive(Deserialize)]
struct GrantLine {
    key: usize,
    slot_us: u64,
    held_from_us: u64,
    held_to_us: u64,
}

/// A worker's summary line (standard error).
#[derive(Deserialize)]
struct Summary {
    started_us: u64,
    ended_us: u64,
    grants: u64,
    refusals: u64,
    errors: u64,
    backend_errors: u64,
    cas_failures: u64,
    #[serde(default)]
    coalesced: u64,
    latency_us: Vec<(u64, u64)>,
    overshoot_us: Vec<(u64, u64)>,
    bins_100ms: Vec<(u64, u64)>,
    task_grants: Vec<u64>,
}

/// Percentiles of a histogram, µs.
#[derive(Debug, serde::Serialize)]
pub struct Percentiles {
    /// The median.
    pub p50: u64,
    /// The 90th percentile.
    pub p90: u64,
    /// The 99th percentile.
    pub p99: u64,
    /// The largest value recorded.
    pub max: u64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Option<Self> {
        (!h.is_empty()).then(|| Self {
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            max: h.max(),
        })
    }
}

/// How the grants compare with the limit.
#[derive(Debug, serde::Serialize)]
pub struct Accuracy {
    /// What was checked, in words.
    pub check: String,
    /// The worst value seen (per key).
    pub worst: f64,
    /// The most the limit allows for that value.
    pub allowed: f64,
    /// `worst <= allowed`.
    pub holds: bool,
    /// Grants checked (all unless a worker hit `--max-records`).
    pub checked: u64,
    /// Grants in all.
    pub of: u64,
    /// Grants as a share of what the limit allowed over the run (rates only).
    pub utilisation: Option<f64>,
}

/// How evenly the grants went to the tasks that asked for them.
#[derive(Debug, serde::Serialize)]
pub struct Fairness {
    /// Jain's index over every task's grants: 1 when all got the same,
    /// 1/n when one task got everything.
    pub jain_index: f64,
    /// The fewest grants any task got.
    pub min_task_grants: u64,
    /// The most grants any task got.
    pub max_task_grants: u64,
    /// Each process's share of the grants, in process order.
    pub process_shares: Vec<f64>,
}

impl Fairness {
    fn of(tasks: &[u64], processes: &[u64]) -> Option<Self> {
        let sum: f64 = tasks.iter().map(|&x| x as f64).sum();
        let squares: f64 = tasks.iter().map(|&x| (x as f64).powi(2)).sum();
        let total: u64 = processes.iter().sum();
        (squares > 0.0).then(|| Self {
            jain_index: sum * sum / (tasks.len() as f64 * squares),
            min_task_grants: tasks.iter().copied().min().unwrap_or(0),
            max_task_grants: tasks.iter().copied().max().unwrap_or(0),
            process_shares: processes
                .iter()
                .map(|&p| p as f64 / total.max(1) as f64)
                .collect(),
        })
    }
}

/// The engine's reference, beside ratesync's figure.
#[derive(Debug, serde::Serialize)]
pub struct BaselineReport {
    /// What ran, as one could type it again.
    pub tool: String,
    /// Its decisions (operations) per second.
    pub ops_per_second: f64,
    /// Its compare-and-set conflicts per attempt, for CAS loops.
    pub conflict_rate: Option<f64>,
    /// ratesync's decisions/s ÷ the reference's.
    pub ratio: f64,
}

/// Everything `bench` measured.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    /// The limiter's name.
    pub limiter: String,
    /// Its store's engine.
    pub engine: String,
    /// Its policy, in words.
    pub policy: String,
    /// `acquire` or `try`.
    pub mode: String,
    /// Worker processes.
    pub processes: usize,
    /// Tasks in each.
    pub tasks_per_process: usize,
    /// Per-key limiters the tasks spread over (1: the limiter itself).
    pub keys: usize,
    /// From the first worker's start to the last one's end.
    pub seconds: f64,
    /// Permits granted.
    pub acquisitions: u64,
    /// Permits granted per second.
    pub acquisitions_per_second: f64,
    /// Grants and refusals per second: every call that got an answer.
    pub decisions_per_second: f64,
    /// Refused `try_acquire` calls and timed-out `acquire` calls.
    pub timeouts: u64,
    /// Calls that failed with an error.
    pub errors: u64,
    /// Store failures the limiters counted.
    pub backend_errors: u64,
    /// Compare-and-set conflicts the limiters counted.
    pub cas_failures: u64,
    /// Rate requests decided in a round trip shared with others of their key.
    pub coalesced: u64,
    /// Latency of each call (grant or refusal; `acquire` includes its wait), µs.
    pub latency_us: Option<Percentiles>,
    /// How long after its reserved slot each `acquire` returned, µs.
    pub overshoot_us: Option<Percentiles>,
    /// The grants against the limit.
    pub accuracy: Option<Accuracy>,
    /// How evenly the grants were shared.
    pub fairness: Option<Fairness>,
    /// The engine's reference, with `--baseline`.
    pub baseline: Option<BaselineReport>,
    /// Grants per 100 ms of slot time (wall-clock aligned), all keys together.
    pub grants_per_100ms: Vec<u64>,
    /// What the limit allows per 100 ms, all keys together (rates only).
    pub limit_per_100ms: Option<f64>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn histogram(pairs: &[(u64, u64)], into: &mut Histogram<u64>) -> Result<()> {
    for &(value, count) in pairs {
        into.record_n(value, count)?;
    }
    Ok(())
}

/// Runs the bench and prints (and writes) its report; false when the grants
/// exceeded the limit.
pub async fn run(config: &Config, args: BenchArgs) -> Result<bool> {
    if cfg!(debug_assertions) {
        eprintln!(
            "ratesync bench: this is a debug build, whose figures are several times lower \
             (about 7x measured); build with --release for figures to compare"
        );
    }
    let spec = config.limiters.get(&args.limiter).ok_or_else(|| {
        format!(
            "no limiter `{}` in {}; it has: {}",
            args.limiter,
            config.source_name,
            config
                .limiters
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    let store = config.stores.get(&spec.store).ok_or_else(|| {
        format!(
            "limiter `{}` names a missing store `{}`",
            args.limiter, spec.store
        )
    })?;
    if store.engine == EngineKind::Memory && args.processes > 1 {
        return Err(format!(
            "limiter `{}` lives in a memory store, which each process keeps for itself; \
             --processes {} would measure {} separate limits. Use --processes 1, or a \
             redis, postgres or nats store",
            args.limiter, args.processes, args.processes
        )
        .into());
    }
    let config_path = PathBuf::from(&config.source_name);
    if !config_path.is_file() {
        return Err(format!(
            "bench starts worker processes that read the configuration from a file, \
             but `{}` is not one; pass --config PATH",
            config.source_name
        )
        .into());
    }
    let keys = args.keys.unwrap_or(1).max(1);
    let dir = std::env::temp_dir().join(format!(
        "ratesync-bench-{}-{}",
        std::process::id(),
        unix_ms()
    ));
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let exe = std::env::current_exe().map_err(|e| format!("finding the ratesync binary: {e}"))?;
    let start_at = unix_ms() + 1500;
    let mode = match args.mode {
        Mode::Acquire => "acquire",
        Mode::Try => "try",
    };

    let mut children = Vec::new();
    for i in 0..args.processes.max(1) {
        let out = dir.join(format!("grants-{i}.jsonl"));
        let mut cmd = Command::new(&exe);
        cmd.arg("--config")
            .arg(&config_path)
            .arg("worker")
            .arg(&args.limiter)
            .args(["--tasks", &args.tasks.max(1).to_string()])
            .args(["--duration", &args.duration.as_secs_f64().to_string()])
            .args(["--mode", mode, "--backoff-ms", "0"])
            .args(["--hold-ms", &args.hold_ms.to_string()])
            .args(["--start-at-ms", &start_at.to_string()])
            .args(["--max-records", &args.max_records.to_string()])
            .arg("--out")
            .arg(&out)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(n) = args.keys {
            cmd.args(["--keys", &n.to_string()]);
        }
        if let Some(t) = args.timeout {
            cmd.args(["--timeout", &t.to_string()]);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("starting a worker ({}): {e}", exe.display()))?;
        // Read standard error on a thread, so a chatty worker never blocks on a full pipe.
        let stderr = child.stderr.take().ok_or("worker has no standard error")?;
        let reader = std::thread::spawn(move || {
            BufReader::new(stderr)
                .lines()
                .map_while(std::result::Result::ok)
                .collect::<Vec<_>>()
        });
        children.push((child, reader, out));
    }

    let progress = if args.json {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(args.duration.as_millis() as u64)
    };
    progress.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {msg} [{bar:40}] {elapsed_precise} / {duration_precise}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    progress.set_message(format!(
        "{} × {} tasks on `{}`",
        args.processes.max(1),
        args.tasks.max(1),
        args.limiter
    ));
    loop {
        let now = unix_ms();
        progress.set_position(
            now.saturating_sub(start_at)
                .min(args.duration.as_millis() as u64),
        );
        let mut running = false;
        for (child, _, _) in &mut children {
            if child
                .try_wait()
                .map_err(|e| format!("waiting for a worker: {e}"))?
                .is_none()
            {
                running = true;
            }
        }
        if !running {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    progress.finish_and_clear();

    let hist = || Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).map_err(|e| e.to_string());
    let (mut latency, mut overshoot) = (hist()?, hist()?);
    let mut grants: Vec<GrantLine> = Vec::new();
    let mut bins: BTreeMap<u64, u64> = BTreeMap::new();
    let (mut task_grants, mut process_grants) = (Vec::new(), Vec::new());
    let (mut started, mut ended) = (u64::MAX, 0u64);
    let (mut acquisitions, mut refusals, mut errors, mut backend_errors, mut cas) = (0, 0, 0, 0, 0);
    let mut coalesced = 0;
    for (mut child, reader, out) in children {
        let status = child
            .wait()
            .map_err(|e| format!("waiting for a worker: {e}"))?;
        let lines = reader
            .join()
            .map_err(|_| "a worker's output reader panicked")?;
        if !status.success() {
            return Err(format!("a worker failed ({status}):\n{}", lines.join("\n")).into());
        }
        let summary: Summary = lines
            .iter()
            .rev()
            .find_map(|l| serde_json::from_str(l).ok())
            .ok_or_else(|| format!("a worker printed no summary:\n{}", lines.join("\n")))?;
        started = started.min(summary.started_us);
        ended = ended.max(summary.ended_us);
        acquisitions += summary.grants;
        refusals += summary.refusals;
        errors += summary.errors;
        backend_errors += summary.backend_errors;
        cas += summary.cas_failures;
        coalesced += summary.coalesced;
        histogram(&summary.latency_us, &mut latency)?;
        histogram(&summary.overshoot_us, &mut overshoot)?;
        task_grants.extend(&summary.task_grants);
        process_grants.push(summary.grants);
        for (bin, n) in summary.bins_100ms {
            *bins.entry(bin).or_default() += n;
        }
        let file =
            std::fs::File::open(&out).map_err(|e| format!("reading {}: {e}", out.display()))?;
        for line in BufReader::new(file).lines() {
            let line = line.map_err(|e| format!("reading {}: {e}", out.display()))?;
            grants.push(
                serde_json::from_str(&line)
                    .map_err(|e| format!("{}: {e}: {line}", out.display()))?,
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let seconds = (ended.saturating_sub(started) as f64 / 1e6).max(1e-3);

    let accuracy = accuracy(spec, &grants, acquisitions, keys, seconds);
    let grants_per_100ms: Vec<u64> = match (bins.keys().next(), bins.keys().next_back()) {
        (Some(&first), Some(&last)) => (first..=last)
            .map(|b| bins.get(&b).copied().unwrap_or(0))
            .collect(),
        _ => Vec::new(),
    };
    let limit_per_100ms = match &spec.rate {
        Some(RateSpec::TokenBucket(g)) => Some(1e8 / g.emission_ns() as f64 * keys as f64),
        Some(RateSpec::SlidingWindow(w)) => {
            Some(f64::from(w.limit()) * 1e8 / w.window_ns() as f64 * keys as f64)
        }
        None => None,
    };
    let decisions_per_second = (acquisitions + refusals) as f64 / seconds;

    let baseline = if args.baseline {
        let clients = args.tasks.max(1) * args.processes.max(1);
        let calls = (acquisitions + refusals).clamp(20_000, 2_000_000);
        let r = reference(config, &args.limiter, keys, clients, calls, args.duration).await?;
        Some(BaselineReport {
            ratio: decisions_per_second / r.ops_per_second.max(1e-9),
            tool: r.tool,
            ops_per_second: r.ops_per_second,
            conflict_rate: r.conflict_rate,
        })
    } else {
        None
    };

    let report = Report {
        limiter: args.limiter.clone(),
        engine: store.engine.as_str().to_string(),
        policy: crate::describe(spec),
        mode: mode.to_string(),
        processes: args.processes.max(1),
        tasks_per_process: args.tasks.max(1),
        keys,
        seconds,
        acquisitions,
        acquisitions_per_second: acquisitions as f64 / seconds,
        decisions_per_second,
        timeouts: refusals,
        errors,
        backend_errors,
        cas_failures: cas,
        coalesced,
        latency_us: Percentiles::of(&latency),
        overshoot_us: match args.mode {
            Mode::Acquire => Percentiles::of(&overshoot),
            Mode::Try => None,
        },
        accuracy,
        fairness: Fairness::of(&task_grants, &process_grants),
        baseline,
        grants_per_100ms,
        limit_per_100ms,
    };

    if let Some(dir) = &args.out {
        write_out(dir, &report, &latency)?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report, args.out.as_deref());
    }
    Ok(report.accuracy.as_ref().is_none_or(|a| a.holds))
}

/// Checks the merged grants per key against the limiter's promise.
fn accuracy(
    spec: &ratesync::config::LimiterSpec,
    grants: &[GrantLine],
    total: u64,
    keys: usize,
    seconds: f64,
) -> Option<Accuracy> {
    let (checked, of) = (grants.len() as u64, total);
    let mut by_key: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
    for g in grants {
        by_key.entry(g.key).or_default().push(g.slot_us);
    }
    for slots in by_key.values_mut() {
        slots.sort_unstable();
    }
    match &spec.rate {
        Some(RateSpec::TokenBucket(g)) => {
            let rate = 1e9 / g.emission_ns() as f64;
            let worst = by_key
                .values()
                .map(|s| ratesync::audit::max_excess(s, rate))
                .fold(0.0, f64::max);
            let allowed = f64::from(g.burst());
            Some(Accuracy {
                check: "grants in any interval t minus rate·t, per key (must be <= burst)".into(),
                worst,
                allowed,
                // Slots are recorded in whole microseconds: an engine that
                // decides in nanoseconds may show a gap up to 1 µs shorter
                // than it was, an excess of up to rate × 1 µs.
                holds: worst <= allowed + rate * 1e-6 + 1e-9,
                checked,
                of,
                utilisation: Some(total as f64 / ((allowed + rate * seconds) * keys as f64)),
            })
        }
        Some(RateSpec::SlidingWindow(w)) => {
            let window_us = w.window_ns() / 1000;
            let worst = by_key
                .values()
                .map(|s| ratesync::audit::max_in_window(s, window_us))
                .max()
                .unwrap_or(0) as f64;
            let allowed = f64::from(w.limit());
            let windows = (seconds * 1e6 / window_us.max(1) as f64).ceil().max(1.0);
            Some(Accuracy {
                check: "grants in any window, per key (must be <= limit)".into(),
                worst,
                allowed,
                holds: worst <= allowed,
                checked,
                of,
                utilisation: Some(total as f64 / (allowed * windows * keys as f64)),
            })
        }
        None => spec.concurrency.map(|c| {
            // Holding intervals are on each worker's local clock: exact on one host.
            let worst =
                ratesync::audit::max_overlap(grants.iter().map(|g| (g.held_from_us, g.held_to_us)))
                    as f64;
            let allowed = f64::from(c.max) * keys as f64;
            Accuracy {
                check: "permits held at once, all keys (must be <= max_concurrent × keys)".into(),
                worst,
                allowed,
                holds: worst <= allowed,
                checked,
                of,
                utilisation: None,
            }
        }),
    }
}

/// The engine's reference on a key of its own beside the limiter's.
#[cfg_attr(
    not(any(feature = "redis", feature = "postgres", feature = "nats")),
    allow(unused_variables)
)]
async fn reference(
    config: &Config,
    limiter: &str,
    keys: usize,
    clients: usize,
    calls: u64,
    duration: Duration,
) -> Result<baseline::Reference> {
    let spec = &config.limiters[limiter];
    let store = &config.stores[&spec.store];
    let rate = spec.rate.as_ref();
    let (kind, p1, p2) = match rate {
        Some(r) => ratesync::engine::RateArgs::of(r).positional(),
        None => return Err("--baseline measures rate decisions; this limiter has no rate".into()),
    };
    let base_key = ratesync::StateKey::new(&format!("{limiter}.baseline"));
    let _ = &base_key; // not every engine in the build uses it
    #[allow(unreachable_patterns)] // engines left out of the build
    match store.engine {
        EngineKind::Memory => {
            let (emission_ns, burst) =
                match rate {
                    Some(RateSpec::TokenBucket(g)) => (g.emission_ns(), g.burst()),
                    _ => return Err(
                        "the memory reference is a token bucket; this limiter is a sliding window"
                            .into(),
                    ),
                };
            let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
            Ok(tokio::task::spawn_blocking(move || {
                baseline::memory(emission_ns, burst, keys.min(threads), threads, duration)
            })
            .await?)
        }
        #[cfg(feature = "redis")]
        EngineKind::Redis => {
            let url = store
                .url
                .as_ref()
                .map(|u| u.expose())
                .ok_or("the store has no url")?;
            let key = format!("{}:{{{}}}:r", store.prefix(), base_key.encoded());
            Ok(baseline::redis(url, &key, [i64::from(kind), p1, p2, 0], clients, calls).await?)
        }
        #[cfg(feature = "postgres")]
        EngineKind::Postgres => {
            let url = store
                .url
                .as_ref()
                .map(|u| u.expose())
                .ok_or("the store has no url")?;
            let key = format!("{}:{}", store.prefix(), base_key.encoded());
            // pgbench opens a connection per client; stay under max_connections.
            let clients = clients.min(64);
            let (schema, url, key) = (store.schema().to_string(), url.to_string(), key.clone());
            let secs = duration.as_secs().max(3) as u32;
            Ok(tokio::task::spawn_blocking(move || {
                baseline::postgres(
                    &url,
                    &schema,
                    &key,
                    keys,
                    [i64::from(kind), p1, p2, 0],
                    clients,
                    secs,
                )
            })
            .await??)
        }
        #[cfg(feature = "nats")]
        EngineKind::Nats => {
            let url = store
                .url
                .as_ref()
                .map(|u| u.expose())
                .ok_or("the store has no url")?;
            let safe: String = limiter
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect();
            let base = format!("{}-baseline.{safe}", store.prefix());
            Ok(baseline::nats(url, store.bucket(), &base, keys, clients, duration).await?)
        }
        _ => Err(format!(
            "no reference for engine {} in this build",
            store.engine.as_str()
        )
        .into()),
    }
}

fn write_out(dir: &Path, report: &Report, latency: &Histogram<u64>) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let json = dir.join("report.json");
    std::fs::write(&json, serde_json::to_string_pretty(report)?)
        .map_err(|e| format!("writing {}: {e}", json.display()))?;
    let title = format!(
        "`{}` on {}: {} process(es) × {} tasks, {} key(s), {} mode",
        report.limiter,
        report.engine,
        report.processes,
        report.tasks_per_process,
        report.keys,
        report.mode
    );
    chart::grants(
        &dir.join("grants.svg"),
        &title,
        &report.grants_per_100ms,
        100,
        report.limit_per_100ms,
    )?;
    let quantiles: Vec<(f64, u64)> = (0..=1000)
        .map(|i| {
            let q = f64::from(i) / 1000.0;
            (q, latency.value_at_quantile(q))
        })
        .collect();
    if !latency.is_empty() {
        chart::latency(&dir.join("latency.svg"), &title, &quantiles)?;
    }
    Ok(())
}

fn print_table(r: &Report, out: Option<&Path>) {
    println!(
        "ratesync bench: `{}` on {} ({}), {} process(es) × {} tasks, {} key(s), {} mode, {:.1} s",
        r.limiter, r.engine, r.policy, r.processes, r.tasks_per_process, r.keys, r.mode, r.seconds
    );
    println!(
        "  acquisitions     {:>10}  ({:.0}/s)",
        r.acquisitions, r.acquisitions_per_second
    );
    println!(
        "  decisions/s      {:>10.0}  (grants + refusals)",
        r.decisions_per_second
    );
    println!(
        "  timeouts         {:>10}    errors {}  backend errors {}  CAS failures {}",
        r.timeouts, r.errors, r.backend_errors, r.cas_failures
    );
    if r.coalesced > 0 {
        println!(
            "  coalesced        {:>10}  ({:.1}% of decisions shared a round trip)",
            r.coalesced,
            r.coalesced as f64 / (r.acquisitions + r.timeouts).max(1) as f64 * 100.0
        );
    }
    if let Some(p) = &r.latency_us {
        println!(
            "  latency µs       p50 {}  p90 {}  p99 {}  max {}",
            p.p50, p.p90, p.p99, p.max
        );
    }
    if let Some(p) = &r.overshoot_us {
        println!(
            "  overshoot µs     p50 {}  p90 {}  p99 {}  max {}",
            p.p50, p.p90, p.p99, p.max
        );
    }
    if let Some(a) = &r.accuracy {
        if a.checked < a.of {
            println!(
                "  (accuracy checked on the first {} of {} grants; raise --max-records for all)",
                a.checked, a.of
            );
        }
        println!(
            "  accuracy         {}: worst {:.2}, allowed {:.2} -> {}",
            a.check,
            a.worst,
            a.allowed,
            if a.holds { "holds" } else { "EXCEEDED" }
        );
        if let Some(u) = a.utilisation {
            println!(
                "  utilisation      {:.1}% of what the limit allowed",
                u * 100.0
            );
        }
    }
    if let Some(f) = &r.fairness {
        let shares: Vec<String> = f
            .process_shares
            .iter()
            .map(|s| format!("{:.1}%", s * 100.0))
            .collect();
        println!(
            "  fairness         Jain {:.3} over tasks (min {}, max {} grants); processes {}",
            f.jain_index,
            f.min_task_grants,
            f.max_task_grants,
            shares.join(" / ")
        );
    }
    if let Some(b) = &r.baseline {
        println!(
            "  reference        {:.0} ops/s: {}",
            b.ops_per_second, b.tool
        );
        if let Some(c) = b.conflict_rate {
            println!(
                "                   its CAS conflicts: {:.1}% of attempts",
                c * 100.0
            );
        }
        println!(
            "  ratio            ratesync decisions/s = {:.1}% of the reference",
            b.ratio * 100.0
        );
    }
    if let Some(dir) = out {
        println!(
            "  wrote            {}/report.json, grants.svg, latency.svg",
            dir.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration(" 1.5 "), Ok(Duration::from_millis(1500)));
        for bad in ["", "0s", "-1", "soon", "NaN"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
