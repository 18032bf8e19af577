//! `ratesync serve` behind a real nginx: `auth_request` asks
//! `/auth/{policy}?throttle_status=401` about every request, and nginx
//! answers its client 429 with the `Retry-After` and rate-limit headers it
//! copied (the configuration the README gives). nginx is Debian's
//! (`.ci/run` installs it); the test starts its own on a free port.

use crate::support::{have, ratesync_bin, scratch, skip_or_fail, write_config};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A process stopped when dropped: SIGTERM first (nginx's master then
/// takes its workers down with it; a SIGKILL would leave them serving),
/// SIGKILL if it is still there after 5 s.
struct Stopped(Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let start = Instant::now();
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// One GET with `headers`: the status and the headers of the answer.
fn get(addr: SocketAddr, path: &str, headers: &str) -> std::io::Result<(u16, Vec<String>)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: test\r\n{headers}Connection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let mut lines = text.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let head = lines
        .take_while(|l| !l.is_empty())
        .map(|l| l.to_ascii_lowercase())
        .collect();
    Ok((status, head))
}

fn wait_until_up(addr: SocketAddr, path: &str, what: &str) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if get(addr, path, "").is_ok_and(|(s, _)| s != 0) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not come up on {addr}");
}

fn nginx_conf(dir: &Path, nginx: u16, ratesync: u16) -> String {
    let d = dir.display();
    format!(
        r#"daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  server {{
    listen 127.0.0.1:{nginx};
    location = /_ratesync {{
      internal;
      proxy_pass http://127.0.0.1:{ratesync}/auth/per_ip?throttle_status=401;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Original-URI $request_uri;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    }}
    location / {{
      auth_request /_ratesync;
      auth_request_set $rs_retry $upstream_http_retry_after;
      auth_request_set $rs_policy $upstream_http_ratelimit_policy;
      auth_request_set $rs_limit $upstream_http_ratelimit;
      add_header RateLimit-Policy $rs_policy always;
      add_header RateLimit $rs_limit always;
      error_page 401 = @throttled;
      # The application; here ratesync's own health page stands in for it.
      proxy_pass http://127.0.0.1:{ratesync}/healthz;
    }}
    location @throttled {{
      add_header Retry-After $rs_retry always;
      add_header RateLimit-Policy $rs_policy always;
      add_header RateLimit $rs_limit always;
      return 429 "too many requests\n";
    }}
  }}
}}
"#
    )
}

#[test]
fn nginx_auth_request_refuses_with_429_and_the_copied_headers() {
    let nginx_bin = ["/usr/sbin/nginx", "nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists() || have(p));
    let Some(nginx_bin) = nginx_bin else {
        skip_or_fail("nginx is not installed (apt-get install -y nginx-light); the auth_request test did not run");
        return;
    };
    let dir = scratch("nginx");
    let (serve_port, nginx_port) = (free_port(), free_port());
    let config = write_config(
        &dir,
        "[policies.per_ip]\nkey = \"ip\"\nwindows = [{ window = \"1m\", limit = 2, name = \"minute\" }]\n\
         [http]\n# nginx, and the test's client behind it, are on loopback.\ntrusted_proxies = [\"127.0.0.1\"]\n",
    );
    let serve = Stopped(
        Command::new(ratesync_bin())
            .args(["--config"])
            .arg(&config)
            .args(["serve", "--listen", &format!("127.0.0.1:{serve_port}")])
            .stdout(Stdio::null())
            .spawn()
            .expect("start ratesync serve"),
    );
    let serve_addr: SocketAddr = format!("127.0.0.1:{serve_port}").parse().unwrap();
    wait_until_up(serve_addr, "/healthz", "ratesync serve");
    std::fs::write(
        dir.join("nginx.conf"),
        nginx_conf(&dir, nginx_port, serve_port),
    )
    .unwrap();
    let nginx = Stopped(
        Command::new(nginx_bin)
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx"),
    );
    let nginx_addr: SocketAddr = format!("127.0.0.1:{nginx_port}").parse().unwrap();
    let start = Instant::now();
    while TcpStream::connect(nginx_addr).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "nginx did not start: {}",
            std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let client = |addr: &str| format!("X-Forwarded-For: {addr}\r\n");
    let header = |head: &[String], name: &str| {
        head.iter()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_string))
    };
    for left in ["1", "0"] {
        let (status, head) = get(nginx_addr, "/", &client("203.0.113.1")).unwrap();
        assert_eq!(status, 200, "{head:?}");
        assert_eq!(
            header(&head, "ratelimit").as_deref(),
            Some(format!("\"minute\";r={left};t=60").as_str()),
            "{head:?}"
        );
    }
    let (status, head) = get(nginx_addr, "/", &client("203.0.113.1")).unwrap();
    assert_eq!(status, 429, "{head:?}");
    assert_eq!(
        header(&head, "retry-after").as_deref(),
        Some("60"),
        "{head:?}"
    );
    assert_eq!(
        header(&head, "ratelimit-policy").as_deref(),
        Some("\"minute\";q=2;w=60"),
        "{head:?}"
    );
    // Another client behind the same proxy has its own window.
    let (status, _) = get(nginx_addr, "/", &client("203.0.113.2")).unwrap();
    assert_eq!(status, 200);
    println!("nginx: auth_request through ratesync serve refuses with 429 and its headers");
    drop(nginx);
    drop(serve);
    let _ = std::fs::remove_dir_all(&dir);
}
