//! Release signals: waking concurrency waiters in this process when a slot is freed.
//!
//! Every engine funnels its backend's notifications (Redis pub/sub, Postgres
//! NOTIFY, a NATS KV watch, or a direct call for the memory engine) into a
//! [`ReleaseHub`], which keeps one `watch` channel per key that has waiters.
//! A `watch` receiver remembers that a change happened even if nobody was
//! awaiting at that instant, so a release between a failed attempt and the
//! wait is never lost.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::watch;

/// Wakes in-process waiters of a key when one of its slots is released.
#[derive(Debug, Default)]
pub struct ReleaseHub {
    channels: Mutex<HashMap<Arc<str>, watch::Sender<u64>>>,
}

/// A subscription to the releases of one key (see [`ReleaseHub`]).
#[derive(Debug)]
pub struct ReleaseSignal {
    rx: watch::Receiver<u64>,
}

impl ReleaseSignal {
    /// Returns once a release happened since the subscription or the previous
    /// call. Pending forever if the hub is gone, so callers bound it with a timeout.
    pub async fn released(&mut self) {
        if self.rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl ReleaseHub {
    /// An empty hub.
    pub fn new() -> Self {
        Self::default()
    }

    /// Subscribes to releases of `key`.
    pub fn subscribe(&self, key: &str) -> ReleaseSignal {
        let mut map = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(tx) = map.get(key) {
            return ReleaseSignal { rx: tx.subscribe() };
        }
        // Forget channels nobody listens to any more before adding one, so
        // the map stays as small as the set of keys with waiters.
        if map.len() >= 64 && map.len().is_power_of_two() {
            map.retain(|_, tx| tx.receiver_count() > 0);
        }
        let (tx, rx) = watch::channel(0);
        map.insert(key.into(), tx);
        ReleaseSignal { rx }
    }

    /// Wakes the waiters of `key`, if any.
    pub fn notify(&self, key: &str) {
        let mut map = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(tx) = map.get(key) {
            if tx.receiver_count() == 0 {
                map.remove(key);
            } else {
                tx.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
    }

    /// Wakes every waiter of every key: after a lost connection, releases
    /// may have been missed, and a spurious wake-up only costs one retry.
    pub fn notify_all(&self) {
        let mut map = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        map.retain(|_, tx| tx.receiver_count() > 0);
        for tx in map.values() {
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Keys with a live channel (for tests and introspection).
    pub fn len(&self) -> usize {
        self.channels
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// True when no key has a channel.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The background task that feeds a backend's release notices (Redis
/// pub/sub, Postgres LISTEN, a NATS KV watch) into a [`ReleaseHub`].
///
/// It starts on the first wait rather than at connect: most limiters never
/// wait for a slot, and each listener holds a connection of its own.
#[cfg(any(feature = "redis", feature = "postgres", feature = "nats"))]
#[derive(Default)]
pub(crate) struct ReleaseListener {
    started: std::sync::OnceLock<(super::AbortOnDrop, watch::Receiver<bool>)>,
}

/// One listening session's view of its hub: the engine's session calls
/// [`started`](Self::started) once it listens, then hands each release to
/// [`hub`](Self::hub).
#[cfg(any(feature = "redis", feature = "postgres", feature = "nats"))]
#[derive(Clone)]
pub(crate) struct Listening {
    hub: std::sync::Weak<ReleaseHub>,
    ready: Arc<watch::Sender<bool>>,
}

#[cfg(any(feature = "redis", feature = "postgres", feature = "nats"))]
impl Listening {
    /// Marks the listener ready and wakes every waiter, since releases may
    /// have been missed while it was not listening. False when the hub is
    /// gone (the engine was dropped): the session should end.
    pub(crate) fn started(&self) -> bool {
        let _ = self.ready.send(true);
        match self.hub.upgrade() {
            Some(h) => {
                h.notify_all();
                true
            }
            None => false,
        }
    }

    /// The hub, while the engine lives.
    pub(crate) fn hub(&self) -> Option<Arc<ReleaseHub>> {
        self.hub.upgrade()
    }
}

#[cfg(any(feature = "redis", feature = "postgres", feature = "nats"))]
impl ReleaseListener {
    /// Spawns the listener the first time: `session` connects, subscribes,
    /// calls [`Listening::started`] and feeds releases to the hub until its
    /// connection ends (`Ok`: it had listened) or fails (`Err`: why). It is
    /// run again after each end, with a backoff from 100 ms doubling to 2 s
    /// (reset after a session that listened), until the hub is gone. Then
    /// this waits at most a second until it listens, so the first waiter
    /// does not miss an early release. `what` names it in logs.
    pub(crate) async fn ensure<S, F>(
        &self,
        what: &'static str,
        hub: &Arc<ReleaseHub>,
        mut session: S,
    ) where
        S: FnMut(Listening) -> F + Send + 'static,
        F: std::future::Future<Output = Result<(), String>> + Send,
    {
        let (_, ready) = self.started.get_or_init(|| {
            let (tx, rx) = watch::channel(false);
            let listening = Listening {
                hub: Arc::downgrade(hub),
                ready: Arc::new(tx),
            };
            let task = async move {
                let mut backoff = std::time::Duration::from_millis(100);
                loop {
                    let result = session(listening.clone()).await;
                    let _ = listening.ready.send(false);
                    if listening.hub.strong_count() == 0 {
                        return;
                    }
                    match result {
                        Ok(()) => {
                            tracing::warn!("{what} lost; reconnecting");
                            backoff = std::time::Duration::from_millis(100);
                        }
                        Err(e) => tracing::debug!(error = %e, "{what} failed; retrying"),
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(2));
                }
            };
            (super::AbortOnDrop(tokio::spawn(task)), rx)
        });
        let mut ready = ready.clone();
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(1), ready.wait_for(|s| *s)).await;
    }
}
