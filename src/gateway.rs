//! The running gateway's shared state: config, pools, the upstream agent.
//!
//! Built once from a [`Config`] and shared read-only by every worker through an `Arc`.
//! Per-key counters and cooldowns, when they come, live in the pools.

use crate::config::Config;
use crate::pool::Pool;
use crate::upstream;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Everything a request handler needs.
pub struct Gateway {
    /// The configuration it was built from.
    pub config: Config,
    /// The one upstream agent (keep-alive connections are shared through it).
    pub agent: ureq::Agent,
    /// Pools by name.
    pub pools: HashMap<String, Pool>,
    /// When the gateway started.
    pub started: Instant,
}

impl Gateway {
    /// Builds pools and the agent from a loaded config.
    pub fn new(config: Config) -> Gateway {
        let upstream = &config.raw.upstream;
        let agent = upstream::agent(
            Duration::from_secs(upstream.connect_timeout_secs),
            Duration::from_secs(upstream.idle_timeout_secs),
            config.raw.workers,
        );
        let mut pools = HashMap::new();
        for entry in &config.keys {
            pools
                .entry(entry.pool.clone())
                .or_insert_with(|| Pool::new(&entry.pool, config.pool_keys(&entry.pool), upstream.strategy));
        }
        Gateway { config, agent, pools, started: Instant::now() }
    }
}
