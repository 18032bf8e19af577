//! The decision log against both sinks: the same analytics from the same
//! seeded rows with exact answers, rollups equal to the raw counts, a
//! batch written twice counted once, retention deleting exactly what is
//! older, a tampered audit record found, privacy settings honoured, and the
//! writer riding out a PostgreSQL restart in the middle of a burst.

use crate::postgres::{database_url, pg_ctl, psql};
use crate::scenarios::port_open;
use crate::support::*;
use ratesync::analytics::Analytics;
use ratesync::config::decision_log::LogSettings;
use ratesync::decision_log::sink::{Offender, PathHits, Point, RuleHits, Span, Totals};
use ratesync::decision_log::{DecisionEvent, DecisionLog, LogSink, PostgresSink, SqliteSink};
use ratesync::policy::Request;
use ratesync::Registry;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A sink under test and how to reach its tables from outside.
enum Under {
    Sqlite(PathBuf),
    Postgres(String),
}

impl Under {
    fn label(&self) -> &'static str {
        match self {
            Under::Sqlite(_) => "sqlite",
            Under::Postgres(_) => "postgres",
        }
    }

    /// The `[decision_log]` table (and store) logging here.
    fn config(&self) -> String {
        match self {
            Under::Sqlite(p) => format!("[decision_log]\npath = {:?}\n", p.display().to_string()),
            Under::Postgres(schema) => format!(
                "[stores.pg]\nengine = \"postgres\"\nurl = \"{}\"\nschema = \"{schema}\"\n\n[decision_log]\nstore = \"pg\"\n",
                database_url()
            ),
        }
    }

    async fn sink(&self) -> Arc<dyn LogSink> {
        match self {
            Under::Sqlite(p) => Arc::new(SqliteSink::open(p).unwrap()),
            Under::Postgres(_) => {
                let config = ratesync::config::Config::from_toml_str(&self.config()).unwrap();
                Arc::new(
                    PostgresSink::connect("pg", &config.stores["pg"])
                        .await
                        .unwrap(),
                )
            }
        }
    }

    /// Runs one statement on the sink's database from outside ratesync.
    fn execute(&self, sql: &str) {
        match self {
            Under::Sqlite(p) => {
                rusqlite::Connection::open(p)
                    .unwrap()
                    .execute(sql, [])
                    .unwrap();
            }
            Under::Postgres(schema) => {
                psql(&format!("SET search_path TO {schema}; {sql}"));
            }
        }
    }

    /// Every stored text of the log's tables, for privacy checks.
    fn dump(&self) -> String {
        let tables = [
            "ratesync_decisions",
            "ratesync_decision_minutes",
            "ratesync_audit",
        ];
        match self {
            Under::Sqlite(p) => {
                let c = rusqlite::Connection::open(p).unwrap();
                let mut out = String::new();
                for t in tables {
                    let mut stmt = c.prepare(&format!("SELECT * FROM {t}")).unwrap();
                    let n = stmt.column_count();
                    let mut rows = stmt.query([]).unwrap();
                    while let Some(r) = rows.next().unwrap() {
                        for i in 0..n {
                            let v: rusqlite::types::Value = r.get(i).unwrap();
                            out.push_str(&format!("{v:?}|"));
                        }
                        out.push('\n');
                    }
                }
                out
            }
            Under::Postgres(schema) => tables
                .iter()
                .map(|t| psql(&format!("SELECT t::text FROM {schema}.{t} t")))
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }

    fn drop_tables(&self) {
        if let Under::Postgres(schema) = self {
            psql(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));
        }
    }
}

/// The sinks reachable here: SQLite always, PostgreSQL when it runs.
fn sinks(scenario: &str) -> Vec<Under> {
    let dir = scratch(scenario);
    let mut out = vec![Under::Sqlite(dir.join("log.sqlite3"))];
    if service_up("PostgreSQL", &database_url(), 5432) {
        let schema = format!("rslog_{}", unique_prefix(scenario).replace('-', "_"));
        out.push(Under::Postgres(schema));
    }
    out
}

fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// One seeded event, `ago` seconds before now.
fn event(
    seq: i64,
    ago: i64,
    key: &str,
    policy: &'static str,
    window: &'static str,
    allowed: bool,
    path: &str,
) -> DecisionEvent {
    DecisionEvent {
        origin: 7,
        seq,
        ts_us: (now_s() - ago) * 1_000_000 + seq % 1000,
        key: key.into(),
        policy: policy.into(),
        window: window.into(),
        tier: None,
        path: Some(path.into()),
        method: Some("GET".into()),
        allowed,
        action: if allowed { "allow" } else { "throttle" }.into(),
        count: 1,
        limit: Some(10),
        cost: 1,
        ip: Some("203.0.113.5".parse().unwrap()),
        user: None,
        host: "it".into(),
        config_version: 1,
    }
}

/// The seeded log: what each analytics call must answer is computed from
/// this list by hand below.
fn seed() -> Vec<DecisionEvent> {
    let mut v = Vec::new();
    let mut n = 0;
    let mut add = |ago, key: &str, policy, window, allowed, path: &str| {
        n += 1;
        v.push(event(n, ago, key, policy, window, allowed, path));
    };
    // key "a": 5 on api 10 minutes ago (3 refused), 1 refused on `other`.
    for allowed in [true, true, false, false, false] {
        add(
            600,
            "a",
            "api",
            "1m",
            allowed,
            if allowed { "/x" } else { "/y" },
        );
    }
    add(300, "a", "other", "1h", false, "/y");
    // key "b": 2 refused two days ago.
    add(2 * 86_400, "b", "api", "1h", false, "/z");
    add(2 * 86_400, "b", "api", "1h", false, "/z");
    // key "c": 4 admitted just now; "=cmd": 1 refused (a CSV formula).
    for _ in 0..4 {
        add(5, "c", "api", "1m", true, "/x");
    }
    add(5, "=cmd", "api", "1m", false, "/x");
    v
}

#[test]
fn analytics_answer_exactly_on_every_sink() {
    let _serial = serial();
    for under in sinks("analytics") {
        runtime().block_on(async {
            let sink = under.sink().await;
            let events = seed();
            assert_eq!(sink.write(&events).await.unwrap(), events.len() as u64);
            let a = Analytics::new(sink.clone(), None);
            let label = under.label();

            let day = a.summary(1, None).await.unwrap();
            assert_eq!(day.window, Totals { total: 11, allowed: 6, blocked: 5 }, "{label}");
            let midnight = now_s() - now_s().rem_euclid(86_400);
            let today = events.iter().filter(|e| e.ts_us / 1_000_000 >= midnight).count() as u64;
            assert_eq!(day.today.total, today, "{label}");
            let week = a.summary(7, None).await.unwrap();
            assert_eq!(week.window, Totals { total: 13, allowed: 6, blocked: 7 }, "{label}");
            assert!((week.block_rate - 7.0 / 13.0).abs() < 1e-9);
            assert_eq!(a.summary(0, None).await.unwrap().days, 1);
            assert_eq!(a.summary(100_000, None).await.unwrap().days, 365);
            assert_eq!(a.summary(7, Some("other")).await.unwrap().window.total, 1, "{label}");

            let top = a.top_offenders(7, None, 10).await.unwrap();
            let off = |k: &str, blocked, total| Offender { key: k.into(), blocked, total };
            assert_eq!(top, vec![off("a", 4, 6), off("b", 2, 2), off("=cmd", 1, 1)], "{label}");
            assert_eq!(a.top_offenders(1, Some("api"), 1).await.unwrap(), vec![off("a", 3, 5)]);

            let rules = a.rule_hits(7, None).await.unwrap();
            let rule = |p: &str, w: &str, hits, blocks| RuleHits { policy: p.into(), window: w.into(), hits, blocks };
            assert_eq!(rules, vec![rule("api", "1h", 2, 2), rule("api", "1m", 10, 4), rule("other", "1h", 1, 1)], "{label}");

            let series = a.series(1, None).await.unwrap();
            assert_eq!(series.bucket, 60);
            let minute = |ago: i64| { let t = now_s() - ago; t - t.rem_euclid(60) };
            let mut expected: BTreeMap<i64, (u64, u64)> = BTreeMap::new();
            for e in events.iter().filter(|e| e.ts_us / 1_000_000 > now_s() - 86_000) {
                let p = expected.entry(e.minute()).or_default();
                if e.allowed { p.0 += 1 } else { p.1 += 1 }
            }
            let expected: Vec<Point> = expected.into_iter().map(|(at, (allowed, blocked))| Point { at, allowed, blocked }).collect();
            assert_eq!(series.points, expected, "{label}");
            assert!(series.points.iter().any(|p| p.at == minute(600)));
            assert_eq!(a.series(7, None).await.unwrap().bucket, 3600);

            let a_detail = a.offender("a", 7, None).await.unwrap();
            assert_eq!(a_detail.totals, Totals { total: 6, allowed: 2, blocked: 4 }, "{label}");
            let of_a: Vec<_> = events.iter().filter(|e| e.key == "a").collect();
            assert_eq!(a_detail.first_seen_us, of_a.iter().map(|e| e.ts_us).min());
            assert_eq!(a_detail.last_seen_us, of_a.iter().map(|e| e.ts_us).max());
            assert_eq!(
                a_detail.by_path,
                vec![
                    PathHits { path: "/y".into(), total: 4, blocked: 4 },
                    PathHits { path: "/x".into(), total: 2, blocked: 0 },
                ],
                "{label}"
            );
            assert_eq!(a_detail.recent.len(), 6);
            assert_eq!(a_detail.recent[0], *of_a.iter().max_by_key(|e| e.ts_us).copied().unwrap(), "{label}: newest first, every field back");
            assert_eq!(a.offender("nobody", 7, None).await.unwrap().totals.total, 0);

            assert_eq!(
                a.top_offenders_csv(7, None, 10).await.unwrap(),
                "key,blocked,total,block_rate\n\"a\",4,6,0.6667\n\"b\",2,2,1.0000\n\"'=cmd\",1,1,1.0000\n",
                "{label}"
            );
            let over = a.over_threshold(Duration::from_secs(900), 3, None).await.unwrap();
            assert_eq!(over, vec![off("a", 4, 6)], "{label}");
            under.drop_tables();
        });
    }
}

#[test]
fn a_batch_written_twice_counts_once_and_rollups_equal_raw_counts() {
    let _serial = serial();
    for under in sinks("rollups") {
        runtime().block_on(async {
            let sink = under.sink().await;
            let keys = ["k0", "k1", "k2", "k3 é", "k4\u{FFFD}"];
            let events: Vec<DecisionEvent> = (0..2_000)
                .map(|i: i64| {
                    let key = keys[(i * 7 % 5) as usize];
                    event(
                        i + 1,
                        (i * 37) % 3_000,
                        key,
                        "api",
                        "1m",
                        i % 3 != 0,
                        &format!("/p{}", i % 4),
                    )
                })
                .collect();
            assert_eq!(sink.write(&events).await.unwrap(), 2_000);
            assert_eq!(
                sink.write(&events[..500]).await.unwrap(),
                0,
                "{}: written again, counted once",
                under.label()
            );
            let span = Span {
                since: now_s() - 86_400,
                until: now_s() + 60,
                policy: None,
            };
            for key in keys {
                let raw: Vec<_> = events.iter().filter(|e| e.key == key).collect();
                let t = sink.key_totals(&span, key).await.unwrap();
                assert_eq!(t.total, raw.len() as u64, "{}: {key}", under.label());
                assert_eq!(t.allowed, raw.iter().filter(|e| e.allowed).count() as u64);
                let paths = sink.key_events(&span, key, 1).await.unwrap().by_path;
                assert_eq!(
                    paths.iter().map(|p| p.total).sum::<u64>(),
                    t.total,
                    "raw events agree with the rollups"
                );
            }
            assert_eq!(sink.totals(&span).await.unwrap().total, 2_000);
            under.drop_tables();
        });
    }
}

#[test]
fn retention_deletes_exactly_what_is_older() {
    let _serial = serial();
    for under in sinks("retention") {
        runtime().block_on(async {
            let sink = under.sink().await;
            let mut events = Vec::new();
            for i in 0..40 {
                // 25 two hours old (in 5 minutes), 15 from the last 20 minutes.
                let ago = if i < 25 {
                    7_200 + (i % 5) * 60
                } else {
                    (i % 20) * 60
                };
                events.push(event(
                    i + 1,
                    ago,
                    &format!("k{}", i % 3),
                    "api",
                    "1m",
                    i % 2 == 0,
                    "/",
                ));
            }
            sink.write(&events).await.unwrap();
            let cut_s = now_s() - 3_600;
            let older: Vec<_> = events
                .iter()
                .filter(|e| e.ts_us < cut_s * 1_000_000)
                .collect();
            let older_rollups: std::collections::BTreeSet<_> = older
                .iter()
                .map(|e| (e.minute(), e.key.clone(), e.allowed))
                .collect();
            let cleaned = sink
                .cleanup(cut_s * 1_000_000, cut_s - cut_s.rem_euclid(60), 4)
                .await
                .unwrap();
            assert_eq!(cleaned.events, older.len() as u64, "{}", under.label());
            assert_eq!(
                cleaned.rollups,
                older_rollups.len() as u64,
                "{}",
                under.label()
            );
            let span = Span {
                since: 0,
                until: now_s() + 60,
                policy: None,
            };
            assert_eq!(sink.totals(&span).await.unwrap().total, 15);
            assert_eq!(
                sink.cleanup(cut_s * 1_000_000, cut_s, 4)
                    .await
                    .unwrap()
                    .events,
                0
            );
            under.drop_tables();
        });
    }
}

#[test]
fn a_tampered_audit_record_is_found() {
    let _serial = serial();
    for under in sinks("audit") {
        runtime().block_on(async {
            let log = DecisionLog::with_sink(under.sink().await, LogSettings::default());
            for i in 0..5 {
                log.audit("cli", "ban", "api", &format!("k{i}"), "60s: abuse")
                    .await
                    .unwrap();
            }
            assert_eq!(
                log.verify_audit().await.unwrap(),
                Ok(5),
                "{}",
                under.label()
            );
            under.execute("UPDATE ratesync_audit SET subject = 'someone-else' WHERE seq = 3");
            let broken = log.verify_audit().await.unwrap().unwrap_err();
            assert_eq!(broken.seq, 3, "{}: {broken}", under.label());
            under.execute("UPDATE ratesync_audit SET subject = 'k2' WHERE seq = 3");
            assert_eq!(log.verify_audit().await.unwrap(), Ok(5));
            under.execute("DELETE FROM ratesync_audit WHERE seq = 4");
            assert_eq!(
                log.verify_audit().await.unwrap().unwrap_err().seq,
                5,
                "{}",
                under.label()
            );
            under.drop_tables();
        });
    }
}

#[test]
fn privacy_settings_leave_no_clear_key_or_full_address() {
    let _serial = serial();
    for under in sinks("privacy") {
        runtime().block_on(async {
            let toml = format!(
                "{}key_secret = \"0123456789abcdef0123\"\n\n[policies.api]\nkey = [\"api_key\", \"ip\"]\nwindows = [{{ window = \"1m\", limit = 2 }}]\nlog_decisions = true\nlog_keys = \"hashed\"\nlog_ips = \"truncated\"\n",
                under.config()
            );
            let reg = Registry::from_toml_str(&toml).await.unwrap();
            let api = reg.policy("api").unwrap();
            let req = Request::new()
                .api_key("alice-secret-key")
                .user("alice@example.com")
                .ip("203.0.113.77".parse().unwrap())
                .path("/v1/items");
            for _ in 0..3 {
                api.check(&req).await.unwrap();
            }
            api.acting_as("it").block(&req, Duration::from_secs(60), "abuse").await.unwrap();
            reg.decision_log().unwrap().flush().await.unwrap();
            let dump = under.dump();
            assert!(dump.contains("203.0.113.0"), "{}: the /24 is kept: {dump}", under.label());
            for clear in ["alice", "203.0.113.77"] {
                assert!(!dump.contains(clear), "{}: `{clear}` is stored in the clear:\n{dump}", under.label());
            }
            let a = reg.decision_log().unwrap().analytics();
            let found = a.offender("alice-secret-key|203.0.113.77", 1, None).await.unwrap();
            assert_eq!(found.totals.total, 3, "{}: found by the clear key through its digest", under.label());
            reg.close().await;
            under.drop_tables();
        });
    }
}

#[test]
fn denied_only_and_sampled_logging_log_what_they_say() {
    let _serial = serial();
    let under = &sinks("which")[0];
    runtime().block_on(async {
        let toml = format!(
            "{}\n[policies.denied]\nkey = \"api_key\"\nwindows = [{{ window = \"1h\", limit = 10 }}]\nlog_decisions = \"denied\"\n\n[policies.sampled]\nkey = \"api_key\"\nwindows = [{{ window = \"1h\", limit = 100000, algorithm = \"sliding_counter\" }}]\nlog_decisions = 0.25\n",
            under.config()
        );
        let reg = Registry::from_toml_str(&toml).await.unwrap();
        let (denied, sampled) = (reg.policy("denied").unwrap(), reg.policy("sampled").unwrap());
        for _ in 0..30 {
            denied.check(&Request::new().api_key("d")).await.unwrap();
        }
        for _ in 0..4_000 {
            sampled.check(&Request::new().api_key("s")).await.unwrap();
        }
        let log = reg.decision_log().unwrap();
        log.flush().await.unwrap();
        let a = log.analytics();
        let d = a.summary(1, Some("denied")).await.unwrap().window;
        assert_eq!((d.total, d.blocked), (20, 20));
        let s = a.summary(1, Some("sampled")).await.unwrap().window.total;
        // Binomial(4000, 0.25): mean 1000, sd 27; 6 sd either side.
        assert!((840..=1160).contains(&s), "sampled {s} of 4000 at 0.25");
        reg.close().await;
    });
}

/// The writer under a burst of 100,000 decisions while PostgreSQL is
/// stopped and started again: every check answers at once, what the full
/// queue cannot take is counted as dropped, the rest is written exactly
/// once, and writing resumes by itself.
#[test]
fn the_writer_rides_out_a_postgres_restart_mid_burst() {
    if !service_up("PostgreSQL", &database_url(), 5432) {
        return;
    }
    if !have("pg_ctlcluster") && std::env::var("RATESYNC_PG_CTL").is_err() {
        skip_or_fail(
            "cannot restart PostgreSQL from here (needs pg_ctlcluster or $RATESYNC_PG_CTL)",
        );
        return;
    }
    let _serial = serial();
    let schema = format!("rslog_{}", unique_prefix("burst").replace('-', "_"));
    let under = Under::Postgres(schema.clone());
    let total = 100_000u64;
    let toml = format!(
        "{}queue = 20000\nbatch = 2000\nflush_interval = \"50ms\"\n\n[policies.api]\nkey = \"api_key\"\nwindows = [{{ window = \"1s\", limit = 50 }}]\nlog_decisions = true\n",
        under.config()
    );
    runtime().block_on(async {
        let reg = Registry::from_toml_str(&toml).await.unwrap();
        let api = reg.policy("api").unwrap();
        let log = reg.decision_log().unwrap();
        let started = Instant::now();
        let mut slowest = Duration::ZERO;
        let mut outage: Option<std::thread::JoinHandle<()>> = None;
        for i in 0..total {
            if i == total * 3 / 10 {
                outage = Some(std::thread::spawn(|| {
                    pg_ctl("stop");
                    std::thread::sleep(Duration::from_secs(2));
                    pg_ctl("start");
                }));
            }
            let t = Instant::now();
            let d = api.check(&Request::new().api_key(format!("k{}", i % 500))).await;
            slowest = slowest.max(t.elapsed());
            assert!(d.is_ok(), "check {i} failed: {d:?}");
            // ~8 s in all, so the outage falls in the middle.
            if i % 100 == 99 {
                tokio::time::sleep(Duration::from_millis(8)).await;
            }
        }
        outage.unwrap().join().unwrap();
        let t0 = Instant::now();
        while !port_open(5432) {
            assert!(t0.elapsed() < Duration::from_secs(30), "PostgreSQL did not come back");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        log.flush_within(Duration::from_secs(60)).await.unwrap();
        let s = log.stats();
        println!(
            "decision log burst: {total} checks in {:.1} s, slowest {:?}; {} written, {} dropped while PostgreSQL was down, {} failed writes retried, {} duplicates skipped",
            started.elapsed().as_secs_f64(), slowest, s.written, s.dropped, s.write_failures, s.duplicates
        );
        assert_eq!(s.enqueued + s.dropped, total, "every decision queued or counted as dropped");
        assert!(s.dropped > 0, "the outage outlasted the queue: some were dropped ({s:?})");
        assert!(s.write_failures > 0, "the writer saw the outage ({s:?})");
        assert_eq!(s.written, s.enqueued, "every queued decision written");
        assert!(
            slowest < Duration::from_millis(250),
            "a check waited {slowest:?}: logging must never hold a check"
        );
        let rows: u64 = psql(&format!("SELECT count(*) FROM {schema}.ratesync_decisions")).parse().unwrap();
        let ids: u64 = psql(&format!("SELECT count(DISTINCT (origin, seq)) FROM {schema}.ratesync_decisions")).parse().unwrap();
        let rolled: u64 = psql(&format!("SELECT sum(decisions) FROM {schema}.ratesync_decision_minutes")).parse().unwrap();
        assert_eq!((rows, ids, rolled), (s.written, s.written, s.written), "written once, rollups equal the raw rows");
        // Writing goes on after the outage.
        api.check(&Request::new().api_key("after")).await.unwrap();
        log.flush().await.unwrap();
        assert_eq!(log.stats().written, s.written + 1);
        reg.close().await;
    });
    under.drop_tables();
}

/// The terminal side: `ratesync report`, `report offender`, `report --csv`,
/// `log cleanup`, and `audit verify` after the CLI's own bans and list
/// changes, which the trail records as the CLI's.
#[test]
fn the_cli_reports_cleans_up_and_verifies_the_trail() {
    let dir = scratch("cli-report");
    let config = write_config(
        &dir,
        &format!(
            "[decision_log]\npath = {:?}\n\n[policies.api]\nkey = \"api_key\"\nwindows = [{{ window = \"1m\", limit = 2 }}]\nlog_decisions = true\n",
            dir.join("log.sqlite3").display().to_string()
        ),
    );
    runtime().block_on(async {
        let reg = Registry::from_file(&config).await.unwrap();
        let api = reg.policy("api").unwrap();
        for (key, n) in [("noisy", 6), ("quiet", 1), ("=1+1", 3)] {
            for _ in 0..n {
                api.check(&Request::new().api_key(key).path("/v1/x"))
                    .await
                    .unwrap();
            }
        }
        reg.close().await;
    });
    let (code, out, _) = run_cli(&config, &["check", "--offline"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("logs every decision (keys in the clear, whole addresses)"),
        "{out}"
    );
    assert!(
        out.contains("  decision log: SQLite file ")
            && out.contains("queue 65536, batch 1000, events kept 30 d, rollups 400 d"),
        "{out}"
    );
    let (code, out, err) = run_cli(&config, &["report", "--days", "1"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("decisions over the last 1 day(s)"), "{out}");
    let line = |needle: &str| {
        out.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no `{needle}` in\n{out}"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(line("1 day(s)  "), "1 day(s) 10 5 5 50.0%", "{out}");
    assert_eq!(line("\"noisy\""), "\"noisy\" 4 6 66.7%");
    assert_eq!(line("1m"), "api 1m 10 5");
    let (code, csv, _) = run_cli(&config, &["report", "--csv"]);
    assert_eq!(code, 0);
    assert_eq!(
        csv,
        "key,blocked,total,block_rate\n\"noisy\",4,6,0.6667\n\"'=1+1\",1,3,0.3333\n"
    );
    let (code, out, _) = run_cli(&config, &["report", "offender", "noisy"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("decisions 6  allowed 2  blocked 4  block rate 66.7%"),
        "{out}"
    );
    assert!(out.contains("\"/v1/x\"  6      4"), "{out}");
    let (code, _, _) = run_cli(&config, &["report", "offender", "nobody"]);
    assert_eq!(code, 2, "an unknown key says so in its exit code");

    let (code, _, err) = run_cli(
        &config,
        &[
            "block",
            "--policy",
            "api",
            "--key",
            "noisy",
            "--duration",
            "60",
            "--reason",
            "abuse",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run_cli(
        &config,
        &["deny", "add", "--policy", "api", "203.0.113.0/24"],
    );
    assert_eq!(code, 0, "{err}");
    let (code, _, _) = run_cli(&config, &["unblock", "--policy", "api", "--key", "noisy"]);
    assert_eq!(code, 0);
    let (code, out, _) = run_cli(&config, &["audit", "verify"]);
    assert_eq!(
        (code, out.trim()),
        (0, "audit trail (sqlite): 3 records, every link holds")
    );
    let (_, out, _) = run_cli(&config, &["audit", "list"]);
    assert!(
        out.lines()
            .nth(1)
            .is_some_and(|l| l.contains("\"cli ") && l.contains("ban") && l.contains("abuse")),
        "{out}"
    );
    assert!(out.contains("deny_add") && out.contains("unban"), "{out}");
    rusqlite::Connection::open(dir.join("log.sqlite3"))
        .unwrap()
        .execute(
            "UPDATE ratesync_audit SET detail = 'nothing to see' WHERE seq = 1",
            [],
        )
        .unwrap();
    let (code, out, _) = run_cli(&config, &["audit", "verify"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("BROKEN at record 1: its hash does not match its fields"),
        "{out}"
    );

    let (code, out, _) = run_cli(&config, &["log", "cleanup", "--older-than", "0"]);
    assert_eq!(code, 0);
    assert!(out.contains("deleted 10 events and"), "{out}");
    let (_, out, _) = run_cli(&config, &["report"]);
    assert!(out.contains("(none refused)"), "{out}");
}

/// Keys, paths and users as a hostile client sends them (NUL, which
/// PostgreSQL refuses in text; 100 KB; control characters; invalid
/// escapes) never fail a batch, and two long keys stay two.
#[test]
fn hostile_input_never_fails_a_batch() {
    let _serial = serial();
    for under in sinks("hostile") {
        runtime().block_on(async {
            let toml = format!(
                "{}\n[policies.api]\nkey = \"api_key\"\nwindows = [{{ window = \"1m\", limit = 1 }}]\nlog_decisions = true\n",
                under.config()
            );
            let reg = Registry::from_toml_str(&toml).await.unwrap();
            let api = reg.policy("api").unwrap();
            let long = "x".repeat(100_000);
            let keys = [
                "nul\0inside".to_string(),
                format!("{long}a"),
                format!("{long}b"),
                "\u{1b}[2J\r\n'; DROP TABLE ratesync_decisions; --".to_string(),
            ];
            for k in &keys {
                for _ in 0..2 {
                    api.check(
                        &Request::new()
                            .api_key(k.clone())
                            .path(format!("/p\0{long}"))
                            .user("u\0".repeat(1000))
                            .method("G\0ET"),
                    )
                    .await
                    .unwrap();
                }
            }
            let log = reg.decision_log().unwrap();
            log.flush().await.unwrap();
            let s = log.stats();
            assert_eq!((s.written, s.write_failures), (8, 0), "{}: {s:?}", under.label());
            let top = log.analytics().top_offenders(1, None, 10).await.unwrap();
            assert_eq!(top.len(), 4, "{}: every key its own: {top:?}", under.label());
            assert!(top.iter().all(|o| o.key.len() <= 512 && !o.key.contains('\0')));
            reg.close().await;
            under.drop_tables();
        });
    }
}

/// Two hosts (two registries with logs of their own) writing one
/// PostgreSQL table at once: every decision of both is there once, and the
/// rollups they upsert together equal the raw rows.
#[test]
fn two_hosts_write_one_table() {
    if !service_up("PostgreSQL", &database_url(), 5432) {
        return;
    }
    let _serial = serial();
    let schema = format!("rslog_{}", unique_prefix("hosts").replace('-', "_"));
    let under = Under::Postgres(schema.clone());
    runtime().block_on(async {
        let mut hosts = Vec::new();
        for h in ["host-a", "host-b"] {
            let toml = format!(
                "{}host = \"{h}\"\nbatch = 100\nflush_interval = \"10ms\"\n\n[policies.api]\nkey = \"api_key\"\nwindows = [{{ window = \"1m\", limit = 3 }}]\nlog_decisions = true\n",
                under.config()
            );
            hosts.push(Registry::from_toml_str(&toml).await.unwrap());
        }
        let runs: Vec<_> = hosts
            .iter()
            .map(|reg| {
                let api = reg.policy("api").unwrap();
                tokio::spawn(async move {
                    for i in 0..1_500 {
                        api.check(&Request::new().api_key(format!("k{}", i % 10))).await.unwrap();
                    }
                })
            })
            .collect();
        for r in runs {
            r.await.unwrap();
        }
        for reg in &hosts {
            reg.decision_log().unwrap().flush().await.unwrap();
        }
        let count = |sql: &str| -> u64 { psql(&format!("SET search_path TO {schema}; {sql}")).lines().last().unwrap().parse().unwrap() };
        assert_eq!(count("SELECT count(*) FROM ratesync_decisions"), 3_000);
        assert_eq!(count("SELECT count(DISTINCT host) FROM ratesync_decisions"), 2);
        assert_eq!(count("SELECT sum(decisions) FROM ratesync_decision_minutes"), 3_000);
        for reg in &hosts {
            reg.close().await;
        }
    });
    under.drop_tables();
}

/// The writer runs retention on its own schedule.
#[test]
fn the_writer_deletes_what_retention_no_longer_keeps() {
    let _serial = serial();
    let under = &sinks("scheduled")[0];
    runtime().block_on(async {
        let sink = under.sink().await;
        let old: Vec<_> = (1..=30)
            .map(|i| event(i, 7_200, "old", "api", "1m", false, "/"))
            .collect();
        let new: Vec<_> = (31..=35)
            .map(|i| event(i, 10, "new", "api", "1m", true, "/"))
            .collect();
        sink.write(&old).await.unwrap();
        sink.write(&new).await.unwrap();
        let settings = LogSettings {
            retention: Duration::from_secs(3_600),
            rollup_retention: Duration::from_secs(3_600),
            cleanup_interval: Duration::from_millis(200),
            cleanup_batch: 7,
            ..LogSettings::default()
        };
        let log = DecisionLog::with_sink(sink.clone(), settings);
        let t = Instant::now();
        while log.stats().cleaned.events < 30 {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "retention did not run: {:?}",
                log.stats()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(log.stats().cleaned.events, 30);
        let span = Span {
            since: 0,
            until: now_s() + 60,
            policy: None,
        };
        assert_eq!(
            sink.totals(&span).await.unwrap(),
            Totals {
                total: 5,
                allowed: 5,
                blocked: 0
            }
        );
        log.close().await;
    });
}
