//! The `ratesync` command-line tool: check a configuration, take permits, read state.

use clap::{Parser, Subcommand};
use ratesync::config::{Config, RateSpec};
use ratesync::engine::RateState;
use ratesync::{Limiter, Registry};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

mod bench;
mod worker;

/// A command-line number of seconds (`--timeout 2.5`), checked like every
/// duration in the configuration: `inf`, `1e20` and negatives are refused
/// with a message, never a panic.
pub(crate) fn seconds_arg(text: &str) -> Result<f64, String> {
    ratesync::duration::parse_seconds(text, ratesync::duration::Range::ZERO_OR_MORE)
        .map(|d| d.as_secs_f64())
}

/// A command-line number of milliseconds (`--hold-ms 20`), checked likewise.
pub(crate) fn millis_arg(text: &str) -> Result<f64, String> {
    let ms: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("must be a number of milliseconds, got {text:?}"))?;
    ratesync::duration::seconds(ms / 1e3, ratesync::duration::Range::ZERO_OR_MORE)
        .map(|_| ms)
        .map_err(|m| format!("{m} (as milliseconds: {text})"))
}

#[derive(Parser)]
#[command(
    name = "ratesync",
    version,
    about = "Distributed, coordinated rate limiting"
)]
struct Cli {
    /// Configuration file [default: $RATESYNC_CONFIG, ./ratesync.toml, ./config.toml]
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the configuration and list its stores and limiters.
    Check,
    /// Take permits from a limiter and report how long each waited.
    Acquire {
        /// The limiter's name.
        limiter: String,
        /// A per-key limiter of it (user id, IP, ...).
        #[arg(long)]
        key: Option<String>,
        /// How many permits to take, one after another.
        #[arg(short = 'n', long, default_value_t = 1)]
        count: u32,
        /// Bound each wait (seconds) instead of the limiter's own timeout.
        #[arg(long, value_parser = seconds_arg)]
        timeout: Option<f64>,
        /// Never wait: report which permits were refused.
        #[arg(long = "try")]
        try_only: bool,
        /// Keep every permit (and its concurrency slot) until the last one is taken.
        #[arg(long)]
        hold: bool,
    },
    /// Load-test a limiter from several processes: throughput, latency,
    /// overshoot, accuracy against the limit; `--baseline` beside the
    /// engine's own reference, `--out DIR` for report.json and SVG charts.
    Bench(bench::BenchArgs),
    /// One process of a multi-process load test: hammer a limiter, write every grant as JSON lines.
    #[command(hide = true)]
    Worker(worker::WorkerArgs),
    /// Show a limiter's state without consuming anything.
    State {
        /// The limiter's name.
        limiter: String,
        /// A per-key limiter of it.
        #[arg(long)]
        key: Option<String>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RATESYNC_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ratesync: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ratesync: {e}");
            ExitCode::FAILURE
        }
    }
}

fn load(path: Option<PathBuf>) -> ratesync::Result<Config> {
    Ok(match path {
        Some(p) => Config::from_file(p)?,
        None => Config::from_default_location()?,
    })
}

async fn run(cli: Cli) -> worker::Result<ExitCode> {
    let config = load(cli.config)?;
    match cli.command {
        Command::Bench(args) => Ok(if bench::run(&config, args).await? {
            ExitCode::SUCCESS
        } else {
            // The grants exceeded the limit: fail, so scripts notice.
            ExitCode::FAILURE
        }),
        Command::Check => {
            println!("{}: ok", config.source_name);
            for (name, s) in &config.stores {
                println!("  store   {name}: {}", s.engine.as_str());
            }
            for (name, l) in &config.limiters {
                println!("  limiter {name}: {} (store {})", describe(l), l.store);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Acquire {
            limiter,
            key,
            count,
            timeout,
            try_only,
            hold,
        } => {
            let registry = Registry::from_config(config).await?;
            let lim = pick(&registry, &limiter, key.as_deref())?;
            let mut refused = 0;
            let mut held = Vec::new();
            for i in 1..=count {
                let permit = if try_only {
                    lim.try_acquire().await?
                } else {
                    let r = match timeout {
                        Some(t) => {
                            lim.acquire_timeout(Duration::from_secs_f64(t.max(0.0)))
                                .await
                        }
                        None => lim.acquire().await,
                    };
                    match r {
                        Ok(p) => Some(p),
                        Err(e) if e.is_timeout() => {
                            println!("{i}: refused: {e}");
                            refused += 1;
                            continue;
                        }
                        Err(e) => return Err(e.into()),
                    }
                };
                match permit {
                    Some(p) => {
                        println!(
                            "{i}: granted after {:.1} ms",
                            p.waited().as_secs_f64() * 1e3
                        );
                        if hold {
                            held.push(p);
                        } else {
                            p.release().await?;
                        }
                    }
                    None => {
                        println!("{i}: refused (no permit free now)");
                        refused += 1;
                    }
                }
            }
            for p in held {
                p.release().await?;
            }
            registry.close().await;
            let m = lim.metrics();
            println!(
                "acquisitions {}  refused {}  avg wait {:.1} ms  max wait {:.1} ms  max_concurrent reached {}",
                m.total_acquisitions, m.timeouts, m.avg_wait_time_ms, m.max_wait_time_ms, m.max_concurrent_reached
            );
            Ok(if refused == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
        Command::Worker(args) => {
            let registry = Registry::from_config(config).await?;
            worker::run(registry, args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::State { limiter, key } => {
            let registry = Registry::from_config(config).await?;
            let lim = pick(&registry, &limiter, key.as_deref())?;
            let st = lim.state().await?;
            match st.rate {
                Some(RateState::TokenBucket { remaining, burst, reset_after, retry_after }) => println!(
                    "rate: {remaining}/{burst} tokens, next in {:.1} ms, full in {:.1} ms",
                    ms(retry_after),
                    ms(reset_after)
                ),
                Some(RateState::SlidingWindow { count, limit, remaining, reset_after, retry_after }) => println!(
                    "window: {count}/{limit} used, {remaining} free, next in {:.1} ms, empty in {:.1} ms",
                    ms(retry_after),
                    ms(reset_after)
                ),
                None => {}
            }
            if let Some(c) = st.concurrency {
                println!("concurrency: {}/{} slots held", c.holders, c.max);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn pick(registry: &Registry, name: &str, key: Option<&str>) -> ratesync::Result<Limiter> {
    let lim = registry.limiter(name)?;
    Ok(match key {
        Some(k) => lim.key(k),
        None => lim,
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn describe(l: &ratesync::config::LimiterSpec) -> String {
    let mut parts = Vec::new();
    match l.rate {
        Some(RateSpec::TokenBucket(g)) => parts.push(format!(
            "token bucket {:.3}/s burst {}",
            1e9 / g.emission_ns() as f64,
            g.burst()
        )),
        Some(RateSpec::SlidingWindow(w)) => parts.push(format!(
            "sliding window {} per {:.3} s",
            w.limit(),
            w.window_ns() as f64 / 1e9
        )),
        None => {}
    }
    if let Some(c) = l.concurrency {
        parts.push(format!(
            "{} concurrent (lease {:.0} s)",
            c.max,
            c.lease.as_secs_f64()
        ));
    }
    if let Some(t) = l.timeout {
        parts.push(format!("timeout {:.3} s", t.as_secs_f64()));
    }
    parts.push(l.on_backend_error.as_str().to_string());
    parts.join(", ")
}
