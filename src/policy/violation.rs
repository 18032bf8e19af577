//! Violations and the hooks told of them: a bounded queue served by one
//! task, so a slow or failing hook never slows a check (a full queue drops
//! the violation and counts it in `violations_dropped`).

use super::metrics::PolicyMetrics;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;

/// Violations waiting for the hooks, per policy, at most.
pub const QUEUE: usize = 1024;

/// How long one hook may take with one violation before it is abandoned.
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// A window that had no room for a request.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    /// The key, in its stored form (bounded, backend-safe; see the key rules
    /// in the README).
    pub key: String,
    /// The key's state address, for [`Policy::block_key`](super::Policy::block_key)
    /// (bounded like `key`, whatever the client sent).
    pub state_key: crate::StateKey,
    /// The policy.
    pub policy: String,
    /// The window without room.
    pub window: String,
    /// What the window held when it refused.
    pub count: u32,
    /// Its limit.
    pub limit: u32,
    /// When.
    pub at: SystemTime,
    /// When the key's ban ends, if it is banned.
    pub blocked_until: Option<SystemTime>,
    /// When the request would have been admitted.
    pub retry_after: Option<Duration>,
    /// What the key is made of (`"ip"`, `"route+ip"`).
    pub scope: String,
    /// `action`, and `tier` and `shadow` where they apply.
    pub metadata: BTreeMap<String, String>,
}

type Hook = Arc<dyn Fn(Violation) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// The hooks of one policy and the queue to them.
#[derive(Default)]
pub(crate) struct Violations {
    hooks: Arc<Mutex<Vec<Hook>>>,
    queue: OnceLock<mpsc::Sender<Violation>>,
}

impl std::fmt::Debug for Violations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.hooks.lock().map_or(0, |h| h.len());
        f.debug_struct("Violations").field("hooks", &n).finish()
    }
}

impl Violations {
    /// Adds a hook; the first one starts the task that serves them (on the
    /// current tokio runtime, which must exist).
    pub(crate) fn add<F, Fut>(&self, hook: F)
    where
        F: Fn(Violation) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let hook: Hook = Arc::new(move |v| Box::pin(hook(v)));
        self.hooks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(hook);
        self.queue.get_or_init(|| {
            let (tx, mut rx) = mpsc::channel::<Violation>(QUEUE);
            let hooks = self.hooks.clone();
            tokio::spawn(async move {
                while let Some(v) = rx.recv().await {
                    let now: Vec<Hook> = hooks
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .clone();
                    for hook in now {
                        // Its own task: a hook that panics takes only itself down.
                        let call = tokio::spawn(hook(v.clone()));
                        match tokio::time::timeout(HOOK_TIMEOUT, call).await {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => tracing::warn!(policy = %v.policy, error = %e, "a violation hook failed"),
                            Err(_) => tracing::warn!(policy = %v.policy,
                                "a violation hook took over {} s; left running, the next violation goes on", HOOK_TIMEOUT.as_secs()),
                        }
                    }
                }
            });
            tx
        });
    }

    /// Queues `v` for the hooks, if there are any; counted when the queue is full.
    pub(crate) fn send(&self, v: Violation, metrics: &PolicyMetrics) {
        if let Some(tx) = self.queue.get() {
            if tx.try_send(v).is_err() {
                metrics.record_violation_dropped();
            }
        }
    }
}
