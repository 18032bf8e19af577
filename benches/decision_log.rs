//! What logging every decision costs a check: the same three-window policy
//! with `log_decisions` off and on, in one run, alternating rounds so
//! machine noise hits both alike, 16 tasks on 16 keys, every check
//! admitted (limits far above the load). The table gives the medians of
//! the rounds, the logged policy's share of the unlogged one's rate (the
//! goal: at least 90%), and what the log did with the decisions (written,
//! or dropped because the queue was full: the check never waits for the sink).
//!
//! Run with `cargo bench --bench decision_log`: the memory engine always,
//! Redis (`REDIS_URL`) and PostgreSQL (`DATABASE_URL`) when this build has
//! them and they answer; the log goes to SQLite in the temporary directory,
//! and to PostgreSQL when it answers.

mod common;

use common::{listing_only, median, ROUNDS};
use ratesync::decision_log::sink::{
    Cleaned, KeyEvents, Offender, Point, RuleHits, Span, StoredRecord, Totals,
};
use ratesync::decision_log::{DecisionEvent, DecisionLog, LogSink};
use ratesync::policy::{Policy, Request};
use ratesync::BackendError;
use ratesync::Registry;
use std::sync::Arc;

const TASKS: usize = 16;
const KEYS: usize = 16;

async fn rate(p: &Policy, calls: usize) -> f64 {
    common::policy_rate(p, TASKS, calls, |i| {
        Request::new()
            .api_key(format!("k{}", i % KEYS))
            .path("/v1/items")
            .method("GET")
            .ip(std::net::IpAddr::from([203, 0, 113, i as u8]))
    })
    .await
}

/// Takes every batch and keeps nothing.
struct Discard;

#[async_trait::async_trait]
impl LogSink for Discard {
    fn kind(&self) -> &'static str {
        "discard"
    }
    async fn write(&self, events: &[DecisionEvent]) -> Result<u64, BackendError> {
        Ok(events.len() as u64)
    }
    async fn cleanup(&self, _: i64, _: i64, _: u32) -> Result<Cleaned, BackendError> {
        Ok(Cleaned::default())
    }
    async fn totals(&self, _: &Span) -> Result<Totals, BackendError> {
        Ok(Totals::default())
    }
    async fn top_offenders(&self, _: &Span, _: u32) -> Result<Vec<Offender>, BackendError> {
        Ok(Vec::new())
    }
    async fn rule_hits(&self, _: &Span) -> Result<Vec<RuleHits>, BackendError> {
        Ok(Vec::new())
    }
    async fn series(&self, _: &Span, _: i64) -> Result<Vec<Point>, BackendError> {
        Ok(Vec::new())
    }
    async fn key_totals(&self, _: &Span, _: &str) -> Result<Totals, BackendError> {
        Ok(Totals::default())
    }
    async fn key_events(&self, _: &Span, _: &str, _: u32) -> Result<KeyEvents, BackendError> {
        Ok(KeyEvents::default())
    }
    async fn append_audit(&self, d: &StoredRecord) -> Result<StoredRecord, BackendError> {
        Ok(d.clone())
    }
    async fn audit_records(&self, _: i64, _: u32) -> Result<Vec<StoredRecord>, BackendError> {
        Ok(Vec::new())
    }
}

fn main() {
    if listing_only() {
        return;
    }
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
    let pg = env("DATABASE_URL", "postgres://root@127.0.0.1:5432/test");
    // (engine, store, calls per round, queue): the memory engine twice,
    // once with the default queue, which its millions of checks a second
    // overflow (what is measured is mostly the drop), once with a queue
    // that holds every round, so each check builds and queues its event.
    let mut engines = vec![
        ("memory", "engine = \"memory\"".to_string(), 400_000, 65_536),
        (
            "memory",
            "engine = \"memory\"".to_string(),
            100_000,
            1_000_000,
        ),
    ];
    if cfg!(feature = "redis") {
        let url = env("REDIS_URL", "redis://127.0.0.1:6379");
        engines.push((
            "redis",
            format!("engine = \"redis\"\nurl = \"{url}\"\nkey_prefix = \"bench-log\""),
            40_000,
            65_536,
        ));
    }
    if cfg!(feature = "postgres") {
        engines.push((
            "postgres",
            format!("engine = \"postgres\"\nurl = \"{pg}\"\nschema = \"bench_log\""),
            20_000,
            65_536,
        ));
    }
    let dir = std::env::temp_dir().join(format!("ratesync-bench-log-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    let mut sinks = vec![(
        "sqlite",
        format!("path = {:?}", dir.join("log.sqlite3").display().to_string()),
    )];
    if cfg!(feature = "postgres") {
        sinks.push(("postgres", "store = \"logpg\"".to_string()));
    }
    // A sink that keeps nothing: what the check itself pays, without a
    // writer's work competing for the machine.
    sinks.push((
        "discard",
        format!(
            "path = {:?}",
            dir.join("unused.sqlite3").display().to_string()
        ),
    ));
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    println!("engine    sink        queue  logging off/s  logging on/s  share   written  dropped   (checks/s, medians of {ROUNDS} rounds, {TASKS} tasks on {KEYS} keys)");
    for (engine, store, calls, queue) in &engines {
        for (sink, at) in &sinks {
            let toml = format!(
                "[stores.s]\n{store}\n\
                 [stores.logpg]\nengine = \"postgres\"\nurl = \"{pg}\"\nschema = \"bench_log_sink\"\n\
                 [decision_log]\n{at}\nqueue = {queue}\nbatch = 2000\nflush_interval = \"100ms\"\n\
                 [policies.off]\nstore = \"s\"\nkey = \"api_key\"\nwindows = [\n\
                 {{ window = \"1s\", limit = 4000000000, algorithm = \"token_bucket\", name = \"second\" }},\n\
                 {{ window = \"1m\", limit = 4000000000, algorithm = \"sliding_counter\", name = \"minute\" }},\n\
                 {{ window = \"1h\", limit = 4000000000, algorithm = \"fixed_window\", name = \"hour\" }},\n]\n\
                 [policies.on]\nstore = \"s\"\nkey = \"api_key\"\nlog_decisions = true\nwindows = [\n\
                 {{ window = \"1s\", limit = 4000000000, algorithm = \"token_bucket\", name = \"second\" }},\n\
                 {{ window = \"1m\", limit = 4000000000, algorithm = \"sliding_counter\", name = \"minute\" }},\n\
                 {{ window = \"1h\", limit = 4000000000, algorithm = \"fixed_window\", name = \"hour\" }},\n]\n"
            );
            let reg = match rt.block_on(Registry::from_toml_str(&toml)) {
                Ok(r) => r,
                Err(e) => {
                    println!("{engine:<8}  {sink:<8}  {queue:>7}  skipped: {e}");
                    continue;
                }
            };
            if *sink == "discard" {
                let settings = ratesync::config::decision_log::LogSettings {
                    queue: *queue,
                    batch: 2000,
                    flush_interval: std::time::Duration::from_millis(100),
                    ..Default::default()
                };
                let _enter = rt.enter();
                reg.use_decision_log(DecisionLog::with_sink(Arc::new(Discard), settings));
            }
            let (off, on) = (reg.policy("off").unwrap(), reg.policy("on").unwrap());
            rt.block_on(rate(&off, calls / 10));
            rt.block_on(rate(&on, calls / 10));
            let (mut a, mut b) = (Vec::new(), Vec::new());
            for _ in 0..ROUNDS {
                a.push(rt.block_on(rate(&off, *calls)));
                b.push(rt.block_on(rate(&on, *calls)));
            }
            let log = reg.decision_log().expect("a decision log");
            let _ = rt.block_on(log.flush_within(std::time::Duration::from_secs(60)));
            let s = log.stats();
            let (a, b) = (median(a), median(b));
            println!(
                "{engine:<8}  {sink:<8}  {queue:>7}  {a:>13.0}  {b:>12.0}  {:>5.1}%  {:>7}  {:>7}",
                b / a * 100.0,
                s.written,
                s.dropped
            );
            rt.block_on(reg.close());
        }
    }
}
