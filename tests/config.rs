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
fn unknown_keys_are_errors() {
    let e = err("[limiters.api]\nrate_per_second = 1.0\nbursts = 3");
    assert!(e.starts_with("test.toml: limiters.api.bursts: unknown field `bursts`, expected one of `store`, `algorithm`, `rate_per_second`, `burst`,"), "{e}");
    assert_eq!(
        err("[limiter.api]\nrate_per_second = 1.0"),
        "test.toml: limiter: unknown key; expected `stores` or `limiters`"
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
