//! ollama-gateway: a token-authenticated gateway in front of Ollama and Ollama Cloud that
//! speaks the OpenAI, Anthropic and Ollama APIs and spreads requests over pools of upstream
//! keys.
//!
//! The binary (`main.rs`) only parses the command line, calls [`cli::run`] and prints its
//! error; everything else lives here so that tests can reach it. The modules, in layers:
//! each imports only from its own layer and those below it, and no two modules import each
//! other, directly or around a loop.
//!
//! 1. Process and sockets: [`cli`] (commands, exit codes), [`check`] (`ollama-gateway
//!    check`), [`import`] (`ollama-gateway keys import`), [`server`] (accept loop, a thread
//!    per connection, limits, live writing), [`live`] (generations, reloads, signals, the
//!    housekeeper), [`watch`] (clients that leave), [`chunked`] (the live chunked writer).
//! 2. Handlers: [`api`] (the route table; `api::openai`, `api::native`, `api::access` for
//!    the one model-access check, `api::cors`, `api::metrics` for `/metrics`, `api::admin`
//!    for the admin API, `api::page` for the status page, `api::stats` for `/stats`,
//!    `api::body_token` for a token in the body's `api_key`), over the values in [`http`].
//! 3. Failover and keys: [`gateway`] (one generation's config, pools and agent), [`control`]
//!    (what the admin API asks of the process), [`relay`]
//!    (trying keys until one answers), [`pool`] (which key), [`slots`] (requests in flight
//!    per key, the line of waiters), [`health`] (probes), [`usage`] (requests and tokens
//!    per token, model and day),
//!    [`quota`] (what Ollama Cloud's usage endpoint says), [`metrics`] (the counters of
//!    requests and attempts, the Prometheus text), [`minutes`] (each key's attempts per
//!    minute over the last hour), [`keystate`] (what each key's answers
//!    mean, the store of key states), [`statefile`], [`limits`] (per-token rpm,
//!    concurrency, expiry and addresses), [`lockout`] (addresses that send wrong tokens).
//! 4. Translation: [`translate`] (pure JSON mapping and sans-IO stream translators).
//! 5. Upstream, errors and files: [`upstream`] (ureq, its transport wrapper and resolver,
//!    the line reader), [`cancel`] (shutting an upstream socket), [`error`] (every
//!    failure's answer and the three error envelopes), [`json_cost`], [`config`], [`keys`],
//!    [`keyfile`] (adding lines to keys.txt on disk), [`auth`] (tokens, scopes), [`secret`],
//!    [`utc`] (calendar arithmetic), [`cidr`] (address blocks, the client's address),
//!    [`logline`] (the text and JSON log formats, the request line).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod auth;
pub mod cancel;
pub mod check;
pub mod chunked;
pub mod cidr;
pub mod cli;
pub mod config;
pub mod control;
pub mod error;
pub mod gateway;
pub mod health;
pub mod http;
pub mod import;
pub mod json_cost;
pub mod keyfile;
pub mod keys;
pub mod keystate;
pub mod limits;
pub mod live;
pub mod lockout;
pub mod logline;
pub mod metrics;
pub mod minutes;
pub mod pool;
pub mod quota;
pub mod relay;
pub mod secret;
pub mod server;
pub mod slots;
pub mod statefile;
pub mod translate;
pub mod upstream;
pub mod usage;
pub mod utc;
pub mod watch;
