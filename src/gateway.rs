//! One generation of the running gateway: config, pools and the upstream agent, shared
//! read-only by the workers through an `Arc`, and replaced whole on a reload.
//!
//! The key states live in a [`KeyStore`] outside it, shared by every generation, so what
//! was learnt about a key survives a reload (and, through the state file, a restart); so
//! do the [`Usage`] counts and the [`Control`] the admin API reaches the process through.

use crate::config::Config;
use crate::control::Control;
use crate::error::ApiError;
use crate::keystate::KeyStore;
use crate::keystate::Policy;
use crate::limits::Limits;
use crate::pool::Pool;
use crate::relay::Relay;
use crate::slots::Slots;
use crate::upstream;
use crate::usage::Usage;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What outlives a generation, shared by every one a process builds.
#[derive(Clone)]
pub struct Lasting {
    /// Every key's state.
    pub store: Arc<KeyStore>,
    /// Every key's requests in flight.
    pub slots: Arc<Slots>,
    /// Per-token counts and the address lock-out.
    pub limits: Arc<Limits>,
    /// Requests and tokens per token, model and day.
    pub usage: Arc<Usage>,
    /// What the admin API may ask of the process.
    pub control: Arc<Control>,
    /// When the process started.
    pub started: Instant,
}

impl Lasting {
    /// A process's start, from the key states and usage counts its state file held.
    pub fn new(store: KeyStore, usage: Usage) -> Lasting {
        Lasting {
            store: Arc::new(store),
            slots: Arc::default(),
            limits: Arc::default(),
            usage: Arc::new(usage),
            control: Arc::default(),
            started: Instant::now(),
        }
    }
}

impl Default for Lasting {
    fn default() -> Self {
        Lasting::new(KeyStore::default(), Usage::default())
    }
}

/// Everything a request handler needs.
pub struct Gateway {
    /// The configuration it was built from.
    pub config: Config,
    /// The one upstream agent (keep-alive connections are shared through it).
    pub agent: ureq::Agent,
    /// Pools by name.
    pub pools: HashMap<String, Pool>,
    /// Every key's state, shared across reloads.
    pub store: Arc<KeyStore>,
    /// Every key's requests in flight, shared across reloads.
    pub slots: Arc<Slots>,
    /// When the gateway started.
    pub started: Instant,
    /// Per-token counts and the address lock-out, shared across reloads.
    pub limits: Arc<Limits>,
    /// This generation's number: 1 for the config loaded at start, one more for each
    /// reload (0: built outside a running process).
    pub generation: u64,
    /// Unix seconds when this generation's config was loaded.
    pub loaded_at: u64,
    /// Requests and tokens per token, model and day, shared across reloads.
    pub usage: Arc<Usage>,
    /// What the admin API may ask of the process, shared across reloads.
    pub control: Arc<Control>,
}

impl Gateway {
    /// Builds generation number `generation`'s pools and agent from a loaded config, over
    /// what outlives generations.
    pub fn new(config: Config, lasting: &Lasting, generation: u64) -> Gateway {
        let upstream = &config.raw.upstream;
        let agent = upstream::agent(
            Duration::from_secs(upstream.connect_timeout_secs),
            Duration::from_secs(upstream.idle_timeout_secs),
            config.raw.workers,
        );
        let mut pools = HashMap::new();
        for entry in &config.keys {
            pools.entry(entry.pool.clone()).or_insert_with(|| {
                let settings = config.raw.pools.get(&entry.pool);
                let strategy = settings.and_then(|p| p.strategy).unwrap_or(upstream.strategy);
                let limit = settings
                    .and_then(|p| p.max_concurrent_per_key)
                    .unwrap_or(upstream.max_concurrent_per_key);
                // An OpenAI pool's keys already point at its API base (`config` set it).
                Pool::new(&entry.pool, config.pool_keys(&entry.pool), strategy, limit)
                    .speaking(settings.map(|p| p.provider).unwrap_or_default())
                    .falling_back_to(
                        settings.and_then(|p| p.fallback.clone()),
                        settings.and_then(|p| p.slot_wait_secs).map(Duration::from_secs),
                    )
            });
        }
        // Counts of tokens this config no longer has are dropped.
        lasting.limits.keep_only(config.tokens.iter().map(|token| token.name.as_str()));
        let Lasting { store, slots, limits, usage, control, started } = lasting.clone();
        Gateway {
            config,
            agent,
            pools,
            store,
            slots,
            started,
            limits,
            generation,
            loaded_at: crate::keystate::now(),
            usage,
            control,
        }
    }

    /// The pool of keys.txt section `name`, or the 503 saying it has no keys.
    pub fn pool(&self, name: &str) -> Result<&Pool, ApiError> {
        self.pools.get(name).ok_or_else(|| {
            ApiError::server(503, format!("pool '{name}' has no upstream keys: add some to keys.txt"))
        })
    }

    /// How failures are judged.
    pub fn policy(&self) -> Policy {
        let upstream = &self.config.raw.upstream;
        Policy { cooldown_secs: upstream.cooldown_secs, failure_threshold: upstream.failure_threshold }
    }

    /// The relay settings for one request, whose upstream exchange starts now.
    pub fn relay(&self) -> Relay<'_> {
        let upstream = &self.config.raw.upstream;
        let now = Instant::now();
        Relay {
            agent: &self.agent,
            store: &self.store,
            slots: &self.slots,
            pools: &self.pools,
            policy: self.policy(),
            max_attempts: upstream.max_attempts,
            failover_deadline: now + Duration::from_secs(upstream.failover_deadline_secs),
            slot_wait: Duration::from_secs(upstream.slot_wait_secs),
            // Requests waiting for a busy pool hold workers: half of them at most, so one
            // small pool cannot take every worker from the others.
            max_waiting: (self.config.raw.workers / 2).max(1),
            deadline: Some(now + Duration::from_secs(upstream.request_timeout_secs)),
        }
    }
}
