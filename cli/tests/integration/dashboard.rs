//! The dashboard as a person sees it: `ratesync serve` with a decision log
//! seeded with a week of history and fed a scripted workload (a hostile
//! key among the clients, a ban through the admin API), every dashboard
//! URL answering 403 without the token, then Debian's headless Chromium
//! signing in through the login form and rendering the page, whose numbers
//! must be the analytics API's. The screenshot goes to the target
//! directory, and to `docs/dashboard.png` with `RATESYNC_UPDATE_SCREENSHOT=1`.

use crate::support::{
    free_port, have, http_exchange, ratesync_bin, scratch, skip_or_fail, write_config, Stopped,
};
use ratesync::analytics::Analytics;
use ratesync::decision_log::{DecisionEvent, LogSink, SqliteSink};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const TOKEN: &str = "dashboard-test-token-0123456789";

/// One request to the service on `port`; the status, the header lines
/// joined, and the body.
fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> (u16, String, String) {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let (status, head, body) =
        http_exchange("127.0.0.1", addr, method, path, headers, body).unwrap();
    (status, head.join("\r\n"), body)
}

/// Serves `page` at every path on a port of its own: the sign-in page
/// Chromium opens (same site as the dashboard, another origin).
fn serve_page(page: String) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                page.len()
            );
        }
    });
    port
}

fn chromium(dir: &Path, args: &[&str], url: &str) -> String {
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--virtual-time-budget=10000",
        ])
        .arg(format!(
            "--user-data-dir={}",
            dir.join(format!("profile-{}", args.len())).display()
        ))
        .args(args)
        .arg(url)
        .stderr(Stdio::null())
        .output()
        .expect("chromium runs");
    assert!(out.status.success(), "chromium failed: {:?}", out.status);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The text of the element with `id` in a rendered DOM.
fn by_id<'a>(dom: &'a str, id: &str) -> &'a str {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in the page"));
    let start = at + dom[at..].find('>').unwrap() + 1;
    let end = start + dom[start..].find('<').unwrap();
    &dom[start..end]
}

fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A week of history: each hour a few clients, one of them refused often.
fn history() -> Vec<DecisionEvent> {
    let mut out = Vec::new();
    let mut seq = 0;
    for hour in 1..(7 * 24) {
        let n = 20 + (hour * 7919 % 23) as usize + if hour % 24 < 8 { 0 } else { 25 };
        for i in 0..n {
            seq += 1;
            let scraper = i % 5 == 0;
            let blocked = scraper && i % 3 != 0;
            out.push(DecisionEvent {
                origin: 1,
                seq,
                ts_us: (now_s() - hour * 3600 - (i as i64 % 3000)) * 1_000_000,
                key: if scraper {
                    "scraper-9".into()
                } else {
                    format!("client-{}", i % 7)
                },
                policy: "api".into(),
                window: "1m".into(),
                tier: None,
                path: Some(if scraper { "/v1/search" } else { "/v1/items" }.into()),
                method: Some("GET".into()),
                allowed: !blocked,
                action: if blocked { "throttle" } else { "allow" }.into(),
                count: 5,
                limit: Some(5),
                cost: 1,
                ip: None,
                user: None,
                host: "seed".into(),
                config_version: 1,
            });
        }
    }
    out
}

#[test]
fn the_dashboard_shows_what_the_analytics_say() {
    if !have("chromium") {
        skip_or_fail(
            "Debian's chromium is not installed (apt-get install -y chromium; .ci/run does)",
        );
        return;
    }
    let dir = scratch("dashboard");
    let db = dir.join("log.sqlite3");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let sink: Arc<dyn LogSink> = Arc::new(SqliteSink::open(&db).unwrap());
    rt.block_on(sink.write(&history())).unwrap();

    let port = free_port();
    let config = write_config(
        &dir,
        &format!(
            "[http]\nadmin_token = \"{TOKEN}\"\n\n[decision_log]\npath = {:?}\nflush_interval = \"20ms\"\n\n\
             [policies.api]\nkey = \"api_key\"\nwindows = [{{ window = \"1m\", limit = 5 }}]\nlog_decisions = true\n",
            db.display().to_string()
        ),
    );
    let _serve = Stopped(
        Command::new(ratesync_bin())
            .args([
                "-c",
                config.to_str().unwrap(),
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "ratesync serve did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // The workload: three clients, one hostile key, one ban by the admin API.
    let hostile = "%3Cscript%3Ealert(1)%3C%2Fscript%3E";
    for i in 0..40 {
        let key = ["alice", "bob", hostile, hostile][i % 4];
        let (status, _, _) = request(
            port,
            "GET",
            &format!("/v1/check?policy=api&key={key}"),
            "",
            "",
        );
        assert!(status == 200 || status == 429, "check answered {status}");
    }
    let bearer = format!("Authorization: Bearer {TOKEN}\r\n");
    let (status, _, _) = request(
        port,
        "POST",
        "/v1/blocks?policy=api&key=bob&duration=1h&reason=abuse",
        &bearer,
        "",
    );
    assert_eq!(status, 200);

    // Without the token every dashboard URL is 403.
    for path in [
        "/dashboard/",
        "/dashboard",
        "/dashboard/offenders.csv",
        "/dashboard/offender?key=alice",
        "/dashboard/nope",
        "/dashboard/?days=7",
    ] {
        for headers in [
            "",
            "Cookie: ratesync_session=1.abc\r\n",
            "Authorization: Bearer wrong-token-0123456789\r\n",
        ] {
            let (status, _, _) = request(port, "GET", path, headers, "");
            assert_eq!(status, 403, "{path} with {headers:?}");
        }
    }
    let (status, head, _) = request(
        port,
        "POST",
        "/dashboard/login",
        "Content-Type: application/x-www-form-urlencoded\r\n",
        "token=wrong",
    );
    assert_eq!(status, 403);
    assert!(!head.contains("set-cookie"));
    // Hostile sign-ins: an oversized form, bytes that are not UTF-8, the
    // token given twice (the right one second), a 1 MiB cookie.
    let (status, _, _) = request(port, "POST", "/dashboard/login", "", &"x".repeat(10_000));
    assert_eq!(status, 413, "a login form is bounded");
    let (status, head, _) = request(port, "POST", "/dashboard/login", "", "token=%FF%FE");
    assert_eq!(status, 403);
    assert!(!head.contains("set-cookie"));
    let (status, head, _) = request(
        port,
        "POST",
        "/dashboard/login",
        "",
        &format!("token=wrong&token={TOKEN}"),
    );
    assert_eq!(status, 403, "a field given twice is no sign-in");
    assert!(!head.contains("set-cookie"));
    let cookie = format!("Cookie: ratesync_session={}\r\n", "1".repeat(1 << 20));
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let refused = http_exchange("127.0.0.1", addr, "GET", "/dashboard/", &cookie, "")
        .map_or(0, |(status, _, _)| status);
    // hyper refuses a head this large before anything reads it (431), or
    // closes while the client is still sending (0).
    assert!(
        refused == 431 || refused == 0,
        "a 1 MiB cookie answered {refused}"
    );
    assert_eq!(
        request(port, "GET", "/healthz", "", "").0,
        200,
        "and the service goes on"
    );
    let (status, head, _) = request(
        port,
        "POST",
        "/dashboard/login",
        "",
        &format!("token={TOKEN}&next=//evil.example/"),
    );
    assert_eq!(status, 303);
    assert!(
        head.contains("location: /dashboard/\r\n") || head.ends_with("location: /dashboard/"),
        "no open redirect: {head}"
    );
    assert!(
        head.contains("httponly") && head.contains("samesite=strict"),
        "{head}"
    );
    let (status, _, body) = request(port, "GET", "/dashboard/offender", &bearer, "");
    assert_eq!(status, 400, "{body}");
    let (status, head, csv) = request(port, "GET", "/dashboard/offenders.csv?days=7", &bearer, "");
    assert_eq!(status, 200);
    assert!(
        head.contains("text/csv") && csv.starts_with("key,blocked,total,block_rate\n"),
        "{csv}"
    );

    // What the analytics say, once the workload is written (20 ms batches).
    std::thread::sleep(Duration::from_millis(500));
    let a = Analytics::new(sink.clone(), None);
    let (day, week, top) = rt.block_on(async {
        (
            a.summary(1, None).await.unwrap(),
            a.summary(7, None).await.unwrap(),
            a.top_offenders(7, None, 20).await.unwrap(),
        )
    });
    assert!(
        week.window.total > 5_000 && day.window.blocked > 0,
        "{week:?} {day:?}"
    );

    // Chromium signs in through the form and renders the dashboard.
    let page = |next: &str| {
        format!(
            "<!doctype html><form id=f method=post action=\"http://127.0.0.1:{port}/dashboard/login\">\
             <input name=token value=\"{TOKEN}\"><input name=next value=\"{next}\"></form>\
             <script>document.getElementById('f').submit()</script>"
        )
    };
    let dom = chromium(
        &dir,
        &["--dump-dom"],
        &format!(
            "http://127.0.0.1:{}/",
            serve_page(page("/dashboard/?days=7"))
        ),
    );
    assert!(
        dom.contains("id=\"window-total\""),
        "the dashboard did not render:\n{dom}"
    );
    for (id, want) in [
        ("window-total", week.window.total),
        ("window-allowed", week.window.allowed),
        ("window-blocked", week.window.blocked),
        ("today-total", week.today.total),
        ("today-blocked", week.today.blocked),
    ] {
        assert_eq!(by_id(&dom, id), want.to_string(), "#{id}");
    }
    assert_eq!(
        by_id(&dom, "window-block-rate"),
        format!("{:.1}%", week.block_rate * 100.0)
    );
    let first = &top[0];
    assert!(
        dom.contains(&format!(
            "<td class=\"k\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>",
            first.key, first.blocked, first.total
        )),
        "top offender {first:?} not shown"
    );
    assert!(
        dom.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "the hostile key is shown, escaped"
    );
    assert!(
        !dom.contains("<script>alert"),
        "the hostile key never becomes markup"
    );
    assert!(
        dom.contains("<td class=\"k\">bob</td>") && dom.contains("abuse"),
        "the ban is listed"
    );

    let shot = dir.join("dashboard.png");
    chromium(
        &dir,
        &[
            "--window-size=1100,1400",
            &format!("--screenshot={}", shot.display()),
        ],
        &format!(
            "http://127.0.0.1:{}/",
            serve_page(page("/dashboard/?days=7"))
        ),
    );
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real screenshot"
    );
    if std::env::var("RATESYNC_UPDATE_SCREENSHOT").is_ok_and(|v| v == "1") {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/dashboard.png");
        std::fs::write(&docs, &png).unwrap();
        println!("screenshot saved to {}", docs.display());
    }
}
