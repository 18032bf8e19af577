//! The registry: stores and named limiters built from configuration, and the process-wide default.

use crate::config::{self, Config, EngineKind, LimiterConfig, StoreConfig, DEFAULT_STORE};
use crate::engine::memory::MemoryEngine;
use crate::engine::Engine;
use crate::error::{ConfigError, Error, Result};
use crate::limiter::{Limiter, Permit};
use crate::metrics::{Metrics, MetricsSnapshot};
use crate::policy::Policy;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use tokio::sync::OnceCell;

/// Named limiters and the stores behind them. Cheap to clone (an `Arc` inside).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> ratesync::Result<()> {
/// let registry = ratesync::Registry::from_toml_str(r#"
///     [limiters.api]
///     rate_per_second = 50.0
///     burst = 5
/// "#).await?;
/// assert_eq!(registry.names(), ["api"]);
/// let err = registry.limiter("apj").unwrap_err();
/// assert_eq!(err.to_string(), "no limiter named `apj`; known limiters: api");
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    stores: RwLock<BTreeMap<String, Arc<dyn Engine>>>,
    /// The settings of the configured stores, for checking registered limiters.
    store_configs: RwLock<BTreeMap<String, crate::config::StoreConfig>>,
    limiters: RwLock<BTreeMap<String, Limiter>>,
    policies: RwLock<BTreeMap<String, Policy>>,
    /// The file the registry was built from, for [`Registry::reload`].
    source: RwLock<Option<std::path::PathBuf>>,
    /// The configuration version in force (1 when built; +1 per reload).
    version: AtomicU64,
    /// Reloads refused (a bad file), each leaving the rules in force.
    reload_failures: AtomicU64,
    /// Told of every limiter, present and future (telemetry attaches here).
    watchers: RwLock<Vec<LimiterWatcher>>,
    /// The decision log, when `[decision_log]` or a policy's `log_decisions` asks for one.
    decision_log: RwLock<Option<crate::decision_log::DecisionLog>>,
}

/// A callback told of each limiter (its name and metrics) once.
pub(crate) type LimiterWatcher = Arc<dyn Fn(&str, &Metrics) + Send + Sync>;

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("stores", &self.stores)
            .field("limiters", &self.limiters)
            .finish()
    }
}

impl Drop for Inner {
    /// The last handle of a registry is going away, perhaps at the end of
    /// `main`: give the slots of dropped permits back first where it can.
    fn drop(&mut self) {
        crate::limiter::flush_on_drop();
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    /// A registry with only the built-in in-memory store (named `memory`) and no limiters.
    pub fn new() -> Self {
        let mut stores: BTreeMap<String, Arc<dyn Engine>> = BTreeMap::new();
        stores.insert(DEFAULT_STORE.to_string(), Arc::new(MemoryEngine::new()));
        Self {
            inner: Arc::new(Inner {
                stores: RwLock::new(stores),
                store_configs: RwLock::new(BTreeMap::new()),
                limiters: RwLock::new(BTreeMap::new()),
                policies: RwLock::new(BTreeMap::new()),
                source: RwLock::new(None),
                version: AtomicU64::new(1),
                reload_failures: AtomicU64::new(0),
                watchers: RwLock::new(Vec::new()),
                decision_log: RwLock::new(None),
            }),
        }
    }

    /// Builds stores (connecting to their backends) and limiters from `config`.
    pub async fn from_config(config: Config) -> Result<Self> {
        let registry = Self::new();
        for (name, store) in &config.stores {
            let engine = connect(&config.source_name, name, store).await?;
            registry.write_stores().insert(name.clone(), engine);
            registry
                .inner
                .store_configs
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(name.clone(), store.clone());
        }
        let policies = registry.policy_engines(&config)?;
        let wants_log = config.decision_log.is_some()
            || config.policies.values().any(|p| !p.log.decisions.is_off());
        if wants_log {
            let settings = config.decision_log.clone().unwrap_or_default();
            let log = crate::decision_log::DecisionLog::open(&settings, &config.stores).await?;
            *registry
                .inner
                .decision_log
                .write()
                .unwrap_or_else(PoisonError::into_inner) = Some(log);
        }
        for (name, spec) in config.limiters {
            let engine = registry.store(&spec.store).ok_or_else(|| {
                ConfigError::new(
                    &config.source_name,
                    format!("limiters.{name}.store"),
                    format!("no store named `{}`", spec.store),
                )
            })?;
            let limiter = Limiter::new(&name, spec, engine, Arc::new(Metrics::new()));
            registry.tell_watchers(&name, &limiter);
            registry.write_limiters().insert(name, limiter);
        }
        let built: Vec<Policy> = {
            let mut map = registry
                .inner
                .policies
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            for (name, (spec, engine)) in policies {
                let p = Policy::new(&name, spec, engine, 1);
                p.set_decision_log(registry.decision_log());
                map.insert(name.clone(), p);
            }
            map.values().cloned().collect()
        };
        for p in built {
            // The lists kept in the store, before the first check.
            if let Err(e) = p.refresh_lists().await {
                tracing::warn!(policy = %p.name(), error = %e, "cannot read the policy's lists yet; they are read again every {} ms", crate::policy::LIST_REFRESH.as_millis());
            }
            p.keep_lists_fresh();
        }
        Ok(registry)
    }

    /// Each policy of `config` with the engine of its store, checked: the
    /// store exists here and runs policies, and can hold the policy's state.
    #[allow(clippy::type_complexity)]
    fn policy_engines(
        &self,
        config: &Config,
    ) -> Result<BTreeMap<String, (crate::policy::PolicySpec, Arc<dyn Engine>)>> {
        let mut out = BTreeMap::new();
        for (name, spec) in &config.policies {
            let at = format!("policies.{name}.store");
            let engine = self.store(&spec.store).ok_or_else(|| {
                ConfigError::new(
                    &config.source_name,
                    &at,
                    format!(
                        "no store named `{}` in this registry (a reload changes policies, not stores: restart to add one)",
                        spec.store
                    ),
                )
            })?;
            if !engine.runs_policies() {
                return Err(ConfigError::new(
                    &config.source_name,
                    at,
                    format!(
                        "store `{}` (engine {}) does not run policies; use a memory, redis, postgres or nats store",
                        spec.store,
                        engine.kind()
                    ),
                )
                .into());
            }
            engine.check_policy_spec(spec).map_err(|e| {
                ConfigError::new(&config.source_name, format!("policies.{name}"), e)
            })?;
            out.insert(name.clone(), (spec.clone(), engine));
        }
        Ok(out)
    }

    /// Re-reads the file this registry was built from ([`from_file`](Self::from_file),
    /// [`from_default_location`](Self::from_default_location)) and puts its
    /// policies in force atomically, for every handle already given out:
    /// changed policies take their new rules from the next check on, new
    /// ones appear, removed ones leave [`policy`](Self::policy) (handles
    /// kept keep their last rules). Counters, hooks and stored state stay.
    /// Limiters and stores are not reloaded.
    ///
    /// A file that does not parse or validate changes nothing: the error is
    /// returned, logged and counted ([`reload_failures`](Self::reload_failures)).
    /// Returns the new configuration version, which every later
    /// [`Decision`](crate::policy::Decision) carries.
    pub async fn reload(&self) -> Result<u64> {
        let path = self
            .inner
            .source
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let Some(path) = path else {
            return Err(Error::Unsupported(
                "this registry was not built from a file; call reload_from(config) with the new configuration".into(),
            ));
        };
        match Config::from_file(&path) {
            Ok(c) => self.reload_from(c),
            Err(e) => Err(self.reload_failed(e.into())),
        }
    }

    /// Sets the file [`reload`](Self::reload) reads (a registry built with
    /// [`from_file`](Self::from_file) has it already).
    pub fn set_source(&self, path: impl Into<std::path::PathBuf>) {
        *self
            .inner
            .source
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(path.into());
    }

    /// [`reload`](Self::reload) from a configuration already read.
    pub fn reload_from(&self, config: Config) -> Result<u64> {
        let policies = match self.policy_engines(&config) {
            Ok(p) => p,
            Err(e) => return Err(self.reload_failed(e)),
        };
        let mut map = self
            .inner
            .policies
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let version = self.inner.version.fetch_add(1, Ordering::SeqCst) + 1;
        map.retain(|name, _| policies.contains_key(name));
        for (name, (spec, engine)) in policies {
            match map.get(&name) {
                Some(p) => p.replace(spec, engine, version),
                None => {
                    let p = Policy::new(&name, spec, engine, version);
                    p.set_decision_log(self.decision_log());
                    p.keep_lists_fresh();
                    map.insert(name.clone(), p);
                }
            }
        }
        tracing::info!(version, source = %config.source_name, policies = map.len(), "configuration reloaded");
        if let Some(log) = self.decision_log() {
            if config.decision_log.as_ref() != Some(log.settings()) && config.decision_log.is_some()
            {
                tracing::warn!(
                    "[decision_log] changed; its settings take effect at the next start"
                );
            }
            let detail = format!("version {version} from {}", config.source_name);
            tokio::spawn(async move {
                if let Err(e) = log.audit("registry", "reload", "", "", &detail).await {
                    tracing::error!(error = %e, "cannot append the reload to the audit trail");
                }
            });
        } else if map.values().any(|p| !p.spec().log.decisions.is_off()) {
            tracing::warn!("a policy now sets log_decisions, but this process started without a decision log; it starts logging at the next start");
        }
        Ok(version)
    }

    fn reload_failed(&self, e: Error) -> Error {
        self.inner.reload_failures.fetch_add(1, Ordering::Relaxed);
        tracing::error!(error = %e, "configuration reload refused; the rules in force stay");
        e
    }

    /// The configuration version in force: 1 when built, one more per reload.
    pub fn config_version(&self) -> u64 {
        self.inner.version.load(Ordering::SeqCst)
    }

    /// Reloads refused because the new file was bad.
    pub fn reload_failures(&self) -> u64 {
        self.inner.reload_failures.load(Ordering::Relaxed)
    }

    /// Connects to one store as [`from_config`](Self::from_config) would,
    /// without building a registry: for tools that check stores (`ratesync
    /// check`). [`Engine::describe`](crate::engine::Engine::describe) then
    /// says what is there.
    pub async fn connect_store(name: &str, store: &StoreConfig) -> Result<Arc<dyn Engine>> {
        connect("<check>", name, store).await
    }

    /// Parses TOML text (with `${VAR}` expansion) and builds the registry.
    pub async fn from_toml_str(text: &str) -> Result<Self> {
        Self::from_config(Config::from_toml_str(text)?).await
    }

    /// Reads the TOML file at `path` and builds the registry.
    pub async fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let registry = Self::from_config(Config::from_file(path.as_ref())?).await?;
        *registry
            .inner
            .source
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(path.as_ref().to_path_buf());
        Ok(registry)
    }

    /// Reads `$RATESYNC_CONFIG`, else `./ratesync.toml`, else `./config.toml`.
    pub async fn from_default_location() -> Result<Self> {
        Self::from_file(Config::default_location()?).await
    }

    fn write_stores(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<dyn Engine>>> {
        self.inner
            .stores
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn tell_watchers(&self, name: &str, limiter: &Limiter) {
        let watchers = self
            .inner
            .watchers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for w in watchers {
            w(name, limiter.metrics_handle());
        }
    }

    /// Calls `watch` for every limiter now and for each one added later.
    #[cfg(feature = "prometheus")]
    pub(crate) fn watch_limiters(&self, watch: LimiterWatcher) {
        self.inner
            .watchers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(watch.clone());
        let limiters = self
            .inner
            .limiters
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for (name, l) in &limiters {
            watch(name, l.metrics_handle());
        }
    }

    /// Every limiter, by name.
    #[cfg(feature = "prometheus")]
    pub(crate) fn limiters(&self) -> BTreeMap<String, Limiter> {
        self.inner
            .limiters
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn write_limiters(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Limiter>> {
        self.inner
            .limiters
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The engine of store `name`.
    pub fn store(&self, name: &str) -> Option<Arc<dyn Engine>> {
        self.inner
            .stores
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    /// Adds (or replaces) a store backed by `engine`, for engines built in code.
    pub fn add_store(&self, name: impl Into<String>, engine: Arc<dyn Engine>) {
        self.write_stores().insert(name.into(), engine);
    }

    /// The limiter called `name`.
    pub fn limiter(&self, name: &str) -> Result<Limiter> {
        let limiters = self
            .inner
            .limiters
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        limiters
            .get(name)
            .cloned()
            .ok_or_else(|| Error::UnknownLimiter {
                name: name.to_string(),
                known: limiters.keys().cloned().collect(),
            })
    }

    /// The policy called `name`.
    pub fn policy(&self, name: &str) -> Result<Policy> {
        let policies = self
            .inner
            .policies
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        policies
            .get(name)
            .cloned()
            .ok_or_else(|| Error::UnknownPolicy {
                name: name.to_string(),
                known: policies.keys().cloned().collect(),
            })
    }

    /// Every policy, by name.
    pub(crate) fn policies(&self) -> BTreeMap<String, Policy> {
        self.inner
            .policies
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The names of all stores, sorted.
    pub fn store_names(&self) -> Vec<String> {
        self.inner
            .stores
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }

    /// The names of all policies, sorted.
    pub fn policy_names(&self) -> Vec<String> {
        self.inner
            .policies
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }

    /// The names of all limiters, sorted.
    pub fn names(&self) -> Vec<String> {
        self.inner
            .limiters
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }

    /// A limiter on one of this registry's stores that the registry does not
    /// list: not in `names()`, `metrics()` or the exported telemetry. The
    /// alert loop keeps its shared cooldowns in one, so its own refusals
    /// never look like a limiter under strain.
    pub(crate) fn unlisted(&self, name: &str, config: LimiterConfig) -> Result<Limiter> {
        if name.is_empty() {
            return Err(
                ConfigError::new("<registered>", "limiters", "names must not be empty").into(),
            );
        }
        let store_names: Vec<String> = self
            .inner
            .stores
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        let spec = config::validate_registered(
            name,
            &config,
            |s| store_names.iter().any(|n| n == s),
            &store_names,
        )?;
        if let Some(store) = self
            .inner
            .store_configs
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&spec.store)
        {
            config::check_against_store("<registered>", name, &spec, store)?;
        }
        let engine = self.store(&spec.store).ok_or_else(|| {
            ConfigError::new(
                "<registered>",
                format!("limiters.{name}.store"),
                format!("no store named `{}`", spec.store),
            )
        })?;
        Ok(Limiter::new(name, spec, engine, Arc::new(Metrics::new())))
    }

    /// Registers a limiter from code, validated exactly like a `[limiters.NAME]`
    /// table. Fails if the name is taken.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> ratesync::Result<()> {
    /// use ratesync::{LimiterConfig, Registry};
    /// let reg = Registry::new();
    /// let jobs = reg.register("jobs", LimiterConfig::concurrency(2))?;
    /// let (a, b) = (jobs.acquire().await?, jobs.acquire().await?);
    /// assert!(jobs.try_acquire().await?.is_none());
    /// # drop((a, b)); Ok(()) }
    /// ```
    pub fn register(&self, name: &str, config: LimiterConfig) -> Result<Limiter> {
        let limiter = self.unlisted(name, config)?;
        let mut limiters = self.write_limiters();
        if limiters.contains_key(name) {
            return Err(ConfigError::new(
                "<registered>",
                format!("limiters.{name}"),
                "a limiter of this name already exists; choose another name",
            )
            .into());
        }
        self.tell_watchers(name, &limiter);
        limiters.insert(name.to_string(), limiter.clone());
        Ok(limiter)
    }

    /// Waits (at most 5 s) until the slots of permits dropped in this process
    /// have been given back to their stores, and (at most 5 s more) until
    /// the decision log has written what is queued. Call it before the program
    /// exits: a permit dropped just before the runtime shuts down would
    /// otherwise keep its slot until its lease runs out. The registry stays
    /// usable.
    pub async fn close(&self) {
        if !crate::limiter::wait_for_releases(crate::limiter::RELEASE_GRACE).await {
            tracing::warn!("some concurrency slots were not given back within 5 s; they free themselves when their leases run out");
        }
        if let Some(log) = self.decision_log() {
            if let Err(e) = log.flush_within(crate::limiter::RELEASE_GRACE).await {
                tracing::warn!(error = %e, "the decision log could not write everything queued");
            }
        }
    }

    /// Logs every policy's decisions (as each one's `log_decisions` says)
    /// and enforcement actions to `log` from now on, in place of the one
    /// the configuration opened: the way to a sink of your own
    /// ([`DecisionLog::with_sink`](crate::decision_log::DecisionLog::with_sink)).
    pub fn use_decision_log(&self, log: crate::decision_log::DecisionLog) {
        *self
            .inner
            .decision_log
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(log.clone());
        for p in self.policies().values() {
            p.set_decision_log(Some(log.clone()));
        }
    }

    /// The decision log (see [`crate::decision_log`]), when the
    /// configuration has `[decision_log]` or a policy sets `log_decisions`.
    pub fn decision_log(&self) -> Option<crate::decision_log::DecisionLog> {
        self.inner
            .decision_log
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Every limiter's metrics with the time they were read, serialisable to JSON.
    pub fn snapshot(&self) -> crate::metrics::Snapshot {
        crate::metrics::Snapshot {
            taken_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            limiters: self.metrics(),
        }
    }

    /// Writes [`snapshot`](Self::snapshot) to `path` every `every`
    /// (atomically: temporary file, then rename) until the handle is aborted.
    /// A failed write is logged and retried at the next turn.
    pub fn export_snapshots(
        &self,
        path: impl Into<std::path::PathBuf>,
        every: std::time::Duration,
    ) -> tokio::task::JoinHandle<()> {
        let (registry, path) = (self.clone(), path.into());
        tokio::spawn(async move {
            let mut timer = tokio::time::interval(every);
            loop {
                timer.tick().await;
                let snap = registry.snapshot();
                let target = path.clone();
                let written = tokio::task::spawn_blocking(move || snap.write_atomic(&target)).await;
                match written {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(path = %path.display(), error = %e, "cannot write the metrics snapshot")
                    }
                    Err(e) => tracing::warn!(error = %e, "the snapshot writer stopped"),
                }
            }
        })
    }

    /// A snapshot of every limiter's metrics, by name.
    pub fn metrics(&self) -> BTreeMap<String, MetricsSnapshot> {
        self.inner
            .limiters
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(n, l)| (n.clone(), l.metrics()))
            .collect()
    }
}

async fn connect(source: &str, name: &str, store: &StoreConfig) -> Result<Arc<dyn Engine>> {
    match store.engine {
        EngineKind::Memory => Ok(Arc::new(MemoryEngine::new())),
        #[cfg(feature = "redis")]
        EngineKind::Redis => {
            let engine = crate::engine::redis::RedisEngine::connect(name, store).await?;
            Ok(Arc::new(engine))
        }
        #[cfg(feature = "nats")]
        EngineKind::Nats => {
            let engine = crate::engine::nats::NatsEngine::connect(name, store).await?;
            Ok(Arc::new(engine))
        }
        #[cfg(feature = "postgres")]
        EngineKind::Postgres => {
            let engine = crate::engine::postgres::PostgresEngine::connect(name, store).await?;
            Ok(Arc::new(engine))
        }
        #[allow(unreachable_patterns)] // reachable only when an engine feature is off
        other => Err(ConfigError::new(
            source,
            format!("stores.{name}.engine"),
            format!("engine `{}` is not available in this build", other.as_str()),
        )
        .into()),
    }
}

static DEFAULT: OnceCell<Registry> = OnceCell::const_new();

/// The process-wide default registry, read on first use from
/// `$RATESYNC_CONFIG`, else `./ratesync.toml`, else `./config.toml`
/// (unless [`set_default_registry`] installed one first).
pub async fn default_registry() -> Result<&'static Registry> {
    DEFAULT
        .get_or_try_init(Registry::from_default_location)
        .await
}

/// Installs `registry` as the default. Fails (returning it) if a default
/// was already installed or loaded.
pub fn set_default_registry(registry: Registry) -> std::result::Result<(), Registry> {
    DEFAULT.set(registry).map_err(|e| match e {
        tokio::sync::SetError::AlreadyInitializedError(r)
        | tokio::sync::SetError::InitializingError(r) => r,
    })
}

/// Waits for a permit of the default registry's limiter `name`: the zero-setup path for scripts.
///
/// ```no_run
/// # #[tokio::main] async fn main() -> ratesync::Result<()> {
/// let _permit = ratesync::acquire("api").await?;
/// # Ok(()) }
/// ```
pub async fn acquire(name: &str) -> Result<Permit> {
    default_registry().await?.limiter(name)?.acquire().await
}

/// A permit of the default registry's limiter `name` if one is free now.
pub async fn try_acquire(name: &str) -> Result<Option<Permit>> {
    default_registry().await?.limiter(name)?.try_acquire().await
}
