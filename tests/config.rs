//! Configuration: every invalid case gets a message naming the table and key at fault.

use ratesync::config::{Config, EngineKind};
use ratesync::ConfigError;
use std::time::Duration;

fn parse_env(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let lookup = |name: &str| {
        env.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    };
    Config::parse(text, "test.toml", &lookup)
}

fn err(text: &str) -> String {
    parse_env(text, &[])
        .expect_err("the configuration should be rejected")
        .to_string()
}

#[test]
fn burst_below_one() {
    assert_eq!(
        err("[limiters.api]\nrate_per_second = 10.0\nburst = 0"),
        "test.toml: limiters.api.burst: must be >= 1, got 0"
    );
}

#[test]
fn missing_store() {
    assert_eq!(
        err("[stores.main]\nengine = \"memory\"\n[limiters.api]\nstore = \"nope\"\nrate_per_second = 1"),
        "test.toml: limiters.api.store: no store named `nope`; define [stores.nope] or use one of: memory, main"
    );
}

#[test]
fn rate_zero_negative_and_nan() {
    assert_eq!(
        err("[limiters.api]\nrate_per_second = 0"),
        "test.toml: limiters.api.rate_per_second: must be a positive number, got 0"
    );
    assert_eq!(
        err("[limiters.api]\nrate_per_second = -2.5"),
        "test.toml: limiters.api.rate_per_second: must be a positive number, got -2.5"
    );
    assert_eq!(
        err("[limiters.api]\nrate_per_second = nan"),
        "test.toml: limiters.api.rate_per_second: must be a positive number, got NaN"
    );
}

#[test]
fn window_zero_and_missing_parts() {
    assert_eq!(
        err("[limiters.login]\nalgorithm = \"sliding_window\"\nlimit = 5\nwindow_seconds = 0"),
        "test.toml: limiters.login.window_seconds: must be a positive number of seconds, got 0"
    );
    assert_eq!(
        err("[limiters.login]\nalgorithm = \"sliding_window\"\nwindow_seconds = 60"),
        "test.toml: limiters.login.limit: is required for a sliding window"
    );
    assert_eq!(
        err("[limiters.login]\nalgorithm = \"sliding_window\"\nlimit = 0\nwindow_seconds = 60"),
        "test.toml: limiters.login.limit: must be >= 1, got 0"
    );
}

#[test]
fn limiter_that_limits_nothing() {
    assert_eq!(
        err("[limiters.api]\ntimeout = 1.0"),
        "test.toml: limiters.api: limits nothing: set rate_per_second, a sliding window (algorithm = \"sliding_window\", limit, window_seconds), or max_concurrent"
    );
}

#[test]
fn mixed_algorithms_point_at_the_fix() {
    assert_eq!(
        err("[limiters.api]\nlimit = 5\nwindow_seconds = 60"),
        "test.toml: limiters.api.limit: belongs to a sliding window; add algorithm = \"sliding_window\" or use rate_per_second"
    );
    assert_eq!(
        err("[limiters.api]\nalgorithm = \"sliding_window\"\nrate_per_second = 1.0\nlimit = 1\nwindow_seconds = 1"),
        "test.toml: limiters.api.rate_per_second: belongs to a token bucket; remove it or drop algorithm = \"sliding_window\""
    );
}

#[test]
fn decision_log_settings_are_checked_and_name_the_key() {
    let policy = "[policies.api]\nwindows = [{ window = \"1s\", limit = 1 }]\n";
    for (toml, want) in [
        (
            format!("{policy}log_decisions = \"maybe\""),
            "test.toml: policies.api.log_decisions: `maybe`: write true, false, \"denied\" or a sample rate such as 0.1",
        ),
        (
            format!("{policy}log_decisions = 1.5"),
            "test.toml: policies.api.log_decisions: a sample rate is from 0 to 1, got 1.5",
        ),
        (
            format!("{policy}log_keys = \"hashed\""),
            "test.toml: policies.api.log_keys: \"hashed\" digests keys under decision_log.key_secret, which is not set: add key_secret = \"${RATESYNC_LOG_KEY_SECRET}\" to [decision_log]",
        ),
        (
            "[decision_log]\nstore = \"nope\"".to_string(),
            "test.toml: decision_log.store: no store named `nope`; define [stores.nope] with engine = \"postgres\", or remove `store` to log into a SQLite file",
        ),
        (
            "[stores.r]\nengine = \"memory\"\n[decision_log]\nstore = \"r\"".to_string(),
            "test.toml: decision_log.store: store `r` is of engine `memory`; the decision log is kept in PostgreSQL or SQLite: name a postgres store, or remove `store` for SQLite",
        ),
        (
            "[decision_log]\nqueue = 0".to_string(),
            "test.toml: decision_log.queue: must be a whole number from 1 to 10000000, got 0",
        ),
        (
            "[decision_log]\nkey_secret = \"short\"".to_string(),
            "test.toml: decision_log.key_secret: is shorter than 16 characters, so digests of guessable keys could be reversed: use a long random one (openssl rand -hex 32)",
        ),
        (
            "[decision_log]\npath = \"a.db\"\nstore = \"x\"".to_string(),
            "test.toml: decision_log.path: a log goes to one sink: remove `path` (SQLite) or `store` (PostgreSQL)",
        ),
    ] {
        assert_eq!(err(&toml), want);
    }
    let e = err("[decision_log]\nretention = \"1s\"");
    assert!(e.starts_with("test.toml: decision_log.retention: "), "{e}");
    let secret = "[decision_log]\nkey_secret = \"hunter2-hunter2-hunter2\"\n";
    let c = ratesync::config::Config::parse(secret, "test.toml", &|_| None).unwrap();
    assert!(
        !format!("{c:?}").contains("hunter2"),
        "the secret never prints"
    );
}

#[test]
fn unknown_keys_are_errors() {
    let e = err("[limiters.api]\nrate_per_second = 1.0\nbursts = 3");
    assert!(e.starts_with("test.toml: limiters.api.bursts: unknown field `bursts`, expected one of `store`, `algorithm`, `rate_per_second`, `burst`,"), "{e}");
    assert_eq!(
        err("[limiter.api]\nrate_per_second = 1.0"),
        "test.toml: limiter: unknown key; expected `stores`, `limiters`, `policies`, `http`, `envoy`, `decision_log` or `alerts`"
    );
    let e = err("[stores.main]\nengine = \"memory\"\nhost = \"x\"");
    assert!(
        e.starts_with("test.toml: stores.main.host: unknown field `host`"),
        "{e}"
    );
}

#[test]
fn wrong_types_name_the_key() {
    let e = err("[limiters.api]\nrate_per_second = 1.0\nburst = \"ten\"");
    assert!(
        e.starts_with("test.toml: limiters.api.burst: invalid type: string \"ten\""),
        "{e}"
    );
    let e = err("[limiters.api]\nrate_per_second = 1.0\non_backend_error = \"fail_sideways\"");
    assert!(
        e.starts_with("test.toml: limiters.api.on_backend_error: unknown variant `fail_sideways`"),
        "{e}"
    );
    assert_eq!(
        err("limiters = 3"),
        "test.toml: limiters: must be a table, got integer"
    );
}

#[test]
fn engines_and_store_settings() {
    let e = err("[stores.main]\nengine = \"zookeeper\"");
    assert!(
        e.starts_with("test.toml: stores.main.engine: unknown variant `zookeeper`"),
        "{e}"
    );
    assert_eq!(
        err("[stores.main]\nengine = \"memory\"\nurl = \"redis://x\""),
        "test.toml: stores.main.url: the memory engine keeps state in this process and takes no url; remove it or choose another engine"
    );
}

#[test]
fn other_bounds() {
    assert_eq!(
        err("[limiters.api]\nmax_concurrent = 0"),
        "test.toml: limiters.api.max_concurrent: must be >= 1, got 0"
    );
    assert_eq!(
        err("[limiters.api]\nmax_concurrent = 2\nlease_seconds = -1"),
        "test.toml: limiters.api.lease_seconds: must be a positive number of seconds, got -1"
    );
    assert_eq!(
        err("[limiters.api]\nrate_per_second = 1.0\ntimeout = -0.5"),
        "test.toml: limiters.api.timeout: must be a number of seconds >= 0, got -0.5"
    );
    assert_eq!(
        err("[limiters.api]\nrate_per_second = 1.0\nlease_seconds = 3"),
        "test.toml: limiters.api.lease_seconds: needs max_concurrent"
    );
}

#[test]
fn syntax_errors_give_line_and_column() {
    let e = err("[limiters.api]\nrate_per_second = = 1");
    assert!(e.starts_with("test.toml: line 2, column "), "{e}");
}

#[test]
fn env_expansion() {
    let text = r#"
[stores.main]
engine = "${ENGINE:-memory}"
# a comment may mention ${UNSET_IN_COMMENT} freely
[limiters.api]
store = "main"
rate_per_second = ${RATE}
burst = ${BURST:-7}
timeout = 2.5
[limiters."$${literal}"]
max_concurrent = 1
"#;
    let c = parse_env(text, &[("RATE", "40")]).unwrap();
    assert_eq!(c.stores["main"].engine, EngineKind::Memory);
    let api = &c.limiters["api"];
    assert_eq!(api.timeout, Some(Duration::from_millis(2500)));
    match api.rate {
        Some(ratesync::config::RateSpec::TokenBucket(g)) => {
            assert_eq!(g.burst(), 7);
            assert_eq!(g.emission_ns(), 25_000_000);
        }
        other => panic!("expected a token bucket, got {other:?}"),
    }
    assert!(c.limiters.contains_key("${literal}"));

    assert_eq!(
        parse_env(text, &[]).unwrap_err().to_string(),
        "test.toml: line 7: environment variable RATE is not set; set it or write ${RATE:-default}"
    );
    // An empty variable takes the default, as in a shell.
    let c = parse_env(text, &[("RATE", "1"), ("BURST", "")]).unwrap();
    assert!(
        matches!(c.limiters["api"].rate, Some(ratesync::config::RateSpec::TokenBucket(g)) if g.burst() == 7)
    );
}

#[test]
fn files_and_default_locations() {
    let e = Config::from_file("/nonexistent/ratesync.toml")
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("/nonexistent/ratesync.toml: (file): cannot read the file:"),
        "{e}"
    );

    let dir = std::env::temp_dir().join(format!("ratesync-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("limits.toml");
    std::fs::write(&path, "[limiters.api]\nrate_per_second = 1.0\nburst = 0\n").unwrap();
    let e = Config::from_file(&path).unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "{}: limiters.api.burst: must be >= 1, got 0",
            path.display()
        )
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_shipped_config_is_valid() {
    let c = Config::from_file(concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml")).unwrap();
    assert!(c.limiters.contains_key("api"));
}

#[cfg(feature = "redis")]
#[test]
fn redis_store_settings() {
    assert_eq!(
        err("[stores.r]\nengine = \"redis\""),
        "test.toml: stores.r.url: is required for engine `redis`, e.g. url = \"redis://127.0.0.1:6379/0\""
    );
    assert_eq!(
        err("[stores.r]\nengine = \"redis\"\nurl = \"http://user:hunter2@cache:6379\""),
        "test.toml: stores.r.url: must start with redis://, rediss:// (TLS), unix:// or, for a Redis Cluster, redis+cluster:// (rediss+cluster:// with TLS), got \"http://***@cache:6379\""
    );
    assert_eq!(
        err("[stores.r]\nengine = \"redis\"\nurl = \"redis://x\"\nkey_prefix = \"my app*\""),
        "test.toml: stores.r.key_prefix: may contain only letters, digits and - _ . : /, got \"my app*\""
    );
    assert_eq!(
        err("[stores.r]\nengine = \"redis\"\nurl = \"redis://x\"\nresponse_timeout = 0"),
        "test.toml: stores.r.response_timeout: must be a positive number of seconds, got 0"
    );
    assert_eq!(
        err("[stores.r]\nengine = \"redis\"\nurl = \"redis://:pw@x\"\ntls_ca_file = \"ca.pem\""),
        "test.toml: stores.r.tls_ca_file: is for TLS connections, and this url is not one: use rediss:// (or rediss+cluster://), got \"redis://***@x\""
    );
    assert_eq!(
        err("[stores.r]\nengine = \"redis\"\nurl = \"redis+cluster://u:secret@a:1/0\""),
        "test.toml: stores.r.url: a cluster url names nodes only (host:port,host:port); a cluster has no databases, got \"redis+cluster://***@a:1/0\""
    );

    assert_eq!(
        err("[stores.r]\nengine = \"redis\"\nurl = \"redis://x\"\nconnect_timeout = -1"),
        "test.toml: stores.r.connect_timeout: must be a positive number of seconds, got -1"
    );
    let ok = parse_env(
        "[stores.r]\nengine = \"redis\"\nurl = \"${URL}\"\nkey_prefix = \"app:prod\"\nresponse_timeout = 0.5\n[limiters.a]\nstore = \"r\"\nrate_per_second = 1",
        &[("URL", "rediss://default:pw@cache.example:6380/1")],
    )
    .expect("a TLS URL from the environment is accepted");
    let store = &ok.stores["r"];
    assert_eq!(store.prefix(), "app:prod");
    assert_eq!(store.response_timeout(), Duration::from_millis(500));
    assert_eq!(store.connect_timeout(), Duration::from_secs(10));
}

/// A store that cannot be reached is named in the error, with the password hidden.
#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_connect_error_hides_the_password() {
    let e = ratesync::Registry::from_toml_str(
        "[stores.cache]\nengine = \"redis\"\nurl = \"redis://app:hunter2@127.0.0.1:1\"\nresponse_timeout = 1",
    )
    .await
    .expect_err("nothing listens on port 1")
    .to_string();
    assert!(
        e.starts_with("store `cache` (redis://***@127.0.0.1:1): cannot connect:"),
        "{e}"
    );
    assert!(!e.contains("hunter2"), "{e}");
}

#[cfg(feature = "postgres")]
#[test]
fn postgres_store_settings() {
    assert_eq!(
        err("[stores.db]\nengine = \"postgres\""),
        "test.toml: stores.db.url: is required for engine `postgres`, e.g. url = \"postgres://user@127.0.0.1:5432/app\" (or dsn = \"host=... dbname=...\")"
    );
    let e =
        err("[stores.db]\nengine = \"postgres\"\ndsn = \"host=db password=hunter2 port=notaport\"");
    assert!(
        e.starts_with("test.toml: stores.db.url: is not a valid PostgreSQL URL or key=value DSN (")
            && e.ends_with("\"host=db password=*** port=notaport\""),
        "{e}"
    );
    assert_eq!(
        err("[stores.db]\nengine = \"postgres\"\nurl = \"postgres://x@h/db\"\npool_size = 0"),
        "test.toml: stores.db.pool_size: must be >= 1, got 0"
    );
    assert_eq!(
        err("[stores.db]\nengine = \"postgres\"\nurl = \"postgres://x@h/db\"\nschema = \"Rate-Sync\""),
        "test.toml: stores.db.schema: must be a lower-case SQL name ([a-z_][a-z0-9_]*, at most 50 characters), got \"Rate-Sync\""
    );
    assert_eq!(
        err("[stores.db]\nengine = \"postgres\"\nurl = \"postgres://x@h/db\"\nsweep_seconds = -1"),
        "test.toml: stores.db.sweep_seconds: must be a positive number of seconds, got -1"
    );
    assert_eq!(
        err("[stores.r]\nengine = \"memory\"\npool_size = 4"),
        "test.toml: stores.r.pool_size: applies only to engine `postgres`, this store's engine is `memory`; remove it"
    );
    let ok = parse_env(
        "[stores.db]\nengine = \"postgres\"\ndsn = \"host=127.0.0.1 user=app dbname=app\"\npool_size = 16\nschema = \"limits\"\nsweep_seconds = 5\n[limiters.a]\nstore = \"db\"\nrate_per_second = 1",
        &[],
    )
    .expect("a key=value DSN is accepted");
    let store = &ok.stores["db"];
    assert_eq!((store.pool_size(), store.schema()), (16, "limits"));
    assert_eq!(store.sweep_interval(), Duration::from_secs(5));
}

#[cfg(feature = "nats")]
#[test]
fn nats_store_settings() {
    assert_eq!(
        err("[stores.n]\nengine = \"nats\""),
        "test.toml: stores.n.url: is required for engine `nats`, e.g. url = \"nats://127.0.0.1:4222\""
    );
    assert_eq!(
        err("[stores.n]\nengine = \"nats\"\nurl = \"http://u:secret@h:4222\""),
        "test.toml: stores.n.url: must start with nats:// or tls:// (TLS), got \"http://***@h:4222\""
    );
    assert_eq!(
        err("[stores.n]\nengine = \"nats\"\nurl = \"nats://h\"\nbucket = \"rate.sync\""),
        "test.toml: stores.n.bucket: may contain only letters, digits, _ and -, got \"rate.sync\""
    );
    assert_eq!(
        err("[stores.m]\nengine = \"memory\"\ncoalesce = false"),
        "test.toml: stores.m.coalesce: applies only to engine `postgres` or `nats` or `redis`, this store's engine is `memory`; remove it"
    );
    assert_eq!(
        err("[stores.n]\nengine = \"nats\"\nurl = \"nats://h\"\nmax_cas_retries = 0"),
        "test.toml: stores.n.max_cas_retries: must be >= 1, got 0"
    );
    assert_eq!(
        err("[stores.n]\nengine = \"nats\"\nurl = \"nats://h\"\nkey_prefix = \"app:prod\""),
        "test.toml: stores.n.key_prefix: NATS keys cannot contain `:` or empty `.` tokens; use letters, digits and - _ . /, got \"app:prod\""
    );
    assert_eq!(
        err("[stores.r]\nengine = \"postgres\"\nurl = \"postgres://x@h/db\"\nbucket = \"b\""),
        "test.toml: stores.r.bucket: applies only to engine `nats`, this store's engine is `postgres`; remove it"
    );
    assert_eq!(
        err("[stores.m]\nengine = \"memory\"\ntls_ca_file = \"ca.pem\""),
        "test.toml: stores.m.tls_ca_file: applies only to engine `postgres` or `nats` or `redis`, this store's engine is `memory`; remove it"
    );
    // A bucket of 1 token per hour and burst 48 matters for 48 h after a
    // change: a store that forgets keys after a day would admit a new burst.
    assert_eq!(
        err("[stores.n]\nengine = \"nats\"\nurl = \"nats://h\"\n[limiters.slow]\nstore = \"n\"\nrate_per_second = 0.000277777\nburst = 48"),
        "test.toml: limiters.slow: its state matters for 172801 s after each change, longer than store `n` keeps an untouched key (max_age_seconds = 86400); raise max_age_seconds"
    );
    let ok = parse_env(
        "[stores.n]\nengine = \"nats\"\nurl = \"tls://h:4222\"\nbucket = \"limits\"\nmax_age_seconds = 200000\nmax_cas_retries = 4\nclock_offset_ms = -2000\n[limiters.slow]\nstore = \"n\"\nrate_per_second = 0.000277777\nburst = 48",
        &[],
    )
    .expect("a longer max age admits the slow limiter");
    let store = &ok.stores["n"];
    assert_eq!((store.bucket(), store.max_cas_retries()), ("limits", 4));
    assert_eq!(store.max_age(), Duration::from_secs(200_000));
}

#[test]
fn alert_channels_name_what_is_missing() {
    assert_eq!(
        err("[alerts.channels.webhook]\nheaders = { A = \"b\" }"),
        "test.toml: alerts.channels.webhook.url: Webhook url not configured"
    );
    assert_eq!(
        err("[alerts.channels.pagerduty]\nurl = \"https://events.example\""),
        "test.toml: alerts.channels.pagerduty.routing_key: PagerDuty routing_key not configured"
    );
    assert_eq!(
        err("[alerts.channels.slack]"),
        "test.toml: alerts.channels.slack.webhook_url: Slack webhook_url not configured"
    );
    assert_eq!(
        err("[alerts.channels.email]\nfrom = \"a@b.c\"\nto = [\"d@e.f\"]"),
        "test.toml: alerts.channels.email.smtp_host: Email smtp_host not configured"
    );
    assert_eq!(
        err("[alerts]\ninterval_seconds = 0"),
        "test.toml: alerts.interval_seconds: must be a positive number of seconds"
    );
    let e = err("[alerts.thresholds]\navg_wait = 3");
    assert!(
        e.starts_with("test.toml: alerts.thresholds.avg_wait: unknown field `avg_wait`"),
        "{e}"
    );
    // A disabled channel needs nothing; env expansion reaches the table.
    let ok = parse_env(
        "[alerts]\ncooldown_seconds = 60\n[alerts.channels.webhook]\nenabled = false\n[alerts.channels.pagerduty]\nrouting_key = \"${PD_KEY}\"",
        &[("PD_KEY", "abc")],
    )
    .expect("valid alerts");
    let alerts = ok.alerts.expect("an [alerts] table");
    assert_eq!(alerts.cooldown_seconds, 60.0);
    assert_eq!(
        alerts
            .channels
            .pagerduty
            .and_then(|p| p.routing_key)
            .as_ref()
            .map(ratesync::secret::Secret::expose),
        Some("abc")
    );
}

/// No secret of a configuration shows in its `Debug`, nor in the `Debug` of
/// the alert loop built from it.
#[tokio::test]
async fn no_secret_in_debug_output() {
    let text = r#"
[stores.pg]
engine = "postgres"
dsn = "host=127.0.0.1 user=app password='correct horse' dbname=test"
[stores.r]
engine = "redis"
url = "redis://app:hunter2@127.0.0.1:1/0"
[limiters.api]
store = "r"
rate_per_second = 1.0
[alerts]
[alerts.channels.webhook]
url = "https://hooks.example/path/T0KEN-IN-PATH?token=T0KEN-IN-QUERY"
headers = { Authorization = "Bearer HEADER-T0KEN" }
[alerts.channels.slack]
webhook_url = "https://hooks.slack.com/services/T0/B0/SLACK-T0KEN"
[alerts.channels.pagerduty]
routing_key = "R0UTING-KEY"
[alerts.channels.email]
smtp_host = "127.0.0.1"
username = "ops"
password = "SMTP-PASSW0RD"
from = "a@example.com"
to = ["b@example.com"]
"#;
    let secrets = [
        "correct horse",
        "hunter2",
        "T0KEN-IN-PATH",
        "T0KEN-IN-QUERY",
        "HEADER-T0KEN",
        "SLACK-T0KEN",
        "R0UTING-KEY",
        "SMTP-PASSW0RD",
    ];
    let config = parse_env(text, &[]).expect("valid");
    let debug = format!("{config:?}");
    for s in secrets {
        assert!(!debug.contains(s), "{s:?} in Debug of Config: {debug}");
    }
    let registry = ratesync::Registry::from_config(Config {
        stores: Default::default(),
        limiters: Default::default(),
        ..config.clone()
    })
    .await
    .expect("an empty registry");
    let alert_loop =
        ratesync::alert::AlertLoop::new(registry, config.alerts.clone().expect("alerts"))
            .expect("the loop");
    let debug = format!("{alert_loop:?}");
    for s in secrets {
        assert!(!debug.contains(s), "{s:?} in Debug of AlertLoop: {debug}");
    }
}

/// A lease shorter than a second, or than one renewal can take on its
/// store, is refused: such a lease runs out under a live holder.
#[test]
fn leases_have_a_sane_minimum() {
    assert_eq!(
        err("[limiters.jobs]\nmax_concurrent = 1\nlease_seconds = 0.0000005"),
        "test.toml: limiters.jobs.lease_seconds: must be at least 1 s, got 0.0000005: a shorter lease runs out under a holder that is merely slow, and a second holder gets its slot"
    );
    let redis = "[stores.r]\nengine = \"redis\"\nurl = \"redis://127.0.0.1:6379\"\n";
    assert_eq!(
        err(&format!("{redis}[limiters.jobs]\nstore = \"r\"\nmax_concurrent = 1\nlease_seconds = 2")),
        "test.toml: limiters.jobs.lease_seconds: must be at least 3.000 s with store `r` (1.5 x its response_timeout of 2.000 s, so a renewal sent a third of the way into the lease is answered before it ends), got 2.000; raise lease_seconds or lower response_timeout"
    );
    // A shorter response_timeout allows a shorter lease.
    parse_env(
        &format!("{redis}response_timeout = 1.0\n[limiters.jobs]\nstore = \"r\"\nmax_concurrent = 1\nlease_seconds = 2"),
        &[],
    )
    .expect("a 2 s lease with a 1 s response_timeout");
    parse_env(
        "[limiters.jobs]\nmax_concurrent = 1\nlease_seconds = 1",
        &[],
    )
    .expect("1 s on memory");
}

/// Rates, bursts, windows and holders an engine cannot keep exactly are
/// refused at load, naming the field, the value and the supported range.
#[test]
fn arithmetic_edges_are_refused_at_load() {
    // Tolerance past u64 nanoseconds: once admitted everything (2100 of 2100).
    let e = err("[limiters.api]\nrate_per_second = 1e-7\nburst = 2000");
    assert!(
        e.starts_with("test.toml: limiters.api.burst: with rate_per_second = 0.0000001, the bucket takes 2.000e10 s to refill; burst / rate_per_second must be at most 315360000 s"),
        "{e}"
    );
    assert_eq!(
        err("[limiters.api]\nrate_per_second = 2e9"),
        "test.toml: limiters.api.rate_per_second: must be at most 1e9 (one grant per nanosecond), got 2000000000"
    );
    let redis = "[stores.r]\nengine = \"redis\"\nurl = \"redis://127.0.0.1:6379\"\n";
    assert_eq!(
        err(&format!("{redis}[limiters.api]\nstore = \"r\"\nrate_per_second = 2e6")),
        "test.toml: limiters.api.rate_per_second: must be at most 1e6 with store `r` (engine redis counts whole microseconds), got 2000000; use the memory or nats engine for faster rates"
    );
    parse_env(
        &format!("{redis}[limiters.api]\nstore = \"r\"\nrate_per_second = 1e6"),
        &[],
    )
    .expect("1e6/s fits whole microseconds");
    let nats = "[stores.n]\nengine = \"nats\"\nurl = \"nats://127.0.0.1:4222\"\n";
    assert_eq!(
        err(&format!("{nats}[limiters.w]\nstore = \"n\"\nalgorithm = \"sliding_window\"\nlimit = 200000\nwindow_seconds = 1")),
        "test.toml: limiters.w.limit: must be at most 100000 with store `n` (engine nats keeps a window's grants in one value under the 1 MiB payload limit), got 200000; use a token bucket or another engine"
    );
    assert_eq!(
        err(&format!("{nats}[limiters.c]\nstore = \"n\"\nmax_concurrent = 30000")),
        "test.toml: limiters.c.max_concurrent: must be at most 20000 with store `n` (engine nats keeps a key's holders in one value under the 1 MiB payload limit), got 30000"
    );
    // The same checks hold for limiters registered from code.
    assert!(ratesync::gcra::Gcra::new(1e-7, 2000).is_none());
}

/// Every duration is checked once: infinities, 1.8e19 and microsecond
/// request timeouts are refused with the field named, never a later panic.
#[test]
fn durations_are_checked_in_range() {
    assert_eq!(
        err("[limiters.api]\nrate_per_second = 1.0\ntimeout = 1e20"),
        "test.toml: limiters.api.timeout: must be at most 315360000 (10 years) seconds, got 100000000000000000000"
    );
    assert_eq!(
        err("[limiters.w]\nalgorithm = \"sliding_window\"\nlimit = 1\nwindow_seconds = inf"),
        "test.toml: limiters.w.window_seconds: must be at most 315360000 (10 years) seconds, got inf"
    );
    assert_eq!(
        err("[stores.r]\nengine = \"redis\"\nurl = \"redis://h\"\nresponse_timeout = 0.000001"),
        "test.toml: stores.r.response_timeout: must be at least 0.001 seconds, got 0.000001"
    );
    assert_eq!(
        err("[alerts]\ncooldown_seconds = 1.8e19"),
        "test.toml: alerts.cooldown_seconds: must be at most 315360000 (10 years) seconds, got 18000000000000000000"
    );
    assert_eq!(
        err("[alerts]\ninterval_seconds = 1e12"),
        "test.toml: alerts.interval_seconds: must be at most 315360000 (10 years) seconds, got 1000000000000"
    );
    assert_eq!(
        err("[alerts]\n[alerts.channels.webhook]\nurl = \"http://h/x\"\ntimeout_seconds = 1.8e19"),
        "test.toml: alerts.channels.webhook.timeout_seconds: must be at most 315360000 (10 years) seconds, got 18000000000000000000"
    );
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    };
    let base = ratesync::alert::AlertConfig::default;
    assert_eq!(
        base()
            .with_overrides_from(&env(&[("RATE_SYNC_ALERT_INTERVAL", "inf")]))
            .unwrap_err()
            .to_string(),
        "(environment): RATE_SYNC_ALERT_INTERVAL: must be at most 315360000 (10 years) seconds, got inf"
    );
    assert_eq!(
        base()
            .with_overrides_from(&env(&[("RATESYNC_ALERT_INTERVAL", "1 fortnight")]))
            .unwrap_err()
            .to_string(),
        "(environment): RATESYNC_ALERT_INTERVAL: must be a number of seconds (or with a unit: 500ms, 1s, 2m, 1h, 1d), got \"1 fortnight\""
    );
    // Units are read, never ignored.
    for (vars, secs) in [
        (&[("RATESYNC_ALERT_INTERVAL", "1s")], 1.0),
        (&[("RATESYNC_ALERT_INTERVAL", "500ms")], 0.5),
        (&[("RATESYNC_ALERT_INTERVAL", "2m")], 120.0),
    ] {
        let text = vars[0].1;
        let c = base().with_overrides_from(&env(vars)).unwrap();
        assert_eq!(c.interval_seconds, secs, "{text}");
    }
    let c = base()
        .with_overrides_from(&env(&[
            ("RATESYNC_ALERT_INTERVAL", "1"),
            ("RATE_SYNC_ALERT_INTERVAL", "9"),
        ]))
        .unwrap();
    assert_eq!(
        c.interval_seconds, 1.0,
        "the RATESYNC_ name wins over the old one"
    );
}

/// Expanded values are data: a value with a quote and a newline cannot add
/// a table, passwords with `"` and `\` arrive as written, and a value that is
/// not a number cannot stand outside quotes.
#[test]
fn expanded_values_are_data_never_syntax() {
    let text = "[stores.r]\nengine = \"redis\"\nurl = \"${REDIS_URL}\"\n[limiters.api]\nstore = \"r\"\nrate_per_second = 1";
    let hostile = "redis://h:6379\"\n[limiters.extra]\nrate_per_second = 1000000\n#";
    let c = parse_env(text, &[("REDIS_URL", hostile)]).expect("the value is only a url");
    assert!(
        !c.limiters.contains_key("extra"),
        "a variable injected a table"
    );
    assert_eq!(c.limiters.len(), 1);
    assert_eq!(c.stores["r"].url.as_ref().unwrap().expose(), hostile);
    let pw = r#"p"a\ss'w
ord"#;
    let c = parse_env(
        "[stores.r]\nengine = \"redis\"\nurl = \"redis://app:${PW}@127.0.0.1\"\n",
        &[("PW", pw)],
    )
    .expect("any password fits in quotes");
    let url = c.stores["r"].url.as_ref().unwrap().expose().to_string();
    assert_eq!(
        url,
        format!("redis://app:{pw}@127.0.0.1"),
        "the password arrives whole"
    );
    // Outside quotes: numbers and booleans only, naming the variable and key.
    assert_eq!(
        err_env("[limiters.api]\nrate_per_second = ${API_RATE}", &[("API_RATE", "abc")]),
        "test.toml: line 2: `${API_RATE}` stands outside quotes, so its value must be a number or true/false, and API_RATE is \"abc\" (for `rate_per_second`); put it in quotes (\"${API_RATE}\") for text"
    );
    assert!(err_env(
        "[limiters.api]\nrate_per_second = ${R}",
        &[("R", "1\n[limiters.x]\nrate_per_second = 5")]
    )
    .contains("stands outside quotes"));
    let ok = parse_env(
        "[limiters.api]\nrate_per_second = ${R}\nburst = ${B}",
        &[("R", "2.5"), ("B", " 4 ")],
    )
    .expect("numbers outside quotes");
    assert!(ok.limiters.contains_key("api"));
    // '...' strings cannot hold a quote: refused with the way out.
    assert!(err_env(
        "[stores.r]\nengine = 'redis'\nurl = '${U}'",
        &[("U", "redis://h'x")]
    )
    .contains("cannot stand in a '...' string"));
    // A trailing comment is not expanded.
    parse_env("[limiters.api]\nrate_per_second = 1 # ${NOT_SET} here", &[])
        .expect("comment left alone");
}

fn err_env(text: &str, env: &[(&str, &str)]) -> String {
    parse_env(text, env)
        .expect_err("the configuration should be rejected")
        .to_string()
}

/// The compose file publishes every service on loopback only, each with a
/// password: a store open to the network lets anyone reset every limit.
#[test]
fn compose_services_are_private() {
    let compose =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docker-compose.yml"))
            .expect("docker-compose.yml");
    let ports: Vec<&str> = compose
        .lines()
        .filter(|l| l.trim_start().starts_with("ports:"))
        .collect();
    assert_eq!(ports.len(), 4, "{ports:?}");
    for p in ports {
        assert!(p.contains("\"127.0.0.1:"), "published beyond loopback: {p}");
    }
    assert!(!compose.contains("trust"), "postgres with trust auth");
    assert!(
        compose.contains("--requirepass"),
        "redis without a password"
    );
    assert_eq!(
        compose.matches("\"--pass\"").count(),
        2,
        "a NATS server without a password"
    );
}

mod any_config {
    use super::parse_env;
    use proptest::prelude::*;
    use std::time::Duration;

    /// Mostly sane numbers, with every extreme a careless operator writes.
    fn number() -> impl Strategy<Value = String> {
        let extreme = prop_oneof![
            Just("0"),
            Just("-1"),
            Just("1e-300"),
            Just("1e300"),
            Just("inf"),
            Just("nan"),
            Just("-0.0"),
            Just("4294967296"),
            Just("18446744073709551615"),
        ]
        .prop_map(str::to_string);
        prop_oneof![
            1 => extreme,
            2 => (-12.0f64..12.0).prop_map(|e| format!("{:e}", 10f64.powf(e))),
            6 => (1u32..100).prop_map(|n| n.to_string()),
        ]
    }

    fn limiter() -> impl Strategy<Value = String> {
        let opt = |name: &'static str| {
            proptest::option::of(number())
                .prop_map(move |v| v.map_or(String::new(), |v| format!("{name} = {v}\n")))
        };
        let rate = prop_oneof![
            (number(), opt("burst")).prop_map(|(r, b)| format!("rate_per_second = {r}\n{b}")),
            (number(), number()).prop_map(|(l, w)| format!(
                "algorithm = \"sliding_window\"\nlimit = {l}\nwindow_seconds = {w}\n"
            )),
            Just(String::new()),
        ];
        let cap = prop_oneof![
            (number(), opt("lease_seconds"))
                .prop_map(|(m, l)| format!("max_concurrent = {m}\n{l}")),
            Just(String::new()),
        ];
        (
            rate,
            cap,
            opt("timeout"),
            prop_oneof![Just(""), Just("on_backend_error = \"fail_open\"\n")],
        )
            .prop_map(|(r, c, t, f)| format!("[limiters.x]\n{r}{c}{t}{f}"))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        /// Whatever the numbers, a configuration is refused with an error or
        /// accepted, and an accepted one's limiter decides without error.
        #[test]
        fn any_accepted_config_decides(text in limiter()) {
            let Ok(config) = parse_env(&text, &[]) else { return Ok(()) };
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
            rt.block_on(async {
                let reg = ratesync::Registry::from_config(config).await.unwrap();
                let lim = reg.limiter("x").unwrap();
                let held = lim.try_acquire().await.unwrap();
                let waited = lim.acquire_timeout(Duration::from_millis(1)).await;
                assert!(waited.is_ok() || waited.as_ref().is_err_and(|e| e.is_timeout()), "{text}: {waited:?}");
                lim.key("k").try_acquire().await.unwrap();
                lim.state().await.unwrap();
                drop((held, waited));
            });
        }
    }
}
