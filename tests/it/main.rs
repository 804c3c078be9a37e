//! Integration tests: the real `ollama-gateway` binary in front of a fake Ollama.
//!
//! One test binary (`cargo test --test it`) with one module per theme. Every test starts
//! its own gateway and fake on free ports, so tests run in parallel and share nothing.

// Shared helpers: the gateway process, HTTP/SSE clients, wire types, `eqnice!`.
#[macro_use]
mod util;
// The fake Ollama upstream that records requests and scripts answers.
mod fake;
// Non-streamed chat: request translation and the `chat.completion` reply.
mod chat;
// SSE chat streams: framing, chunks, tool calls, live delivery, errors, disconnects.
mod stream;
// The Responses API (Codex): native bodies, the response and its events, refusals, aliases.
mod responses;
// The Messages API (Claude Code): native bodies, the message and its events, Anthropic's
// headers and error envelope, count_tokens, the retry without thinking, aliases.
mod messages;
// Client tokens, upstream keys and pools, and keeping secrets out of logs.
mod auth;
// Per-token rpm, max_concurrent, expires and ips; the lock-out after wrong tokens, and
// X-Forwarded-For behind trusted proxies.
mod limits;
// Failing over between upstream keys, and what the client sees when all fail.
mod failover;
// Bad requests the gateway refuses before calling upstream.
mod validation;
// The command line: help, version, token, keys, and config errors at start-up.
mod cli;
// `keys import`: lists from a file or stdin, duplicates, section placement, --validate.
mod import;
// Concurrency and capacity: many streams at once, a full queue, request logs.
mod serving;
// Completions, embeddings, models, probes, path aliases, 404/405, CORS, model aliases, allowlists.
mod surface;
// The official `openai`, `anthropic` and `ollama` Python clients driving the gateway
// (skipped when Python lacks them).
mod sdk;
// Key pools: failure classes, cooldowns, the state file, reloads, tenants, `check`, spreading.
mod keypool;
// Pools at their limits: spreading, failover deadline, slots, busy keys, fallbacks, weights.
mod quota;
// Ollama's native API (`/api/*`): routes, scopes, the query token, and OpenAI-compatible pools.
mod native;
// The gateway as a service: idle gaps, connection and body limits, descriptors running out,
// clients that leave, the overall request timeout.
mod service;
// No key or token in any log, at every RUST_LOG level, as text or as ureq's hex dumps.
mod logging;
// Reloads that meet config.toml or keys.txt half-written by an editor writing in place.
mod reload;
// The model allowlist on every form a native body can name a model in; plain answers checked.
mod access;
// The admin API (scope, status, disabling keys, check, reload, usage) and the `usage` command.
mod admin;
// Other gateways' clients: Ollama's web search API, the Gin proxy's /sys routes and error
// shape, a token in the body's api_key.
mod compat;
// The status page (`/admin`) in headless Chromium, its headers, and the public `/stats`.
mod page;
// Bugs found in review, each pinned by the test that would have caught it.
mod regression;
// Strict HTTP/1.1 framing: ambiguous or malformed requests get 400 and a closed connection.
mod framing;
// Peak RSS per large body (hostile ones refused with 413, legitimate ones served) on real processes.
mod memory;
// `GET /metrics`: the series after real traffic, `promtool check metrics`, who may scrape.
mod metrics;
// Real coding agents (Codex CLI, Claude Code) from npm, offline, each with a tool round trip.
mod agents;
