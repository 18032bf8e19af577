//! `ratesync bench` end to end: the report's figures agree with each other
//! and with the limit, the charts are written, and bad requests are refused.

use crate::support::*;
use std::process::Command;

/// Runs `ratesync --config CONFIG bench ARGS`; (success, stdout, stderr).
pub fn bench(config: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(ratesync_bin())
        .arg("--config")
        .arg(config)
        .arg("bench")
        .args(args)
        .output()
        .expect("run ratesync bench");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Checks what every report must satisfy and returns it.
pub fn check_report(json: &str) -> serde_json::Value {
    let r: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"));
    let acquisitions = r["acquisitions"].as_u64().unwrap();
    let binned: u64 = r["grants_per_100ms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(binned, acquisitions, "every grant is in a bin");
    let a = &r["accuracy"];
    assert_eq!(a["holds"], true, "{r}");
    assert_eq!(a["checked"], a["of"], "every grant checked");
    let f = &r["fairness"];
    let jain = f["jain_index"].as_f64().unwrap();
    assert!(jain > 0.0 && jain <= 1.0 + 1e-9, "{f}");
    let shares: f64 = f["process_shares"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .sum();
    assert!((shares - 1.0).abs() < 1e-9, "{f}");
    let p = &r["latency_us"];
    let (p50, p99, max) = (
        p["p50"].as_u64().unwrap(),
        p["p99"].as_u64().unwrap(),
        p["max"].as_u64().unwrap(),
    );
    assert!(p50 <= p99 && p99 <= max, "{p}");
    r
}

#[test]
fn bench_on_memory_reports_the_limit_and_draws_it() {
    // Its throughput floor needs the CPU the scenarios would take.
    let _serial = serial();
    let dir = scratch("bench-memory");
    let config = write_config(
        &dir,
        "[stores.m]\nengine = \"memory\"\n[limiters.l]\nstore = \"m\"\nrate_per_second = 200\nburst = 10\n",
    );
    let out = dir.join("out");
    let (ok, stdout, stderr) = bench(
        &config,
        &[
            "--limiter",
            "l",
            "--tasks",
            "8",
            "--duration",
            "2s",
            "--json",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(ok, "{stderr}");
    let r = check_report(&stdout);
    let secs = r["seconds"].as_f64().unwrap();
    let n = r["acquisitions"].as_f64().unwrap();
    println!("bench memory: {n} grants in {secs:.2} s at 200/s burst 10: {r}");
    assert!(n <= 10.0 + 200.0 * secs + 1.0, "more than the limit allows");
    assert!(n >= 0.95 * 200.0 * (secs - 0.1), "far below the limit");
    assert!(
        r["overshoot_us"]["p50"].as_u64().is_some(),
        "acquire mode reports overshoot"
    );
    assert_eq!(r["limit_per_100ms"].as_f64(), Some(20.0));
    for f in ["grants.svg", "latency.svg"] {
        let text = std::fs::read_to_string(out.join(f)).unwrap();
        assert!(
            text.starts_with("<svg") && text.contains("grants per 100 ms") == (f == "grants.svg"),
            "{f}"
        );
    }
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(saved["acquisitions"], r["acquisitions"]);
}

#[test]
fn bench_refuses_what_it_cannot_measure() {
    let dir = scratch("bench-refuse");
    let config = write_config(
        &dir,
        "[stores.m]\nengine = \"memory\"\n[limiters.l]\nstore = \"m\"\nrate_per_second = 5\n",
    );
    let (ok, _, stderr) = bench(
        &config,
        &["--limiter", "l", "--processes", "2", "--duration", "1s"],
    );
    assert!(!ok);
    assert!(
        stderr.contains("memory store") && stderr.contains("--processes 1"),
        "{stderr}"
    );
    let (ok, _, stderr) = bench(&config, &["--limiter", "nope", "--duration", "1s"]);
    assert!(!ok);
    assert!(
        stderr.contains("no limiter `nope`") && stderr.contains("it has: l"),
        "{stderr}"
    );
    let (ok, _, stderr) = bench(&config, &["--limiter", "l", "--duration", "soon"]);
    assert!(!ok);
    assert!(stderr.contains("`soon` is not a duration"), "{stderr}");
}
