//! Every script call of the engine: an `EVALSHA` that loads the script on
//! `NOSCRIPT`, answered, for writes that must survive a failover, only once
//! `replica_acks` replicas have them.
//!
//! Redis replicates asynchronously. A master that dies after answering a
//! grant but before its replica received the write leaves the promoted
//! replica without that grant, which it would then give again: an
//! over-admission of up to the replication lag times the rate. With
//! `replica_acks = n` (the default on a cluster url is 1) the script call and
//! a `WAIT n timeout` travel in one pipeline, so they reach the same master
//! on the same connection, and the answer counts only when `n` replicas
//! acknowledged everything written before it. Fewer acknowledgements within
//! the timeout (half of `response_timeout`) make the call a backend error,
//! following `on_backend_error`: the write stands on the master, so a denial
//! then admits less, never more.

use super::{backend, ENGINE};
use crate::error::BackendError;
use redis::aio::ConnectionLike;
use redis::{Cmd, FromRedisValue, Script, ToRedisArgs};
use std::time::Duration;

/// One `EVALSHA` of a script, built like [`redis::ScriptInvocation`].
pub(super) struct Call<'a> {
    script: &'a Script,
    keys: Vec<String>,
    args: Cmd,
}

impl<'a> Call<'a> {
    pub(super) fn new(script: &'a Script) -> Self {
        Self {
            script,
            keys: Vec::new(),
            args: Cmd::new(),
        }
    }

    pub(super) fn key(mut self, key: String) -> Self {
        self.keys.push(key);
        self
    }

    pub(super) fn arg(mut self, arg: impl ToRedisArgs) -> Self {
        self.args.arg(arg);
        self
    }

    fn evalsha(&self) -> Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.script.get_hash())
            .arg(self.keys.len())
            .arg(&self.keys);
        for a in self.args.args_iter() {
            if let redis::Arg::Simple(bytes) = a {
                cmd.arg(bytes);
            }
        }
        cmd
    }

    /// Runs the call (loading the script on `NOSCRIPT`, as
    /// [`redis::ScriptInvocation`] does), then, when `acks > 0`, waits for
    /// that many replicas within `wait`.
    pub(super) async fn run<T: FromRedisValue>(
        self,
        conn: &mut (impl ConnectionLike + Send),
        acks: u32,
        wait: Duration,
    ) -> Result<T, BackendError> {
        let cmd = self.evalsha();
        let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
        let answer = match once(&cmd, conn, acks, wait_ms).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                self.script.load_async(conn).await.map_err(backend)?;
                once(&cmd, conn, acks, wait_ms).await
            }
            other => other,
        };
        answer.map_err(backend)?
    }
}

/// One attempt: the script's answer, or (inside) the replicas' shortfall.
async fn once<T: FromRedisValue>(
    cmd: &Cmd,
    conn: &mut (impl ConnectionLike + Send),
    acks: u32,
    wait_ms: u64,
) -> redis::RedisResult<Result<T, BackendError>> {
    if acks == 0 {
        return cmd.query_async::<T>(conn).await.map(Ok);
    }
    let mut pipe = redis::pipe();
    pipe.add_command(cmd.clone())
        .cmd("WAIT")
        .arg(acks)
        .arg(wait_ms);
    let (value, acked) = pipe.query_async::<(T, i64)>(conn).await?;
    if acked >= i64::from(acks) {
        return Ok(Ok(value));
    }
    Ok(Err(BackendError::new(
        ENGINE,
        format!(
            "only {acked} of {acks} replicas acknowledged the write within {wait_ms} ms, so a failover could forget it; \
             check the master's replicas, or set replica_acks = 0 on a store without replicas"
        ),
    )))
}
