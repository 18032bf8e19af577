//! The PostgreSQL engine against a real server (`DATABASE_URL`, default
//! `postgres://root@127.0.0.1:5432/test`), with several OS processes.

use crate::scenarios::{self, port_open, Target};
use crate::support::*;
use ratesync::Registry;
use std::time::Duration;

/// The schema every scenario shares; each keeps to a key prefix of its own.
const SCHEMA: &str = "ratesync_it";

pub(crate) fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".to_string())
}

fn store(prefix: &str) -> String {
    format!(
        "[stores.s]\nengine = \"postgres\"\nurl = \"{}\"\nschema = \"{SCHEMA}\"\nkey_prefix = \"{prefix}\"\n",
        database_url()
    )
}

const POSTGRES: Target = Target {
    label: "postgres",
    store,
};

macro_rules! require_postgres {
    () => {
        if !service_up("PostgreSQL", &database_url(), 5432) {
            return;
        }
    };
}

/// One value from `psql`, for checks made outside the engine.
pub(crate) fn psql(sql: &str) -> String {
    sh(&format!("psql '{}' -Atc \"{sql}\"", database_url()))
        .trim()
        .to_string()
}

#[test]
fn token_bucket_four_processes_never_over_admit() {
    require_postgres!();
    let _serial = serial();
    scenarios::token_bucket_four_processes(&POSTGRES);
}

#[test]
fn rate_sweep_admits_the_limit_and_no_more() {
    require_postgres!();
    let _serial = serial();
    // One hot row in Postgres takes about 9,000 decisions/s here (pgbench of
    // the same function from 4 clients) and the 4 workers share its 2 cores;
    // with the CI host loaded 3,000/s came out 14% short and 1,000/s 6.9%
    // short (931/s), so accuracy is checked up to 150/s and the rest for
    // over-admission and the utilisation floor only (throughput is
    // `ratesync bench`'s; README: PostgreSQL engine).
    scenarios::rate_sweep(
        &POSTGRES,
        &[5.0, 50.0, 150.0, 1_000.0, 3_000.0, 10_000.0],
        150.0,
    );
}

#[test]
fn sliding_window_four_processes_never_exceed_the_limit() {
    require_postgres!();
    let _serial = serial();
    scenarios::sliding_window(&POSTGRES);
}

#[test]
fn concurrency_cap_holds_across_processes() {
    require_postgres!();
    let _serial = serial();
    scenarios::concurrency_cap(&POSTGRES);
}

#[test]
fn slots_of_a_killed_holder_come_back_after_the_lease() {
    require_postgres!();
    let _serial = serial();
    scenarios::killed_holder(&POSTGRES);
}

#[test]
fn a_release_wakes_a_waiter_at_once() {
    require_postgres!();
    let _serial = serial();
    scenarios::release_wakes_waiter(&POSTGRES);
}

#[test]
fn refused_requests_leave_no_slot() {
    require_postgres!();
    let _serial = serial();
    scenarios::refused_requests_leave_no_slot(&POSTGRES);
}

#[test]
fn long_keys_keep_their_limit() {
    require_postgres!();
    let _serial = serial();
    let n = scenarios::long_keys_keep_their_limit(&POSTGRES);
    println!("postgres: {n} keys of 3 KB to 1 MiB kept their limit");
}

#[test]
fn odd_keys_work_and_stay_distinct() {
    require_postgres!();
    let _serial = serial();
    let prefix = unique_prefix("keys");
    let n = scenarios::odd_keys(&POSTGRES, &prefix);
    let rows = psql(&format!(
        "SELECT count(*) FROM {SCHEMA}.rate WHERE key LIKE '{prefix}:%'"
    ));
    assert_eq!(rows, n.to_string(), "one row per caller key");
    let unsafe_rows = psql(&format!(
        "SELECT count(*) FROM {SCHEMA}.rate WHERE key LIKE '{prefix}:%' AND substr(key, {}) !~ '^[-_=.a-zA-Z0-9]+$'",
        prefix.len() + 2
    ));
    assert_eq!(unsafe_rows, "0", "keys outside the safe alphabet");
    println!("postgres odd keys: {n} keys, each with its own row, all stored keys safe");
}

/// Ten processes connecting to a new schema at once: one migration, no error.
#[test]
fn ten_processes_migrate_at_once() {
    require_postgres!();
    let _serial = serial();
    let schema = format!("rs_mig_{}", std::process::id());
    let dir = scratch("migrate");
    let config = write_config(
        &dir,
        &format!(
            "[stores.s]\nengine = \"postgres\"\nurl = \"{}\"\nschema = \"{schema}\"\n[limiters.api]\nstore = \"s\"\nrate_per_second = 1\n",
            database_url()
        ),
    );
    let children: Vec<_> = (0..10)
        .map(|_| {
            std::process::Command::new(ratesync_bin())
                .arg("--config")
                .arg(&config)
                .args(["state", "api"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn ratesync")
        })
        .collect();
    let mut failures = Vec::new();
    for c in children {
        let out = c.wait_with_output().expect("wait");
        if !out.status.success() {
            failures.push(String::from_utf8_lossy(&out.stderr).into_owned());
        }
    }
    let versions = psql(&format!(
        "SELECT string_agg(version::text, ',' ORDER BY version) FROM {schema}.schema_version"
    ));
    psql(&format!("DROP SCHEMA {schema} CASCADE"));
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "postgres: 10 processes migrating schema {schema} at once: {} failed, migrations recorded: {versions}",
        failures.len()
    );
    assert!(failures.is_empty(), "{failures:?}");
    // One version per migration file in engines/postgres/, each once.
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../engines/postgres"))
        .expect("engines/postgres")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "sql"))
        })
        .count();
    let expected: Vec<String> = (1..=files).map(|v| v.to_string()).collect();
    assert_eq!(versions, expected.join(","), "each migration recorded once");
}

/// Rows of this test's keys in the rate and lease tables.
fn rows_of(prefix: &str) -> (u64, u64) {
    let count = |table: &str| {
        psql(&format!(
            "SELECT count(*) FROM {SCHEMA}.{table} WHERE key LIKE '{prefix}:%'"
        ))
        .parse::<u64>()
        .unwrap()
    };
    (count("rate"), count("lease"))
}

/// Connects a Postgres store of its own (so the test can call `sweep`) and
/// a registry whose limiters `api` (token bucket, idle after 10 ms) and
/// `win` (sliding window of 0.2 s) use it.
async fn sweep_fixture(
    prefix: &str,
    sweep_seconds: f64,
) -> (
    Registry,
    std::sync::Arc<ratesync::engine::postgres::PostgresEngine>,
) {
    use ratesync::LimiterConfig;
    let config = ratesync::config::Config::from_toml_str(&format!(
        "{}sweep_seconds = {sweep_seconds}\n",
        store(prefix)
    ))
    .unwrap();
    let engine = std::sync::Arc::new(
        ratesync::engine::postgres::PostgresEngine::connect("s", &config.stores["s"])
            .await
            .unwrap(),
    );
    let reg = Registry::new();
    reg.add_store("s", engine.clone());
    reg.register("api", LimiterConfig::token_bucket(100.0, 1).with_store("s"))
        .unwrap();
    reg.register(
        "win",
        LimiterConfig::sliding_window(1, Duration::from_millis(200)).with_store("s"),
    )
    .unwrap();
    (reg, engine)
}

/// Takes a lease on `pool/<name>` through the engine and never renews or
/// releases it, as a holder that vanished would.
async fn abandoned_lease(reg: &Registry, name: &str, lease: Duration) {
    let spec = ratesync::config::ConcurrencySpec { max: 1, lease };
    let metrics = ratesync::metrics::Metrics::new();
    let key = ratesync::StateKey::new("pool").child(name);
    let ctx = ratesync::engine::Ctx {
        key: &key,
        metrics: &metrics,
    };
    let engine = reg.store("s").unwrap();
    let holder = ratesync::engine::HolderId::new();
    engine.acquire_lease(ctx, &holder, &spec).await.unwrap();
}

/// Idle rows go and live ones stay: 2,000 keys used once and 50 leases
/// whose holders vanished are all deleted by one sweep once they hold
/// nothing, while a lease still running survives it. The background sweep
/// is set to an hour so the counts before the sweep cannot race it.
#[test]
fn a_sweep_deletes_idle_rows_and_keeps_live_ones() {
    require_postgres!();
    let _serial = serial();
    let prefix = unique_prefix("sweep");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (reg, engine) = sweep_fixture(&prefix, 3600.0).await;
        let (api, win) = (reg.limiter("api").unwrap(), reg.limiter("win").unwrap());
        for i in 0..1000 {
            assert!(api.key(format!("u{i}")).try_acquire().await.unwrap().is_some());
            assert!(win.key(format!("u{i}")).try_acquire().await.unwrap().is_some());
        }
        for i in 0..50 {
            abandoned_lease(&reg, &format!("h{i}"), Duration::from_millis(300)).await;
        }
        abandoned_lease(&reg, "live", Duration::from_secs(3600)).await;
        let before = rows_of(&prefix);
        assert_eq!(before, (2000, 51));
        // Past every state's end (10 ms of refill, a 0.2 s window, 0.3 s
        // leases) and the 1 s of grace rate rows keep after it.
        tokio::time::sleep(Duration::from_millis(1600)).await;
        let deleted = engine.sweep().await.unwrap();
        let after = rows_of(&prefix);
        println!(
            "postgres sweep: rows before {before:?}, one sweep deleted {deleted}, left {after:?} (rate, lease)"
        );
        assert_eq!(after, (0, 1), "idle rows were left behind, or a live lease was deleted");
        assert!(deleted >= 2050, "the sweep reported {deleted} deletions");
        psql(&format!("DELETE FROM {SCHEMA}.lease WHERE key LIKE '{prefix}:%'"));
    });
}

/// The background sweep runs by itself every `sweep_seconds`.
#[test]
fn idle_rows_are_swept_in_the_background() {
    require_postgres!();
    let _serial = serial();
    let prefix = unique_prefix("bgsweep");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (reg, _engine) = sweep_fixture(&prefix, 0.2).await;
        let api = reg.limiter("api").unwrap();
        for i in 0..100 {
            assert!(api.key(format!("u{i}")).try_acquire().await.unwrap().is_some());
        }
        for i in 0..10 {
            abandoned_lease(&reg, &format!("h{i}"), Duration::from_millis(300)).await;
        }
        let started = std::time::Instant::now();
        while rows_of(&prefix) != (0, 0) {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the background sweep left {:?} (rate, lease) rows after 20 s",
                rows_of(&prefix)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!(
            "postgres background sweep: every idle row gone {:.1} s after the last write (sweep_seconds = 0.2)",
            started.elapsed().as_secs_f64()
        );
    });
}

/// `pg_ctlcluster` of the newest cluster on this machine, or `$RATESYNC_PG_CTL`
/// (a command taking `stop` or `start`).
pub(crate) fn pg_ctl(action: &str) {
    let cmd = std::env::var("RATESYNC_PG_CTL").unwrap_or_else(|_| {
        "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql | sort -V | tail -n 1) main".to_string()
    });
    sh(&format!("{cmd} {action}"));
}

#[test]
fn postgres_restart_mid_run_follows_the_failure_mode_and_recovers() {
    require_postgres!();
    let url = database_url();
    let local = url.contains("127.0.0.1") || url.contains("localhost");
    if !local || (!have("pg_ctlcluster") && std::env::var("RATESYNC_PG_CTL").is_err()) {
        let msg = format!(
            "cannot restart PostgreSQL at {} from here (needs pg_ctlcluster or $RATESYNC_PG_CTL)",
            ratesync::secret::redact(&url)
        );
        assert!(!services_required() || !local, "{msg}");
        skip_notice(&msg);
        return;
    }
    let _serial = serial();
    scenarios::restart(&POSTGRES, &|| pg_ctl("stop"), &|| pg_ctl("start"), &|| {
        port_open(5432)
    });
    // Other suites expect the server as services.sh leaves it.
    let t = std::time::Instant::now();
    while t.elapsed() < Duration::from_secs(10)
        && !std::process::Command::new("psql")
            .args([database_url().as_str(), "-Atc", "SELECT 1"])
            .output()
            .is_ok_and(|o| o.status.success())
    {
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn postgres_engine_keeps_the_contract() {
    require_postgres!();
    let _serial = serial();
    scenarios::contract(&POSTGRES);
}

/// `sslmode=require` verifies the server: with the server's CA in
/// `tls_ca_file` it connects, without it the error says what to set.
#[test]
fn tls_verifies_the_server_certificate() {
    require_postgres!();
    let ssl_on = std::process::Command::new("psql")
        .args([database_url().as_str(), "-Atc", "SHOW ssl"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "on");
    // Debian's server certificate: self-signed, for `localhost`.
    let cert = "/etc/ssl/certs/ssl-cert-snakeoil.pem";
    if std::env::var("DATABASE_URL").is_ok() {
        // The test is about the local server's own certificate.
        skip_notice(
            "the PostgreSQL TLS test runs against the local server only (DATABASE_URL is set)",
        );
        return;
    }
    if !ssl_on || !std::path::Path::new(cert).exists() {
        skip_or_fail(&format!(
            "the PostgreSQL TLS test needs the local server with ssl = on and {cert}"
        ));
        return;
    }
    let _serial = serial();
    let url = "postgres://root@localhost:5432/test?sslmode=require";
    let toml = |ca: &str| {
        format!(
            "[stores.s]\nengine = \"postgres\"\nurl = \"{url}\"\nschema = \"{SCHEMA}\"\n{ca}\n[limiters.api]\nstore = \"s\"\nrate_per_second = 100\n"
        )
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let reg = Registry::from_toml_str(&toml(&format!("tls_ca_file = \"{cert}\"")))
            .await
            .expect("TLS with the server's CA");
        assert!(reg
            .limiter("api")
            .unwrap()
            .try_acquire()
            .await
            .unwrap()
            .is_some());
        let e = Registry::from_toml_str(&toml(""))
            .await
            .expect_err("an unknown CA is refused")
            .to_string();
        assert!(
            e.contains("UnknownIssuer") && e.contains("tls_ca_file"),
            "{e}"
        );
        println!("postgres TLS: verified connection with tls_ca_file; without it: {e}");
    });
}

#[test]
fn many_hosts_share_one_limit() {
    require_postgres!();
    let _serial = serial();
    let engine = crate::cross_host::Engine {
        label: "postgres",
        store,
        serves_slow_hosts: true,
    };
    crate::cross_host::token_bucket(&engine);
    crate::cross_host::concurrency_with_killed_host(&engine);
}

#[test]
fn an_acquire_dropped_mid_request_leaves_no_slot() {
    require_postgres!();
    let _serial = serial();
    scenarios::cancelled_mid_request_leaves_no_slot(&POSTGRES);
}

#[test]
fn a_permit_dropped_before_exit_is_released() {
    require_postgres!();
    scenarios::a_permit_dropped_before_exit_is_released(&POSTGRES);
}

#[test]
fn the_cli_checks_resets_and_holds() {
    require_postgres!();
    scenarios::the_cli_checks_resets_and_holds(&POSTGRES, "PostgreSQL ");
}

#[test]
fn coalesced_hot_key_holds() {
    require_postgres!();
    let _serial = serial();
    scenarios::coalesced_hot_key_holds(&POSTGRES);
}

#[test]
fn weighted_requests_keep_the_limit_in_tokens() {
    require_postgres!();
    let _serial = serial();
    scenarios::weighted_requests_keep_the_limit_in_tokens(&POSTGRES);
}

#[test]
fn policy_windows_hold_across_processes() {
    require_postgres!();
    let _serial = serial();
    scenarios::policy_windows_hold_across_processes(&POSTGRES);
}

#[test]
fn a_ban_holds_in_every_process() {
    require_postgres!();
    let _serial = serial();
    scenarios::a_ban_holds_in_every_process(&POSTGRES);
}

#[test]
fn list_changes_reach_other_processes_within_a_second() {
    require_postgres!();
    let _serial = serial();
    scenarios::list_changes_reach_other_processes_within_a_second(&POSTGRES);
}
