//! Observability: the /metrics endpoint, the shipped dashboard and rules, and the alert loop's channels against local servers.
#![cfg(all(feature = "prometheus", feature = "alerts"))]

use ratesync::alert::{AlertLoop, AlertState, Channel, WebhookChannel, WebhookConfig};
use ratesync::telemetry::{exported_names, PrometheusExporter};
use ratesync::Registry;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// The value of one series in a Prometheus text scrape.
fn series(scrape: &str, name_and_labels: &str) -> Option<f64> {
    scrape
        .lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Every series of `scrape` is one `exported_names` documents.
fn only_documented_series(scrape: &str) {
    let names = exported_names();
    for line in scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name = line.split(['{', ' ']).next().unwrap_or("");
        assert!(
            names.iter().any(|n| n == name),
            "unexpected series {name}: {line}"
        );
    }
}

async fn get(url: &str) -> String {
    // reqwest is built without a crypto provider of its own; the alert
    // channels install one, but this test must not depend on another
    // having run first.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::get(url).await.unwrap().text().await.unwrap()
}

#[tokio::test]
async fn metrics_endpoint_serves_exact_values() {
    let reg = Registry::from_toml_str(
        "[limiters.api]\nrate_per_second = 0.001\nburst = 5\nmax_concurrent = 3\n\
         [limiters.slow]\nrate_per_second = 20\nburst = 1\n\
         [limiters.per]\nrate_per_second = 100\n",
    )
    .await
    .unwrap();
    let exporter = PrometheusExporter::new(&reg).unwrap();
    let server = exporter
        .serve("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let api = reg.limiter("api").unwrap();
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(api.acquire().await.unwrap());
    }
    for _ in 0..3 {
        api.acquire().await.unwrap().release().await.unwrap();
    }
    for _ in 0..2 {
        assert!(api.try_acquire().await.unwrap().is_none());
    }
    let slow = reg.limiter("slow").unwrap();
    drop(slow.acquire().await.unwrap());
    drop(slow.acquire().await.unwrap()); // waits ~50 ms for its slot
                                         // A per-key limiter, whose key must not reach a label.
    let per = reg.limiter("per").unwrap();
    drop(per.key("user-4242-secret").try_acquire().await.unwrap());

    let scrape = get(&format!("http://{}/metrics", server.addr())).await;
    let v = |s: &str| series(&scrape, s).unwrap_or_else(|| panic!("no {s} in\n{scrape}"));
    assert_eq!(v(r#"ratesync_acquisitions_total{limiter="api"}"#), 5.0);
    assert_eq!(v(r#"ratesync_timeouts_total{limiter="api"}"#), 2.0);
    // 3 released permits; the 2 refused requests' slots, given back unused, are not releases.
    assert_eq!(v(r#"ratesync_releases_total{limiter="api"}"#), 3.0);
    assert_eq!(v(r#"ratesync_concurrent{limiter="api"}"#), 2.0);
    assert_eq!(v(r#"ratesync_max_concurrent{limiter="api"}"#), 3.0);
    assert_eq!(v(r#"ratesync_cas_failures_total{limiter="api"}"#), 0.0);
    assert_eq!(v(r#"ratesync_backend_errors_total{limiter="api"}"#), 0.0);
    assert_eq!(v(r#"ratesync_wait_ms_count{limiter="api"}"#), 5.0);
    assert_eq!(
        v(r#"ratesync_wait_ms_bucket{limiter="api",le="+Inf"}"#),
        5.0
    );
    assert_eq!(v(r#"ratesync_acquisitions_total{limiter="slow"}"#), 2.0);
    assert_eq!(v(r#"ratesync_wait_ms_bucket{limiter="slow",le="25"}"#), 1.0);
    assert_eq!(v(r#"ratesync_wait_ms_count{limiter="slow"}"#), 2.0);
    // The second permit's slot was 50 ms after the first grant; it cannot
    // have waited less than that, less the moment between the two calls.
    // (No upper bound: a descheduled test process only waits longer.)
    let max_wait = v(r#"ratesync_max_wait_ms{limiter="slow"}"#);
    assert!(max_wait >= 45.0, "{max_wait}");
    assert!(series(&scrape, r#"ratesync_max_concurrent{limiter="slow"}"#).is_none());
    // No per-key labels: cardinality stays with the limiter names.
    assert_eq!(v(r#"ratesync_acquisitions_total{limiter="per"}"#), 1.0);
    assert!(!scrape.contains("key="), "{scrape}");
    assert!(
        !scrape.contains("user-4242"),
        "a key reached the metrics:\n{scrape}"
    );
    // Exactly the documented series, and no other.
    only_documented_series(&scrape);
    // The README's other promises of the endpoint, by value.
    assert_eq!(
        v(r#"ratesync_max_concurrent_reached_total{limiter="api"}"#),
        0.0
    );
    let avg = v(r#"ratesync_avg_wait_ms{limiter="slow"}"#);
    let sum = v(r#"ratesync_wait_ms_sum{limiter="slow"}"#);
    assert!(
        (avg - sum / 2.0).abs() < 1e-3,
        "avg {avg} vs sum {sum} / 2 grants (both in ms, to the µs)"
    );
    assert!(
        sum >= max_wait,
        "the sum {sum} holds the longest wait {max_wait}"
    );
    assert_eq!(
        get(&format!("http://{}/other", server.addr())).await.trim(),
        "not found; try /metrics"
    );
    drop(held);
}

/// Policies' series, by value after a scripted sequence, labelled by policy
/// and window and never by key.
#[tokio::test]
async fn policy_metrics_are_exported_by_policy_and_window() {
    let reg = Registry::from_toml_str(
        "[policies.api]\nkey = \"api_key\"\nexempt = [\"10.0.0.0/8\"]\ndeny = [\"leaked-key-42\"]\nwindows = [\n{ window = \"1h\", limit = 2, name = \"hour\" },\n{ window = \"1h\", limit = 1, action = \"monitor\", name = \"shadow\" },\n]\n",
    )
    .await
    .unwrap();
    let exporter = PrometheusExporter::new(&reg).unwrap();
    let api = reg.policy("api").unwrap();
    let key = ratesync::policy::Request::new().api_key("client-secret-7");
    for _ in 0..3 {
        api.check(&key).await.unwrap(); // allowed, allowed (shadow would deny), throttled
    }
    api.check(&ratesync::policy::Request::new().api_key("leaked-key-42"))
        .await
        .unwrap();
    api.check(&ratesync::policy::Request::new().ip("10.1.1.1".parse().unwrap()))
        .await
        .unwrap();
    let scrape = exporter.encode();
    let v = |s: &str| series(&scrape, s).unwrap_or_else(|| panic!("no {s} in\n{scrape}"));
    assert_eq!(
        v(r#"ratesync_policy_requests_total{outcome="allowed",policy="api"}"#),
        2.0
    );
    assert_eq!(
        v(r#"ratesync_policy_requests_total{outcome="throttled",policy="api"}"#),
        1.0
    );
    assert_eq!(
        v(r#"ratesync_policy_requests_total{outcome="denied",policy="api"}"#),
        1.0
    );
    assert_eq!(
        v(r#"ratesync_policy_requests_total{outcome="exempt",policy="api"}"#),
        1.0
    );
    assert_eq!(
        v(r#"ratesync_policy_shadow_would_deny_total{policy="api"}"#),
        1.0
    );
    assert_eq!(v(r#"ratesync_policy_violations_total{policy="api"}"#), 2.0);
    assert_eq!(
        v(r#"ratesync_policy_window_refused_total{policy="api",window="hour"}"#),
        1.0
    );
    assert_eq!(
        v(r#"ratesync_policy_window_would_deny_total{policy="api",window="shadow"}"#),
        2.0
    );
    assert_eq!(
        v(r#"ratesync_policy_list_entries{list="deny",policy="api"}"#),
        1.0
    );
    // Memory checks are timed one in TIME_ONE_IN per thread, the first included.
    let timed = v(r#"ratesync_policy_eval_duration_seconds_count{policy="api"}"#);
    assert!((1.0..=5.0).contains(&timed), "{timed} of 5 checks timed");
    assert!(
        !scrape.contains("client-secret") && !scrape.contains("leaked-key"),
        "{scrape}"
    );
    only_documented_series(&scrape);
}

/// Every metric the shipped dashboard and alert rules use is one the exporter emits.
#[tokio::test]
async fn dashboards_and_rules_use_exported_names() {
    let log = std::env::temp_dir().join(format!("ratesync-names-{}.sqlite3", std::process::id()));
    let reg = Registry::from_toml_str(&format!(
        "[limiters.api]\nrate_per_second = 10\nmax_concurrent = 2\n\
         [decision_log]\npath = {:?}\n\
         [policies.p]\nwindows = [{{ window = \"1s\", limit = 1 }}]\nlog_decisions = true\n",
        log.display().to_string()
    ))
    .await
    .unwrap();
    let exporter = PrometheusExporter::new(&reg).unwrap();
    drop(reg.limiter("api").unwrap().acquire().await.unwrap());
    reg.policy("p")
        .unwrap()
        .check(&ratesync::policy::Request::new())
        .await
        .unwrap();
    let scrape = exporter.encode();
    let emitted = exported_names();
    for name in &emitted {
        assert!(
            scrape.contains(&format!("\n{name}{{")),
            "{name} documented but not scraped:\n{scrape}"
        );
    }
    let root = env!("CARGO_MANIFEST_DIR");
    let dashboard =
        std::fs::read_to_string(format!("{root}/deploy/grafana-dashboard.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let panels = json["panels"].as_array().expect("panels");
    assert!(panels.len() >= 6);
    let mut used = Vec::new();
    for p in panels {
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
        for t in targets {
            used.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    let rules = std::fs::read_to_string(format!("{root}/deploy/prometheus-rules.yml")).unwrap();
    let exprs = [rules];
    let mut checked = 0;
    for text in used.iter().chain(exprs.iter()) {
        let mut rest = text.as_str();
        while let Some(i) = rest.find("ratesync_") {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            let name = &tail[..end];
            assert!(
                emitted.iter().any(|e| e == name),
                "`{name}` is not an exported metric"
            );
            checked += 1;
            rest = &tail[end..];
        }
    }
    assert!(checked >= 15, "only {checked} metric references found");
}

/// What the fake HTTP endpoints received: (path, JSON body).
type Inbox = Arc<Mutex<Vec<(String, serde_json::Value)>>>;

/// A minimal HTTP/1.1 server: `/fail` answers 500, `/slow` answers after 3 s,
/// everything else 200, and every request body is kept.
async fn http_sink() -> (String, Inbox) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let inbox: Inbox = Arc::default();
    let keep = inbox.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let keep = keep.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(stream);
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let path = line.split(' ').nth(1).unwrap_or("/").to_string();
                    let mut len = 0;
                    loop {
                        let mut h = String::new();
                        reader.read_line(&mut h).await.unwrap();
                        if h == "\r\n" || h.is_empty() {
                            break;
                        }
                        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap();
                        }
                    }
                    let mut body = vec![0; len];
                    reader.read_exact(&mut body).await.unwrap();
                    keep.lock().unwrap().push((
                        path.clone(),
                        serde_json::from_slice(&body).unwrap_or_default(),
                    ));
                    let status = match path.as_str() {
                        "/fail" => "500 Internal Server Error",
                        "/slow" => {
                            tokio::time::sleep(Duration::from_secs(3)).await;
                            "200 OK"
                        }
                        _ => "200 OK",
                    };
                    let reply = format!("HTTP/1.1 {status}\r\ncontent-length: 2\r\n\r\nok");
                    if reader.get_mut().write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (base, inbox)
}

/// A minimal SMTP server that accepts every message and keeps its text.
async fn smtp_sink() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mails: Arc<Mutex<Vec<String>>> = Arc::default();
    let keep = mails.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let keep = keep.clone();
            tokio::spawn(async move {
                let mut s = BufReader::new(stream);
                let _ = s.get_mut().write_all(b"220 sink ESMTP\r\n").await;
                loop {
                    let mut line = String::new();
                    if s.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
                    let reply: &[u8] = match verb.as_str() {
                        "EHLO" | "HELO" => b"250-sink\r\n250 8BITMIME\r\n",
                        "DATA" => {
                            let _ = s.get_mut().write_all(b"354 go on\r\n").await;
                            let mut text = String::new();
                            loop {
                                let mut l = String::new();
                                if s.read_line(&mut l).await.unwrap_or(0) == 0 || l == ".\r\n" {
                                    break;
                                }
                                text.push_str(&l);
                            }
                            keep.lock().unwrap().push(text);
                            b"250 queued\r\n"
                        }
                        "QUIT" => {
                            let _ = s.get_mut().write_all(b"221 bye\r\n").await;
                            return;
                        }
                        _ => b"250 OK\r\n",
                    };
                    if s.get_mut().write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, mails)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_reach_every_channel_once_respect_the_cooldown_and_resolve() {
    let (base, inbox) = http_sink().await;
    let (smtp_port, mails) = smtp_sink().await;
    let toml = format!(
        r#"
[limiters.api]
rate_per_second = 0.001
burst = 1

[alerts]
interval_seconds = 1
cooldown_seconds = 60
[alerts.thresholds]
timeouts_per_interval = 2
timeout_rate = 2.0 # off: only the timeouts count matters here
[alerts.channels.log]
[alerts.channels.webhook]
url = "{base}/hook"
headers = {{ X-Token = "t0k3n" }}
[alerts.channels.slack]
webhook_url = "{base}/slack"
[alerts.channels.pagerduty]
routing_key = "R0UTING"
url = "{base}/pd"
[alerts.channels.email]
smtp_host = "127.0.0.1"
smtp_port = {smtp_port}
starttls = false
from = "ratesync <alerts@example.com>"
to = ["ops@example.com"]
"#
    );
    let config = ratesync::Config::from_toml_str(&toml).unwrap();
    let reg = Registry::from_config(config.clone()).await.unwrap();
    let failing: Arc<dyn Channel> = Arc::new(WebhookChannel::new(&WebhookConfig {
        enabled: true,
        url: Some(format!("{base}/fail").into()),
        headers: BTreeMap::new(),
        timeout_seconds: Some(1.0),
    }));
    let slow: Arc<dyn Channel> = Arc::new(WebhookChannel::new(&WebhookConfig {
        enabled: true,
        url: Some(format!("{base}/slow").into()),
        headers: BTreeMap::new(),
        timeout_seconds: Some(0.5),
    }));
    let mut alerts = AlertLoop::from_config(reg.clone(), &config)
        .unwrap()
        .with_channel(failing)
        .with_channel(slow);
    assert_eq!(
        alerts.channel_names(),
        [
            "log",
            "webhook",
            "slack",
            "pagerduty",
            "email",
            "webhook",
            "webhook"
        ]
    );
    let api = reg.limiter("api").unwrap();
    let refuse = |n| {
        let api = api.clone();
        async move {
            for _ in 0..n {
                let _ = api.try_acquire().await.unwrap();
            }
        }
    };

    // 1 grant and 3 refusals: the timeouts threshold (2) is crossed once.
    refuse(4).await;
    let r1 = alerts.tick().await;
    assert_eq!(r1.sent.len(), 1, "{r1:#?}");
    assert_eq!(r1.sent[0].alert.as_str(), "timeouts");
    assert_eq!(r1.sent[0].state, AlertState::Firing);
    assert_eq!(r1.deliveries.len(), 7);
    let failed: Vec<String> = r1
        .failures()
        .map(|d| d.result.clone().unwrap_err())
        .collect();
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert!(failed.iter().any(|e| e.contains("500")), "{failed:?}");
    // The slow channel timed out; its URL's path is redacted like any
    // webhook token (`http://127.0.0.1:PORT/***`).
    assert!(
        failed
            .iter()
            .any(|e| e.contains("timed out") && e.contains("/***")),
        "{failed:?}"
    );
    assert!(!failed.iter().any(|e| e.contains("/slow")), "{failed:?}");
    {
        let got = inbox.lock().unwrap();
        let count = |p: &str| got.iter().filter(|(path, _)| path == p).count();
        assert_eq!((count("/hook"), count("/slack"), count("/pd")), (1, 1, 1));
        let hook = &got.iter().find(|(p, _)| p == "/hook").unwrap().1;
        assert_eq!(hook["limiter"], "api");
        assert_eq!(hook["alert"], "timeouts");
        assert_eq!(hook["severity"], "warning");
        assert_eq!(hook["value"], 3.0);
        let slack = &got.iter().find(|(p, _)| p == "/slack").unwrap().1;
        assert!(slack["text"].as_str().unwrap().contains("timeouts is 3.00"));
        assert!(slack["blocks"].as_array().is_some_and(|b| !b.is_empty()));
        let pd = &got.iter().find(|(p, _)| p == "/pd").unwrap().1;
        assert_eq!(pd["event_action"], "trigger");
        assert_eq!(pd["routing_key"], "R0UTING");
        assert_eq!(pd["dedup_key"], "ratesync/api/timeouts");
        assert_eq!(pd["payload"]["severity"], "warning");
    }
    assert_eq!(mails.lock().unwrap().len(), 1);
    assert!(mails.lock().unwrap()[0].contains("timeouts is 3.00"));

    // Still crossing, inside the cooldown: nothing is sent.
    refuse(3).await;
    let r2 = alerts.tick().await;
    assert!(r2.sent.is_empty(), "{r2:#?}");
    assert_eq!(r2.suppressed.len(), 1);
    let before = inbox.lock().unwrap().len();

    // Quiet again: a recovery notice on every channel, PagerDuty resolves.
    let r3 = alerts.tick().await;
    assert_eq!(r3.sent.len(), 1);
    assert_eq!(r3.sent[0].state, AlertState::Resolved);
    let got = inbox.lock().unwrap();
    let new: Vec<_> = got[before..].iter().collect();
    let pd = new
        .iter()
        .find(|(p, _)| p == "/pd")
        .expect("a resolve to PagerDuty");
    assert_eq!(pd.1["event_action"], "resolve");
    assert_eq!(pd.1["dedup_key"], "ratesync/api/timeouts");
    assert!(new
        .iter()
        .any(|(p, b)| p == "/hook" && b["state"] == "resolved"));
    assert!(new.iter().any(|(p, _)| p == "/slack"));
    assert_eq!(mails.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn env_variables_set_the_example_thresholds() {
    std::env::set_var("RATE_SYNC_ALERT_INTERVAL", "2");
    std::env::set_var("RATE_SYNC_MAX_AVG_WAIT_MS", "800");
    std::env::set_var("RATE_SYNC_MAX_TIMEOUTS", "7");
    let c = ratesync::alert::AlertConfig::default()
        .with_env_overrides()
        .unwrap();
    assert_eq!(c.interval_seconds, 2.0);
    assert_eq!(c.thresholds.avg_wait_ms_critical, 800.0);
    assert_eq!(c.thresholds.avg_wait_ms_warning, 800.0);
    assert_eq!(c.thresholds.timeouts_per_interval, 7);
}

#[tokio::test]
async fn snapshots_are_written_whole() {
    let reg = Registry::from_toml_str("[limiters.api]\nrate_per_second = 5\n")
        .await
        .unwrap();
    drop(reg.limiter("api").unwrap().acquire().await.unwrap());
    let dir = std::env::temp_dir().join(format!("ratesync-snap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("metrics.json");
    let task = reg.export_snapshots(&path, Duration::from_millis(20));
    // Several writes replace the file while it is read: each read must see a
    // whole snapshot, never a half-written one.
    let started = std::time::Instant::now();
    let mut whole_reads = 0;
    while whole_reads < 5 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no snapshot written"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            // Not written yet; once written, a rename keeps it there.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && whole_reads == 0 => continue,
            Err(e) => panic!("reading the snapshot: {e}"),
        };
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["limiters"]["api"]["total_acquisitions"], 1);
        assert!(v["taken_at"].as_f64().unwrap() > 1.6e9);
        whole_reads += 1;
    }
    task.abort();
    let _ = task.await;
    // A write already handed to the blocking pool finishes after the abort;
    // once it has, no temporary file may remain.
    let tmp_files = || {
        std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .count()
    };
    let stopped = std::time::Instant::now();
    while tmp_files() > 0 {
        assert!(
            stopped.elapsed() < Duration::from_secs(2),
            "a temporary file was left behind"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Clients that open connections and never finish a request (slow loris)
/// are cut off at the header timeout, and cannot hold more than the cap:
/// a real scrape is still answered.
#[tokio::test]
async fn metrics_endpoint_survives_slow_clients() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let reg = Registry::from_toml_str("[limiters.api]\nrate_per_second = 5\n")
        .await
        .unwrap();
    let exporter = PrometheusExporter::new(&reg).unwrap();
    let limits = ratesync::telemetry::ServeLimits {
        max_connections: 4,
        header_timeout: Duration::from_millis(300),
        connection_lifetime: Duration::from_secs(30),
    };
    let server = exporter
        .serve_with_limits("127.0.0.1:0".parse().unwrap(), limits)
        .await
        .unwrap();
    let mut loris = Vec::new();
    for _ in 0..8 {
        let mut s = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
        s.write_all(b"GET /metr").await.unwrap(); // and never the rest
        loris.push(s);
    }
    // The scrape waits for a slot, which the header timeout frees.
    let scrape = async {
        let mut s = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).await.unwrap();
        body
    };
    let body = tokio::time::timeout(Duration::from_secs(10), scrape)
        .await
        .expect("a scrape is answered while slow clients hold connections");
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(body.contains("ratesync_acquisitions_total"), "{body}");
    // Every slow client was disconnected (end of stream, or a 408 first).
    for mut s in loris {
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
            .await
            .expect("a slow client is cut off")
            .ok();
    }
}

/// Offenders over `offender_blocked` in the decision log page like any
/// other alert, once per cooldown, and keys under it do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offenders_over_the_threshold_raise_an_alert_once_per_cooldown() {
    let dir = std::env::temp_dir().join(format!("ratesync-offender-alert-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let toml = format!(
        r#"
[decision_log]
path = {:?}

[policies.api]
key = "api_key"
windows = [{{ window = "1m", limit = 1 }}]
log_decisions = true

[alerts]
interval_seconds = 1
cooldown_seconds = 60
[alerts.thresholds]
offender_blocked = 5
offender_window_seconds = 120
[alerts.channels.log]
"#,
        dir.join("log.sqlite3").display().to_string()
    );
    let config = ratesync::Config::from_toml_str(&toml).unwrap();
    let reg = Registry::from_config(config.clone()).await.unwrap();
    let api = reg.policy("api").unwrap();
    for (key, n) in [("evil\u{1b}[31m", 7), ("fine", 3)] {
        for _ in 0..n {
            api.check(&ratesync::policy::Request::new().api_key(key))
                .await
                .unwrap();
        }
    }
    reg.decision_log().unwrap().flush().await.unwrap();
    let mut alerts = AlertLoop::from_config(reg.clone(), &config).unwrap();
    let report = alerts.tick().await;
    let offenders: Vec<_> = report
        .sent
        .iter()
        .filter(|a| a.alert == ratesync::alert::AlertKind::Offender)
        .collect();
    assert_eq!(offenders.len(), 1, "{:?}", report.sent);
    assert_eq!(
        (offenders[0].limiter.as_str(), offenders[0].value),
        ("evil\u{1b}[31m", 6.0)
    );
    assert!(
        offenders[0]
            .summary()
            .contains(r#"key "evil\u{1b}[31m" was refused 6 times"#),
        "the key is quoted and escaped: {}",
        offenders[0].summary()
    );
    let again = alerts.tick().await;
    assert!(again
        .sent
        .iter()
        .all(|a| a.alert != ratesync::alert::AlertKind::Offender));
    assert_eq!(again.suppressed.len(), 1, "held back by the cooldown");
    reg.close().await;
}
