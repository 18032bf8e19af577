//! The `ratesync` command-line tool: check a configuration, take permits, read state.

use clap::{Parser, Subcommand};
use ratesync::config::{Config, RateSpec};
use ratesync::engine::RateState;
use ratesync::{Limiter, Registry};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

mod bench;
mod policy;
mod report;
#[cfg(feature = "serve")]
mod serve;
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
    /// Validate the configuration, connect to every store and report what
    /// is there, and list the limiters and the alerts.
    Check {
        /// Validate only; do not connect to the stores.
        #[arg(long)]
        offline: bool,
    },
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
        /// Keep every permit (and its concurrency slot) after the last one is
        /// taken, until Ctrl-C, so another process can see them held.
        #[arg(long, conflicts_with = "hold_for")]
        hold: bool,
        /// Like `--hold`, for this many seconds.
        #[arg(long, value_parser = seconds_arg)]
        hold_for: Option<f64>,
    },
    /// Load-test a limiter from several processes: throughput, latency,
    /// overshoot, accuracy against the limit; `--baseline` beside the
    /// engine's own reference, `--out DIR` for report.json and SVG charts.
    Bench(bench::BenchArgs),
    /// One process of a multi-process load test: hammer a limiter, write every grant as JSON lines.
    #[command(hide = true)]
    Worker(worker::WorkerArgs),
    /// Forget a limiter's state for one key (or the limiter's own): a full
    /// bucket, an empty window, no slot held. Holders lose their slots.
    Reset {
        /// The limiter's name.
        limiter: String,
        /// A per-key limiter of it.
        #[arg(long)]
        key: Option<String>,
    },
    /// Dry-run one policy decision (consumes nothing, bans nobody) and
    /// print it with its headers; exit 2 when the request would be refused.
    Eval {
        /// The policy's name.
        #[arg(long)]
        policy: String,
        /// The request's key (put in every key part of the policy; an
        /// address also counts as the client's IP).
        #[arg(long)]
        key: String,
        /// The request's cost [default: the policy's `cost`].
        #[arg(long = "count", short = 'n')]
        count: Option<u32>,
        /// The client's tier.
        #[arg(long)]
        tier: Option<String>,
        /// Print the decision as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Ban a key of a policy on every host sharing its store.
    Block {
        /// The policy's name.
        #[arg(long)]
        policy: String,
        /// The key (as for `eval`).
        #[arg(long)]
        key: String,
        /// How long, in seconds (or 90s, 15m, 1h, 1d).
        #[arg(long, value_parser = seconds_arg)]
        duration: f64,
        /// Why, for the log.
        #[arg(long, default_value = "ratesync block")]
        reason: String,
    },
    /// List the bans in force of a policy, on every host sharing its store,
    /// longest left first.
    Blocks {
        /// The policy's name.
        #[arg(long)]
        policy: String,
    },
    /// Change or show a policy's exempt list in its store (every host holds
    /// a change within half a second).
    Allow {
        #[command(subcommand)]
        op: policy::ListOp,
    },
    /// Change or show a policy's deny list in its store (as `allow`).
    Deny {
        #[command(subcommand)]
        op: policy::ListOp,
    },
    /// Serve policy decisions over HTTP (`/v1/check`, `/auth/{policy}` for
    /// nginx, Traefik and Envoy, `/healthz`) until interrupted; SIGHUP
    /// reloads the policies.
    #[cfg(feature = "serve")]
    Serve {
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Also answer Envoy's rate limit service protocol (gRPC) here, with
        /// the configuration's [envoy] rules.
        #[arg(long)]
        envoy_listen: Option<std::net::SocketAddr>,
    },
    /// Summarise the decision log: totals for today and the window, top
    /// offenders, hits per rule (`--csv`: offenders as CSV); `report
    /// offender KEY` for one key.
    Report(report::ReportArgs),
    /// The decision log: `cleanup` deletes what retention no longer keeps.
    Log {
        #[command(subcommand)]
        op: report::LogOp,
    },
    /// The audit trail of enforcement actions: `verify` checks every link,
    /// `list` prints it.
    Audit {
        #[command(subcommand)]
        op: report::AuditOp,
    },
    /// Lift a key's ban.
    Unblock {
        /// The policy's name.
        #[arg(long)]
        policy: String,
        /// The key (as for `eval`).
        #[arg(long)]
        key: String,
    },
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
        Command::Check { offline } => check(&config, offline).await,
        Command::Acquire {
            limiter,
            key,
            count,
            timeout,
            try_only,
            hold,
            hold_for,
        } => {
            let hold = hold || hold_for.is_some();
            let registry = long_running(config).await?;
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
            if !held.is_empty() {
                match hold_for {
                    Some(s) => {
                        println!("holding {} permit(s) for {s} s", held.len());
                        tokio::time::sleep(Duration::from_secs_f64(s)).await;
                    }
                    None => {
                        println!("holding {} permit(s); Ctrl-C releases them", held.len());
                        tokio::signal::ctrl_c().await?;
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
        Command::Eval {
            policy,
            key,
            count,
            tier,
            json,
        } => {
            let registry = Registry::from_config(config).await?;
            let code = policy::eval(&registry, &policy, &key, count, tier.as_deref(), json).await;
            registry.close().await;
            code
        }
        Command::Block {
            policy,
            key,
            duration,
            reason,
        } => {
            let registry = Registry::from_config(config).await?;
            policy::block(&registry, &policy, &key, Some(duration), &reason).await
        }
        Command::Blocks { policy } => {
            let registry = Registry::from_config(config).await?;
            policy::blocks(&registry, &policy).await
        }
        Command::Allow { op } => {
            let registry = Registry::from_config(config).await?;
            policy::list(&registry, ratesync::policy::ListKind::Exempt, op).await
        }
        Command::Deny { op } => {
            let registry = Registry::from_config(config).await?;
            policy::list(&registry, ratesync::policy::ListKind::Deny, op).await
        }
        Command::Report(args) => {
            let registry = Registry::from_config(config).await?;
            report::report(&registry, args).await
        }
        Command::Log { op } => {
            let registry = Registry::from_config(config).await?;
            report::log(&registry, op).await
        }
        Command::Audit { op } => {
            let registry = Registry::from_config(config).await?;
            report::audit(&registry, op).await
        }
        Command::Unblock { policy, key } => {
            let registry = Registry::from_config(config).await?;
            policy::block(&registry, &policy, &key, None, "").await
        }
        #[cfg(feature = "serve")]
        Command::Serve {
            listen,
            envoy_listen,
        } => {
            let mut http = config.http.clone().unwrap_or_default();
            // The admin token from the environment, when the file names none.
            if http.admin_token.is_none() {
                if let Ok(token) = std::env::var("RATESYNC_ADMIN_TOKEN") {
                    http.admin_token = Some(token.into());
                    http.validate("RATESYNC_ADMIN_TOKEN")
                        .map_err(ratesync::Error::from)?;
                }
            }
            let envoy = config.envoy.clone();
            let registry = long_running(config).await?;
            serve::run(registry, &http, listen, envoy_listen.map(|a| (a, envoy))).await
        }
        Command::Worker(args) => {
            let registry = long_running(config).await?;
            worker::run(registry, args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Reset { limiter, key } => {
            let store = config
                .limiters
                .get(&limiter)
                .map(|l| l.store.clone())
                .unwrap_or_default();
            let registry = Registry::from_config(config).await?;
            let lim = pick(&registry, &limiter, key.as_deref())?;
            let removed = lim.reset().await?;
            println!(
                "limiter {limiter}{}: state reset on store {store} ({} entries removed)",
                key.as_deref()
                    .map(|k| format!(" key {}", shown_key(k)))
                    .unwrap_or_default(),
                removed
            );
            registry.close().await;
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

/// The registry of a command that runs a while (`worker`, `acquire`): on
/// SIGHUP it re-reads its configuration file and puts the new policies in
/// force, or keeps the old ones and logs why (`Registry::reload`).
async fn long_running(config: Config) -> ratesync::Result<Registry> {
    let file = std::path::Path::new(&config.source_name).is_file();
    let path = config.source_name.clone();
    let registry = Registry::from_config(config).await?;
    if file {
        registry.set_source(&path);
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            if let Ok(mut hup) = signal(SignalKind::hangup()) {
                let reg = registry.clone();
                tokio::spawn(async move {
                    while hup.recv().await.is_some() {
                        match reg.reload().await {
                            Ok(v) => eprintln!("ratesync: SIGHUP: {path} reloaded (configuration version {v})"),
                            Err(e) => eprintln!("ratesync: SIGHUP: {path} not reloaded, the rules in force stay: {e}"),
                        }
                    }
                });
            }
        }
    }
    Ok(registry)
}

/// `ratesync check`: the configuration, each store as its server answers,
/// the limiters and the alerts. Fails when a store cannot be reached.
async fn check(config: &Config, offline: bool) -> worker::Result<ExitCode> {
    println!("{}: configuration ok", config.source_name);
    let mut unreachable = 0;
    for (name, store) in &config.stores {
        let url = store
            .url
            .as_ref()
            .map(|u| format!(" {}", ratesync::secret::redact(u.expose())))
            .unwrap_or_default();
        let replaces = if name == ratesync::config::DEFAULT_STORE {
            " (replaces the built-in memory store)"
        } else {
            ""
        };
        print!("  store   {name}: {}{url}{replaces}", store.engine.as_str());
        if offline {
            println!(" (not contacted: --offline)");
            continue;
        }
        let answer = match Registry::connect_store(name, store).await {
            Ok(engine) => engine.describe().await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match answer {
            Ok(what) => println!(" -> reachable: {what}"),
            Err(e) => {
                println!(" -> UNREACHABLE: {e}");
                unreachable += 1;
            }
        }
    }
    for (name, l) in &config.limiters {
        println!("  limiter {name}: {} (store {})", describe(l), l.store);
    }
    for (name, p) in &config.policies {
        println!(
            "  policy  {name}: {} (store {})",
            policy::describe(p),
            p.store
        );
    }
    if let Some(log) = &config.decision_log {
        use ratesync::config::decision_log::SinkChoice;
        let sink = match &log.sink {
            SinkChoice::Sqlite(path) => format!("SQLite file {}", path.display()),
            SinkChoice::Postgres(store) => format!("PostgreSQL store {store}"),
        };
        println!(
            "  decision log: {sink}, queue {}, batch {}, events kept {:.0} d, rollups {:.0} d, host {}",
            log.queue,
            log.batch,
            log.retention.as_secs_f64() / 86_400.0,
            log.rollup_retention.as_secs_f64() / 86_400.0,
            log.host
        );
    } else if config.policies.values().any(|p| !p.log.decisions.is_off()) {
        println!(
            "  decision log: SQLite file {} (the default: no [decision_log] table)",
            ratesync::config::decision_log::DEFAULT_LOG_PATH
        );
    }
    match &config.alerts {
        None => println!("  alerts: none ([alerts] absent)"),
        Some(a) => {
            let c = &a.channels;
            let mut channels: Vec<&str> = Vec::new();
            if c.log.as_ref().is_none_or(|l| l.enabled) {
                channels.push("log");
            }
            for (name, on) in [
                ("webhook", c.webhook.as_ref().is_some_and(|w| w.enabled)),
                ("slack", c.slack.as_ref().is_some_and(|w| w.enabled)),
                ("pagerduty", c.pagerduty.as_ref().is_some_and(|w| w.enabled)),
                ("email", c.email.as_ref().is_some_and(|w| w.enabled)),
            ] {
                if on {
                    channels.push(name);
                }
            }
            println!(
                "  alerts: every {} s, cooldown {} s{}, channels: {}",
                a.interval_seconds,
                a.cooldown_seconds,
                a.shared_cooldown_store
                    .as_deref()
                    .map(|s| format!(" (shared in store {s})"))
                    .unwrap_or_default(),
                channels.join(", ")
            );
        }
    }
    if unreachable > 0 {
        eprintln!("ratesync: {unreachable} store(s) unreachable; `check --offline` validates without connecting");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// A key as the CLI echoes it: quoted and escaped, and cut after 64
/// characters with its length, so a huge or binary key stays one short line.
fn shown_key(key: &str) -> String {
    const SHOWN: usize = 64;
    match key.char_indices().nth(SHOWN) {
        None => format!("{key:?}"),
        Some((cut, _)) => format!("{:?}... ({} bytes)", &key[..cut], key.len()),
    }
}

/// The limiter `name` (its key `key`), said on stderr with its store and
/// engine so the user knows where the state lives.
fn pick(registry: &Registry, name: &str, key: Option<&str>) -> ratesync::Result<Limiter> {
    let lim = registry.limiter(name)?;
    let store = &lim.spec().store;
    let engine = registry.store(store).map_or("?", |e| e.kind());
    eprintln!(
        "limiter {name}{} on store {store} ({engine}){}",
        key.map(|k| format!(" key {}", shown_key(k)))
            .unwrap_or_default(),
        if engine == "memory" {
            ": in-memory state is this process's own, fresh at every command"
        } else {
            ""
        }
    );
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

#[cfg(test)]
mod tests {
    use super::shown_key;

    #[test]
    fn keys_are_echoed_short_and_escaped() {
        assert_eq!(shown_key("alice"), "\"alice\"");
        let long = "é\u{1}".repeat(40_000);
        let shown = shown_key(&long);
        assert!(shown.ends_with("... (120000 bytes)"), "{shown}");
        assert!(shown.len() < 400, "{}", shown.len());
        assert!(!shown.contains('\u{1}'), "control characters are escaped");
    }
}
