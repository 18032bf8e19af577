//! Shared helpers of the integration suite: service checks, worker processes, and the invariant checker.

use std::io::{BufRead, BufReader};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The scenarios start several processes that each want the CPU; running two
/// at once would starve both and make utilisation figures meaningless, and the
/// restart scenarios stop a service the others use. One at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Takes the suite-wide lock (recovering it if an earlier scenario panicked).
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether `RATESYNC_REQUIRE_SERVICES=1` turns a missing service into a failure.
pub fn services_required() -> bool {
    std::env::var("RATESYNC_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

/// `host:port` of a URL such as `redis://user:pw@host:port/0`.
fn host_port(url: &str, default_port: u16) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let hostport = rest.split(['/', '?']).next().unwrap_or(rest);
    if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:{default_port}")
    }
}

/// True when something listens at the URL's address; otherwise skips loudly,
/// or panics under `RATESYNC_REQUIRE_SERVICES=1`.
pub fn service_up(service: &str, url: &str, default_port: u16) -> bool {
    let addr = host_port(url, default_port);
    let up = addr
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok());
    if up {
        return true;
    }
    let msg = format!(
        "{service} is not reachable at {addr} ({url}); start it (README: Running the integration tests)"
    );
    if services_required() {
        panic!("{msg}; RATESYNC_REQUIRE_SERVICES=1 makes this a failure");
    }
    skip_notice(&msg);
    false
}

/// Says loudly that a test (or part of one) is skipped. Written to the
/// process's standard error directly: `eprintln!` inside a test is captured
/// by the harness and shown only when the test fails, so a skip would pass
/// unseen.
pub fn skip_notice(msg: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "\n!!!!!!!! SKIPPED: {msg} !!!!!!!!\n");
}

/// Skips (loudly) what cannot run here, unless `RATESYNC_REQUIRE_SERVICES=1`
/// makes it a failure: CI installs everything the suite needs.
pub fn skip_or_fail(msg: &str) {
    assert!(
        !services_required(),
        "{msg}; RATESYNC_REQUIRE_SERVICES=1 makes this a failure"
    );
    skip_notice(msg);
}

/// A prefix no other run or scenario shares, so state never leaks between them.
pub fn unique_prefix(scenario: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "it-{}-{}-{}-{}",
        std::process::id(),
        scenario,
        N.fetch_add(1, Ordering::Relaxed),
        now_us() % 1_000_000_000
    )
}

pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// A scratch directory for one scenario's config and grant files.
pub fn scratch(scenario: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique_prefix(scenario));
    std::fs::create_dir_all(&dir).expect("create scratch directory");
    dir
}

/// Writes `toml` as `config.toml` in `dir` and returns its path.
pub fn write_config(dir: &Path, toml: &str) -> PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(&path, toml).expect("write config");
    path
}

/// The `ratesync` binary cargo built for this test run.
pub fn ratesync_bin() -> &'static str {
    env!("CARGO_BIN_EXE_ratesync")
}

/// One `ratesync worker` process and the file it writes its grants to.
pub struct Worker {
    pub child: Child,
    pub out: PathBuf,
    /// Where the worker appends its holds as they happen, with `holds` set.
    pub holds: Option<PathBuf>,
}

/// Options of one worker process.
#[derive(Clone, Debug)]
pub struct WorkerOpts {
    pub limiter: String,
    pub tasks: usize,
    pub duration: f64,
    pub mode: &'static str,
    pub hold_ms: f64,
    pub key: Option<String>,
    pub counter: Option<PathBuf>,
    pub timeout: Option<f64>,
    /// A command that runs the worker on another "host" (`ip netns exec NS`).
    pub prefix: Vec<String>,
    /// Append holds to a file as they happen (see [`read_holds`]).
    pub holds: bool,
    /// Each request's weight (`--cost`).
    pub cost: u32,
    /// `limiter` names a policy (`--policy`).
    pub policy: bool,
}

impl WorkerOpts {
    pub fn new(limiter: &str, tasks: usize, duration: f64) -> Self {
        Self {
            limiter: limiter.to_string(),
            tasks,
            duration,
            mode: "acquire",
            hold_ms: 0.0,
            key: None,
            counter: None,
            timeout: None,
            prefix: Vec::new(),
            holds: false,
            cost: 1,
            policy: false,
        }
    }
}

/// Starts `n` workers on `config` that begin together at `start_at_ms`.
pub fn spawn_workers(
    config: &Path,
    dir: &Path,
    n: usize,
    opts: &WorkerOpts,
    start_at_ms: u64,
) -> Vec<Worker> {
    (0..n)
        .map(|i| {
            let out = dir.join(format!("grants-{i}-{}.jsonl", now_us()));
            let mut cmd = match opts.prefix.split_first() {
                Some((program, args)) => {
                    let mut c = Command::new(program);
                    c.args(args).arg(ratesync_bin());
                    c
                }
                None => Command::new(ratesync_bin()),
            };
            cmd.arg("--config")
                .arg(config)
                .arg("worker")
                .arg(&opts.limiter)
                .args(["--tasks", &opts.tasks.to_string()])
                .args(["--duration", &opts.duration.to_string()])
                .args(["--mode", opts.mode])
                .args(["--hold-ms", &opts.hold_ms.to_string()])
                .args(["--cost", &opts.cost.to_string()])
                .args(["--start-at-ms", &start_at_ms.to_string()])
                .arg("--out")
                .arg(&out)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            if let Some(k) = &opts.key {
                cmd.args(["--key", k]);
            }
            if opts.policy {
                cmd.arg("--policy");
            }
            if let Some(c) = &opts.counter {
                cmd.arg("--counter").arg(c);
            }
            if let Some(t) = opts.timeout {
                cmd.args(["--timeout", &t.to_string()]);
            }
            let holds = opts.holds.then(|| out.with_extension("holds"));
            if let Some(h) = &holds {
                cmd.arg("--holds").arg(h);
            }
            let child = cmd.spawn().expect("spawn ratesync worker");
            Worker { child, out, holds }
        })
        .collect()
}

/// Runs the CLI on `config` with `args`: its exit code (-1 when a signal
/// ended it), standard output and standard error.
pub fn run_cli(config: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(ratesync_bin())
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("run ratesync");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The unix time (ms) a little ahead, so every worker has connected first.
pub fn start_soon() -> u64 {
    now_us() / 1000 + 1500
}

/// One line of a worker's output.
#[derive(Clone, Copy, Debug)]
pub struct Grant {
    pub worker: u64,
    pub slot_us: u64,
    pub held_from_us: u64,
    pub held_to_us: u64,
    pub holders: i64,
}

fn field(line: &str, name: &str) -> Option<i64> {
    let at = line.find(&format!("\"{name}\":"))? + name.len() + 3;
    let rest = &line[at..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end].trim().parse().ok()
}

/// Waits for every worker, asserts each exited cleanly and met no error
/// (see [`check_errors`]), and merges their grants.
pub fn collect(workers: Vec<Worker>) -> (Vec<Grant>, Vec<String>) {
    collect_from(workers, false, true)
}

/// Like [`collect`], but a worker killed on purpose (no output) is skipped.
pub fn collect_survivors(workers: Vec<Worker>) -> (Vec<Grant>, Vec<String>) {
    collect_from(workers, true, true)
}

/// Like [`collect`] for workers that run through a store outage on purpose:
/// their errors are expected, so only a clean exit is asserted.
pub fn collect_through_outage(workers: Vec<Worker>) -> (Vec<Grant>, Vec<String>) {
    collect_from(workers, false, false)
}

/// Whether a line of a worker's stderr is its one-line JSON summary.
pub fn is_summary(line: &str) -> bool {
    line.starts_with("{\"worker\":")
}

/// A count from a worker's one-line JSON summary.
pub fn summary_count(summary: &str, name: &str) -> u64 {
    field(summary, name).unwrap_or_else(|| panic!("no `{name}` in the summary {summary}")) as u64
}

/// A worker must meet no store error: an engine failing most of its calls
/// would otherwise pass every scenario on the grants it did make. The one
/// exception is a decision denied because NATS compare-and-set retries ran
/// out on a hot key (contention, counted apart), bounded to 5% of grants
/// (measured on one key from 4 processes x 32 tasks: 13 of 1,729 grants,
/// 0.75%, at 1,000/s; over 2% of a process's grants at 10,000/s, where one
/// NATS key tops out near 2,000/s here).
pub fn check_errors(summary: &str, stderr: &[String]) {
    let grants = summary_count(summary, "grants");
    let errors = summary_count(summary, "errors");
    let cas = summary_count(summary, "cas_exhausted");
    let backend = summary_count(summary, "backend_errors");
    let warnings: Vec<&str> = stderr
        .iter()
        .filter(|l| !l.starts_with('{'))
        .take(5)
        .map(String::as_str)
        .collect();
    let head = format!(
        "{}\n  first warnings: {}",
        summary.split(",\"latency_us\"").next().unwrap_or(summary),
        warnings.join("\n  ")
    );
    assert_eq!(
        errors.saturating_sub(cas),
        0,
        "a worker met store errors: {head}"
    );
    assert_eq!(
        backend, cas,
        "a worker's limiter counted store errors: {head}"
    );
    assert!(
        cas <= 1 + grants / 20,
        "compare-and-set retries ran out too often ({cas} of {grants} grants): {head}"
    );
}

fn collect_from(
    workers: Vec<Worker>,
    allow_killed: bool,
    strict: bool,
) -> (Vec<Grant>, Vec<String>) {
    let mut grants = Vec::new();
    let mut summaries = Vec::new();
    for mut w in workers {
        let stderr = w.child.stderr.take().expect("piped stderr");
        let lines: Vec<String> = BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect();
        let status = w.child.wait().expect("wait for worker");
        if allow_killed && std::os::unix::process::ExitStatusExt::signal(&status) == Some(9) {
            continue;
        }
        assert!(
            status.success(),
            "worker exited with {status}; its stderr:\n{}",
            lines.join("\n")
        );
        if strict {
            let summary = lines
                .iter()
                .rev()
                .find(|l| is_summary(l))
                .unwrap_or_else(|| {
                    panic!(
                        "no summary from a worker; its stderr:\n{}",
                        lines.join("\n")
                    )
                });
            check_errors(summary, &lines);
        }
        summaries.extend(lines);
        let file = std::fs::File::open(&w.out).expect("worker output");
        for line in BufReader::new(file).lines() {
            let line = line.expect("read worker output");
            let get = |n| field(&line, n).unwrap_or_else(|| panic!("no `{n}` in {line}"));
            grants.push(Grant {
                worker: get("worker") as u64,
                slot_us: get("slot_us") as u64,
                held_from_us: get("held_from_us") as u64,
                held_to_us: get("held_to_us") as u64,
                holders: get("holders"),
            });
        }
    }
    (grants, summaries)
}

/// The token-bucket verdict over merged grants.
#[derive(Debug)]
pub struct BucketReport {
    pub grants: usize,
    /// The largest `count - rate*t` over all intervals (must be <= burst).
    pub max_over: f64,
    /// The slots' admitted rate once warmed up: the grants slotted from
    /// [`WARM_UP`] after the first one on, over the time they span. The
    /// first decisions of a run pay for new connections and, on a hot key,
    /// the first conflicts of every process at once; the bucket idles
    /// meanwhile (41 ms of 3 s for NATS on a loaded host), which says
    /// nothing about the rate the limiter keeps. `utilisation` still counts it.
    pub admitted_rate: f64,
    /// Grants / (burst + rate * run length).
    pub utilisation: f64,
}

/// How much earlier than its slot a permit may seem to be used: the slot
/// and the use are read from one machine's clock (the backend's and the
/// worker's, both the kernel's real-time clock on loopback), so only the
/// rounding of either to a microsecond and the order of two clock reads
/// separate them.
pub const USE_EPSILON_US: u64 = 1_000;

/// Judges the grants by when they were *used*, not by the slot the engine
/// reported: a client that handed out permits before their slot would pass
/// the slot check. Every use is at or after its slot (less
/// [`USE_EPSILON_US`]); and the uses keep the bucket's bound, allowing for
/// the timer lateness the run showed (a late wake-up can bring two uses
/// closer than their slots): at most `rate * worst lateness` more.
/// Returns the worst lateness in µs.
pub fn check_use_times(grants: &[Grant], rate: f64, burst: u32) -> u64 {
    let mut late_max = 0u64;
    for g in grants {
        assert!(
            g.held_from_us + USE_EPSILON_US >= g.slot_us,
            "a permit was used {} us before its slot",
            g.slot_us - g.held_from_us
        );
        late_max = late_max.max(g.held_from_us.saturating_sub(g.slot_us));
    }
    let mut uses: Vec<u64> = grants.iter().map(|g| g.held_from_us).collect();
    uses.sort_unstable();
    let over = ratesync::audit::max_excess(&uses, rate);
    let allowed = f64::from(burst) + rate * (late_max + USE_EPSILON_US) as f64 / 1e6;
    assert!(
        over <= allowed + 1e-9,
        "by use time, {over:.3} grants above rate*t in some interval (allowed {allowed:.3}: burst {burst} + the worst lateness {late_max} us)"
    );
    late_max
}

/// How much of a run's start [`BucketReport::admitted_rate`] leaves out.
pub const WARM_UP: Duration = Duration::from_millis(500);

/// Checks `count <= burst + rate*t` for every interval of the slots.
pub fn check_bucket(grants: &[Grant], rate: f64, burst: u32, run_s: f64) -> BucketReport {
    let slots = sorted_slots(grants);
    let n = slots.len();
    // Past the warm-up the burst is long spent, so each grant is one
    // emission interval after the one before it: (count - 1) / span.
    let warm: &[u64] = match slots.first() {
        Some(&first) => {
            let from = first + WARM_UP.as_micros() as u64;
            &slots[slots.partition_point(|&s| s < from)..]
        }
        None => &[],
    };
    let admitted_rate = match (warm.first(), warm.last()) {
        (Some(a), Some(b)) if b > a => (warm.len() - 1) as f64 / ((b - a) as f64 / 1e6),
        _ => 0.0,
    };
    BucketReport {
        grants: n,
        max_over: ratesync::audit::max_excess(&slots, rate),
        admitted_rate,
        utilisation: n as f64 / (f64::from(burst) + rate * run_s),
    }
}

fn sorted_slots(grants: &[Grant]) -> Vec<u64> {
    let mut slots: Vec<u64> = grants.iter().map(|g| g.slot_us).collect();
    slots.sort_unstable();
    slots
}

/// The most grants any window of `window_us` holds, where a window is
/// `(s - window, s]` ending at a grant.
pub fn max_in_window(grants: &[Grant], window_us: u64) -> usize {
    ratesync::audit::max_in_window(&sorted_slots(grants), window_us)
}

/// The most holding intervals (local clock, one host) that overlap at once.
pub fn max_overlap(grants: &[Grant]) -> usize {
    ratesync::audit::max_overlap(grants.iter().map(|g| (g.held_from_us, g.held_to_us)))
}

/// Slots of `limiter` held in the store, read through a fresh registry built
/// from the configuration `toml` (what a checker on another machine sees).
pub fn holders_in_store(toml: &str, limiter: &str) -> u32 {
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    rt.block_on(async {
        let reg = ratesync::Registry::from_toml_str(toml)
            .await
            .expect("the store answers");
        let state = reg
            .limiter(limiter)
            .expect("limiter")
            .state()
            .await
            .expect("state");
        state.concurrency.expect("a concurrency limit").holders
    })
}

/// Runs a shell command, panicking with its output when it fails.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{cmd}`: {e}"));
    assert!(
        out.status.success(),
        "`{cmd}` failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether a program is on PATH.
pub fn have(program: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The holds a worker appended as they happened (`--holds`), as grants of
/// `worker`; a hold with no end (the worker was killed holding it) lasts
/// until `cut_at_us`, the kill.
pub fn read_holds(path: &Path, worker: u64, cut_at_us: u64) -> Vec<Grant> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut open: Vec<(i64, i64)> = Vec::new();
    let mut out = Vec::new();
    for line in text.lines() {
        // A line cut short by the kill is no hold.
        let (Some(start), Some(task)) = (field(line, "start"), field(line, "task")) else {
            continue;
        };
        match field(line, "end") {
            None => open.push((task, start)),
            Some(end) => {
                open.retain(|&(t, s)| !(t == task && s == start));
                out.push(Grant {
                    worker,
                    slot_us: start as u64,
                    held_from_us: start as u64,
                    held_to_us: end as u64,
                    holders: 0,
                });
            }
        }
    }
    out.extend(open.into_iter().map(|(_, start)| Grant {
        worker,
        slot_us: start as u64,
        held_from_us: start as u64,
        held_to_us: cut_at_us.max(start as u64),
        holders: 0,
    }));
    out
}

/// A process stopped when dropped: SIGTERM first (nginx's master then
/// takes its workers down with it; a SIGKILL would leave them serving),
/// SIGKILL if it is still there after 5 s.
#[allow(dead_code)] // the nginx and dashboard suites need the `serve` feature
pub struct Stopped(pub Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback port nothing listens on now.
#[allow(dead_code)] // the nginx and dashboard suites need the `serve` feature
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// One HTTP/1.1 request (`headers` each ending in CRLF, `body` sent with
/// its length unless it is an empty GET) from the local address `from`
/// (any of 127.0.0.0/8 is this host), the connection closed after: the
/// status, the header lines in lower case, and the body.
#[allow(dead_code)] // the nginx and dashboard suites need the `serve` feature
pub fn http_exchange(
    from: &str,
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> std::io::Result<(u16, Vec<String>, String)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let text = rt.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(format!("{from}:0").parse().expect("an address"))?;
        let mut s = socket.connect(addr).await?;
        let length = if method == "GET" && body.is_empty() {
            String::new()
        } else {
            format!("Content-Length: {}\r\n", body.len())
        };
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: test\r\n{headers}{length}Connection: close\r\n\r\n{body}"
        );
        s.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
            .await
            .map_err(|_| std::io::Error::other("no answer in 10 s"))??;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&raw).into_owned())
    })?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let head = lines.map(|l| l.to_ascii_lowercase()).collect();
    Ok((status, head, body.to_string()))
}
