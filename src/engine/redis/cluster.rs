//! The connection a Redis store uses: one server's, or a Redis Cluster's.
//!
//! A store whose url is `redis+cluster://host:port,host:port` (or
//! `rediss+cluster://` with TLS) names a cluster by some of its nodes (the
//! seeds); redis-rs's cluster client learns the slot map from them, sends
//! each command to the master of its key's slot, follows MOVED and ASK, and
//! refreshes the map when a node fails or a replica is promoted. Every key of
//! one limiter key carries the same hash tag (see the module docs of the
//! engine), so each script touches one slot. Releases are published from
//! scripts and reach every node's subscribers (PUBLISH is cluster-wide), so
//! the release subscription connects to one seed, the next one when it fails.

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// One server (multiplexed, reconnecting) or a cluster.
#[derive(Clone)]
pub(super) enum Conn {
    One(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::One(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::One(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::One(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// The url schemes that name a cluster.
pub(super) const CLUSTER_SCHEMES: [&str; 2] = ["redis+cluster://", "rediss+cluster://"];

/// Whether `url` names a cluster.
pub(super) fn is_cluster(url: &str) -> bool {
    CLUSTER_SCHEMES.iter().any(|s| url.starts_with(s))
}

/// The seed nodes of a cluster url, each as a one-server url with the
/// credentials and TLS of the whole: `redis+cluster://u:p@a:1,b:2` gives
/// `redis://u:p@a:1` and `redis://u:p@b:2`. `Err` names what is wrong.
pub(super) fn seeds(url: &str) -> Result<Vec<String>, String> {
    let (scheme, rest) = if let Some(r) = url.strip_prefix("redis+cluster://") {
        ("redis://", r)
    } else if let Some(r) = url.strip_prefix("rediss+cluster://") {
        ("rediss://", r)
    } else {
        return Err("must start with redis+cluster:// or rediss+cluster://".into());
    };
    let (userinfo, hosts) = match rest.rsplit_once('@') {
        Some((u, h)) => (format!("{u}@"), h),
        None => (String::new(), rest),
    };
    let hosts = hosts.trim_end_matches('/');
    if hosts.contains('/') || hosts.contains('?') {
        return Err(
            "a cluster url names nodes only (host:port,host:port); a cluster has no databases"
                .into(),
        );
    }
    let seeds: Vec<String> = hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|h| format!("{scheme}{userinfo}{h}"))
        .collect();
    if seeds.is_empty() {
        return Err("names no node: give at least one host:port".into());
    }
    Ok(seeds)
}

/// One master that serves slots, as `CLUSTER NODES` shows it.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Master {
    pub(super) addr: String,
    /// Its replicas that are up.
    pub(super) replicas: u32,
    /// Marked failing: its slots have no master until a replica is promoted.
    pub(super) failing: bool,
}

/// From `CLUSTER NODES`: each master that serves slots, with how many of
/// its replicas are up.
pub(super) fn masters(nodes: &str) -> Vec<Master> {
    let lines: Vec<Vec<&str>> = nodes
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() >= 8 && !f[2].contains("handshake"))
        .collect();
    let up = |f: &[&str]| !f[2].contains("fail");
    lines
        .iter()
        .filter(|f| f[2].contains("master") && f.len() > 8)
        .map(|m| Master {
            addr: m[1].split('@').next().unwrap_or(m[1]).to_string(),
            replicas: u32::try_from(
                lines
                    .iter()
                    .filter(|f| {
                        (f[2].contains("slave") || f[2].contains("replica"))
                            && f[3] == m[0]
                            && up(f)
                    })
                    .count(),
            )
            .unwrap_or(u32::MAX),
            failing: !up(m),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_keep_credentials_and_tls() {
        assert_eq!(
            seeds("redis+cluster://u:p@a:1,b:2/").unwrap(),
            ["redis://u:p@a:1", "redis://u:p@b:2"]
        );
        assert_eq!(
            seeds("rediss+cluster://h:7000").unwrap(),
            ["rediss://h:7000"]
        );
        assert!(seeds("redis+cluster://").is_err());
        assert!(seeds("redis+cluster://a:1/0")
            .unwrap_err()
            .contains("databases"));
        assert!(is_cluster("redis+cluster://a:1") && !is_cluster("redis://a:1"));
    }

    #[test]
    fn replicas_are_counted_per_serving_master() {
        let nodes = "\
a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
b1 127.0.0.1:7001@17001 master - 0 0 2 connected 5461-10922
c1 127.0.0.1:7002@17002 master,fail - 0 0 3 disconnected 10923-16383
r1 127.0.0.1:7003@17003 slave a1 0 0 1 connected
r2 127.0.0.1:7004@17004 slave,fail b1 0 0 2 disconnected
e1 127.0.0.1:7005@17005 master - 0 0 0 connected
";
        let m = |addr: &str, replicas, failing| Master {
            addr: addr.to_string(),
            replicas,
            failing,
        };
        assert_eq!(
            masters(nodes),
            [
                m("127.0.0.1:7000", 1, false),
                m("127.0.0.1:7001", 0, false),
                m("127.0.0.1:7002", 0, true)
            ]
        );
    }
}
