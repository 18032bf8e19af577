//! `ratesync serve` behind a real nginx: `auth_request` asks
//! `/auth/{policy}?throttle_status=401` about every request, and nginx
//! answers its client 429 with the `Retry-After` and rate-limit headers it
//! copied (the configuration the README gives). nginx is Debian's
//! (`.ci/run` installs it); the test starts its own on a free port.

use crate::support::{
    free_port, have, http_exchange, ratesync_bin, scratch, skip_or_fail, write_config, Stopped,
};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One GET with `headers` from the local address `from` (any of
/// 127.0.0.0/8 is this host): the status, the headers and the body.
fn get_from(
    from: &str,
    addr: SocketAddr,
    path: &str,
    headers: &str,
) -> std::io::Result<(u16, Vec<String>, String)> {
    http_exchange(from, addr, "GET", path, headers, "")
}

fn get(addr: SocketAddr, path: &str, headers: &str) -> std::io::Result<(u16, Vec<String>)> {
    get_from("127.0.0.1", addr, path, headers).map(|(s, h, _)| (s, h))
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
         [http]\n# nginx connects from 127.0.0.1; its clients come from 127.0.0.2 and 127.0.0.3.\ntrusted_proxies = [\"127.0.0.1\"]\n",
    );
    let serve = Stopped(
        Command::new(ratesync_bin())
            .args(["--config"])
            .arg(&config)
            .args(["serve", "--listen", &format!("127.0.0.1:{serve_port}")])
            // The admin token from the environment (the file names none).
            .env("RATESYNC_ADMIN_TOKEN", "nginx-test-admin-token-42")
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
    // Two clients at 127.0.0.2 and 127.0.0.3; the first claims to be others.
    let header = |head: &[String], name: &str| {
        head.iter()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_string))
    };
    let spoofs = [
        "",
        "X-Forwarded-For: 127.0.0.3\r\n",
        "X-Forwarded-For: 198.51.100.1, 127.0.0.1\r\nForwarded: for=198.51.100.9\r\n",
    ];
    for (left, spoof) in ["1", "0"].iter().zip(spoofs) {
        let (status, head, body) = get_from("127.0.0.2", nginx_addr, "/", spoof).unwrap();
        assert_eq!(
            (status, body.as_str()),
            (200, "ok\n"),
            "the upstream answers: {head:?}"
        );
        assert_eq!(
            header(&head, "ratelimit").as_deref(),
            Some(format!("\"minute\";r={left};t=60").as_str()),
            "{head:?}"
        );
    }
    let (status, head, body) = get_from("127.0.0.2", nginx_addr, "/", spoofs[2]).unwrap();
    assert_eq!(
        status, 429,
        "a spoofed X-Forwarded-For is still 127.0.0.2: {head:?}"
    );
    assert_eq!(body, "too many requests\n");
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
    // The client it claimed to be has its own window, untouched.
    let (status, head, _) = get_from("127.0.0.3", nginx_addr, "/", "").unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        header(&head, "ratelimit").as_deref(),
        Some("\"minute\";r=1;t=60")
    );
    // The admin API of the same service takes the environment's token.
    let bearer = "Authorization: Bearer nginx-test-admin-token-42\r\n";
    let (status, _, body) = get_from(
        "127.0.0.1",
        serve_addr,
        "/v1/lists/deny?policy=per_ip",
        bearer,
    )
    .unwrap();
    assert_eq!((status, body.as_str()), (200, "[]"));
    let (status, _, _) =
        get_from("127.0.0.1", serve_addr, "/v1/lists/deny?policy=per_ip", "").unwrap();
    assert_eq!(status, 401);
    println!("nginx: auth_request through ratesync serve refuses with 429 and its headers");
    drop(nginx);
    drop(serve);
    let _ = std::fs::remove_dir_all(&dir);
}
